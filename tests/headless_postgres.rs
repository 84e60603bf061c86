//! The headless run on PostgreSQL (`--storage postgres`), end to end: every NPC's final
//! position reaches the `npcs` table, nothing is dropped, also when the database is killed
//! in the middle of the run and comes back.
//!
//! Needs the services of `scripts/services.sh` (`TERRARIUM_TEST_PG_URL`); skipped with a note
//! locally when they are not running, a failure in CI. Each run writes into a schema of its
//! own; the crash test starts a PostgreSQL of its own, so killing it disturbs no other test.
#![cfg(feature = "postgres")]

mod common;

use std::collections::BTreeMap;
use std::io::BufReader;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::example;
use terrarium::engine::{Engine, EngineConfig, NpcId, Position};
use terrarium::persistence::testing::{OwnServers, service_url, unique_name};
use terrarium::persistence::{BackendKind, Storage};
use terrarium::{Config, StoragePipeline};

/// The headless example on PostgreSQL, writing a snapshot of the final world into `dir`.
fn headless(url: &str, schema: &str, dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(example("headless"));
    cmd.args(["--storage", "postgres", "--database-url", url, "--quiet", "--json", "--seed", "11"])
        .arg("--snapshot-out")
        .arg(dir.join("final.snap"))
        .arg("--outbox")
        .arg(dir.join("outbox"))
        .args(args)
        .env("TERRARIUM_STORAGE__POSTGRES__SCHEMA", schema)
        // Recover quickly once the database is back, and let the pool give up quickly while
        // it is gone (the write-behind keeps everything meanwhile).
        .env("TERRARIUM_STORAGE__BREAKER__RESET_TIMEOUT_MS", "200")
        .env("TERRARIUM_STORAGE__POSTGRES__CONNECT_TIMEOUT_MS", "500")
        .env("TERRARIUM_STORAGE__POSTGRES__WAIT_TIMEOUT_MS", "1000")
        .env("TERRARIUM_STORAGE__POSTGRES__CREATE_TIMEOUT_MS", "1000");
    cmd
}

fn finish(child: Child) -> serde_json::Value {
    let out = child.wait_with_output().expect("headless runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "headless failed: {}\n{stderr}", out.status);
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    serde_json::from_str(stdout.lines().last().expect("a summary")).expect("the last line is JSON")
}

/// Every NPC's position in the snapshot the run saved at its end.
fn final_positions(snapshot: &Path) -> BTreeMap<u64, [f32; 3]> {
    let file = std::fs::File::open(snapshot).expect("the run wrote its snapshot");
    let mut engine = Engine::builder(EngineConfig::default())
        .add_plugin(terrarium::systems::core_plugin)
        .build_from_snapshot(&mut BufReader::new(file))
        .expect("the snapshot loads");
    let mut q = engine.world_mut().query::<(&NpcId, &Position)>();
    q.iter(engine.world()).map(|(id, p)| (id.0, [p.x, p.y, p.z])).collect()
}

/// Every NPC's position in the `npcs` table of `schema`, read back through the storage stack.
fn stored_positions(url: &str, schema: &str) -> BTreeMap<u64, [f32; 3]> {
    let mut cfg = Config::default();
    cfg.storage.backend = BackendKind::Postgres;
    cfg.storage.postgres.url = url.to_string();
    cfg.storage.postgres.schema = schema.to_string();
    let pipeline = StoragePipeline::start(&cfg).expect("the database is up");
    let records = pipeline.runtime().block_on(pipeline.stack().load_npcs()).expect("npcs load");
    pipeline.shutdown(Duration::from_secs(10)).expect("nothing to drain");
    records.into_iter().map(|r| (r.id, [r.x, r.y, r.z])).collect()
}

fn assert_same_world(stored: &BTreeMap<u64, [f32; 3]>, world: &BTreeMap<u64, [f32; 3]>) {
    assert_eq!(stored.len(), world.len(), "one row per NPC");
    let wrong: Vec<_> = world.iter().filter(|(id, p)| stored.get(id) != Some(p)).take(5).collect();
    assert!(wrong.is_empty(), "NPCs whose stored position is not their final one (first 5): {wrong:?}");
}

fn assert_nothing_lost(summary: &serde_json::Value) {
    assert_eq!(summary["storage"], "postgres");
    assert_eq!(summary["writes_dropped"], 0, "{summary}");
    let emitted = summary["events_emitted"].as_u64().unwrap();
    let written = summary["events_written"].as_u64().unwrap();
    let deduplicated = summary["events_deduplicated"].as_u64().unwrap();
    assert!(emitted > 0, "{summary}");
    assert_eq!(written + deduplicated, emitted, "every event stored once: {summary}");
}

#[test]
fn every_npcs_final_position_reaches_postgres() {
    let Some(url) = service_url("TERRARIUM_TEST_PG_URL") else { return };
    let dir = tempfile::tempdir().unwrap();
    let schema = unique_name();
    let child = headless(
        &url,
        &schema,
        dir.path(),
        &["--npcs", "3000", "--agents", "8", "--ticks", "120", "--verify-store"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("headless starts");
    let summary = finish(child);
    assert_nothing_lost(&summary);
    assert!(summary["position_rows_written"].as_u64().unwrap() >= 3008, "{summary}");
    // The example's own check, through the whole stack, agrees with the one below.
    assert_eq!(
        (summary["store_verified"].as_bool(), summary["store_mismatches"].as_u64()),
        (Some(true), Some(0))
    );
    assert_same_world(&stored_positions(&url, &schema), &final_positions(&dir.path().join("final.snap")));
}

#[test]
fn a_database_killed_mid_run_loses_nothing() {
    if service_url("TERRARIUM_TEST_PG_URL").is_none() {
        return;
    }
    let pg = OwnServers::new();
    pg.run("start-pg");
    let url = pg.url("DATABASE_URL");
    let dir = tempfile::tempdir().unwrap();
    let schema = unique_name();
    // 6 s of real time at 20 Hz: the database is gone for about 2 s in the middle.
    let child = headless(
        &url,
        &schema,
        dir.path(),
        &["--npcs", "2000", "--agents", "8", "--ticks", "120", "--tick-hz", "20", "--realtime"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("headless starts");
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    pg.run("kill-pg");
    std::thread::sleep(Duration::from_millis(2000));
    pg.run("restart-pg");
    let summary = finish(child);
    assert!(started.elapsed() > Duration::from_secs(5), "the run outlived the outage");
    assert!(summary["store_errors"].as_u64().unwrap() > 0, "the outage was seen: {summary}");
    eprintln!("summary after the outage: {summary}");
    assert_nothing_lost(&summary);
    assert_same_world(&stored_positions(&url, &schema), &final_positions(&dir.path().join("final.snap")));
}
