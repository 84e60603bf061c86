//! NPC scaling sweeps: tick time, throughput and memory per NPC against NPC count (1k to 1M in
//! steps of ×√10) and worker threads, for each workload (movement only, batched into the
//! embedded store, full mining agents, flocking); writes a CSV and PNG charts.
//!
//! ```text
//! cargo run --release --example scaling -- --out docs/charts
//! cargo run --release --example scaling -- --max-npcs 10000 --threads-list 1,2 --ticks 20 --out /tmp/s
//! cargo run --release --example scaling -- --workloads agents --max-agents 31623 --out /tmp/s
//! ```
//!
//! Every measurement runs in a fresh child process (this program, re-run with `--child`), so
//! its memory per NPC is not polluted by earlier runs and its worker pool starts cold. Output
//! in `--out`: `scaling.csv` (one row per run), `summary.json` (log-log slopes),
//! `tick_ms_vs_npcs.png`, `ticks_per_sec_vs_threads.png` and `bytes_per_npc.png`.
//!
//! Linear scaling check: the slope of the least-squares line through log(median tick ms)
//! against log(NPCs), over the runs from 10k to 1M NPCs, is printed per workload and thread
//! count (the target is ≤ 1.1); `summary.json` also has the slope of the mean.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use terrarium::engine::rng::{StreamRng, hash3};
use terrarium::engine::{Engine, EngineConfig, NpcSpec, Position, Role, TickSet};
use terrarium::{Config, StoragePipeline};

mod common;

/// Sweeps NPC counts and thread counts and charts how the tick scales.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Smallest NPC count of the sweep.
    #[arg(long, default_value_t = 1_000)]
    min_npcs: u64,
    /// Largest NPC count of the sweep (counts grow by ×√10 from `--min-npcs`).
    #[arg(long, default_value_t = 1_000_000)]
    max_npcs: u64,
    /// Thread counts to measure, comma-separated (default: 1, 2, … all cores; powers of two
    /// past four).
    #[arg(long, value_delimiter = ',')]
    threads_list: Option<Vec<usize>>,
    /// Ticks measured per run.
    #[arg(long, default_value_t = 100)]
    ticks: u64,
    /// Ticks run before measuring, so the timed ticks see the steady state (every NPC moving,
    /// caches warm; every agent awake and working). Default: 10, or 300 for `agents`.
    #[arg(long)]
    warmup: Option<u64>,
    /// Workloads to sweep, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "movement,batched,agents,flocking")]
    workloads: Vec<Workload>,
    /// Largest agent count of the `agents` workload (its sweep stops at the last count not above
    /// it): an agent's tick costs several hundred times a plain NPC's, and its voxel world grows
    /// with it.
    #[arg(long, default_value_t = 100_000)]
    max_agents: u64,
    /// Directory for the CSV, the summary and the charts (created if missing).
    #[arg(long, default_value = "target/scaling")]
    out: PathBuf,
    /// World seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Measure nothing: read `scaling.csv` in `--out` (for example one merged from several
    /// sweeps) and write `summary.json` and the charts from it.
    #[arg(long)]
    replot: bool,
    /// Internal: measure one run (`--workload`, `--npcs`, `--threads`) and print it as JSON.
    #[arg(long, hide = true)]
    child: bool,
    #[arg(long, hide = true)]
    workload: Option<Workload>,
    #[arg(long, hide = true)]
    npcs: Option<u64>,
    #[arg(long, hide = true)]
    threads: Option<usize>,
}

/// What the world does each tick. Adding a workload is a variant here and an arm in
/// [`Workload::build`]: the sweep, the CSV and the charts pick it up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Workload {
    /// Plain NPCs: movement and the wander rule only (`core_plugin`).
    Movement,
    /// The movement world plus batching and write-behind into the embedded memory store
    /// (`StoragePipeline` with the default configuration). The tick pays the Record and Flush
    /// stages (building the batch and handing it over); the store writes on the pipeline's own
    /// runtime threads, which compete for the same cores.
    Batched,
    /// Plain NPCs in swarms of about 64 that flock (`core_plugin` + `steering::register`).
    Flocking,
    /// The full agent loop: mining agents in a voxel world generated for them
    /// (`agents::spawn_colony`: decide, mining round, path planning, walking and digging).
    /// "NPCs" are agents here, capped by `--max-agents`.
    Agents,
}

