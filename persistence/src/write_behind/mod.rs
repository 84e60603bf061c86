//! `WriteBehind<S>`: the bridge from the synchronous tick to an async [`Storage`].
//!
//! The tick hands batches over with [`BatchSink::submit`] (a brief, uncontended lock and a
//! notify: no I/O, no waiting). A task on tokio takes them in order, drops position rows that
//! later batches overwrite, and writes consecutive batches in one store call (group commit).
//! When the store fails, or too much waits in memory, batches go to the outbox file and are
//! replayed from it, in order, before anything newer; also after a restart. See
//! `persistence/DESIGN.md` for the ordering and durability rules.

mod coalesce;
mod split;
mod worker;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

// The worker measures time with tokio's clock, so tests can pause it.
use tokio::time::Instant as TokioInstant;

use crate::WriteBehindConfig;
use crate::outbox::{OpenError, Outbox};
use crate::{
    BatchId, BatchSink, Handoff, PositionColumns, PositionRow, SinkHealth, Storage, WriteBehindError,
};

/// Counters of a [`WriteBehind`], read at any time with [`WriteBehind::stats`].
///
/// Serialised as they are (the game server's `/api/performance`, the headless `performance`
/// key); the two queue depths keep the JSON names they were first published under.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct WriteBehindStats {
    /// Batches accepted by `submit`.
    pub batches_submitted: u64,
    /// Rows (all kinds) accepted by `submit`.
    pub rows_submitted: u64,
    /// Store calls made (successful or not).
    pub store_calls: u64,
    /// Store calls that failed (and were retried, or led to a spill).
    pub store_errors: u64,
    /// Batches the store acknowledged (a replayed batch counts again).
    pub batches_written: u64,
    /// Position rows in acknowledged batches.
    pub position_rows_written: u64,
    /// Metric rows in acknowledged batches.
    pub metric_rows_written: u64,
    /// Event rows in acknowledged batches.
    pub event_rows_written: u64,
    /// NPC upserts and removals in acknowledged batches.
    pub npc_rows_written: u64,
    /// Position rows dropped because a later batch overwrote them before they were written.
    pub rows_coalesced: u64,
    /// Batches written to the outbox file.
    pub batches_spilled: u64,
    /// Batches read back from the outbox and acknowledged by the store.
    pub batches_replayed: u64,
    /// Batches given up on (refused at submit, refused by the store too often, damaged in the
    /// outbox, or left over at shutdown with nowhere to go).
    pub failed_batches: u64,
    /// Rows in those batches: rows that will never reach the store.
    pub writes_dropped: u64,
    /// Rows waiting in memory now.
    #[serde(rename = "queue_rows")]
    pub queued_rows: u64,
    /// Batches waiting in memory now.
    #[serde(rename = "queue_batches")]
    pub queued_batches: u64,
    /// Batches waiting in the outbox now.
    pub outbox_batches: u64,
    /// Size of the outbox file now, bytes.
    pub outbox_bytes: u64,
    /// Outbox frames found damaged (at start-up or at replay) and lost; their batches are in
    /// `failed_batches`, their rows (when the frame's header said how many) in
    /// `writes_dropped`, their bytes in `<outbox>.corrupt`.
    pub outbox_frames_lost: u64,
    /// Bytes of those frames.
    pub outbox_bytes_lost: u64,
    /// Batches of `<outbox>.dead` queued again at start-up (`replay_dead`).
    pub dead_requeued: u64,
    /// True from a failed store call until the next successful one.
    pub degraded: bool,
    /// True while the store answers with an open circuit breaker.
    pub breaker_open: bool,
    /// Tick of the newest batch of this run the store acknowledged (`None` before the first).
    pub committed_tick: Option<u64>,
    /// Batch ids of this run handed out by `submit` (a handoff cut into parts for
    /// `max_call_rows` holds one per part) and not yet written or given up.
    pub unsettled_batches: u64,
    /// This run's producer id: the `run` of its batch ids (a row of `applied_batches` in the
    /// stores, the run of its outbox frames). Opaque; 0 in a default value.
    pub run_id: u64,
    /// Every batch of this run up to this `seq` is settled: acknowledged by the store, or
    /// given up (counted in `failed_batches`). With no batch given up, the store's mark for
    /// `run_id` is at least this; batches above it wait in memory or in the outbox.
    pub settled_through_seq: u64,
    /// The newest batch id of this run handed out by `submit` (a handoff cut into parts for
    /// `max_call_rows` takes one per part): a checkpoint cut after a handoff follows this
    /// `seq`, and is stored once the store's mark for `run_id` reaches it.
    pub last_seq: u64,
}

