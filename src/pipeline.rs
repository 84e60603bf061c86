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

use std::sync::Arc;
use std::time::Duration;

use terrarium_engine::Engine;
use terrarium_persistence::{
    Backend, NpcFilter, Page, ShutdownReport, Storage, StorageError, StorageStack, WriteBehind,
    WriteBehindError, WriteBehindHandle, WriteBehindStats,
};

use crate::Config;

/// The storage side of a running world. Dropping it without [`StoragePipeline::shutdown`]
/// still drains what it can (see `WriteBehind`'s drop), but only `shutdown` reports.
pub struct StoragePipeline {
    // Field order is drop order: the write-behind stops before the stack and the runtime
    // they run on.
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
            .enable_all()
            .build()
            .map_err(PipelineError::Runtime)?;
        let mut pipeline = Self::start_on(runtime.handle(), cfg)?;
        pipeline.runtime = Some(runtime);
        Ok(pipeline)
    }

    /// As [`StoragePipeline::start`], on the host's runtime (which must have I/O and time
    /// enabled). Call it from outside that runtime's threads (it blocks until connected).
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
        tracing::info!(backend, run = write_behind.run_id(), "storage pipeline started");
        Ok(Self { write_behind, stack, runtime: None, handle: handle.clone() })
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
    /// through the whole stack (caches included, a page at a time) and compared with `world`
    /// (id and position of every NPC in the world after the last batch was cut).
    ///
    /// # Errors
    /// As [`StoragePipeline::shutdown`], and [`PipelineError::Verify`] when the store could
    /// not be read (after retries).
    pub fn verified_after_drain(
        self,
        timeout: Duration,
        world: &[(u64, [f32; 3])],
    ) -> Result<(WrittenRows, WriteBehindStats, StoreCheck), PipelineError> {
        let handle = self.handle.clone();
        let (report, (rows, check)) =
            self.stop(timeout, |stack| (written_by(stack), handle.block_on(read_back(stack, world))))?;
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
        let Self { write_behind, stack, runtime, handle } = self;
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
        #[allow(unreachable_patterns, reason = "Backend is non_exhaustive")]
        _ => WrittenRows::default(),
    }
}
