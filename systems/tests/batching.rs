//! Batching through the engine: coalescing, flush triggers, registry and lifecycle rows, the
//! production guides' store-call budget, and the tick never waiting on a slow or failing store.

use std::sync::Arc;
use std::time::{Duration, Instant};

use terrarium_engine::{
    Command, Engine, EngineConfig, NpcId, NpcSpec, Order, Position, Role, Status, Velocity, Wander,
};
use terrarium_persistence::testing::{FaultyStore, RecordingSink};
use terrarium_persistence::{MemoryStore, Storage, WriteBatch, WriteBehind, WriteBehindConfig};
use terrarium_systems::batching::{
    self, BatcherStats, BatchingOptions, DomainEvent, DomainEvents, PersistenceHealth,
};

fn config() -> EngineConfig {
    let mut cfg = EngineConfig { seed: 5, threads: 2, tick_hz: 20, ..EngineConfig::default() };
    cfg.world.max = [1000.0, 64.0, 1000.0];
    cfg
}

fn engine_with(cfg: EngineConfig, sink: Arc<dyn terrarium_persistence::BatchSink>) -> Engine {
    Engine::builder(cfg)
        .add_plugin(terrarium_systems::core_plugin)
        .add_plugin(batching::plugin_with(sink, BatchingOptions { stage_times: false }))
        .build()
        .unwrap()
}

fn walker(x: f32) -> NpcSpec {
    NpcSpec::new(Role::Scout, Position::new(x, 1.0, 500.0)).moving(Velocity::new(0.0, 0.0, 1.0)).as_agent()
}

fn position(engine: &Engine, id: NpcId) -> Position {
    *engine.world().get::<Position>(engine.entity(id).unwrap()).unwrap()
}

fn stats(engine: &Engine) -> BatcherStats {
    engine.world().resource::<BatcherStats>().clone()
}

#[test]
fn an_npc_that_moved_many_times_costs_one_row_with_its_last_position() {
    let sink = Arc::new(RecordingSink::new(1));
    let mut engine = engine_with(config(), sink.clone());
    let id = engine.spawn_npc(walker(10.0));
    engine.run_ticks(10);
    assert!(sink.batches().is_empty(), "500 ms have not passed yet");
    engine.tick(); // tick 11: the first change (tick 1) is 500 ms old
    let handoffs = sink.handoffs();
    assert_eq!(handoffs.len(), 1);
    assert!(handoffs[0].covers_all_positions, "the only NPC is in the batch");
    let b = &sink.batches()[0];
    let p = position(&engine, id);
    assert_eq!(b.positions.len(), 1);
    assert_eq!((b.positions[0].npc_id, b.positions[0].tick), (id.0, 11));
    assert_eq!((b.positions[0].x, b.positions[0].z), (p.x, p.z));
    let s = stats(&engine);
    assert_eq!(s.positions.items_batched, 1);
    assert_eq!(s.positions.items_coalesced, 10, "11 moves, 1 row");
    // The spawn is in the same batch: a registry row and an event.
    assert_eq!(b.npcs.len(), 1);
    assert_eq!((b.npcs[0].id, b.npcs[0].role.as_str(), b.npcs[0].agent), (id.0, "scout", true));
    assert_eq!(b.events.len(), 1);
    assert_eq!(b.events[0].event_type, "npc_spawned");
}

#[test]
fn positions_flush_by_size_when_more_npcs_wait_than_a_batch_holds() {
    let sink = Arc::new(RecordingSink::new(1));
    let mut engine = engine_with(config(), sink.clone());
    engine.spawn_batch((0..100).map(|i| walker(i as f32)));
    engine.run_ticks(3);
    assert!(sink.batches().is_empty(), "100 NPCs fit in one batch: wait for the age");
    engine.spawn_npc(walker(500.0));
    engine.tick();
    let batches = sink.batches();
    assert_eq!(batches.len(), 1, "the 101st NPC does not fit: flush now");
    assert_eq!(batches[0].positions.len(), 101);
    engine.tick();
    assert_eq!(
        sink.batches().len(),
        2,
        "101 moving NPCs: every tick (fewer than positions.min_interval_npcs, so no interval)"
    );
}

