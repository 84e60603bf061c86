//! The mining agents end to end: the decision loop, replanning, the path cache, deposits never
//! shared, and determinism across thread counts and snapshots.

use std::collections::HashSet;

use terrarium_engine::voxel::{Block, BlockPos, Ore, VoxelWorld, WorldGen};
use terrarium_engine::{
    Brain, BrainState, Command, Engine, EngineConfig, Goal, NpcId, NpcSpec, Order, OreProfile, Position, Role,
};
use terrarium_systems::agents::{
    self, AgentConfig, AgentEvents, Cause, MiningStats, PathStats, spawn_colony,
};
use terrarium_systems::mining::DepositIndex;
use terrarium_systems::pathfinding::{PathCache, Target, WalkRules};

fn engine(threads: usize, seed: u64) -> Engine {
    Engine::builder(EngineConfig { seed, threads, ..EngineConfig::default() })
        .add_plugin(terrarium_systems::core_plugin)
        .add_plugin(agents::plugin)
        .build()
        .unwrap()
}

fn colony(threads: usize, agents: u64, seed: u64) -> Engine {
    let mut e = engine(threads, seed);
    spawn_colony(&mut e, agents, seed).unwrap();
    e
}

/// A flat world: stone, three dirt layers and grass up to y = 20, air above, no ore.
fn flat_world() -> VoxelWorld {
    VoxelWorld::generate(WorldGen {
        seed: 1,
        size_chunks: [4, 3, 4],
        base_height: 20,
        relief: 0,
        sea_level: 0,
        veins_per_chunk: 0.0,
        depot_spacing: 32,
    })
    .unwrap()
}

fn events_of(e: &Engine, id: NpcId) -> Vec<(BrainState, BrainState, Cause)> {
    e.world()
        .resource::<AgentEvents>()
        .events()
        .iter()
        .filter(|ev| ev.npc == id)
        .map(|ev| (ev.from, ev.to, ev.cause))
        .collect()
}

#[test]
fn same_world_for_one_and_two_threads() {
    let (mut one, mut two) = (colony(1, 300, 7), colony(2, 300, 7));
    for _ in 0..4 {
        one.run_ticks(100);
        two.run_ticks(100);
        assert_eq!(one.world_hash(), two.world_hash(), "at tick {}", one.clock().tick);
    }
    let stats = one.world().resource::<MiningStats>();
    assert!(stats.blocks_mined > 50, "the colony should be mining: {stats:?}");
    assert_eq!(stats, two.world().resource::<MiningStats>());
}

#[test]
fn a_run_continued_from_a_snapshot_matches_one_that_never_stopped() {
    let mut a = colony(2, 200, 3);
    a.run_ticks(150);
    let mut bytes = Vec::new();
    a.save_snapshot(&mut bytes).unwrap();
    let mut b = Engine::builder(EngineConfig { threads: 1, ..EngineConfig::default() })
        .add_plugin(terrarium_systems::core_plugin)
        .add_plugin(agents::plugin)
        .build_from_snapshot(&mut bytes.as_slice())
        .unwrap();
    assert_eq!(a.world_hash(), b.world_hash());
    // The loaded engine starts with an empty path cache and a rebuilt deposit index.
    a.run_ticks(150);
    b.run_ticks(150);
    assert_eq!(a.world_hash(), b.world_hash());
    assert!(b.world().resource::<PathStats>().solved > 0);
}

#[test]
fn no_two_miners_ever_share_a_deposit() {
    let mut e = colony(2, 400, 11);
    let mut checked = 0;
    for _ in 0..300 {
        e.tick();
        let mut q = e.world_mut().query::<&Brain>();
        let mut seen = HashSet::new();
        for b in q.iter(e.world()) {
            if let Goal::Deposit(p) = b.goal {
                assert!(seen.insert(p), "two miners target {p} at tick {}", e.clock().tick);
                checked += 1;
            }
        }
        let index = e.world().resource::<DepositIndex>();
        assert_eq!(index.claimed(), seen.len(), "claims match the miners' goals");
    }
    assert!(checked > 10_000, "only {checked} goals seen");
}

#[test]
fn a_blocked_path_is_replanned_and_its_cache_entry_invalidated() {
    let mut e = engine(2, 5);
    e.world_mut().insert_resource(flat_world());
    let start = BlockPos::new(10, 21, 20);
    let goal = BlockPos::new(40, 21, 20);
    let id = e.spawn_npc(NpcSpec::new(Role::Miner, start.feet_position()).as_agent());
    e.command_sender().send(Command::Order { id, order: Order::MoveTo(goal.feet_position()) }).unwrap();
    e.tick();
    let entity = e.entity(id).unwrap();
    let brain = *e.world().get::<Brain>(entity).unwrap();
    assert_eq!((brain.state, brain.goal), (BrainState::Travelling, Goal::Point(goal)));
    let rules = WalkRules::miner(brain.tool, e.world().resource::<AgentConfig>().walk_speed);
    let key = (start, Target::Cell(goal), rules.dig_cost.map_or(u32::MAX, f32::to_bits), 0);
    let tick = e.clock().tick;
    {
        let world = e.world_mut();
        world.resource_scope(|world, mut cache: bevy_ecs::prelude::Mut<PathCache>| {
            assert!(
                cache.get(&key, world.resource::<VoxelWorld>(), tick).is_some(),
                "the fresh search is cached"
            );
        });
    }

    // A bedrock wall (nothing digs it, nothing tunnels under it) across the straight line, with
    // one gap at z = 30 (inside the search box).
    {
        let mut voxels = e.world_mut().resource_mut::<VoxelWorld>();
        for z in 0..64 {
            for y in 1..24 {
                if z != 30 {
                    voxels.set(BlockPos::new(25, y, z), Block::Bedrock);
                }
            }
        }
    }
    let world = e.world_mut();
    world.resource_scope(|world, mut cache: bevy_ecs::prelude::Mut<PathCache>| {
        assert!(
            cache.get(&key, world.resource::<VoxelWorld>(), tick).is_none(),
            "a wall on the path makes it stale"
        );
        assert_eq!(cache.invalidated, 1);
    });

    let mut blocked = false;
    let mut through_gap = false;
    for _ in 0..2_000 {
        e.tick();
        blocked |= events_of(&e, id).iter().any(|ev| ev.2 == Cause::Blocked);
        let pos = BlockPos::containing(*e.world().get::<Position>(entity).unwrap());
        through_gap |= pos.x == 25 && pos.z == 30;
        assert_ne!(e.world().resource::<VoxelWorld>().get(pos), Block::Bedrock, "walked into the wall");
        if pos == goal {
            break;
        }
    }
    assert!(blocked, "the agent noticed the wall");
    assert!(e.world().resource::<PathStats>().replans >= 1);
    assert!(through_gap, "the new path goes through the gap");
    assert_eq!(BlockPos::containing(*e.world().get::<Position>(entity).unwrap()), goal);
}

