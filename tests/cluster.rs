//! Issue 17's acceptance: the `cluster` example with 4 regions and 20k NPCs walking across
//! borders for 60 s, a region process SIGKILLed every 10 s and restarted, one region frozen
//! (SIGSTOP) past its lease while a new process takes it over, then thawed. At every sampled
//! moment the live regions' worlds are disjoint and within their ownership rows; at the end
//! they cover every NPC exactly once, each region's world equals its rows, and the thawed
//! zombie's writes were refused by the fence (it stopped itself); every restarted region
//! resumed its tick from its newest sync. With Redis
//! (`TERRARIUM_TEST_REDIS_URL`, feature `redis`) the regions also run the border feed: ghosts
//! are shown, and never of a region's own NPCs.
//!
//! Needs PostgreSQL (`TERRARIUM_TEST_PG_URL`); runs in a schema of its own, dropped after.
//! Long (about 75 s): its own nextest group (`.config/nextest.toml`).
#![cfg(feature = "postgres")]

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{example, last_json};
use terrarium::persistence::testing::{service_url, unique_name};

struct DropSchema {
    url: String,
    schema: String,
}

impl Drop for DropSchema {
    fn drop(&mut self) {
        let (url, schema) = (self.url.clone(), self.schema.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
                tokio::spawn(conn);
                // The schema name is ours (unique_name: a checked identifier).
                client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await
            })
        })
        .join();
    }
}

/// GETs `/metrics` from the supervisor until it shows `regions` regions' owned NPCs (the
/// regions report once a second), for up to 40 s; the last text or error.
fn scrape_when_every_region_reported(port: u16, regions: u32) -> Result<String, String> {
    let until = Instant::now() + Duration::from_secs(40);
    let mut last = Err("never answered".to_owned());
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(500));
        let got = std::net::TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
            let mut text = String::new();
            s.read_to_string(&mut text)?;
            Ok(text)
        });
        last = got.map_err(|e| e.to_string());
        if let Ok(text) = &last
            && (0..regions).all(|r| text.contains(&format!("terrarium_region_owned_npcs{{region=\"{r}\"}}")))
        {
            break;
        }
    }
    last
}

