//! Storage throughput, in one run, against real servers:
//!
//! ```sh
//! eval "$(scripts/services.sh start)"
//! cargo run --release --features postgres,redis --example storage_bench -- \
//!     --database-url "$DATABASE_URL" --redis-url "$REDIS_URL" --rows 1000000 --json
//! ```
//!
//! Measures position rows per second written by: one INSERT per row (autocommit, on a sample),
//! multi-row VALUES (1000 rows per statement) and raw COPY BINARY (one statement, nothing else,
//! rows in arrival order; also printed with the rows sorted), all three into
//! `npc_positions_rows`, a table with the one-row-per-position layout `PgStore` had before its
//! position blocks (kept here as the baseline); `PgStore::write` (the batched path: history and
//! current positions in blocks of 64 ids + exactly-once bookkeeping, one transaction per call);
//! the production path (`production_*`: a `WriteBehind` over a default `StorageStack` on
//! PostgreSQL, fed a whole population every tick at 20 Hz the way the batcher feeds it: a
//! position batch only when the write-behind can take one); then the
//! current-state upsert (NPCs per second, insert and update passes), Redis pipelined writes
//! (keys per second) and L1 hits (ns per hit); it also prints how fast an open circuit breaker
//! refuses a call. Every PostgreSQL case starts from empty tables in a schema of its own,
//! dropped at the end. With `--json`, the last line of
//! stdout is one JSON object.

use std::pin::pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use serde::Serialize;
use terrarium::persistence::testing::{Fault, FaultyStore};
use terrarium::persistence::{
    BackendKind, BatchId, BatchSink, BreakerConfig, BreakerState, CircuitBreaker, Handoff, L1Cache, L1Config,
    MemoryStore, NpcRecord, PgStore, PositionRow, PostgresConfig, RedisCache, RedisConfig, Storage,
    StorageConfig, StorageError, StorageStack, WriteBatch, WriteBehind, WriteBehindConfig, WriteBehindHandle,
};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

mod common;

#[derive(Parser, Debug)]
#[command(about = "PostgreSQL / Redis / L1 storage throughput")]
struct Args {
    /// PostgreSQL URL (a schema `bench_…` is created in it and dropped afterwards).
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Redis URL (keys under `bench:<random>:`, deleted afterwards).
    #[arg(long, env = "REDIS_URL")]
    redis_url: String,
    /// Position rows written by the batched and raw COPY cases.
    #[arg(long, default_value_t = 1_000_000)]
    rows: usize,
    /// NPCs: rows are `npcs` positions per tick; also the size of the upsert case.
    #[arg(long, default_value_t = 100_000)]
    npcs: usize,
    /// Position rows per `WriteBatch` in the batched case (`engine.batching.positions.max_items`).
    #[arg(long, default_value_t = 100)]
    batch_rows: usize,
    /// Ticks of batches handed to one `PgStore::write` call in the batched case: the group
    /// commit of a write-behind with that many flushes queued. 1 = every position row also
    /// updates its NPC's current state; 10 = ten rows per NPC update.
    #[arg(long, default_value_t = 10)]
    group: usize,
    /// Rows in the one-INSERT-per-row sample.
    #[arg(long, default_value_t = 2_000)]
    naive_sample: usize,
    /// Rows in the multi-row VALUES sample.
    #[arg(long, default_value_t = 200_000)]
    values_sample: usize,
    /// NPCs in the production case (each tick moves all of them).
    #[arg(long, default_value_t = 1_000_000)]
    production_npcs: usize,
    /// Ticks (at 20 Hz, real time) the production case feeds before it drains.
    #[arg(long, default_value_t = 200)]
    production_ticks: u64,
    /// Run only the production case (the other keys of `--json` are then 0).
    #[arg(long)]
    production_only: bool,
    /// Keys in the Redis case.
    #[arg(long, default_value_t = 200_000)]
    redis_keys: usize,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    json: bool,
}

/// The `--json` line. Keys are a contract.
#[derive(Serialize, Debug, Default)]
struct Figures {
    naive_rows_per_s: f64,
    values_rows_per_s: f64,
    batched_rows_per_s: f64,
    copy_rows_per_s: f64,
    upsert_rows_per_s: f64,
    redis_keys_per_s: f64,
    l1_hit_ns: f64,
    /// Positions persisted per second through WriteBehind → StorageStack → PgStore (drain
    /// included).
    production_rows_per_s: f64,
    /// Storage lag over the production case's ticks, simulated ms (as `headless` samples it).
    production_lag_ms_p99: f64,
    /// Milliseconds to store the production case's new world (every NPC's registry row and
    /// first position) before its first tick; not counted in `production_rows_per_s`.
    production_new_world_ms: f64,
}

