//! [`PerformanceSnapshot`]: every figure the engine and its storage report, at one moment, as
//! plain serde data (the game server's `/api/performance`, the headless `performance` key).

use serde::{Deserialize, Serialize};
use terrarium_persistence::{BreakerMetrics, StorageMetrics, TierMetrics, WriteBehindStats};
use terrarium_systems::batching::{BatcherStats, StreamStats};

/// Everything the engine and its storage report, read at one moment.
///
/// Tick figures come from the tick thread (published at the end of every tick, so they describe
/// ticks up to the previous one); storage figures are read when the snapshot is taken.
/// Durations are milliseconds unless a name says otherwise.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PerformanceSnapshot {
    /// The simulation tick when the tick figures were last published.
    pub tick: u64,
    /// Configured ticks per simulated second.
    pub tick_hz: u32,
    /// Wall-clock seconds since the [`crate::perf::Performance`] handle was created.
    pub uptime_s: f64,
    /// Wall-clock seconds the latency figures cover: the last one to two windows
    /// ([`crate::perf::PerfConfig::window_s`]).
    pub window_s: f64,
    /// Wall-clock time of a whole tick (commands and every stage), over the window.
    pub tick_latency: Latency,
    /// Ticks that ran per wall-clock second over the window, pauses between ticks included
    /// (a server paced at 20 Hz that keeps up shows 20). Named apart from the examples'
    /// `ticks_per_sec`, which is the average over a whole run.
    #[serde(alias = "ticks_per_sec")]
    pub window_ticks_per_sec: f64,
    /// Ticks recorded since the start.
    pub ticks_total: u64,
    /// Time per stage (each stage is one system set), in run order.
    pub stages: Vec<StageFigures>,
    /// Live NPCs, agents included.
    pub npcs: u64,
    /// Live agents.
    pub agents: u64,
    /// Resident set size of the process, bytes (0 where the platform can't tell).
    pub rss_bytes: u64,
    /// The batchers (`None` without batching).
    pub batchers: Option<BatcherFigures>,
    /// Storage lag over the window: simulated time between the current tick and the newest
    /// tick the store is caught up with, sampled every tick (`None` without batching). The
    /// figures are milliseconds of simulated time, not wall-clock latency.
    pub store_lag: Option<Latency>,
    /// The write-behind queue (`None` without one).
    pub write_behind: Option<WriteBehindFigures>,
    /// The database connection pool (`None` unless PostgreSQL is the backend).
    pub db_pool: Option<DbPoolFigures>,
    /// Cache tiers, outermost first (`l1`, then `redis_hot`, `redis_warm`, `redis_cold`).
    pub caches: Vec<CacheFigures>,
    /// Circuit breakers of the storage stack.
    pub circuit_breakers: Vec<BreakerFigures>,
    /// The worker pool path searches run on.
    pub pathfinding: PathfindingFigures,
    /// Regions run by this process (issue 17; empty when the world is not split), by region.
    #[serde(default)]
    pub regions: Vec<RegionFigures>,
}

/// One region of a world split across processes (`terrarium::region`): ownership, hand-offs,
/// lease and border ghosts. Counters run from the region process's start.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RegionFigures {
    /// The region (cells numbered row by row from 0).
    pub region: u32,
    /// The lease's epoch this process holds (its fencing token).
    pub epoch: i64,
    /// Time since the lease was last renewed or taken, ms (a third of the lease when healthy).
    pub lease_age_ms: f64,
    /// Lease renewals committed.
    pub lease_renewals: u64,
    /// NPCs in the region's world now.
    pub owned_npcs: u64,
    /// NPCs loaded at start-up.
    pub loaded_npcs: u64,
    /// Hand-offs this process committed (NPCs sent to a neighbour).
    pub handoffs_out: u64,
    /// NPCs it adopted.
    pub handoffs_in: u64,
    /// Outgoing hand-offs not yet committed.
    pub handoffs_pending: u64,
    /// Hand-off commits whose outcome was unknown (settled by reading the rows back).
    pub unknown_commits: u64,
    /// Hand-off latency of the NPCs it adopted: time out of any world, from leaving the
    /// source's world to being spawned here (since the start, not windowed).
    pub handoff_latency: Latency,
    /// State syncs committed.
    pub syncs: u64,
    /// The region world's tick now.
    pub tick: u64,
    /// The tick this process resumed from (the region's newest sync before it took the
    /// lease; 0 for a new world).
    pub resumed_tick: u64,
    /// Ghosts shown now (neighbours' NPCs near the cell; not owned, not stored).
    pub ghosts: u64,
    /// Neighbours whose ghosts are shown now.
    pub ghost_sources: u64,
    /// Ghosts that expired (their neighbour's feed went quiet).
    pub ghosts_expired: u64,
    /// Ghost batches published.
    pub ghost_batches_published: u64,
    /// Ghost batches received.
    pub ghost_batches_received: u64,
    /// Ghost publishes that failed (Redis down or slow).
    pub ghost_publish_errors: u64,
}

