//! The benchmark examples as their users run them: `flocking` (JSON contract, thread-count
//! independence of `--mode parallel`) and `scaling` (a tiny sweep of every workload writes the CSV and the charts).
//!
//! Each test first brings the example up to date (`cargo build --example`, the same profile
//! and features as the test; a no-op after a full `cargo test`).

mod common;

use std::process::Command;

use common::{example, last_json, run};

/// 5 000 boids are five chunks of the parallel step (1 024 boids each): on 2 and 4 threads
/// they really run on several threads, and must still give the 1-thread checksum.
#[test]
fn flocking_prints_the_json_contract_and_parallel_mode_ignores_the_thread_count() {
    let args = [
        "--boids", "5000", "--extent", "300", "--steps", "20", "--seed", "9", "--mode", "parallel", "--json",
    ];
    let on = |threads: &str| last_json(&run("flocking", &[&args[..], &["--threads", threads]].concat()));
    let (one, two, four) = (on("1"), on("2"), on("4"));
    for key in ["boids", "steps", "mode", "threads", "loop_s", "checksum"] {
        assert!(one.get(key).is_some(), "missing key {key} in {one}");
    }
    assert_eq!(one["boids"], 5000);
    assert_eq!(one["mode"], "parallel");
    assert_eq!((one["threads"].as_u64(), four["threads"].as_u64()), (Some(1), Some(4)));
    assert!(one["loop_s"].as_f64().unwrap() > 0.0);
    assert_eq!(one["checksum"], two["checksum"], "parallel mode depends on the thread count (2)");
    assert_eq!(one["checksum"], four["checksum"], "parallel mode depends on the thread count (4)");

    let faithful = last_json(&run("flocking", &["--boids", "300", "--steps", "20", "--seed", "9", "--json"]));
    assert_eq!(faithful["mode"], "faithful");
    assert_eq!(faithful["threads"], 1);
    let parallel = last_json(&run(
        "flocking",
        &["--boids", "300", "--steps", "20", "--seed", "9", "--mode", "parallel", "--json"],
    ));
    assert_ne!(faithful["checksum"], parallel["checksum"], "the two modes update boids differently");
    let again = last_json(&run("flocking", &["--boids", "300", "--steps", "20", "--seed", "9", "--json"]));
    assert_eq!(faithful["checksum"], again["checksum"], "the same seed gives the same flock");
}

/// The checksums `BENCHMARKS.md` publishes ("seed 42, any machine, any thread count for
/// `parallel`"), pinned: the example must reproduce them. (The library's test,
/// `systems/tests/flocking_parity.rs`, checks them with and without the `parallel` feature.)
#[test]
fn flocking_reproduces_the_checksums_benchmarks_md_publishes() {
    // The 100k case runs once, on 2 threads: the thread count is checked above.
    let cases: [(&str, &[&str], &str); 4] = [
        ("small", &[], "a62d70d605dbee3b"),
        ("large", &["--boids", "400", "--extent", "150", "--vision", "15"], "2ea9f7d93c16d529"),
        ("10k", &["--boids", "10000"], "7735c721ce26b277"),
        (
            "100k parallel, 2 threads",
            &["--boids", "100000", "--extent", "2236", "--mode", "parallel", "--threads", "2"],
            "d4c2edc7ffcd8075",
        ),
    ];
    let benchmarks = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/BENCHMARKS.md")).unwrap();
    for (name, args, want) in cases {
        assert!(
            benchmarks.contains(&format!("`{want}`")),
            "BENCHMARKS.md no longer publishes {want} ({name})"
        );
        let got = last_json(&run("flocking", &[args, &["--json"][..]].concat()));
        assert_eq!(got["checksum"], want, "{name}, parallel feature = {}", cfg!(feature = "parallel"));
    }
}

#[test]
fn flocking_refuses_bad_parameters() {
    let out = Command::new(example("flocking")).args(["--vision", "-1"]).output().expect("example starts");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("vision"), "{err}");
}

