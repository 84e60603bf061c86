//! Graceful shutdown: nothing batched is lost, in process and in the example (also on PostgreSQL).

use std::time::Duration;

use crate::harness::*;
use reqwest::StatusCode;
use serde_json::json;
use terrarium::engine::{NpcId, Position};
use terrarium::persistence::{NpcFilter, Page, Storage};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_loses_no_batch() {
    let t = start(3000, |c| {
        // Batches wait long, so the shutdown has a lot to cut and drain.
        c.engine.batching.positions.max_age_ms = 60_000;
        c.engine.batching.positions.max_items = 1_000_000;
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The last commands before the stop must reach the store too.
    let (status, body) = t.post("/api/npcs", &json!({"role": "builder", "position": [33, 0, 44]})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let spawned = body["id"].as_u64().unwrap();
    let (status, _) =
        t.post("/api/npcs/5/orders", &json!({"order": "teleport", "position": [1, 0, 2]})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    // Let them apply (the next tick), then stop at once.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let end = t.server.shutdown().await.unwrap();

    let wb = end.write_behind.unwrap().stats;
    assert_eq!((wb.writes_dropped, wb.failed_batches, wb.batches_spilled), (0, 0, 0), "{wb:?}");
    assert_eq!(wb.batches_written, wb.batches_submitted, "every batch handed over was written: {wb:?}");
    assert!(wb.batches_submitted >= 1);
    let store = end.storage.unwrap();
    let mut engine = end.engine;
    let mut q = engine.world_mut().query::<(&NpcId, &Position)>();
    let world: Vec<(u64, Position)> = q.iter(engine.world()).map(|(id, p)| (id.0, *p)).collect();
    assert_eq!(world.len(), 3001);
    let mut stored = 0;
    let mut after = None;
    loop {
        let page = store.list_npcs(&NpcFilter::default(), Page { after, limit: 100 }).await.unwrap();
        stored += page.npcs.len();
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(stored, world.len(), "every NPC is in the store");
    for (id, p) in &world {
        let r = store.get_npc(*id).await.unwrap().unwrap();
        assert_eq!((r.x, r.y, r.z), (p.x, p.y, p.z), "npc {id}: the store has its last position");
    }
    let five = store.get_npc(5).await.unwrap().unwrap();
    // It walks on from where it was put (8 blocks/s, well under a second before the stop);
    // anywhere else in the 256 × 256 world would be a lost command.
    let off = (five.x - 1.0).hypot(five.z - 2.0);
    assert!(off < 6.0, "the teleport just before the stop: at ({}, {})", five.x, five.z);
    assert_eq!(store.get_npc(spawned).await.unwrap().unwrap().role, "builder");
    assert_eq!(end.performance.write_behind.unwrap().queued_rows, 0);
}

/// Runs the game_server example with `args` (and `env`), hands its address to `during`, then
/// stops it with SIGTERM; its JSON summary.
#[cfg(any(feature = "file-store", feature = "postgres"))]
fn example_until_sigterm<F: Future<Output = ()>>(
    args: &[&str],
    env: &[(&str, &str)],
    during: impl FnOnce(String) -> F,
) -> serde_json::Value {
    let mut child = std::process::Command::new(crate::harness::example("game_server"))
        .args(args)
        .arg("--json")
        .env("TERRARIUM_SERVER__API_KEY", KEY)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    let Some(addr) = first.trim().strip_prefix("listening on http://").map(str::to_string) else {
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        panic!("no address: {first:?}\n{}", String::from_utf8_lossy(&out.stderr));
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(during(addr));
    let status =
        std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "exit {:?}: {}", out.status, String::from_utf8_lossy(&out.stderr));
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    serde_json::from_str(rest.lines().last().unwrap()).unwrap()
}

/// The example's default store is the embedded one: SIGTERM drains it and stores a final
/// checkpoint, and the next start resumes that world (`--npcs` ignored).
// The example's default storage is the embedded store.
#[cfg(feature = "file-store")]
#[test]
fn the_example_drains_storage_on_sigterm_and_the_next_start_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let args = ["--port", "0", "--npcs", "2000", "--tick-hz", "30", "--threads", "1", "--data-dir", data];
    let summary = example_until_sigterm(&args, &[], |addr| async move {
        let http = reqwest::Client::new();
        let health: serde_json::Value =
            http.get(format!("http://{addr}/health")).send().await.unwrap().json().await.unwrap();
        assert_eq!(health["status"], "ok");
        let res = http
            .get(format!("http://{addr}/api/npcs?limit=3"))
            .header("x-api-key", KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(300)).await;
    });
    assert_eq!(
        (summary["storage"].as_str(), summary["writes_dropped"].as_u64()),
        (Some("embedded"), Some(0)),
        "{summary}"
    );
    assert_eq!(summary["batches_written"], summary["batches_submitted"], "{summary}");
    assert!(summary["batches_written"].as_u64().unwrap() > 0 && summary["npcs"] == 2000, "{summary}");
    assert!(summary["http_requests"].as_u64().unwrap() >= 2);
    assert_eq!(summary["resumed"], false);

    let args = ["--port", "0", "--npcs", "10", "--tick-hz", "30", "--threads", "1", "--data-dir", data];
    let again = example_until_sigterm(&args, &[], |_| async {});
    assert_eq!(again["resumed"], true, "{again}");
    assert_eq!((again["resumed_npcs"].as_u64(), again["npcs"].as_u64()), (Some(2000), Some(2000)), "{again}");
    assert_eq!(again["resumed_tick"], summary["ticks"], "resumed where it stopped: {again}");
    assert!(again["ticks"].as_u64() > summary["ticks"].as_u64(), "{again}");
}

/// `--storage postgres --database-url`: the server reads NPCs back from PostgreSQL (through
/// the stack), reports the pool, and drains every NPC's last position into the `npcs` table at
/// SIGTERM. Runs in a schema of its own, dropped at the end.
#[cfg(feature = "postgres")]
#[test]
fn the_example_serves_and_drains_into_postgres() {
    use terrarium::persistence::testing::{service_url, unique_name};
    let Some(url) = service_url("TERRARIUM_TEST_PG_URL") else { return };
    let schema = unique_name();
    let args =
        ["--port", "0", "--npcs", "1500", "--tick-hz", "30", "--threads", "1", "--storage", "postgres"];
    let args = [&args[..], &["--database-url", &url]].concat();
    let env = [("TERRARIUM_STORAGE__POSTGRES__SCHEMA", schema.as_str())];
    let summary = example_until_sigterm(&args, &env, |addr| async move {
        let http = reqwest::Client::new();
        let get = |path: String| http.get(format!("http://{addr}{path}")).header("x-api-key", KEY).send();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while get("/api/npcs/1500".into()).await.unwrap().status() != StatusCode::OK {
            assert!(std::time::Instant::now() < deadline, "NPC 1500 never reached PostgreSQL");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let perf: serde_json::Value = get("/api/performance".into()).await.unwrap().json().await.unwrap();
        assert_eq!(perf["circuit_breakers"][0]["name"], "storage.postgres", "{perf}");
        assert!(
            perf["db_pool"]["max_size"].as_u64().unwrap() > 0
                && perf["db_pool"]["queries"].as_u64().unwrap() > 0,
            "{perf}"
        );
    });
    assert_eq!(
        (summary["storage"].as_str(), summary["writes_dropped"].as_u64()),
        (Some("postgres"), Some(0)),
        "{summary}"
    );
    assert_eq!(summary["batches_written"], summary["batches_submitted"], "{summary}");

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        // The schema name comes from unique_name (`test_` and hex digits), never from input.
        let rows = client
            .query_one(&format!("SELECT count(*) FROM {schema}.npcs"), &[])
            .await
            .map(|r| r.get::<_, i64>(0));
        client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
        assert_eq!(rows.unwrap(), 1500, "one row per NPC");
    });
}
