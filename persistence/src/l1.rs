//! `L1Cache<S>`: NPC records kept in process (moka), in front of everything else.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::{
    Clock, L1Config, NpcFilter, NpcPage, NpcRecord, Page, PositionRow, Storage, StorageError, TokioClock,
    WriteBatch,
};

/// Hits and misses of one cache tier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TierMetrics {
    /// Reads answered by the tier.
    pub hits: u64,
    /// Reads the tier could not answer.
    pub misses: u64,
}

impl TierMetrics {
    /// `hits / (hits + misses)`, 0 when nothing was read.
    #[must_use]
    pub fn hit_rate(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 { 0.0 } else { self.hits as f64 / total as f64 }
    }
}

/// Counters of an [`L1Cache`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct L1Metrics {
    /// `get_npc` hits and misses.
    pub tier: TierMetrics,
    /// Records dropped because a write changed or removed them.
    pub invalidations: u64,
    /// Cached records whose position a write updated in place.
    pub position_updates: u64,
    /// Records held now (approximate: moka counts lazily).
    pub entries: u64,
}

#[derive(Clone)]
struct Entry {
    record: Arc<NpcRecord>,
    expires: Instant,
}

/// An in-process, bounded cache of NPC records with a time-to-live, for `get_npc`.
///
/// A hit costs a moka lookup and a clone of the record (see `examples/storage_bench.rs`,
/// `l1_hit_ns`). Listings and full loads pass through. A write goes to the inner store first;
/// then records it upserted or removed are dropped, and positions it wrote are copied into the
/// records still cached, so a read after a write sees the write. A record read from the inner
/// store while a write was in flight is not kept (it may be older than the write). Records
/// written by *other* processes are seen once the TTL has run out.
///
/// With `capacity = 0` the cache is off and every call passes through.
///
/// # Examples
/// ```
/// use terrarium_persistence::{BatchId, L1Cache, L1Config, MemoryStore, Storage, WriteBatch};
/// use terrarium_persistence::testing::npc;
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let store = L1Cache::new(MemoryStore::default(), L1Config::default());
/// let batch = WriteBatch { id: BatchId { run: 1, seq: 1 }, npcs: vec![npc(7, 0)], ..Default::default() };
/// store.write(&[batch]).await?;
/// store.get_npc(7).await?; // miss: read from the store, then kept
/// store.get_npc(7).await?; // hit
/// assert_eq!((store.metrics().tier.hits, store.metrics().tier.misses), (1, 1));
/// # Ok::<(), terrarium_persistence::StorageError>(()) }).unwrap();
/// ```
pub struct L1Cache<S> {
    inner: S,
    cache: Option<moka::sync::Cache<u64, Entry>>,
    ttl: Duration,
    clock: Arc<dyn Clock>,
    /// Bumped after every write, before its invalidations, so a read that overlapped a write can
    /// tell and drop what it cached.
    generation: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    invalidations: AtomicU64,
    position_updates: AtomicU64,
}

impl<S> std::fmt::Debug for L1Cache<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L1Cache").field("ttl", &self.ttl).field("metrics", &self.metrics()).finish()
    }
}

impl<S> L1Cache<S> {
    /// Wraps `inner`, timing with tokio's clock.
    pub fn new(inner: S, cfg: L1Config) -> Self {
        Self::with_clock(inner, cfg, Arc::new(TokioClock))
    }