/// A world ready to tick, with the storage it writes to (batched workload only).
struct Bench {
    engine: Engine,
    storage: Option<StoragePipeline>,
}

impl Workload {
    /// A world of `npcs` NPCs for this workload, on `threads` workers, from `seed`.
    fn build(self, npcs: u64, threads: usize, seed: u64) -> Result<Bench> {
        let cfg =
            Config { engine: EngineConfig { seed, threads, ..EngineConfig::default() }, ..Config::default() };
        let (min, max) = (cfg.engine.world.min, cfg.engine.world.max);
        let builder = Engine::builder(cfg.engine.clone()).add_plugin(terrarium::systems::core_plugin);
        let scattered = move |i: u64| {
            let mut r = StreamRng::new(hash3(seed, i, 0x0053_4341_4C45)); // "SCALE"
            let pos = Position::new(r.range_f32(min[0], max[0]), min[1], r.range_f32(min[2], max[2]));
            NpcSpec::new(Role::BUILT_IN[(i % 5) as usize], pos)
        };
        let mut storage = None;
        let mut engine = match self {
            Workload::Movement => {
                let mut engine = builder.build()?;
                engine.spawn_batch((0..npcs).map(scattered));
                engine
            }
            Workload::Batched => {
                let pipeline = StoragePipeline::start(&cfg).context("cannot start storage")?;
                let mut engine = builder.add_plugin(pipeline.batching_plugin()).build()?;
                storage = Some(pipeline);
                engine.spawn_batch((0..npcs).map(scattered));
                engine
            }
            Workload::Flocking => {
                let mut engine = builder.add_plugin(terrarium::systems::steering::register).build()?;
                let swarms = (npcs / 64).max(1);
                engine.spawn_batch((0..npcs).map(|i| scattered(i).in_swarm(1 + (i % swarms) as u32)));
                engine
            }
            Workload::Agents => {
                let mut engine = builder.build()?;
                terrarium::systems::agents::spawn_colony(&mut engine, npcs, seed)
                    .context("cannot set up the mining agents")?;
                engine
            }
        };
        // Applies nothing, but makes sure the world is fully set up before timing starts.
        engine.tick();
        Ok(Bench { engine, storage })
    }

    fn name(self) -> &'static str {
        match self {
            Workload::Movement => "movement",
            Workload::Batched => "batched",
            Workload::Flocking => "flocking",
            Workload::Agents => "agents",
        }
    }

    /// Warm-up ticks unless `--warmup` says otherwise. Agents wake within two simulated
    /// seconds (40 ticks at 20 Hz) and take their first tasks all at once; from about tick 300
    /// the colony works steadily (mining, hauling, replanning) until the deposits within reach
    /// run out near tick 1000 (the same at 10k and 100k agents: the world grows with the
    /// colony). 300 ticks put the default 100 timed ones inside that working phase.
    fn default_warmup(self) -> u64 {
        match self {
            Workload::Agents => 300,
            Workload::Movement | Workload::Batched | Workload::Flocking => 10,
        }
    }
}

impl Bench {
    /// Cuts a last batch, drains the write-behind and checks that nothing was dropped; returns
    /// the rows the store holds (0 without storage).
    fn finish(mut self) -> Result<u64> {
        let Some(pipeline) = self.storage.take() else { return Ok(0) };
        terrarium::systems::batching::flush_now(&mut self.engine);
        let (rows, stats) =
            pipeline.written_after_drain(Duration::from_secs(600)).context("the final drain failed")?;
        ensure!(stats.writes_dropped == 0, "the write-behind dropped {} rows", stats.writes_dropped);
        ensure!(rows.positions > 0, "batching wrote no position rows");
        Ok(rows.positions + rows.metrics + rows.events + rows.npc_upserts)
    }
}

