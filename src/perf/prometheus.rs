//! Prometheus text exposition of a [`PerformanceSnapshot`], through the `metrics` facade and
//! `metrics-exporter-prometheus` (its recorder only: no HTTP listener of its own, so a server
//! renders the text into its own `/metrics` route).
//!
//! Each [`PrometheusExporter`] has its own recorder, used as a *local* recorder while figures
//! are set: several engines (or test servers) in one process never share or fight over the
//! global one. Counters are set to the snapshot's running totals (`absolute`), gauges to its
//! current values; durations are exported in seconds, percentiles as a `quantile` label.
//!
//! # Examples
//! ```
//! use terrarium::engine::{Engine, EngineConfig};
//! use terrarium::perf::Performance;
//! use terrarium::perf::prometheus::PrometheusExporter;
//!
//! let perf = Performance::new();
//! let mut engine = Engine::builder(EngineConfig::default()).add_plugin(perf.plugin()).build().unwrap();
//! engine.run_ticks(5);
//! let exporter = PrometheusExporter::new();
//! exporter.record(&perf.snapshot());
//! let text = exporter.render();
//! assert!(text.contains("# TYPE terrarium_ticks_total counter"));
//! assert!(text.contains("terrarium_tick_duration_seconds{quantile=\"0.99\"}"));
//! ```

use metrics::{counter, describe_counter, describe_gauge, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};

use super::{Latency, PerformanceSnapshot, snapshot::BREAKER_STATES};

/// Renders performance snapshots (and anything else recorded through [`PrometheusExporter::with`])
/// as Prometheus text.
pub struct PrometheusExporter {
    recorder: PrometheusRecorder,
}

impl std::fmt::Debug for PrometheusExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrometheusExporter").finish_non_exhaustive()
    }
}

impl Default for PrometheusExporter {
    fn default() -> Self {
        Self::new()
    }
}

/// Counters of a snapshot: name and help text.
const COUNTERS: &[(&str, &str)] = &[
    ("terrarium_ticks_total", "Ticks recorded since the start."),
    ("terrarium_batches_total", "Batches the batchers handed to the write-behind."),
    ("terrarium_batch_rows_total", "Rows put into batches, by stream."),
    ("terrarium_batch_folded_total", "Updates folded into a waiting row inside the batcher, by stream."),
    ("terrarium_events_deduplicated_total", "Events folded into an identical one within the dedup window."),
    ("terrarium_batches_refused_total", "Batches the write-behind refused."),
    ("terrarium_write_behind_store_calls_total", "Calls to the store, successful or not."),
    ("terrarium_write_behind_store_errors_total", "Store calls that failed."),
    ("terrarium_write_behind_batches_written_total", "Batches the store acknowledged."),
    ("terrarium_write_behind_rows_coalesced_total", "Position rows superseded before they were written."),
    ("terrarium_write_behind_batches_spilled_total", "Batches spilled to the outbox file."),
    ("terrarium_write_behind_batches_replayed_total", "Batches replayed from the outbox file."),
    ("terrarium_write_behind_failed_batches_total", "Batches given up on."),
    ("terrarium_write_behind_rows_dropped_total", "Rows that will never reach the store."),
    ("terrarium_db_queries_total", "Database queries timed."),
    ("terrarium_cache_hits_total", "Reads a cache tier answered."),
    ("terrarium_cache_misses_total", "Reads a cache tier could not answer."),
    ("terrarium_circuit_breaker_calls_total", "Calls a circuit breaker let through."),
    ("terrarium_circuit_breaker_failures_total", "Calls that failed transiently."),
    ("terrarium_circuit_breaker_rejected_total", "Calls refused while the circuit was open."),
    ("terrarium_circuit_breaker_opened_total", "Times the circuit opened."),
    ("terrarium_pathfinding_solved_total", "Path requests answered with a path."),
    ("terrarium_pathfinding_failures_total", "Path requests answered with no path."),
    ("terrarium_pathfinding_searches_total", "Path searches run."),
    (
        "terrarium_region_handoffs_out_total",
        "NPCs this region process handed to a neighbour (committed), by region.",
    ),
    ("terrarium_region_handoffs_in_total", "NPCs this region process adopted from a neighbour, by region."),
    (
        "terrarium_region_unknown_commits_total",
        "Hand-off commits whose outcome was unknown and was settled by reading the rows, by region.",
    ),
    ("terrarium_region_lease_renewals_total", "Lease renewals committed, by region."),
    ("terrarium_region_syncs_total", "NPC state syncs into the ownership rows committed, by region."),
    (
        "terrarium_region_ghosts_expired_total",
        "Ghosts dropped because their neighbour's feed went quiet, by region.",
    ),
    (
        "terrarium_region_ghost_batches_published_total",
        "Ghost batches published on the border feed, by region.",
    ),
    ("terrarium_region_ghost_batches_received_total", "Ghost batches received from neighbours, by region."),
    (
        "terrarium_region_ghost_publish_errors_total",
        "Ghost publishes that failed (Redis down or slow); the region simulates on without them, by region.",
    ),
];

