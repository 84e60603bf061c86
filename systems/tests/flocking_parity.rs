//! Determinism of swarm flocking: the same seed gives the same world for 1 and 2 threads, and a
//! run continued from a snapshot matches one that never stopped.

use terrarium_engine::rng::StreamRng;
use terrarium_engine::{Engine, EngineConfig, NpcSpec, Position, Role, Velocity};

fn engine(threads: usize) -> Engine {
    let mut cfg = EngineConfig { seed: 5, threads, tick_hz: 10, ..EngineConfig::default() };
    cfg.world.max = [60.0, 10.0, 60.0];
    Engine::builder(cfg)
        .add_plugin(terrarium_systems::core_plugin)
        .add_plugin(terrarium_systems::steering::register)
        .build()
        .unwrap()
}

/// 3 000 NPCs in three swarms (several parallel chunks of the flocking step), plus wanderers,
/// scattered with random headings.
fn populate(engine: &mut Engine) {
    let mut r = StreamRng::new(17);
    let specs: Vec<NpcSpec> = (0..3_500)
        .map(|i| {
            let pos = Position::new(r.range_f32(0.0, 60.0), 0.0, r.range_f32(0.0, 60.0));
            let vel = Velocity::new(r.range_f32(-1.0, 1.0), 0.0, r.range_f32(-1.0, 1.0));
            let spec = NpcSpec::new(Role::Scout, pos).moving(vel);
            if i < 3_000 { spec.in_swarm(1 + i % 3) } else { spec }
        })
        .collect();
    engine.spawn_batch(specs);
}

#[test]
fn same_world_for_one_and_two_threads_and_after_a_snapshot() {
    let (mut one, mut two) = (engine(1), engine(2));
    populate(&mut one);
    populate(&mut two);
    one.run_ticks(30);
    two.run_ticks(30);
    assert_eq!(one.world_hash(), two.world_hash());

    let mut bytes = Vec::new();
    two.save_snapshot(&mut bytes).unwrap();
    let mut loaded = Engine::builder(two.config().clone())
        .add_plugin(terrarium_systems::core_plugin)
        .add_plugin(terrarium_systems::steering::register)
        .build_from_snapshot(&mut bytes.as_slice())
        .unwrap();
    two.run_ticks(30);
    loaded.run_ticks(30);
    assert_eq!(two.world_hash(), loaded.world_hash());

    let mut still = engine(2);
    populate(&mut still);
    still.run_ticks(60);
    assert_eq!(still.world_hash(), two.world_hash(), "the same seed gives the same world");
}