#[test]
fn four_regions_survive_kills_and_a_frozen_zombie_without_losing_or_duplicating_an_npc() {
    let Some(url) = service_url("TERRARIUM_TEST_PG_URL") else { return };
    let schema = unique_name();
    let _drop = DropSchema { url: url.clone(), schema: schema.clone() };
    let redis =
        std::env::var("TERRARIUM_TEST_REDIS_URL").ok().filter(|u| cfg!(feature = "redis") && !u.is_empty());
    let mut cmd = Command::new(example("cluster"));
    if let Some(redis) = &redis {
        cmd.args(["--redis-url", redis, "--redis-prefix", &format!("{schema}:")]);
    }
    // The supervisor's /metrics (feature prometheus), read once while the regions run.
    let metrics_port = cfg!(feature = "prometheus").then(|| {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        l.local_addr().expect("bound").port()
    });
    if let Some(port) = metrics_port {
        cmd.args(["--metrics-addr", &format!("127.0.0.1:{port}")]);
    }
    let child = cmd
        .args(["--regions", "2x2", "--npcs", "20000", "--seconds", "60", "--tick-hz", "20"])
        .args(["--kill-every", "10", "--freeze-at", "25", "--sample-every", "3", "--seed", "17"])
        .args(["--world-size", "200", "--lease-ms", "2000", "--json"])
        .args(["--database-url", &url, "--schema", &schema])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cluster starts");
    // Scraped beside, while this thread drains the pipes (a full pipe would stall the cluster).
    let scraper =
        metrics_port.map(|port| std::thread::spawn(move || scrape_when_every_region_reported(port, 4)));
    let out = child.wait_with_output().expect("cluster runs");
    let metrics = scraper.map(|t| t.join().expect("the scraper does not panic"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cluster failed: {}\n{stdout}\n{stderr}", out.status);
    let s = last_json(&stdout);
    eprintln!("{s}");
    assert_eq!(s["npcs_start"], 20_000);
    assert_eq!(s["npcs_end"], 20_000, "{s}");
    assert_eq!(s["npcs_lost"], 0, "{s}");
    assert_eq!(s["npcs_duplicated"], 0, "{s}");
    assert_eq!(s["sample_violations"], 0, "{s}");
    assert!(s["samples"].as_u64().unwrap() >= 10, "the worlds were compared at too few moments: {s}");
    assert_eq!(s["rows_equal_worlds"], true, "a region's world differs from its rows: {s}");
    assert!(s["region_restarts"].as_u64().unwrap() >= 5, "{s}");
    assert_eq!(s["zombie_fenced"], true, "the thawed zombie did not stop on a refused write: {s}");
    assert!(s["fenced_writes_rejected"].as_u64().unwrap() >= 1, "{s}");
    assert!(s["handoffs"].as_u64().unwrap() > 1_000, "NPCs hardly crossed borders: {s}");
    assert_eq!(s["anomalies"], 0, "{s}");
    assert_eq!(s["tick_ms_p99"].as_array().map(Vec::len), Some(4));
    // A restarted region resumes its tick from its newest sync (never from 0), and its world's
    // clock went on from there.
    let per_region = |key: &str| -> Vec<u64> {
        s[key]
            .as_array()
            .unwrap_or_else(|| panic!("{key} missing: {s}"))
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect()
    };
    let (restarts, resumed, ticks) = (
        per_region("restarts_per_region"),
        per_region("resumed_tick_per_region"),
        per_region("tick_per_region"),
    );
    for r in 0..4 {
        if restarts[r] > 0 {
            assert!(
                resumed[r] > 0,
                "region {r} restarted {} times but began again at tick 0: {s}",
                restarts[r]
            );
        }
        assert!(ticks[r] > resumed[r], "region {r} did not tick on from its resumed tick: {s}");
    }
    if redis.is_some() {
        assert!(s["ghosts_max"].as_u64().unwrap() > 0, "no region showed a ghost: {s}");
        assert!(s["ghost_batches_received"].as_u64().unwrap() > 100, "{s}");
        assert_eq!(s["ghost_violations"], 0, "a region showed its own NPC as a ghost: {s}");
    }
    if let Some(text) = metrics {
        let text = text.expect("/metrics answered with every region's figures");
        for region in 0..4 {
            for family in [
                "terrarium_region_owned_npcs",
                "terrarium_region_lease_epoch",
                "terrarium_region_handoffs_in_total",
                "terrarium_region_resumed_tick",
            ] {
                assert!(
                    text.contains(&format!("{family}{{region=\"{region}\"}}")),
                    "{family} of {region}:\n{text}"
                );
            }
        }
        for family in
            text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next())
        {
            assert!(text.contains(&format!("# HELP {family} ")), "{family} has no HELP line");
        }
    }
    for key in ["handoffs_per_s", "max_handoff_ms", "tick_ms_p99", "fenced_writes_rejected"] {
        assert!(s.get(key).is_some(), "summary key {key} missing");
    }
}

/// A region process killed (dropped without finishing: its lease runs out on PostgreSQL's
/// clock) is replaced by one that resumes the region's world tick from its last committed sync
/// (`region_state`, written with the NPCs' rows in one fenced transaction) and ticks on from
/// it; a process that finished hands its successor exactly its last tick and its NPCs' state.
/// Before `region_state`, every restart began again at tick 0.
#[test]
fn a_region_restarted_after_a_kill_resumes_its_tick_from_its_last_sync() {
    use terrarium::engine::{EngineConfig, NpcId, Position};
    use terrarium::persistence::PostgresConfig;
    use terrarium::persistence::region::{RegionId, RegionStore};
    use terrarium::region::{RegionGrid, RegionOptions, RegionProcess, seed_rows};

    let Some(url) = service_url("TERRARIUM_TEST_PG_URL") else { return };
    let schema = unique_name();
    let _drop = DropSchema { url: url.clone(), schema: schema.clone() };
    let pg = PostgresConfig { url: url.clone(), schema: schema.clone(), ..PostgresConfig::default() };
    let grid = RegionGrid::new(2, 1, [0.0, 0.0], [200.0, 100.0]).unwrap();
    let mut engine = EngineConfig { seed: 3, tick_hz: 20, threads: 1, ..EngineConfig::default() };
    engine.world.min = [0.0, 0.0, 0.0];
    engine.world.max = [200.0, 64.0, 100.0];
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut admin = rt.block_on(RegionStore::connect(&pg)).unwrap();
    rt.block_on(admin.seed(&seed_rows(&grid, 400, engine.world.min, engine.world.max, 3))).unwrap();
    let opts = RegionOptions {
        grid,
        region: RegionId(0),
        engine,
        postgres: pg,
        lease_ttl: Duration::from_millis(600),
        // A sync starts on every step the previous one has finished.
        sync_every: Duration::ZERO,
        poll_every: Duration::from_millis(100),
        max_moves_per_tx: 1000,
        holder: "cluster resume test".to_owned(),
        ghosts: None,
    };
    let positions = |p: &RegionProcess| -> Vec<(u64, [f32; 3])> {
        let mut v: Vec<_> = p
            .engine()
            .world()
            .iter_entities()
            .filter_map(|e| Some((e.get::<NpcId>()?.0, *e.get::<Position>()?)))
            .map(|(id, p)| (id, [p.x, p.y, p.z]))
            .collect();
        v.sort_by_key(|(id, _)| *id);
        v
    };

    let mut first = RegionProcess::start(opts.clone()).unwrap();
    assert_eq!(first.engine().clock().tick, 0, "a new world starts at tick 0");
    let until = Instant::now() + Duration::from_secs(20);
    while first.stats().syncs < 3 || first.engine().clock().tick < 40 {
        assert!(Instant::now() < until, "the first process synced too little: {:?}", first.stats());
        first.step().unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    let ran = first.engine().clock().tick;
    drop(first); // killed: no finish, its lease is left to run out

    let mut second = RegionProcess::start(opts.clone()).unwrap();
    let resumed = second.engine().clock().tick;
    assert!(resumed > 0, "the restarted region began again at tick 0 instead of its last sync's tick");
    assert!(resumed <= ran, "resumed at tick {resumed}, past the {ran} ticks that ran");
    for _ in 0..10 {
        second.step().unwrap();
    }
    assert_eq!(second.engine().clock().tick, resumed + 10, "it ticks on from the tick it resumed");
    second.finish().unwrap();
    let (end, world) = (second.engine().clock().tick, positions(&second));
    drop(second);

    let third = RegionProcess::start(opts).unwrap();
    assert_eq!(third.engine().clock().tick, end, "a finished process's last tick is where the next resumes");
    assert_eq!(positions(&third), world, "and its NPCs are where it left them");
}