/// Gauges of a snapshot: name and help text.
const GAUGES: &[(&str, &str)] = &[
    ("terrarium_tick", "The simulation tick of the last published figures."),
    ("terrarium_tick_hz", "Configured ticks per simulated second."),
    ("terrarium_ticks_per_second", "Ticks run per wall-clock second over the window."),
    ("terrarium_tick_duration_seconds", "Wall-clock time of a tick over the window, by quantile (1 = max)."),
    (
        "terrarium_stage_duration_seconds",
        "Wall-clock time of a stage over the window, by stage and quantile.",
    ),
    (
        "terrarium_store_lag_seconds",
        "Storage lag over the window, by quantile (1 = max): simulated time between the current tick and the newest tick the store has committed, sampled every tick.",
    ),
    ("terrarium_npcs", "Live NPCs, agents included."),
    ("terrarium_agents", "Live agents."),
    ("process_resident_memory_bytes", "Resident set size of the process."),
    ("terrarium_batch_pending_rows", "Rows waiting for the next batch, by stream."),
    ("terrarium_event_compression_ratio", "Compressed over raw size of compressed event payloads."),
    ("terrarium_write_behind_queue_rows", "Rows waiting in the write-behind's memory."),
    ("terrarium_write_behind_queue_batches", "Batches waiting in the write-behind's memory."),
    ("terrarium_write_behind_outbox_batches", "Batches waiting in the outbox file."),
    ("terrarium_write_behind_outbox_bytes", "Size of the outbox file."),
    ("terrarium_write_behind_degraded", "1 from a failed store call until the next successful one."),
    ("terrarium_db_pool_connections", "Database pool connections, by state (active, idle, max)."),
    ("terrarium_db_pool_waiting", "Callers waiting for a database connection."),
    ("terrarium_db_query_duration_seconds", "Database query time, by quantile."),
    ("terrarium_cache_hit_ratio", "Hits over reads, by cache tier."),
    ("terrarium_cache_entries", "Entries held, by cache tier."),
    ("terrarium_circuit_breaker_state", "1 for the breaker's current state, 0 for the others."),
    ("terrarium_circuit_breaker_success_ratio", "Successes over decided calls, by breaker."),
    ("terrarium_pathfinding_threads", "Worker threads path searches run on."),
    ("terrarium_pathfinding_busy", "Workers that had a search in the last Plan stage."),
    ("terrarium_pathfinding_queued", "Path requests left for a later tick."),
    ("terrarium_region_owned_npcs", "NPCs in the region's world now, by region."),
    ("terrarium_region_handoffs_pending", "Outgoing hand-offs not yet committed, by region."),
    ("terrarium_region_lease_epoch", "The lease epoch (fencing token) this region process holds, by region."),
    (
        "terrarium_region_lease_age_seconds",
        "Time since the region's lease was last renewed or taken, by region.",
    ),
    (
        "terrarium_region_handoff_latency_seconds",
        "Time adopted NPCs spent out of any world during their hand-off, since the start, by region and quantile (1 = max).",
    ),
    ("terrarium_region_ghosts", "Neighbours' NPCs shown as read-only ghosts now, by region."),
    ("terrarium_region_tick", "The region world's tick now, by region."),
    (
        "terrarium_region_resumed_tick",
        "The tick this region process resumed from (its region's newest sync; 0 for a new world), by region.",
    ),
];