#[test]
fn a_tiny_scaling_sweep_of_every_workload_writes_the_csv_and_the_charts() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let stdout = run(
        "scaling",
        &[
            "--min-npcs",
            "1000",
            "--max-npcs",
            "3200",
            "--max-agents",
            "1000",
            "--threads-list",
            "1,2",
            "--ticks",
            "3",
            "--warmup",
            "1",
            "--workloads",
            "movement,batched,agents,flocking",
            "--out",
            out,
        ],
    );
    assert!(stdout.contains("wrote"), "{stdout}");

    let mut csv = csv::Reader::from_path(dir.path().join("scaling.csv")).unwrap();
    let header: Vec<String> = csv.headers().unwrap().iter().map(str::to_string).collect();
    for key in [
        "workload",
        "npcs",
        "threads",
        "tick_ms_mean",
        "tick_ms_p50",
        "ticks_per_sec",
        "bytes_per_npc",
        "warmup",
        "agents",
        "record_flush_ms_mean",
        "rows_written",
    ] {
        assert!(header.iter().any(|h| h == key), "missing column {key}: {header:?}");
    }
    let rows: Vec<csv::StringRecord> = csv.records().map(Result::unwrap).collect();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let of = |workload: &str| -> Vec<&csv::StringRecord> {
        rows.iter().filter(|r| &r[col("workload")] == workload).collect()
    };
    let num = |r: &csv::StringRecord, name: &str| r[col(name)].parse::<f64>().unwrap();
    // Each workload × 2 counts (1000, 3162) × 2 thread counts, each in its own process; agents
    // stop at --max-agents, so only at 1000.
    for (workload, want) in [
        ("movement", &["1000", "1000", "3162", "3162"][..]),
        ("batched", &["1000", "1000", "3162", "3162"]),
        ("agents", &["1000", "1000"]),
        ("flocking", &["1000", "1000", "3162", "3162"]),
    ] {
        let npcs: Vec<&str> = of(workload).iter().map(|r| &r[col("npcs")]).collect();
        assert_eq!(npcs, want, "{workload} rows");
    }
    assert_eq!(rows.len(), 14);
    for r in &rows {
        assert!(num(r, "tick_ms_mean") > 0.0 && num(r, "tick_ms_p50") > 0.0);
        assert!(num(r, "bytes_per_npc") > 0.0);
        assert_eq!(num(r, "warmup"), 1.0, "--warmup applies to every workload");
    }
    for r in of("batched") {
        // Every NPC's registry row at least, plus positions, went through the write-behind.
        assert!(num(r, "rows_written") > num(r, "npcs"), "batched wrote too little: {r:?}");
        assert!(num(r, "record_flush_ms_mean") > 0.0, "batched ticks pay for batching: {r:?}");
    }
    for r in of("movement").into_iter().chain(of("flocking")) {
        assert_eq!((num(r, "rows_written"), num(r, "agents")), (0.0, 0.0), "{r:?}");
    }
    for r in of("agents") {
        assert_eq!(num(r, "agents"), num(r, "npcs"), "every NPC of the agents workload is an agent");
    }

    for chart in ["tick_ms_vs_npcs.png", "ticks_per_sec_vs_threads.png", "bytes_per_npc.png"] {
        let bytes = std::fs::read(dir.path().join(chart)).unwrap();
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{chart} is not a PNG");
        assert!(bytes.len() > 10_000, "{chart} is suspiciously small ({} bytes)", bytes.len());
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["slopes"], serde_json::json!([]), "no slope below 10k NPCs");
    assert!(summary["slopes_note"].as_str().is_some_and(|n| n.contains("10,000")), "{summary}");

    // The slopes, from a CSV with runs where they are computed (10k to 1M NPCs): the median
    // grows as NPCs¹ and the mean as NPCs^½, so the fitted slopes are 1 and ½; runs under 10k
    // NPCs and a workload with one point in range are left out.
    let fitted = tempfile::tempdir().unwrap();
    let template = of("movement")[0].clone();
    let mut w = csv::Writer::from_path(fitted.path().join("scaling.csv")).unwrap();
    w.write_record(&header).unwrap();
    for (workload, npcs) in [
        ("movement", 1_000u64),
        ("movement", 10_000),
        ("movement", 100_000),
        ("movement", 1_000_000),
        ("flocking", 100_000),
    ] {
        let row: Vec<String> = header
            .iter()
            .zip(template.iter())
            .map(|(h, v)| match h.as_str() {
                "workload" => workload.to_string(),
                "npcs" => npcs.to_string(),
                "threads" => "1".to_string(),
                "tick_ms_p50" => (npcs as f64 / 1e4).to_string(),
                "tick_ms_mean" => (npcs as f64 / 1e4).sqrt().to_string(),
                _ => v.to_string(),
            })
            .collect();
        w.write_record(&row).unwrap();
    }
    w.flush().unwrap();
    run("scaling", &["--replot", "--out", fitted.path().to_str().unwrap()]);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fitted.path().join("summary.json")).unwrap()).unwrap();
    let slopes = summary["slopes"].as_array().unwrap();
    assert_eq!(slopes.len(), 1, "{summary}");
    assert!(summary.get("slopes_note").is_none(), "{summary}");
    let s = &slopes[0];
    assert_eq!(
        (s["workload"].as_str(), s["threads"].as_u64(), s["points"].as_u64()),
        (Some("movement"), Some(1), Some(3)),
        "{s}"
    );
    assert_eq!((s["from_npcs"].as_u64(), s["to_npcs"].as_u64()), (Some(10_000), Some(1_000_000)), "{s}");
    assert!((s["slope"].as_f64().unwrap() - 1.0).abs() < 1e-9, "{s}");
    assert!((s["slope_mean"].as_f64().unwrap() - 0.5).abs() < 1e-9, "{s}");

    // --replot draws the charts again from the CSV alone, measuring nothing.
    for chart in ["tick_ms_vs_npcs.png", "ticks_per_sec_vs_threads.png", "bytes_per_npc.png", "summary.json"]
    {
        std::fs::remove_file(dir.path().join(chart)).unwrap();
    }
    let again = run("scaling", &["--replot", "--out", out]);
    assert!(again.contains("agents") && again.contains("batched"), "{again}");
    for chart in ["tick_ms_vs_npcs.png", "ticks_per_sec_vs_threads.png", "bytes_per_npc.png", "summary.json"]
    {
        assert!(dir.path().join(chart).is_file(), "--replot did not write {chart}");
    }
}

