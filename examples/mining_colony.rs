//! A colony of mining agents in a generated voxel world: they choose deposits, plan paths, dig,
//! mine and bring the ore back to depots. Prints what they achieved and how fast the world ticked.
//!
//! ```text
//! cargo run --release --example mining_colony -- --agents 10000 --ticks 2000 --seed 1 --threads 2 --json
//! ```
//!
//! With `--json`, the last line of stdout is one JSON object (keys listed in `Summary`).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use serde::Serialize;
use terrarium::engine::voxel::{Ore, VoxelWorld};
use terrarium::engine::{Engine, EngineConfig, TickSet};
use terrarium::systems::agents::{MiningStats, PathStats, spawn_colony};

mod common;
#[path = "common/progress.rs"]
mod progress;

/// Runs a mining colony and reports what it mined and how fast it ticked.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Mining agents to spawn.
    #[arg(long, default_value_t = 10_000)]
    agents: u64,
    /// Ticks to run.
    #[arg(long, default_value_t = 2_000)]
    ticks: u64,
    /// World seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Worker threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Ticks per simulated second.
    #[arg(long = "tick-hz", default_value_t = 20)]
    tick_hz: u32,
    /// No progress bar and no human summary.
    #[arg(long)]
    quiet: bool,
    /// Print the summary as one JSON object on the last line of stdout.
    #[arg(long)]
    json: bool,
}

/// The JSON summary. Keys are a contract: add, never rename.
#[derive(Serialize)]
struct Summary {
    agents: u64,
    ticks: u64,
    threads: usize,
    seed: u64,
    world_blocks: [i32; 3],
    depots: usize,
    deposits_at_start: usize,
    world_gen_ms: f64,
    ticks_per_sec: f64,
    tick_ms_p50: f64,
    tick_ms_p95: f64,
    tick_ms_p99: f64,
    tick_ms_max: f64,
    /// Items mined per ore kind.
    ore_mined: BTreeMap<&'static str, u64>,
    ore_mined_total: u64,
    /// Items handed in at depots per ore kind.
    ore_deposited: BTreeMap<&'static str, u64>,
    blocks_mined: u64,
    blocks_dug: u64,
    assigned: u64,
    failed_tasks: u64,
    paths_solved: u64,
    path_failures: u64,
    replans: u64,
    path_searches: u64,
    path_cache_hits: u64,
    path_deferred: u64,
    mean_expanded: f64,
    /// Mean wall-clock milliseconds per tick spent in each stage.
    stage_ms: BTreeMap<&'static str, f64>,
    world_hash: String,
}

fn main() -> ExitCode {
    common::main_with::<Args>("mining_colony", run)
}

fn run(args: &Args) -> Result<()> {
    let cfg = EngineConfig {
        seed: args.seed,
        threads: args.threads,
        tick_hz: args.tick_hz,
        ..EngineConfig::default()
    };
    let mut engine = Engine::builder(cfg)
        .add_plugin(terrarium::systems::core_plugin)
        .build()
        .context("cannot build the engine")?;
    let t = Instant::now();
    spawn_colony(&mut engine, args.agents, args.seed).context("cannot set up the colony")?;
    let world_gen_ms = ms(t.elapsed());
    let (world_blocks, depots) = {
        let w = engine.world().resource::<VoxelWorld>();
        (w.size(), w.depots().len())
    };

    let bar = if !args.quiet && std::io::stderr().is_terminal() {
        progress::progress_bar(args.ticks)
    } else {
        ProgressBar::hidden()
    };
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000_000, 3).context("histogram bounds")?;
    let mut deposits_at_start = 0;
    let started = Instant::now();
    for k in 0..args.ticks {
        let t = Instant::now();
        engine.tick();
        hist.saturating_record(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX).max(1));
        if k == 0 {
            deposits_at_start = engine.world().resource::<terrarium::systems::mining::DepositIndex>().len();
        }
        bar.inc(1);
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();

    let mining = engine.world().resource::<MiningStats>().clone();
    let paths = engine.world().resource::<PathStats>().clone();
    let per_ore = |v: [u64; Ore::COUNT]| Ore::ALL.iter().map(|o| (o.name(), v[o.index()])).collect();
    let timings = engine.stage_timings();
    let stage_ms = TickSet::ALL
        .iter()
        .map(|s| {
            (
                s.name(),
                if timings.ticks == 0 { 0.0 } else { ms(timings.total[s.index()]) / timings.ticks as f64 },
            )
        })
        .collect();
    let q = |p: f64| hist.value_at_quantile(p) as f64 / 1e6;
    let summary = Summary {
        agents: args.agents,
        ticks: args.ticks,
        threads: engine.threads(),
        seed: args.seed,
        world_blocks,
        depots,
        deposits_at_start,
        world_gen_ms,
        ticks_per_sec: if elapsed.is_zero() { 0.0 } else { args.ticks as f64 / elapsed.as_secs_f64() },
        tick_ms_p50: q(0.50),
        tick_ms_p95: q(0.95),
        tick_ms_p99: q(0.99),
        tick_ms_max: hist.max() as f64 / 1e6,
        ore_mined: per_ore(mining.ore_mined),
        ore_mined_total: mining.ore_mined.iter().sum(),
        ore_deposited: per_ore(mining.ore_deposited),
        blocks_mined: mining.blocks_mined,
        blocks_dug: mining.blocks_dug,
        assigned: mining.assigned,
        failed_tasks: mining.failed_tasks,
        paths_solved: paths.solved,
        path_failures: paths.failures,
        replans: paths.replans,
        path_searches: paths.searches,
        path_cache_hits: paths.cache_hits,
        path_deferred: paths.deferred,
        mean_expanded: if paths.searches == 0 { 0.0 } else { paths.expanded as f64 / paths.searches as f64 },
        stage_ms,
        world_hash: format!("{:016x}", engine.world_hash()),
    };
    if !args.quiet {
        print_human(&summary);
    }
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    }
    Ok(())
}

fn print_human(s: &Summary) {
    println!(
        "{} agents, {} ticks on {} threads (seed {}); world {:?} blocks, {} depots, {} deposits, generated in {:.0} ms",
        s.agents, s.ticks, s.threads, s.seed, s.world_blocks, s.depots, s.deposits_at_start, s.world_gen_ms
    );
    println!(
        "tick ms: p50 {:.3}  p95 {:.3}  p99 {:.3}  max {:.3}  ({:.1} ticks/s)",
        s.tick_ms_p50, s.tick_ms_p95, s.tick_ms_p99, s.tick_ms_max, s.ticks_per_sec
    );
    let ores: Vec<String> = s.ore_mined.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!(
        "mined {} items ({}) from {} blocks; {} items deposited; {} blocks dug on the way",
        s.ore_mined_total,
        ores.join(", "),
        s.blocks_mined,
        s.ore_deposited.values().sum::<u64>(),
        s.blocks_dug
    );
    println!(
        "paths: {} solved, {} failed, {} replans, {} searches ({:.0} cells each), {} cache hits, {} deferred; {} tasks failed",
        s.paths_solved,
        s.path_failures,
        s.replans,
        s.path_searches,
        s.mean_expanded,
        s.path_cache_hits,
        s.path_deferred,
        s.failed_tasks
    );
    let stages: Vec<String> = s.stage_ms.iter().map(|(k, v)| format!("{k} {v:.3}")).collect();
    println!("mean ms per stage: {}; world hash {}", stages.join(", "), s.world_hash);
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
