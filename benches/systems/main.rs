//! Systems benchmarks: the 1M-NPC tick with and without position batching, the event batcher
//! (dedup and compression) and metric aggregation.
//!
//! `cargo bench -p terrarium-benches --bench systems`; see `benches/README.md` for baselines.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use terrarium::engine::NpcId;
use terrarium::persistence::EntityKind;
use terrarium::systems::batching::{BatcherStats, DomainEvent, EventBatcher, Metrics, Subject, metric_names};
use terrarium_benches::{RecycleSink, label, populated, populated_with_batching};

fn tick(c: &mut Criterion) {
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

fn events(c: &mut Criterion) {
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

criterion_group!(benches, tick, events);
criterion_main!(benches);