#[test]
fn still_npcs_write_nothing_and_a_lone_move_flushes_by_age() {
    let sink = Arc::new(RecordingSink::new(1));
    let mut engine = engine_with(config(), sink.clone());
    let ids: Vec<NpcId> = engine
        .spawn_batch((0..50).map(|i| NpcSpec::new(Role::Guard, Position::new(i as f32, 1.0, 1.0)).as_agent()))
        .collect();
    engine.run_ticks(11);
    assert_eq!(sink.batches().len(), 1, "the spawns");
    engine.run_ticks(40);
    assert_eq!(sink.batches().len(), 1, "nobody moved, nothing to write");
    engine
        .command_sender()
        .send(Command::Teleport { id: ids[7], position: Position::new(3.0, 1.0, 3.0) })
        .unwrap();
    engine.run_ticks(10);
    assert_eq!(sink.batches().len(), 1);
    engine.tick();
    let batches = sink.batches();
    assert_eq!(batches.len(), 2);
    assert_eq!(batches[1].positions.iter().map(|r| r.npc_id).collect::<Vec<_>>(), [ids[7].0]);
    assert!(!sink.handoffs()[1].covers_all_positions, "one row of 50 NPCs does not cover them all");
}

#[test]
fn despawns_status_changes_and_system_events_reach_the_batch() {
    let sink = Arc::new(RecordingSink::new(1));
    let mut engine = engine_with(config(), sink.clone());
    let ids: Vec<NpcId> = engine.spawn_batch((0..3).map(|i| walker(i as f32 * 10.0))).collect();
    engine.run_ticks(11);
    assert!(engine.despawn(ids[0]), "a despawn between two ticks is not missed");
    engine.command_sender().send(Command::Order { id: ids[1], order: Order::Stop }).unwrap();
    engine
        .world_mut()
        .resource_mut::<DomainEvents>()
        .emit(batching::Subject::Npc(ids[2]), DomainEvent::OreMined { ore: 3, amount: 2, at: [1, 2, 3] });
    engine.run_ticks(11);
    let all: Vec<WriteBatch> = sink.batches();
    let last = all.last().unwrap();
    assert_eq!(last.removed, [ids[0].0]);
    let stopped = last.npcs.iter().find(|r| r.id == ids[1].0).expect("status change recorded");
    assert_eq!(stopped.status, Status::Idle.name());
    let kinds: Vec<&str> = all.iter().flat_map(|b| b.events.iter().map(|e| e.event_type.as_str())).collect();
    for k in ["npc_spawned", "npc_despawned", "status_changed", "ore_mined"] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
}

#[test]
fn a_bulk_spawn_writes_one_event_for_all_but_the_first_few() {
    let sink = Arc::new(RecordingSink::new(1));
    let mut engine = engine_with(config(), sink.clone());
    engine.spawn_batch((0..1000).map(|i| walker(i as f32 % 900.0)));
    engine.tick();
    assert!(sink.handoffs()[0].covers_all_positions);
    let b = &sink.batches()[0];
    assert_eq!((b.positions.len(), b.npcs.len()), (1000, 1000));
    let spawned = b.events.iter().filter(|e| e.event_type == "npc_spawned").count();
    assert_eq!(spawned, DomainEvents::PER_NPC_LIMIT);
    let bulk = b.events.iter().find(|e| e.event_type == "npcs_spawned").unwrap();
    let DomainEvent::NpcsSpawned { count, .. } = batching::decode_payload(bulk, 1 << 20).unwrap() else {
        panic!("a bulk event")
    };
    assert_eq!(count, 1000 - DomainEvents::PER_NPC_LIMIT as u64);
}

/// Runs `npcs` NPCs moving every tick at 20 Hz for `seconds` simulated seconds with the default
/// batching (positions 100 rows / 500 ms) through the write-behind into a store, writing each
/// handed-over batch before the next tick (a flush per tick), so store calls count the
/// batcher's flushes, not the write-behind's merging. Returns the engine, the store, the ids and
/// the store calls.
fn production(npcs: u64, seconds: u32) -> (Engine, Arc<FaultyStore<MemoryStore>>, Vec<NpcId>, u64) {
    let store = Arc::new(FaultyStore::new(MemoryStore::default()));
    let wb = WriteBehind::start(
        Arc::clone(&store),
        WriteBehindConfig { commit_interval_ms: 0, run_id: Some(1), ..WriteBehindConfig::default() },
    )
    .unwrap();
    let mut engine = Engine::builder(config())
        .add_plugin(terrarium_systems::core_plugin)
        .add_plugin(batching::plugin(Arc::new(wb.handle())))
        .build()
        .unwrap();
    assert_eq!(engine.config().batching.positions.max_items, 100);
    assert_eq!(engine.config().batching.positions.max_age_ms, 500);
    let ids: Vec<NpcId> = engine.spawn_batch((0..npcs).map(|i| walker(i as f32 * 5.0))).collect();
    for _ in 0..seconds * 20 {
        engine.tick();
        wb.flush(Duration::from_secs(30)).unwrap();
    }
    let calls = store.calls();
    let report = wb.shutdown(Duration::from_secs(30)).unwrap();
    assert_eq!(report.stats.writes_dropped, 0);
    (engine, store, ids, calls)
}

