//! The world one seed gives, pinned as a constant: wanderers over several movement chunks,
//! swarms over several flocking chunks and a mining colony (mining rounds, path searches,
//! digging), some of them under orders. The same hash for 1, 2, 4 and 16 worker threads, and
//! with the `parallel` feature off: `scripts/test.sh` runs this file in both feature sets, so
//! the sequential build is held to the same constant as the parallel one.
//!
//! Sixteen threads on a two-core machine are still a valid check: rayon cuts the same chunks
//! whatever the cores, and the results must not depend on which thread ran which chunk.

use terrarium_engine::rng::StreamRng;
use terrarium_engine::{Command, Engine, EngineConfig, NpcSpec, Order, Position, Role, Velocity};
use terrarium_systems::agents::spawn_colony;
use terrarium_systems::par::CHUNK;

const SEED: u64 = 2026;
const TICKS: u64 = 120;

/// `world_hash` of [`run`]'s world after [`TICKS`] ticks. A change of this value is a change
/// of the simulation: say why in the commit that changes it.
const EXPECTED: u64 = 0x7134_29ba_e7e2_00e5;

fn run(threads: usize) -> u64 {
    let mut cfg = EngineConfig { seed: SEED, threads, ..EngineConfig::default() };
    cfg.world.max = [300.0, 32.0, 300.0];
    let mut e = Engine::builder(cfg)
        .add_plugin(terrarium_systems::core_plugin)
        .add_plugin(terrarium_systems::steering::register)
        .build()
        .unwrap();
    let wanderers = terrarium_systems::wander::spawn_wanderers(&mut e, 3 * CHUNK as u64 + 123);
    // Three swarms of 1 000, several chunks of the flocking step each.
    let mut r = StreamRng::new(SEED);
    e.spawn_batch((0..3_000u32).map(|i| {
        let pos = Position::new(r.range_f32(0.0, 100.0), 0.0, r.range_f32(0.0, 100.0));
        let vel = Velocity::new(r.range_f32(-1.0, 1.0), 0.0, r.range_f32(-1.0, 1.0));
        NpcSpec::new(Role::Scout, pos).moving(vel).in_swarm(1 + i % 3)
    }));
    let agents = spawn_colony(&mut e, 200, SEED).unwrap();
    let tx = e.command_sender();
    let w = |i: usize| wanderers.get(i).unwrap();
    let a = |i: usize| agents.get(i).unwrap();
    for (id, order) in [
        (w(5), Order::MoveTo(Position::new(150.0, 0.0, 20.0))),
        (w(40_000), Order::Stop),
        (a(3), Order::MoveTo(Position::new(20.0, 0.0, 20.0))),
        (a(77), Order::MoveTo(Position::new(60.0, 0.0, 10.0))),
    ] {
        tx.send(Command::Order { id, order }).unwrap();
    }
    e.run_ticks(TICKS);
    e.world_hash()
}

#[test]
fn the_pinned_world_for_1_2_4_and_16_threads() {
    for threads in [1, 2, 4, 16] {
        let hash = run(threads);
        assert_eq!(
            hash,
            EXPECTED,
            "{threads} threads, parallel = {}: got {hash:#018x}",
            cfg!(feature = "parallel")
        );
    }
}
