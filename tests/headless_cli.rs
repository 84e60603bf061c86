//! The headless example as other tools drive it: flags, exit codes, and the JSON contract.

mod common;

use std::process::Output;

fn run(args: &[&str]) -> Output {
    common::output("headless", args)
}

fn last_json(out: &Output) -> serde_json::Value {
    common::last_json(&String::from_utf8_lossy(&out.stdout))
}

#[test]
fn json_summary_has_the_contract_keys() {
    let out = run(&[
        "--npcs",
        "2000",
        "--ticks",
        "30",
        "--seed",
        "9",
        "--threads",
        "2",
        "--storage",
        "none",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = last_json(&out);
    for key in [
        "npcs",
        "agents",
        "ticks",
        "threads",
        "seed",
        "tick_ms_p50",
        "tick_ms_p95",
        "tick_ms_p99",
        "tick_ms_max",
        "ticks_per_sec",
        "rss_bytes",
        "bytes_per_npc",
        "world_hash",
        "wall_s",
    ] {
        assert!(v.get(key).is_some(), "missing key {key} in {v}");
    }
    assert_eq!(v["npcs"], 2000);
    assert_eq!(v["ticks"], 30);
    assert_eq!(v["threads"], 2);
    assert_eq!(v["seed"], 9);
    assert_eq!(v["world_hash"].as_str().unwrap().len(), 16);
}

/// Wanderers over several parallel chunks of the movement pass (and a few agents), on 1, 2
/// and 4 threads: one chunk would run on one thread whatever the count, and prove nothing.
#[test]
fn same_seed_same_hash_whatever_the_threads() {
    const NPCS: u64 = 50_000;
    assert!(NPCS > 3 * terrarium::systems::par::CHUNK as u64, "several chunks of the movement pass");
    let hash = |threads: &str| {
        let out = run(&[
            "--npcs",
            &NPCS.to_string(),
            "--agents",
            "40",
            "--ticks",
            "40",
            "--seed",
            "3",
            "--threads",
            threads,
            "--storage",
            "none",
            "--quiet",
            "--json",
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        last_json(&out)["world_hash"].as_str().unwrap().to_string()
    };
    let one = hash("1");
    assert_eq!(hash("2"), one, "2 threads");
    assert_eq!(hash("4"), one, "4 threads");
}

/// A run saved after 40 ticks and continued for 60 from the snapshot (on another thread count)
/// ends where one run of 100 ticks ends; loading alone changes nothing. 40 ticks in, the agents
/// hold deposits and paths, which the loaded world must honour.
#[test]
fn snapshot_out_then_in_continues_the_same_world() {
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("w.snap");
    let snap = snap.to_str().unwrap();
    let world = ["--npcs", "3000", "--agents", "30", "--seed", "4", "--storage", "none", "--quiet", "--json"];
    let a = run(&[&world[..], &["--ticks", "40", "--threads", "2", "--snapshot-out", snap]].concat());
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    let loaded = run(&["--snapshot-in", snap, "--ticks", "0", "--storage", "none", "--quiet", "--json"]);
    assert!(loaded.status.success(), "{}", String::from_utf8_lossy(&loaded.stderr));
    let continued = run(&[
        "--snapshot-in",
        snap,
        "--ticks",
        "60",
        "--threads",
        "1",
        "--storage",
        "none",
        "--quiet",
        "--json",
    ]);
    assert!(continued.status.success(), "{}", String::from_utf8_lossy(&continued.stderr));
    let straight = run(&[&world[..], &["--ticks", "100", "--threads", "2"]].concat());
    assert!(straight.status.success(), "{}", String::from_utf8_lossy(&straight.stderr));
    let (a, loaded, continued, straight) =
        (last_json(&a), last_json(&loaded), last_json(&continued), last_json(&straight));
    assert_eq!(a["world_hash"], loaded["world_hash"], "loading changes nothing");
    assert_ne!(a["world_hash"], straight["world_hash"], "60 more ticks change the world");
    assert_eq!(
        continued["world_hash"], straight["world_hash"],
        "the loaded world carries on as the saved one would"
    );
    assert_eq!(
        (loaded["npcs"].as_u64(), loaded["agents"].as_u64()),
        (Some(3000), Some(30)),
        "from the snapshot"
    );
    assert_eq!(loaded["seed"], 4, "the seed comes from the snapshot");
}

#[test]
fn bad_input_gives_one_clear_line_and_a_non_zero_exit() {
    for (args, needle) in [
        (vec!["--npcs", "lots"], "invalid value"),
        (vec!["--no-such-flag"], "unexpected argument"),
        (vec!["--snapshot-in", "/nonexistent/x.snap"], "cannot open snapshot"),
        (vec!["--tick-hz", "0", "--npcs", "1"], "tick_hz"),
    ] {
        let out = run(&args);
        assert!(!out.status.success(), "{args:?} should fail");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.snap");
    std::fs::write(&junk, b"definitely not a snapshot, but long enough to have a header").unwrap();
    let out = run(&["--snapshot-in", junk.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("not a terrarium snapshot"), "{stderr}");
}

#[test]
fn realtime_paces_ticks_instead_of_spinning() {
    let out = run(&["--npcs", "100", "--ticks", "10", "--tick-hz", "50", "--realtime", "--quiet", "--json"]);
    assert!(out.status.success());
    let v = last_json(&out);
    // 10 ticks at 50 Hz take at least 0.2 s of wall time; back to back they'd take microseconds.
    assert!(v["ticks_per_sec"].as_f64().unwrap() <= 55.0, "{v}");
}

#[test]
fn agents_are_mining_agents_and_a_snapshot_keeps_their_world() {
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("w.snap");
    let snap = snap.to_str().unwrap();
    let common = ["--npcs", "500", "--seed", "4", "--threads", "2", "--storage", "none", "--quiet", "--json"];
    let out = run(&[&common[..], &["--agents", "150", "--ticks", "150", "--snapshot-out", snap]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = last_json(&out);
    assert_eq!((v["npcs"].as_u64(), v["agents"].as_u64()), (Some(500), Some(150)));
    assert!(v["paths_solved"].as_u64().unwrap() > 0, "{v}");
    assert!(v["ore_mined"].as_object().is_some_and(|m| m.len() == 4), "{v}");
    for key in ["path_failures", "replans"] {
        assert!(v[key].as_u64().is_some(), "missing {key} in {v}");
    }
    // The loaded world has the voxels and the miners' state: the agents carry on.
    let out = run(&[&common[..], &["--snapshot-in", snap, "--ticks", "50"]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = last_json(&out);
    assert_eq!(v["agents"].as_u64(), Some(150));
    assert!(v["paths_solved"].as_u64().unwrap() > 0, "{v}");
}

#[test]
fn storage_memory_batches_and_writes_everything_and_none_turns_it_off() {
    let keys = [
        "position_rows_written",
        "metric_rows_written",
        "events_emitted",
        "events_written",
        "events_deduplicated",
        "store_calls",
        "writes_dropped",
        "outbox_spilled",
    ];
    let common = ["--npcs", "3000", "--agents", "10", "--ticks", "60", "--seed", "5", "--quiet", "--json"];
    let out = run(&[&common[..], &["--storage", "memory", "--verify-store"]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mem = last_json(&out);
    assert_eq!(mem["store_verified"], true, "{mem}");
    assert_eq!(mem["store_mismatches"], 0);
    for key in keys {
        assert!(mem[key].is_u64(), "missing key {key} in {mem}");
    }
    assert_eq!(mem["storage"], "memory");
    assert_eq!(mem["writes_dropped"], 0);
    assert!(mem["store_calls"].as_u64().unwrap() > 0);
    // Storage lag (simulated ms, sampled every tick). Ticks run back to back here, far faster
    // than real time, so any store trails in simulated time; the lag can still never exceed
    // the simulated length of the run (60 ticks at the default 20 Hz).
    let lag = |k: &str| mem[k].as_f64().unwrap_or_else(|| panic!("missing {k} in {mem}"));
    let (p50, p99, max) = (lag("store_lag_ms_p50"), lag("store_lag_ms_p99"), lag("store_lag_ms_max"));
    let run_ms = 60.0 * 1000.0 / mem["tick_hz"].as_f64().unwrap();
    assert!(p50 <= p99 && p99 <= max && max <= run_ms, "{p50} {p99} {max} (run {run_ms} ms)");
    // Every row batched was written, or overwritten by a later row for the same NPC.
    let written = mem["position_rows_written"].as_u64().unwrap();
    let coalesced = mem["position_rows_coalesced"].as_u64().unwrap();
    assert!(written >= 3010, "every NPC has a row: {mem}");
    assert_eq!(written + coalesced, mem["position_rows_batched"].as_u64().unwrap());
    let emitted = mem["events_emitted"].as_u64().unwrap();
    assert!(emitted > 0);
    assert_eq!(
        mem["events_written"].as_u64().unwrap() + mem["events_deduplicated"].as_u64().unwrap(),
        emitted
    );
    let out = run(&[&common[..], &["--storage", "none"]].concat());
    assert!(out.status.success());
    let none = last_json(&out);
    assert_eq!(none["world_hash"], mem["world_hash"], "persistence never changes the world");
    for key in keys {
        assert_eq!(none[key], 0, "{key} with --storage none");
    }
}

#[test]
fn report_every_prints_a_line_per_interval_and_the_summary_carries_the_snapshot() {
    let args = ["--npcs", "2000", "--agents", "20", "--ticks", "40", "--seed", "2", "--threads", "2"];
    let out = run(&[&args[..], &["--report-every", "10", "--quiet", "--json"]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let reports: Vec<&str> = stdout.lines().filter(|l| l.starts_with("tick ")).collect();
    assert_eq!(reports.len(), 4, "one line per 10 ticks: {stdout}");
    assert!(reports[3].starts_with("tick 40:") && reports[3].contains("2020 npcs (20 agents)"), "{stdout}");
    assert!(reports[0].contains("write-behind"), "storage memory is the default: {stdout}");

    let v = last_json(&out);
    // The existing keys are still there, and the snapshot rides along under `performance`.
    assert_eq!(v["ticks"], 40);
    let p = &v["performance"];
    assert_eq!(p["tick"], 40);
    assert_eq!(p["ticks_total"], 40, "the last tick is recorded before the summary");
    assert_eq!((p["npcs"].as_u64(), p["agents"].as_u64()), (Some(2020), Some(20)));
    let lat = &p["tick_latency"];
    assert_eq!(lat["samples"], 40);
    assert!(lat["p50_ms"].as_f64().unwrap() > 0.0 && lat["p99_ms"].as_f64() >= lat["p50_ms"].as_f64());
    let stages: Vec<&str> =
        p["stages"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(stages, ["input", "decide", "plan", "act", "record", "flush"]);
    assert!(p["rss_bytes"].as_u64().unwrap() > 0);
    assert_eq!(p["batchers"]["batches"], v["batches"]);
    assert_eq!(p["write_behind"]["writes_dropped"], 0);
    assert_eq!(p["write_behind"]["store_calls"], v["store_calls"]);
    assert_eq!(p["pathfinding"]["threads"], 2);
    assert_eq!(p["pathfinding"]["solved"], v["paths_solved"]);

    let out = run(&[&args[..], &["--storage", "none", "--quiet", "--json"]].concat());
    let v = last_json(&out);
    assert!(v["performance"]["batchers"].is_null() && v["performance"]["write_behind"].is_null(), "{v}");
    assert!(!String::from_utf8_lossy(&out.stdout).lines().any(|l| l.starts_with("tick ")));
}
