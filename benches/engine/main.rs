//! Engine benchmarks: the tick at 10k / 100k / 1M NPCs, spawning 1M, snapshot save and load.
//!
//! `cargo bench -p terrarium-benches --bench engine`; see `benches/README.md` for baselines.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use terrarium::engine::{Engine, EngineConfig};
use terrarium_benches::{engine, label, populated, specs};

fn tick(c: &mut Criterion) {
    let mut g = c.benchmark_group("engine/tick");
    for n in [10_000, 100_000, 1_000_000] {
        let mut e = populated(n, 2);
        g.bench_function(format!("movement/{}", label(n)), |b| b.iter(|| black_box(e.tick())));
    }
    g.finish();
}

fn spawn(c: &mut Criterion) {
    let mut g = c.benchmark_group("engine/spawn");
    g.sample_size(10).measurement_time(Duration::from_secs(15));
    g.bench_function("batch/1m", |b| {
        b.iter_batched(
            || engine(2),
            |mut e| black_box(e.spawn_batch(specs(1_000_000, 7)).len()),
            BatchSize::PerIteration,
        );
    });
    g.finish();
}

fn snapshot(c: &mut Criterion) {
    let mut g = c.benchmark_group("engine/snapshot");
    g.sample_size(10).measurement_time(Duration::from_secs(15));
    let mut e = populated(1_000_000, 2);
    let mut bytes = Vec::new();
    e.save_snapshot(&mut bytes).expect("save");
    g.bench_function("save/1m", |b| {
        let mut out = Vec::with_capacity(bytes.len());
        b.iter(|| {
            out.clear();
            black_box(e.save_snapshot(&mut out).expect("save"))
        });
    });
    g.bench_function("load/1m", |b| {
        b.iter(|| {
            let cfg = EngineConfig { threads: 2, ..EngineConfig::default() };
            black_box(
                Engine::builder(cfg).build_from_snapshot(&mut bytes.as_slice()).expect("load").npc_count(),
            )
        });
    });
    g.finish();
}

criterion_group!(benches, tick, spawn, snapshot);
criterion_main!(benches);