/// The production guides' setting: 100 NPCs moving every tick, 60 simulated seconds. 100 rows
/// is exactly `max_items`, and a batch is due by size only when *more* rows wait, so the age
/// rule (500 ms) paces the writes: at most two store calls per simulated second. The two sides
/// of that boundary are checked too, so the scenario can't pass by sitting on it: 99 NPCs are
/// paced the same way, 101 are due by size every tick (fewer NPCs than `min_interval_npcs`: no
/// interval).
#[test]
fn the_production_scenario_makes_at_most_two_store_calls_per_simulated_second() {
    let seconds = 60;
    let (engine, store, ids, calls) = production(100, seconds);
    let per_second = calls as f64 / f64::from(seconds);
    eprintln!("production scenario: {calls} store calls in {seconds} simulated s ({per_second:.2}/s)");
    assert!(per_second <= 2.0, "{calls} store calls in {seconds} s ({per_second:.2}/s)");
    assert!(calls >= 100, "positions must still be written about twice a second ({calls} calls)");
    let s = stats(&engine);
    assert!(
        s.metrics.flushes >= 10,
        "metrics are written too ({} flushes), in the same calls",
        s.metrics.flushes
    );
    // Nothing was lost on the way: the store has every NPC where the world will have it once
    // the last moves are flushed.
    let last_flush_tick = store.inner().last_position(ids[0].0).unwrap().tick;
    assert!(engine.clock().tick - last_flush_tick <= 11);

    let seconds = 10;
    let (.., below) = production(99, seconds);
    assert!((15..=20).contains(&below), "99 NPCs: paced by age, {below} calls in {seconds} s");
    let (.., above) = production(101, seconds);
    assert!(
        above >= u64::from(seconds) * 20 - 1,
        "101 NPCs: due by size every tick, {above} calls in {seconds} s"
    );
}

/// A flush due by size waits `positions.min_interval_ms` after the previous one in a world of
/// at least `min_interval_npcs` NPCs (a world where everyone moves is due by size every tick);
/// 0 cuts every tick, and so does a smaller world; a flush due by age is not held back by it,
/// nor the first one after a tick that applied commands (a teleported NPC is stored where it
/// was sent, the game server's API promises that).
#[test]
fn positions_due_by_size_are_cut_at_most_once_per_min_interval() {
    let run =
        |min_interval_ms: u64, min_interval_npcs: usize, max_age_ms: u64, npcs: u32, teleport_at: u64| {
            let mut cfg = config();
            cfg.batching.positions.min_interval_ms = min_interval_ms;
            cfg.batching.positions.min_interval_npcs = min_interval_npcs;
            cfg.batching.positions.max_age_ms = max_age_ms;
            let sink = Arc::new(RecordingSink::new(1));
            let mut engine = engine_with(cfg, sink.clone());
            let second = engine.spawn_batch((0..npcs).map(|i| walker(i as f32 * 5.0))).get(1).unwrap();
            let commands = engine.command_sender();
            let mut ticks = Vec::new();
            for _ in 0..40 {
                if engine.clock().tick + 1 == teleport_at {
                    let position = Position::new(3.0, 1.0, 7.0);
                    commands.send(Command::Teleport { id: second, position }).unwrap();
                }
                let before = sink.handoffs().iter().filter(|h| !h.positions.is_empty()).count();
                engine.tick();
                if sink.handoffs().iter().filter(|h| !h.positions.is_empty()).count() > before {
                    ticks.push(engine.clock().tick);
                }
            }
            (ticks, sink, second)
        };
    let cut_ticks = |min_interval_ms, min_interval_npcs, max_age_ms, npcs| {
        run(min_interval_ms, min_interval_npcs, max_age_ms, npcs, u64::MAX).0
    };
    assert_eq!(cut_ticks(0, 0, 500, 150).len(), 40, "no interval: due by size every tick");
    let spaced = cut_ticks(200, 0, 500, 150);
    assert_eq!(spaced.len(), 10, "200 ms at 20 Hz: every 4th tick ({spaced:?})");
    assert!(spaced.windows(2).all(|w| w[1] - w[0] == 4), "{spaced:?}");
    assert_eq!(cut_ticks(200, 150, 500, 150), spaced, "150 NPCs reach min_interval_npcs 150");
    assert_eq!(cut_ticks(200, 151, 500, 150).len(), 40, "150 NPCs: a small world, every tick");
    let by_age = cut_ticks(1000, 0, 100, 50);
    assert_eq!(by_age.len(), 13, "50 NPCs are due by age (100 ms), not held for 1 s: {by_age:?}");

    // A teleport at tick 6 (between the cuts at 5 and 9) is cut at tick 6, where it was sent;
    // the interval then counts from there.
    let (ticks, sink, second) = run(200, 0, 500, 150, 6);
    assert_eq!(&ticks[..4], &[1, 5, 6, 10], "{ticks:?}");
    let at_6 = sink.handoffs().into_iter().find(|h| h.batch.tick == 6).unwrap();
    let i = at_6.positions.ids.iter().position(|&id| id == second.0).unwrap();
    // Where it was sent, plus the one step (1 block/s at 20 Hz) it walked in that tick's `Act`;
    // the cut at 9 it would have waited for is three steps further.
    let [x, y, z] = at_6.positions.xyz[i];
    assert!((x, y) == (3.0, 1.0) && (z - 7.05).abs() < 1e-4, "stored where it was sent: {:?}", [x, y, z]);
}

