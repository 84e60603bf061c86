//! The main job: a headless simulation on the embedded default, printing tick statistics.
//!
//! ```text
//! cargo run --release --example headless -- --npcs 100000 --ticks 600 --seed 42 --threads 2 --tick-hz 20 --json
//! ```
//!
//! With `--json`, the last line of stdout is one JSON object (keys listed in `Summary`).
//!
//! With a durable store (`--storage embedded` or `postgres`) a stored world is resumed instead
//! of spawning one (`--new-world --wipe` starts over); checkpoints are taken every
//! `--checkpoint-every` ticks and at the end. SIGINT and SIGTERM end the run cleanly: the last
//! tick finishes, the store is drained, a final checkpoint and the summary are written.

use std::fs::File;
use std::io::{BufReader, BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use serde::Serialize;
use terrarium::engine::voxel::Ore;
use terrarium::engine::{Engine, TickSet};
use terrarium::perf::{Performance, PerformanceSnapshot, publish_now};
use terrarium::systems::agents::{MiningStats, PathStats};
use terrarium::systems::batching::{self, BatcherStats, PersistenceHealth};

mod common;
#[path = "common/flags.rs"]
mod flags;
#[path = "common/progress.rs"]
mod progress;

use flags::{StorageFlags, StorageKind, WorldFlags};

/// Runs a headless Terrarium world and reports how fast it ticks.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Plain (wandering) NPCs to spawn (ignored when a stored world is resumed).
    #[arg(long, default_value_t = 100_000)]
    npcs: u64,
    /// Mining agents to spawn, in a voxel world generated for them (see `mining_colony`;
    /// ignored when a stored world is resumed).
    #[arg(long, default_value_t = 0)]
    agents: u64,
    /// Ticks to run (a resumed world runs this many more).
    #[arg(long, default_value_t = 600)]
    ticks: u64,
    #[command(flatten)]
    world: WorldFlags,
    #[command(flatten)]
    storage: StorageFlags,
    /// Start from this snapshot instead of spawning (`--npcs`/`--agents` are then ignored).
    #[arg(long = "snapshot-in")]
    snapshot_in: Option<PathBuf>,
    /// Save the world here after the last tick.
    #[arg(long = "snapshot-out")]
    snapshot_out: Option<PathBuf>,
    /// Pace ticks to `--tick-hz` and sleep between them (a server); otherwise run back to back.
    #[arg(long)]
    realtime: bool,
    /// No progress bar and no human summary.
    #[arg(long)]
    quiet: bool,
    /// Print the summary as one JSON object on the last line of stdout.
    #[arg(long)]
    json: bool,
    /// Print a one-line performance summary every N ticks (0 = never).
    #[arg(long = "report-every", default_value_t = 0)]
    report_every: u64,
    /// After the drain, read every NPC back from the store (through the whole storage stack)
    /// and compare it with the final world (JSON `store_verified`, `store_mismatches`).
    #[arg(long = "verify-store")]
    verify_store: bool,
}