/// Writes batches to a [`Storage`] behind the tick's back, on tokio.
///
/// Start it with [`WriteBehind::start`] (it then owns a one-thread runtime) or
/// [`WriteBehind::start_on`] (on the host's runtime); give the tick a [`WriteBehind::handle`].
/// [`WriteBehind::flush`] waits until everything handed over is in the store;
/// [`WriteBehind::shutdown`] does that and stops, leaving in the outbox whatever the store
/// would not take in time.
///
/// # Examples
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use terrarium_persistence::{BatchSink, Handoff, MemoryStore, PositionColumns, PositionRow, WriteBehind, WriteBehindConfig};
///
/// let store = Arc::new(MemoryStore::default());
/// let wb = WriteBehind::start(Arc::clone(&store), WriteBehindConfig::default())?;
/// let sink = wb.handle();
/// let positions = PositionColumns { tick: 5, ids: vec![1], xyz: vec![[1.0, 0.0, 2.0]] };
/// sink.submit(Handoff { positions, ..Handoff::default() })?;
/// wb.shutdown(Duration::from_secs(5))?;
/// assert_eq!(store.last_position(1), Some(PositionRow { npc_id: 1, tick: 5, x: 1.0, y: 0.0, z: 2.0 }));
/// # Ok::<(), terrarium_persistence::WriteBehindError>(())
/// ```
pub struct WriteBehind<S: Storage> {
    shared: Arc<Shared>,
    store: Arc<S>,
    runtime: Option<tokio::runtime::Runtime>,
    done: bool,
}

/// The tick's end of a [`WriteBehind`]: cheap to clone, implements [`BatchSink`].
#[derive(Clone)]
pub struct WriteBehindHandle {
    shared: Arc<Shared>,
}

/// What producer and worker share.
struct Shared {
    run_id: u64,
    max_queued_rows: usize,
    /// Most rows in one store call; a bigger handoff gets one batch id per part.
    max_call_rows: usize,
    queue: Mutex<Queue>,
    /// Signalled by the worker when it goes idle or stops (for `flush`/`shutdown`).
    changed: Condvar,
    /// Wakes the worker: a batch arrived, a flush was asked for, or shutdown.
    wake: tokio::sync::Notify,
    /// Wakes async flushers.
    idle_notify: tokio::sync::Notify,
    counters: Counters,
    last_error: Mutex<Option<String>>,
    degraded: AtomicBool,
    breaker_open: AtomicBool,
    /// Progress of this run's batches in the store, for the storage lag.
    progress: Mutex<Progress>,
}

/// How far the store has got with this run's batches.
#[derive(Debug, Default)]
struct Progress {
    /// Tick of the newest batch of this run the store acknowledged with every batch before it
    /// settled: a batch cut into parts counts once its last part is in.
    committed_tick: Option<u64>,
    /// Seqs of this run settled (written or given up) that are above `settled_through`.
    settled_above: std::collections::BTreeSet<u64>,
    /// Ticks of the written ones among them.
    written_above: std::collections::BTreeMap<u64, u64>,
    /// Every seq up to this one is settled.
    settled_through: u64,
    /// First seq → last seq of each handoff cut into parts, until its last part settles: only
    /// the last part carries the batch's tick.
    parts: std::collections::BTreeMap<u64, u64>,
}