/// One run: a row of the CSV, and what a child prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Run {
    workload: Workload,
    npcs: u64,
    threads: usize,
    ticks: u64,
    tick_ms_mean: f64,
    tick_ms_p50: f64,
    tick_ms_p95: f64,
    tick_ms_max: f64,
    ticks_per_sec: f64,
    /// Resident memory after the run.
    rss_bytes: u64,
    /// Resident memory of the empty engine, before spawning.
    rss_empty_bytes: u64,
    /// (rss − rss of the empty engine) / NPCs.
    bytes_per_npc: f64,
    spawn_ms: f64,
    /// Warm-up ticks run before the timed ones.
    warmup: u64,
    /// Agents among the NPCs (all of them in `agents`, none elsewhere).
    agents: u64,
    /// Mean wall-clock ms per timed tick in the Record and Flush stages (batching and the
    /// hand-off to the write-behind; near 0 without batching).
    record_flush_ms_mean: f64,
    /// Rows the store holds after the final drain (positions, metrics, events and registry
    /// upserts; 0 without storage).
    rows_written: u64,
}

/// The log-log slope of one workload and thread count.
#[derive(Debug, Serialize)]
struct Slope {
    workload: Workload,
    threads: usize,
    from_npcs: u64,
    to_npcs: u64,
    points: usize,
    /// Of the median tick (the figure the target is checked on).
    slope: f64,
    /// Of the mean tick.
    slope_mean: f64,
}

fn main() -> ExitCode {
    common::main_with("scaling", |args: &Args| {
        if args.child {
            child(args)
        } else if args.replot {
            replot(&args.out)
        } else {
            sweep(args)
        }
    })
}

/// The parent: runs every point in a child, then writes the CSV, the summary and the charts.
fn sweep(args: &Args) -> Result<()> {
    ensure!(
        args.min_npcs >= 1 && args.min_npcs <= args.max_npcs,
        "--min-npcs must be between 1 and --max-npcs"
    );
    ensure!(args.ticks >= 1, "--ticks must be at least 1");
    let counts = npc_counts(args.min_npcs, args.max_npcs);
    let threads = match &args.threads_list {
        Some(list) => {
            ensure!(
                !list.is_empty() && list.iter().all(|&t| t >= 1),
                "--threads-list needs counts of at least 1"
            );
            list.clone()
        }
        None => default_threads(std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)),
    };
    ensure!(args.max_agents >= 1, "--max-agents must be at least 1");
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let exe = std::env::current_exe().context("cannot find this program to re-run it")?;
    let mut runs = Vec::new();
    for &workload in &args.workloads {
        let cap = if workload == Workload::Agents { args.max_agents } else { u64::MAX };
        let sizes: Vec<u64> = counts.iter().copied().filter(|&n| n <= cap).collect();
        if sizes.is_empty() {
            eprintln!("{}: no NPC count of the sweep is within --max-agents {cap}; skipped", workload.name());
            continue;
        }
        let bar = progress_bar(workload, (sizes.len() * threads.len()) as u64);
        for &npcs in &sizes {
            for &t in &threads {
                bar.set_message(format!("{npcs} NPCs, {t} threads"));
                let started = Instant::now();
                let run = measure(&exe, args, workload, npcs, t)?;
                let line = format!(
                    "{} {npcs} NPCs, {t} threads: {:.3} ms per tick (median; {:.1} s)",
                    workload.name(),
                    run.tick_ms_p50,
                    started.elapsed().as_secs_f64()
                );
                if bar.is_hidden() {
                    eprintln!("{line}");
                } else {
                    bar.println(line);
                }
                runs.push(run);
                bar.inc(1);
            }
        }
        bar.finish_and_clear();
    }
    let csv_path = args.out.join("scaling.csv");
    let mut csv =
        csv::Writer::from_path(&csv_path).with_context(|| format!("cannot write {}", csv_path.display()))?;
    for run in &runs {
        csv.serialize(run)?;
    }
    csv.flush()?;
    report(&runs, &args.out)
}

/// `--replot`: the summary and the charts again, from the CSV in `out`.
fn replot(out: &Path) -> Result<()> {
    let csv_path = out.join("scaling.csv");
    let mut csv =
        csv::Reader::from_path(&csv_path).with_context(|| format!("cannot read {}", csv_path.display()))?;
    let runs: Vec<Run> = csv
        .deserialize()
        .collect::<Result<_, _>>()
        .with_context(|| format!("{} is not a scaling CSV", csv_path.display()))?;
    ensure!(!runs.is_empty(), "{} has no runs", csv_path.display());
    report(&runs, out)
}