fn main() -> ExitCode {
    common::main_with("storage_bench", bench)
}

fn bench(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.npcs > 0 && args.rows >= args.npcs, "--rows must be at least --npcs (> 0)");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let figures = rt.block_on(run(args))?;
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    eprintln!(
        "batched / copy = {:.0}%, batched / naive = {:.0}x",
        100.0 * ratio(figures.batched_rows_per_s, figures.copy_rows_per_s),
        ratio(figures.batched_rows_per_s, figures.naive_rows_per_s)
    );
    if args.json {
        println!("{}", serde_json::to_string(&figures)?);
    }
    Ok(())
}

async fn run(args: &Args) -> anyhow::Result<Figures> {
    let schema = format!("bench_{:016x}", fastrand::u64(..));
    let cfg = PostgresConfig {
        url: args.database_url.clone(),
        schema: schema.clone(),
        statement_timeout_ms: 0,
        ..PostgresConfig::default()
    };
    let store = PgStore::connect(&cfg).await.context("connecting to PostgreSQL")?;
    let (sql, conn) = tokio_postgres::connect(&args.database_url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    sql.batch_execute(&format!("SET search_path TO {schema}")).await?;
    let mut result =
        if args.production_only { Ok(Figures::default()) } else { measure(args, &store, &sql).await };
    store.drop_schema().await.context("dropping the bench schema")?;
    if let Ok(f) = &mut result {
        let schema = format!("bench_{:016x}", fastrand::u64(..));
        let cfg = PostgresConfig { url: args.database_url.clone(), schema, ..PostgresConfig::default() };
        let (rate, lag, spawn_ms) = production(args, &cfg).await?;
        (f.production_rows_per_s, f.production_lag_ms_p99, f.production_new_world_ms) = (rate, lag, spawn_ms);
    }
    result
}

async fn measure(args: &Args, store: &PgStore, sql: &tokio_postgres::Client) -> anyhow::Result<Figures> {
    let mut f = Figures::default();
    let ticks = args.rows / args.npcs;
    let rows = ticks * args.npcs;
    let positions = |tick: usize| -> Vec<PositionRow> {
        (1..=args.npcs as u64)
            .map(|id| PositionRow {
                npc_id: id,
                tick: tick as u64,
                x: id as f32 + tick as f32,
                y: 64.0,
                z: 0.5,
            })
            .collect()
    };

    // The current-state upsert first: the batched case moves these NPCs.
    let npcs: Vec<NpcRecord> = (1..=args.npcs as u64).map(npc).collect();
    let t = Instant::now();
    store
        .write(&[WriteBatch { id: BatchId { run: 1, seq: 1 }, npcs: npcs.clone(), ..Default::default() }])
        .await?;
    let insert = per_s(args.npcs, t.elapsed());
    let changed: Vec<NpcRecord> =
        npcs.into_iter().map(|r| NpcRecord { status: "working".into(), ..r }).collect();
    let t = Instant::now();
    store
        .write(&[WriteBatch { id: BatchId { run: 1, seq: 2 }, npcs: changed, ..Default::default() }])
        .await?;
    let update = per_s(args.npcs, t.elapsed());
    f.upsert_rows_per_s = insert.min(update);
    report("upsert (insert pass)", args.npcs, insert, "NPCs");
    report("upsert (update pass)", args.npcs, update, "NPCs");

    // The row layout of the baselines (PgStore's before V3): one row per position.
    sql.batch_execute(
        "CREATE TABLE npc_positions_rows (npc_id bigint NOT NULL, tick bigint NOT NULL, x real NOT NULL, \
         y real NOT NULL, z real NOT NULL, recorded_at timestamptz NOT NULL DEFAULT now()); \
         CREATE INDEX ON npc_positions_rows (npc_id, tick); \
         CREATE INDEX ON npc_positions_rows USING brin (recorded_at)",
    )
    .await?;
    // One INSERT per row, each its own transaction.
    sql.batch_execute("TRUNCATE npc_positions_rows").await?;
    let one = sql
        .prepare("INSERT INTO npc_positions_rows (npc_id, tick, x, y, z) VALUES ($1, $2, $3, $4, $5)")
        .await?;
    let sample = positions(0);
    let n = args.naive_sample.min(sample.len());
    let t = Instant::now();
    for p in &sample[..n] {
        sql.execute(&one, &[&(p.npc_id as i64), &(p.tick as i64), &p.x, &p.y, &p.z]).await?;
    }
    f.naive_rows_per_s = per_s(n, t.elapsed());
    report("one INSERT per row", n, f.naive_rows_per_s, "rows");

    // Multi-row VALUES, 1000 rows per statement, each statement its own transaction.
    sql.batch_execute("TRUNCATE npc_positions_rows").await?;
    let n = args.values_sample.min(rows);
    let t = Instant::now();
    let mut done = 0;
    while done < n {
        let tick = done / args.npcs;
        let chunk: Vec<PositionRow> =
            positions(tick).into_iter().skip(done % args.npcs).take(1000.min(n - done)).collect();
        let ids: Vec<i64> = chunk.iter().map(|p| p.npc_id as i64).collect();
        let tick = tick as i64;
        let mut text = String::from("INSERT INTO npc_positions_rows (npc_id, tick, x, y, z) VALUES ");
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(chunk.len() * 5);
        for (i, p) in chunk.iter().enumerate() {
            let b = i * 5;
            text += &format!(
                "{}(${}, ${}, ${}, ${}, ${})",
                if i > 0 { "," } else { "" },
                b + 1,
                b + 2,
                b + 3,
                b + 4,
                b + 5
            );
            params.extend([&ids[i] as &(dyn ToSql + Sync), &tick, &p.x, &p.y, &p.z]);
        }
        sql.execute(text.as_str(), &params).await?;
        done += chunk.len();
    }
    f.values_rows_per_s = per_s(n, t.elapsed());
    report("multi-row VALUES", n, f.values_rows_per_s, "rows");

    // The batched path: PgStore::write, `group` ticks of `batch_rows`-row batches per call.
    sql.batch_execute("TRUNCATE position_history, position_blocks").await?;
    let mut seq = 0;
    let batches: Vec<Vec<WriteBatch>> = (0..ticks)
        .map(|tick| {
            positions(tick + 10)
                .chunks(args.batch_rows.max(1))
                .map(|rows| {
                    seq += 1;
                    WriteBatch {
                        id: BatchId { run: 2, seq },
                        tick: tick as u64 + 10,
                        positions: rows.to_vec(),
                        ..Default::default()
                    }
                })
                .collect()
        })
        .collect();
    let groups: Vec<Vec<WriteBatch>> =
        batches.chunks(args.group.max(1)).map(|ticks| ticks.iter().flatten().cloned().collect()).collect();
    drop(batches);
    let t = Instant::now();
    for group in &groups {
        store.write(group).await?;
    }
    f.batched_rows_per_s = per_s(rows, t.elapsed());
    let what = format!("PgStore::write ({} ticks per call)", args.group);
    report(&what, rows, f.batched_rows_per_s, "rows");
    drop(groups);
    let landed = store.row_counts().await?.positions as usize;
    anyhow::ensure!(landed == rows, "batched case stored {landed} rows, not {rows}");

    // Raw COPY BINARY: one statement, nothing else, rows in arrival order (tick by tick).
    let mut all: Vec<PositionRow> = (0..ticks).flat_map(|tick| positions(tick + 10)).collect();
    f.copy_rows_per_s = raw_copy(sql, &all).await?;
    report("raw COPY BINARY", rows, f.copy_rows_per_s, "rows");
    // The same, sorted by (npc_id, tick) (printed only).
    all.sort_unstable_by_key(|p| (p.npc_id, p.tick));
    let sorted = raw_copy(sql, &all).await?;
    report("raw COPY BINARY, rows sorted", rows, sorted, "rows");
    drop(all);

    f.redis_keys_per_s = redis_writes(args).await?;
    f.l1_hit_ns = l1_hits().await?;
    open_breaker_rejects().await?;
    Ok(f)
}

/// The production path: a `WriteBehind` with default settings over a default `StorageStack`
/// on PostgreSQL (schema of `cfg`, dropped at the end), fed as `headless` feeds it: the new
/// world (registry rows and first positions of every NPC) stored whole before the first tick,
/// then every tick (20 Hz, real time) every NPC moves, and a position batch covering all of
/// them is handed over whenever the write-behind can take one. Returns (positions persisted per
/// second after the new world, drain included; p99 of the storage lag sampled every tick,
/// simulated ms; ms to store the new world).
async fn production(args: &Args, cfg: &PostgresConfig) -> anyhow::Result<(f64, f64, f64)> {
    let storage =
        StorageConfig { backend: BackendKind::Postgres, postgres: cfg.clone(), ..StorageConfig::default() };
    let stack = Arc::new(StorageStack::build(&storage).await.context("building the storage stack")?);
    let wb = WriteBehind::start_on(
        &tokio::runtime::Handle::current(),
        Arc::clone(&stack),
        WriteBehindConfig::default(),
    )?;
    let sink = wb.handle();
    let n = args.production_npcs as u64;
    let columns = |sink: &WriteBehindHandle, tick: u64| {
        let mut c = sink.reuse_columns().unwrap_or_default();
        c.tick = tick;
        c.ids.clear();
        c.xyz.clear();
        c.ids.extend(1..=n);
        c.xyz.extend((1..=n).map(|id| [id as f32 * 0.01 + tick as f32, 64.0, 0.5]));
        c
    };
    // The new world is stored whole before its first tick, as `StoragePipeline::
    // checkpoint_new_world` does for `headless` and `game_server`: timed on its own (the start-up
    // pays it), not part of the steady-state rate.
    let spawn = WriteBatch { tick: 1, npcs: (1..=n).map(npc).collect(), ..WriteBatch::default() };
    let spawn_start = Instant::now();
    sink.submit(Handoff { batch: spawn, positions: columns(&sink, 1), covers_all_positions: true })?;
    wb.flush_async(Duration::from_secs(600)).await.context("storing the new world")?;
    let spawn_ms = spawn_start.elapsed().as_secs_f64() * 1e3;
    let spawned = wb.stats().position_rows_written;
    eprintln!("production: the new world ({n} NPCs) stored in {spawn_ms:.0} ms before the first tick");
    let mut last_cut = 1u64;
    let mut lag = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 86_400_000, 3)?;
    let dt = Duration::from_millis(50);
    let start = tokio::time::Instant::now();
    for tick in 2..=args.production_ticks.max(2) {
        tokio::time::sleep_until(start + dt * u32::try_from(tick - 1).unwrap_or(u32::MAX)).await;
        if sink.wants_positions() {
            sink.submit(Handoff {
                batch: WriteBatch { tick, ..WriteBatch::default() },
                positions: columns(&sink, tick),
                covers_all_positions: true,
            })?;
            last_cut = tick;
        }
        // As the batcher computes it: what the store holds, but not past the last cut (every
        // NPC has moved since).
        let h = sink.health();
        let stored = if h.unsettled_batches == 0 { tick } else { h.committed_tick.unwrap_or(0) };
        lag.saturating_record((tick - stored.min(last_cut)) * 50);
    }
    let report = wb.shutdown_async(Duration::from_secs(600)).await?;
    let elapsed = start.elapsed();
    let s = report.stats;
    anyhow::ensure!(s.writes_dropped == 0 && report.left_in_outbox == 0, "production case lost rows: {s:?}");
    let ticked = s.position_rows_written.saturating_sub(spawned);
    let rate = per_s(usize::try_from(ticked).unwrap_or(usize::MAX), elapsed);
    report_line(&format!("production: WriteBehind → StorageStack, {n} NPCs at 20 Hz"), ticked, rate);
    eprintln!(
        "production: {} store calls, {} positions coalesced, lag p50 {} ms, p99 {} ms, max {} ms",
        s.store_calls,
        s.rows_coalesced,
        lag.value_at_quantile(0.5),
        lag.value_at_quantile(0.99),
        lag.max()
    );
    if let Some(pg) = stack.postgres() {
        pg.drop_schema().await.context("dropping the production schema")?;
    }
    Ok((rate, lag.value_at_quantile(0.99) as f64, spawn_ms))
}