impl Progress {
    /// Seq `seq` is settled; `written` is its tick when the store has it.
    fn settle(&mut self, seq: u64, written: Option<u64>) {
        if seq <= self.settled_through {
            return;
        }
        self.settled_above.insert(seq);
        let part_of = self.parts.range(..=seq).next_back().map(|(&first, &last)| (first, last));
        let last_part = match part_of {
            Some((first, last)) if seq <= last => {
                if seq == last {
                    self.parts.remove(&first);
                }
                seq == last
            }
            _ => true,
        };
        if let Some(tick) = written.filter(|_| last_part) {
            self.written_above.insert(seq, tick);
        }
        while self.settled_above.remove(&(self.settled_through + 1)) {
            self.settled_through += 1;
            if let Some(tick) = self.written_above.remove(&self.settled_through) {
                self.committed_tick = Some(self.committed_tick.map_or(tick, |t| t.max(tick)));
            }
        }
    }
}

/// A handoff waiting in memory, and how many batch ids it holds: one per part it is cut into
/// before it is written (see [`split`]).
#[derive(Debug, Default)]
struct Queued {
    handoff: Handoff,
    parts: u64,
}

impl Queued {
    fn len(&self) -> usize {
        self.handoff.len()
    }
}

/// Batches handed over and not yet taken by the worker, in submit order.
#[derive(Default)]
struct Queue {
    batches: VecDeque<Queued>,
    rows: usize,
    /// Batches before this index hold no position rows (a batch covering every NPC emptied
    /// them), so superseding starts here: a submit stays O(1) however long the queue grows
    /// while the store is stalled.
    positions_from: usize,
    next_seq: u64,
    /// Position columns to hand back to the batcher.
    spare: Vec<PositionColumns>,
    /// Superseded buffers the pool had no room for; the worker frees them (a big free may
    /// unmap pages, which the tick must not pay for).
    garbage: Vec<(Vec<PositionRow>, PositionColumns)>,
    /// The worker has taken batches out and not yet put back the parts it won't write in
    /// this call: the queue looks empty meanwhile, but positions are still on their way.
    taking: bool,
    /// Set by the worker when it finds nothing to do (memory and outbox empty).
    idle: bool,
    /// Callers waiting in `flush`: the worker skips the commit interval.
    flushers: usize,
    /// Shutdown asked for; `deadline` is when to stop waiting for the store.
    closed: bool,
    deadline: Option<TokioInstant>,
    /// The worker has stopped.
    stopped: bool,
    /// Batches still pending when the worker stopped (left in the outbox).
    left_in_outbox: u64,
}

#[derive(Default)]
struct Counters {
    batches_submitted: AtomicU64,
    rows_submitted: AtomicU64,
    store_calls: AtomicU64,
    store_errors: AtomicU64,
    batches_written: AtomicU64,
    position_rows_written: AtomicU64,
    metric_rows_written: AtomicU64,
    event_rows_written: AtomicU64,
    npc_rows_written: AtomicU64,
    rows_coalesced: AtomicU64,
    batches_spilled: AtomicU64,
    batches_replayed: AtomicU64,
    failed_batches: AtomicU64,
    writes_dropped: AtomicU64,
    outbox_batches: AtomicU64,
    outbox_bytes: AtomicU64,
    outbox_frames_lost: AtomicU64,
    outbox_bytes_lost: AtomicU64,
    dead_requeued: AtomicU64,
    /// The group in the store call now, when it came from memory (lost if the task never stops).
    in_flight_batches: AtomicU64,
    in_flight_rows: AtomicU64,
}

impl Queue {
    /// Nothing waits in memory or the outbox (the worker said so), or the worker stopped.
    fn drained(&self) -> bool {
        (self.idle && self.batches.is_empty()) || self.stopped
    }
}

/// Most column buffers kept for the batcher: one being filled, one waiting, one being turned
/// into rows circulate in steady state.
const MAX_SPARE_COLUMNS: usize = 3;
/// Most row buffers the worker keeps (one group is materialised at a time).
const MAX_SPARE_ROWS: usize = 2;
/// Position buffers smaller than this are not worth keeping.
const MIN_SPARE_CAPACITY: usize = 1024;

