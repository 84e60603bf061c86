//! The world outlives the process: `headless` on a durable store resumes what it stored.
//!
//! - Resume equals continue: 600 ticks in one run, and 300 + 300 in two runs (the second
//!   resuming from the store), end with the same `world_hash`, on the embedded store and on
//!   PostgreSQL, with mining agents.
//! - A run killed with SIGKILL resumes from its last checkpoint and what was committed after it;
//!   a run stopped with SIGTERM drains, checkpoints and reports like a finished one.
//! - A damaged database or checkpoint stops the start with an error naming the file; a new
//!   world needs `--new-world --wipe`.
#![cfg(feature = "file-store")]

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::example;

fn headless(args: &[&str]) -> Command {
    let mut cmd = Command::new(example("headless"));
    cmd.args(["--quiet", "--json", "--seed", "21", "--threads", "2"]).args(args);
    cmd
}

fn embedded(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = headless(&["--storage", "embedded", "--data-dir"]);
    cmd.arg(dir).args(args);
    cmd
}

fn summary(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "headless failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().expect("a summary")).expect("the last line is JSON")
}

fn run(mut cmd: Command) -> serde_json::Value {
    summary(&cmd.output().expect("headless starts"))
}

const WORLD: [&str; 6] = ["--npcs", "3000", "--agents", "300", "--checkpoint-every", "100"];

#[test]
fn resume_equals_continue_on_the_embedded_store() {
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let straight = run(embedded(one.path(), &[&WORLD[..], &["--ticks", "600"]].concat()));
    assert_eq!((straight["resumed"].as_bool(), straight["final_tick"].as_u64()), (Some(false), Some(600)));
    assert!(straight["checkpoints_written"].as_u64().unwrap() >= 2, "{straight}");

    let first = run(embedded(two.path(), &[&WORLD[..], &["--ticks", "300"]].concat()));
    assert_eq!(first["resumed"], false);
    let second = run(embedded(two.path(), &[&WORLD[..], &["--ticks", "300"]].concat()));
    assert_eq!(second["resumed"], true, "{second}");
    assert_eq!(second["resumed_tick"], 300);
    assert_eq!(second["resumed_npcs"], 3300);
    assert_eq!(second["resumed_agents"], 300);
    assert!(second["resume_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(second["final_tick"], 600);
    assert_eq!(second["writes_dropped"], 0);
    assert_eq!(second["world_hash"], straight["world_hash"], "resumed {second}\nstraight {straight}");
    // Ore is conserved across the restart: what the first run mined stays mined.
    assert_ne!(second["ore_mined"], serde_json::json!({}));
}

#[test]
fn a_resumed_world_is_not_sent_to_the_store_again() {
    let dir = tempfile::tempdir().unwrap();
    let first = run(embedded(dir.path(), &["--npcs", "5000", "--ticks", "20"]));
    assert_eq!(first["npc_upserts_written"], 5000, "{first}");
    let second = run(embedded(dir.path(), &["--ticks", "20"]));
    assert_eq!(second["resumed"], true, "{second}");
    // The store holds every NPC already: the resumed run writes what moves, not the registry.
    assert_eq!(second["npc_upserts_written"], 0, "{second}");
    assert!(second["position_rows_written"].as_u64().unwrap() > 0, "{second}");
    assert_eq!(second["writes_dropped"], 0);
}

#[cfg(feature = "postgres")]
#[test]
fn resume_equals_continue_on_postgres() {
    use terrarium::persistence::testing::{service_url, unique_name};
    let Some(url) = service_url("TERRARIUM_TEST_PG_URL") else { return };
    let pg = |schema: &str, ticks: &str| {
        let mut cmd = headless(&["--storage", "postgres", "--database-url", &url]);
        cmd.args(WORLD).args(["--ticks", ticks]).env("TERRARIUM_STORAGE__POSTGRES__SCHEMA", schema);
        cmd
    };
    let (a, b) = (unique_name(), unique_name());
    let straight = run(pg(&a, "600"));
    assert_eq!(run(pg(&b, "300"))["resumed"], false);
    let second = run(pg(&b, "300"));
    assert_eq!((second["resumed"].as_bool(), second["resumed_tick"].as_u64()), (Some(true), Some(300)));
    assert_eq!(second["world_hash"], straight["world_hash"]);
    drop_schemas(&url, &[&a, &b]);
}

#[cfg(feature = "postgres")]
fn drop_schemas(url: &str, schemas: &[&str]) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        for s in schemas {
            // Names come from unique_name(): plain identifiers.
            client.batch_execute(&format!("DROP SCHEMA IF EXISTS {s} CASCADE")).await.unwrap();
        }
    });
}

