//! Servers failing under load: PostgreSQL killed mid write stream, Redis killed and paused.
//!
//! Each test starts servers of its own with `scripts/services.sh` (a temporary directory, free
//! ports), so killing them never disturbs tests running in parallel. They run where the shared
//! services run (`TERRARIUM_TEST_PG_URL` / `TERRARIUM_TEST_REDIS_URL` set): same binaries.
#![cfg(all(feature = "postgres", feature = "redis"))]

mod common;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{batch, event, npc, position, service_url, unique_name};
use terrarium_persistence::testing::OwnServers;
use terrarium_persistence::{
    BackendKind, BatchSink, BreakerConfig, BreakerState, Handoff, L1Config, NpcFilter, Page, PostgresConfig,
    RedisConfig, RetentionConfig, RetryConfig, Storage, StorageConfig, StorageError, StorageStack,
    WriteBatch, WriteBehind, WriteBehindConfig,
};

/// Polls `done` every 20 ms until it holds, or panics after `limit`.
async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const ROWS_PER_BATCH: u64 = 50;

/// A batch per "tick": 50 positions and one event, all unique per (npc, tick).
fn tick_batch(seq: u64) -> WriteBatch {
    WriteBatch {
        positions: (1..=ROWS_PER_BATCH).map(|id| position(id, seq)).collect(),
        events: vec![event(seq, "tick", 1, 0, seq)],
        ..batch(42, seq)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_killed_mid_stream_loses_and_duplicates_nothing() {
    if service_url("TERRARIUM_TEST_PG_URL").is_none() {
        return;
    }
    let servers = OwnServers::new();
    servers.run("start-pg");
    let cfg = StorageConfig {
        backend: BackendKind::Postgres,
        postgres: PostgresConfig {
            url: servers.url("DATABASE_URL"),
            schema: unique_name(),
            min_size: 1,
            max_size: 4,
            connect_timeout_ms: 500,
            wait_timeout_ms: 1000,
            create_timeout_ms: 1000,
            ..Default::default()
        },
        retention: RetentionConfig { enabled: false, ..Default::default() },
        breaker: BreakerConfig {
            failure_threshold: 3,
            success_threshold: 2,
            call_timeout_ms: 2000,
            reset_timeout_ms: 300,
            ..Default::default()
        },
        retry: RetryConfig { max_attempts: 2, base_delay_ms: 10, max_delay_ms: 50 },
        ..Default::default()
    };
    let stack = Arc::new(StorageStack::build(&cfg).await.unwrap());
    stack
        .write(&[WriteBatch { npcs: (1..=ROWS_PER_BATCH).map(npc).collect(), ..batch(41, 1) }])
        .await
        .unwrap();

    // The game side: a batch every 5 ms into a queue, never waiting on storage.
    let queue: Arc<Mutex<VecDeque<WriteBatch>>> = Arc::default();
    let produced = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (queue, produced, stop) = (queue.clone(), produced.clone(), stop.clone());
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_millis(5));
            while !stop.load(Ordering::Acquire) {
                ticker.tick().await;
                let seq = produced.fetch_add(1, Ordering::AcqRel) + 1;
                queue.lock().unwrap().push_back(tick_batch(seq));
            }
        })
    };
    // The writer: a stand-in for the write-behind. It hands over everything queued (group
    // commit) and keeps the batches until a write succeeds.
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let written = Arc::new(AtomicU64::new(0));
    let produced_all = Arc::new(AtomicBool::new(false));
    let writer = {
        let (queue, stack, done, errors, written) =
            (queue.clone(), stack.clone(), produced_all.clone(), errors.clone(), written.clone());
        tokio::spawn(async move {
            loop {
                let group: Vec<WriteBatch> = queue.lock().unwrap().iter().take(200).cloned().collect();
                if group.is_empty() {
                    if done.load(Ordering::Acquire) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                match stack.write(&group).await {
                    Ok(()) => {
                        queue.lock().unwrap().drain(..group.len());
                        written.fetch_add(group.len() as u64, Ordering::AcqRel);
                    }
                    Err(e) => {
                        let pause = match &e {
                            StorageError::CircuitOpen { retry_after } => {
                                (*retry_after).min(Duration::from_millis(100))
                            }
                            _ => Duration::from_millis(20),
                        };
                        errors.lock().unwrap().push(format!("{e:?}"));
                        tokio::time::sleep(pause).await;
                    }
                }
            }
        })
    };

    wait_until("the first writes", Duration::from_secs(30), || written.load(Ordering::Acquire) >= 50).await;
    servers.run("kill-pg");
    let killed_at = produced.load(Ordering::Acquire);
    wait_until("the breaker to open", Duration::from_secs(30), || {
        stack.breaker().state() == BreakerState::Open
    })
    .await;
    // The game side keeps going while PostgreSQL is down.
    wait_until("ticks during the outage", Duration::from_secs(30), || {
        produced.load(Ordering::Acquire) >= killed_at + 200
    })
    .await;
    assert!(queue.lock().unwrap().len() > 50, "batches are held while the store is down");
    servers.run("restart-pg");
    wait_until("the queue to drain", Duration::from_secs(60), || queue.lock().unwrap().len() < 10).await;
    stop.store(true, Ordering::Release);
    producer.await.unwrap();
    produced_all.store(true, Ordering::Release);
    tokio::time::timeout(Duration::from_secs(60), writer).await.unwrap().unwrap();

    let total = produced.load(Ordering::Acquire);
    assert_eq!(written.load(Ordering::Acquire), total);
    let m = stack.metrics();
    assert!(m.breaker.opened >= 1 && m.breaker.rejected >= 1, "{:?}", m.breaker);
    assert_eq!(stack.breaker().state(), BreakerState::Closed, "{:?}", m.breaker);
    assert!(errors.lock().unwrap().iter().any(|e| e.contains("CircuitOpen")));

    let pg = stack.postgres().unwrap();
    let counts = pg.row_counts().await.unwrap();
    assert_eq!(counts.positions, total * ROWS_PER_BATCH, "every row landed exactly once");
    assert_eq!(counts.events, total);
    let sql = common::sql_client(&servers.url("DATABASE_URL"), pg.schema()).await;
    let dupes: i64 = sql
        .query_one(
            "SELECT count(*) FROM (SELECT 1 FROM npc_positions GROUP BY npc_id, tick HAVING count(*) > 1) d",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(dupes, 0);
    let seq: i64 = sql.query_one("SELECT seq FROM applied_batches WHERE run = 42", &[]).await.unwrap().get(0);
    assert_eq!(seq as u64, total);
    let last = stack.get_npc(7).await.unwrap().unwrap();
    assert_eq!(last.updated_tick, total, "current state followed the last batch");
}

/// A stack over memory with Redis and no L1, so every read reaches the Redis layer.
async fn redis_stack(url: &str, bypass_ms: u64) -> StorageStack {
    let cfg = StorageConfig {
        redis: RedisConfig {
            url: url.into(),
            key_prefix: format!("{}:", unique_name()),
            command_timeout_ms: 100,
            pipeline_timeout_ms: 300,
            connect_timeout_ms: 1000,
            bypass_ms,
            warm_on_start: 0,
            ..Default::default()
        },
        l1: L1Config { capacity: 0, ..Default::default() },
        ..Default::default()
    };
    StorageStack::build(&cfg).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_reads_are_served_and_calls_never_fail() {
    if service_url("TERRARIUM_TEST_REDIS_URL").is_none() {
        return;
    }
    let servers = OwnServers::new();
    servers.run("start-redis");
    let stack = redis_stack(&servers.url("REDIS_URL"), 50).await;
    stack.write(&[WriteBatch { npcs: (1..=20).map(npc).collect(), ..batch(1, 1) }]).await.unwrap();
    for id in 1..=20 {
        stack.get_npc(id).await.unwrap();
    }
    stack.get_npc(1).await.unwrap();
    assert_eq!(stack.metrics().redis.unwrap().warm.hits, 1);

    servers.run("kill-redis");
    for seq in 2..40 {
        let mut changed = npc(seq % 20 + 1);
        changed.status = format!("s{seq}").into();
        stack
            .write(&[WriteBatch {
                npcs: vec![changed.clone()],
                positions: vec![position(99, seq)],
                ..batch(1, seq)
            }])
            .await
            .unwrap();
        assert_eq!(stack.get_npc(changed.id).await.unwrap(), Some(changed));
        assert_eq!(stack.list_npcs(&NpcFilter::default(), Page::first(100)).await.unwrap().npcs.len(), 20);
    }
    let m = stack.metrics().redis.unwrap();
    assert!(m.errors >= 1, "{m:?}");
    assert!(m.bypassed + m.errors >= 39, "every call went to the store: {m:?}");

    servers.run("restart-redis");
    let hits_before = stack.metrics().redis.unwrap().warm.hits;
    let start = Instant::now();
    while stack.metrics().redis.unwrap().warm.hits == hits_before {
        assert!(start.elapsed() < Duration::from_secs(20), "the cache never served again");
        assert_eq!(stack.get_npc(5).await.unwrap().map(|r| r.id), Some(5));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_during_a_write_never_serves_what_it_missed() {
    if service_url("TERRARIUM_TEST_REDIS_URL").is_none() {
        return;
    }
    let servers = OwnServers::new();
    servers.run("start-redis");
    let stack = redis_stack(&servers.url("REDIS_URL"), 0).await;
    stack.write(&[WriteBatch { npcs: vec![npc(1)], ..batch(1, 1) }]).await.unwrap();
    stack.get_npc(1).await.unwrap();
    let epoch = stack.metrics().redis.unwrap().epoch;

    // Redis hangs (data kept) while NPC 1 changes: the invalidation can't get through.
    servers.run("pause-redis");
    let mut changed = npc(1);
    changed.status = "changed while redis hung".into();
    stack.write(&[WriteBatch { npcs: vec![changed.clone()], ..batch(1, 2) }]).await.unwrap();
    servers.run("resume-redis");

    // The old record is still in Redis, under the old epoch; it must never be served.
    assert_eq!(stack.get_npc(1).await.unwrap(), Some(changed.clone()));
    let m = stack.metrics().redis.unwrap();
    assert!(m.epoch > epoch, "a new epoch after the missed invalidation: {m:?}");
    assert_eq!(stack.get_npc(1).await.unwrap(), Some(changed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_never_serves_the_record_an_invalidation_skipped() {
    // Issue 13 defect 7 (review M9): keys were built with the old epoch before the bump, so
    // the first read after a skipped invalidation served the stale record.
    if service_url("TERRARIUM_TEST_REDIS_URL").is_none() {
        return;
    }
    let servers = OwnServers::new();
    servers.run("start-redis");
    let stack = redis_stack(&servers.url("REDIS_URL"), 1500).await;
    stack.write(&[WriteBatch { npcs: vec![npc(1)], ..batch(1, 1) }]).await.unwrap();
    stack.get_npc(1).await.unwrap();
    stack.get_npc(1).await.unwrap();
    assert_eq!(stack.metrics().redis.unwrap().warm.hits, 1, "npc 1 is cached");
    // A read fails (Redis hangs), so Redis is skipped for 1.5 s...
    servers.run("pause-redis");
    stack.get_npc(2).await.unwrap();
    servers.run("resume-redis");
    // ...and NPC 1 changes meanwhile: its invalidation is never sent.
    let mut changed = npc(1);
    changed.status = "changed while redis was skipped".into();
    stack.write(&[WriteBatch { npcs: vec![changed.clone()], ..batch(1, 2) }]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1700)).await;
    assert_eq!(stack.get_npc(1).await.unwrap(), Some(changed.clone()), "not the stale record");
    assert_eq!(stack.get_npc(1).await.unwrap(), Some(changed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_read_only_keeps_every_batch_and_opens_the_breaker() {
    // Issue 13 defect 4 (review M6): `read_only_sql_transaction` (a failover to a standby) was
    // a refusal of the batch: each was given up after a few tries, and the breaker counted it
    // as a success.
    if service_url("TERRARIUM_TEST_PG_URL").is_none() {
        return;
    }
    let servers = OwnServers::new();
    servers.run("start-pg");
    let cfg = StorageConfig {
        backend: BackendKind::Postgres,
        postgres: PostgresConfig {
            url: servers.url("DATABASE_URL"),
            schema: unique_name(),
            min_size: 1,
            max_size: 4,
            ..Default::default()
        },
        retention: RetentionConfig { enabled: false, ..Default::default() },
        breaker: BreakerConfig { failure_threshold: 3, reset_timeout_ms: 300, ..Default::default() },
        retry: RetryConfig { max_attempts: 2, base_delay_ms: 10, max_delay_ms: 50 },
        ..Default::default()
    };
    let stack = Arc::new(StorageStack::build(&cfg).await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let wb_cfg = WriteBehindConfig {
        outbox_path: Some(dir.path().join("outbox.bin")),
        max_attempts: 2,
        retry_min_ms: 10,
        retry_max_ms: 200,
        commit_interval_ms: 20,
        ..Default::default()
    };
    let wb = WriteBehind::start_on(&tokio::runtime::Handle::current(), Arc::clone(&stack), wb_cfg).unwrap();
    let sink = wb.handle();
    let mut rows = 0;
    for t in 1..=60u64 {
        match t {
            10 => drop(servers.run("readonly-pg")),
            40 => drop(servers.run("readwrite-pg")),
            _ => {}
        }
        // Ids never repeat, so nothing coalesces and every row must arrive.
        let b = WriteBatch {
            positions: (0..20).map(|i| position(t * 100 + i, t)).collect(),
            ..Default::default()
        };
        rows += b.positions.len() as u64;
        sink.submit(Handoff { batch: b, ..Handoff::default() }).unwrap();
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    wb.flush_async(Duration::from_secs(60)).await.unwrap();
    let st = wb.stats();
    assert_eq!((st.failed_batches, st.writes_dropped), (0, 0), "{st:?}");
    assert!(st.store_errors > 0, "the read-only spell was seen: {st:?}");
    assert!(stack.breaker().metrics().opened >= 1, "{:?}", stack.breaker().metrics());
    let pg = stack.postgres().unwrap();
    assert_eq!(pg.row_counts().await.unwrap().positions, rows);
    wb.shutdown_async(Duration::from_secs(5)).await.unwrap();
}
