//! The write-behind queue against a fault-injecting store: the producer never waits, batches
//! reach the store in order, failures spill to the outbox and replay in order (also after a
//! restart), and shutdown drains everything.

use std::sync::Arc;
use std::time::Duration;

use terrarium_persistence::testing::{Fault, FaultyStore};
use terrarium_persistence::{
    BatchId, BatchSink, EntityKind, EventRow, Handoff, MemoryStore, NpcFilter, Page, PositionColumns,
    PositionRow, Storage, WriteBatch, WriteBehind, WriteBehindConfig, WriteBehindError,
};

type Store = FaultyStore<MemoryStore>;

fn store() -> Arc<Store> {
    Arc::new(FaultyStore::new(MemoryStore::default()))
}

/// A batch with one position row per id in `ids` (x = `x`) and one event.
fn batch(tick: u64, ids: std::ops::Range<u64>, x: f32) -> WriteBatch {
    WriteBatch {
        tick,
        positions: ids.map(|npc_id| PositionRow { npc_id, tick, x, y: 0.0, z: 0.0 }).collect(),
        events: vec![EventRow {
            event_id: 1_000_000 + tick,
            correlation_id: 0,
            event_type: "test".into(),
            entity_kind: EntityKind::World,
            entity_id: 0,
            tick,
            time_ms: tick * 50,
            payload: vec![],
            compressed: false,
            count: 1,
        }],
        ..WriteBatch::default()
    }
}

/// Hands `b` over with its positions moved into columns (as the batcher does) when it covers
/// every NPC, as rows otherwise, so both paths are exercised.
fn handoff(mut b: WriteBatch, covers_all_positions: bool) -> Handoff {
    let mut positions = PositionColumns::default();
    if covers_all_positions {
        positions.tick = b.tick;
        for r in std::mem::take(&mut b.positions) {
            positions.ids.push(r.npc_id);
            positions.xyz.push([r.x, r.y, r.z]);
        }
    }
    Handoff { batch: b, positions, covers_all_positions }
}

fn config(run: u64) -> WriteBehindConfig {
    WriteBehindConfig { run_id: Some(run), commit_interval_ms: 0, ..WriteBehindConfig::default() }
}

fn start(s: &Arc<Store>, cfg: WriteBehindConfig) -> WriteBehind<Store> {
    WriteBehind::start_on(&tokio::runtime::Handle::current(), Arc::clone(s), cfg).unwrap()
}

