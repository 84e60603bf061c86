//! Systems benchmarks. Group `systems/steering`: the spatial grid (rebuild, radius query) and
//! one flocking step, faithful (one thread) and parallel (two threads).
//!
//! `cargo bench -p terrarium-benches --bench systems`; see `benches/README.md` for baselines.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use terrarium::engine::ParPool;
use terrarium::engine::rng::StreamRng;
use terrarium::systems::steering::{Boid, Flock, FlockParams, Grid, Space};
use terrarium_benches::label;

/// `n` boids in a periodic square of side `extent`, uniform positions and unit headings.
fn flock(n: u64, extent: f64) -> Flock {
    let mut r = StreamRng::new(42);
    let mut unit = move || f64::from(r.next_f32());
    let mut flock =
        Flock::new(FlockParams::default(), Space::periodic([extent, extent]).expect("valid extent"))
            .expect("benchmark parameters are valid");
    flock.load((0..n).map(|_| {
        let position = [extent * unit(), extent * unit()];
        let (x, y) = (unit() - 0.5, unit() - 0.5);
        let len = (x * x + y * y).sqrt().max(1e-9);
        Boid { position, velocity: [x / len, y / len] }
    }));
    flock
}

fn pool(threads: usize) -> ParPool {
    ParPool(Arc::new(rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("worker threads")))
}

fn steering(c: &mut Criterion) {
    let mut g = c.benchmark_group("systems/steering");
    // 10k points in 100 × 100 (the Flocking benchmark's dense case): about 78 within radius 5.
    let n = 10_000;
    let points: Vec<[f64; 2]> = flock(n, 100.0).boids().iter().map(|b| b.position).collect();
    let (xs, ys): (Vec<f64>, Vec<f64>) = points.iter().map(|p| (p[0], p[1])).unzip();
    let mut grid = Grid::new(Space::periodic([100.0, 100.0]).expect("valid extent"));
    g.bench_function(format!("grid_rebuild/{}", label(n)), |b| {
        b.iter(|| grid.rebuild(black_box(&xs), &ys, 5.0));
    });
    let mut out = Vec::with_capacity(256);
    let mut k = 0;
    g.bench_function(format!("grid_query/{}", label(n)), |b| {
        b.iter(|| {
            k = (k + 1) % points.len();
            out.clear();
            grid.within(points[k], 5.0, &mut out);
            black_box(out.len())
        });
    });
    // Flocks cluster as they run, so every step starts from the same state: 50 steps into a
    // run (mid-way through the benchmark's 100).
    let mut rng = StreamRng::new(7);
    let mut dense = flock(n, 100.0);
    (0..50).for_each(|_| dense.step_faithful(&mut rng));
    g.bench_function(format!("flocking_step/{}", label(n)), |b| {
        b.iter_batched(|| dense.clone(), |mut f| f.step_faithful(&mut rng), BatchSize::LargeInput);
    });
    // 100k boids at the benchmark's density (200 per 100 × 100).
    let (big, two) = (100_000, pool(2));
    let mut sparse = flock(big, 2236.0);
    (0..50).for_each(|_| sparse.step_parallel(&two));
    g.bench_function(format!("flocking_parallel_step/{}", label(big)), |b| {
        b.iter_batched(|| sparse.clone(), |mut f| f.step_parallel(&two), BatchSize::LargeInput);
    });
    g.finish();
}

criterion_group!(benches, steering);
criterion_main!(benches);