/// The JSON summary. Keys are a contract with other tools: add, never rename.
#[derive(Serialize)]
struct Summary {
    npcs: u64,
    agents: u64,
    ticks: u64,
    threads: usize,
    seed: u64,
    tick_hz: u32,
    storage: StorageKind,
    tick_ms_p50: f64,
    tick_ms_p95: f64,
    tick_ms_p99: f64,
    tick_ms_max: f64,
    tick_ms_mean: f64,
    /// The same ticks less their `Record` and `Flush` stages and the checkpoint after them: the
    /// movement-only tick of this very run, p50 and p99 (with `--storage none` it is the tick).
    movement_tick_ms_p50: f64,
    /// See `movement_tick_ms_p50`.
    movement_tick_ms_p99: f64,
    ticks_per_sec: f64,
    /// Resident memory at the end, after the drain: once the storage stack has stopped, or
    /// with `--verify-store` while it is still open, before the read-back.
    rss_bytes: u64,
    /// `rss_bytes` ÷ NPCs.
    bytes_per_npc: f64,
    /// `--verify-store`: resident memory after the read-back (its buffers, the store's read
    /// caches); null otherwise.
    rss_after_verify_bytes: Option<u64>,
    world_hash: String,
    wall_s: f64,
    spawn_ms: f64,
    snapshot_load_ms: Option<f64>,
    snapshot_save_ms: Option<f64>,
    snapshot_bytes: Option<u64>,
    /// Mean wall-clock milliseconds per tick spent in each stage.
    stage_ms: std::collections::BTreeMap<&'static str, f64>,
    /// Position rows in the store at the end (after the final drain).
    position_rows_written: u64,
    /// Metric rows in the store.
    metric_rows_written: u64,
    /// Registry (`npcs`) rows the store inserted or rewrote in this run.
    npc_upserts_written: u64,
    /// Domain events recorded by the batcher (before deduplication).
    events_emitted: u64,
    /// Event rows in the store.
    events_written: u64,
    /// Events folded into an identical one within the dedup window.
    events_deduplicated: u64,
    /// Calls to the store (`Storage::write`), successful or not.
    store_calls: u64,
    /// Rows that never reached the store (must be 0).
    writes_dropped: u64,
    /// Outbox frames found damaged and lost (their rows are in `writes_dropped` when known).
    outbox_frames_lost: u64,
    /// `--verify-store`: true when every NPC of the final world was read back from the store
    /// at its final position and the store holds no other NPC.
    store_verified: bool,
    /// `--verify-store`: NPCs missing, stored elsewhere, or stored but not in the world.
    store_mismatches: u64,
    /// Batches written to the outbox file.
    outbox_spilled: u64,
    /// Store calls that failed (and were retried later, or spilled): non-zero after an outage.
    store_errors: u64,
    /// Batches the batcher handed to the write-behind.
    batches: u64,
    /// Position rows the batcher produced.
    position_rows_batched: u64,
    /// Position rows overwritten by a later batch before they were written (latest wins).
    position_rows_coalesced: u64,
    /// Wall-clock microseconds of the `Flush` stage (handing a batch to the write-behind):
    /// median and maximum over the ticks that handed one over.
    handoff_us_p50: f64,
    handoff_us_max: f64,
    /// 99th percentile of the same.
    handoff_us_p99: f64,
    /// Wall-clock milliseconds of the `Record` stage (deciding on and cutting a batch), p99
    /// over all ticks: with `Flush`, what the batched tick adds to the movement-only one.
    record_ms_p99: f64,
    /// Milliseconds the final drain (`WriteBehind::shutdown`) took.
    drain_ms: f64,
    /// Storage lag, sampled at the end of every tick: simulated milliseconds between the
    /// current tick and the newest tick the store had committed (0 without storage).
    store_lag_ms_p50: f64,
    store_lag_ms_p99: f64,
    store_lag_ms_max: f64,
    /// The storage lag over wall-clock time: `[unix time ms, highest lag ms]` once a second of
    /// the run (the highest sample of that second), for lining the lag up with events outside
    /// the process (the fault schedule's time to recover per fault).
    store_lag_series: Vec<[u64; 2]>,
    /// The slowest tick (the one `tick_ms_max` measured): its number, the milliseconds of each
    /// stage in it, and the milliseconds the checkpoint took on the tick thread right after it
    /// (counted in the tick's time: the tick thread does it before the next tick).
    tick_max_at: u64,
    tick_max_stages_ms: std::collections::BTreeMap<&'static str, f64>,
    tick_max_checkpoint_ms: f64,
    /// Items the agents mined, per ore kind (empty without agents).
    ore_mined: std::collections::BTreeMap<&'static str, u64>,
    /// Agents' path requests answered with a path.
    paths_solved: u64,
    /// Agents' path requests with no path.
    path_failures: u64,
    /// Agents' paths replanned after a blocked step.
    replans: u64,
    /// The performance snapshot at the end (`terrarium::perf::PerformanceSnapshot`: tick
    /// latency over the last window, stages, batchers, write-behind, pathfinding pool, RSS).
    performance: PerformanceSnapshot,
    /// True when the world was resumed from the store instead of spawned.
    resumed: bool,
    /// The tick the resumed world started at (0 when not resumed).
    resumed_tick: u64,
    /// NPCs (agents included) of the resumed world when it started (0 when not resumed).
    resumed_npcs: u64,
    /// Agents of the resumed world when it started.
    resumed_agents: u64,
    /// Milliseconds from asking the store for its world to a world ready to tick (0 when not
    /// resumed).
    resume_ms: f64,
    /// Tick of the world at the end.
    final_tick: u64,
    /// Checkpoints stored during the run and at its end.
    checkpoints_written: u64,
    /// Checkpoints skipped because the previous one was still being written.
    checkpoints_skipped: u64,
    /// Milliseconds the final checkpoint took (drain included), 0 without one.
    checkpoint_ms: f64,
    /// Milliseconds storing the new world took before its first tick (its first checkpoint,
    /// then its whole population committed), 0 when resumed from rows or not durable.
    initial_checkpoint_ms: f64,
    /// Rows of the new world's population stored before the first tick (registry rows,
    /// positions, events), 0 when resumed from rows or not durable.
    new_world_rows: u64,
    /// Milliseconds until the store had committed them (part of `initial_checkpoint_ms`).
    new_world_rows_ms: f64,
    /// Size of the newest checkpoint, bytes.
    checkpoint_bytes: u64,
    /// Microseconds the tick thread spent copying the world for the newest checkpoint.
    checkpoint_gather_us: u64,
    /// True when SIGINT or SIGTERM ended the run before `--ticks`.
    stopped_by_signal: bool,
}

