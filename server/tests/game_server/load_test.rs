//! The load-test example.

#[test]
fn the_load_test_runs_both_phases_and_reports_json() {
    let out = crate::harness::run(
        "load_test",
        &[
            "--clients",
            "4",
            "--seconds",
            "1",
            "--npcs",
            "300",
            "--tick-hz",
            "20",
            "--ws-clients",
            "3",
            "--ws-seconds",
            "1",
            "--ws-area",
            "1024",
            "--server-threads",
            "1",
            "--client-threads",
            "1",
            "--json",
        ],
    );
    let r = crate::harness::last_json(&out);
    let http = &r["http"];
    assert_eq!((r["server"].as_str(), http["clients"].as_u64()), (Some("in-process"), Some(4)), "{r}");
    assert!(http["requests"].as_u64().unwrap() > 20 && http["errors"] == 0, "answered 200, not errors: {r}");
    assert_eq!(http["rate_limited"], 0, "the in-process server raises its limits for the load: {r}");
    let (p50, p99) = (http["p50_ms"].as_f64().unwrap(), http["p99_ms"].as_f64().unwrap());
    assert!(p50 > 0.0 && p99 >= p50 && http["max_ms"].as_f64().unwrap() >= p99, "{r}");
    assert!(http["req_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(http["tick"]["tick_hz"], 20);
    assert!(http["tick"]["ticks_per_s"].as_f64().unwrap() > 5.0, "the tick ran during the phase: {r}");
    let ws = &r["ws"];
    assert_eq!(
        (ws["clients"].as_u64(), ws["failed"].as_u64(), ws["ws_hz"].as_f64()),
        (Some(3), Some(0), Some(10.0))
    );
    // Each area is a sixteenth of the world: about 19 of the 300 wanderers, moving every tick.
    assert!(ws["frames_total"].as_u64().unwrap() >= 3 * 5, "deltas arrived: {r}");
    assert!(ws["bytes_total"].as_u64().unwrap() > ws["frames_total"].as_u64().unwrap() * 30, "{r}");
    assert!(ws["frames_per_s_min"].as_f64().unwrap() > 0.0, "{r}");
}

/// `--url` of a port nothing listens on fails at once with a clear message, instead of
/// waiting a minute (or forever).
#[test]
fn the_load_test_fails_fast_on_a_dead_port() {
    // A port that was free a moment ago: bind, note it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let exe = crate::harness::example("load_test");
    let started = std::time::Instant::now();
    let out = std::process::Command::new(exe)
        .args(["--url", &format!("http://127.0.0.1:{port}"), "--api-key", "k", "--seconds", "1"])
        .output()
        .expect("example starts");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("127.0.0.1") && err.contains("refused"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "took {:?}", started.elapsed());
}