#[test]
fn agents_mine_return_and_deposit_and_every_transition_is_an_event() {
    let mut e = engine(2, 9);
    e.world_mut().insert_resource(AgentConfig { return_at: 0.02, ..AgentConfig::default() });
    spawn_colony(&mut e, 60, 9).unwrap();
    let mut causes: HashSet<&'static str> = HashSet::new();
    let mut transitions = 0;
    for _ in 0..1_500 {
        e.tick();
        for ev in e.world().resource::<AgentEvents>().events() {
            assert_ne!(ev.from, ev.to, "an event is a change: {ev:?}");
            transitions += 1;
            causes.insert(match ev.cause {
                Cause::Woke => "woke",
                Cause::Assigned(_) => "assigned",
                Cause::PathFound => "path",
                Cause::Arrived => "arrived",
                Cause::Mined(..) => "mined",
                Cause::Deposited(_) => "deposited",
                _ => "other",
            });
        }
    }
    for c in ["woke", "assigned", "path", "arrived", "mined", "deposited"] {
        assert!(causes.contains(c), "no {c} event in {transitions} transitions");
    }
    let stats = e.world().resource::<MiningStats>().clone();
    let stock: u64 = e.world().resource::<VoxelWorld>().depots().iter().flat_map(|d| d.stock).sum();
    assert!(stock > 0 && stock == stats.ore_deposited.iter().sum::<u64>(), "{stock} vs {stats:?}");
}

#[test]
fn an_unreachable_deposit_fails_is_avoided_and_lowers_the_success_rate() {
    let mut e = engine(1, 4);
    let mut world = flat_world();
    // One gold block sealed in bedrock, a few blocks under the agent.
    let ore = BlockPos::new(30, 14, 30);
    for x in -1..=1 {
        for y in -1..=1 {
            for z in -1..=1 {
                world.set(ore.offset(x, y, z), Block::Bedrock);
            }
        }
    }
    world.set(ore, Block::Gold);
    e.world_mut().insert_resource(world);
    let id = e.spawn_npc(NpcSpec::new(Role::Miner, BlockPos::new(30, 21, 26).feet_position()).as_agent());
    let entity = e.entity(id).unwrap();
    let mut failed_at = None;
    for _ in 0..60 {
        e.tick();
        if events_of(&e, id).iter().any(|ev| ev.2 == Cause::Unreachable) {
            failed_at = Some(e.clock().tick);
            break;
        }
    }
    let failed_at = failed_at.expect("the search for the sealed ore fails");
    let brain = *e.world().get::<Brain>(entity).unwrap();
    assert_eq!((brain.state, brain.goal, brain.avoid), (BrainState::Idle, Goal::None, ore));
    assert!(brain.avoid_until > failed_at && brain.failures == 1);
    let profile = e.world().get::<OreProfile>(entity).unwrap();
    assert_eq!(profile.stats[Ore::Gold.index()].attempts, 1);
    assert!(profile.success_rate(Ore::Gold) < 0.5);
    assert_eq!(e.world().resource::<DepositIndex>().claimed(), 0, "the claim was released");
    // While avoided, the only deposit is not chosen again.
    e.run_ticks(100);
    let again = e.world().resource::<MiningStats>();
    assert_eq!(again.failed_tasks, 1, "{again:?}");
    assert!(again.no_deposit >= 1);
}

#[test]
fn mined_ore_and_deposits_reach_storage_as_domain_events() {
    let sink = std::sync::Arc::new(terrarium_persistence::testing::RecordingSink::new(1));
    let mut e = Engine::builder(EngineConfig { seed: 6, threads: 2, ..EngineConfig::default() })
        .add_plugin(terrarium_systems::core_plugin)
        .add_plugin(terrarium_systems::batching::plugin(sink.clone()))
        .build()
        .unwrap();
    e.world_mut().insert_resource(AgentConfig { return_at: 0.02, ..AgentConfig::default() });
    spawn_colony(&mut e, 40, 6).unwrap();
    e.run_ticks(1_200);
    terrarium_systems::batching::flush_now(&mut e);
    let rows: Vec<_> = sink.batches().into_iter().flat_map(|b| b.events).collect();
    let count =
        |kind: &str| rows.iter().filter(|r| r.event_type == kind).map(|r| u64::from(r.count)).sum::<u64>();
    let stats = e.world().resource::<MiningStats>();
    assert_eq!(count("ore_mined"), stats.blocks_mined, "one ore_mined event per block mined");
    assert!(count("task_completed") > 0, "deposits are completed tasks");
}