fn main() -> ExitCode {
    // Before any thread starts: big buffers (a million positions or records) go back to the
    // system when freed instead of staying in glibc's heap (`os::map_big_blocks`).
    terrarium::persistence::os::map_big_blocks();
    common::main_with("headless", run)
}

fn run(args: &Args) -> Result<()> {
    let wall = Instant::now();
    if let Some(path) = &args.snapshot_out {
        flags::check_parent_dir("--snapshot-out", path)?;
    }
    let mut cfg = args.world.load()?;
    let perf = Performance::new();
    let mut builder = Engine::builder(cfg.engine.clone())
        .add_plugin(terrarium::systems::core_plugin)
        .add_plugin(perf.plugin());
    let storage = args.storage.start(&mut cfg, None)?;
    if let Some(pipeline) = &storage {
        builder = builder.add_plugin(pipeline.batching_plugin());
        perf.attach_pipeline(pipeline);
    }
    if args.agents > 0 || args.snapshot_in.is_some() {
        builder = builder.add_plugin(terrarium::systems::agents::plugin);
    }

    let stop = stop_on_signals()?;
    let spawn_started = Instant::now();
    let mut snapshot_load_ms = None;
    let mut resumed = None;
    let mut engine = if let Some(path) = &args.snapshot_in {
        let file = File::open(path).with_context(|| format!("cannot open snapshot {}", path.display()))?;
        let engine = builder
            .build_from_snapshot(&mut BufReader::with_capacity(1 << 20, file))
            .with_context(|| format!("cannot load snapshot {}", path.display()))?;
        snapshot_load_ms = Some(ms(spawn_started.elapsed()));
        engine
    } else if let Some(point) = match &storage {
        Some(p) if args.storage.durable() => p.resume_point().context("cannot read the stored world")?,
        _ => None,
    } {
        if args.agents == 0 {
            builder = builder.add_plugin(terrarium::systems::agents::plugin);
        }
        let (engine, mut report) =
            terrarium::resume::resume(builder, point).context("cannot resume the stored world")?;
        report.ms = ms(spawn_started.elapsed());
        eprintln!(
            "headless: resumed the stored world at tick {} ({} NPCs, {} agents); --npcs and --agents are ignored",
            report.tick, report.npcs, report.agents
        );
        resumed = Some(report);
        engine
    } else {
        let mut engine = builder.build()?;
        spawn_population(&mut engine, args.npcs, args.agents)?;
        engine
    };
    let spawn_ms = ms(spawn_started.elapsed());
    // A new world is stored whole before the first tick: its first checkpoint, then its
    // population. A kill from here on leaves a world the next start resumes, and the ticks
    // never carry the population's first write. Also after a resume that found the population
    // only partly stored (killed during this very step).
    let (mut initial_checkpoint_ms, mut new_world) = (0.0, terrarium::NewWorldStats::default());
    let spawned = resumed.is_none() && args.snapshot_in.is_none();
    let rows_behind = resumed.is_some_and(|r| r.rows_behind);
    if let Some(p) = storage.as_ref().filter(|_| args.storage.durable() && (spawned || rows_behind)) {
        let t = Instant::now();
        if !args.quiet {
            eprintln!("headless: storing the new world ({} NPCs) before its first tick", engine.npc_count());
        }
        new_world = p.checkpoint_new_world(&mut engine).context("cannot store the new world")?;
        initial_checkpoint_ms = ms(t.elapsed());
        if !args.quiet {
            eprintln!(
                "headless: stored in {initial_checkpoint_ms:.0} ms (checkpoint {:.0} ms, {} rows {:.0} ms)",
                new_world.checkpoint_ms, new_world.rows, new_world.rows_ms
            );
        }
    } else if storage.is_some() {
        // A world loaded from a snapshot or resumed: everything in it is new to the batcher.
        // Hand it to the write-behind now (not waited for), so that the first tick's Record
        // stage does not copy the whole population (80 ms at 100k under load, the max tick of
        // the fault schedule's third run).
        batching::flush_now(&mut engine);
    }
    let population = engine.npc_count() as u64;
    let agents = engine.agent_count() as u64;

    let show_progress = !args.quiet && std::io::stdout().is_terminal();
    let bar = if show_progress { progress::progress_bar(args.ticks) } else { ProgressBar::hidden() };
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).context("histogram bounds")?;
    let mut movement = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).context("histogram bounds")?;
    let mut handoff = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).context("histogram bounds")?;
    let mut record = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).context("histogram bounds")?;
    let mut store_lag = Histogram::<u64>::new_with_bounds(1, 86_400_000, 3).context("histogram bounds")?;
    // The exact largest lag: the histogram reports a bucket's upper edge (3,000 ms read back as
    // 3,001), which could claim more lag than the run is long.
    let mut store_lag_max = 0_u64;
    let mut handed = batches_created(&engine);
    let mut lag_series: Vec<[u64; 2]> = Vec::new();
    let mut lag_second = (Instant::now(), 0u64);
    let mut slowest = (Duration::ZERO, 0u64, Duration::ZERO, Vec::new());
    let dt = cfg.engine.dt();
    let loop_started = Instant::now();
    let mut ticks_run = 0;
    for k in 0..args.ticks {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let t = Instant::now();
        engine.tick();
        ticks_run += 1;
        let c = Instant::now();
        if let Some(p) = &storage {
            p.maybe_checkpoint(&mut engine);
        }
        let (took, checkpoint) = (t.elapsed(), c.elapsed());
        hist.saturating_record(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX).max(1));
        let stages = &engine.stage_timings().last;
        let storage_part = stages[TickSet::Record.index()] + stages[TickSet::Flush.index()] + checkpoint;
        let moved = took.saturating_sub(storage_part);
        let record_ns = stages[TickSet::Record.index()].as_nanos();
        record.saturating_record(u64::try_from(record_ns).unwrap_or(u64::MAX).max(1));
        movement.saturating_record(u64::try_from(moved.as_nanos()).unwrap_or(u64::MAX).max(1));
        if took > slowest.0 {
            slowest = (took, engine.clock().tick, checkpoint, engine.stage_timings().last.to_vec());
        }
        if let Some(h) = engine.world().get_resource::<PersistenceHealth>() {
            store_lag.saturating_record(h.store_lag_ms);
            store_lag_max = store_lag_max.max(h.store_lag_ms);
            lag_second.1 = lag_second.1.max(h.store_lag_ms);
            if lag_second.0.elapsed() >= Duration::from_secs(1) {
                let unix =
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                lag_series.push([u64::try_from(unix.as_millis()).unwrap_or(u64::MAX), lag_second.1]);
                lag_second = (Instant::now(), 0);
            }
        }
        let now_handed = batches_created(&engine);
        if now_handed > handed {
            let flush = engine.stage_timings().last[TickSet::Flush.index()];
            handoff.saturating_record(u64::try_from(flush.as_nanos()).unwrap_or(u64::MAX).max(1));
            handed = now_handed;
        }
        bar.inc(1);
        if args.report_every > 0 && (k + 1) % args.report_every == 0 {
            publish_now(&mut engine);
            let line = report_line(&perf.snapshot());
            if bar.is_hidden() { println!("{line}") } else { bar.println(line) }
        }
        if args.realtime {
            let next = loop_started + dt * u32::try_from(k + 1).unwrap_or(u32::MAX);
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
    }
    let loop_time = loop_started.elapsed();
    bar.finish_and_clear();

    let (mut snapshot_save_ms, mut snapshot_bytes) = (None, None);
    if let Some(path) = &args.snapshot_out {
        let t = Instant::now();
        let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        snapshot_bytes = Some(engine.save_snapshot(&mut w)?);
        w.flush()?;
        snapshot_save_ms = Some(ms(t.elapsed()));
    }

    // Drain: what changed since the last flush is cut into a last batch, then the write-behind
    // writes everything before the figures are read.
    let drain_started = Instant::now();
    let mut checkpoint_ms = 0.0;
    if let Some(p) = storage.as_ref().filter(|_| args.storage.durable()) {
        let t = Instant::now();
        p.checkpoint_now(&mut engine, true).context("cannot write the final checkpoint")?;
        checkpoint_ms = ms(t.elapsed());
    }
    let checkpoints = storage.as_ref().map(terrarium::StoragePipeline::checkpoint_stats).unwrap_or_default();
    batching::flush_now(&mut engine);
    let mut check = None;
    let rss = || memory_stats::memory_stats().map_or(0, |m| m.physical_mem as u64);
    // The process's RSS after the drain; with --verify-store, before the read-back (its
    // buffers and the store's read caches belong to the check, not to the running world).
    let mut rss_bytes = 0;
    let written = match storage {
        Some(pipeline) if args.verify_store => {
            let world = || {
                rss_bytes = rss();
                engine
                    .world_mut()
                    .query::<(&terrarium::engine::NpcId, &terrarium::engine::Position)>()
                    .iter(engine.world())
                    .map(|(id, p)| (id.0, [p.x, p.y, p.z]))
                    .collect()
            };
            let (rows, stats, c) = pipeline.verified_after_drain(Duration::from_secs(600), world)?;
            check = Some(c);
            Some((rows, stats))
        }
        Some(pipeline) => {
            let rows = pipeline.written_after_drain(Duration::from_secs(600))?;
            Some(rows)
        }
        None => None,
    };
    let drain_ms = ms(drain_started.elapsed());
    publish_now(&mut engine);
    let performance = perf.snapshot();
    let batcher = engine.world().get_resource::<BatcherStats>().cloned().unwrap_or_default();

    let timings = engine.stage_timings();
    let stage_ms = terrarium::engine::TickSet::ALL
        .iter()
        .map(|set| {
            let total = timings.total[set.index()];
            (set.name(), if timings.ticks == 0 { 0.0 } else { ms(total) / timings.ticks as f64 })
        })
        .collect();
    let rss_after_verify_bytes = check.is_some().then(rss);
    if check.is_none() {
        rss_bytes = rss();
    }
    let q = |p: f64| hist.value_at_quantile(p) as f64 / 1e6;
    let summary = Summary {
        npcs: population - agents,
        agents,
        ticks: ticks_run,
        threads: engine.threads(),
        seed: engine.world().resource::<terrarium::engine::SimRng>().seed(),
        tick_hz: cfg.engine.tick_hz,
        storage: args.storage.kind(),
        tick_ms_p50: q(0.50),
        tick_ms_p95: q(0.95),
        tick_ms_p99: q(0.99),
        tick_ms_max: hist.max() as f64 / 1e6,
        tick_ms_mean: hist.mean() / 1e6,
        movement_tick_ms_p50: movement.value_at_quantile(0.50) as f64 / 1e6,
        movement_tick_ms_p99: movement.value_at_quantile(0.99) as f64 / 1e6,
        ticks_per_sec: if loop_time.is_zero() { 0.0 } else { ticks_run as f64 / loop_time.as_secs_f64() },
        rss_bytes,
        rss_after_verify_bytes,
        bytes_per_npc: if population == 0 { 0.0 } else { rss_bytes as f64 / population as f64 },
        world_hash: format!("{:016x}", engine.world_hash()),
        wall_s: wall.elapsed().as_secs_f64(),
        spawn_ms,
        snapshot_load_ms,
        snapshot_save_ms,
        snapshot_bytes,
        stage_ms,
        position_rows_written: written.map_or(0, |(s, _)| s.positions),
        metric_rows_written: written.map_or(0, |(s, _)| s.metrics),
        npc_upserts_written: written.map_or(0, |(s, _)| s.npc_upserts),
        events_emitted: batcher.events_emitted,
        events_written: written.map_or(0, |(s, _)| s.events),
        events_deduplicated: batcher.events_deduplicated,
        store_calls: written.map_or(0, |(_, w)| w.store_calls),
        writes_dropped: written.map_or(0, |(_, w)| w.writes_dropped),
        outbox_frames_lost: written.map_or(0, |(_, w)| w.outbox_frames_lost),
        store_verified: check.is_some_and(|c| c.mismatches == 0),
        store_mismatches: check.map_or(0, |c| c.mismatches),
        outbox_spilled: written.map_or(0, |(_, w)| w.batches_spilled),
        store_errors: written.map_or(0, |(_, w)| w.store_errors),
        batches: batcher.batches_created,
        position_rows_batched: batcher.positions.items_batched,
        position_rows_coalesced: written.map_or(0, |(_, w)| w.rows_coalesced),
        handoff_us_p50: if handoff.is_empty() { 0.0 } else { handoff.value_at_quantile(0.5) as f64 / 1e3 },
        handoff_us_p99: if handoff.is_empty() { 0.0 } else { handoff.value_at_quantile(0.99) as f64 / 1e3 },
        record_ms_p99: if record.is_empty() { 0.0 } else { record.value_at_quantile(0.99) as f64 / 1e6 },
        handoff_us_max: if handoff.is_empty() { 0.0 } else { handoff.max() as f64 / 1e3 },
        drain_ms,
        store_lag_ms_p50: store_lag.value_at_quantile(0.5).min(store_lag_max) as f64,
        store_lag_ms_p99: store_lag.value_at_quantile(0.99).min(store_lag_max) as f64,
        store_lag_ms_max: store_lag_max as f64,
        store_lag_series: lag_series,
        tick_max_at: slowest.1,
        tick_max_stages_ms: terrarium::engine::TickSet::ALL
            .iter()
            .filter_map(|set| slowest.3.get(set.index()).map(|d| (set.name(), ms(*d))))
            .collect(),
        tick_max_checkpoint_ms: ms(slowest.2),
        ore_mined: engine
            .world()
            .get_resource::<MiningStats>()
            .map(|m| Ore::ALL.iter().map(|o| (o.name(), m.ore_mined[o.index()])).collect())
            .unwrap_or_default(),
        paths_solved: engine.world().get_resource::<PathStats>().map_or(0, |p| p.solved),
        path_failures: engine.world().get_resource::<PathStats>().map_or(0, |p| p.failures),
        replans: engine.world().get_resource::<PathStats>().map_or(0, |p| p.replans),
        performance,
        resumed: resumed.is_some(),
        resumed_tick: resumed.map_or(0, |r| r.tick),
        resumed_npcs: resumed.map_or(0, |r| r.npcs),
        resumed_agents: resumed.map_or(0, |r| r.agents),
        resume_ms: resumed.map_or(0.0, |r| r.ms),
        final_tick: engine.clock().tick,
        checkpoints_written: checkpoints.written,
        checkpoints_skipped: checkpoints.skipped,
        checkpoint_ms,
        initial_checkpoint_ms,
        new_world_rows: new_world.rows,
        new_world_rows_ms: new_world.rows_ms,
        checkpoint_bytes: checkpoints.last_bytes,
        checkpoint_gather_us: checkpoints.last_gather_us,
        stopped_by_signal: ticks_run < args.ticks,
    };
    if !args.quiet {
        print_human(&summary);
    }
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    }
    Ok(())
}