#[test]
fn sigterm_drains_checkpoints_and_the_next_run_resumes_there() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd =
        embedded(dir.path(), &["--npcs", "5000", "--ticks", "100000", "--realtime", "--tick-hz", "50"]);
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    signal(child.id(), "-TERM");
    let out = child.wait_with_output().unwrap();
    let first = summary(&out);
    assert_eq!(first["stopped_by_signal"], true, "{first}");
    let stopped_at = first["final_tick"].as_u64().unwrap();
    assert!(stopped_at > 0 && stopped_at < 100_000);
    assert_eq!(first["writes_dropped"], 0);
    assert!(first["checkpoint_ms"].as_f64().unwrap() > 0.0);
    let second = run(embedded(dir.path(), &["--ticks", "10"]));
    assert_eq!(
        (second["resumed"].as_bool(), second["resumed_tick"].as_u64()),
        (Some(true), Some(stopped_at))
    );
    assert_eq!(second["resumed_npcs"], 5000);
    assert_eq!(second["final_tick"].as_u64(), Some(stopped_at + 10));
}

#[test]
fn sigkill_resumes_from_the_last_checkpoint_and_what_was_committed_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = embedded(
        dir.path(),
        &["--npcs", "4000", "--ticks", "100000", "--checkpoint-every", "40", "--realtime", "--tick-hz", "50"],
    );
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let started = Instant::now();
    // Wait for a periodic checkpoint (the first one, of tick 0, is there at once), then kill
    // without warning.
    let db = dir.path().join("terrarium.db");
    while started.elapsed() < Duration::from_secs(60) && !checkpoint_ticks(&db).iter().any(|&t| t > 0) {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(700));
    child.kill().unwrap();
    child.wait().unwrap();
    let (count, max_tick) = committed(&db);
    let second = run(embedded(dir.path(), &["--ticks", "20"]));
    assert_eq!(second["resumed"], true, "{second}");
    assert_eq!(second["resumed_npcs"].as_u64(), Some(count), "NPCs = what the store committed");
    assert!(second["resumed_tick"].as_u64().unwrap() >= max_tick, "{second} vs {max_tick}");
    assert_eq!(second["writes_dropped"], 0);
}