fn report_line(what: &str, n: u64, rate: f64) {
    report(what, usize::try_from(n).unwrap_or(usize::MAX), rate, "positions");
}

/// An open circuit breaker refusing calls (printed only; not a JSON key).
async fn open_breaker_rejects() -> anyhow::Result<()> {
    let cfg = BreakerConfig { failure_threshold: 1, ..BreakerConfig::default() };
    let faulty = FaultyStore::new(MemoryStore::default());
    faulty.inject_always(Fault::Unavailable);
    let breaker = CircuitBreaker::new(faulty, cfg);
    anyhow::ensure!(breaker.get_npc(1).await.is_err() && breaker.read_metrics().state == BreakerState::Open);
    let n = 1_000_000u64;
    let t = Instant::now();
    for i in 0..n {
        anyhow::ensure!(matches!(breaker.get_npc(i).await, Err(StorageError::CircuitOpen { .. })));
    }
    let ns = t.elapsed().as_nanos() as f64 / n as f64;
    eprintln!("{:<40} {ns:>12.0} ns per call", "open breaker rejects");
    Ok(())
}

/// One COPY BINARY of `rows` into an emptied `npc_positions_rows`; rows per second.
async fn raw_copy(sql: &tokio_postgres::Client, rows: &[PositionRow]) -> anyhow::Result<f64> {
    sql.batch_execute("TRUNCATE npc_positions_rows").await?;
    let t = Instant::now();
    let sink =
        sql.copy_in("COPY npc_positions_rows (npc_id, tick, x, y, z) FROM STDIN (FORMAT binary)").await?;
    let types = [Type::INT8, Type::INT8, Type::FLOAT4, Type::FLOAT4, Type::FLOAT4];
    let mut writer = pin!(BinaryCopyInWriter::new(sink, &types));
    for p in rows {
        writer.as_mut().write(&[&(p.npc_id as i64), &(p.tick as i64), &p.x, &p.y, &p.z]).await?;
    }
    writer.finish().await?;
    Ok(per_s(rows.len(), t.elapsed()))
}