/// Runs `ticks` ticks on a thread; fails if they do not finish within `limit` (a tick that
/// waited for a stalled store would never finish).
fn run_with_watchdog(mut engine: Engine, ticks: u64, limit: Duration) -> (Engine, Vec<Duration>) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut times = Vec::new();
        for _ in 0..ticks {
            let t = Instant::now();
            engine.tick();
            times.push(t.elapsed());
        }
        tx.send((engine, times)).unwrap();
    });
    rx.recv_timeout(limit).expect("ticks did not finish: the tick waited for the store")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn the_tick_does_not_wait_for_a_stalled_or_failing_store() {
    let store = Arc::new(FaultyStore::new(MemoryStore::default()));
    let dir = tempfile::tempdir().unwrap();
    let wb = WriteBehind::start(
        Arc::clone(&store),
        WriteBehindConfig {
            outbox_path: Some(dir.path().join("outbox.bin")),
            write_timeout_ms: 200,
            ..WriteBehindConfig::default()
        },
    )
    .unwrap();
    let mut cfg = config();
    cfg.batching.positions.max_items = 10; // a batch every tick
    let mut engine = engine_with(cfg, Arc::new(wb.handle()));
    engine.spawn_batch((0..2000).map(|i| walker(i as f32 % 900.0)));
    let (engine, healthy) = run_with_watchdog(engine, 100, Duration::from_secs(120));
    store.set_delay(Duration::from_millis(100)); // slower than the tick
    let (engine, slow) = run_with_watchdog(engine, 100, Duration::from_secs(120));
    store.set_delay(Duration::ZERO);
    store.stall();
    let (engine, stalled) = run_with_watchdog(engine, 100, Duration::from_secs(120));
    store.release();
    store.set_failing(true);
    let (mut engine, failing) = run_with_watchdog(engine, 100, Duration::from_secs(120));
    // Flat, with a wide margin for a shared machine: the write-behind does the waiting.
    let (h, d, s, f) = (median(healthy), median(slow), median(stalled), median(failing));
    assert!(d < h * 5 + Duration::from_millis(5), "slow store: median tick {d:?} vs {h:?}");
    assert!(s < h * 5 + Duration::from_millis(5), "stalled store: median tick {s:?} vs {h:?}");
    assert!(f < h * 5 + Duration::from_millis(5), "failing store: median tick {f:?} vs {h:?}");
    // The write-behind notices at its next call; the tick sees it in `PersistenceHealth`.
    let started = Instant::now();
    while !engine.world().resource::<PersistenceHealth>().degraded {
        assert!(started.elapsed() < Duration::from_secs(30), "the failure never showed in PersistenceHealth");
        engine.tick();
    }
    let health = engine.world().resource::<PersistenceHealth>().clone();
    assert!(health.last_error.as_deref().unwrap().contains("injected failure"), "{health:?}");
    assert_eq!(health.writes_dropped, 0, "spilled, not dropped: {health:?}");
    store.set_failing(false);
    engine.run_ticks(5);
    let report = wb.shutdown(Duration::from_secs(60)).unwrap();
    assert_eq!((report.left_in_outbox, report.stats.writes_dropped), (0, 0));
    assert!(report.stats.batches_spilled > 0 && report.stats.batches_replayed > 0);
    let kinds: Vec<String> = store.inner().events().into_iter().map(|e| e.event_type).collect();
    assert!(kinds.contains(&"storage_degraded".to_string()), "{kinds:?}");
}