#[test]
fn scaling_refuses_an_empty_sweep() {
    let out = Command::new(example("scaling"))
        .args(["--min-npcs", "5000", "--max-npcs", "1000"])
        .output()
        .expect("example starts");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--min-npcs"));
}

#[test]
fn pathfind_prints_the_json_contract_and_every_path_is_optimal() {
    let map = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/maps/arena2.map");
    let scen = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/maps/arena2.map.scen");
    for threads in ["1", "2"] {
        let v = last_json(&run(
            "pathfind",
            &["--map", map, "--scen", scen, "--every", "9", "--threads", threads, "--json"],
        ));
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = ["map", "scenarios", "optimal", "scen_per_s", "mean_us", "p99_us", "threads"];
        want.sort_unstable();
        assert_eq!(keys, want, "exactly the contract's keys");
        assert_eq!(v["map"], "arena2.map");
        assert_eq!(v["scenarios"], 104, "every 9th of 929, counting from the first");
        assert_eq!(v["optimal"], v["scenarios"]);
        assert!(v["scen_per_s"].as_f64().unwrap() > 0.0 && v["p99_us"].as_f64().unwrap() > 0.0);
        assert_eq!(v["threads"].as_u64(), threads.parse().ok());
    }
    let baseline = last_json(&run(
        "pathfind",
        &["--map", map, "--scen", scen, "--every", "50", "--method", "astar", "--json"],
    ));
    assert_eq!(baseline["optimal"], baseline["scenarios"], "the A* baseline is exact too");
}

#[test]
fn pathfind_names_the_line_of_a_malformed_map() {
    let dir = tempfile::tempdir().unwrap();
    let map = dir.path().join("bad.map");
    std::fs::write(&map, "type octile\nheight 2\nwidth 3\nmap\n...\n.x.\n").unwrap();
    let scen = dir.path().join("bad.map.scen");
    std::fs::write(&scen, "version 1\n").unwrap();
    let out = Command::new(example("pathfind"))
        .args(["--map", map.to_str().unwrap(), "--scen", scen.to_str().unwrap()])
        .output()
        .expect("example starts");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 6, column 2"), "{err}");
    assert!(err.contains("bad.map"), "the error names the file: {err}");
}

/// A scenario whose optimal length is wrong is reported, and the run exits 1 after its summary.
#[test]
fn pathfind_fails_when_a_path_is_not_optimal() {
    let dir = tempfile::tempdir().unwrap();
    let map = dir.path().join("open.map");
    std::fs::write(&map, "type octile\nheight 2\nwidth 3\nmap\n...\n...\n").unwrap();
    let scen = dir.path().join("open.map.scen");
    // From (0,0) to (2,0) is 2 steps; the file claims 1.5.
    std::fs::write(&scen, "version 1\n0\topen.map\t3\t2\t0\t0\t2\t0\t1.5\n").unwrap();
    let out = Command::new(example("pathfind"))
        .args(["--map", map.to_str().unwrap(), "--scen", scen.to_str().unwrap(), "--json"])
        .output()
        .expect("example starts");
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let summary = last_json(&String::from_utf8(out.stdout).unwrap());
    assert_eq!((summary["scenarios"].as_u64(), summary["optimal"].as_u64()), (Some(1), Some(0)));
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 of 1 paths were not optimal"));
}

#[test]
fn mining_colony_prints_its_summary_and_the_world_does_not_depend_on_threads() {
    let args = ["--agents", "200", "--ticks", "120", "--seed", "3", "--json"];
    let one = last_json(&run("mining_colony", &[&args[..], &["--threads", "1"]].concat()));
    let two = last_json(&run("mining_colony", &[&args[..], &["--threads", "2"]].concat()));
    for key in [
        "agents",
        "ticks",
        "ticks_per_sec",
        "tick_ms_p50",
        "tick_ms_p99",
        "ore_mined",
        "paths_solved",
        "path_failures",
        "replans",
        "world_hash",
    ] {
        assert!(one.get(key).is_some(), "missing key {key} in {one}");
    }
    assert_eq!((one["agents"].as_u64(), one["ticks"].as_u64()), (Some(200), Some(120)));
    assert!(one["paths_solved"].as_u64().unwrap() > 0);
    assert!(one["ore_mined"]["coal"].as_u64().is_some());
    assert_eq!(one["world_hash"], two["world_hash"], "the colony depends on the thread count");
    assert_eq!(one["ore_mined"], two["ore_mined"]);
}
