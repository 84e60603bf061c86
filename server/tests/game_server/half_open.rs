//! Issue 13: HTTP clients that give up in the middle of reads while the breaker is half-open
//! must not wedge it. PostgreSQL (a server of this test's own) is frozen until both circuits
//! open; then, still frozen, clients send reads and disconnect before an answer, so the
//! half-open trials they started are dropped mid-call. After the thaw the API must answer again
//! and both circuits close: a dropped trial gives its slot back.

use std::time::{Duration, Instant};

use crate::harness::*;
use reqwest::StatusCode;
use terrarium::persistence::testing::{OwnServers, service_url};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_dropped_while_half_open_do_not_wedge_the_breaker() {
    if service_url("TERRARIUM_TEST_PG_URL").is_none() {
        return;
    }
    let servers = OwnServers::new();
    servers.run("start-pg");
    let url = servers.url("DATABASE_URL");
    let t = start(500, |c| {
        fast_failing_postgres(c, url, 300);
        c.storage.breaker.success_threshold = 2;
    })
    .await;
    // A list goes to PostgreSQL every time (the L1 cache holds single records only).
    let list = |after: u64| format!("/api/npcs?limit=5&after={after}");
    t.get_until(&list(0), |s, b| s == StatusCode::OK && b["npcs"].as_array().is_some_and(|a| !a.is_empty()))
        .await;

    servers.run("freeze-pg");
    // A patient read waits out the call timeout: the read circuit opens.
    let patient = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let (status, _) = {
        let res = patient.get(t.url(&list(0))).header("x-api-key", KEY).send().await.unwrap();
        (res.status(), ())
    };
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "a read timed out against the frozen database");
    // Past the reset timeout every read is a half-open trial; each client walks away from it
    // long before the call timeout, so the trial's future is dropped mid-call.
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(100)).build().unwrap();
    let mut dropped = 0;
    for round in 0..5u64 {
        tokio::time::sleep(Duration::from_millis(350)).await;
        for i in 0..4u64 {
            let sent = impatient.get(t.url(&list(round * 4 + i))).header("x-api-key", KEY).send().await;
            if sent.is_err() {
                dropped += 1;
            }
        }
    }
    assert!(dropped >= 4, "reads were dropped half-open: {dropped}");
    servers.run("thaw-pg");

    // Reads answer again, and enough of them close the read circuit (a half-open circuit
    // closes after `success_threshold` trials that succeed, which needs free trial slots).
    let deadline = Instant::now() + Duration::from_secs(20);
    let perf = loop {
        let (status, body) = t.get(&list(1)).await;
        let (_, perf) = t.get("/api/performance").await;
        let closed =
            perf["circuit_breakers"].as_array().is_some_and(|b| b.iter().all(|c| c["state"] == "closed"));
        if status == StatusCode::OK && closed {
            break perf;
        }
        assert!(Instant::now() < deadline, "no recovery after the thaw: {status} {body}\n{perf}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let reads = &perf["circuit_breakers"][1];
    assert_eq!(reads["name"], "storage.postgres.reads", "{perf}");
    assert!(reads["opened"].as_u64().unwrap() >= 1, "the read circuit did open: {perf}");
    let end = t.server.shutdown().await.unwrap();
    let wb = end.write_behind.unwrap().stats;
    assert_eq!(wb.writes_dropped, 0, "{wb:?}");
    assert_eq!(wb.batches_written, wb.batches_submitted, "every batch reached PostgreSQL: {wb:?}");
}