/// Advances (paused) time until `done` holds, at most `max` steps of 10 ms.
async fn until(max: u32, mut done: impl FnMut() -> bool) {
    for _ in 0..max {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(done(), "condition not reached");
}

fn assert_in_seq_order(ids: &[BatchId]) {
    for w in ids.windows(2) {
        if w[0].run == w[1].run {
            assert!(w[0].seq < w[1].seq, "batches out of order: {} then {}", w[0], w[1]);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn submit_returns_at_once_while_the_store_is_stalled_and_then_groups_the_backlog() {
    let s = store();
    s.stall();
    let wb = start(&s, config(1));
    let sink = wb.handle();
    // The worker runs on this thread's runtime, and this loop never yields: if `submit` waited
    // for the store it would never return, and the test would hang instead of passing.
    for t in 0..1000 {
        sink.submit(handoff(batch(t, t * 10..t * 10 + 10, 1.0), false)).unwrap();
    }
    assert!(wb.stats().queued_batches >= 999);
    s.release();
    wb.flush_async(Duration::from_secs(60)).await.unwrap();
    let st = s.inner().stats();
    assert_eq!(st.position_rows, 10_000, "every row arrived (no NPC repeats, nothing coalesced)");
    assert_eq!(st.event_rows, 1000);
    let calls = s.log().iter().filter(|c| c.ok).count();
    assert!(calls <= 1 + 999_usize.div_ceil(64), "group commit: {calls} calls for 1000 batches");
    assert_eq!(s.written_ids(), (1..=1000).map(|seq| BatchId { run: 1, seq }).collect::<Vec<_>>());
    wb.shutdown_async(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn position_rows_coalesce_per_npc_while_they_wait() {
    let s = store();
    s.stall();
    let wb = start(&s, config(2));
    let sink = wb.handle();
    sink.submit(handoff(batch(1, 0..100, 1.0), false)).unwrap(); // taken by the worker, stalled in flight
    until(10, || wb.stats().queued_batches == 0).await;
    sink.submit(handoff(batch(2, 0..100, 2.0), false)).unwrap();
    sink.submit(handoff(batch(3, 50..150, 3.0), false)).unwrap(); // partial: overlaps ids 50..100
    sink.submit(handoff(batch(4, 0..10, 4.0), false)).unwrap();
    s.release();
    wb.flush_async(Duration::from_secs(60)).await.unwrap();
    // Batches 2..4 went in one call; rows of batch 2 for ids 0..10 and 50..100 were overwritten
    // by batches 3 and 4 before being written.
    assert_eq!(wb.stats().rows_coalesced, 60);
    assert_eq!(s.inner().stats().position_rows, 100 + 210 - 60);
    assert_eq!(s.inner().last_position(5).unwrap().x, 4.0);
    assert_eq!(s.inner().last_position(20).unwrap().x, 2.0);
    assert_eq!(s.inner().last_position(120).unwrap().x, 3.0);
    // A batch that covers every NPC drops the waiting rows at once, at submit.
    s.stall();
    sink.submit(handoff(batch(5, 0..150, 5.0), false)).unwrap();
    until(10, || wb.stats().queued_batches == 0).await;
    sink.submit(handoff(batch(6, 0..150, 6.0), false)).unwrap();
    sink.submit(handoff(batch(7, 0..150, 7.0), true)).unwrap();
    assert_eq!(wb.stats().queued_rows, 150 + 2, "only the last positions (and both events) wait");
    s.release();
    wb.flush_async(Duration::from_secs(60)).await.unwrap();
    assert!((0..150).all(|id| s.inner().last_position(id).unwrap().x == 7.0));
    assert_eq!(s.inner().stats().event_rows, 7, "coalescing never drops events");
    wb.shutdown_async(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn batches_reach_the_store_in_order_through_intermittent_failures() {
    let s = store();
    let wb = start(&s, WriteBehindConfig { max_group_batches: 3, ..config(9) });
    let mut rows = 0;
    for t in 1..=200u64 {
        if t % 7 == 0 {
            s.fail_next(u32::try_from(t % 3).unwrap());
        }
        let b = batch(t, t * 3..t * 3 + (t % 4), 1.0);
        rows += b.positions.len() as u64;
        wb.handle().submit(handoff(b, false)).unwrap();
        if t % 5 == 0 {
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
    wb.flush_async(Duration::from_secs(600)).await.unwrap();
    let ids = s.written_ids();
    assert_in_seq_order(&ids);
    assert_eq!(ids.len(), 200);
    assert!(s.failures() > 0);
    assert_eq!(s.inner().stats().position_rows, rows);
    wb.shutdown_async(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_failing_store_spills_to_the_outbox_and_replays_in_order_when_it_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let s = store();
    s.set_failing(true);
    let cfg = WriteBehindConfig { outbox_path: Some(dir.path().join("outbox.bin")), ..config(3) };
    let wb = start(&s, cfg);
    let sink = wb.handle();
    for t in 1..=50 {
        sink.submit(handoff(batch(t, t * 2..t * 2 + 2, t as f32), false)).unwrap();
        if t % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    until(1000, || wb.stats().batches_spilled == 50).await;
    let st = wb.stats();
    assert!(st.degraded && st.store_errors > 0 && st.queued_batches == 0);
    assert_eq!(st.outbox_batches, 50);
    assert!(wb.last_error().unwrap().contains("injected failure"));
    assert_eq!(s.inner().stats().batches, 0);
    s.set_failing(false);
    wb.flush_async(Duration::from_secs(60)).await.unwrap();
    let st = wb.stats();
    assert!(!st.degraded);
    assert_eq!((st.batches_replayed, st.outbox_batches, st.outbox_bytes), (50, 0, 0));
    assert_eq!(s.written_ids(), (1..=50).map(|seq| BatchId { run: 3, seq }).collect::<Vec<_>>());
    assert_eq!(s.inner().stats().position_rows, 100);
    assert_eq!(std::fs::metadata(dir.path().join("outbox.bin")).unwrap().len(), 0);
    wb.shutdown_async(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_outbox_survives_a_restart_and_is_replayed_before_new_batches() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = dir.path().join("outbox.bin");
    // First process: the store is down the whole time; shutdown leaves the batches on disk.
    let down = store();
    down.set_failing(true);
    let wb = start(&down, WriteBehindConfig { outbox_path: Some(outbox.clone()), ..config(10) });
    for t in 1..=20 {
        wb.handle().submit(handoff(batch(t, 0..5, t as f32), false)).unwrap();
    }
    let report = wb.shutdown_async(Duration::from_secs(2)).await.unwrap();
    assert_eq!(report.left_in_outbox, 20);
    assert_eq!(report.stats.writes_dropped, 0);
    assert!(std::fs::metadata(&outbox).unwrap().len() > 0);
    // Second process, new run id, store back: the old run's batches go first, with their ids.
    let up = store();
    let wb = start(&up, WriteBehindConfig { outbox_path: Some(outbox.clone()), ..config(11) });
    wb.handle().submit(handoff(batch(100, 0..5, 100.0), false)).unwrap();
    wb.flush_async(Duration::from_secs(60)).await.unwrap();
    let ids = up.written_ids();
    let mut expected: Vec<BatchId> = (1..=20).map(|seq| BatchId { run: 10, seq }).collect();
    expected.push(BatchId { run: 11, seq: 1 });
    // Coalescing may empty old batches' positions, but every batch id arrives, in order.
    assert_eq!(ids, expected);
    assert_eq!(up.inner().last_position(3).unwrap().x, 100.0);
    assert_eq!(up.inner().stats().event_rows, 21);
    assert_eq!(up.inner().applied_seq(10), Some(20));
    wb.shutdown_async(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_replay_after_a_crash_does_not_duplicate_rows() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = dir.path().join("outbox.bin");
    let s = store();
    s.set_failing(true);
    let wb = start(&s, WriteBehindConfig { outbox_path: Some(outbox.clone()), ..config(20) });
    for t in 1..=5 {
        wb.handle().submit(handoff(batch(t, t * 10..t * 10 + 3, 1.0), false)).unwrap();
    }
    until(1000, || wb.stats().batches_spilled == 5).await;
    // Keep a copy of the file as a crash just after the replay (before truncation) would leave it.
    let copy = std::fs::read(&outbox).unwrap();
    s.set_failing(false);
    wb.flush_async(Duration::from_secs(60)).await.unwrap();
    wb.shutdown_async(Duration::from_secs(1)).await.unwrap();
    std::fs::write(&outbox, copy).unwrap();
    let wb = start(&s, WriteBehindConfig { outbox_path: Some(outbox), ..config(21) });
    wb.flush_async(Duration::from_secs(60)).await.unwrap();
    let st = s.inner().stats();
    assert_eq!((st.batches, st.duplicate_batches, st.position_rows), (5, 5, 15));
    wb.shutdown_async(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn too_much_waiting_spills_even_when_the_store_is_healthy() {
    let dir = tempfile::tempdir().unwrap();
    let s = store();
    s.set_delay(Duration::from_secs(1));
    let cfg = WriteBehindConfig {
        outbox_path: Some(dir.path().join("outbox.bin")),
        spill_queued_rows: 40,
        max_queued_rows: 1000,
        ..config(4)
    };
    let wb = start(&s, cfg);
    for t in 1..=60 {
        wb.handle().submit(handoff(batch(t, t * 10..t * 10 + 10, 1.0), false)).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wb.flush_async(Duration::from_secs(600)).await.unwrap();
    let st = wb.stats();
    assert!(st.batches_spilled > 0, "{st:?}");
    assert_eq!(st.writes_dropped, 0);
    assert_eq!(s.inner().stats().position_rows, 600);
    assert_eq!(s.written_ids(), (1..=60).map(|seq| BatchId { run: 4, seq }).collect::<Vec<_>>());
    wb.shutdown_async(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_refuses_and_counts_instead_of_growing() {
    let s = store();
    s.stall();
    let wb = start(&s, WriteBehindConfig { max_queued_rows: 50, spill_queued_rows: 50, ..config(5) });
    let sink = wb.handle();
    sink.submit(handoff(batch(1, 0..10, 1.0), false)).unwrap();
    until(10, || wb.stats().queued_batches == 0).await; // in flight
    for t in 2..=5 {
        sink.submit(handoff(batch(t, 0..10, 1.0), false)).unwrap();
    }
    let err = sink.submit(handoff(batch(6, 0..10, 1.0), false)).unwrap_err();
    assert!(matches!(err, WriteBehindError::Full { limit: 50, .. }), "{err}");
    let st = wb.stats();
    assert_eq!((st.failed_batches, st.writes_dropped), (1, 11));
    assert_eq!(sink.health().writes_dropped, 11);
    // A batch that covers every NPC frees the waiting position rows, so it fits.
    sink.submit(handoff(batch(7, 0..10, 7.0), true)).unwrap();
    s.release();
    wb.flush_async(Duration::from_secs(60)).await.unwrap();
    assert_eq!(s.inner().last_position(0).unwrap().x, 7.0);
    wb.shutdown_async(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_batch_the_store_keeps_refusing_is_given_up_and_kept_aside() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = dir.path().join("outbox.bin");
    let s = store();
    s.stall();
    let cfg = WriteBehindConfig { outbox_path: Some(outbox.clone()), max_attempts: 3, ..config(6) };
    let wb = start(&s, cfg);
    wb.handle().submit(handoff(batch(1, 10..12, 1.0), false)).unwrap();
    until(10, || s.calls() == 1).await;
    for t in 2..=4 {
        wb.handle().submit(handoff(batch(t, t * 10..t * 10 + 2, 1.0), false)).unwrap();
    }
    // The first call carries batch 1 alone (it was taken before the others came); refuse it
    // three times, then everything else goes through.
    s.reject_next(3);
    s.release();
    wb.flush_async(Duration::from_secs(600)).await.unwrap();
    let st = wb.stats();
    assert_eq!((st.failed_batches, st.writes_dropped), (1, 3));
    assert_eq!(s.written_ids(), (2..=4).map(|seq| BatchId { run: 6, seq }).collect::<Vec<_>>());
    let dead = std::fs::read(dir.path().join("outbox.bin.dead")).unwrap();
    assert!(!dead.is_empty(), "the refused batch is kept in the dead-letter file");
    assert!(s.inner().last_position(10).is_none());
    wb.shutdown_async(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn shutdown_writes_everything_that_waits() {
    let s = store();
    s.set_delay(Duration::from_millis(200));
    let wb = start(&s, WriteBehindConfig { commit_interval_ms: 1000, ..config(7) });
    let mut rows = 0;
    for t in 1..=100 {
        let b = batch(t, t * 4..t * 4 + 4, 1.0);
        rows += b.len() as u64;
        wb.handle().submit(handoff(b, false)).unwrap();
    }
    let report = wb.shutdown_async(Duration::from_secs(60)).await.unwrap();
    assert_eq!(report.left_in_outbox, 0);
    let st = s.inner().stats();
    assert_eq!(st.position_rows + st.event_rows, rows, "rows written == rows produced");
    assert_eq!(report.stats.rows_submitted, rows);
    assert_eq!(report.stats.writes_dropped, 0);
}

#[tokio::test(start_paused = true)]
async fn shutdown_with_the_store_down_and_no_outbox_counts_what_is_lost() {
    let s = store();
    s.set_failing(true);
    let wb = start(&s, config(8));
    for t in 1..=3 {
        wb.handle().submit(handoff(batch(t, t * 2..t * 2 + 2, 1.0), false)).unwrap();
    }
    let report = wb.shutdown_async(Duration::from_secs(1)).await.unwrap();
    assert_eq!(report.stats.failed_batches, 3);
    assert_eq!(report.stats.writes_dropped, 9);
}

#[test]
fn an_owned_runtime_flushes_and_shuts_down_from_plain_threads() {
    let store = Arc::new(MemoryStore::default());
    let wb = WriteBehind::start(Arc::clone(&store), WriteBehindConfig::default()).unwrap();
    let sink = wb.handle();
    let producer = std::thread::spawn(move || {
        for t in 1..=10 {
            sink.submit(handoff(batch(t, 0..3, t as f32), false)).unwrap();
        }
    });
    producer.join().unwrap();
    wb.flush(Duration::from_secs(30)).unwrap();
    assert_eq!(store.last_position(2).unwrap().x, 10.0);
    let run = wb.run_id();
    let report = wb.shutdown(Duration::from_secs(30)).unwrap();
    assert_eq!(report.stats.batches_submitted, 10);
    assert_eq!(store.applied_seq(run), Some(10));
}

#[test]
fn bad_settings_are_refused_by_name() {
    let cfg = WriteBehindConfig { spill_queued_rows: 10, max_queued_rows: 5, ..WriteBehindConfig::default() };
    let err = WriteBehind::start(Arc::new(MemoryStore::default()), cfg).unwrap_err();
    assert!(
        matches!(err, WriteBehindError::OutOfRange(ref e) if e.key == "write_behind.spill_queued_rows"),
        "{err}"
    );
}

/// Reads reach the inner store (what it holds comes back, each read is counted); faults
/// planned with `inject` reach reads too, while `fail_next` is for writes only.
#[tokio::test(start_paused = true)]
async fn reads_pass_through_the_faulty_store() {
    let s = store();
    assert!(s.get_npc(1).await.unwrap().is_none());
    let npcs = vec![terrarium_persistence::testing::npc(1, 3), terrarium_persistence::testing::npc(2, 4)];
    s.inner().write(&[WriteBatch { tick: 1, npcs, ..WriteBatch::default() }]).await.unwrap();
    let want = s.inner().get_npc(1).await.unwrap();
    assert_eq!(want.as_ref().map(|r| (r.id, r.swarm)), Some((1, 3)));
    assert_eq!(s.get_npc(1).await.unwrap(), want, "a get reaches the inner store");
    let page = s.list_npcs(&NpcFilter::default(), Page { after: None, limit: 10 }).await.unwrap();
    assert_eq!(page.npcs.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(s.load_npcs().await.unwrap().len(), 2);

    s.fail_next(3);
    assert_eq!(s.get_npc(1).await.unwrap(), want, "fail_next leaves reads alone");
    s.inject(1, Fault::Unavailable);
    assert!(s.get_npc(1).await.is_err(), "an injected fault reaches a read");
    assert_eq!(s.get_npc(1).await.unwrap(), want, "then reads pass again");
    let reads = s.reads();
    assert_eq!((reads.gets, reads.lists, reads.loads), (5, 1, 1));
}

#[tokio::test(start_paused = true)]
async fn positions_are_wanted_only_while_no_position_batch_waits_and_progress_is_reported() {
    let s = store();
    s.stall();
    let wb = start(&s, config(31));
    let sink = wb.handle();
    assert!(sink.wants_positions(), "nothing waits");
    assert_eq!(wb.stats().committed_tick, None);
    sink.submit(handoff(batch(1, 0..100, 1.0), true)).unwrap();
    until(10, || wb.stats().queued_batches == 0).await; // in flight, stalled
    assert!(sink.wants_positions(), "the batch in flight does not wait in the queue");
    sink.submit(handoff(batch(2, 0..100, 2.0), true)).unwrap();
    assert!(!sink.wants_positions(), "a position batch waits: the next one would overwrite it");
    let mut events_only = batch(3, 0..0, 0.0);
    events_only.events[0].event_id = 77;
    sink.submit(handoff(events_only, false)).unwrap();
    assert!(!sink.wants_positions(), "a batch without positions does not change that");
    assert_eq!(wb.stats().unsettled_batches, 3);
    assert_eq!(sink.health().committed_tick, None);
    s.release();
    wb.flush_async(Duration::from_secs(60)).await.unwrap();
    assert!(sink.wants_positions());
    let st = wb.stats();
    assert_eq!((st.committed_tick, st.unsettled_batches), (Some(3), 0));
    assert_eq!(sink.health().unsettled_batches, 0);
    assert_eq!(s.inner().last_position(5).unwrap().x, 2.0, "the latest position reached the store");
    wb.shutdown_async(Duration::from_secs(1)).await.unwrap();
}

/// The first write of a world of `n` NPCs: a registry row and a position each (positions in
/// columns, registry rows in reverse id order), plus one event.
fn first_write(n: u64, tick: u64) -> Handoff {
    let mut b = batch(tick, 1..n + 1, 1.0);
    b.npcs = (1..=n).rev().map(|id| terrarium_persistence::testing::npc(id, 0)).collect();
    handoff(b, true)
}

#[tokio::test(start_paused = true)]
async fn a_batch_bigger_than_a_call_is_written_in_parts_that_fit_and_counts_once_all_landed() {
    // Issue 14 item 1: no store call may grow with the population. The first write of a world
    // of N NPCs (2N + 1 rows) goes in calls of at most `max_call_rows` rows, in order, and the
    // store ends with everything; the storage lag's committed tick moves only once the last
    // part is in.
    const N: u64 = 10_000;
    const CAP: usize = 1_000;
    let s = store();
    s.set_delay(Duration::from_secs(1));
    let wb = start(&s, WriteBehindConfig { max_call_rows: CAP, ..config(41) });
    let sink = wb.handle();
    sink.submit(first_write(N, 1)).unwrap();
    let parts = (2 * N as usize + 1).div_ceil(CAP) as u64;
    assert_eq!(wb.stats().unsettled_batches, parts, "one batch id per part");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let st = wb.stats();
    assert!(s.log().iter().filter(|c| c.ok).count() >= 2, "{:?}", s.log());
    assert_eq!(st.committed_tick, None, "parts landed, not the whole batch: {st:?}");
    // A position batch covering everyone arrives meanwhile: it supersedes the positions of the
    // parts still waiting, and is cut into parts too.
    let mut second = batch(2, 1..N + 1, 2.0);
    second.events[0].event_id = 2;
    sink.submit(handoff(second, true)).unwrap();
    s.set_delay(Duration::ZERO);
    wb.flush_async(Duration::from_secs(600)).await.unwrap();
    let log = s.log();
    let biggest = log.iter().map(|c| c.rows).max().unwrap();
    assert!(biggest <= CAP, "a call of {biggest} rows: {log:?}");
    assert!(log.iter().all(|c| c.ok));
    assert_in_seq_order(&s.written_ids());
    let st = wb.stats();
    assert_eq!((st.committed_tick, st.unsettled_batches, st.writes_dropped), (Some(2), 0, 0), "{st:?}");
    assert_eq!(s.inner().stats().npc_upserts, N);
    for id in [1, N / 2, N] {
        assert!(s.inner().get_npc(id).await.unwrap().is_some(), "registry row {id}");
        assert_eq!(s.inner().last_position(id).unwrap().x, 2.0, "latest position of {id}");
    }
    wb.shutdown_async(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn parts_spilled_to_the_outbox_are_replayed_in_calls_that_fit() {
    const N: u64 = 5_000;
    const CAP: usize = 1_000;
    let dir = tempfile::tempdir().unwrap();
    let s = store();
    s.set_failing(true);
    let cfg = WriteBehindConfig {
        max_call_rows: CAP,
        outbox_path: Some(dir.path().join("outbox.bin")),
        ..config(42)
    };
    let wb = start(&s, cfg);
    wb.handle().submit(first_write(N, 1)).unwrap();
    let parts = (2 * N as usize + 1).div_ceil(CAP) as u64;
    until(1000, || wb.stats().outbox_batches == parts).await;
    s.set_failing(false);
    wb.flush_async(Duration::from_secs(600)).await.unwrap();
    let written: Vec<_> = s.log().into_iter().filter(|c| c.ok).collect();
    assert!(written.iter().all(|c| c.rows <= CAP), "{written:?}");
    assert_eq!(written.iter().map(|c| c.rows).sum::<usize>(), 2 * N as usize + 1);
    assert_eq!(s.written_ids(), (1..=parts).map(|seq| BatchId { run: 42, seq }).collect::<Vec<_>>());
    assert_eq!(wb.stats().batches_replayed, parts);
    assert_eq!(s.inner().stats().npc_upserts, N);
    wb.shutdown_async(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn batches_that_cover_the_same_npcs_still_coalesce_into_one_call_under_the_cap() {
    // The cap counts rows as the call writes them, after latest-wins coalescing: an outbox of
    // full populations (one frame per flush while the store was down) replays in a few calls,
    // not one call per frame (that fell behind for good in the fault schedule).
    const N: u64 = 1_000;
    let dir = tempfile::tempdir().unwrap();
    let s = store();
    s.set_failing(true);
    let cfg = WriteBehindConfig {
        max_call_rows: 1_500,
        outbox_path: Some(dir.path().join("outbox.bin")),
        ..config(43)
    };
    let wb = start(&s, cfg);
    let sink = wb.handle();
    for t in 1..=20 {
        let mut b = batch(t, 1..N + 1, t as f32);
        b.events[0].event_id = t;
        // Not marked as covering everyone: the rows stay in the batches and reach the outbox.
        sink.submit(handoff(b, false)).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    until(1000, || wb.stats().outbox_batches == 20).await;
    s.set_failing(false);
    wb.flush_async(Duration::from_secs(600)).await.unwrap();
    let written: Vec<_> = s.log().into_iter().filter(|c| c.ok).collect();
    assert!(written.len() <= 2, "20 frames of the same NPCs in {} calls: {written:?}", written.len());
    assert!(written.iter().all(|c| c.rows <= 1_500), "{written:?}");
    assert_eq!(s.inner().last_position(N).unwrap().x, 20.0);
    wb.shutdown_async(Duration::from_secs(1)).await.unwrap();
}

/// The position buffers the worker hands back are kept for the batcher while it runs (no page
/// faults refilling a million positions every cut) and freed at shutdown: nothing refills them
/// then, and at a million NPCs they are tens of MB of the process's memory.
#[tokio::test(start_paused = true)]
async fn spare_position_buffers_are_reused_while_running_and_freed_at_shutdown() {
    let s = store();
    let wb = start(&s, config(3));
    let sink = wb.handle();
    sink.submit(handoff(batch(1, 0..5_000, 1.0), true)).unwrap();
    wb.flush_async(Duration::from_secs(60)).await.unwrap();
    let kept = sink.reuse_columns().expect("the written batch's columns were kept for reuse");
    assert!(kept.ids.capacity() >= 5_000, "the capacity is kept");
    sink.submit(handoff(batch(2, 0..5_000, 2.0), true)).unwrap();
    wb.flush_async(Duration::from_secs(60)).await.unwrap();
    wb.shutdown_async(Duration::from_secs(1)).await.unwrap();
    assert!(sink.reuse_columns().is_none(), "spare buffers outlived the shutdown");
}