/// A flag that SIGINT or SIGTERM sets: the tick loop stops at the next tick, then the run ends
/// as after its last tick (drain, final checkpoint, summary). A second signal exits at once.
fn stop_on_signals() -> Result<Arc<AtomicBool>> {
    use tokio::signal::unix::{SignalKind, signal};
    let flag = Arc::new(AtomicBool::new(false));
    let rt = tokio::runtime::Builder::new_current_thread().enable_io().build().context("signal runtime")?;
    // Installed before the first tick, so a signal never finds the default action (exit).
    let (mut int, mut term) = rt.block_on(async {
        Ok::<_, std::io::Error>((signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?))
    })?;
    let set = Arc::clone(&flag);
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        rt.block_on(async move {
            tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
            eprintln!("headless: stopping after this tick (signal); send it again to exit at once");
            set.store(true, Ordering::Relaxed);
            tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
            std::process::exit(130);
        });
    })?;
    Ok(flag)
}

/// Spawns plain NPCs spread over the ground, then mining agents in a voxel world generated for
/// them; everything derives from the world seed.
fn spawn_population(engine: &mut Engine, npcs: u64, agents: u64) -> Result<()> {
    terrarium::systems::wander::spawn_wanderers(engine, npcs);
    if agents > 0 {
        let seed = engine.config().seed;
        terrarium::systems::agents::spawn_colony(engine, agents, seed)
            .context("cannot set up the mining agents")?;
    }
    Ok(())
}

