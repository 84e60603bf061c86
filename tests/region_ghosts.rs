//! Issue 17's border feed against the real PostgreSQL and Redis (`TERRARIUM_TEST_PG_URL`,
//! `TERRARIUM_TEST_REDIS_URL`): two region processes side by side (2x1), NPCs standing near
//! the border and far from it. Each region shows exactly its neighbour's border NPCs as ghosts,
//! never its own; ghosts are not in its world nor in its ownership rows (after a sync); once the
//! neighbour stops publishing they expire. A region whose Redis is down ticks on, counting the
//! failed publishes. The region's figures reach the performance snapshot and its Prometheus
//! text. Each test owns a schema and a channel prefix.
#![cfg(all(feature = "postgres", feature = "redis"))]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use terrarium::engine::EngineConfig;
use terrarium::perf::Performance;
use terrarium::persistence::PostgresConfig;
use terrarium::persistence::region::{NpcState, OwnerRow, RegionId, RegionStore};
use terrarium::persistence::testing::{service_url, unique_name};
use terrarium::region::{GhostOptions, RegionGrid, RegionOptions, RegionProcess};

struct Schema {
    url: String,
    name: String,
}

impl Drop for Schema {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
                tokio::spawn(conn);
                // unique_name: a checked identifier of ours.
                client.batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE")).await
            })
        })
        .join();
    }
}

const MARGIN: f32 = 8.0;
const TTL: Duration = Duration::from_millis(600);

fn grid() -> RegionGrid {
    RegionGrid::new(2, 1, [0.0, 0.0], [200.0, 100.0]).unwrap()
}

fn options(pg: &PostgresConfig, region: u32, redis_url: &str, prefix: &str) -> RegionOptions {
    let mut engine = EngineConfig { seed: 5, tick_hz: 20, threads: 1, ..EngineConfig::default() };
    engine.world.min = [0.0, 0.0, 0.0];
    engine.world.max = [200.0, 64.0, 100.0];
    // Standing still: the NPCs stay where the test put them.
    engine.npc.wander_speed = 0.0;
    RegionOptions {
        grid: grid(),
        region: RegionId(region),
        engine,
        postgres: pg.clone(),
        lease_ttl: Duration::from_millis(3000),
        sync_every: Duration::from_millis(200),
        poll_every: Duration::from_millis(200),
        max_moves_per_tx: 1000,
        holder: format!("region_ghosts test {region}"),
        ghosts: Some(GhostOptions {
            url: redis_url.to_owned(),
            key_prefix: prefix.to_owned(),
            margin: MARGIN,
            publish_every: Duration::from_millis(100),
            ttl: TTL,
        }),
    }
}

fn row(npc: u64, x: f32, z: f32) -> OwnerRow<NpcState> {
    OwnerRow {
        npc,
        region: grid().region_at(x, z),
        seq: 0,
        adopted: true,
        state: NpcState { role: "scout".into(), swarm: 0, position: [x, 1.0, z], velocity: [0.0; 3] },
    }
}

/// Region 0 owns 1..=20 at x 97 (3 blocks from the border) and 21..=40 at x 20; region 1 owns
/// 41..=45 at x 104 and 46..=50 at x 150.
fn world() -> Vec<OwnerRow<NpcState>> {
    let mut rows = Vec::new();
    for i in 0..20u64 {
        let z = 2.0 + 4.5 * i as f32;
        rows.push(row(1 + i, 97.0, z));
        rows.push(row(21 + i, 20.0, z));
    }
    for i in 0..5u64 {
        rows.push(row(41 + i, 104.0, 10.0 + 10.0 * i as f32));
        rows.push(row(46 + i, 150.0, 10.0 + 10.0 * i as f32));
    }
    rows
}

fn setup(pg_url: &str) -> (Schema, PostgresConfig, tokio::runtime::Runtime, RegionStore) {
    let name = unique_name();
    let schema = Schema { url: pg_url.to_owned(), name: name.clone() };
    let pg = PostgresConfig { url: pg_url.to_owned(), schema: name, ..PostgresConfig::default() };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut admin = rt.block_on(RegionStore::connect(&pg)).unwrap();
    rt.block_on(admin.seed(&world())).unwrap();
    (schema, pg, rt, admin)
}

fn ghost_ids(p: &RegionProcess) -> BTreeSet<u64> {
    p.ghosts().iter().map(|g| g.npc).collect()
}

