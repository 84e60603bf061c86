//! Systems benchmarks. Group `systems/steering`: the spatial grid (rebuild, radius query) and
//! one flocking step, faithful (one thread) and parallel (two threads). Group
//! `systems/batching`: the 1M-NPC tick with and without position batching, the event batcher
//! (dedup and compression) and metric aggregation.
//!
//! `cargo bench -p terrarium-benches --bench systems`; see `benches/README.md` for baselines.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use terrarium::engine::rng::StreamRng;
use terrarium::engine::{NpcId, ParPool};
use terrarium::persistence::EntityKind;
use terrarium::systems::batching::{BatcherStats, DomainEvent, EventBatcher, Metrics, Subject, metric_names};
use terrarium::systems::steering::{Boid, Flock, FlockParams, Grid, Space};
use terrarium_benches::{RecycleSink, label, populated, populated_with_batching};

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

fn batching_tick(c: &mut Criterion) {
    let mut g = c.benchmark_group("systems/batching");
    g.sample_size(30).measurement_time(Duration::from_secs(10));
    for n in [100_000, 1_000_000] {
        let mut e = populated(n, 2);
        g.bench_function(format!("tick_movement_only/{}", label(n)), |b| b.iter(|| black_box(e.tick())));
        drop(e);
        let sink = Arc::new(RecycleSink::default());
        let mut e = populated_with_batching(n, 2, sink.clone());
        let before = sink.batches();
        g.bench_function(format!("tick_with_position_batching/{}", label(n)), |b| {
            b.iter(|| black_box(e.tick()));
        });
        assert!(sink.batches() > before, "the position flush ran every tick");
    }
    g.finish();
}

fn batching_events(c: &mut Criterion) {
    let mut g = c.benchmark_group("systems/batching");
    let small = DomainEvent::TaskCompleted { task: "mine".into() };
    let big = DomainEvent::TaskFailed { task: "haul".into(), reason: "path blocked ".repeat(200) };
    g.bench_function("events_dedup/10k", |b| {
        b.iter(|| {
            let (mut batcher, mut stats) = (EventBatcher::new(1, 1000, 1024), BatcherStats::default());
            // Every event twice within the window: half are folded.
            for i in 0..10_000u64 {
                let subject = Subject::Npc(NpcId(i / 2));
                batcher.push(i / 100, i / 2, subject, 0, &small, &mut stats);
            }
            black_box(batcher.take().len())
        });
    });
    g.bench_function("events_compress/1k", |b| {
        b.iter(|| {
            let (mut batcher, mut stats) = (EventBatcher::new(1, 0, 1024), BatcherStats::default());
            for i in 0..1000u64 {
                batcher.push(i, i * 50, Subject::Npc(NpcId(i)), 0, &big, &mut stats);
            }
            black_box(batcher.take().len())
        });
    });
    g.bench_function("metrics_aggregate/100k", |b| {
        b.iter(|| {
            let mut m = Metrics::default();
            for i in 0..100_000u64 {
                m.add(EntityKind::Npc, i % 1000, metric_names::BLOCKS_MINED, 1.0, i / 1000);
            }
            black_box(m.take(100).len())
        });
    });
    g.finish();
}

criterion_group!(benches, steering, batching_tick, batching_events);
criterion_main!(benches);