/// Percentiles of a duration, milliseconds, from an HDR histogram (2 significant digits).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Latency {
    /// Samples behind the figures.
    pub samples: u64,
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

impl Latency {
    /// The figures of a histogram of milliseconds.
    pub(crate) fn from_ms(h: &hdrhistogram::Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            samples: h.len(),
            p50_ms: h.value_at_quantile(0.50) as f64,
            p95_ms: h.value_at_quantile(0.95) as f64,
            p99_ms: h.value_at_quantile(0.99) as f64,
            max_ms: h.max() as f64,
            mean_ms: h.mean(),
        }
    }

    /// The figures of a histogram of microseconds.
    pub(crate) fn from_us(h: &hdrhistogram::Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1e3;
        Self {
            samples: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p95_ms: ms(h.value_at_quantile(0.95)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1e3,
        }
    }
}

/// Time spent in one stage of the tick.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StageFigures {
    /// Stage name (`input`, `decide`, `plan`, `act`, `record`, `flush`).
    pub name: String,
    /// Percentiles over the window.
    pub latency: Latency,
    /// The last tick's time.
    pub last_ms: f64,
}

/// What the batchers did since the engine started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BatcherFigures {
    /// Batches handed to the write-behind.
    pub batches: u64,
    /// Rows of every kind put into batches.
    pub items: u64,
    /// Rows waiting for the next batch (positions counted up to just past their size limit).
    pub pending: u64,
    /// Events folded into an identical one within the dedup window.
    pub deduplicated: u64,
    /// Updates folded into a waiting row inside the batcher (moves of an NPC already waiting,
    /// metric samples). Not the write-behind's `rows_coalesced`, which counts whole rows
    /// superseded by a later batch before they were written.
    pub folded: u64,
    /// Compressed over raw size of the event payloads that were compressed (`None` before the
    /// first); below 1 saves space.
    pub compression_ratio: Option<f64>,
    /// Batches the write-behind refused.
    pub refused: u64,
    /// Rows in refused batches.
    pub writes_dropped: u64,
    /// Per stream: `positions`, `metrics`, `events`.
    pub streams: Vec<StreamFigures>,
}

/// One stream of a batcher.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StreamFigures {
    /// `positions`, `metrics` or `events`.
    pub name: String,
    /// Batches that carried rows of this stream.
    pub flushes: u64,
    /// Rows batched.
    pub items: u64,
    /// Updates folded into a waiting row (see [`BatcherFigures::folded`]).
    pub folded: u64,
    /// Rows waiting.
    pub pending: u64,
}

impl BatcherFigures {
    pub(crate) fn from_stats(s: &BatcherStats) -> Self {
        let stream = |name: &str, st: &StreamStats| StreamFigures {
            name: name.to_string(),
            flushes: st.flushes,
            items: st.items_batched,
            folded: st.items_coalesced,
            pending: st.pending_items,
        };
        Self {
            batches: s.batches_created,
            items: s.items_batched(),
            pending: s.pending_items(),
            deduplicated: s.events_deduplicated,
            folded: s.items_coalesced(),
            compression_ratio: s.average_compression_ratio(),
            refused: s.batches_refused,
            writes_dropped: s.writes_dropped,
            streams: vec![
                stream("positions", &s.positions),
                stream("metrics", &s.metrics),
                stream("events", &s.events),
            ],
        }
    }
}

/// The write-behind queue between the tick and the store: its own counters, serialised as
/// they are (`queue_rows`, `queue_batches`, `store_calls`, `writes_dropped`, …).
pub type WriteBehindFigures = WriteBehindStats;

