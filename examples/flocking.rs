//! The agent-based-modelling "Flocking" benchmark, on Terrarium's flocking kernel.
//!
//! ```text
//! cargo run --release --example flocking -- --boids 200 --steps 100 --extent 100 --vision 5 \
//!     --separation 1 --speed 1 --cohere 0.03 --separate 0.015 --match 0.05 --seed 42 --json
//! ```
//!
//! Boids live in a periodic square of side `--extent` (f64). Each step, each boid with `N`
//! neighbours within `--vision` turns to normalise((v + cohesion + separation + alignment) / 2)
//! and moves `--speed` along it (see `terrarium::systems::steering::rule`). Start: positions
//! uniform in the square, headings uniform on the unit circle, both from `--seed`.
//!
//! `--mode faithful` (default) updates boids one at a time, in a new random order each step,
//! each seeing the others' current state, on one thread: the form other simulators implement,
//! so its time is the comparable figure. `--mode parallel` is double-buffered (every boid sees
//! the previous step) on `--threads` rayon workers, with the same result for any thread count;
//! its figures are labelled `parallel`.
//!
//! Prints the loop time (setup excluded) and a checksum of the final positions; with `--json`
//! the last line of stdout is one object with `boids`, `steps`, `mode`, `threads`, `loop_s` and
//! `checksum` (plus the other settings).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use serde::Serialize;
use terrarium::engine::ParPool;
use terrarium::systems::steering::{Boid, Flock, FlockParams, Space, benchmark_order};

mod common;

/// Runs the Flocking benchmark and reports the loop time.
#[derive(Parser, Debug)]
#[command(version, about, allow_negative_numbers = true)]
struct Args {
    /// Number of boids.
    #[arg(long, default_value_t = 200)]
    boids: u32,
    /// Steps to run.
    #[arg(long, default_value_t = 100)]
    steps: u32,
    /// Side of the periodic square.
    #[arg(long, default_value_t = 100.0)]
    extent: f64,
    /// Boids at distance ≤ vision are neighbours.
    #[arg(long, default_value_t = 5.0)]
    vision: f64,
    /// Neighbours closer than this push a boid away.
    #[arg(long, default_value_t = 1.0)]
    separation: f64,
    /// Distance moved per step.
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Weight of cohesion.
    #[arg(long, default_value_t = 0.03)]
    cohere: f64,
    /// Weight of separation.
    #[arg(long, default_value_t = 0.015)]
    separate: f64,
    /// Weight of alignment.
    #[arg(long = "match", default_value_t = 0.05)]
    align: f64,
    /// Seed of the start state and of the update order.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// How boids are updated.
    #[arg(long, value_enum, default_value_t = Mode::Faithful)]
    mode: Mode,
    /// Worker threads of `--mode parallel` (default: one per core). Faithful mode uses one.
    #[arg(long)]
    threads: Option<usize>,
    /// Run the loop this many times from the same start and report the median time.
    #[arg(long, default_value_t = 1)]
    repeat: u32,
    /// Print the summary as one JSON object on the last line of stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    /// One thread; boids one at a time in random order, seeing the current state.
    Faithful,
    /// Double-buffered, on rayon; the same result for any thread count.
    Parallel,
}

/// The JSON summary. Keys are a contract: add, never rename.
#[derive(Serialize)]
struct Summary {
    boids: u32,
    steps: u32,
    mode: Mode,
    threads: usize,
    /// Median wall-clock seconds of the simulation loop (setup excluded).
    loop_s: f64,
    /// Fastest loop of the repeats.
    loop_s_min: f64,
    repeat: u32,
    /// Hash of the final positions' bits, in boid order (16 hex digits).
    checksum: String,
    /// Sum of all final coordinates, for a rough comparison with other simulators.
    position_sum: f64,
    extent: f64,
    vision: f64,
    seed: u64,
}

fn main() -> ExitCode {
    common::main_with("flocking", run)
}

fn run(args: &Args) -> Result<()> {
    let params = FlockParams {
        vision: args.vision,
        separation: args.separation,
        speed: args.speed,
        cohere: args.cohere,
        separate: args.separate,
        align: args.align,
    };
    let space = Space::periodic([args.extent, args.extent]).context("--extent")?;
    let threads = match args.mode {
        Mode::Faithful => {
            if args.threads.is_some_and(|t| t != 1) {
                eprintln!("flocking: note: --mode faithful runs on one thread; --threads ignored");
            }
            1
        }
        Mode::Parallel => args
            .threads
            .filter(|&t| t > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)),
    };
    let pool = ParPool(Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .context("cannot start worker threads")?,
    ));
    let start = Boid::scattered(args.boids, args.extent, args.seed);
    let mut times = Vec::new();
    let mut result: Option<Flock> = None;
    for _ in 0..args.repeat.max(1) {
        let mut flock = Flock::new(params, space).context("flocking parameters")?;
        flock.load(start.iter().copied());
        let mut order = benchmark_order(args.seed);
        let t = Instant::now();
        for _ in 0..args.steps {
            match args.mode {
                Mode::Faithful => flock.step_faithful(&mut order),
                Mode::Parallel => flock.step_parallel(&pool),
            }
        }
        times.push(t.elapsed().as_secs_f64());
        if let Some(prev) = &result {
            anyhow::ensure!(
                prev.checksum() == flock.checksum(),
                "a repeat ended elsewhere: not deterministic"
            );
        }
        result = Some(flock);
    }
    let flock = result.expect("at least one repeat");
    times.sort_by(f64::total_cmp);
    let summary = Summary {
        boids: args.boids,
        steps: args.steps,
        mode: args.mode,
        threads,
        loop_s: times[times.len() / 2],
        loop_s_min: times[0],
        repeat: args.repeat.max(1),
        checksum: format!("{:016x}", flock.checksum()),
        position_sum: flock.boids().iter().map(|b| b.position[0] + b.position[1]).sum(),
        extent: args.extent,
        vision: args.vision,
        seed: args.seed,
    };
    let label = match args.mode {
        Mode::Faithful => "faithful, 1 thread".to_string(),
        Mode::Parallel => format!("parallel (double-buffered), {threads} threads"),
    };
    println!(
        "flocking: {} boids × {} steps, extent {}, vision {} [{label}]",
        summary.boids, summary.steps, summary.extent, summary.vision
    );
    println!(
        "loop {:.3} ms (median of {}, min {:.3} ms), {:.2} µs/step; checksum {} (position sum {:.6})",
        summary.loop_s * 1e3,
        summary.repeat,
        summary.loop_s_min * 1e3,
        summary.loop_s * 1e6 / f64::from(summary.steps.max(1)),
        summary.checksum,
        summary.position_sum
    );
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    }
    Ok(())
}
