//! Determinism: the same seed gives the same world for 1 and 2 threads, across runs, and across
//! a snapshot in the middle of a run; and the same batches (what the batcher hands over, byte for
//! byte) on 1 and 2 worker threads.

use std::sync::Arc;

use terrarium_engine::{Command, Engine, EngineConfig, NpcId, NpcSpec, Order, Position, Role};
use terrarium_persistence::Handoff;
use terrarium_persistence::testing::RecordingSink;
use terrarium_systems::batching::{self, BatchingOptions, DomainEvent, DomainEvents, Subject};

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

/// Runs a world of plain NPCs and agents spread over several table chunks, with commands,
/// despawns and system events, and returns its hash and every batch it handed over.
fn run_batched(threads: usize, max_items: usize) -> (u64, Vec<Handoff>) {
    let mut cfg = EngineConfig { seed: 11, threads, ..EngineConfig::default() };
    cfg.batching.positions.max_items = max_items;
    let sink = Arc::new(RecordingSink::new(77));
    let mut engine = Engine::builder(cfg)
        .add_plugin(terrarium_systems::core_plugin)
        .add_plugin(batching::plugin_with(sink.clone(), BatchingOptions { stage_times: false }))
        .build()
        .unwrap();
    let n = 40_000u64; // three chunks of the plain-NPC table
    let ids: Vec<NpcId> = engine
        .spawn_batch((0..n).map(|i| {
            let spec = NpcSpec::new(
                Role::BUILT_IN[(i % 5) as usize],
                Position::new((i % 4000) as f32, 0.0, (i / 10) as f32),
            );
            if i % 100 == 0 { spec.as_agent() } else { spec }
        }))
        .collect();
    let tx = engine.command_sender();
    for t in 0..40u64 {
        if t % 5 == 0 {
            tx.send(Command::Order { id: ids[(t * 997 % n) as usize], order: Order::Stop }).unwrap();
            tx.send(Command::Order {
                id: ids[(t * 31 % n) as usize],
                order: Order::MoveTo(Position::new(5.0, 0.0, 5.0)),
            })
            .unwrap();
            engine.despawn(ids[(t * 7919 % n) as usize]);
            engine.world_mut().resource_mut::<DomainEvents>().emit(
                Subject::Npc(ids[(t * 13 % n) as usize]),
                DomainEvent::TaskFailed { task: "haul".into(), reason: "x".repeat((t as usize) * 100) },
            );
        }
        engine.tick();
    }
    (engine.world_hash(), sink.handoffs())
}

#[test]
fn batches_are_identical_for_one_and_two_threads() {
    for max_items in [100, 1_000_000] {
        let (hash1, one) = run_batched(1, max_items);
        let (hash2, two) = run_batched(2, max_items);
        assert_eq!(hash1, hash2);
        assert!(one.len() >= 3, "{} batches", one.len());
        let rows: usize = one.iter().map(|h| h.positions.len()).sum();
        assert!(rows > 100_000, "enough rows to span chunks: {rows}");
        assert!(
            one.iter().any(|h| !h.batch.removed.is_empty()
                && !h.batch.events.is_empty()
                && !h.batch.npcs.is_empty())
        );
        assert_eq!(one.len(), two.len());
        for (i, (a, b)) in one.iter().zip(&two).enumerate() {
            assert!(a == b, "batch {i} differs between 1 and 2 threads");
        }
    }
}
