//! Issue 13 regressions in the write-behind: each test fails on the behaviour of d2ad729.
//! (The breaker's are unit tests in `src/breaker.rs`, the outbox format's in `src/outbox.rs`;
//! the ones that need PostgreSQL or Redis are in `tests/faults.rs` and `tests/postgres.rs`.)

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use terrarium_persistence::testing::FaultyStore;
use terrarium_persistence::{
    BatchId, BatchSink, BreakerConfig, CircuitBreaker, Handoff, MemoryStore, NpcFilter, NpcPage, NpcRecord,
    Page, PositionRow, Storage, StorageError, WriteBatch, WriteBehind, WriteBehindConfig, WriteBehindError,
};

/// A batch with one position row per id in `ids`.
fn batch(tick: u64, ids: std::ops::Range<u64>) -> WriteBatch {
    WriteBatch {
        tick,
        positions: ids.map(|npc_id| PositionRow { npc_id, tick, x: tick as f32, y: 0.0, z: 0.0 }).collect(),
        ..WriteBatch::default()
    }
}

fn handoff(batch: WriteBatch) -> Handoff {
    Handoff { batch, ..Handoff::default() }
}

fn config(run: u64) -> WriteBehindConfig {
    WriteBehindConfig { run_id: Some(run), commit_interval_ms: 0, ..WriteBehindConfig::default() }
}