/// Writes `summary.json` and the charts into `out`, and prints the table and the slopes.
fn report(runs: &[Run], out: &Path) -> Result<()> {
    let slopes = slopes(runs);
    // Why `slopes` is empty, so an empty list is never a silent surprise.
    let note = slopes.is_empty().then_some(
        "no slope: a slope needs at least two runs of one workload and thread count between \
         10,000 and 1,000,000 NPCs (smaller worlds measure fixed costs, not scaling)",
    );
    let mut summary = serde_json::json!({ "slopes": slopes });
    if let Some(note) = note {
        summary["slopes_note"] = note.into();
    }
    std::fs::write(out.join("summary.json"), serde_json::to_string_pretty(&summary)?)?;
    charts::draw_all(runs, out)?;
    print_table(runs);
    for s in &slopes {
        println!(
            "slope of log(tick ms) against log(NPCs), {} .. {} NPCs, {} on {}: {:.3} median, {:.3} mean ({} points; target ≤ 1.1)",
            s.from_npcs,
            s.to_npcs,
            s.workload.name(),
            charts::threads_label(s.threads),
            s.slope,
            s.slope_mean,
            s.points
        );
    }
    if let Some(note) = note {
        println!("{note}");
    }
    println!("wrote {} and charts in {}", out.join("scaling.csv").display(), out.display());
    Ok(())
}

/// Runs one measurement in a fresh child process and reads its JSON line.
fn measure(exe: &Path, args: &Args, workload: Workload, npcs: u64, threads: usize) -> Result<Run> {
    let out = Command::new(exe)
        .args(["--child", "--workload", workload.name()])
        .args(["--npcs", &npcs.to_string(), "--threads", &threads.to_string()])
        .args(["--ticks", &args.ticks.to_string()])
        .args(["--warmup", &args.warmup.unwrap_or(workload.default_warmup()).to_string()])
        .args(["--seed", &args.seed.to_string()])
        .output()
        .context("cannot start a measurement process")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "measurement of {} with {npcs} NPCs on {threads} threads failed ({}): {}",
            workload.name(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let line = stdout.lines().last().ok_or_else(|| anyhow!("a measurement printed nothing"))?;
    serde_json::from_str(line).with_context(|| format!("unreadable measurement: {line}"))
}

/// The child: builds the world, warms up, times `--ticks` ticks and prints one JSON line.
fn child(args: &Args) -> Result<()> {
    let workload = args.workload.ok_or_else(|| anyhow!("--child needs --workload"))?;
    let npcs = args.npcs.ok_or_else(|| anyhow!("--child needs --npcs"))?;
    let threads = args.threads.ok_or_else(|| anyhow!("--child needs --threads"))?;
    let rss = || memory_stats::memory_stats().map_or(0, |m| m.physical_mem as u64);
    // The empty engine (worker pool included), as the baseline for memory per NPC.
    drop(Engine::builder(EngineConfig { threads, ..EngineConfig::default() }).build()?);
    let rss_empty_bytes = rss();
    let warmup = args.warmup.unwrap_or(workload.default_warmup());
    let started = Instant::now();
    let mut bench = workload.build(npcs, threads, args.seed)?;
    let spawn_ms = started.elapsed().as_secs_f64() * 1e3;
    bench.engine.run_ticks(warmup);
    let record_flush = |e: &Engine| {
        let total = &e.stage_timings().total;
        total[TickSet::Record.index()] + total[TickSet::Flush.index()]
    };
    let record_flush_before = record_flush(&bench.engine);
    let mut times = Vec::with_capacity(usize::try_from(args.ticks).unwrap_or(0));
    let loop_started = Instant::now();
    for _ in 0..args.ticks {
        let t = Instant::now();
        bench.engine.tick();
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let total = loop_started.elapsed().as_secs_f64();
    let rss_bytes = rss();
    let record_flush_ms = (record_flush(&bench.engine) - record_flush_before).as_secs_f64() * 1e3;
    let (threads, agents) = (bench.engine.threads(), bench.engine.agent_count() as u64);
    let rows_written = bench.finish()?;
    times.sort_by(f64::total_cmp);
    let q = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    let run = Run {
        workload,
        npcs,
        threads,
        ticks: args.ticks,
        tick_ms_mean: times.iter().sum::<f64>() / times.len() as f64,
        tick_ms_p50: q(0.5),
        tick_ms_p95: q(0.95),
        tick_ms_max: q(1.0),
        ticks_per_sec: args.ticks as f64 / total,
        rss_bytes,
        rss_empty_bytes,
        bytes_per_npc: rss_bytes.saturating_sub(rss_empty_bytes) as f64 / npcs as f64,
        spawn_ms,
        warmup,
        agents,
        record_flush_ms_mean: record_flush_ms / args.ticks as f64,
        rows_written,
    };
    println!("{}", serde_json::to_string(&run)?);
    Ok(())
}

/// `min`, then ×√10 at a time (rounded), up to `max`.
fn npc_counts(min: u64, max: u64) -> Vec<u64> {
    (0u32..)
        .map(|k| {
            // min · 10^(k/2), exact for even k.
            let tens = 10f64.powi((k / 2) as i32);
            let odd = if k % 2 == 1 { 10f64.sqrt() } else { 1.0 };
            (min as f64 * tens * odd).round() as u64
        })
        .take_while(|&n| n <= max)
        .collect()
}

/// 1, 2, … up to `cores` (powers of two past four), always ending with `cores`.
fn default_threads(cores: usize) -> Vec<usize> {
    let mut list: Vec<usize> = (1..=cores.min(4)).collect();
    let mut t = 8;
    while t < cores {
        list.push(t);
        t *= 2;
    }
    if *list.last().expect("at least one") != cores {
        list.push(cores);
    }
    list
}

/// Least-squares slopes of log(tick ms) against log(NPCs), over 10k to 1M NPCs, per workload
/// and thread count (where at least two runs fall in that range): of the median tick, which a
/// compiler taking the core for a few ticks moves least, and of the mean.
fn slopes(runs: &[Run]) -> Vec<Slope> {
    let mut groups: BTreeMap<(Workload, usize), Vec<&Run>> = BTreeMap::new();
    for r in runs.iter().filter(|r| (10_000..=1_000_000).contains(&r.npcs)) {
        groups.entry((r.workload, r.threads)).or_default().push(r);
    }
    groups
        .into_iter()
        .filter(|(_, g)| g.len() >= 2)
        .map(|((workload, threads), g)| Slope {
            workload,
            threads,
            from_npcs: g.iter().map(|r| r.npcs).min().unwrap_or(0),
            to_npcs: g.iter().map(|r| r.npcs).max().unwrap_or(0),
            points: g.len(),
            slope: log_log_slope(g.iter().map(|r| (r.npcs as f64, r.tick_ms_p50))),
            slope_mean: log_log_slope(g.iter().map(|r| (r.npcs as f64, r.tick_ms_mean))),
        })
        .collect()
}

/// The least-squares slope of log y against log x.
fn log_log_slope(points: impl Iterator<Item = (f64, f64)>) -> f64 {
    let pts: Vec<(f64, f64)> = points.map(|(x, y)| (x.log10(), y.log10())).collect();
    let n = pts.len() as f64;
    let (mx, my) = (pts.iter().map(|p| p.0).sum::<f64>() / n, pts.iter().map(|p| p.1).sum::<f64>() / n);
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx) * (p.0 - mx)).sum();
    sxy / sxx
}

