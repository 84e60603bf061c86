//! `MemoryStore`: the in-process store. The embedded default (no server, nothing on disk) and the
//! test double of every adapter test.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use rustc_hash::FxHashMap;

use crate::{
    BatchId, Checkpoint, EntityKind, EventRow, NpcFilter, NpcPage, NpcRecord, Page, PositionRow, SmolStr,
    Storage, StorageError, WriteBatch,
};

/// What a [`MemoryStore`] keeps and counts.
#[derive(Debug, Default)]
struct Inner {
    /// Current state as upserted; the position in it may be older than `last_position`'s,
    /// which reads lay over it (so a position row costs one array store, not a tree lookup).
    npcs: Registry,
    last_position: PositionTable,
    metrics: HashMap<(EntityKind, u64, String), (f64, u64)>,
    events: VecDeque<EventRow>,
    event_ids: HashMap<u64, ()>,
    applied: HashMap<u64, u64>,
    checkpoint: Option<Checkpoint>,
    stats: MemoryStats,
}

/// Counters of a [`MemoryStore`]: what was written, in rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Successful `write` calls.
    pub write_calls: u64,
    /// Batches applied (a replayed batch is not counted twice).
    pub batches: u64,
    /// Batches skipped because they had been applied before.
    pub duplicate_batches: u64,
    /// Position rows stored.
    pub position_rows: u64,
    /// Metric rows stored.
    pub metric_rows: u64,
    /// Event rows stored (an event id seen before is not stored again).
    pub event_rows: u64,
    /// Current-state upserts.
    pub npc_upserts: u64,
    /// Current-state deletions.
    pub npc_removals: u64,
}

/// In-process store. It is the default backend and the test double.
///
/// Keeps every NPC's current state, the last position of each NPC, running metric totals and
/// the newest `event_capacity` events (older ones are counted, then let go: this store is not a
/// history). Idempotent by batch id, like every store.
///
/// # Examples
/// ```
/// use terrarium_persistence::{BatchId, MemoryStore, PositionRow, Storage, WriteBatch};
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let store = MemoryStore::default();
/// let row = PositionRow { npc_id: 7, tick: 3, x: 1.0, y: 0.0, z: 2.0 };
/// let batch = WriteBatch { id: BatchId { run: 1, seq: 1 }, tick: 3, positions: vec![row], ..Default::default() };
/// store.write(std::slice::from_ref(&batch)).await?;
/// store.write(std::slice::from_ref(&batch)).await?; // a replay changes nothing
/// assert_eq!(store.last_position(7), Some(row));
/// assert_eq!(store.stats().position_rows, 1);
/// # Ok::<(), terrarium_persistence::StorageError>(()) }).unwrap();
/// ```
#[derive(Debug)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    event_capacity: usize,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::with_event_capacity(100_000)
    }
}

