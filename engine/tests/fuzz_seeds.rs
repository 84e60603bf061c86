//! Writes the snapshot fuzzer's seeds (`fuzz/seeds/snapshot/`): run by hand after a format
//! change, `cargo test -p terrarium-engine --test fuzz_seeds -- --ignored`.

use terrarium_engine::voxel::{VoxelWorld, WorldGen};
use terrarium_engine::{Engine, EngineConfig, ItemKind, MoveTarget, NpcSpec, Position, Role, Velocity};

#[test]
#[ignore = "writes files under fuzz/seeds; run by hand after a format change"]
fn write_snapshot_seeds() {
    let mut engine = Engine::builder(EngineConfig { threads: 1, ..EngineConfig::default() }).build().unwrap();
    engine.world_mut().insert_resource(VoxelWorld::generate(WorldGen::small()).unwrap());
    let ids: Vec<_> = engine
        .spawn_batch((0..8).map(|i| {
            let mut s = NpcSpec::new(Role::BUILT_IN[i % 5], Position::new(i as f32 + 0.5, 30.0, 4.5))
                .moving(Velocity::new(0.5, 0.0, -0.25))
                .in_swarm((i % 3) as u32);
            s.inventory.add(ItemKind(3), 5);
            if i >= 6 { s.as_agent() } else { s }
        }))
        .collect();
    let e = engine.entity(ids[1]).unwrap();
    engine.world_mut().entity_mut(e).insert(MoveTarget(Position::new(9.0, 0.0, 9.0)));
    engine.run_ticks(2);
    let mut frame = Vec::new();
    engine.save_snapshot(&mut frame).unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/snapshot");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("small_world.frame"), &frame).unwrap();
    std::fs::write(dir.join("small_world.payload"), &frame[terrarium_codec::FRAME_HEADER_LEN..]).unwrap();
}