/// Keeps `columns` for the batcher to fill again, if there is room and they are worth it;
/// otherwise hands them back, to be freed.
fn keep_spare(spare: &mut Vec<PositionColumns>, columns: PositionColumns) -> Option<PositionColumns> {
    if spare.len() < MAX_SPARE_COLUMNS && columns.ids.capacity() >= MIN_SPARE_CAPACITY {
        spare.push(columns);
        None
    } else {
        Some(columns)
    }
}

/// What [`WriteBehind::shutdown`] left behind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Batches in the outbox file, to be replayed by the next start with the same outbox.
    pub left_in_outbox: u64,
    /// The counters at the end.
    pub stats: WriteBehindStats,
}

impl<S: Storage> WriteBehind<S> {
    /// Starts the write-behind on a runtime of its own (one worker thread, named
    /// `terrarium-write-behind`). Replays the outbox first if it holds batches from an
    /// earlier run.
    ///
    /// # Errors
    /// [`WriteBehindError::OutOfRange`] for a bad setting, [`WriteBehindError::Outbox`] when the
    /// outbox file can't be opened, [`WriteBehindError::Runtime`] when the thread can't start.
    pub fn start(store: Arc<S>, config: WriteBehindConfig) -> Result<Self, WriteBehindError> {
        config.validate()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("terrarium-write-behind")
            .on_thread_start(|| {
                crate::os::mark_background_thread();
            })
            .enable_time()
            .build()
            .map_err(WriteBehindError::Runtime)?;
        let mut wb = Self::start_on(runtime.handle(), store, config)?;
        wb.runtime = Some(runtime);
        Ok(wb)
    }

    /// Starts the write-behind as a task on the host's runtime (which must have time enabled).
    ///
    /// # Errors
    /// As [`WriteBehind::start`], except the runtime error.
    pub fn start_on(
        handle: &tokio::runtime::Handle,
        store: Arc<S>,
        config: WriteBehindConfig,
    ) -> Result<Self, WriteBehindError> {
        config.validate()?;
        let counters = Counters::default();
        let run_id = config.run_id.unwrap_or_else(fresh_run_id);
        let mut next_seq = 0;
        let outbox = match &config.outbox_path {
            Some(path) => {
                let outbox_error = |e: OpenError| match e {
                    OpenError::Io(source) => WriteBehindError::Outbox { path: path.clone(), source },
                    OpenError::Unreadable { offset, version, layout } => {
                        WriteBehindError::OutboxUnreadable { path: path.clone(), offset, version, layout }
                    }
                };
                let (mut outbox, rec) = Outbox::open(path, config.max_frame_bytes).map_err(outbox_error)?;
                if rec.frames > 0 {
                    tracing::info!(path = %path.display(), frames = rec.frames, "outbox holds batches from an earlier run; replaying them first");
                }
                if rec.lost_frames > 0 {
                    tracing::error!(path = %path.display(), frames = rec.lost_frames, rows = rec.lost_rows, bytes = rec.lost_bytes, "outbox had damaged frames; they were moved to <outbox>.corrupt and are counted as dropped");
                    counters.failed_batches.fetch_add(rec.lost_frames, Ordering::Relaxed);
                    counters.writes_dropped.fetch_add(rec.lost_rows, Ordering::Relaxed);
                    counters.outbox_frames_lost.fetch_add(rec.lost_frames, Ordering::Relaxed);
                    counters.outbox_bytes_lost.fetch_add(rec.lost_bytes, Ordering::Relaxed);
                }
                if config.replay_dead {
                    // Fresh ids of this run: their old ids are at or below their run's mark in
                    // the store, which would skip them as already applied.
                    let requeued = outbox
                        .requeue_dead(|b| {
                            next_seq += 1;
                            b.id = BatchId { run: run_id, seq: next_seq };
                        })
                        .map_err(outbox_error)?;
                    if requeued > 0 {
                        tracing::info!(path = %path.display(), batches = requeued, "dead-letter batches queued again");
                    }
                    counters.dead_requeued.store(requeued, Ordering::Relaxed);
                }
                counters.outbox_batches.store(outbox.pending(), Ordering::Relaxed);
                counters.outbox_bytes.store(outbox.bytes(), Ordering::Relaxed);
                Some(outbox)
            }
            None => None,
        };
        let shared = Arc::new(Shared {
            run_id,
            max_queued_rows: config.max_queued_rows,
            max_call_rows: config.max_call_rows,
            queue: Mutex::new(Queue { next_seq, ..Queue::default() }),
            changed: Condvar::new(),
            wake: tokio::sync::Notify::new(),
            idle_notify: tokio::sync::Notify::new(),
            counters,
            last_error: Mutex::new(None),
            degraded: AtomicBool::new(false),
            breaker_open: AtomicBool::new(false),
            progress: Mutex::new(Progress::default()),
        });
        let worker = worker::Worker::new(Arc::clone(&shared), Arc::clone(&store), &config, outbox);
        handle.spawn(worker.run());
        Ok(Self { shared, store, runtime: None, done: false })
    }

