//! Snapshots and `world_hash` cover agents' decision state and the voxel world.

use terrarium_engine::voxel::{Block, BlockPos, Ore, VoxelWorld, WorldGen};
use terrarium_engine::{
    AgentPath, Brain, BrainState, Engine, EngineConfig, Goal, NpcSpec, OreProfile, Position, Role,
    SnapshotError,
};

fn world_with_agents() -> (Engine, Vec<terrarium_engine::NpcId>) {
    let mut engine =
        Engine::builder(EngineConfig { seed: 5, threads: 1, ..EngineConfig::default() }).build().unwrap();
    engine
        .world_mut()
        .insert_resource(VoxelWorld::generate(WorldGen { seed: 5, ..WorldGen::small() }).unwrap());
    let ids: Vec<_> = engine
        .spawn_batch((0..10).map(|i| {
            let spec = NpcSpec::new(Role::Miner, Position::new(i as f32 + 0.5, 30.0, 4.5));
            if i % 2 == 0 { spec.as_agent() } else { spec }
        }))
        .collect();
    (engine, ids)
}

fn mind(engine: &Engine, id: terrarium_engine::NpcId) -> (Brain, AgentPath, OreProfile) {
    let e = engine.world().entity(engine.entity(id).unwrap());
    (*e.get::<Brain>().unwrap(), e.get::<AgentPath>().unwrap().clone(), *e.get::<OreProfile>().unwrap())
}

#[test]
fn agents_state_and_voxels_survive_a_round_trip() {
    let (mut engine, ids) = world_with_agents();
    let agent = ids[4];
    let e = engine.entity(agent).unwrap();
    {
        let mut ent = engine.world_mut().entity_mut(e);
        *ent.get_mut::<Brain>().unwrap() = Brain {
            state: BrainState::Travelling,
            goal: Goal::Deposit(BlockPos::new(3, 9, 4)),
            wake_at: 77,
            tool: 3,
            ..Brain::default()
        };
        ent.get_mut::<AgentPath>().unwrap().cells = vec![BlockPos::new(1, 30, 4), BlockPos::new(2, 30, 4)];
        ent.get_mut::<OreProfile>().unwrap().record_success(Ore::Iron, 2);
    }
    engine.world_mut().resource_mut::<VoxelWorld>().set(BlockPos::new(8, 8, 8), Block::Air);
    engine.world_mut().resource_mut::<VoxelWorld>().depots_mut()[0].stock[1] = 12;

    let mut bytes = Vec::new();
    engine.save_snapshot(&mut bytes).unwrap();
    let mut back = Engine::builder(EngineConfig { threads: 2, ..EngineConfig::default() })
        .build_from_snapshot(&mut bytes.as_slice())
        .unwrap();
    assert_eq!(back.world_hash(), engine.world_hash());
    assert_eq!(mind(&back, agent), mind(&engine, agent));
    assert_eq!(back.agent_count(), 5);
    let voxels = back.world().resource::<VoxelWorld>();
    assert_eq!(voxels, engine.world().resource::<VoxelWorld>());
    assert_eq!(voxels.get(BlockPos::new(8, 8, 8)), Block::Air);
}

#[test]
fn hash_sees_decision_state_and_block_edits() {
    let (mut engine, ids) = world_with_agents();
    let h0 = engine.world_hash();
    let e = engine.entity(ids[2]).unwrap();
    engine.world_mut().get_mut::<Brain>(e).unwrap().wake_at = 9;
    let h1 = engine.world_hash();
    assert_ne!(h0, h1, "brain change");
    engine.world_mut().get_mut::<OreProfile>(e).unwrap().record_failure(Ore::Coal);
    let h2 = engine.world_hash();
    assert_ne!(h1, h2, "profile change");
    engine.world_mut().get_mut::<AgentPath>(e).unwrap().cells.push(BlockPos::new(1, 2, 3));
    let h3 = engine.world_hash();
    assert_ne!(h2, h3, "path change");
    engine.world_mut().resource_mut::<VoxelWorld>().set(BlockPos::new(1, 1, 1), Block::Air);
    assert_ne!(h3, engine.world_hash(), "block edit");
}

#[test]
fn a_snapshot_without_voxels_loads_without_them_and_old_versions_are_refused() {
    let mut engine = Engine::builder(EngineConfig::default()).build().unwrap();
    engine.spawn_npc(NpcSpec::new(Role::Miner, Position::new(1.0, 0.0, 1.0)).as_agent());
    let mut bytes = Vec::new();
    engine.save_snapshot(&mut bytes).unwrap();
    let back = Engine::builder(EngineConfig::default()).build_from_snapshot(&mut bytes.as_slice()).unwrap();
    assert!(back.world().get_resource::<VoxelWorld>().is_none());

    // Patch the header's version field (after the 8-byte magic) down to 1.
    bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
    let err =
        Engine::builder(EngineConfig::default()).build_from_snapshot(&mut bytes.as_slice()).err().unwrap();
    assert!(
        matches!(
            err,
            terrarium_engine::EngineError::Snapshot(SnapshotError::UnsupportedVersion { found: 1, .. })
        ),
        "{err}"
    );
}
