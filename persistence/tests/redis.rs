//! RedisCache against a real Redis (`TERRARIUM_TEST_REDIS_URL`, started by scripts/services.sh),
//! over a counting MemoryStore. Each test uses a key prefix of its own and deletes it.
#![cfg(feature = "redis")]

mod common;

use std::time::Duration;

use common::{batch, event, npc, position, service_url, unique_name};
use fred::prelude::{Builder, ClientLike, Config, KeysInterface};
use terrarium_persistence::testing::FaultyStore;
use terrarium_persistence::{
    MemoryStore, NpcFilter, Page, RedisCache, RedisConfig, Storage, Tier, TierMetrics, WriteBatch,
};

const REDIS: &str = "TERRARIUM_TEST_REDIS_URL";

type Cache = RedisCache<FaultyStore<MemoryStore>>;

async fn cache(url: &str) -> Cache {
    let cfg =
        RedisConfig { url: url.into(), key_prefix: format!("{}:", unique_name()), ..Default::default() };
    RedisCache::connect(FaultyStore::new(MemoryStore::default()), &cfg).await.unwrap()
}

/// A plain client for looking at keys directly.
async fn raw(url: &str) -> fred::clients::Client {
    let client = Builder::from_config(Config::from_url(url).unwrap()).build().unwrap();
    client.init().await.unwrap();
    client
}

fn key(c: &Cache, prefix: &str, kind: &str, id: u64) -> String {
    format!("{prefix}{}:{kind}:{id}", c.metrics().epoch)
}

#[tokio::test]
async fn reads_are_cache_aside() {
    let Some(url) = service_url(REDIS) else { return };
    let c = cache(&url).await;
    c.write(&[WriteBatch { npcs: vec![npc(1), npc(2)], ..batch(1, 1) }]).await.unwrap();
    assert_eq!(c.get_npc(1).await.unwrap(), Some(npc(1)));
    assert_eq!(c.get_npc(1).await.unwrap(), Some(npc(1)));
    assert_eq!(c.get_npc(1).await.unwrap(), Some(npc(1)));
    assert_eq!(c.inner().reads().gets, 1, "one miss, then hits");
    assert_eq!(c.get_npc(99).await.unwrap(), None);
    assert_eq!(c.inner().reads().gets, 2, "absent NPCs are not cached");
    let m = c.metrics();
    assert_eq!(m.warm, TierMetrics { hits: 2, misses: 2 });
    assert_eq!(m.errors, 0);
    c.clear_prefix().await.unwrap();
}

#[tokio::test]
async fn writes_invalidate_by_key_and_positions_are_written_through() {
    let Some(url) = service_url(REDIS) else { return };
    let c = cache(&url).await;
    c.write(&[WriteBatch { npcs: (1..=3).map(npc).collect(), ..batch(1, 1) }]).await.unwrap();
    for id in 1..=3 {
        c.get_npc(id).await.unwrap();
    }
    let mut changed = npc(1);
    changed.status = "fleeing".into();
    c.write(&[WriteBatch {
        npcs: vec![changed.clone()],
        removed: vec![2],
        positions: vec![position(3, 5), position(3, 4)],
        ..batch(1, 2)
    }])
    .await
    .unwrap();
    assert_eq!(c.get_npc(1).await.unwrap(), Some(changed), "upsert invalidated its key");
    assert_eq!(c.get_npc(2).await.unwrap(), None, "removal invalidated its key");
    let three = c.get_npc(3).await.unwrap().unwrap();
    assert_eq!((three.x, three.updated_tick), (position(3, 5).x, 5), "newest position overlaid");
    assert_eq!(c.inner().reads().gets, 3 + 2, "3 was served from Redis");
    assert_eq!(c.metrics().hot.hits, 1);

    // Writing a position cut the cached record's TTL to the hot tier's.
    let r = raw(&url).await;
    let ttl: i64 = r.ttl(key(&c, &cache_prefix(&c), "npc", 3)).await.unwrap();
    assert!((1..=60).contains(&ttl), "npc:3 ttl {ttl}");
    let ttl: i64 = r.ttl(key(&c, &cache_prefix(&c), "npc", 1)).await.unwrap();
    // npc:1 was invalidated by the upsert and cached again by the read after it (awaited).
    assert!(ttl > 60, "untouched records keep the warm tier (-2: the key is missing): {ttl}");
    c.clear_prefix().await.unwrap();
}