    /// A handle for the tick (or any producer) to submit batches.
    #[must_use]
    pub fn handle(&self) -> WriteBehindHandle {
        WriteBehindHandle { shared: Arc::clone(&self.shared) }
    }

    /// The store behind it.
    #[must_use]
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// The producer id in this instance's batch ids.
    #[must_use]
    pub fn run_id(&self) -> u64 {
        self.shared.run_id
    }

    /// The counters now.
    #[must_use]
    pub fn stats(&self) -> WriteBehindStats {
        self.shared.stats()
    }

    /// The last store error, as text.
    #[must_use]
    pub fn last_error(&self) -> Option<String> {
        self.shared.lock_error().clone()
    }

    /// Blocks until every batch handed over before the call is in the store (and the outbox is
    /// empty). Skips the commit interval. Do not call it from inside an async task; use
    /// [`WriteBehind::flush_async`] there.
    ///
    /// # Errors
    /// [`WriteBehindError::Timeout`] when that takes longer than `timeout` (the store is slow or
    /// failing; nothing is lost, the batches keep waiting).
    pub fn flush(&self, timeout: Duration) -> Result<(), WriteBehindError> {
        let mut q = self.shared.lock();
        q.flushers += 1;
        self.shared.wake.notify_one();
        let mut q = self.shared.wait_until(q, Instant::now() + timeout, Queue::drained);
        q.flushers -= 1;
        if q.drained() {
            Ok(())
        } else {
            Err(WriteBehindError::Timeout { timeout, pending_batches: self.shared.pending_batches(&q) })
        }
    }

    /// [`WriteBehind::flush`] for async hosts: waits without blocking the thread.
    ///
    /// # Errors
    /// As [`WriteBehind::flush`].
    pub async fn flush_async(&self, timeout: Duration) -> Result<(), WriteBehindError> {
        self.shared.lock().flushers += 1;
        self.shared.wake.notify_one();
        let wait = async {
            loop {
                let notified = self.shared.idle_notify.notified();
                if self.shared.lock().drained() {
                    return;
                }
                notified.await;
            }
        };
        let result = tokio::time::timeout(timeout, wait).await;
        let mut q = self.shared.lock();
        q.flushers -= 1;
        result.map_err(|_| WriteBehindError::Timeout {
            timeout,
            pending_batches: self.shared.pending_batches(&q),
        })
    }

    /// Stops taking batches, writes everything that waits, then stops the task (and the
    /// runtime it owns). What the store does not take within `timeout` stays in the outbox
    /// for the next start; without an outbox it is dropped and counted. Blocks the calling
    /// thread; from async code use [`WriteBehind::shutdown_async`].
    ///
    /// # Errors
    /// [`WriteBehindError::Timeout`] when the task did not stop (a store call that ignores
    /// cancellation); what it held is then counted as dropped.
    pub fn shutdown(mut self, timeout: Duration) -> Result<ShutdownReport, WriteBehindError> {
        self.stop(timeout)
    }