    /// Wraps `inner`, reading the time from `clock` for expiry.
    pub fn with_clock(inner: S, cfg: L1Config, clock: Arc<dyn Clock>) -> Self {
        let ttl = Duration::from_millis(cfg.ttl_ms);
        // moka's own TTL only frees memory; expiry as seen by readers follows `clock`.
        let cache = (cfg.capacity > 0)
            .then(|| moka::sync::Cache::builder().max_capacity(cfg.capacity).time_to_live(ttl).build());
        Self {
            inner,
            cache,
            ttl,
            clock,
            generation: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
            position_updates: AtomicU64::new(0),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Counters so far.
    pub fn metrics(&self) -> L1Metrics {
        L1Metrics {
            tier: TierMetrics {
                hits: self.hits.load(Ordering::Relaxed),
                misses: self.misses.load(Ordering::Relaxed),
            },
            invalidations: self.invalidations.load(Ordering::Relaxed),
            position_updates: self.position_updates.load(Ordering::Relaxed),
            entries: self.cache.as_ref().map_or(0, moka::sync::Cache::entry_count),
        }
    }

    /// Drops one NPC's record.
    pub fn invalidate(&self, id: u64) {
        if let Some(cache) = &self.cache {
            cache.invalidate(&id);
            self.invalidations.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The cached record, if fresh.
    fn lookup(&self, cache: &moka::sync::Cache<u64, Entry>, id: u64) -> Option<NpcRecord> {
        let entry = cache.get(&id)?;
        if self.clock.now() < entry.expires {
            Some(NpcRecord::clone(&entry.record))
        } else {
            cache.invalidate(&id);
            None
        }
    }

    /// When a write moves far more NPCs than the cache holds (a world of a million walkers),
    /// looking each one up costs more than starting cold: drop every entry instead (moka does it
    /// lazily, in O(1) here). Returns true when it did.
    fn drop_all_if_cheaper(&self, cache: &moka::sync::Cache<u64, Entry>, batches: &[WriteBatch]) -> bool {
        let touched: usize = batches.iter().map(|b| b.positions.len() + b.npcs.len() + b.removed.len()).sum();
        let held = cache.entry_count();
        if touched < 65_536 || (touched as u64) < 4 * held {
            return false;
        }
        cache.invalidate_all();
        self.invalidations.fetch_add(held, Ordering::Relaxed);
        true
    }

    /// Applies a write to the cached records: drops upserted and removed ones, moves the others.
    fn after_write(&self, cache: &moka::sync::Cache<u64, Entry>, batches: &[WriteBatch]) {
        if self.drop_all_if_cheaper(cache, batches) {
            return;
        }
        let mut latest: HashMap<u64, PositionRow> = HashMap::new();
        for b in batches {
            for id in b.npcs.iter().map(|r| r.id).chain(b.removed.iter().copied()) {
                cache.invalidate(&id);
                latest.remove(&id);
                self.invalidations.fetch_add(1, Ordering::Relaxed);
            }
            for p in &b.positions {
                if cache.contains_key(&p.npc_id) {
                    latest.insert(p.npc_id, *p);
                }
            }
        }
        for (id, p) in latest {
            if let Some(entry) = cache.get(&id)
                && p.tick >= entry.record.updated_tick
            {
                let mut record = NpcRecord::clone(&entry.record);
                (record.x, record.y, record.z, record.updated_tick) = (p.x, p.y, p.z, p.tick);
                cache.insert(id, Entry { record: Arc::new(record), expires: entry.expires });
                self.position_updates.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl<S: Storage> Storage for L1Cache<S> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn write(&self, batches: &[WriteBatch]) -> Result<(), StorageError> {
        let result = self.inner.write(batches).await;
        if let Some(cache) = &self.cache {
            self.generation.fetch_add(1, Ordering::AcqRel);
            if result.is_ok() {
                self.after_write(cache, batches);
            } else {
                // A failed write may still have been stored: forget everything it touched.
                if self.drop_all_if_cheaper(cache, batches) {
                    return result;
                }
                for b in batches {
                    for id in b.npcs.iter().map(|r| r.id).chain(b.removed.iter().copied()) {
                        self.invalidate(id);
                    }
                    for p in &b.positions {
                        cache.invalidate(&p.npc_id);
                    }
                }
            }
        }
        result
    }

    async fn get_npc(&self, id: u64) -> Result<Option<NpcRecord>, StorageError> {
        let Some(cache) = &self.cache else { return self.inner.get_npc(id).await };
        if let Some(hit) = self.lookup(cache, id) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(hit));
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let before = self.generation.load(Ordering::Acquire);
        let found = self.inner.get_npc(id).await?;
        if let Some(record) = &found {
            let expires = self.clock.now() + self.ttl;
            cache.insert(id, Entry { record: Arc::new(record.clone()), expires });
            // A write that finished while we read may have invalidated before our insert.
            if self.generation.load(Ordering::Acquire) != before {
                cache.invalidate(&id);
            }
        }
        Ok(found)
    }

    async fn list_npcs(&self, filter: &NpcFilter, page: Page) -> Result<NpcPage, StorageError> {
        self.inner.list_npcs(filter, page).await
    }

    async fn load_npcs(&self) -> Result<Vec<NpcRecord>, StorageError> {
        self.inner.load_npcs().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Fault, FaultyStore, npc};
    use crate::{BatchId, MemoryStore};

    type Store = L1Cache<FaultyStore<MemoryStore>>;

    fn store(capacity: u64) -> Store {
        L1Cache::new(FaultyStore::new(MemoryStore::default()), L1Config { capacity, ttl_ms: 1000 })
    }

    fn batch(seq: u64) -> WriteBatch {
        WriteBatch { id: BatchId { run: 1, seq }, tick: seq, ..Default::default() }
    }

    async fn seed(s: &Store, ids: impl IntoIterator<Item = u64>) {
        let npcs = ids.into_iter().map(|id| npc(id, 0)).collect();
        s.write(&[WriteBatch { npcs, ..batch(1) }]).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn second_read_is_a_hit_until_the_ttl_runs_out() {
        let s = store(100);
        seed(&s, [1]).await;
        assert_eq!(s.get_npc(1).await.unwrap().unwrap().id, 1);
        assert_eq!(s.get_npc(1).await.unwrap().unwrap().id, 1);
        assert_eq!(s.inner().reads().gets, 1);
        tokio::time::advance(Duration::from_millis(1000)).await;
        s.get_npc(1).await.unwrap();
        assert_eq!(s.inner().reads().gets, 2, "expired record read again");
        assert_eq!(s.metrics().tier, TierMetrics { hits: 1, misses: 2 });
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_moving_far_more_npcs_than_cached_starts_the_cache_cold() {
        let s = store(100);
        seed(&s, [1, 2]).await;
        s.get_npc(1).await.unwrap();
        s.get_npc(2).await.unwrap();
        let positions: Vec<PositionRow> =
            (1..=70_000).map(|id| PositionRow { npc_id: id, tick: 9, x: 4.0, y: 0.0, z: 0.0 }).collect();
        s.write(&[WriteBatch { positions, ..batch(2) }]).await.unwrap();
        let before = s.inner().reads().gets;
        let one = s.get_npc(1).await.unwrap().unwrap();
        assert_eq!((one.x, one.updated_tick), (4.0, 9), "the new position, read from the store");
        assert_eq!(s.inner().reads().gets, before + 1, "the cached record was dropped, not served stale");
    }

    #[tokio::test(start_paused = true)]
    async fn writes_invalidate_upserted_and_removed_and_move_cached_positions() {
        let s = store(100);
        seed(&s, [1, 2, 3]).await;
        for id in 1..=3 {
            s.get_npc(id).await.unwrap();
        }
        let mut changed = npc(1, 0);
        changed.status = "mining".into();
        let pos = PositionRow { npc_id: 3, tick: 5, x: 9.0, y: 1.0, z: 2.0 };
        s.write(&[WriteBatch { npcs: vec![changed], removed: vec![2], positions: vec![pos], ..batch(2) }])
            .await
            .unwrap();
        assert_eq!(s.get_npc(1).await.unwrap().unwrap().status, "mining");
        assert_eq!(s.get_npc(2).await.unwrap(), None);
        let three = s.get_npc(3).await.unwrap().unwrap();
        assert_eq!((three.x, three.updated_tick), (9.0, 5));
        assert_eq!(s.inner().reads().gets, 3 + 2, "1 and 2 were read again, 3 was updated in place");
        assert_eq!(s.metrics().position_updates, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_write_drops_what_it_touched() {
        let s = store(100);
        seed(&s, [1]).await;
        s.get_npc(1).await.unwrap();
        s.inner().inject(1, Fault::Timeout);
        let pos = PositionRow { npc_id: 1, tick: 5, x: 9.0, y: 1.0, z: 2.0 };
        assert!(s.write(&[WriteBatch { positions: vec![pos], ..batch(2) }]).await.is_err());
        s.get_npc(1).await.unwrap();
        assert_eq!(s.inner().reads().gets, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_that_overlaps_a_write_is_not_kept() {
        let s = Arc::new(store(100));
        seed(&s, [1]).await;
        s.inner().inject(1, Fault::SlowReply(Duration::from_millis(10)));
        let reader = {
            let s = Arc::clone(&s);
            tokio::spawn(async move { s.get_npc(1).await })
        };
        tokio::task::yield_now().await;
        let mut changed = npc(1, 0);
        changed.status = "fleeing".into();
        s.write(&[WriteBatch { npcs: vec![changed], ..batch(2) }]).await.unwrap();
        reader.await.unwrap().unwrap();
        assert_eq!(s.get_npc(1).await.unwrap().unwrap().status, "fleeing");
    }

    #[tokio::test(start_paused = true)]
    async fn capacity_zero_passes_everything_through() {
        let s = store(0);
        seed(&s, [1]).await;
        s.get_npc(1).await.unwrap();
        s.get_npc(1).await.unwrap();
        assert_eq!(s.inner().reads().gets, 2);
        assert_eq!(s.metrics().tier, TierMetrics::default());
    }

    #[tokio::test(start_paused = true)]
    async fn it_stays_bounded() {
        let s = store(50);
        seed(&s, 1..=500).await;
        for id in 1..=500 {
            s.get_npc(id).await.unwrap();
        }
        s.cache.as_ref().unwrap().run_pending_tasks();
        assert!(s.metrics().entries <= 50, "{}", s.metrics().entries);
    }
}