impl PrometheusExporter {
    /// An exporter with its own recorder, every snapshot metric described.
    #[must_use]
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new().build_recorder();
        metrics::with_local_recorder(&recorder, || {
            for &(name, help) in COUNTERS {
                describe_counter!(name, help);
            }
            for &(name, help) in GAUGES {
                describe_gauge!(name, help);
            }
        });
        Self { recorder }
    }

    /// Describes more metrics (name and help text), for families a host records itself (the
    /// game server's HTTP and WebSocket counters): every family on `/metrics` has a HELP line.
    pub fn describe(
        &self,
        counters: &[(&'static str, &'static str)],
        gauges: &[(&'static str, &'static str)],
    ) {
        self.with(|| {
            for &(name, help) in counters {
                describe_counter!(name, help);
            }
            for &(name, help) in gauges {
                describe_gauge!(name, help);
            }
        });
    }

    /// Runs `f` with this exporter as the `metrics` recorder of the calling thread, so the
    /// `metrics::counter!`/`gauge!`/`histogram!` calls in it land here.
    pub fn with<T>(&self, f: impl FnOnce() -> T) -> T {
        metrics::with_local_recorder(&self.recorder, f)
    }

    /// Sets every metric from `snap`.
    pub fn record(&self, snap: &PerformanceSnapshot) {
        self.with(|| record_snapshot(snap));
    }

    /// Everything recorded so far, in the Prometheus text format (version 0.0.4).
    #[must_use]
    pub fn render(&self) -> String {
        self.recorder.handle().render()
    }
}