#[test]
fn shutdown_drains_everything_rows_written_equal_rows_produced() {
    let store = Arc::new(MemoryStore::default());
    let wb = WriteBehind::start(Arc::clone(&store), WriteBehindConfig::default()).unwrap();
    let mut cfg = config();
    cfg.batching.positions.max_items = 300; // some ticks by size, some by age
    let mut engine = Engine::builder(cfg)
        .add_plugin(terrarium_systems::core_plugin)
        .add_plugin(batching::plugin(Arc::new(wb.handle())))
        .build()
        .unwrap();
    let ids: Vec<NpcId> = engine
        .spawn_batch((0..1000).map(|i| {
            let spec = NpcSpec::new(Role::Miner, Position::new(i as f32 % 900.0, 1.0, 3.0));
            if i % 3 == 0 { spec.moving(Velocity::new(0.5, 0.0, 0.5)).as_agent() } else { spec.as_agent() }
        }))
        .collect();
    for t in 0..300u64 {
        if t % 50 == 25 {
            engine.despawn(ids[t as usize]);
        }
        engine.tick();
    }
    assert!(batching::flush_now(&mut engine));
    let produced = stats(&engine);
    let report = wb.shutdown(Duration::from_secs(60)).unwrap();
    let st = store.stats();
    assert_eq!(report.stats.writes_dropped, 0);
    assert_eq!(
        st.position_rows + report.stats.rows_coalesced,
        produced.positions.items_batched,
        "every position row produced was written or overwritten by a later one"
    );
    assert_eq!(st.metric_rows, produced.metrics.items_batched);
    assert_eq!(st.event_rows, produced.events.items_batched);
    assert_eq!(st.npc_upserts + st.npc_removals, produced.registry_rows);
    assert_eq!(st.npc_removals, 6);
    // The store ends where the world ends: every NPC at its current position.
    for &id in &ids {
        match engine.entity(id) {
            Some(e) => {
                let p = *engine.world().get::<Position>(e).unwrap();
                let row = store.last_position(id.0).unwrap();
                assert_eq!((row.x, row.y, row.z), (p.x, p.y, p.z), "{id}");
            }
            None => assert!(store.last_position(id.0).is_none(), "{id} was removed"),
        }
    }
}

#[test]
fn batches_spilled_while_the_store_is_down_reach_it_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = dir.path().join("outbox.bin");
    // First process: the store is down for the whole run.
    let down = Arc::new(FaultyStore::new(MemoryStore::default()));
    down.set_failing(true);
    let cfg = WriteBehindConfig { outbox_path: Some(outbox.clone()), ..WriteBehindConfig::default() };
    let wb = WriteBehind::start(Arc::clone(&down), cfg.clone()).unwrap();
    let mut engine = engine_with(config(), Arc::new(wb.handle()));
    let ids: Vec<NpcId> = engine.spawn_batch((0..500).map(|i| walker(i as f32))).collect();
    engine.run_ticks(100);
    batching::flush_now(&mut engine);
    let report = wb.shutdown(Duration::from_millis(500)).unwrap();
    assert!(report.left_in_outbox > 0);
    assert_eq!(report.stats.writes_dropped, 0);
    assert_eq!(down.inner().stats().batches, 0);
    // Second process, store back: the outbox is read back and replayed before anything new.
    let up = Arc::new(FaultyStore::new(MemoryStore::default()));
    let wb = WriteBehind::start(Arc::clone(&up), cfg).unwrap();
    wb.flush(Duration::from_secs(60)).unwrap();
    for &id in &ids {
        let p = position(&engine, id);
        let row = up.inner().last_position(id.0).unwrap();
        assert_eq!((row.x, row.z), (p.x, p.z), "{id}");
    }
    let written = up.written_ids();
    assert!(written.windows(2).all(|w| w[0].seq < w[1].seq), "replayed in order");
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    assert_eq!(rt.block_on(up.inner().load_npcs()).unwrap().len(), 500);
    wb.shutdown(Duration::from_secs(10)).unwrap();
}