/// Redis pipelined writes: `RedisCache::write` of one tick of positions, which SETs the hot tier
/// key of every NPC in pipelines.
async fn redis_writes(args: &Args) -> anyhow::Result<f64> {
    let prefix = format!("bench:{:016x}:", fastrand::u64(..));
    let cfg = RedisConfig {
        url: args.redis_url.clone(),
        key_prefix: prefix,
        warm_on_start: 0,
        ..Default::default()
    };
    let cache = RedisCache::connect(MemoryStore::default(), &cfg).await?;
    let n = args.redis_keys;
    let batch = WriteBatch {
        id: BatchId { run: 3, seq: 1 },
        positions: (1..=n as u64)
            .map(|id| PositionRow { npc_id: id, tick: 1, x: 1.0, y: 2.0, z: 3.0 })
            .collect(),
        ..Default::default()
    };
    let t = Instant::now();
    cache.write(std::slice::from_ref(&batch)).await?;
    let rate = per_s(n, t.elapsed());
    let m = cache.metrics();
    anyhow::ensure!(m.errors == 0, "Redis errors during the bench: {m:?}");
    report("Redis pipelined writes", n, rate, "keys");
    cache.clear_prefix().await?;
    Ok(rate)
}

/// L1 hits: `get_npc` of 1 000 cached NPCs, a million times.
async fn l1_hits() -> anyhow::Result<f64> {
    let l1 = L1Cache::new(MemoryStore::default(), L1Config::default());
    let npcs = (1..=1000).map(npc).collect();
    l1.write(&[WriteBatch { id: BatchId { run: 4, seq: 1 }, npcs, ..Default::default() }]).await?;
    for id in 1..=1000 {
        l1.get_npc(id).await?;
    }
    let n = 1_000_000u64;
    let t = Instant::now();
    let mut found = 0;
    for i in 0..n {
        found += usize::from(l1.get_npc(1 + i % 1000).await?.is_some());
    }
    let ns = t.elapsed().as_nanos() as f64 / n as f64;
    anyhow::ensure!(
        found as u64 == n && l1.metrics().tier.misses == 1000,
        "not all hits: {:?}",
        l1.metrics()
    );
    eprintln!("{:<40} {ns:>12.0} ns per hit", "L1 get_npc hit");
    Ok(ns)
}

fn npc(id: u64) -> NpcRecord {
    NpcRecord {
        id,
        role: "miner".into(),
        status: "idle".into(),
        swarm: (id % 64) as u32,
        agent: false,
        x: 0.0,
        y: 64.0,
        z: 0.0,
        health: 100,
        inventory: vec![(1, 10), (2, 3)],
        updated_tick: 1,
    }
}

fn per_s(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

fn report(what: &str, n: usize, rate: f64, unit: &str) {
    eprintln!("{what:<40} {rate:>12.0} {unit}/s   ({n} {unit})");
}