    /// [`WriteBehind::shutdown`] for async hosts: waits without blocking the thread.
    ///
    /// # Errors
    /// As [`WriteBehind::shutdown`].
    pub async fn shutdown_async(mut self, timeout: Duration) -> Result<ShutdownReport, WriteBehindError> {
        self.done = true;
        self.close(timeout);
        let wait = async {
            loop {
                let notified = self.shared.idle_notify.notified();
                if self.shared.lock().stopped {
                    return;
                }
                notified.await;
            }
        };
        let stopped = tokio::time::timeout(timeout + GRACE, wait).await.is_ok();
        self.release_spares();
        if let Some(rt) = self.runtime.take() {
            // Dropping a runtime inside an async context is not allowed; let it wind down.
            rt.shutdown_background();
        }
        self.report(stopped, timeout)
    }

    fn close(&self, timeout: Duration) {
        let mut q = self.shared.lock();
        q.closed = true;
        q.deadline = Some(TokioInstant::now() + timeout);
        drop(q);
        self.shared.wake.notify_one();
    }

    fn stop(&mut self, timeout: Duration) -> Result<ShutdownReport, WriteBehindError> {
        self.done = true;
        self.close(timeout);
        // The worker stops at the deadline; a call in flight then is cut at the deadline too,
        // so a little grace is enough.
        let q = self.shared.lock();
        let q = self.shared.wait_until(q, Instant::now() + timeout + GRACE, |q| q.stopped);
        let stopped = q.stopped;
        drop(q);
        self.release_spares();
        if let Some(rt) = self.runtime.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                // Blocking on a runtime's shutdown is not allowed inside another runtime.
                rt.shutdown_background();
            } else {
                rt.shutdown_timeout(Duration::from_secs(1));
            }
        }
        self.report(stopped, timeout)
    }

    /// Frees the position buffers kept for the batcher: once stopped, nothing refills them
    /// (at a million NPCs they are up to 60 MB).
    fn release_spares(&self) {
        let spare = std::mem::take(&mut self.shared.lock().spare);
        drop(spare);
    }

    fn report(&self, stopped: bool, timeout: Duration) -> Result<ShutdownReport, WriteBehindError> {
        let q = self.shared.lock();
        if !stopped {
            let pending =
                q.batches.len() as u64 + self.shared.counters.outbox_batches.load(Ordering::Relaxed);
            // What is only in memory (waiting, or in the call that did not stop) is lost with
            // the task: count it, as the docs promise.
            let c = &self.shared.counters;
            let (in_flight_batches, in_flight_rows) =
                (c.in_flight_batches.swap(0, Ordering::Relaxed), c.in_flight_rows.swap(0, Ordering::Relaxed));
            let lost_batches = q.batches.len() as u64 + in_flight_batches;
            let lost_rows = q.rows as u64 + in_flight_rows;
            c.failed_batches.fetch_add(lost_batches, Ordering::Relaxed);
            c.writes_dropped.fetch_add(lost_rows, Ordering::Relaxed);
            tracing::error!(
                pending,
                lost_batches,
                lost_rows,
                "write-behind task did not stop in time; batches in memory are lost (counted as dropped)"
            );
            return Err(WriteBehindError::Timeout { timeout, pending_batches: pending });
        }
        let left_in_outbox = q.left_in_outbox;
        drop(q);
        Ok(ShutdownReport { left_in_outbox, stats: self.stats() })
    }
}

/// How long `shutdown` waits past its deadline for the task to stop.
const GRACE: Duration = Duration::from_secs(2);

impl<S: Storage> Drop for WriteBehind<S> {
    /// Shuts down if `shutdown` was not called: waits up to 5 s for the store. Inside the host's
    /// runtime (started with `start_on`) it must not block the thread the task may need, so it
    /// only asks the task to stop now: what waits goes to the outbox, or is counted as dropped.
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if self.runtime.is_none() && tokio::runtime::Handle::try_current().is_ok() {
            self.done = true;
            self.close(Duration::ZERO);
            tracing::warn!("write-behind dropped inside its runtime; use shutdown_async to drain it");
            return;
        }
        if let Err(e) = self.stop(Duration::from_secs(5)) {
            tracing::error!(error = %e, "write-behind dropped without a clean shutdown");
        }
    }
}