#[tokio::test]
async fn swarm_tag_invalidation_drops_records_and_pages_of_that_swarm() {
    let Some(url) = service_url(REDIS) else { return };
    let c = cache(&url).await;
    c.write(&[WriteBatch { npcs: (1..=10).map(npc).collect(), ..batch(1, 1) }]).await.unwrap();
    for id in 1..=10 {
        c.get_npc(id).await.unwrap();
    }
    let swarm1 = NpcFilter { swarm: Some(1), ..Default::default() };
    let page = c.list_npcs(&swarm1, Page::first(10)).await.unwrap();
    assert_eq!(page.npcs.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 6]);
    c.list_npcs(&swarm1, Page::first(10)).await.unwrap();
    let before = c.inner().reads();
    assert_eq!(before.lists, 1, "second listing was a hit");

    assert!(c.invalidate_swarm(1).await);
    for id in 1..=10 {
        c.get_npc(id).await.unwrap();
    }
    c.list_npcs(&swarm1, Page::first(10)).await.unwrap();
    let after = c.inner().reads();
    assert_eq!(after.gets - before.gets, 2, "only swarm 1 (NPCs 1 and 6) was read again");
    assert_eq!(after.lists, 2, "the swarm's page was dropped too");
    assert!(c.metrics().invalidated >= 3);
    c.clear_prefix().await.unwrap();
}

#[tokio::test]
async fn listing_pages_are_cached_and_dropped_when_npcs_change() {
    let Some(url) = service_url(REDIS) else { return };
    let c = cache(&url).await;
    c.write(&[WriteBatch { npcs: (1..=30).map(npc).collect(), ..batch(1, 1) }]).await.unwrap();
    let idle = NpcFilter { status: Some("idle".into()), ..Default::default() };
    let first = c.list_npcs(&idle, Page::first(5)).await.unwrap();
    assert_eq!(c.list_npcs(&idle, Page::first(5)).await.unwrap(), first);
    assert_eq!(c.inner().reads().lists, 1);
    // A different page or filter is a different key.
    c.list_npcs(&idle, Page { after: first.next, limit: 5 }).await.unwrap();
    assert_eq!(c.inner().reads().lists, 2);

    // Positions alone leave pages cached, and show through them.
    c.write(&[WriteBatch { positions: vec![position(4, 9)], ..batch(1, 2) }]).await.unwrap();
    let moved = c.list_npcs(&idle, Page::first(5)).await.unwrap();
    assert_eq!(c.inner().reads().lists, 2);
    assert_eq!(moved.npcs[0].id, 4);
    assert_eq!((moved.npcs[0].x, moved.npcs[0].updated_tick), (position(4, 9).x, 9));

    // A status change drops every page (tag `lists`).
    let mut busy = npc(4);
    busy.status = "working".into();
    c.write(&[WriteBatch { npcs: vec![busy], ..batch(1, 3) }]).await.unwrap();
    let now = c.list_npcs(&idle, Page::first(5)).await.unwrap();
    assert_eq!(c.inner().reads().lists, 3);
    assert!(now.npcs.iter().all(|r| r.id != 4));
    c.clear_prefix().await.unwrap();
}

#[tokio::test]
async fn warming_caches_the_first_npcs() {
    let Some(url) = service_url(REDIS) else { return };
    let c = cache(&url).await;
    // Written behind the cache's back, as a previous run would have.
    c.inner()
        .inner()
        .write(&[WriteBatch { npcs: (1..=250).map(npc).collect(), ..batch(1, 1) }])
        .await
        .unwrap();
    assert_eq!(c.warm(180).await.unwrap(), 180);
    for id in 1..=180 {
        assert_eq!(c.get_npc(id).await.unwrap(), Some(npc(id)));
    }
    assert_eq!(c.inner().reads().gets, 0);
    c.get_npc(181).await.unwrap();
    assert_eq!(c.inner().reads().gets, 1);
    c.clear_prefix().await.unwrap();
}

#[tokio::test]
async fn events_are_published_on_one_channel_per_type() {
    let Some(url) = service_url(REDIS) else { return };
    let c = cache(&url).await;
    let mut spawned = c.subscribe(&["npc_spawned"]).await.unwrap();
    let mut both = c.subscribe(&["npc_spawned", "task_completed"]).await.unwrap();
    let events = vec![
        event(1, "npc_spawned", 1, 0, 1),
        event(2, "task_completed", 1, 0, 1),
        event(3, "npc_spawned", 2, 0, 1),
    ];
    c.write(&[WriteBatch { events: events.clone(), ..batch(1, 1) }]).await.unwrap();
    assert_eq!(next(&mut spawned).await, events[0]);
    assert_eq!(next(&mut spawned).await, events[2]);
    let mut got = vec![next(&mut both).await, next(&mut both).await, next(&mut both).await];
    got.sort_by_key(|e| e.event_id);
    assert_eq!(got, events);
    assert!(tokio::time::timeout(Duration::from_millis(200), spawned.recv()).await.is_err(), "nothing else");
    assert_eq!(c.metrics().published, 3);
    spawned.close().await;
    both.close().await;
    c.clear_prefix().await.unwrap();
}