#[test]
fn positions_wait_while_the_sink_cannot_take_them_then_the_latest_of_every_npc_arrives() {
    let sink = Arc::new(RecordingSink::new(1));
    sink.set_wants_positions(false);
    let mut engine = engine_with(config(), sink.clone());
    let ids: Vec<NpcId> = (0..300).map(|i| engine.spawn_npc(walker(10.0 + i as f32))).collect();
    engine.run_ticks(40);
    let rows: usize = sink.batches().iter().map(|b| b.positions.len()).sum();
    assert_eq!(rows, 0, "no position batch is cut while the sink can't take one");
    let lag = engine.world().resource::<PersistenceHealth>().store_lag_ms;
    assert_eq!(lag, 40 * 50, "nothing committed since the start: 40 ticks of 50 ms behind");
    sink.set_wants_positions(true);
    engine.tick();
    let batches = sink.batches();
    let last = batches.last().unwrap();
    assert_eq!(last.positions.len(), ids.len(), "one row per NPC, its latest position");
    assert_eq!(last.npcs.len(), ids.len(), "the spawns come with their first positions");
    for (row, id) in last.positions.iter().zip(&ids) {
        let p = position(&engine, *id);
        assert_eq!((row.npc_id, row.x, row.z), (id.0, p.x, p.z));
    }
    assert_eq!(
        engine.world().resource::<PersistenceHealth>().store_lag_ms,
        0,
        "the recorder commits at once"
    );
    // Shutdown: a forced cut takes positions even when the sink says no.
    sink.set_wants_positions(false);
    engine.run_ticks(3);
    assert!(batching::flush_now(&mut engine));
    let last = sink.batches().pop().unwrap();
    assert_eq!(last.positions.len(), ids.len(), "nothing is lost at shutdown");
    assert_eq!(last.positions[0].x, position(&engine, ids[0]).x);
}

#[test]
fn batching_that_waits_for_the_store_leaves_the_world_hash_alone() {
    let run = |wants: bool| {
        let sink = Arc::new(RecordingSink::new(1));
        sink.set_wants_positions(wants);
        let mut engine = engine_with(config(), sink);
        for i in 0..200 {
            engine.spawn_npc(walker(10.0 + i as f32));
        }
        engine.run_ticks(30);
        engine.world_hash()
    };
    assert_eq!(run(true), run(false));
}

/// In a world whose position cuts are spaced (big worlds), the registry scan runs on a tick
/// without a position cut, so the two passes over the NPCs never add up in one tick (at a
/// million NPCs that tick was the p99); a state change still reaches the sink within twice
/// the age limit.
#[test]
fn in_a_spaced_world_the_registry_scan_never_shares_a_tick_with_a_position_cut() {
    let mut cfg = config();
    cfg.batching.positions.min_interval_ms = 200;
    cfg.batching.positions.min_interval_npcs = 0;
    cfg.batching.positions.max_age_ms = 500;
    let sink = Arc::new(RecordingSink::new(1));
    let mut engine = engine_with(cfg, sink.clone());
    let plain = |i: u32| {
        NpcSpec::new(Role::Scout, Position::new(i as f32 * 5.0, 1.0, 500.0))
            .moving(Velocity::new(0.0, 0.0, 1.0))
    };
    let ids: Vec<NpcId> = engine.spawn_batch((0..150).map(plain)).collect();
    engine.run_ticks(3);
    let mut changes = Vec::new();
    for (n, at) in [(7usize, 3u64), (8, 12), (9, 21)] {
        engine.run_ticks(at - engine.clock().tick);
        let e = engine.entity(ids[n]).unwrap();
        *engine.world_mut().get_mut::<Status>(e).unwrap() = Status::Depositing;
        changes.push((ids[n], at));
    }
    engine.run_ticks(40);
    let handoffs = sink.handoffs();
    let has_positions =
        |h: &terrarium_persistence::Handoff| !h.positions.ids.is_empty() || !h.batch.positions.is_empty();
    let cuts = handoffs.iter().filter(|h| has_positions(h)).count();
    assert!(cuts >= 14, "positions are still cut every 4th tick: {cuts} cuts in 61 ticks");
    // After the spawn's batch, registry rows never travel with positions.
    for h in handoffs.iter().skip(1) {
        assert!(
            h.batch.npcs.is_empty() || !has_positions(h),
            "tick {}: a state scan in a position cut",
            h.batch.tick
        );
    }
    for (id, at) in changes {
        let arrived = handoffs
            .iter()
            .find(|h| h.batch.tick > at && h.batch.npcs.iter().any(|r| r.id == id.0))
            .unwrap_or_else(|| panic!("npc {id:?}'s status change never reached the sink"));
        assert!(arrived.batch.tick - at <= 20, "changed at {at}, stored at {}", arrived.batch.tick);
    }
}

/// A world of `n` plain NPCs walking +z at 1 block/s from z = 500 (no wander turns), with position cuts spaced
/// and spread over 200 ms (4 ticks at 20 Hz) from any size on.
fn spread_world(n: u32) -> (Engine, Arc<RecordingSink>, Vec<NpcId>) {
    spread_world_with(n, |_| {})
}