impl MemoryStore {
    /// A store that keeps the newest `event_capacity` events.
    #[must_use]
    pub fn with_event_capacity(event_capacity: usize) -> Self {
        Self { inner: Mutex::new(Inner::default()), event_capacity }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock can only come from a bug in this file; the data is
        // plain maps, still usable, so recover rather than poison every later call.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What has been written so far.
    #[must_use]
    pub fn stats(&self) -> MemoryStats {
        self.lock().stats
    }

    /// The last position stored for an NPC.
    #[must_use]
    pub fn last_position(&self, npc_id: u64) -> Option<PositionRow> {
        self.lock().last_position.get(npc_id)
    }

    /// Running total and sample count of a metric.
    #[must_use]
    pub fn metric(&self, kind: EntityKind, entity_id: u64, name: &str) -> Option<(f64, u64)> {
        self.lock().metrics.get(&(kind, entity_id, name.to_string())).copied()
    }

    /// The events kept, oldest first.
    #[must_use]
    pub fn events(&self) -> Vec<EventRow> {
        self.lock().events.iter().cloned().collect()
    }

    /// Highest batch `seq` applied for `run`.
    #[must_use]
    pub fn applied_seq(&self, run: u64) -> Option<u64> {
        self.lock().applied.get(&run).copied()
    }

    /// Keeps `checkpoint` as the newest (this store keeps one; it is gone with the process).
    pub fn save_checkpoint(&self, checkpoint: Checkpoint) {
        self.lock().checkpoint = Some(checkpoint);
    }

    /// The newest checkpoint and the current state after it (see [`crate::ResumePoint`]).
    #[must_use]
    pub fn resume_point(&self) -> Option<crate::ResumePoint> {
        let inner = self.lock();
        let checkpoint = inner.checkpoint.clone()?;
        let ids = inner.npcs.iter_from(0).map(|(id, _)| id).collect();
        let newer = inner
            .npcs
            .iter_from(0)
            .map(|(id, c)| inner.current(id, c))
            .filter(|r| r.updated_tick > checkpoint.tick)
            .collect();
        let batches_committed =
            checkpoint.seq == 0 || inner.applied.get(&checkpoint.run).is_some_and(|&m| m >= checkpoint.seq);
        Some(crate::ResumePoint { checkpoint, ids, newer, batches_committed })
    }

    /// Forgets everything stored (a new world starts here).
    pub fn wipe(&self) {
        let mut inner = self.lock();
        let stats = inner.stats;
        *inner = Inner { stats, ..Inner::default() };
    }

    fn apply(&self, inner: &mut Inner, b: &WriteBatch) {
        let BatchId { run, seq } = b.id;
        if inner.applied.get(&run).is_some_and(|&done| seq <= done) {
            inner.stats.duplicate_batches += 1;
            return;
        }
        inner.applied.insert(run, seq);
        inner.stats.batches += 1;
        for r in &b.npcs {
            inner.npcs.upsert(r);
            inner.stats.npc_upserts += 1;
        }
        for p in &b.positions {
            inner.last_position.insert(*p);
        }
        inner.stats.position_rows += b.positions.len() as u64;
        for m in &b.metrics {
            let e = inner.metrics.entry((m.entity_kind, m.entity_id, m.name.clone())).or_insert((0.0, 0));
            e.0 += m.value;
            e.1 += u64::from(m.samples);
        }
        inner.stats.metric_rows += b.metrics.len() as u64;
        for ev in &b.events {
            if inner.event_ids.insert(ev.event_id, ()).is_some() {
                continue;
            }
            inner.events.push_back(ev.clone());
            inner.stats.event_rows += 1;
            if inner.events.len() > self.event_capacity
                && let Some(old) = inner.events.pop_front()
            {
                inner.event_ids.remove(&old.event_id);
            }
        }
        for id in &b.removed {
            if inner.npcs.remove(*id) {
                inner.stats.npc_removals += 1;
            }
            inner.last_position.remove(*id);
        }
    }
}

impl Inner {
    /// The stored record with the last stored position laid over it.
    fn current(&self, id: u64, c: &Compact) -> NpcRecord {
        let mut r = self.npcs.expand(id, c);
        if let Some(p) = self.last_position.get(r.id)
            && p.tick >= r.updated_tick
        {
            (r.x, r.y, r.z, r.updated_tick) = (p.x, p.y, p.z, p.tick);
        }
        r
    }
}

/// An upserted record, compact: role and status interned, the inventory kept beside it (most
/// NPCs carry nothing). 32 bytes where an `NpcRecord` takes 112 (role and status inline, up to
/// 23 bytes each, and the inventory's `Vec`).
#[derive(Debug, Clone, Copy)]
struct Compact {
    updated_tick: u64,
    x: f32,
    y: f32,
    z: f32,
    swarm: u32,
    role: u16,
    status: u16,
    health: u16,
    agent: bool,
    /// The NPC has an entry in [`Registry::inventories`].
    carries: bool,
}

/// Role and status names, each stored once.
#[derive(Debug, Default)]
struct Names {
    names: Vec<SmolStr>,
    index: HashMap<SmolStr, u16>,
}

impl Names {
    fn find(&self, name: &str) -> Option<u16> {
        self.index.get(name).copied()
    }

