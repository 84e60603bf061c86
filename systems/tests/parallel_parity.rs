//! Determinism: the same seed gives the same world for 1 and 2 threads, across runs, and across
//! a snapshot in the middle of a run.

use terrarium_engine::{Command, Engine, EngineConfig, NpcSpec, Order, Position, Role};

const TICKS: u64 = 500;

fn engine(threads: usize) -> Engine {
    let mut cfg = EngineConfig { seed: 2024, threads, ..EngineConfig::default() };
    // A small world, so NPCs hit the walls and the bounce path runs too.
    cfg.world.max = [200.0, 32.0, 200.0];
    Engine::builder(cfg).add_plugin(terrarium_systems::core_plugin).build().unwrap()
}

/// Enough NPCs for several parallel chunks, a few agents and a few orders.
fn populate(e: &mut Engine) {
    let n = 3 * terrarium_systems::par::CHUNK as u64 + 123;
    e.spawn_batch((0..n).map(|i| {
        let s = NpcSpec::new(
            Role::BUILT_IN[(i % 5) as usize],
            Position::new((i % 200) as f32, 0.0, (i / 200 % 200) as f32),
        );
        if i % 1000 == 0 { s.as_agent() } else { s }
    }));
    let tx = e.command_sender();
    for id in [5, 77, 4_000] {
        let id = terrarium_engine::NpcId(id);
        tx.send(Command::Order { id, order: Order::MoveTo(Position::new(150.0, 0.0, 20.0)) }).unwrap();
    }
}

fn run(threads: usize) -> u64 {
    let mut e = engine(threads);
    populate(&mut e);
    e.run_ticks(TICKS);
    e.world_hash()
}

#[test]
fn same_hash_for_one_and_two_threads_and_across_runs() {
    let one = run(1);
    let two = run(2);
    assert_eq!(one, two, "thread count changed the world");
    assert_eq!(run(2), two, "two runs with the same seed differ");
    let mut other = engine(2);
    other.spawn_batch([NpcSpec::new(Role::Scout, Position::default())]);
    other.run_ticks(1);
    assert_ne!(other.world_hash(), two, "the hash must depend on the world");
}

#[test]
fn a_run_continued_from_a_snapshot_matches_one_that_never_stopped() {
    let mut straight = engine(2);
    populate(&mut straight);
    straight.run_ticks(TICKS);

    let mut first = engine(2);
    populate(&mut first);
    first.run_ticks(TICKS / 2);
    let mut bytes = Vec::new();
    first.save_snapshot(&mut bytes).unwrap();
    let mut cfg = first.config().clone();
    cfg.threads = 1;
    let mut resumed = Engine::builder(cfg)
        .add_plugin(terrarium_systems::core_plugin)
        .build_from_snapshot(&mut bytes.as_slice())
        .unwrap();
    resumed.run_ticks(TICKS - TICKS / 2);
    assert_eq!(resumed.world_hash(), straight.world_hash());
}