/// The database connection pool.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DbPoolFigures {
    /// Most connections.
    pub max_size: u64,
    /// Connections in use.
    pub active: u64,
    /// Connections open and free.
    pub idle: u64,
    /// Callers waiting for a connection.
    pub waiting: u64,
    /// Queries timed.
    pub queries: u64,
    /// Query time percentiles, milliseconds.
    pub query_p50_ms: f64,
    /// 95th percentile.
    pub query_p95_ms: f64,
    /// 99th percentile.
    pub query_p99_ms: f64,
}

/// One cache tier.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CacheFigures {
    /// `l1`, `redis_hot`, `redis_warm` or `redis_cold`.
    pub tier: String,
    /// Hits and misses (`hits`, `misses`).
    #[serde(flatten)]
    pub reads: TierMetrics,
    /// `hits / (hits + misses)`, 0 before the first read.
    pub hit_rate: f64,
    /// Entries held, where the tier can tell.
    pub entries: Option<u64>,
}

impl CacheFigures {
    fn new(tier: &str, reads: TierMetrics, entries: Option<u64>) -> Self {
        Self { tier: tier.to_string(), reads, hit_rate: reads.hit_rate(), entries }
    }
}

/// One circuit breaker.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BreakerFigures {
    /// What it guards (`storage.memory`, `storage.postgres`, `storage.postgres.reads`).
    pub name: String,
    /// Its state (`closed`, `open` or `half_open`) and counters (`calls`, `successes`,
    /// `failures`, `timeouts`, `rejected`, `opened`, `closed`).
    #[serde(flatten)]
    pub circuit: BreakerMetrics,
    /// `successes / (successes + failures)`, 1 before the first call.
    pub success_rate: f64,
}

impl BreakerFigures {
    fn new(name: String, circuit: BreakerMetrics) -> Self {
        let decided = circuit.successes + circuit.failures;
        let success_rate = if decided == 0 { 1.0 } else { circuit.successes as f64 / decided as f64 };
        Self { name, circuit, success_rate }
    }
}

/// Every breaker state, with the name it is serialised under.
#[cfg(feature = "prometheus")]
pub(crate) const BREAKER_STATES: [(terrarium_persistence::BreakerState, &str); 3] = {
    use terrarium_persistence::BreakerState;
    [(BreakerState::Closed, "closed"), (BreakerState::Open, "open"), (BreakerState::HalfOpen, "half_open")]
};

/// The worker pool path searches run on (the engine's `ParPool`).
///
/// Searches run inside the `Plan` stage, so between ticks the pool is idle: `busy` and
/// `queued` describe the last tick.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PathfindingFigures {
    /// Worker threads.
    pub threads: u64,
    /// Workers that had a search to run in the last `Plan` stage (searches, at most `threads`).
    pub busy: u64,
    /// Path requests the last `Plan` stage left for a later tick (over its per-tick budget).
    pub queued: u64,
    /// Requests answered with a path since the start (searched or cached).
    pub solved: u64,
    /// Requests answered with "no path".
    pub failures: u64,
    /// Searches run.
    pub searches: u64,
    /// Requests answered from the path cache.
    pub cache_hits: u64,
}

/// Fills the storage-side sections of `snap` from a storage stack's counters.
pub(crate) fn fill_storage(snap: &mut PerformanceSnapshot, backend: &str, m: &StorageMetrics) {
    snap.caches.push(CacheFigures::new("l1", m.l1.tier, Some(m.l1.entries)));
    #[cfg(feature = "redis")]
    if let Some(r) = &m.redis {
        for (tier, t) in [("redis_hot", r.hot), ("redis_warm", r.warm), ("redis_cold", r.cold)] {
            snap.caches.push(CacheFigures::new(tier, t, None));
        }
    }
    snap.circuit_breakers.push(BreakerFigures::new(format!("storage.{backend}"), m.breaker));
    snap.circuit_breakers.push(BreakerFigures::new(format!("storage.{backend}.reads"), m.read_breaker));
    #[cfg(feature = "postgres")]
    if let Some(pg) = &m.postgres {
        let p = pg.pool;
        snap.db_pool = Some(DbPoolFigures {
            max_size: p.max_size as u64,
            active: p.active as u64,
            idle: p.idle as u64,
            waiting: p.waiting as u64,
            queries: p.queries,
            query_p50_ms: p.query_p50_us as f64 / 1e3,
            query_p95_ms: p.query_p95_us as f64 / 1e3,
            query_p99_ms: p.query_p99_us as f64 / 1e3,
        });
    }
}
