//! `StoragePipeline`: everything a running world needs to persist, started from one
//! [`Config`]: the storage stack of `[storage]` (L1 → Redis → retry → breaker → PostgreSQL or
//! memory), the write-behind of `[write_behind]` in front of it, and a tokio runtime for both
//! (or the host's). [`StoragePipeline::batching_plugin`] connects a world's batching to it.
//!
//! ```
//! use std::time::Duration;
//! use terrarium::{Config, StoragePipeline};
//! use terrarium::engine::{Engine, NpcSpec, Position, Role, Velocity};
//!
//! let cfg = Config::default(); // memory backend, no server needed
//! let pipeline = StoragePipeline::start(&cfg).unwrap();
//! let mut engine = Engine::builder(cfg.engine.clone())
//!     .add_plugin(terrarium::systems::core_plugin)
//!     .add_plugin(pipeline.batching_plugin())
//!     .build()
//!     .unwrap();
//! let id = engine.spawn_npc(NpcSpec::new(Role::Scout, Position::new(5.0, 0.0, 5.0)).moving(Velocity::new(1.0, 0.0, 0.0)));
//! engine.run_ticks(40);
//! terrarium::systems::batching::flush_now(&mut engine);
//! let report = pipeline.shutdown(Duration::from_secs(10)).unwrap();
//! assert_eq!(report.stats.writes_dropped, 0);
//! # let _ = id;
//! ```

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use terrarium_engine::{Engine, EngineBuilder};
use terrarium_persistence::{
    Backend, CheckpointConfig, NpcFilter, Page, ResumePoint, ShutdownReport, Storage, StorageError,
    StorageStack, WriteBehind, WriteBehindError, WriteBehindHandle, WriteBehindStats,
};

use crate::Config;
use crate::checkpoint::{CheckpointError, CheckpointStats, Checkpointer, Counters, Job};
use crate::resume::{ResumeError, ResumeReport};

/// The storage side of a running world. Dropping it without [`StoragePipeline::shutdown`]
/// still drains what it can (see `WriteBehind`'s drop), but only `shutdown` reports.
pub struct StoragePipeline {
    // Field order is drop order: the checkpoint writer and the write-behind stop before the
    // stack and the runtime they run on.
    checkpointer: Arc<Mutex<Checkpointer>>,
    checkpoint: CheckpointConfig,
    write_behind: WriteBehind<StorageStack>,
    stack: Arc<StorageStack>,
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
}

/// How the store compares with the world after the drain (`headless --verify-store`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreCheck {
    /// NPCs in the world.
    pub world_npcs: u64,
    /// NPCs read back from the store (through every layer of the stack).
    pub stored_npcs: u64,
    /// NPCs missing from the store, stored at another position, or stored but not in the world.
    pub mismatches: u64,
}

/// What [`StoragePipeline::checkpoint_new_world`] stored before the first tick.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NewWorldStats {
    /// The checkpoint writer's counters after it.
    pub checkpoint: CheckpointStats,
    /// Wall-clock milliseconds to cut the population and store the checkpoint.
    pub checkpoint_ms: f64,
    /// Rows of the population's batch (registry rows, positions, events).
    pub rows: u64,
    /// Wall-clock milliseconds until the store had committed them.
    pub rows_ms: f64,
}

/// Rows that reached the backend, by kind (what the store itself counted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WrittenRows {
    /// Position history rows.
    pub positions: u64,
    /// Metric rows.
    pub metrics: u64,
    /// Event rows.
    pub events: u64,
    /// Current-state (registry) upserts.
    pub npc_upserts: u64,
}