impl<S: Storage> std::fmt::Debug for WriteBehind<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteBehind")
            .field("store", &self.store.name())
            .field("run_id", &self.shared.run_id)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for WriteBehindHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteBehindHandle").field("run_id", &self.shared.run_id).finish_non_exhaustive()
    }
}

impl WriteBehindHandle {
    /// The counters now.
    #[must_use]
    pub fn stats(&self) -> WriteBehindStats {
        self.shared.stats()
    }

    /// The `seq` the last part of a handoff of `rows` rows would get if it were submitted
    /// now: for a checkpoint stored before its batch is handed over (a new world's first).
    /// Only meaningful while nothing else submits in between.
    #[must_use]
    pub fn seq_after(&self, rows: usize) -> u64 {
        self.shared.lock().next_seq + split::parts(rows, self.shared.max_call_rows)
    }
}

impl BatchSink for WriteBehindHandle {
    fn submit(&self, mut handoff: Handoff) -> Result<(), WriteBehindError> {
        let rows = handoff.len();
        let mut q = self.shared.lock();
        let refusal = if q.closed {
            Some(WriteBehindError::Closed)
        } else {
            let superseded: usize = if handoff.covers_all_positions {
                q.batches
                    .range(q.positions_from..)
                    .map(|w| w.handoff.batch.positions.len() + w.handoff.positions.len())
                    .sum()
            } else {
                0
            };
            let after = q.rows - superseded + rows;
            (after > self.shared.max_queued_rows)
                .then_some(WriteBehindError::Full { queued_rows: q.rows, limit: self.shared.max_queued_rows })
        };
        if let Some(err) = refusal {
            drop(q);
            self.shared.counters.failed_batches.fetch_add(1, Ordering::Relaxed);
            self.shared.counters.writes_dropped.fetch_add(rows as u64, Ordering::Relaxed);
            tracing::error!(error = %err, rows, "batch refused by the write-behind");
            return Err(err);
        }
        let mut coalesced = 0usize;
        if handoff.covers_all_positions {
            let Queue { batches, spare, garbage, rows: queued, positions_from, .. } = &mut *q;
            for Queued { handoff: h, .. } in batches.range_mut(*positions_from..) {
                let n = h.batch.positions.len() + h.positions.len();
                if n == 0 {
                    continue;
                }
                coalesced += n;
                let rows = std::mem::take(&mut h.batch.positions);
                let columns = keep_spare(spare, std::mem::take(&mut h.positions)).unwrap_or_default();
                if rows.capacity() > 0 || columns.ids.capacity() > 0 {
                    garbage.push((rows, columns));
                }
            }
            *queued -= coalesced;
            *positions_from = batches.len();
        }
        // One id per part the worker will cut it into (every part is a batch of its own).
        let parts = split::parts(rows, self.shared.max_call_rows);
        handoff.batch.id = BatchId { run: self.shared.run_id, seq: q.next_seq + 1 };
        q.next_seq += parts;
        if parts > 1 {
            self.shared.lock_progress().parts.insert(q.next_seq + 1 - parts, q.next_seq);
        }
        q.rows += rows;
        q.batches.push_back(Queued { handoff, parts });
        q.idle = false;
        drop(q);
        let c = &self.shared.counters;
        c.batches_submitted.fetch_add(1, Ordering::Relaxed);
        c.rows_submitted.fetch_add(rows as u64, Ordering::Relaxed);
        c.rows_coalesced.fetch_add(coalesced as u64, Ordering::Relaxed);
        self.shared.wake.notify_one();
        Ok(())
    }

    fn run_id(&self) -> u64 {
        self.shared.run_id
    }

    fn reuse_columns(&self) -> Option<PositionColumns> {
        self.shared.lock().spare.pop()
    }

