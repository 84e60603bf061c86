//! Performance figures of a running engine: [`Performance`], a handle any thread can read a
//! [`PerformanceSnapshot`] from while the tick goes on, and (feature `prometheus`) their
//! Prometheus text exposition.
//!
//! # Why a handle, not a method on `Engine`
//! The engine is owned by the tick thread, and the snapshot includes storage figures (write-behind,
//! pool, caches, breakers) that the `engine` crate can't see: `engine` knows nothing of
//! persistence, and persistence nothing of bevy_ecs. So the facade owns the figure: the tick
//! thread publishes its half at the start of every tick (a `try_lock`, never a wait), storage
//! figures are read from their own thread-safe counters when a snapshot is taken.
//! [`EnginePerformance::performance`] gives the handle back from an engine it was added to.
//!
//! # Examples
//! ```
//! use terrarium::engine::{Engine, EngineConfig, NpcSpec, Position, Role};
//! use terrarium::perf::{EnginePerformance, Performance};
//!
//! let perf = Performance::new();
//! let mut engine = Engine::builder(EngineConfig::default()).add_plugin(perf.plugin()).build().unwrap();
//! engine.spawn_npc(NpcSpec::new(Role::Scout, Position::new(1.0, 0.0, 1.0)));
//! engine.run_ticks(10);
//! let reader = engine.performance().unwrap(); // or `perf`; clones share everything
//! let snap = std::thread::spawn(move || reader.snapshot()).join().unwrap();
//! assert_eq!(snap.npcs, 1);
//! assert_eq!(snap.ticks_total, 9, "a tick is recorded once it has ended, at the next one");
//! assert!(snap.tick_latency.p99_ms >= snap.tick_latency.p50_ms);
//! ```

mod recorder;
mod snapshot;

#[cfg(feature = "prometheus")]
pub mod prometheus;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use terrarium_engine::Engine;
use terrarium_persistence::{Storage, StorageStack, WriteBehindHandle};

use crate::StoragePipeline;

pub use snapshot::{
    BatcherFigures, BreakerFigures, CacheFigures, DbPoolFigures, Latency, PathfindingFigures,
    PerformanceSnapshot, RegionFigures, StageFigures, StreamFigures, WriteBehindFigures,
};

use recorder::{Probe, SharedTick, TickSide};

/// Settings of a [`Performance`] handle.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PerfConfig {
    /// Length of one latency window, wall-clock seconds, 0.1 ..= 3600. A snapshot's
    /// percentiles cover the current window and the one before it (one to two windows).
    pub window_s: f64,
}

impl Default for PerfConfig {
    fn default() -> Self {
        Self { window_s: 10.0 }
    }
}

/// A handle on an engine's performance figures. Cheap to clone; every clone reads the same
/// figures. See the [module docs](self).
#[derive(Clone)]
pub struct Performance {
    shared: Arc<Shared>,
}

struct Shared {
    window: Duration,
    created: Instant,
    tick: SharedTick,
    sources: Mutex<Sources>,
}

/// Where storage figures come from.
#[derive(Default)]
struct Sources {
    write_behind: Option<WriteBehindHandle>,
    storage: Option<Arc<StorageStack>>,
    regions: std::collections::BTreeMap<u32, RegionFigures>,
}

impl std::fmt::Debug for Performance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Performance").field("window", &self.shared.window).finish_non_exhaustive()
    }
}

impl Default for Performance {
    fn default() -> Self {
        Self::new()
    }
}

impl Performance {
    /// A handle with the default settings (10 s windows).
    #[must_use]
    pub fn new() -> Self {
        Self::with_config(PerfConfig::default())
    }

    /// A handle with `config` (a window out of range is clamped into 0.1 ..= 3600 s).
    #[must_use]
    pub fn with_config(config: PerfConfig) -> Self {
        let window_s = if config.window_s.is_finite() { config.window_s.clamp(0.1, 3600.0) } else { 10.0 };
        Self {
            shared: Arc::new(Shared {
                window: Duration::from_secs_f64(window_s),
                created: Instant::now(),
                tick: Mutex::new(TickSide::new()),
                sources: Mutex::new(Sources::default()),
            }),
        }
    }