/// The pipeline could not start or stop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// The tokio runtime for storage I/O could not start.
    #[error("cannot start the storage runtime")]
    Runtime(#[source] std::io::Error),
    /// The storage stack could not be built (bad `[storage]` setting, unreachable database).
    #[error("cannot build the storage stack ({backend})")]
    Storage {
        /// `storage.backend`.
        backend: &'static str,
        /// Why.
        #[source]
        source: StorageError,
    },
    /// The write-behind refused to start or did not drain in time.
    #[error("write-behind")]
    WriteBehind(#[from] WriteBehindError),
    /// `verified_after_drain` could not read the store back.
    #[error("cannot read the store back to verify it")]
    Verify {
        /// The last error.
        #[source]
        source: StorageError,
    },
    /// The store's world could not be read back (a damaged database, a checkpoint that fails
    /// its checksum: the message names the file or schema).
    #[error("cannot read the stored world from the {backend} store")]
    Resume {
        /// `storage.backend`.
        backend: &'static str,
        /// Why.
        #[source]
        source: StorageError,
    },
    /// The stored world could not be rebuilt.
    #[error("cannot rebuild the stored world")]
    Rebuild(#[from] ResumeError),
    /// A checkpoint could not be written.
    #[error("checkpoint")]
    Checkpoint(#[from] CheckpointError),
}

impl StoragePipeline {
    /// Builds the stack and starts the write-behind on a runtime of their own (two worker
    /// threads: database and cache connections live on it).
    ///
    /// # Errors
    /// [`PipelineError::Runtime`], [`PipelineError::Storage`] (for example PostgreSQL down at
    /// start: migrations need it), [`PipelineError::WriteBehind`] (bad outbox path).
    pub fn start(cfg: &Config) -> Result<Self, PipelineError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("terrarium-storage")
            // Storage work never preempts the tick (see `mark_background_thread`).
            .on_thread_start(|| {
                terrarium_persistence::os::mark_background_thread();
            })
            .enable_all()
            .build()
            .map_err(PipelineError::Runtime)?;
        let mut pipeline = Self::start_on(runtime.handle(), cfg)?;
        pipeline.runtime = Some(runtime);
        Ok(pipeline)
    }

    /// As [`StoragePipeline::start`], on the host's runtime (which must have I/O and time
    /// enabled). Call it from outside that runtime's threads (it blocks until connected). The
    /// write-behind then runs on the host's threads, which keep the scheduling the host gave
    /// them: pass [`terrarium_persistence::os::mark_background_thread`] to the runtime's
    /// `on_thread_start` for what `start` does to its own.
    ///
    /// # Errors
    /// As [`StoragePipeline::start`].
    pub fn start_on(handle: &tokio::runtime::Handle, cfg: &Config) -> Result<Self, PipelineError> {
        let backend = cfg.storage.backend.name();
        let stack = handle
            .block_on(StorageStack::build(&cfg.storage))
            .map_err(|source| PipelineError::Storage { backend, source })?;
        let stack = Arc::new(stack);
        let write_behind = WriteBehind::start_on(handle, Arc::clone(&stack), cfg.write_behind.clone())?;
        let checkpointer =
            Checkpointer::start(Arc::clone(&stack), handle.clone(), cfg.storage.checkpoint.keep)
                .map_err(PipelineError::Runtime)?;
        tracing::info!(backend, run = write_behind.run_id(), "storage pipeline started");
        Ok(Self {
            checkpointer: Arc::new(Mutex::new(checkpointer)),
            checkpoint: cfg.storage.checkpoint.clone(),
            write_behind,
            stack,
            runtime: None,
            handle: handle.clone(),
        })
    }

    /// What the store holds of a world to resume, or `None` for a new world (nothing stored).
    /// Replays the outbox first, so batches spilled by the previous run are in the store.
    ///
    /// # Errors
    /// [`PipelineError::WriteBehind`] when the outbox can't be replayed within the checkpoint
    /// drain timeout; [`PipelineError::Resume`] for a damaged store or checkpoint, or a
    /// durable store holding rows but no checkpoint
    /// ([`terrarium_persistence::StorageError::NoCheckpoint`]), naming the file or schema.
    pub fn resume_point(&self) -> Result<Option<ResumePoint>, PipelineError> {
        self.write_behind.flush(Duration::from_millis(self.checkpoint.drain_timeout_ms))?;
        self.handle.block_on(self.stack.backend().resume_point()).map_err(|source| PipelineError::Resume {
            backend: terrarium_persistence::Storage::name(self.stack.backend()),
            source,
        })
    }

    /// Resumes the world the store holds with `builder`'s configuration and plugins (add
    /// [`StoragePipeline::batching_plugin`] to it), or builds an empty world when the store
    /// holds none (the report is then `None`: spawn the population, then call
    /// [`StoragePipeline::checkpoint_new_world`] before the first tick).
    ///
    /// # Errors
    /// As [`StoragePipeline::resume_point`], [`PipelineError::Rebuild`] when the checkpoint
    /// does not decode, and the builder's errors.
    pub fn build_engine(
        &self,
        builder: EngineBuilder,
    ) -> Result<(Engine, Option<ResumeReport>), PipelineError> {
        let started = Instant::now();
        match self.resume_point()? {
            Some(point) => {
                let (engine, mut report) = crate::resume::resume(builder, point)?;
                report.ms = started.elapsed().as_secs_f64() * 1e3;
                tracing::info!(?report, "world resumed from storage");
                Ok((engine, Some(report)))
            }
            None => {
                let engine = builder.build().map_err(|e| ResumeError::Checkpoint { tick: 0, source: e })?;
                Ok((engine, None))
            }
        }
    }

    /// Deletes everything the store holds (rows and checkpoints): the next start is a new
    /// world. For `--new-world --wipe`.
    ///
    /// # Errors
    /// [`PipelineError::Resume`] when the store can't be written.
    pub fn wipe(&self) -> Result<(), PipelineError> {
        self.handle.block_on(self.stack.backend().wipe()).map_err(|source| PipelineError::Resume {
            backend: terrarium_persistence::Storage::name(self.stack.backend()),
            source,
        })
    }

    /// Call after every tick: every `storage.checkpoint.every_ticks` ticks it cuts a batch
    /// (so the store holds everything up to this tick), copies the world out and hands it to
    /// the checkpoint writer, which encodes and stores it once that batch is committed. The
    /// tick thread pays the copy only (and skips a checkpoint while the previous one is still
    /// being written). Returns true when a checkpoint was handed over.
    pub fn maybe_checkpoint(&self, engine: &mut Engine) -> bool {
        periodic_checkpoint(
            &self.checkpointer,
            self.checkpoint.every_ticks,
            &self.write_behind.handle(),
            engine,
        )
    }

    /// [`StoragePipeline::maybe_checkpoint`] as a closure another thread can own (a game
    /// server's tick thread calls it after every tick).
    pub fn checkpoint_hook(&self) -> impl FnMut(&mut Engine) + Send + 'static {
        let checkpointer = Arc::clone(&self.checkpointer);
        let every = self.checkpoint.every_ticks;
        let write_behind = self.write_behind.handle();
        move |engine: &mut Engine| {
            periodic_checkpoint(&checkpointer, every, &write_behind, engine);
        }
    }

    /// Stores a new world before its first tick: its first checkpoint, then its whole
    /// population (every NPC's registry row and position) as the run's first batch, and waits
    /// until the store has committed it. Call it once the population is spawned and before
    /// the first tick (`headless` and `game_server` do), and after a resume whose report says
    /// [`ResumeReport::rows_behind`]. Adds this pipeline's batching plugin to `engine` when it
    /// has none yet.
    ///
    /// The checkpoint is stored first, ahead of its batch (it names the batch's last `seq`):
    /// a process killed while the population is being written (seconds at a million NPCs)
    /// leaves a store whose mark is below it, and the next start resumes the checkpoint alone
    /// as the world, never a partial population. Once the batch is in, the rows are the world
    /// and the first tick starts from them: the ticks never carry the new population's first
    /// write, so the storage lag starts at zero. When batches were handed over already (the
    /// world ticked first), this is [`StoragePipeline::checkpoint_now`] (not clean).
    ///
    /// # Errors
    /// [`PipelineError::Checkpoint`] when the checkpoint can't be encoded or stored;
    /// [`PipelineError::WriteBehind`] when the population is refused or not committed within
    /// `storage.checkpoint.drain_timeout_ms`.
    pub fn checkpoint_new_world(&self, engine: &mut Engine) -> Result<NewWorldStats, PipelineError> {
        if self.write_behind.stats().batches_submitted > 0 {
            let checkpoint = self.checkpoint_now(engine, false)?;
            return Ok(NewWorldStats { checkpoint, ..NewWorldStats::default() });
        }
        if !terrarium_systems::batching::is_registered(engine) {
            self.batching_plugin()(engine);
        }
        let checkpointer = self.checkpointer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let drain = Duration::from_millis(self.checkpoint.drain_timeout_ms);
        let started = Instant::now();
        let population = terrarium_systems::batching::cut_now(engine);
        let handle = self.write_behind.handle();
        let rows = population.as_ref().map_or(0, terrarium_persistence::Handoff::len);
        let seq = if population.is_some() { handle.seq_after(rows) } else { handle.stats().last_seq };
        self.store_checkpoint(&checkpointer.counters, engine, started, seq, false, true)?;
        let checkpoint_ms = started.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        if let Some(handoff) = population {
            terrarium_persistence::BatchSink::submit(&handle, handoff)?;
            self.write_behind.flush(drain)?;
        }
        Ok(NewWorldStats {
            checkpoint: checkpointer.counters.stats(),
            checkpoint_ms,
            rows: rows as u64,
            rows_ms: t.elapsed().as_secs_f64() * 1e3,
        })
    }

    /// Writes a checkpoint now, on the calling thread: waits for the checkpoint being written,
    /// cuts a last batch, waits until the store has everything, then stores the world. What a
    /// clean shutdown does after the last tick (`clean` true: nothing happens after it).
    ///
    /// # Errors
    /// [`PipelineError::WriteBehind`] when the store does not take the batches within
    /// `storage.checkpoint.drain_timeout_ms`; [`PipelineError::Checkpoint`] when it can't be
    /// stored.
    pub fn checkpoint_now(&self, engine: &mut Engine, clean: bool) -> Result<CheckpointStats, PipelineError> {
        let mut checkpointer = self.checkpointer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        checkpointer.stop();
        let t = Instant::now();
        terrarium_systems::batching::flush_now(engine);
        let drain = Duration::from_millis(self.checkpoint.drain_timeout_ms);
        self.write_behind.flush(drain)?;
        let seq = self.write_behind.stats().last_seq;
        self.store_checkpoint(&checkpointer.counters, engine, t, seq, clean, false)?;
        let stats = checkpointer.counters.stats();
        if !clean {
            *checkpointer =
                Checkpointer::start(Arc::clone(&self.stack), self.handle.clone(), self.checkpoint.keep)
                    .map_err(PipelineError::Runtime)?;
        }
        Ok(stats)
    }

    /// Gathers the world and stores it, on the calling thread, as the checkpoint that follows
    /// batch `seq` of this run (`started`: when the caller began, for `gather_us`; `ahead`:
    /// stored before that batch is handed over).
    fn store_checkpoint(
        &self,
        counters: &Counters,
        engine: &mut Engine,
        started: Instant,
        seq: u64,
        clean: bool,
        ahead: bool,
    ) -> Result<(), PipelineError> {
        let drain = Duration::from_millis(self.checkpoint.drain_timeout_ms);
        let body = engine.snapshot_body();
        let job = Job {
            body,
            run: self.write_behind.run_id(),
            seq,
            clean,
            gather_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            ahead,
        };
        crate::checkpoint::write(&self.stack, &self.handle, job, self.checkpoint.keep, counters, drain)?;
        Ok(())
    }

    /// The checkpoint writer's counters now.
    #[must_use]
    pub fn checkpoint_stats(&self) -> CheckpointStats {
        self.checkpointer.lock().unwrap_or_else(std::sync::PoisonError::into_inner).counters.stats()
    }

    /// The batching plugin, feeding this pipeline's write-behind.
    pub fn batching_plugin(&self) -> impl Fn(&mut Engine) + 'static {
        terrarium_systems::batching::plugin(Arc::new(self.write_behind.handle()))
    }

    /// A handle on the write-behind: for producers other than the batching plugin, and for
    /// its counters (`WriteBehindHandle::stats`) from any thread.
    #[must_use]
    pub fn write_behind_handle(&self) -> WriteBehindHandle {
        self.write_behind.handle()
    }

    /// The storage stack, for reads (`get_npc`, `list_npcs`: L1 first) and metrics.
    #[must_use]
    pub fn stack(&self) -> &Arc<StorageStack> {
        &self.stack
    }

    /// The runtime the stack and the write-behind run on.
    #[must_use]
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    /// The write-behind's counters now.
    #[must_use]
    pub fn write_behind_stats(&self) -> WriteBehindStats {
        self.write_behind.stats()
    }

    /// Rows the backend has stored so far.
    #[must_use]
    pub fn written(&self) -> WrittenRows {
        written_by(&self.stack)
    }

    /// [`StoragePipeline::shutdown`], then what the backend stored and the write-behind's
    /// final counters (what a harness reports at the end of a run).
    ///
    /// # Errors
    /// As [`StoragePipeline::shutdown`].
    pub fn written_after_drain(
        self,
        timeout: Duration,
    ) -> Result<(WrittenRows, WriteBehindStats), PipelineError> {
        self.stop(timeout, written_by).map(|(report, rows)| (rows, report.stats))
    }

    /// [`StoragePipeline::written_after_drain`], and then every NPC read back from the store
    /// through the whole stack (caches included, a page at a time) and compared with what
    /// `world` returns (id and position of every NPC in the world after the last batch was
    /// cut). `world` is called after the drain and before the read-back, so a caller can
    /// measure the process there (`headless` reads its RSS first: the read-back's buffers and
    /// the store's read caches are the check's, not the running world's).
    ///
    /// # Errors
    /// As [`StoragePipeline::shutdown`], and [`PipelineError::Verify`] when the store could
    /// not be read (after retries).
    pub fn verified_after_drain(
        self,
        timeout: Duration,
        world: impl FnOnce() -> Vec<(u64, [f32; 3])>,
    ) -> Result<(WrittenRows, WriteBehindStats, StoreCheck), PipelineError> {
        let handle = self.handle.clone();
        let (report, (rows, check)) = self.stop(timeout, |stack| {
            let rows = written_by(stack);
            let world = world();
            (rows, handle.block_on(read_back(stack, &world)))
        })?;
        Ok((rows, report.stats, check?))
    }

    /// Drains the write-behind (everything handed over reaches the store, or the outbox when
    /// the store is still down after `timeout`), then stops the stack and the runtime.
    ///
    /// # Errors
    /// [`PipelineError::WriteBehind`] when the drain did not finish in `timeout`.
    pub fn shutdown(self, timeout: Duration) -> Result<ShutdownReport, PipelineError> {
        self.stop(timeout, |_| ()).map(|(report, ())| report)
    }

    /// Drains, lets `last_look` read the stack, then stops the stack and the runtime (in that
    /// order: connections close on the runtime they live on).
    fn stop<T>(
        self,
        timeout: Duration,
        last_look: impl FnOnce(&StorageStack) -> T,
    ) -> Result<(ShutdownReport, T), PipelineError> {
        let Self { checkpointer, write_behind, stack, runtime, handle, .. } = self;
        drop(checkpointer);
        let report = write_behind.shutdown(timeout)?;
        let seen = last_look(&stack);
        {
            let _inside = handle.enter();
            drop(stack);
        }
        if let Some(rt) = runtime {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
        Ok((report, seen))
    }
}

/// Every `every` ticks: cut a batch, copy the world out, offer it to the checkpoint writer.
fn periodic_checkpoint(
    checkpointer: &Mutex<Checkpointer>,
    every: u64,
    write_behind: &WriteBehindHandle,
    engine: &mut Engine,
) -> bool {
    let tick = engine.clock().tick;
    if every == 0 || tick == 0 || !tick.is_multiple_of(every) {
        return false;
    }
    let checkpointer = checkpointer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let t = Instant::now();
    terrarium_systems::batching::flush_now(engine);
    let body = engine.snapshot_body();
    let job = Job {
        body,
        run: terrarium_persistence::BatchSink::run_id(write_behind),
        // The last part's seq: a handoff cut into parts for `max_call_rows` takes one per part,
        // and the checkpoint waits until the store has all of them.
        seq: write_behind.stats().last_seq,
        clean: false,
        gather_us: u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX),
        ahead: false,
    };
    checkpointer.offer(job)
}