#[test]
fn border_npcs_are_read_only_ghosts_in_the_neighbour_and_expire_when_the_feed_stops() {
    let Some(pg_url) = service_url("TERRARIUM_TEST_PG_URL") else { return };
    let Some(redis_url) = service_url("TERRARIUM_TEST_REDIS_URL") else { return };
    let (_schema, pg, rt, admin) = setup(&pg_url);
    let prefix = format!("{}:", unique_name());
    let mut a = RegionProcess::start(options(&pg, 0, &redis_url, &prefix)).unwrap();
    let mut b = RegionProcess::start(options(&pg, 1, &redis_url, &prefix)).unwrap();

    let near_a: BTreeSet<u64> = (1..=20).collect();
    let near_b: BTreeSet<u64> = (41..=45).collect();
    let until = Instant::now() + Duration::from_secs(10);
    while (ghost_ids(&b) != near_a || ghost_ids(&a) != near_b) && Instant::now() < until {
        a.step().unwrap();
        b.step().unwrap();
        std::thread::sleep(Duration::from_millis(25));
    }
    assert_eq!(ghost_ids(&b), near_a, "region 1 shows region 0's border NPCs, and only those");
    assert_eq!(ghost_ids(&a), near_b, "region 0 shows region 1's border NPCs, and only those");
    for g in b.ghosts().iter() {
        assert_eq!(g.from, RegionId(0));
        assert!((g.position.x - 97.0).abs() < 1e-3, "{g:?}");
    }
    // Read-only: not in the neighbour's world, not in its rows, even after it synced.
    for _ in 0..10 {
        a.step().unwrap();
        b.step().unwrap();
        std::thread::sleep(Duration::from_millis(25));
    }
    b.finish().unwrap();
    assert_eq!(b.npcs(), (41..=50).collect::<Vec<_>>(), "ghosts are not entities of the world");
    assert_eq!(b.owned_rows().unwrap(), (41..=50).collect::<Vec<_>>(), "ghosts are not stored as owned");
    let summary = rt.block_on(admin.summary()).unwrap();
    assert_eq!(summary.per_region, vec![(RegionId(0), 40), (RegionId(1), 10)]);
    assert_eq!(summary.handoffs, 0, "nothing crossed: ghosts never move ownership");
    let sb = b.stats();
    assert_eq!(sb.ghosts, 20);
    assert!(sb.ghost_batches_received > 0 && sb.ghost_batches_published > 0, "{sb:?}");
    assert_eq!(sb.ghost_publish_errors, 0, "{sb:?}");

    // The same figures in the performance snapshot and (feature prometheus) its /metrics text.
    let perf = Performance::new();
    b.attach_performance(perf.clone());
    let snap = perf.snapshot();
    assert_eq!(snap.regions.len(), 1);
    let f = &snap.regions[0];
    assert_eq!((f.region, f.owned_npcs, f.ghosts, f.ghost_sources), (1, 10, 20, 1), "{f:?}");
    assert!(f.epoch >= 1 && f.lease_age_ms < 3000.0 && f.lease_renewals + 1 > 0, "{f:?}");
    assert_eq!((f.handoffs_in, f.handoffs_out), (0, 0));
    #[cfg(feature = "prometheus")]
    {
        let exporter = terrarium::perf::prometheus::PrometheusExporter::new();
        exporter.record(&snap);
        let text = exporter.render();
        for line in [
            "terrarium_region_owned_npcs{region=\"1\"} 10",
            "terrarium_region_ghosts{region=\"1\"} 20",
            "terrarium_region_handoffs_in_total{region=\"1\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
        }
        assert!(text.contains("terrarium_region_handoff_latency_seconds{region=\"1\",quantile=\"0.99\"}"));
        assert!(text.contains(&format!("terrarium_region_lease_epoch{{region=\"1\"}} {}", f.epoch)));
        // Every family has its help text.
        for family in
            text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next())
        {
            assert!(text.contains(&format!("# HELP {family} ")), "{family} has no HELP line");
        }
    }

    // Region 0 stops publishing (its process ends): its ghosts leave region 1 within the TTL.
    drop(a);
    let stopped = Instant::now();
    while !b.ghosts().is_empty() && stopped.elapsed() < Duration::from_secs(5) {
        b.step().unwrap();
        std::thread::sleep(Duration::from_millis(25));
    }
    let gone_after = stopped.elapsed();
    assert!(b.ghosts().is_empty(), "ghosts outlived their feed");
    assert!(gone_after >= TTL / 2, "ghosts went before their TTL: {gone_after:?}");
    assert_eq!(b.stats().ghosts_expired, 20);
    assert_eq!(b.npcs().len(), 10, "expiring ghosts touches nothing owned");
}

#[test]
fn a_region_whose_redis_is_down_ticks_on_without_ghosts_and_counts_it() {
    let Some(pg_url) = service_url("TERRARIUM_TEST_PG_URL") else { return };
    let (_schema, pg, _rt, _admin) = setup(&pg_url);
    // Nothing listens on port 1.
    let mut a = RegionProcess::start(options(&pg, 0, "redis://127.0.0.1:1", "down:")).unwrap();
    let t = Instant::now();
    for _ in 0..40 {
        a.step().expect("a Redis that is down is not fatal");
        std::thread::sleep(Duration::from_millis(25));
    }
    let s = a.stats();
    assert_eq!(s.ticks, 40);
    assert!(t.elapsed() < Duration::from_secs(8), "the feed held the tick up: {:?}", t.elapsed());
    assert!(s.ghost_publish_errors > 0, "failed publishes are counted: {s:?}");
    assert_eq!((s.ghosts, s.ghost_batches_published), (0, 0), "{s:?}");
    assert_eq!(a.npcs().len(), 40);
}