#[tokio::test]
async fn cold_values_round_trip_and_count() {
    let Some(url) = service_url(REDIS) else { return };
    let c = cache(&url).await;
    let profile = vec![(1u32, 0.25f64), (2, 0.75)];
    assert!(c.put_value(Tier::Cold, "profile:7", &profile).await);
    assert_eq!(c.get_value::<Vec<(u32, f64)>>(Tier::Cold, "profile:7").await, Some(profile));
    assert_eq!(c.get_value::<Vec<(u32, f64)>>(Tier::Cold, "profile:8").await, None);
    assert_eq!(c.metrics().cold, TierMetrics { hits: 1, misses: 1 });
    let r = raw(&url).await;
    let ttl: i64 = r.ttl(format!("{}{}:val:profile:7", cache_prefix(&c), c.metrics().epoch)).await.unwrap();
    assert!((500..=600).contains(&ttl), "cold tier ttl {ttl}");
    c.clear_prefix().await.unwrap();
}

#[tokio::test]
async fn a_corrupt_cached_value_is_a_counted_miss() {
    let Some(url) = service_url(REDIS) else { return };
    let c = cache(&url).await;
    c.write(&[WriteBatch { npcs: vec![npc(1)], ..batch(1, 1) }]).await.unwrap();
    let r = raw(&url).await;
    let _: () =
        r.set(key(&c, &cache_prefix(&c), "npc", 1), vec![0xffu8; 40], None, None, false).await.unwrap();
    assert_eq!(c.get_npc(1).await.unwrap(), Some(npc(1)));
    assert_eq!((c.metrics().decode_errors, c.inner().reads().gets), (1, 1));
    c.clear_prefix().await.unwrap();
}

#[tokio::test]
async fn without_a_server_every_call_goes_to_the_store() {
    // Nothing listens on port 9: the cache starts in bypass and never fails a call.
    let cfg = RedisConfig {
        url: "redis://127.0.0.1:9".into(),
        key_prefix: format!("{}:", unique_name()),
        connect_timeout_ms: 300,
        bypass_ms: 0,
        ..Default::default()
    };
    let c = RedisCache::connect(FaultyStore::new(MemoryStore::default()), &cfg).await.unwrap();
    c.write(&[WriteBatch { npcs: vec![npc(1)], events: vec![event(1, "x", 1, 0, 1)], ..batch(1, 1) }])
        .await
        .unwrap();
    assert_eq!(c.get_npc(1).await.unwrap(), Some(npc(1)));
    assert_eq!(c.list_npcs(&NpcFilter::default(), Page::first(10)).await.unwrap().npcs.len(), 1);
    assert_eq!(c.inner().reads().gets, 1);
    assert!(c.metrics().errors >= 1, "{:?}", c.metrics());
    assert!(!c.put_value(Tier::Cold, "x", &1u8).await);
}

async fn next(s: &mut terrarium_persistence::EventSubscriber) -> terrarium_persistence::EventRow {
    tokio::time::timeout(Duration::from_secs(10), s.recv()).await.unwrap().unwrap().unwrap()
}

/// The prefix `cache()` gave this cache (read back from a key name it reports).
fn cache_prefix(c: &Cache) -> String {
    let channel = c.event_channel("");
    channel.trim_end_matches("events:").to_string()
}

#[tokio::test]
async fn tag_sets_hold_only_keys_that_still_live() {
    // Issue 13 defect 7 (review M10): every listing request (a client picks `after`) added a
    // member to `tag:lists` and `tag:swarm:<n>` and refreshed their TTL, so under steady
    // traffic the sets grew without bound although each page expired after the hot TTL.
    let Some(url) = service_url(REDIS) else { return };
    let cfg = RedisConfig {
        url: url.clone(),
        key_prefix: format!("{}:", unique_name()),
        hot_ttl_s: 1,
        ..Default::default()
    };
    let c = RedisCache::connect(FaultyStore::new(MemoryStore::default()), &cfg).await.unwrap();
    c.write(&[WriteBatch { npcs: (1..=3).map(npc).collect(), ..batch(1, 1) }]).await.unwrap();
    let filter = NpcFilter { swarm: Some(0), ..NpcFilter::default() };
    for after in 0..50 {
        c.list_npcs(&filter, Page { after: Some(after), limit: 10 }).await.unwrap();
    }
    // Past the pages' TTL, one more page trims the expired ones from both tags.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    c.list_npcs(&filter, Page { after: Some(1000), limit: 10 }).await.unwrap();
    let before = c.metrics().invalidated;
    assert!(c.invalidate_lists().await);
    assert_eq!(c.metrics().invalidated - before, 1, "only the live page was still in `lists`");
    let before = c.metrics().invalidated;
    assert!(c.invalidate_swarm(0).await);
    assert!(c.metrics().invalidated - before <= 1, "swarm tag trimmed too");
    c.clear_prefix().await.unwrap();
}
