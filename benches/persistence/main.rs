//! Persistence benchmarks: the tick's side of the write-behind (handing a batch over), the
//! whole path into the in-memory store, and replaying an outbox file.
//!
//! `cargo bench -p terrarium-benches --bench persistence`; see `benches/README.md`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use terrarium_benches::label;
use terrarium_persistence::testing::FaultyStore;
use terrarium_persistence::{
    BatchSink, Handoff, MemoryStore, PositionColumns, Storage, WriteBatch, WriteBehind, WriteBehindConfig,
};

/// Position columns of `n` NPCs at `tick`.
fn columns(n: u64, tick: u64) -> PositionColumns {
    PositionColumns {
        tick,
        ids: (0..n).collect(),
        xyz: (0..n).map(|i| [i as f32, 0.0, tick as f32]).collect(),
    }
}

/// The next covering handoff of `n` rows: columns come back from the sink (as in the engine),
/// or are built once.
fn next_handoff(sink: &impl BatchSink, n: u64, tick: &mut u64) -> Handoff {
    *tick += 1;
    let mut cols = sink.reuse_columns().unwrap_or_else(|| columns(n, *tick));
    cols.tick = *tick;
    Handoff { positions: cols, covers_all_positions: true, ..Handoff::default() }
}

fn handoff(c: &mut Criterion) {
    let mut g = c.benchmark_group("persistence/write_behind");
    for n in [100, 1_000_000] {
        // The store never finishes a call, so the worker takes nothing more: what is measured
        // is the tick's cost alone (lock, supersede the waiting batch, push, notify).
        let store = Arc::new(FaultyStore::new(MemoryStore::default()));
        store.stall();
        let wb = WriteBehind::start(Arc::clone(&store), WriteBehindConfig::default()).expect("start");
        let sink = wb.handle();
        sink.submit(Handoff { positions: columns(n, 0), covers_all_positions: true, ..Handoff::default() })
            .expect("first");
        let mut tick = 1;
        g.bench_function(format!("handoff/batch_{}", label(n)), |b| {
            b.iter_batched(
                || next_handoff(&sink, n, &mut tick),
                |h| sink.submit(h).expect("accepted"),
                BatchSize::SmallInput,
            );
        });
        store.release();
        wb.shutdown(Duration::from_secs(60)).expect("shutdown");
    }
    for n in [1_000, 1_000_000] {
        let store = Arc::new(MemoryStore::default());
        let cfg = WriteBehindConfig { commit_interval_ms: 0, ..WriteBehindConfig::default() };
        let wb = WriteBehind::start(Arc::clone(&store), cfg).expect("start");
        let sink = wb.handle();
        let mut tick = 0;
        g.sample_size(20);
        g.bench_function(format!("memory/batch_{}", label(n)), |b| {
            b.iter_batched(
                || next_handoff(&sink, n, &mut tick),
                |h| {
                    sink.submit(h).expect("accepted");
                    wb.flush(Duration::from_secs(60)).expect("flushed");
                },
                BatchSize::SmallInput,
            );
        });
        wb.shutdown(Duration::from_secs(60)).expect("shutdown");
    }
    g.finish();
}

fn memory_store(c: &mut Criterion) {
    let mut g = c.benchmark_group("persistence/memory_store");
    g.sample_size(20);
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let store = MemoryStore::default();
    let mut seq = 0;
    let mut batch = WriteBatch::default();
    columns(1_000_000, 1).append_to(&mut batch.positions);
    g.bench_function("write/positions_1m", |b| {
        b.iter(|| {
            seq += 1;
            batch.id.seq = seq;
            rt.block_on(store.write(std::slice::from_ref(&batch))).expect("write");
        });
    });
    g.finish();
}

fn outbox(c: &mut Criterion) {
    let mut g = c.benchmark_group("persistence/outbox");
    g.sample_size(10);
    // An outbox of 100 batches of 1k rows, left by a run whose store was down.
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("outbox.bin");
    let down = Arc::new(FaultyStore::new(MemoryStore::default()));
    down.set_failing(true);
    let cfg = WriteBehindConfig { outbox_path: Some(path.clone()), ..WriteBehindConfig::default() };
    let wb = WriteBehind::start(Arc::clone(&down), cfg.clone()).expect("start");
    for t in 0..100 {
        wb.handle().submit(Handoff { positions: columns(1_000, t), ..Handoff::default() }).expect("accepted");
    }
    let report = wb.shutdown(Duration::from_secs(2)).expect("shutdown");
    assert_eq!(report.left_in_outbox, 100);
    let saved = std::fs::read(&path).expect("outbox written");
    g.bench_function("replay/100x1k", |b| {
        b.iter_batched(
            || std::fs::write(&path, &saved).expect("restore the outbox"),
            |()| {
                let store = Arc::new(MemoryStore::default());
                let wb = WriteBehind::start(Arc::clone(&store), cfg.clone()).expect("start");
                wb.flush(Duration::from_secs(60)).expect("replayed");
                black_box(store.stats().position_rows)
            },
            BatchSize::PerIteration,
        );
    });
    g.finish();
}

criterion_group!(benches, handoff, memory_store, outbox);
criterion_main!(benches);