fn record_snapshot(s: &PerformanceSnapshot) {
    counter!("terrarium_ticks_total").absolute(s.ticks_total);
    gauge!("terrarium_tick").set(s.tick as f64);
    gauge!("terrarium_tick_hz").set(f64::from(s.tick_hz));
    gauge!("terrarium_ticks_per_second").set(s.window_ticks_per_sec);
    quantiles("terrarium_tick_duration_seconds", &[], &s.tick_latency);
    for st in &s.stages {
        quantiles("terrarium_stage_duration_seconds", &[("stage", &st.name)], &st.latency);
    }
    if let Some(lag) = &s.store_lag {
        quantiles("terrarium_store_lag_seconds", &[], lag);
    }
    gauge!("terrarium_npcs").set(s.npcs as f64);
    gauge!("terrarium_agents").set(s.agents as f64);
    gauge!("process_resident_memory_bytes").set(s.rss_bytes as f64);
    if let Some(b) = &s.batchers {
        counter!("terrarium_batches_total").absolute(b.batches);
        counter!("terrarium_events_deduplicated_total").absolute(b.deduplicated);
        counter!("terrarium_batches_refused_total").absolute(b.refused);
        for st in &b.streams {
            counter!("terrarium_batch_rows_total", "stream" => st.name.clone()).absolute(st.items);
            counter!("terrarium_batch_folded_total", "stream" => st.name.clone()).absolute(st.folded);
            gauge!("terrarium_batch_pending_rows", "stream" => st.name.clone()).set(st.pending as f64);
        }
        if let Some(r) = b.compression_ratio {
            gauge!("terrarium_event_compression_ratio").set(r);
        }
    }
    if let Some(w) = &s.write_behind {
        gauge!("terrarium_write_behind_queue_rows").set(w.queued_rows as f64);
        gauge!("terrarium_write_behind_queue_batches").set(w.queued_batches as f64);
        gauge!("terrarium_write_behind_outbox_batches").set(w.outbox_batches as f64);
        gauge!("terrarium_write_behind_outbox_bytes").set(w.outbox_bytes as f64);
        gauge!("terrarium_write_behind_degraded").set(if w.degraded { 1.0 } else { 0.0 });
        counter!("terrarium_write_behind_store_calls_total").absolute(w.store_calls);
        counter!("terrarium_write_behind_store_errors_total").absolute(w.store_errors);
        counter!("terrarium_write_behind_batches_written_total").absolute(w.batches_written);
        counter!("terrarium_write_behind_rows_coalesced_total").absolute(w.rows_coalesced);
        counter!("terrarium_write_behind_batches_spilled_total").absolute(w.batches_spilled);
        counter!("terrarium_write_behind_batches_replayed_total").absolute(w.batches_replayed);
        counter!("terrarium_write_behind_failed_batches_total").absolute(w.failed_batches);
        counter!("terrarium_write_behind_rows_dropped_total").absolute(w.writes_dropped);
    }
    if let Some(p) = &s.db_pool {
        for (state, n) in [("active", p.active), ("idle", p.idle), ("max", p.max_size)] {
            gauge!("terrarium_db_pool_connections", "state" => state).set(n as f64);
        }
        gauge!("terrarium_db_pool_waiting").set(p.waiting as f64);
        counter!("terrarium_db_queries_total").absolute(p.queries);
        for (q, ms) in [("0.5", p.query_p50_ms), ("0.95", p.query_p95_ms), ("0.99", p.query_p99_ms)] {
            gauge!("terrarium_db_query_duration_seconds", "quantile" => q).set(ms / 1e3);
        }
    }
    for c in &s.caches {
        counter!("terrarium_cache_hits_total", "tier" => c.tier.clone()).absolute(c.reads.hits);
        counter!("terrarium_cache_misses_total", "tier" => c.tier.clone()).absolute(c.reads.misses);
        gauge!("terrarium_cache_hit_ratio", "tier" => c.tier.clone()).set(c.hit_rate);
        if let Some(n) = c.entries {
            gauge!("terrarium_cache_entries", "tier" => c.tier.clone()).set(n as f64);
        }
    }
    for b in &s.circuit_breakers {
        let c = &b.circuit;
        for (state, name) in BREAKER_STATES {
            let on = if c.state == state { 1.0 } else { 0.0 };
            gauge!("terrarium_circuit_breaker_state", "name" => b.name.clone(), "state" => name).set(on);
        }
        counter!("terrarium_circuit_breaker_calls_total", "name" => b.name.clone()).absolute(c.calls);
        counter!("terrarium_circuit_breaker_failures_total", "name" => b.name.clone()).absolute(c.failures);
        counter!("terrarium_circuit_breaker_rejected_total", "name" => b.name.clone()).absolute(c.rejected);
        counter!("terrarium_circuit_breaker_opened_total", "name" => b.name.clone()).absolute(c.opened);
        gauge!("terrarium_circuit_breaker_success_ratio", "name" => b.name.clone()).set(b.success_rate);
    }
    let p = &s.pathfinding;
    gauge!("terrarium_pathfinding_threads").set(p.threads as f64);
    gauge!("terrarium_pathfinding_busy").set(p.busy as f64);
    gauge!("terrarium_pathfinding_queued").set(p.queued as f64);
    counter!("terrarium_pathfinding_solved_total").absolute(p.solved);
    counter!("terrarium_pathfinding_failures_total").absolute(p.failures);
    counter!("terrarium_pathfinding_searches_total").absolute(p.searches);
    for r in &s.regions {
        let region = r.region.to_string();
        gauge!("terrarium_region_owned_npcs", "region" => region.clone()).set(r.owned_npcs as f64);
        gauge!("terrarium_region_handoffs_pending", "region" => region.clone())
            .set(r.handoffs_pending as f64);
        gauge!("terrarium_region_lease_epoch", "region" => region.clone()).set(r.epoch as f64);
        gauge!("terrarium_region_lease_age_seconds", "region" => region.clone()).set(r.lease_age_ms / 1e3);
        gauge!("terrarium_region_ghosts", "region" => region.clone()).set(r.ghosts as f64);
        gauge!("terrarium_region_tick", "region" => region.clone()).set(r.tick as f64);
        gauge!("terrarium_region_resumed_tick", "region" => region.clone()).set(r.resumed_tick as f64);
        counter!("terrarium_region_handoffs_out_total", "region" => region.clone()).absolute(r.handoffs_out);
        counter!("terrarium_region_handoffs_in_total", "region" => region.clone()).absolute(r.handoffs_in);
        counter!("terrarium_region_unknown_commits_total", "region" => region.clone())
            .absolute(r.unknown_commits);
        counter!("terrarium_region_lease_renewals_total", "region" => region.clone())
            .absolute(r.lease_renewals);
        counter!("terrarium_region_syncs_total", "region" => region.clone()).absolute(r.syncs);
        counter!("terrarium_region_ghosts_expired_total", "region" => region.clone())
            .absolute(r.ghosts_expired);
        counter!("terrarium_region_ghost_batches_published_total", "region" => region.clone())
            .absolute(r.ghost_batches_published);
        counter!("terrarium_region_ghost_batches_received_total", "region" => region.clone())
            .absolute(r.ghost_batches_received);
        counter!("terrarium_region_ghost_publish_errors_total", "region" => region.clone())
            .absolute(r.ghost_publish_errors);
        quantiles("terrarium_region_handoff_latency_seconds", &[("region", &region)], &r.handoff_latency);
    }
}

/// Sets `name{labels…, quantile}` to the percentiles of `l`, in seconds (`quantile="1"` is the max).
fn quantiles(name: &'static str, labels: &[(&'static str, &str)], l: &Latency) {
    for (q, ms) in [("0.5", l.p50_ms), ("0.95", l.p95_ms), ("0.99", l.p99_ms), ("1", l.max_ms)] {
        let mut all: Vec<(&'static str, String)> = labels.iter().map(|&(k, v)| (k, v.to_string())).collect();
        all.push(("quantile", q.to_string()));
        let labels: Vec<metrics::Label> = all.into_iter().map(|(k, v)| metrics::Label::new(k, v)).collect();
        gauge!(name, labels).set(ms / 1e3);
    }
}