fn start<S: Storage>(s: &Arc<S>, cfg: WriteBehindConfig) -> WriteBehind<S> {
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

/// A store whose calls take 10 ms per batch (a store whose time grows with what it is given).
#[derive(Default)]
struct SlowPerBatch {
    inner: MemoryStore,
    calls: AtomicU64,
    largest_ok: AtomicU64,
}

impl Storage for SlowPerBatch {
    fn name(&self) -> &'static str {
        "slow"
    }
    async fn write(&self, batches: &[WriteBatch]) -> Result<(), StorageError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(10) * batches.len() as u32).await;
        self.inner.write(batches).await?;
        self.largest_ok.fetch_max(batches.len() as u64, Ordering::Relaxed);
        Ok(())
    }
    async fn get_npc(&self, id: u64) -> Result<Option<NpcRecord>, StorageError> {
        self.inner.get_npc(id).await
    }
    async fn list_npcs(&self, filter: &NpcFilter, page: Page) -> Result<NpcPage, StorageError> {
        self.inner.list_npcs(filter, page).await
    }
    async fn load_npcs(&self) -> Result<Vec<NpcRecord>, StorageError> {
        self.inner.load_npcs().await
    }
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_group_is_halved_until_it_lands() {
    // Defect 3: a group too big for the timeout was retried unchanged, forever.
    let s = Arc::new(SlowPerBatch::default());
    let cfg = WriteBehindConfig { write_timeout_ms: 100, write_rows_per_s: 1_000_000_000, ..config(1) };
    let wb = start(&s, cfg);
    let sink = wb.handle();
    // 64 batches wait (the store is busy with the first), then go as one group of 640 ms.
    for t in 1..=65 {
        sink.submit(handoff(batch(t, t * 10..t * 10 + 10))).unwrap();
    }
    wb.flush_async(Duration::from_secs(60)).await.expect("every batch lands");
    assert_eq!(s.inner.stats().position_rows, 650);
    assert_eq!(s.inner.applied_seq(1), Some(65));
    assert!(s.largest_ok.load(Ordering::Relaxed) <= 9, "only groups under 100 ms landed");
    assert_eq!(wb.stats().writes_dropped, 0);
    wb.shutdown_async(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn batches_are_spilled_at_once_while_the_breaker_is_open() {
    // Defect 8 (review L7): while an open breaker said "retry after 60 s", new batches waited
    // in memory for that minute instead of going to the outbox: a crash then lost them.
    let dir = tempfile::tempdir().unwrap();
    let faulty = FaultyStore::new(MemoryStore::default());
    faulty.set_failing(true);
    let cfg = BreakerConfig { failure_threshold: 1, reset_timeout_ms: 60_000, ..BreakerConfig::default() };
    let s = Arc::new(CircuitBreaker::new(faulty, cfg));
    let wb = start(&s, WriteBehindConfig { outbox_path: Some(dir.path().join("outbox.bin")), ..config(2) });
    wb.handle().submit(handoff(batch(1, 0..10))).unwrap();
    until(100, || wb.stats().breaker_open).await;
    for t in 2..=5 {
        wb.handle().submit(handoff(batch(t, 0..10))).unwrap();
    }
    until(100, || wb.stats().batches_spilled == 5).await;
    assert_eq!(wb.stats().queued_batches, 0, "nothing waits in memory");
    s.inner().set_failing(false);
    tokio::time::sleep(Duration::from_secs(61)).await;
    wb.flush_async(Duration::from_secs(60)).await.unwrap();
    assert_eq!(s.inner().inner().applied_seq(2), Some(5));
    wb.shutdown_async(Duration::from_secs(1)).await.unwrap();
}

/// Writes batches 1..=3 (3, 4 and 5 position rows, no NPC twice, so nothing coalesces) into
/// an outbox with the store down.
async fn outbox_of_three(path: &std::path::Path) {
    let down = Arc::new(FaultyStore::new(MemoryStore::default()));
    down.set_failing(true);
    let wb = start(&down, WriteBehindConfig { outbox_path: Some(path.to_path_buf()), ..config(3) });
    for t in 1..=3 {
        wb.handle().submit(handoff(batch(t, t * 10..t * 10 + t + 2))).unwrap();
    }
    let report = wb.shutdown_async(Duration::from_secs(2)).await.unwrap();
    assert_eq!(report.left_in_outbox, 3);
}

#[tokio::test(start_paused = true)]
async fn a_damaged_outbox_frame_is_counted_with_its_rows_and_the_rest_replays() {
    // Defect 5 (review M7): lost frames did not count in `writes_dropped`.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.bin");
    outbox_of_three(&path).await;
    let mut bytes = std::fs::read(&path).unwrap();
    // The second frame's payload: past the first frame (48 + its payload) and a header.
    let first = 48 + u64::from_le_bytes(bytes[16..24].try_into().unwrap()) as usize;
    bytes[first + 48 + 3] ^= 0x55;
    std::fs::write(&path, &bytes).unwrap();
    let up = Arc::new(MemoryStore::default());
    let wb = start(&up, WriteBehindConfig { outbox_path: Some(path.clone()), ..config(4) });
    wb.flush_async(Duration::from_secs(60)).await.unwrap();
    let st = wb.stats();
    assert_eq!((st.failed_batches, st.writes_dropped, st.outbox_frames_lost), (1, 4, 1), "{st:?}");
    assert_eq!(up.stats().position_rows, 3 + 5, "batches 1 and 3 replayed");
    assert!(std::fs::metadata(dir.path().join("outbox.bin.corrupt")).unwrap().len() > 0);
    wb.shutdown_async(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_outbox_of_another_batch_layout_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.bin");
    outbox_of_three(&path).await;
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[12..16].copy_from_slice(&(WriteBatch::LAYOUT + 1).to_le_bytes());
    let sum = terrarium_codec::checksum(&bytes[0..40]);
    bytes[40..48].copy_from_slice(&sum.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let cfg = WriteBehindConfig { outbox_path: Some(path.clone()), ..config(5) };
    let err =
        WriteBehind::start_on(&tokio::runtime::Handle::current(), Arc::new(MemoryStore::default()), cfg)
            .unwrap_err();
    assert!(matches!(err, WriteBehindError::OutboxUnreadable { offset: 0, .. }), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "nothing skipped or cut");
}

#[tokio::test(start_paused = true)]
async fn given_up_batches_come_back_with_replay_dead() {
    // Defect 4: `.dead` had no way back.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.bin");
    let s = Arc::new(FaultyStore::new(MemoryStore::default()));
    s.stall();
    let wb = start(&s, WriteBehindConfig { outbox_path: Some(path.clone()), max_attempts: 2, ..config(6) });
    wb.handle().submit(handoff(batch(1, 0..7))).unwrap();
    until(10, || s.calls() == 1).await;
    s.reject_next(2);
    s.release();
    until(1000, || wb.stats().failed_batches == 1).await;
    wb.shutdown_async(Duration::from_secs(1)).await.unwrap();
    assert!(s.inner().last_position(3).is_none());
    let wb = start(&s, WriteBehindConfig { outbox_path: Some(path.clone()), replay_dead: true, ..config(7) });
    wb.flush_async(Duration::from_secs(60)).await.unwrap();
    assert_eq!(wb.stats().dead_requeued, 1);
    assert_eq!(s.inner().last_position(3).map(|p| p.tick), Some(1));
    assert_eq!(s.written_ids().last(), Some(&BatchId { run: 7, seq: 1 }));
    assert!(!dir.path().join("outbox.bin.dead").exists());
    wb.shutdown_async(Duration::from_secs(1)).await.unwrap();
}

#[test]
fn a_fixed_run_id_is_not_accepted_from_configuration() {
    // Defect 6 (review M8): `write_behind.run_id = 1` made every start after the first skip
    // all its batches as already applied.
    let err = toml::from_str::<WriteBehindConfig>("run_id = 1").unwrap_err();
    assert!(err.to_string().contains("run_id"), "{err}");
    let cfg: WriteBehindConfig = toml::from_str("max_attempts = 3").unwrap();
    assert_eq!(cfg.run_id, None);
}

/// A store whose write blocks its thread (ignores cancellation) for a while.
#[derive(Default)]
struct Wedged(MemoryStore);

impl Storage for Wedged {
    fn name(&self) -> &'static str {
        "wedged"
    }
    async fn write(&self, batches: &[WriteBatch]) -> Result<(), StorageError> {
        std::thread::sleep(Duration::from_secs(4));
        self.0.write(batches).await
    }
    async fn get_npc(&self, id: u64) -> Result<Option<NpcRecord>, StorageError> {
        self.0.get_npc(id).await
    }
    async fn list_npcs(&self, filter: &NpcFilter, page: Page) -> Result<NpcPage, StorageError> {
        self.0.list_npcs(filter, page).await
    }
    async fn load_npcs(&self) -> Result<Vec<NpcRecord>, StorageError> {
        self.0.load_npcs().await
    }
}

#[test]
fn a_shutdown_that_cannot_finish_counts_what_it_loses() {
    // Defect 8 (review L6): the docs said so, `writes_dropped` stayed 0.
    let wb = WriteBehind::start(Arc::new(Wedged::default()), config(8)).unwrap();
    wb.handle().submit(handoff(batch(1, 0..5))).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    wb.handle().submit(handoff(batch(2, 0..6))).unwrap();
    let handle = wb.handle();
    let err = wb.shutdown(Duration::from_millis(100)).unwrap_err();
    assert!(matches!(err, WriteBehindError::Timeout { .. }), "{err}");
    let st = handle.stats();
    assert_eq!((st.failed_batches, st.writes_dropped), (2, 11), "{st:?}");
}
