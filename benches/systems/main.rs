//! Systems benchmarks: pathfinding (plain A* next to jump point search on the same Moving AI
//! grids and queries, and the agents' voxel search) and the mining round.
//!
//! `cargo bench -p terrarium-benches --bench systems`; see `benches/README.md` for baselines.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use terrarium::engine::ParPool;
use terrarium::engine::voxel::{BlockPos, VoxelWorld, WorldGen};
use terrarium::systems::mining::{AssignParams, assign};
use terrarium::systems::pathfinding::{
    Scenario, SearchLimits, Target, WalkRules, astar_baseline, find_path, jps_length, load_map,
    load_scenarios,
};
use terrarium_benches::{label, mining_round, movingai_maps};

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
    let pool = ParPool::new(2).expect("two worker threads");
    for (miners, deposits) in [(1_000, 1_000), (10_000, 100_000)] {
        let (index, crowd) = mining_round(miners, deposits, 42);
        g.throughput(Throughput::Elements(miners));
        g.bench_function(format!("assign/{}_x_{}", label(miners), label(deposits)), |b| {
            b.iter(|| black_box(assign(&pool, &index, &crowd, &AssignParams::default()).total_score));
        });
    }
    g.finish();
}

criterion_group!(benches, pathfinding, mining);
criterion_main!(benches);