    fn health(&self) -> SinkHealth {
        let s = self.shared.stats();
        SinkHealth {
            failed_batches: s.failed_batches,
            writes_dropped: s.writes_dropped,
            last_error: self.shared.lock_error().clone(),
            breaker_open: s.breaker_open,
            degraded: s.degraded,
            queued_rows: s.queued_rows,
            outbox_batches: s.outbox_batches,
            committed_tick: s.committed_tick,
            unsettled_batches: s.unsettled_batches,
        }
    }

    fn wants_positions(&self) -> bool {
        let q = self.shared.lock();
        // While the worker cuts a taken batch into parts, the parts it puts back are not in
        // the queue yet: a batch cut now would be written in full after all of them.
        !q.taking
            && q.batches
                .range(q.positions_from..)
                .all(|w| w.handoff.positions.is_empty() && w.handoff.batch.positions.is_empty())
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Nothing panics while holding this lock except a bug; the queue is still consistent
        // (every update is a single push/pop), so recover rather than poison the tick.
        self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits on `changed` until `done` holds or `deadline` passes; returns the guard either way.
    fn wait_until<'a>(
        &self,
        mut q: MutexGuard<'a, Queue>,
        deadline: Instant,
        done: impl Fn(&Queue) -> bool,
    ) -> MutexGuard<'a, Queue> {
        while !done(&q) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            q = self
                .changed
                .wait_timeout(q, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        q
    }

    /// Batches not yet in the store: waiting in memory or in the outbox.
    fn pending_batches(&self, q: &Queue) -> u64 {
        q.batches.len() as u64 + self.counters.outbox_batches.load(Ordering::Relaxed)
    }

    fn lock_error(&self) -> MutexGuard<'_, Option<String>> {
        self.last_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_progress(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records that the store has this run's batches (written, or given up and counted).
    fn settle<'a>(&self, batches: impl IntoIterator<Item = &'a crate::WriteBatch>, written: bool) {
        let mut p = self.lock_progress();
        for b in batches.into_iter().filter(|b| b.id.run == self.run_id) {
            p.settle(b.id.seq, written.then_some(b.tick));
        }
    }

    fn stats(&self) -> WriteBehindStats {
        let (queued_rows, queued_batches, submitted) = {
            let q = self.lock();
            (q.rows as u64, q.batches.len() as u64, q.next_seq)
        };
        let (committed_tick, settled, settled_through_seq) = {
            let p = self.lock_progress();
            (p.committed_tick, p.settled_through + p.settled_above.len() as u64, p.settled_through)
        };
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WriteBehindStats {
            batches_submitted: get(&c.batches_submitted),
            rows_submitted: get(&c.rows_submitted),
            store_calls: get(&c.store_calls),
            store_errors: get(&c.store_errors),
            batches_written: get(&c.batches_written),
            position_rows_written: get(&c.position_rows_written),
            metric_rows_written: get(&c.metric_rows_written),
            event_rows_written: get(&c.event_rows_written),
            npc_rows_written: get(&c.npc_rows_written),
            rows_coalesced: get(&c.rows_coalesced),
            batches_spilled: get(&c.batches_spilled),
            batches_replayed: get(&c.batches_replayed),
            failed_batches: get(&c.failed_batches),
            writes_dropped: get(&c.writes_dropped),
            queued_rows,
            queued_batches,
            outbox_batches: get(&c.outbox_batches),
            outbox_bytes: get(&c.outbox_bytes),
            outbox_frames_lost: get(&c.outbox_frames_lost),
            outbox_bytes_lost: get(&c.outbox_bytes_lost),
            dead_requeued: get(&c.dead_requeued),
            degraded: self.degraded.load(Ordering::Relaxed),
            breaker_open: self.breaker_open.load(Ordering::Relaxed),
            committed_tick,
            unsettled_batches: submitted.saturating_sub(settled),
            run_id: self.run_id,
            settled_through_seq,
            last_seq: submitted,
        }
    }
}

/// A producer id that differs between processes and between starts in one process.
fn fresh_run_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static STARTS: AtomicU64 = AtomicU64::new(0);
    // `RandomState` is seeded from the OS once per process; the time and a counter make each
    // start in the process differ too.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos(),
    );
    h.write_u64(STARTS.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    h.finish()
}
