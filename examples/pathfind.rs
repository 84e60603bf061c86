//! Runs the scenarios of a Moving AI map with jump point search (or the plain A* baseline) and
//! reports how many paths are optimal and how fast they were found.
//!
//! ```text
//! cargo run --release --example pathfind -- --map assets/maps/arena2.map --scen assets/maps/arena2.map.scen --threads 2 --json
//! cargo run --release --example pathfind -- --map F.map --scen F.map.scen --method astar --every 10
//! cargo run --release --example pathfind -- --map F.map --scen F.map.scen --compare --every 10
//! ```
//!
//! With `--json`, the last line of stdout is one JSON object with the keys `map`, `scenarios`,
//! `optimal`, `scen_per_s`, `mean_us`, `p99_us` and `threads`. It exits 1 when any path is
//! not optimal (after the summary), and names the file in any parse error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clap::{Parser, ValueEnum};
use serde::Serialize;
use terrarium::engine::ParPool;
use terrarium::systems::par;
use terrarium::systems::pathfinding::{
    Grid2d, GridPath, Scenario, astar_baseline, check_scenarios, jps_path, load_map, load_scenarios,
};

mod common;

/// Largest difference from a scenario's optimal length that still counts as optimal.
const TOLERANCE: f64 = 1e-3;

/// Solves every scenario of a Moving AI map and checks the lengths against the optimal ones.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The map (`.map`, Moving AI octile format).
    #[arg(long)]
    map: PathBuf,
    /// Its scenarios (`.map.scen`).
    #[arg(long)]
    scen: PathBuf,
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Run every K-th scenario only, counting from the first.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    every: u64,
    /// The search to run.
    #[arg(long, value_enum, default_value_t = Method::Jps)]
    method: Method,
    /// Also run the plain A* baseline on the same scenarios and print the speed ratio.
    #[arg(long)]
    compare: bool,
    /// Print the summary as one JSON object on the last line of stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Method {
    /// Jump point search with bit-packed rows (this crate's method).
    Jps,
    /// Plain A* from the `pathfinding` crate (the baseline).
    Astar,
}

/// The JSON summary; the keys are a contract.
#[derive(Serialize)]
struct Summary {
    map: String,
    scenarios: usize,
    optimal: usize,
    scen_per_s: f64,
    mean_us: f64,
    p99_us: f64,
    threads: usize,
}

fn main() -> ExitCode {
    common::main_with::<Args>("pathfind", run)
}

fn run(args: &Args) -> Result<()> {
    ensure!(args.threads >= 1, "--threads must be at least 1");
    let grid = load_map(&args.map)?;
    let all = load_scenarios(&args.scen)?;
    check_scenarios(&grid, &all)
        .with_context(|| format!("{} does not fit {}", args.scen.display(), args.map.display()))?;
    let step = usize::try_from(args.every).unwrap_or(usize::MAX);
    let scenarios: Vec<Scenario> = all.into_iter().step_by(step).collect();
    let pool = ParPool::new(args.threads).context("cannot start the worker threads")?;
    let name =
        args.map.file_name().map_or_else(|| args.map.display().to_string(), |n| n.to_string_lossy().into());

    let summary = measure(&pool, &grid, &scenarios, args.method, &name);
    println!(
        "{}: {} scenarios, {} optimal ({:.2}%), {:.0} scenarios/s, mean {:.1} µs, p99 {:.1} µs, {} thread(s), {:?}",
        summary.map,
        summary.scenarios,
        summary.optimal,
        100.0 * summary.optimal as f64 / summary.scenarios.max(1) as f64,
        summary.scen_per_s,
        summary.mean_us,
        summary.p99_us,
        summary.threads,
        args.method,
    );
    if args.compare {
        let other = if args.method == Method::Jps { Method::Astar } else { Method::Jps };
        let b = measure(&pool, &grid, &scenarios, other, &name);
        println!(
            "{:?} on the same scenarios: {} optimal, {:.0} scenarios/s, mean {:.1} µs; {:?} is {:.1}x faster",
            other,
            b.optimal,
            b.scen_per_s,
            b.mean_us,
            args.method,
            summary.scen_per_s / b.scen_per_s.max(f64::MIN_POSITIVE),
        );
    }
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    }
    // Both searches are exact: a path that is not optimal (or missing) is a bug, not a figure.
    ensure!(
        summary.optimal == summary.scenarios,
        "{} of {} paths were not optimal",
        summary.scenarios - summary.optimal,
        summary.scenarios
    );
    Ok(())
}

/// Solves every scenario on `pool` and times each query.
fn measure(pool: &ParPool, grid: &Grid2d, scenarios: &[Scenario], method: Method, name: &str) -> Summary {
    let solve = |s: &Scenario| -> (Option<GridPath>, Duration) {
        let t = Instant::now();
        let path = match method {
            Method::Jps => jps_path(grid, s.start, s.goal),
            Method::Astar => astar_baseline(grid, s.start, s.goal),
        };
        (path, t.elapsed())
    };
    let started = Instant::now();
    let results = par::map_with(pool, scenarios, || (), |(), s| solve(s));
    let wall = started.elapsed();
    let optimal = results
        .iter()
        .zip(scenarios)
        .filter(|((p, _), s)| p.as_ref().is_some_and(|p| (p.length - s.optimal).abs() <= TOLERANCE))
        .count();
    let mut us: Vec<f64> = results.iter().map(|(_, d)| d.as_secs_f64() * 1e6).collect();
    us.sort_by(f64::total_cmp);
    let p99 = us.get(((us.len() as f64 * 0.99).ceil() as usize).saturating_sub(1)).copied().unwrap_or(0.0);
    Summary {
        map: name.to_string(),
        scenarios: scenarios.len(),
        optimal,
        scen_per_s: if wall.is_zero() { 0.0 } else { scenarios.len() as f64 / wall.as_secs_f64() },
        mean_us: if us.is_empty() { 0.0 } else { us.iter().sum::<f64>() / us.len() as f64 },
        p99_us: p99,
        threads: pool.threads(),
    }
}