/// [`spread_world`] with the configuration changed by `tweak` first.
fn spread_world_with(
    n: u32,
    tweak: impl FnOnce(&mut EngineConfig),
) -> (Engine, Arc<RecordingSink>, Vec<NpcId>) {
    let mut cfg = config();
    cfg.batching.positions.min_interval_ms = 200;
    cfg.batching.positions.min_interval_npcs = 0;
    cfg.batching.positions.spread_ms = 200;
    tweak(&mut cfg);
    let sink = Arc::new(RecordingSink::new(1));
    let mut engine = engine_with(cfg, sink.clone());
    let plain = |i: u32| {
        NpcSpec::new(Role::Scout, Position::new((i % 1000) as f32, 1.0, 500.0))
            .moving(Velocity::new(0.0, 0.0, 1.0))
    };
    let ids: Vec<NpcId> = engine.spawn_batch((0..n).map(plain)).collect();
    // No wander turns: they walk straight on.
    let world = engine.world_mut();
    for mut w in world.query::<&mut Wander>().iter_mut(world) {
        w.next_turn = Wander::NEVER;
    }
    (engine, sink, ids)
}

/// The tick a walker of [`spread_world`] was read at, from how far it walked.
fn read_at(z: f32) -> u64 {
    let t = (z - 500.0) / 0.05;
    assert!((t - t.round()).abs() < 0.05, "z {z} is not on a tick");
    t.round() as u64
}

/// In a big world a position cut is read a slice of chunks per tick: the batch carries the tick
/// it began, every NPC once, and each chunk as it was on its slice's tick (one tick later per
/// slice, in table order), so no tick copies the whole population. Cuts follow one another
/// every `min_interval_ms` from their starts.
#[test]
fn a_big_worlds_position_cut_is_read_a_slice_per_tick() {
    // 270 000 NPCs: 17 chunks of 16 384, four slices (of 4, 4, 4 and 5 chunks; a slice takes
    // four chunks at least, so a smaller world would get fewer).
    let (mut engine, sink, ids) = spread_world(270_000);
    engine.run_ticks(21);
    let cuts: Vec<_> = sink.handoffs().into_iter().filter(|h| !h.positions.ids.is_empty()).collect();
    let starts: Vec<u64> = cuts.iter().map(|h| h.batch.tick).collect();
    assert_eq!(starts, [1, 5, 9, 13, 17], "a cut every 4 ticks, handed over when its 4th slice is read");
    assert_eq!(stats(&engine).spread_cuts, 6, "the sixth began at tick 21");
    assert_eq!(stats(&engine).spreads_redone, 0);
    let mut sorted = ids.iter().map(|id| id.0).collect::<Vec<_>>();
    sorted.sort_unstable();
    for h in &cuts {
        let s = h.batch.tick;
        assert_eq!(h.positions.tick, s);
        assert!(h.covers_all_positions);
        let mut got = h.positions.ids.clone();
        got.sort_unstable();
        assert_eq!(got, sorted, "tick {s}: every NPC exactly once");
        let slice_of = |row: usize| (0..4u64).rev().find(|&k| row / 16_384 >= k as usize * 17 / 4).unwrap();
        for (row, xyz) in h.positions.xyz.iter().enumerate() {
            assert_eq!(read_at(xyz[2]), s + slice_of(row), "tick {s}: row {row} read on its slice's tick");
        }
    }
    // The spawns travel with the first cut, found slice by slice.
    assert_eq!(cuts[0].batch.npcs.len(), ids.len());
    assert!(cuts[1..].iter().all(|h| h.batch.npcs.is_empty()));

    // A spread cut does not wait for the sink to want positions: it is handed over later, and
    // replaces whatever of the previous one still waits there.
    let (mut engine, sink, _) = spread_world(270_000);
    sink.set_wants_positions(false);
    engine.run_ticks(21);
    let busy: Vec<u64> =
        sink.handoffs().iter().filter(|h| !h.positions.ids.is_empty()).map(|h| h.batch.tick).collect();
    assert_eq!(busy, starts);
}

#[derive(bevy_ecs::component::Component)]
struct Tag;