/// Reads every NPC back from `stack`, a page at a time, and compares with `world`.
async fn read_back(stack: &StorageStack, world: &[(u64, [f32; 3])]) -> Result<StoreCheck, PipelineError> {
    let mut stored = std::collections::HashMap::with_capacity(world.len());
    let mut page = Page::first(Page::MAX_LIMIT);
    loop {
        let mut tries = 0;
        let got = loop {
            match stack.list_npcs(&NpcFilter::default(), page).await {
                Ok(got) => break got,
                // A breaker still half-open after a fault, a restarting server: wait and retry.
                Err(e) if tries < 50 => {
                    tries += 1;
                    tracing::warn!(error = %e, "verify-store: read failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(source) => return Err(PipelineError::Verify { source }),
            }
        };
        for r in &got.npcs {
            stored.insert(r.id, [r.x, r.y, r.z]);
        }
        match got.next {
            Some(after) => page = Page { after: Some(after), limit: Page::MAX_LIMIT },
            None => break,
        }
    }
    let mut check =
        StoreCheck { world_npcs: world.len() as u64, stored_npcs: stored.len() as u64, mismatches: 0 };
    for (id, xyz) in world {
        match stored.remove(id) {
            Some(s) if s == *xyz => {}
            other => {
                if check.mismatches < 10 {
                    tracing::error!(id, world = ?xyz, stored = ?other, "verify-store: mismatch");
                }
                check.mismatches += 1;
            }
        }
    }
    // Whatever is left is stored but not in the world.
    check.mismatches += stored.len() as u64;
    Ok(check)
}

/// Rows the backend of `stack` has stored so far.
fn written_by(stack: &StorageStack) -> WrittenRows {
    match stack.backend() {
        Backend::Memory(m) => {
            let s = m.stats();
            WrittenRows {
                positions: s.position_rows,
                metrics: s.metric_rows,
                events: s.event_rows,
                npc_upserts: s.npc_upserts,
            }
        }
        #[cfg(feature = "postgres")]
        Backend::Postgres(pg) => {
            let m = pg.metrics();
            WrittenRows {
                positions: m.position_rows,
                metrics: m.metric_rows,
                events: m.event_rows,
                npc_upserts: m.npc_upserts,
            }
        }
        #[cfg(feature = "file-store")]
        Backend::Embedded(f) => {
            let m = f.metrics();
            WrittenRows {
                positions: m.position_rows,
                metrics: m.metric_rows,
                events: m.event_rows,
                npc_upserts: m.npc_upserts,
            }
        }
        #[allow(unreachable_patterns, reason = "Backend is non_exhaustive")]
        _ => WrittenRows::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scheduling policy (`SCHED_*`) of each thread of this process whose name starts with
    /// `prefix`, from `/proc` (Linux).
    fn policies(prefix: &str) -> Vec<(String, u32)> {
        let mut found = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
            // Fields after the name: the 3rd field of `stat` first; `policy` is the 41st.
            let after = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
            let policy = after.split_whitespace().nth(41 - 3).and_then(|p| p.parse().ok());
            if let (true, Some(policy)) = (comm.starts_with(prefix), policy) {
                found.push((comm.trim().to_string(), policy));
            }
        }
        found
    }

    /// Storage work never preempts the tick: every thread the pipeline starts for it (the
    /// runtime's, SQLite's, the checkpoint writer's) runs as `SCHED_BATCH`, and the tick's own
    /// threads do not.
    #[test]
    #[cfg(target_os = "linux")]
    fn the_pipelines_threads_are_background_work_and_the_callers_are_not() {
        const SCHED_BATCH: u32 = 3;
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        if cfg!(feature = "file-store") {
            cfg.storage.backend = terrarium_persistence::BackendKind::Embedded;
            cfg.storage.embedded.path = dir.path().join("world.db");
        }
        let pipeline = StoragePipeline::start(&cfg).unwrap();
        let blocking = pipeline.runtime().spawn_blocking(terrarium_persistence::os::is_background_thread);
        assert!(pipeline.runtime().block_on(blocking).unwrap(), "the runtime's blocking threads");
        let sqlite: &[&str] = if cfg!(feature = "file-store") { &["terrarium-sqlit"] } else { &[] };
        // A thread names itself and sets its policy as it starts, which may be after `start`
        // returns (the checkpoint writer is spawned last): wait for both, up to a deadline.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        for &prefix in ["terrarium-stora", "terrarium-check"].iter().chain(sqlite) {
            loop {
                let threads = policies(prefix);
                if !threads.is_empty() && threads.iter().all(|&(_, p)| p == SCHED_BATCH) {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{prefix}*: {threads:?}, want SCHED_BATCH ({SCHED_BATCH})"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        assert!(!terrarium_persistence::os::is_background_thread(), "the caller's thread is left alone");
        pipeline.shutdown(Duration::from_secs(10)).unwrap();
    }
}
