//! Systems benchmarks.
//!
//! - `systems/steering`: the spatial grid (rebuild, radius query) and one flocking step,
//!   faithful (one thread) and parallel (two threads).
//! - `systems/batching`: the 1M-NPC tick with and without position batching, the event
//!   batcher (dedup and compression) and metric aggregation.
//! - `systems/pathfinding`: plain A* (the `pathfinding` crate) next to jump point search on the
//!   same Moving AI grids and queries, and the agents' voxel search (exact and as agents run it).
//! - `systems/mining`: the mining round (candidates, scores, assignment) at 1k miners × 1k
//!   deposits and 10k × 100k, on two threads.
//!
//! `cargo bench -p terrarium-benches --bench systems`; see `benches/README.md` for baselines.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use terrarium::engine::rng::StreamRng;
use terrarium::engine::voxel::{BlockPos, VoxelWorld, WorldGen};
use terrarium::engine::{NpcId, ParPool};
use terrarium::persistence::EntityKind;
use terrarium::systems::batching::{BatcherStats, DomainEvent, EventBatcher, Metrics, Subject, metric_names};
use terrarium::systems::mining::{AssignParams, assign};
use terrarium::systems::pathfinding::{
    Scenario, SearchLimits, Target, WalkRules, astar_baseline, find_path, jps_length, load_map,
    load_scenarios,
};
use terrarium::systems::steering::{Boid, Flock, FlockParams, Grid, Space};
use terrarium_benches::{
    RecycleSink, label, mining_round, movingai_maps, populated, populated_with_batching,
};

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

/// Scenarios per map in one iteration: every `len / SAMPLE`-th, the same for both searches.
const SAMPLE: usize = 40;

fn pathfinding(c: &mut Criterion) {
    let mut g = c.benchmark_group("systems/pathfinding");
    g.sample_size(10).measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    for map in movingai_maps() {
        let name = map.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let (Ok(grid), Ok(all)) = (load_map(&map), load_scenarios(format!("{}.scen", map.display()))) else {
            eprintln!("skipping {}: unreadable", map.display());
            continue;
        };
        let picked: Vec<Scenario> = all.iter().step_by((all.len() / SAMPLE).max(1)).cloned().collect();
        g.throughput(Throughput::Elements(picked.len() as u64));
        g.bench_function(format!("astar/{name}"), |b| {
            b.iter(|| picked.iter().filter_map(|s| astar_baseline(&grid, s.start, s.goal)).count());
        });
        g.bench_function(format!("jps/{name}"), |b| {
            b.iter(|| picked.iter().filter_map(|s| jps_length(&grid, s.start, s.goal)).count());
        });
    }
    // The agents' search: from the surface to buried ore, as miners do.
    let world = VoxelWorld::generate(WorldGen { seed: 5, size_chunks: [16, 3, 16], ..WorldGen::default() })
        .expect("valid world");
    let queries = voxel_queries(&world, 200);
    g.throughput(Throughput::Elements(queries.len() as u64));
    for (id, weight) in [("voxel_exact", 1.0), ("voxel_agents", 5.0)] {
        let limits = SearchLimits { weight, max_expanded: 6_000, ..SearchLimits::default() };
        g.bench_function(format!("{id}/256x48x256"), |b| {
            b.iter(|| {
                queries
                    .iter()
                    .filter(|(s, t)| {
                        find_path(&world, *s, Target::Reach(*t), &WalkRules::miner(2, 4.0), &limits)
                            .result
                            .is_ok()
                    })
                    .count()
            });
        });
    }
    g.finish();
}

/// `n` (surface cell, ore within 10 blocks) pairs.
fn voxel_queries(world: &VoxelWorld, n: usize) -> Vec<(BlockPos, BlockPos)> {
    let [sx, sy, sz] = world.size();
    let ores: Vec<BlockPos> = (0..sy)
        .flat_map(|y| (0..sz).flat_map(move |z| (0..sx).map(move |x| BlockPos::new(x, y, z))))
        .filter(|&p| world.get(p).ore().is_some())
        .collect();
    let mut out = Vec::with_capacity(n);
    for i in 0..ores.len() {
        let o = ores[(i * 7919) % ores.len()];
        let (x, z) = (
            (o.x + (i as i32 % 21) - 10).clamp(0, sx - 1),
            (o.z + (i as i32 * 7 % 21) - 10).clamp(0, sz - 1),
        );
        let Some(top) = world.surface_y(x, z) else { continue };
        let start = BlockPos::new(x, top + 1, z);
        if (start.y - o.y).abs() <= 10
            && world.get(start).is_open()
            && world.get(start.offset(0, -1, 0)).is_solid()
        {
            out.push((start, o));
        }
        if out.len() == n {
            break;
        }
    }
    out
}

fn mining(c: &mut Criterion) {
    let mut g = c.benchmark_group("systems/mining");
    g.sample_size(10).measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    let pool = pool(2);
    for (miners, deposits) in [(1_000, 1_000), (10_000, 100_000)] {
        let (index, crowd) = mining_round(miners, deposits, 42);
        g.throughput(Throughput::Elements(miners));
        g.bench_function(format!("assign/{}_x_{}", label(miners), label(deposits)), |b| {
            b.iter(|| black_box(assign(&pool, &index, &crowd, &AssignParams::default()).total_score));
        });
    }
    g.finish();
}

criterion_group!(benches, steering, batching_tick, batching_events, pathfinding, mining);
criterion_main!(benches);