fn progress_bar(workload: Workload, len: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>9} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_prefix(workload.name());
    // A large run takes a while in its child process: keep the elapsed time moving meanwhile.
    bar.enable_steady_tick(Duration::from_millis(500));
    bar
}

fn print_table(runs: &[Run]) {
    println!(
        "{:<9} {:>9} {:>7} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>9}",
        "workload",
        "npcs",
        "threads",
        "tick ms",
        "p50 ms",
        "p95 ms",
        "rec+fl ms",
        "ticks/s",
        "B/NPC",
        "spawn ms"
    );
    for r in runs {
        println!(
            "{:<9} {:>9} {:>7} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>10.1} {:>10.1} {:>9.0}",
            r.workload.name(),
            r.npcs,
            r.threads,
            r.tick_ms_mean,
            r.tick_ms_p50,
            r.tick_ms_p95,
            r.record_flush_ms_mean,
            r.ticks_per_sec,
            r.bytes_per_npc,
            r.spawn_ms
        );
    }
}

/// The three charts, drawn with plotters on bitmaps; text uses the bundled DejaVu Sans Mono, so
/// no system fonts are needed.
mod charts {
    use std::path::Path;

    use anyhow::{Result, anyhow};
    use plotters::coord::Shift;
    use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
    use plotters::prelude::*;