#[test]
fn a_damaged_store_stops_the_start_with_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    run(embedded(dir.path(), &["--npcs", "20000", "--ticks", "30"]));
    let db = dir.path().join("terrarium.db");
    let bytes = std::fs::read(&db).unwrap();
    std::fs::write(&db, &bytes[..bytes.len() / 3]).unwrap();
    let out = embedded(dir.path(), &["--ticks", "5"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("terrarium.db") && stderr.contains("truncated"), "{stderr}");

    // A checkpoint that fails its checksum.
    std::fs::write(&db, &bytes).unwrap();
    let sql = rusqlite::Connection::open(&db).unwrap();
    sql.execute("UPDATE checkpoints SET bytes = zeroblob(size)", []).unwrap();
    drop(sql);
    let out = embedded(dir.path(), &["--ticks", "5"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("terrarium.db") && stderr.contains("checksum"), "{stderr}");

    // Starting over is explicit, and needs both flags.
    let out = embedded(dir.path(), &["--ticks", "5", "--new-world"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let fresh = run(embedded(dir.path(), &["--npcs", "100", "--ticks", "5", "--new-world", "--wipe"]));
    assert_eq!((fresh["resumed"].as_bool(), fresh["npcs"].as_u64()), (Some(false), Some(100)));
}

#[test]
fn a_kill_before_the_first_periodic_checkpoint_resumes_from_the_first_one() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("terrarium.db");
    // `--checkpoint-every 0`: no periodic checkpoint, only the new world's first one.
    let mut cmd = embedded(
        dir.path(),
        &["--npcs", "3000", "--ticks", "100000", "--checkpoint-every", "0", "--realtime", "--tick-hz", "50"],
    );
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) && stored_npcs(&db) < 3000 {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(checkpoint_ticks(&db), [0], "the first checkpoint, and no other");
    let (count, max_tick) = committed(&db);
    assert_eq!(count, 3000);
    let second = run(embedded(dir.path(), &["--npcs", "10", "--ticks", "20"]));
    assert_eq!(second["resumed"], true, "{second}");
    assert_eq!(second["resumed_npcs"].as_u64(), Some(count), "NPCs = what the store committed");
    assert!(second["resumed_tick"].as_u64().unwrap() >= max_tick, "{second} vs {max_tick}");
    assert_eq!(second["initial_checkpoint_ms"], 0.0, "a resumed world writes no first checkpoint");

    // A store with rows and no checkpoint can't be resumed: a typed error naming the file, not
    // a new world over the rows (which would hand their ids out again).
    let sql = rusqlite::Connection::open(&db).unwrap();
    sql.execute("DELETE FROM checkpoints", []).unwrap();
    drop(sql);
    let out = embedded(dir.path(), &["--ticks", "5"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("terrarium.db") && stderr.contains("no checkpoint"), "{stderr}");
    let fresh = run(embedded(dir.path(), &["--npcs", "100", "--ticks", "5", "--new-world", "--wipe"]));
    assert_eq!((fresh["resumed"].as_bool(), fresh["npcs"].as_u64()), (Some(false), Some(100)));
    assert!(fresh["initial_checkpoint_ms"].as_f64().unwrap() > 0.0, "{fresh}");
}

/// The windows the process tests can't time. A new world is stored whole before its first tick
/// (its first checkpoint, ahead of its population's batch): killed right after, the next start
/// resumes every NPC from the rows; killed while the population was being written (here: the
/// store's mark and rows put back to what the first parts left), it resumes the checkpoint
/// alone, never the partial population, and stores it whole again. No id is handed out twice.
#[test]
fn a_new_world_is_stored_whole_before_its_first_tick_and_a_kill_during_it_loses_nobody() {
    use terrarium::StoragePipeline;
    use terrarium::engine::{Engine, NpcSpec, Position, Role};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("world.db");
    let mut cfg = terrarium::Config::default();
    cfg.storage.backend = terrarium::persistence::BackendKind::Embedded;
    cfg.storage.embedded.path = db.clone();
    // The population's batch goes in several parts, as a big world's does.
    cfg.write_behind.max_call_rows = 1_000;
    let builder = |p: &StoragePipeline| {
        Engine::builder(cfg.engine.clone())
            .add_plugin(terrarium::systems::core_plugin)
            .add_plugin(p.batching_plugin())
    };
    let npcs = 3_000_u64;
    let first = StoragePipeline::start(&cfg).unwrap();
    let (mut engine, resumed) = first.build_engine(builder(&first)).unwrap();
    assert!(resumed.is_none(), "a new store holds no world");
    let spawned: Vec<u64> = (0..npcs)
        .map(|i| {
            engine.spawn_npc(NpcSpec::new(Role::Scout, Position::new(5.0 + (i % 50) as f32, 0.0, 5.0))).0
        })
        .collect();
    let stats = first.checkpoint_new_world(&mut engine).unwrap();
    assert_eq!((stats.checkpoint.written, stats.checkpoint.last_tick), (1, 0));
    assert!(stats.rows >= 2 * npcs, "registry rows and positions: {stats:?}");
    let wb = first.write_behind_stats();
    assert!(wb.last_seq > 2, "cut into parts: {wb:?}");
    assert_eq!(stored_npcs(&db), npcs, "the population is committed before the first tick");
    // Killed here, before the first tick.
    drop(engine);
    first.shutdown(Duration::from_secs(10)).unwrap();

    let second = StoragePipeline::start(&cfg).unwrap();
    let (engine, resumed) = second.build_engine(builder(&second)).unwrap();
    let resumed = resumed.expect("the new world is stored");
    assert_eq!((resumed.npcs, resumed.checkpoint_tick, resumed.rows_behind), (npcs, 0, false), "{resumed:?}");
    drop(engine);
    second.shutdown(Duration::from_secs(10)).unwrap();

    // Back to what a kill after the first two parts leaves: the checkpoint (ahead), the mark
    // at 2, a third of the registry.
    let sql = rusqlite::Connection::open(&db).unwrap();
    sql.execute("UPDATE applied_batches SET seq = 2", []).unwrap();
    sql.execute("DELETE FROM npcs WHERE id > ?1", [i64::try_from(spawned[999]).unwrap()]).unwrap();
    drop(sql);
    let third = StoragePipeline::start(&cfg).unwrap();
    let (mut engine, resumed) = third.build_engine(builder(&third)).unwrap();
    let resumed = resumed.expect("the checkpoint is a world to resume");
    assert_eq!((resumed.npcs, resumed.despawned, resumed.rows_behind), (npcs, 0, true), "{resumed:?}");
    third.checkpoint_new_world(&mut engine).unwrap();
    assert_eq!(stored_npcs(&db), npcs, "stored whole again");
    let id = engine.spawn_npc(NpcSpec::new(Role::Scout, Position::new(5.0, 0.0, 5.0))).0;
    assert!(id > *spawned.iter().max().unwrap(), "id {id} handed out again");
    // A checkpoint after a batch cut into parts follows the last part, not the batch count.
    for i in 0..1_500 {
        engine.spawn_npc(NpcSpec::new(Role::Scout, Position::new(5.0 + (i % 50) as f32, 0.0, 6.0)));
    }
    third.checkpoint_now(&mut engine, false).unwrap();
    let wb = third.write_behind_stats();
    assert!(wb.last_seq > wb.batches_submitted + 1, "{wb:?}");
    let sql = rusqlite::Connection::open(&db).unwrap();
    let cp_seq: i64 =
        sql.query_row("SELECT seq FROM checkpoints ORDER BY id DESC LIMIT 1", [], |r| r.get(0)).unwrap();
    assert_eq!(u64::try_from(cp_seq).unwrap(), wb.last_seq, "{wb:?}");
    drop(sql);
    drop(engine);
    third.shutdown(Duration::from_secs(10)).unwrap();

    let fourth = StoragePipeline::start(&cfg).unwrap();
    let (_, resumed) = fourth.build_engine(builder(&fourth)).unwrap();
    let resumed = resumed.unwrap();
    assert_eq!((resumed.npcs, resumed.rows_behind), (npcs + 1 + 1_500, false), "{resumed:?}");
    fourth.shutdown(Duration::from_secs(10)).unwrap();
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success();
    assert!(ok, "kill {sig} {pid}");
}

fn checkpoint_ticks(db: &Path) -> Vec<i64> {
    let Ok(sql) = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return vec![];
    };
    let Ok(mut stmt) = sql.prepare("SELECT tick FROM checkpoints") else { return vec![] };
    stmt.query_map([], |r| r.get(0)).map(|rows| rows.filter_map(Result::ok).collect()).unwrap_or_default()
}

/// NPCs in the store; 0 while it is not there yet (opened read-only: this never creates it).
fn stored_npcs(db: &Path) -> u64 {
    let Ok(sql) = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return 0;
    };
    sql.query_row("SELECT count(*) FROM npcs", [], |r| r.get::<_, i64>(0)).map_or(0, |n| n as u64)
}

/// NPCs in the store, and the newest tick it holds.
fn committed(db: &Path) -> (u64, u64) {
    let sql = rusqlite::Connection::open(db).unwrap();
    // Positions live in blocks (schema V2): the newest tick is the registry's or a block's.
    sql.query_row(
        "SELECT count(*), max(coalesce(max(updated_tick), 0), \
         coalesce((SELECT max(tick) FROM position_blocks), 0)) FROM npcs",
        [],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
    )
    .unwrap()
}