    /// The name's number; past 65,535 distinct names (never, in practice) the last one is
    /// reused rather than panicking, which only blurs filters on the overflow names.
    fn intern(&mut self, name: &str) -> u16 {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        let Ok(i) = u16::try_from(self.names.len()) else { return u16::MAX };
        self.names.push(SmolStr::new(name));
        self.index.insert(SmolStr::new(name), i);
        i
    }

    fn name(&self, i: u16) -> SmolStr {
        self.names.get(usize::from(i)).cloned().unwrap_or_default()
    }
}

/// Upserted records by id: a dense array for the low ids the engine hands out, a tree above
/// it. Every id in `sparse` is at least `dense.len()`, so dense then sparse is id order.
#[derive(Debug, Default)]
struct Registry {
    dense: Vec<Option<Compact>>,
    sparse: BTreeMap<u64, Compact>,
    /// Inventories that are not empty, by id.
    inventories: FxHashMap<u64, Box<[(u16, u16)]>>,
    names: Names,
}

impl Registry {
    /// How far past the end of the dense array an id may be and still extend it.
    const SLACK: u64 = 1 << 16;

    fn upsert(&mut self, r: &NpcRecord) {
        let carries = !r.inventory.is_empty();
        if carries {
            self.inventories.insert(r.id, r.inventory.clone().into_boxed_slice());
        } else {
            self.inventories.remove(&r.id);
        }
        let c = Compact {
            updated_tick: r.updated_tick,
            x: r.x,
            y: r.y,
            z: r.z,
            swarm: r.swarm,
            role: self.names.intern(&r.role),
            status: self.names.intern(&r.status),
            health: r.health,
            agent: r.agent,
            carries,
        };
        self.insert(r.id, c);
    }

    fn expand(&self, id: u64, c: &Compact) -> NpcRecord {
        NpcRecord {
            id,
            role: self.names.name(c.role),
            status: self.names.name(c.status),
            swarm: c.swarm,
            agent: c.agent,
            x: c.x,
            y: c.y,
            z: c.z,
            health: c.health,
            inventory: if c.carries {
                self.inventories.get(&id).map(|i| i.to_vec()).unwrap_or_default()
            } else {
                Vec::new()
            },
            updated_tick: c.updated_tick,
        }
    }

    fn get(&self, id: u64) -> Option<&Compact> {
        match usize::try_from(id).ok().filter(|&i| i < self.dense.len()) {
            Some(i) => self.dense[i].as_ref(),
            None => self.sparse.get(&id),
        }
    }

    fn insert(&mut self, id: u64, c: Compact) {
        if id < self.dense.len() as u64 + Self::SLACK {
            let i = usize::try_from(id).expect("dense ids fit in usize");
            if i >= self.dense.len() {
                self.dense.resize(i + 1, None);
                // Keep every sparse id above the dense array.
                let above = self.sparse.split_off(&(self.dense.len() as u64));
                for (k, v) in std::mem::replace(&mut self.sparse, above) {
                    self.dense[usize::try_from(k).expect("below the dense length")] = Some(v);
                }
            }
            self.dense[i] = Some(c);
        } else {
            self.sparse.insert(id, c);
        }
    }

    /// True when there was a record.
    fn remove(&mut self, id: u64) -> bool {
        self.inventories.remove(&id);
        match usize::try_from(id).ok().filter(|&i| i < self.dense.len()) {
            Some(i) => self.dense[i].take().is_some(),
            None => self.sparse.remove(&id).is_some(),
        }
    }

    /// Records with id ≥ `start`, by id.
    fn iter_from(&self, start: u64) -> impl Iterator<Item = (u64, &Compact)> {
        let from = usize::try_from(start).unwrap_or(usize::MAX).min(self.dense.len());
        let dense = self.dense[from..]
            .iter()
            .enumerate()
            .filter_map(move |(k, c)| c.as_ref().map(|c| ((from + k) as u64, c)));
        dense.chain(self.sparse.range(start..).map(|(&id, c)| (id, c)))
    }
}

/// Last position per NPC: dense columns for the low ids the engine hands out (20 bytes an NPC;
/// an empty slot has tick [`PositionTable::EMPTY`]), a map above them.
#[derive(Debug, Default)]
struct PositionTable {
    ticks: Vec<u64>,
    xyz: Vec<[f32; 3]>,
    sparse: FxHashMap<u64, PositionRow>,
}

impl PositionTable {
    /// How far past the end of the dense columns an id may be and still extend them.
    const SLACK: u64 = 1 << 16;
    /// The tick of a free slot (no position is stored at tick `u64::MAX`).
    const EMPTY: u64 = u64::MAX;