    /// The plugin that records ticks into this handle (add it to one engine).
    pub fn plugin(&self) -> impl Fn(&mut Engine) + 'static {
        let handle = self.clone();
        move |engine: &mut Engine| recorder::register(engine, handle.clone())
    }

    /// Reads write-behind figures from `handle` in every later snapshot.
    pub fn attach_write_behind(&self, handle: WriteBehindHandle) {
        self.sources().write_behind = Some(handle);
    }

    /// Reads cache, breaker and pool figures from `stack` in every later snapshot.
    pub fn attach_storage(&self, stack: Arc<StorageStack>) {
        self.sources().storage = Some(stack);
    }

    /// Reads write-behind, cache, breaker and pool figures from `pipeline` (its write-behind
    /// and its storage stack) in every later snapshot.
    pub fn attach_pipeline(&self, pipeline: &StoragePipeline) {
        let mut sources = self.sources();
        sources.write_behind = Some(pipeline.write_behind_handle());
        sources.storage = Some(Arc::clone(pipeline.stack()));
    }

    /// Shows `figures` as its region's in every later snapshot (replacing the last ones of that
    /// region). A region process calls it as it runs.
    pub fn set_region(&self, figures: RegionFigures) {
        self.sources().regions.insert(figures.region, figures);
    }

    fn sources(&self) -> std::sync::MutexGuard<'_, Sources> {
        // Plain data, valid whatever a panicking holder was doing.
        self.shared.sources.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every figure now. Safe to call from any thread at any time: it copies what the tick
    /// thread published (the tick thread never waits for it) and reads storage counters.
    #[must_use]
    pub fn snapshot(&self) -> PerformanceSnapshot {
        let side = self.shared.tick.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let now = Instant::now();
        let (tick_h, stage_h) = side.current.merged(&side.previous);
        let lag_h = side.current.merged_lag(&side.previous);
        let first = if side.previous.ticks > 0 { side.previous.started } else { side.current.started };
        let span = first.map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64());
        let in_window = side.current.ticks + side.previous.ticks;
        let paths = side.paths.clone().unwrap_or_default();
        let mut snap = PerformanceSnapshot {
            tick: side.tick,
            tick_hz: side.tick_hz,
            uptime_s: now.saturating_duration_since(self.shared.created).as_secs_f64(),
            window_s: span,
            tick_latency: Latency::from_us(&tick_h),
            window_ticks_per_sec: if span > 0.0 { in_window as f64 / span } else { 0.0 },
            ticks_total: side.ticks_total,
            stages: recorder::stage_names()
                .zip(&stage_h)
                .zip(side.last_stage_us)
                .map(|((name, h), last)| StageFigures {
                    name: name.to_string(),
                    latency: Latency::from_us(h),
                    last_ms: last as f64 / 1e3,
                })
                .collect(),
            npcs: side.npcs,
            agents: side.agents,
            rss_bytes: memory_stats::memory_stats().map_or(0, |m| m.physical_mem as u64),
            batchers: side.batcher.as_ref().map(BatcherFigures::from_stats),
            store_lag: (!lag_h.is_empty()).then(|| Latency::from_ms(&lag_h)),
            pathfinding: PathfindingFigures {
                threads: side.threads,
                busy: paths.last_searches.min(side.threads),
                queued: paths.waiting,
                solved: paths.solved,
                failures: paths.failures,
                searches: paths.searches,
                cache_hits: paths.cache_hits,
            },
            ..PerformanceSnapshot::default()
        };
        let sources = self.sources();
        if let Some(wb) = &sources.write_behind {
            snap.write_behind = Some(wb.stats());
        }
        if let Some(stack) = &sources.storage {
            snapshot::fill_storage(&mut snap, stack.name(), &stack.metrics());
        }
        snap.regions = sources.regions.values().cloned().collect();
        snap
    }
}

/// Records the last tick now, so a snapshot taken after the last tick covers it (the recorder
/// otherwise records a tick at the start of the next one). Returns false when the engine has no
/// [`Performance`] plugin.
///
/// # Examples
/// ```
/// use terrarium::engine::{Engine, EngineConfig};
/// use terrarium::perf::{Performance, publish_now};
/// let perf = Performance::new();
/// let mut engine = Engine::builder(EngineConfig::default()).add_plugin(perf.plugin()).build().unwrap();
/// engine.run_ticks(3);
/// assert!(publish_now(&mut engine));
/// assert_eq!(perf.snapshot().ticks_total, 3);
/// ```
pub fn publish_now(engine: &mut Engine) -> bool {
    let world = engine.world_mut();
    if !world.contains_resource::<Probe>() {
        return false;
    }
    world.run_system_cached(recorder::record).expect("the recorder's resources are installed with it");
    true
}

/// `engine.performance()`: the [`Performance`] handle an engine records into.
pub trait EnginePerformance {
    /// The handle, or `None` when no [`Performance::plugin`] was added.
    fn performance(&self) -> Option<Performance>;
}

impl EnginePerformance for Engine {
    fn performance(&self) -> Option<Performance> {
        self.world().get_resource::<Probe>().map(|p| p.handle.clone())
    }
}