/// Batches the batcher has handed over so far (0 without batching).
fn batches_created(engine: &Engine) -> u64 {
    engine.world().get_resource::<BatcherStats>().map_or(0, |s| s.batches_created)
}

fn print_human(s: &Summary) {
    println!(
        "{} NPCs + {} agents, {} ticks at {} Hz on {} threads (seed {}, storage {:?})",
        s.npcs, s.agents, s.ticks, s.tick_hz, s.threads, s.seed, s.storage
    );
    println!(
        "tick ms: p50 {:.3}  p95 {:.3}  p99 {:.3}  max {:.3}  ({:.0} ticks/s)",
        s.tick_ms_p50, s.tick_ms_p95, s.tick_ms_p99, s.tick_ms_max, s.ticks_per_sec
    );
    println!(
        "memory: {:.1} MiB RSS, {:.0} bytes/NPC; spawn {:.0} ms; world hash {}",
        s.rss_bytes as f64 / f64::from(1u32 << 20),
        s.bytes_per_npc,
        s.spawn_ms,
        s.world_hash
    );
    let stages: Vec<String> = s.stage_ms.iter().map(|(k, v)| format!("{k} {v:.3}")).collect();
    println!("mean ms per stage: {}", stages.join(", "));
    if s.storage != StorageKind::None {
        println!(
            "storage: {} batches, {} position / {} metric / {} event rows written in {} store calls, \
             {} dropped, {} spilled; handoff p50 {:.1} us, max {:.1} us; drain {:.0} ms; \
             store lag ms p50 {:.0}, p99 {:.0}, max {:.0}",
            s.batches,
            s.position_rows_written,
            s.metric_rows_written,
            s.events_written,
            s.store_calls,
            s.writes_dropped,
            s.outbox_spilled,
            s.handoff_us_p50,
            s.handoff_us_max,
            s.drain_ms,
            s.store_lag_ms_p50,
            s.store_lag_ms_p99,
            s.store_lag_ms_max
        );
    }
    if let (Some(ms), Some(bytes)) = (s.snapshot_save_ms, s.snapshot_bytes) {
        println!("snapshot saved: {bytes} bytes in {ms:.0} ms");
    }
    if let Some(ms) = s.snapshot_load_ms {
        println!("snapshot loaded in {ms:.0} ms");
    }
}

/// One line of `--report-every`: tick latency over the window, rate, population, memory and
/// the storage pipeline.
fn report_line(p: &PerformanceSnapshot) -> String {
    let l = &p.tick_latency;
    let mut line = format!(
        "tick {}: p50 {:.3} ms  p95 {:.3}  p99 {:.3}  max {:.3}  {:.0} ticks/s  {} npcs ({} agents)  rss {:.0} MiB",
        p.tick,
        l.p50_ms,
        l.p95_ms,
        l.p99_ms,
        l.max_ms,
        p.window_ticks_per_sec,
        p.npcs,
        p.agents,
        p.rss_bytes as f64 / f64::from(1u32 << 20),
    );
    if let Some(b) = &p.batchers {
        line += &format!("  batches {} ({} rows, {} pending)", b.batches, b.items, b.pending);
    }
    if let Some(w) = &p.write_behind {
        line += &format!(
            "  write-behind: {} rows queued, {} written batches, {} dropped",
            w.queued_rows, w.batches_written, w.writes_dropped
        );
    }
    if p.agents > 0 {
        let f = &p.pathfinding;
        line += &format!("  paths {} solved, {} queued", f.solved, f.queued);
    }
    line
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