    fn get(&self, id: u64) -> Option<PositionRow> {
        match usize::try_from(id).ok().filter(|&i| i < self.ticks.len() && self.ticks[i] != Self::EMPTY) {
            Some(i) => {
                let [x, y, z] = self.xyz[i];
                Some(PositionRow { npc_id: id, tick: self.ticks[i], x, y, z })
            }
            // Also an id the dense columns grew past after it was stored here.
            None => self.sparse.get(&id).copied(),
        }
    }

    fn insert(&mut self, row: PositionRow) {
        if row.npc_id < self.ticks.len() as u64 + Self::SLACK && row.tick != Self::EMPTY {
            let i = usize::try_from(row.npc_id).expect("dense ids fit in usize");
            if i >= self.ticks.len() {
                self.ticks.resize(i + 1, Self::EMPTY);
                self.xyz.resize(i + 1, [0.0; 3]);
            }
            (self.ticks[i], self.xyz[i]) = (row.tick, [row.x, row.y, row.z]);
            if !self.sparse.is_empty() {
                self.sparse.remove(&row.npc_id);
            }
        } else {
            self.sparse.insert(row.npc_id, row);
        }
    }

    fn remove(&mut self, id: u64) {
        if let Some(i) = usize::try_from(id).ok().filter(|&i| i < self.ticks.len()) {
            self.ticks[i] = Self::EMPTY;
        }
        self.sparse.remove(&id);
    }
}

impl Storage for MemoryStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn write(&self, batches: &[WriteBatch]) -> Result<(), StorageError> {
        let mut inner = self.lock();
        for b in batches {
            self.apply(&mut inner, b);
        }
        inner.stats.write_calls += 1;
        Ok(())
    }

    async fn get_npc(&self, id: u64) -> Result<Option<NpcRecord>, StorageError> {
        let inner = self.lock();
        Ok(inner.npcs.get(id).map(|c| inner.current(id, c)))
    }

    async fn list_npcs(&self, filter: &NpcFilter, page: Page) -> Result<NpcPage, StorageError> {
        let inner = self.lock();
        let limit = page.limit.clamp(1, Page::MAX_LIMIT) as usize;
        let start = page.after.map_or(0, |a| a.saturating_add(1));
        let mut npcs = Vec::with_capacity(limit);
        let mut more = false;
        if page.after == Some(u64::MAX) {
            return Ok(NpcPage { npcs, next: None });
        }
        // A filter on a name nobody has matches nothing.
        let want = |name: &Option<String>| name.as_deref().map(|n| inner.npcs.names.find(n).ok_or(()));
        let (Ok(status), Ok(role)) = (want(&filter.status).transpose(), want(&filter.role).transpose())
        else {
            return Ok(NpcPage { npcs, next: None });
        };
        for (id, c) in inner.npcs.iter_from(start).filter(|(_, c)| {
            status.is_none_or(|s| c.status == s)
                && role.is_none_or(|r| c.role == r)
                && filter.swarm.is_none_or(|w| c.swarm == w)
        }) {
            if npcs.len() == limit {
                more = true;
                break;
            }
            npcs.push(inner.current(id, c));
        }
        let next = if more { npcs.last().map(|r| r.id) } else { None };
        Ok(NpcPage { npcs, next })
    }