    use super::{Run, Workload};

    const FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSansMono.ttf");
    const SIZE: (u32, u32) = (1000, 700);

    /// One line of a chart: its label and points.
    type Series = (String, Vec<(f64, f64)>);

    pub(super) fn draw_all(runs: &[Run], out: &Path) -> Result<()> {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
            .map_err(|_| anyhow!("the bundled font is unreadable"))?;
        let mut keys: Vec<(Workload, usize)> = runs.iter().map(|r| (r.workload, r.threads)).collect();
        keys.sort_unstable();
        keys.dedup();
        let per_thread: Vec<Series> = keys
            .iter()
            .map(|&(w, t)| {
                let pts = runs
                    .iter()
                    .filter(|r| (r.workload, r.threads) == (w, t))
                    .map(|r| (r.npcs as f64, r.tick_ms_p50));
                (format!("{}, {}", w.name(), threads_label(t)), pts.collect())
            })
            .collect();
        log_log(
            &out.join("tick_ms_vs_npcs.png"),
            "Tick time against NPCs",
            "NPCs",
            "tick ms (median)",
            &per_thread,
        )?;

        // Throughput against threads, at 10k, 100k and 1M NPCs (or the largest count swept).
        let mut counts: Vec<u64> = runs.iter().map(|r| r.npcs).collect();
        counts.sort_unstable();
        counts.dedup();
        let mut shown: Vec<u64> =
            counts.iter().copied().filter(|n| [10_000, 100_000, 1_000_000].contains(n)).collect();
        if shown.is_empty() {
            shown.extend(counts.last());
        }
        let mut workloads: Vec<Workload> = runs.iter().map(|r| r.workload).collect();
        workloads.sort_unstable();
        workloads.dedup();
        let mut by_threads = Vec::new();
        for &w in &workloads {
            for &n in &shown {
                let pts: Vec<(f64, f64)> = runs
                    .iter()
                    .filter(|r| r.workload == w && r.npcs == n)
                    .map(|r| (r.threads as f64, r.ticks_per_sec))
                    .collect();
                if !pts.is_empty() {
                    by_threads.push((format!("{}, {} NPCs", w.name(), npc_label(n as f64)), pts));
                }
            }
        }
        linear_x(&out.join("ticks_per_sec_vs_threads.png"), "Ticks per second against threads", &by_threads)?;

        // Memory per NPC, on the largest thread count of each workload.
        let memory: Vec<Series> = workloads
            .iter()
            .map(|&w| {
                let t = runs.iter().filter(|r| r.workload == w).map(|r| r.threads).max().unwrap_or(1);
                let pts = runs
                    .iter()
                    .filter(|r| r.workload == w && r.threads == t)
                    .map(|r| (r.npcs as f64, r.bytes_per_npc));
                (format!("{}, {}", w.name(), threads_label(t)), pts.collect())
            })
            .collect();
        log_x(&out.join("bytes_per_npc.png"), "Memory per NPC (RSS growth / NPCs)", &memory)
    }