/// A spread cut checks that it read every NPC exactly once: when rows changed places under it
/// with every table keeping its length (an NPC leaving a table for another while one comes
/// back), the id count and fingerprints tell, and the cut is redone in one pass on its last
/// tick: nothing is missed, nothing is written twice.
#[test]
fn a_spread_cut_that_rows_moved_under_is_redone_in_one_pass() {
    let (mut engine, sink, ids) = spread_world(270_000);
    // A second table of one tagged NPC, made before the cut begins.
    let (first, tagged) = (ids[0], ids[269_999]);
    let tag = |engine: &mut Engine, id: NpcId, on: bool| {
        let e = engine.entity(id).unwrap();
        let mut e = engine.world_mut().entity_mut(e);
        if on {
            e.insert(Tag);
        } else {
            e.remove::<Tag>();
        }
    };
    tag(&mut engine, tagged, true);
    engine.run_ticks(5);
    assert_eq!(stats(&engine).spread_cuts, 2, "the second cut began at tick 5");
    // The first NPC (row 0 of the big table, read at tick 5) leaves for the small table, and
    // the big table's last NPC (not read yet) takes its row; then the tagged NPC goes back to
    // the big table's end. The lengths are as before, but the last NPC would be missed and
    // another read twice (the first or the tagged one, depending on which table the query
    // walks first).
    let last = ids[269_998];
    tag(&mut engine, first, true);
    tag(&mut engine, tagged, false);
    engine.run_ticks(3);
    let s = stats(&engine);
    assert_eq!((s.spread_cuts, s.spreads_redone), (2, 1));
    let h = sink.handoffs().pop().unwrap();
    assert_eq!(h.batch.tick, 8, "redone on the tick it would have ended");
    let mut got = h.positions.ids.clone();
    got.sort_unstable();
    got.dedup();
    assert_eq!(got.len(), ids.len(), "every NPC once");
    for id in [first, tagged, last] {
        let row = h.positions.ids.iter().position(|&i| i == id.0).unwrap();
        assert_eq!(read_at(h.positions.xyz[row][2]), 8, "{id:?} as it is on the redo's tick");
    }
}

/// The registry scan is skipped while no state column changed (the columns' summary ticks say
/// so); a change made by a kernel that writes change ticks by hand (the movement pass sets
/// `Status` when a wander turn stops an NPC) still counts, and reaches the sink.
#[test]
fn status_changes_written_by_the_movement_kernel_reach_the_sink() {
    let mut cfg = config();
    cfg.npc.turn_min_s = 0.1;
    cfg.npc.turn_max_s = 0.2;
    let sink = Arc::new(RecordingSink::new(1));
    let mut engine = engine_with(cfg, sink.clone());
    let ids: Vec<NpcId> = terrarium_systems::wander::spawn_wanderers(&mut engine, 50).collect();
    engine.run_ticks(20);
    assert!(sink.batches().iter().flat_map(|b| &b.npcs).all(|r| r.status.as_str() == "moving"));
    // From now on every wander turn stops the NPC: the kernel sets it idle.
    engine.world_mut().resource_mut::<EngineConfig>().npc.wander_speed = 0.0;
    engine.run_ticks(40);
    assert!(batching::flush_now(&mut engine));
    for id in ids {
        let e = engine.entity(id).unwrap();
        assert_eq!(engine.world().get::<Status>(e), Some(&Status::Idle), "{id:?} stopped");
        let last =
            sink.batches().iter().flat_map(|b| b.npcs.clone()).filter(|r| r.id == id.0).last().unwrap();
        assert_eq!(last.status.as_str(), "idle", "{id:?}'s stop reached the sink");
    }
}

/// Where cuts are spread, a batch cut because events passed their size limit does not carry
/// the positions waiting in one pass (that tick would copy the whole population): they wait for
/// their own spread cut.
#[test]
fn where_cuts_are_spread_a_batch_cut_for_events_carries_no_positions() {
    // Cuts read over 2 ticks, due every 4: ticks 3 and 4 of each cycle wait with positions
    // pending; events over their limit (2) are cut on those ticks by themselves.
    let (mut engine, sink, ids) = spread_world_with(270_000, |c| {
        c.batching.positions.spread_ms = 100;
        c.batching.events.max_items = 2;
    });
    for k in 0..12 {
        let mut events = engine.world_mut().resource_mut::<DomainEvents>();
        // Three different NPCs each time: identical events within a second would be folded.
        for id in &ids[3 * k..3 * k + 3] {
            events.emit(
                terrarium_systems::batching::Subject::Npc(*id),
                DomainEvent::StatusChanged { status: Status::Idle },
            );
        }
        engine.tick();
    }
    let handoffs = sink.handoffs();
    let with_positions: Vec<u64> =
        handoffs.iter().filter(|h| !h.positions.ids.is_empty()).map(|h| h.batch.tick).collect();
    assert_eq!(with_positions, [1, 5, 9], "cuts begin every 4 ticks and take 2");
    let events_alone: Vec<u64> = handoffs
        .iter()
        .filter(|h| h.positions.ids.is_empty() && !h.batch.events.is_empty())
        .map(|h| h.batch.tick)
        .collect();
    assert_eq!(events_alone, [3, 4, 7, 8, 11, 12], "events over their limit go without positions");
}