    async fn load_npcs(&self) -> Result<Vec<NpcRecord>, StorageError> {
        let inner = self.lock();
        Ok(inner.npcs.iter_from(0).map(|(id, c)| inner.current(id, c)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().build().unwrap()
    }

    fn npc(id: u64, status: &str, swarm: u32) -> NpcRecord {
        NpcRecord { status: status.into(), ..crate::testing::npc(id, swarm) }
    }

    #[test]
    fn replayed_and_older_batches_are_skipped() {
        rt().block_on(async {
            let s = MemoryStore::default();
            let b = |seq, x| WriteBatch {
                id: BatchId { run: 9, seq },
                tick: seq,
                positions: vec![PositionRow { npc_id: 1, tick: seq, x, y: 0.0, z: 0.0 }],
                ..Default::default()
            };
            s.write(&[b(1, 1.0), b(2, 2.0)]).await.unwrap();
            s.write(&[b(1, 1.0)]).await.unwrap();
            s.write(&[b(2, 2.0), b(3, 3.0)]).await.unwrap();
            let st = s.stats();
            assert_eq!((st.batches, st.duplicate_batches, st.position_rows), (3, 2, 3));
            assert_eq!(s.last_position(1).unwrap().x, 3.0);
            assert_eq!(s.applied_seq(9), Some(3));
        });
    }

    #[test]
    fn reads_show_the_last_stored_position_over_the_upserted_record() {
        rt().block_on(async {
            let s = MemoryStore::default();
            let far = PositionTable::SLACK * 10; // beyond the dense table
            let upsert = WriteBatch {
                id: BatchId { run: 1, seq: 1 },
                npcs: vec![npc(3, "idle", 0), npc(far, "idle", 0)],
                ..Default::default()
            };
            let moved = |seq, tick| WriteBatch {
                id: BatchId { run: 1, seq },
                tick,
                positions: [3, far]
                    .map(|npc_id| PositionRow { npc_id, tick, x: tick as f32, y: 0.0, z: 0.0 })
                    .to_vec(),
                ..Default::default()
            };
            s.write(&[upsert, moved(2, 5), moved(3, 9)]).await.unwrap();
            for id in [3, far] {
                let r = s.get_npc(id).await.unwrap().unwrap();
                assert_eq!((r.x, r.updated_tick), (9.0, 9), "npc {id}");
            }
            assert_eq!(s.load_npcs().await.unwrap()[0].x, 9.0);
            s.write(&[WriteBatch {
                id: BatchId { run: 1, seq: 4 },
                removed: vec![3, far],
                ..Default::default()
            }])
            .await
            .unwrap();
            assert!(s.last_position(3).is_none() && s.last_position(far).is_none());
            assert!(s.get_npc(3).await.unwrap().is_none());
        });
    }

    #[test]
    fn listing_filters_and_pages_by_id() {
        rt().block_on(async {
            let s = MemoryStore::default();
            let npcs = (1..=250)
                .map(|i| npc(i, if i % 2 == 0 { "idle" } else { "moving" }, (i % 3) as u32))
                .collect();
            s.write(&[WriteBatch { id: BatchId { run: 1, seq: 1 }, npcs, ..Default::default() }])
                .await
                .unwrap();
            let filter = NpcFilter { status: Some("idle".into()), ..Default::default() };
            let mut seen = vec![];
            let mut page = Page::first(40);
            loop {
                let p = s.list_npcs(&filter, page).await.unwrap();
                assert!(p.npcs.len() <= 40);
                seen.extend(p.npcs.iter().map(|r| r.id));
                match p.next {
                    Some(after) => page = Page { after: Some(after), limit: 40 },
                    None => break,
                }
            }
            assert_eq!(seen, (1..=250).filter(|i| i % 2 == 0).collect::<Vec<_>>());
            let big = s.list_npcs(&NpcFilter::default(), Page { after: None, limit: 1000 }).await.unwrap();
            assert_eq!(big.npcs.len(), 100, "limit is capped at 100");
        });
    }

    #[test]
    fn records_keep_their_names_and_order_when_the_dense_table_grows_past_a_sparse_id() {
        rt().block_on(async {
            let s = MemoryStore::default();
            let far = Registry::SLACK + 10; // sparse at first
            let mut rec = npc(far, "working", 4);
            rec.inventory = vec![(3, 7)];
            let write = |seq, npcs| WriteBatch { id: BatchId { run: 1, seq }, npcs, ..Default::default() };
            s.write(&[write(1, vec![rec.clone()])]).await.unwrap();
            // Ids up to past `far` make the dense table grow over it.
            let step = Registry::SLACK / 2;
            let many: Vec<_> = (1..=4).map(|k| npc(k * step, "idle", 1)).collect();
            s.write(&[write(2, many)]).await.unwrap();
            assert_eq!(s.get_npc(far).await.unwrap(), Some(rec.clone()));
            let ids: Vec<u64> = s.load_npcs().await.unwrap().iter().map(|r| r.id).collect();
            assert_eq!(ids, [step, 2 * step, far, 3 * step, 4 * step]);
            let working = NpcFilter { status: Some("working".into()), ..Default::default() };
            assert_eq!(s.list_npcs(&working, Page::first(10)).await.unwrap().npcs, vec![rec]);
            let nobody = NpcFilter { role: Some("nobody".into()), ..Default::default() };
            assert!(s.list_npcs(&nobody, Page::first(10)).await.unwrap().npcs.is_empty());
            assert_eq!(std::mem::size_of::<Option<Compact>>(), 32);
        });
    }

    #[test]
    fn events_are_stored_once_per_id_and_bounded() {
        rt().block_on(async {
            let s = MemoryStore::with_event_capacity(3);
            let ev = |id| EventRow {
                event_id: id,
                correlation_id: 0,
                event_type: "npc_spawned".into(),
                entity_kind: EntityKind::Npc,
                entity_id: id,
                tick: 1,
                time_ms: 50,
                payload: vec![],
                compressed: false,
                count: 1,
            };
            let events = vec![ev(1), ev(2), ev(2), ev(3), ev(4)];
            s.write(&[WriteBatch { id: BatchId { run: 1, seq: 1 }, events, ..Default::default() }])
                .await
                .unwrap();
            assert_eq!(s.stats().event_rows, 4);
            assert_eq!(s.events().iter().map(|e| e.event_id).collect::<Vec<_>>(), [2, 3, 4]);
        });
    }

    #[test]
    fn a_position_stored_above_the_dense_columns_is_found_after_they_grow_past_it() {
        let mut t = PositionTable::default();
        let row = |npc_id, tick| PositionRow { npc_id, tick, x: tick as f32, y: 0.0, z: 0.0 };
        let far = PositionTable::SLACK + 5;
        t.insert(row(far, 1));
        t.insert(row(1, 1));
        assert_eq!(t.get(far), Some(row(far, 1)), "in the map");
        t.insert(row(far - 10, 2)); // the dense columns now reach past `far`
        assert_eq!(t.get(far), Some(row(far, 1)), "still found");
        t.insert(row(far, 3));
        assert_eq!(t.get(far), Some(row(far, 3)), "a newer row wins");
        t.remove(far);
        assert_eq!(t.get(far), None);
        assert_eq!(t.get(1), Some(row(1, 1)));
        assert_eq!(t.get(2), None, "an empty slot");
        // What a million NPCs cost here: 20 bytes of position, 32 of record.
        assert_eq!(std::mem::size_of::<Option<Compact>>(), 32);
    }

    #[test]
    fn an_inventory_is_kept_beside_the_record_and_goes_with_it() {
        let mut r = Registry::default();
        let mut rec = npc(4, "idle", 1);
        rec.inventory = vec![(3, 7)];
        r.upsert(&rec);
        let c = *r.get(4).unwrap();
        assert_eq!(r.expand(4, &c).inventory, [(3, 7)]);
        rec.inventory.clear();
        r.upsert(&rec);
        let c = *r.get(4).unwrap();
        assert!(r.expand(4, &c).inventory.is_empty() && r.inventories.is_empty());
        rec.inventory = vec![(1, 1)];
        r.upsert(&rec);
        assert!(r.remove(4));
        assert!(r.inventories.is_empty() && r.get(4).is_none());
    }
}