    /// An axis: its description, how its tick labels read, and how many of them at most.
    struct Axis<'a> {
        desc: &'a str,
        label: &'a dyn Fn(&f64) -> String,
        ticks: usize,
    }

    fn log_log(path: &Path, title: &str, x: &str, y: &str, series: &[Series]) -> Result<()> {
        let ((x0, x1), (y0, y1)) = (range(series, |p| p.0, true), range(series, |p| p.1, true));
        let (xa, ya) = (
            Axis { desc: x, label: &|v| npc_label(*v), ticks: 10 },
            Axis { desc: y, label: &|v| number(*v), ticks: 10 },
        );
        draw(path, title, (x0..x1).log_scale(), (y0..y1).log_scale(), &xa, &ya, series)
    }

    /// Linear thread counts against a log axis of ticks per second (the workloads span four
    /// orders of magnitude).
    fn linear_x(path: &Path, title: &str, series: &[Series]) -> Result<()> {
        let ((x0, x1), (y0, y1)) = (range(series, |p| p.0, false), range(series, |p| p.1, true));
        // Whole thread counts only.
        let whole = |v: &f64| if (v - v.round()).abs() < 1e-6 { format!("{v:.0}") } else { String::new() };
        let xa = Axis { desc: "worker threads", label: &whole, ticks: (x1 - x0).ceil() as usize + 1 };
        let ya = Axis { desc: "ticks per second", label: &|v| number(*v), ticks: 10 };
        draw(path, title, x0..x1, (y0..y1).log_scale(), &xa, &ya, series)
    }

    fn log_x(path: &Path, title: &str, series: &[Series]) -> Result<()> {
        let ((x0, x1), (_, y1)) = (range(series, |p| p.0, true), range(series, |p| p.1, false));
        let xa = Axis { desc: "NPCs", label: &|v| npc_label(*v), ticks: 10 };
        let ya = Axis { desc: "bytes per NPC", label: &|v| number(*v), ticks: 10 };
        draw(path, title, (x0..x1).log_scale(), 0.0..y1, &xa, &ya, series)
    }

    /// One chart: title, axes, a line with dots per series, and the legend.
    fn draw<X, Y>(
        path: &Path,
        title: &str,
        x: X,
        y: Y,
        xa: &Axis<'_>,
        ya: &Axis<'_>,
        series: &[Series],
    ) -> Result<()>
    where
        X: AsRangedCoord<Value = f64>,
        Y: AsRangedCoord<Value = f64>,
        X::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
        Y::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
    {
        let root = canvas(path)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 26))
            .margin(20)
            .x_label_area_size(50)
            .y_label_area_size(80)
            .build_cartesian_2d(x, y)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc(xa.desc)
            .y_desc(ya.desc)
            .x_labels(xa.ticks)
            .y_labels(ya.ticks)
            .x_label_formatter(xa.label)
            .y_label_formatter(ya.label)
            .label_style(("sans-serif", 15))
            .draw()
            .map_err(plot_err)?;
        lines(&mut chart, series)?;
        root.present().map_err(plot_err)
    }

    fn canvas(path: &Path) -> Result<DrawingArea<BitMapBackend<'_>, Shift>> {
        let root = BitMapBackend::new(path, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        Ok(root)
    }

    /// Draws each series as a line with dots, and the legend.
    fn lines<'a, DB, X, Y>(
        chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
        series: &[Series],
    ) -> Result<()>
    where
        DB: DrawingBackend + 'a,
        X: Ranged<ValueType = f64>,
        Y: Ranged<ValueType = f64>,
    {
        for (i, (label, pts)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
                .map_err(plot_err)?
                .label(label.as_str())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], color.stroke_width(3)));
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled()))).map_err(plot_err)?;
        }
        chart
            .configure_series_labels()
            .label_font(("sans-serif", 15))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(plot_err)
    }

    /// The span of one coordinate over all series, padded; for a log axis, kept positive.
    fn range(series: &[Series], f: impl Fn(&(f64, f64)) -> f64, log: bool) -> (f64, f64) {
        let vals =
            series.iter().flat_map(|s| s.1.iter().map(&f)).filter(|v| v.is_finite() && (!log || *v > 0.0));
        let (lo, hi) = vals.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
        if lo > hi {
            return (1.0, 10.0);
        }
        if log { (lo / 1.5, hi * 1.5) } else { (lo - 0.5, hi * 1.1 + 0.5) }
    }

    /// `1 thread`, `2 threads`, …
    pub(super) fn threads_label(t: usize) -> String {
        if t == 1 { "1 thread".to_string() } else { format!("{t} threads") }
    }

    /// `10k`, `1M`, …
    pub(super) fn npc_label(v: f64) -> String {
        if v >= 1e6 {
            format!("{}M", trim(v / 1e6))
        } else if v >= 1e3 {
            format!("{}k", trim(v / 1e3))
        } else {
            trim(v)
        }
    }

    /// A tick label with as many decimals as its size needs.
    fn number(v: f64) -> String {
        match v.abs() {
            a if a >= 100.0 || a == 0.0 => format!("{v:.0}"),
            a if a >= 1.0 => format!("{v:.1}"),
            a if a >= 0.01 => format!("{v:.3}"),
            _ => format!("{v:.1e}"),
        }
    }

    fn trim(v: f64) -> String {
        let s = format!("{v:.1}");
        s.strip_suffix(".0").map_or(s.clone(), str::to_string)
    }

    fn plot_err(e: impl std::fmt::Display) -> anyhow::Error {
        anyhow!("drawing a chart failed: {e}")
    }
}
