//! The streaming hub: its own view of where every NPC is, updated from the tick's deltas, and
//! one frame per client cut from the grid cells its area of interest covers.
//!
//! Per view the work is a hash update per changed NPC, two counting sorts of the changes by
//! cell, and for each client a scan of the changes in its cells only; the whole-view index a
//! reset needs is built only in views where some client needs one.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use terrarium::engine::WorldBounds;

use super::{Aoi, Clients, Frame, Inbox, Offered, ViewDelta, Wire};
use crate::error::ServerError;
use crate::protocol::NpcKind;
use crate::stats::ServerStats;

/// The running hub thread.
pub(crate) struct HubThread {
    handle: JoinHandle<()>,
    inbox: Arc<Inbox>,
}

impl HubThread {
    pub(crate) fn start(
        inbox: Arc<Inbox>,
        clients: Arc<Clients>,
        stats: Arc<ServerStats>,
        bounds: WorldBounds,
        cell: f32,
    ) -> Result<Self, ServerError> {
        let mut hub = Hub::new(Arc::clone(&clients), stats, Grid::new(&bounds, cell));
        let inbox2 = Arc::clone(&inbox);
        let handle = std::thread::Builder::new()
            .name("terrarium-stream".into())
            .spawn(move || {
                while !inbox2.is_closed() {
                    if let Some(delta) = inbox2.take(Duration::from_millis(200)) {
                        let started = Instant::now();
                        let delta = hub.apply(delta);
                        hub.fan_out(delta.tick);
                        inbox2.give_back(delta);
                        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                        hub.stats.stream_frame(us, hub.view.len());
                    }
                }
            })
            .map_err(|source| ServerError::Thread { name: "terrarium-stream", source })?;
        Ok(Self { handle, inbox })
    }

    /// Stops the hub (frames not yet cut are dropped: clients are closing anyway).
    pub(crate) fn stop(self) {
        self.inbox.close();
        if self.handle.join().is_err() {
            tracing::error!("the streaming hub panicked");
        }
    }
}

/// One NPC's change in a view.
#[derive(Debug, Clone, Copy)]
struct Change {
    id: u64,
    old: Option<[f32; 3]>,
    new: Option<[f32; 3]>,
    /// Its role and status now (before, for a removal).
    kind: NpcKind,
    /// It was in the view with another role or status.
    kind_changed: bool,
}

impl Change {
    /// `id` now at `new` with `kind`, given what the view held (`None`: it appears); `None`
    /// when nothing changed.
    fn of(id: u64, was: Option<([f32; 3], NpcKind)>, new: [f32; 3], kind: NpcKind) -> Option<Self> {
        (was != Some((new, kind))).then(|| Self {
            id,
            old: was.map(|w| w.0),
            new: Some(new),
            kind,
            kind_changed: was.is_some_and(|w| w.1 != kind),
        })
    }

    fn removal(id: u64, (old, kind): ([f32; 3], NpcKind)) -> Self {
        Self { id, old: Some(old), new: None, kind, kind_changed: false }
    }
}

/// Cells over the ground plane (x, z) of the world.
#[derive(Debug, Clone, Copy)]
struct Grid {
    min: [f32; 2],
    inv_cell: f32,
    cols: usize,
    rows: usize,
}

impl Grid {
    /// Most cells; a finer grid would cost more to sort than it saves to scan.
    const MAX_CELLS: usize = 1 << 20;

    fn new(b: &WorldBounds, cell: f32) -> Self {
        let (w, d) = ((b.max[0] - b.min[0]).max(1.0), (b.max[2] - b.min[2]).max(1.0));
        let mut cell = cell.max(1.0);
        while (w / cell).ceil() * (d / cell).ceil() > Self::MAX_CELLS as f32 {
            cell *= 2.0;
        }
        Self {
            min: [b.min[0], b.min[2]],
            inv_cell: 1.0 / cell,
            cols: (w / cell).ceil() as usize,
            rows: (d / cell).ceil() as usize,
        }
    }

    fn len(&self) -> usize {
        self.cols * self.rows
    }

    fn col(&self, x: f32) -> usize {
        // `as` saturates (NaN to 0), then the clamp keeps edges and strays in the grid.
        (((x - self.min[0]) * self.inv_cell) as usize).min(self.cols - 1)
    }

    fn row(&self, z: f32) -> usize {
        (((z - self.min[1]) * self.inv_cell) as usize).min(self.rows - 1)
    }

    fn cell(&self, p: [f32; 3]) -> usize {
        self.row(p[2]) * self.cols + self.col(p[0])
    }

    /// Cells an area overlaps, row by row: `(first cell of the row, last cell)`.
    fn rows_of(&self, a: &Aoi) -> impl Iterator<Item = (usize, usize)> + use<> {
        let (c0, c1) = (self.col(a.min[0]), self.col(a.max[0]));
        let (r0, r1) = (self.row(a.min[1]), self.row(a.max[1]));
        let cols = self.cols;
        (r0..=r1).map(move |r| (r * cols + c0, r * cols + c1))
    }
}

/// Items grouped by cell with a counting sort: `items[start[c]..start[c + 1]]` are in cell `c`.
#[derive(Debug)]
struct Buckets<T> {
    start: Vec<u32>,
    items: Vec<T>,
}

impl<T> Default for Buckets<T> {
    fn default() -> Self {
        Self { start: Vec::new(), items: Vec::new() }
    }
}

impl<T: Copy> Buckets<T> {
    fn fill(&mut self, cells: usize, entries: impl Iterator<Item = (usize, T)> + Clone) {
        self.start.clear();
        self.start.resize(cells + 1, 0);
        let mut n = 0;
        for (c, _) in entries.clone() {
            self.start[c + 1] += 1;
            n += 1;
        }
        for c in 0..cells {
            self.start[c + 1] += self.start[c];
        }
        self.items.clear();
        if let Some((_, first)) = entries.clone().next() {
            // Every slot is written below; `first` only fills them until then.
            self.items.resize(n, first);
        }
        let mut next = self.start.clone();
        for (c, item) in entries {
            self.items[next[c] as usize] = item;
            next[c] += 1;
        }
    }

    fn cells(&self, (first, last): (usize, usize)) -> &[T] {
        &self.items[self.start[first] as usize..self.start[last + 1] as usize]
    }
}

struct Hub {
    clients: Arc<Clients>,
    stats: Arc<ServerStats>,
    grid: Grid,
    /// Where every NPC is, and its role and status.
    view: FxHashMap<u64, ([f32; 3], NpcKind)>,
    /// The role/status news of the view being applied.
    kinds: FxHashMap<u64, NpcKind>,
    changes: Vec<Change>,
    /// Indices into `changes`, by the cell of the new position.
    by_new: Buckets<u32>,
    /// Indices into `changes`, by the cell of the old position.
    by_old: Buckets<u32>,
    /// The whole view by cell (for resets).
    everyone: Buckets<(u64, [f32; 3], NpcKind)>,
    views: u64,
}

impl Hub {
    fn new(clients: Arc<Clients>, stats: Arc<ServerStats>, grid: Grid) -> Self {
        Self {
            clients,
            stats,
            grid,
            view: FxHashMap::default(),
            kinds: FxHashMap::default(),
            changes: Vec::new(),
            by_new: Buckets::default(),
            by_old: Buckets::default(),
            everyone: Buckets::default(),
            views: 0,
        }
    }

    /// Applies a delta to the view and lists what changed (one change per NPC). Returns the
    /// delta's buffers for reuse.
    fn apply(&mut self, mut delta: ViewDelta) -> ViewDelta {
        self.changes.clear();
        // Role/status news by id (the last word, when deltas were merged). Every NPC's first
        // row comes with its kind: a spawned NPC's role and status count as changed.
        self.kinds.clear();
        self.kinds.extend(delta.kinds.iter().copied());
        if delta.full {
            if self.views > 0 {
                self.stats.stream_resyncs();
            }
            let mut now: FxHashMap<u64, ([f32; 3], NpcKind)> =
                FxHashMap::with_capacity_and_hasher(delta.moved.len(), Default::default());
            for &(id, p) in &delta.moved {
                let was = self.view.remove(&id);
                let Some(kind) = self.kinds.get(&id).copied().or(was.map(|w| w.1)) else {
                    debug_assert!(false, "NPC {id} came without its role and status");
                    continue;
                };
                now.insert(id, (p, kind));
                self.changes.extend(Change::of(id, was, p, kind));
            }
            self.changes.extend(self.view.drain().map(|(id, old)| Change::removal(id, old)));
            self.view = now;
        } else {
            if delta.merged {
                latest_wins(&mut delta);
            }
            for &(id, p) in &delta.moved {
                let was = self.view.get(&id).copied();
                let Some(kind) = self.kinds.remove(&id).or(was.map(|w| w.1)) else {
                    debug_assert!(false, "NPC {id} came without its role and status");
                    continue;
                };
                self.view.insert(id, (p, kind));
                self.changes.extend(Change::of(id, was, p, kind));
            }
            for &id in &delta.removed {
                self.kinds.remove(&id);
                if let Some(old) = self.view.remove(&id) {
                    self.changes.push(Change::removal(id, old));
                }
            }
            // Role or status changed where the NPC stands.
            for (&id, &kind) in &self.kinds {
                if let Some(entry) = self.view.get_mut(&id)
                    && entry.1 != kind
                {
                    entry.1 = kind;
                    self.changes.push(Change {
                        id,
                        old: Some(entry.0),
                        new: Some(entry.0),
                        kind,
                        kind_changed: true,
                    });
                }
            }
        }
        self.views += 1;
        let grid = self.grid;
        let changes = &self.changes;
        let idx = |i: usize| u32::try_from(i).expect("fewer than 2^32 NPCs change in one view");
        self.by_new.fill(
            grid.len(),
            changes.iter().enumerate().filter_map(|(i, c)| c.new.map(|p| (grid.cell(p), idx(i)))),
        );
        self.by_old.fill(
            grid.len(),
            changes.iter().enumerate().filter_map(|(i, c)| c.old.map(|p| (grid.cell(p), idx(i)))),
        );
        delta
    }

    /// Cuts and hands over every subscribed client's frame.
    fn fan_out(&mut self, tick: u64) {
        let clients = Arc::clone(&self.clients);
        let now = Instant::now();
        let (interval, max_bytes) = (clients.reset_interval, clients.max_bytes);
        let mut slots = clients.lock();
        let reset_due =
            |slot: &super::Slot| slot.last_reset.is_none_or(|at| now.duration_since(at) >= interval);
        if slots.values().any(|s| s.reset && s.aoi.is_some() && reset_due(s)) {
            let grid = self.grid;
            self.everyone.fill(grid.len(), self.view.iter().map(|(&id, &(p, k))| (grid.cell(p), (id, p, k))));
        }
        for slot in slots.values_mut() {
            let Some(aoi) = slot.aoi else { continue };
            if slot.reset && !reset_due(slot) {
                // A reset is owed but the last one was too recent: nothing until it is due
                // (the deltas in between are covered by it).
                continue;
            }
            let kinds = slot.outbox.wire == Wire::BinaryV2;
            let frame = if slot.reset {
                self.reset_frame(&aoi, tick, kinds)
            } else {
                self.delta_frame(&aoi, tick, kinds)
            };
            if !frame.reset && frame.moved.is_empty() && frame.gone.is_empty() && frame.kinds.is_empty() {
                continue;
            }
            let was_reset = frame.reset;
            match slot.outbox.offer(frame, max_bytes) {
                Offered::Placed | Offered::Merged if was_reset => {
                    slot.reset = false;
                    slot.last_reset = Some(now);
                    self.stats.ws_resets_sent();
                }
                Offered::Placed => {}
                Offered::Merged => self.stats.ws_frames_skipped(),
                Offered::Dropped => {
                    slot.reset = true;
                    self.stats.ws_frames_dropped();
                }
            }
        }
    }

    /// Every NPC in the area; `kinds`: with their role and status.
    fn reset_frame(&self, aoi: &Aoi, tick: u64, kinds: bool) -> Frame {
        let mut frame = Frame { tick, reset: true, ..Frame::default() };
        for row in self.grid.rows_of(aoi) {
            for &(id, p, k) in self.everyone.cells(row).iter().filter(|e| aoi.contains(e.1)) {
                frame.moved.push((id, p));
                if kinds {
                    frame.kinds.push((id, k));
                }
            }
        }
        frame
    }

    /// What changed in the area; `kinds`: with the role and status of NPCs that entered it or
    /// changed them (an NPC that only changed status has no row in `moved`).
    fn delta_frame(&self, aoi: &Aoi, tick: u64, kinds: bool) -> Frame {
        let mut frame = Frame { tick, ..Frame::default() };
        for row in self.grid.rows_of(aoi) {
            for &i in self.by_new.cells(row) {
                let c = self.changes[i as usize];
                if let Some(p) = c.new.filter(|&p| aoi.contains(p)) {
                    let entered = !c.old.is_some_and(|o| aoi.contains(o));
                    if entered || c.old != c.new {
                        frame.moved.push((c.id, p));
                    }
                    if kinds && (entered || c.kind_changed) {
                        frame.kinds.push((c.id, c.kind));
                    }
                }
            }
            for &i in self.by_old.cells(row) {
                let c = self.changes[i as usize];
                let was_in = c.old.is_some_and(|p| aoi.contains(p));
                if was_in && !c.new.is_some_and(|p| aoi.contains(p)) {
                    frame.gone.push(c.id);
                }
            }
        }
        frame
    }
}

impl<T> Buckets<T> {
    #[cfg(test)]
    fn total(&self) -> usize {
        self.items.len()
    }
}

/// Collapses a merged delta to one entry per NPC: its last position, or its removal (the
/// role/status entries are collapsed by [`Hub::apply`]).
fn latest_wins(delta: &mut ViewDelta) {
    let mut last: FxHashMap<u64, Option<[f32; 3]>> = FxHashMap::default();
    for &(id, p) in &delta.moved {
        last.insert(id, Some(p));
    }
    for &id in &delta.removed {
        last.insert(id, None);
    }
    delta.moved.clear();
    delta.removed.clear();
    for (id, p) in last {
        match p {
            Some(p) => delta.moved.push((id, p)),
            None => delta.removed.push(id),
        }
    }
    delta.merged = false;
}

#[cfg(test)]
mod tests {
    use terrarium::engine::{Role, Status};

    use super::*;

    fn hub() -> (Hub, Arc<Clients>) {
        hub_with(usize::MAX, Duration::ZERO)
    }

    fn hub_with(max_bytes: usize, reset_interval: Duration) -> (Hub, Arc<Clients>) {
        let clients = Arc::new(Clients::new(Arc::default(), max_bytes, reset_interval));
        let bounds = WorldBounds { min: [0.0, 0.0, 0.0], max: [256.0, 64.0, 256.0] };
        (Hub::new(Arc::clone(&clients), Arc::default(), Grid::new(&bounds, 32.0)), clients)
    }

    const IDLE: NpcKind = NpcKind { role: Role::Miner, status: Status::Idle };

    /// A delta in which every moved NPC also says its role and status (as a spawn does).
    fn delta(tick: u64, moved: &[(u64, [f32; 3])], removed: &[u64]) -> ViewDelta {
        let kinds = moved.iter().map(|&(id, _)| (id, IDLE)).collect();
        ViewDelta { tick, moved: moved.to_vec(), kinds, removed: removed.to_vec(), ..ViewDelta::default() }
    }

    fn step(hub: &mut Hub, d: ViewDelta) {
        let tick = d.tick;
        hub.apply(d);
        hub.fan_out(tick);
    }

    /// The frame waiting for a client, taken as its task would.
    fn recv(outbox: &super::super::Outbox) -> Option<Frame> {
        outbox.try_take().map(|mut t| std::mem::take(&mut t.frame))
    }

    const AOI: Aoi = Aoi { min: [0.0, 0.0], max: [64.0, 64.0] };

    #[test]
    fn a_client_gets_its_area_then_only_what_changed_in_it() {
        let (mut hub, clients) = hub();
        step(
            &mut hub,
            delta(1, &[(1, [10.0, 0.0, 10.0]), (2, [100.0, 0.0, 100.0]), (3, [63.9, 0.0, 1.0])], &[]),
        );
        let (id, rx) = clients.register();
        clients.subscribe(id, Some(AOI));
        step(&mut hub, delta(2, &[], &[]));
        let f = recv(&rx).unwrap();
        assert!(f.reset);
        let mut ids: Vec<u64> = f.moved.iter().map(|m| m.0).collect();
        ids.sort_unstable();
        assert_eq!(ids, [1, 3], "only what is inside (max exclusive)");

        // 1 moves inside, 3 leaves, 2 enters, 4 appears outside, then 1 is removed next view.
        step(
            &mut hub,
            delta(
                3,
                &[
                    (1, [11.0, 0.0, 10.0]),
                    (3, [64.0, 0.0, 1.0]),
                    (2, [5.0, 0.0, 5.0]),
                    (4, [200.0, 0.0, 1.0]),
                ],
                &[],
            ),
        );
        let f = recv(&rx).unwrap();
        assert!(!f.reset);
        let mut moved = f.moved.clone();
        moved.sort_by_key(|m| m.0);
        assert_eq!(moved, [(1, [11.0, 0.0, 10.0]), (2, [5.0, 0.0, 5.0])]);
        assert_eq!(f.gone, [3]);
        step(&mut hub, delta(4, &[], &[1, 4]));
        let f = recv(&rx).unwrap();
        assert_eq!((f.moved.len(), f.gone.as_slice()), (0, &[1][..]));
        // Nothing changed in the area: no frame at all.
        step(&mut hub, delta(5, &[(4, [201.0, 0.0, 1.0])], &[]));
        assert!(recv(&rx).is_none());
    }

    #[test]
    fn a_v2_client_learns_the_role_and_status_of_what_enters_or_changes_and_others_do_not() {
        let (mut hub, clients) = hub();
        step(&mut hub, delta(1, &[(1, [10.0, 0.0, 10.0]), (2, [100.0, 0.0, 100.0])], &[]));
        let (v2, rx2) = clients.register_as(Wire::BinaryV2);
        let (v1, rx1) = clients.register_as(Wire::Binary);
        clients.subscribe(v2, Some(AOI));
        clients.subscribe(v1, Some(AOI));
        step(&mut hub, delta(2, &[], &[]));
        let f = recv(&rx2).unwrap();
        assert!(f.reset);
        assert_eq!(f.kinds, [(1, IDLE)], "a reset lists every NPC's kind");
        assert!(recv(&rx1).unwrap().kinds.is_empty(), "a v1 client never gets kinds");
        // 1 starts mining where it stands; 2 walks in; 1 then walks on, still mining.
        let mining = NpcKind { role: Role::Miner, status: Status::Mining };
        let scout = NpcKind { role: Role::Scout, status: Status::Moving };
        let mut d = delta(3, &[(2, [20.0, 0.0, 20.0])], &[]);
        d.kinds = vec![(1, mining), (2, scout)];
        step(&mut hub, d);
        let f = recv(&rx2).unwrap();
        assert_eq!(f.moved, [(2, [20.0, 0.0, 20.0])], "1 did not move: no row for it");
        let mut kinds = f.kinds.clone();
        kinds.sort_by_key(|k| k.0);
        assert_eq!(kinds, [(1, mining), (2, scout)]);
        let f = recv(&rx1).unwrap();
        assert_eq!((f.moved.as_slice(), f.kinds.len()), (&[(2, [20.0, 0.0, 20.0])][..], 0));
        let mut d = delta(4, &[(1, [11.0, 0.0, 10.0])], &[]);
        d.kinds = vec![];
        step(&mut hub, d);
        let f = recv(&rx2).unwrap();
        assert_eq!((f.moved.len(), f.kinds.len()), (1, 0), "a known kind is not sent again");
        assert_eq!(recv(&rx1).unwrap().moved.len(), 1);
        // A status written back unchanged makes no frame at all.
        let mut d = delta(5, &[], &[]);
        d.kinds = vec![(1, mining)];
        step(&mut hub, d);
        assert!(recv(&rx2).is_none() && recv(&rx1).is_none());
    }

    #[test]
    fn folded_frames_keep_the_last_kind_of_what_is_still_there() {
        let k = |status| NpcKind { role: Role::Guard, status };
        let mut older = Frame { tick: 1, moved: vec![(1, [0.0; 3]), (2, [0.0; 3])], ..Frame::default() };
        older.kinds = vec![(1, k(Status::Idle)), (2, k(Status::Idle))];
        let newer =
            Frame { tick: 2, gone: vec![2], kinds: vec![(1, k(Status::Fleeing))], ..Frame::default() };
        older.absorb(newer);
        assert_eq!(older.kinds, [(1, k(Status::Fleeing))]);
        assert_eq!((older.moved.len(), older.gone.as_slice()), (1, &[2][..]));
    }

    #[test]
    fn merged_deltas_keep_the_last_word_per_npc() {
        let (mut hub, clients) = hub();
        step(&mut hub, delta(1, &[(7, [10.0, 0.0, 10.0])], &[]));
        let (id, rx) = clients.register();
        clients.subscribe(id, Some(AOI));
        step(&mut hub, delta(2, &[], &[]));
        assert!(recv(&rx).unwrap().reset);
        // Out of the area and back in, within one merged delta: it moved, it did not leave.
        let mut d = delta(3, &[(7, [100.0, 0.0, 100.0]), (7, [12.0, 0.0, 12.0])], &[]);
        d.merged = true;
        step(&mut hub, d);
        let f = recv(&rx).unwrap();
        assert_eq!((f.moved.as_slice(), f.gone.len()), (&[(7, [12.0, 0.0, 12.0])][..], 0));
    }

    #[test]
    fn a_full_view_removes_what_it_lacks_and_a_slow_client_gets_one_folded_frame() {
        let (mut hub, clients) = hub();
        step(&mut hub, delta(1, &[(1, [1.0, 0.0, 1.0]), (2, [2.0, 0.0, 2.0])], &[]));
        let (id, rx) = clients.register();
        clients.subscribe(id, Some(AOI));
        step(&mut hub, delta(2, &[], &[]));
        // The client reads nothing while three views pass: one frame waits, the reset with
        // everything after it folded in.
        let mut full = delta(3, &[(2, [3.0, 0.0, 3.0])], &[]);
        full.full = true;
        step(&mut hub, full);
        step(&mut hub, delta(4, &[(5, [4.0, 0.0, 4.0])], &[]));
        step(&mut hub, delta(5, &[(5, [5.0, 0.0, 5.0]), (6, [6.0, 0.0, 6.0])], &[6]));
        let f = recv(&rx).unwrap();
        assert!(f.reset);
        assert_eq!(f.tick, 5);
        let mut moved = f.moved.clone();
        moved.sort_by_key(|m| m.0);
        assert_eq!(moved, [(2, [3.0, 0.0, 3.0]), (5, [5.0, 0.0, 5.0])], "1 and 6 are gone from the world");
        assert!(recv(&rx).is_none());
        assert_eq!(hub.everyone.total(), 2);
        assert!(hub.stats.figures(0).ws_frames_skipped >= 2);
    }

    #[test]
    fn deltas_fold_into_one_with_the_last_word_per_npc() {
        let (mut hub, clients) = hub();
        step(&mut hub, delta(1, &[(1, [1.0, 0.0, 1.0]), (2, [2.0, 0.0, 2.0])], &[]));
        let (id, rx) = clients.register();
        clients.subscribe(id, Some(AOI));
        step(&mut hub, delta(2, &[], &[]));
        assert!(recv(&rx).unwrap().reset);
        step(&mut hub, delta(3, &[(1, [1.5, 0.0, 1.0])], &[2]));
        step(&mut hub, delta(4, &[(1, [100.0, 0.0, 1.0]), (3, [3.0, 0.0, 3.0])], &[]));
        let f = recv(&rx).unwrap();
        assert!(!f.reset);
        let mut gone = f.gone.clone();
        gone.sort_unstable();
        assert_eq!((f.moved.as_slice(), gone.as_slice()), (&[(3, [3.0, 0.0, 3.0])][..], &[1, 2][..]));
    }

    #[test]
    fn a_frame_over_the_byte_budget_is_dropped_and_owed_as_a_reset() {
        // A one-NPC frame costs 120 bytes: a budget of 200 holds one, not two.
        let (mut hub, clients) = hub_with(200, Duration::ZERO);
        step(&mut hub, delta(1, &[(1, [1.0, 0.0, 1.0])], &[]));
        let (a, rx_a) = clients.register();
        let (b, rx_b) = clients.register();
        clients.subscribe(a, Some(AOI));
        clients.subscribe(b, Some(AOI));
        step(&mut hub, delta(2, &[], &[]));
        assert_eq!(u8::from(rx_a.has_frame()) + u8::from(rx_b.has_frame()), 1, "one fits");
        assert_eq!(hub.stats.figures(0).ws_frames_dropped, 1);
        // Once the waiting one is sent, the other client's reset fits.
        let (first, second) = if rx_a.has_frame() { (&rx_a, &rx_b) } else { (&rx_b, &rx_a) };
        assert!(recv(first).unwrap().reset);
        step(&mut hub, delta(3, &[], &[]));
        assert!(recv(second).unwrap().reset);
        assert_eq!(clients.budget.load(std::sync::atomic::Ordering::Relaxed), 0, "all released");
    }

    #[test]
    fn resets_are_rate_limited_per_client() {
        let (mut hub, clients) = hub_with(usize::MAX, Duration::from_secs(3600));
        step(&mut hub, delta(1, &[(1, [1.0, 0.0, 1.0])], &[]));
        let (a, rx) = clients.register();
        clients.subscribe(a, Some(AOI));
        step(&mut hub, delta(2, &[], &[]));
        assert!(recv(&rx).unwrap().reset);
        // Subscribing again owes a reset, which waits for the interval (no deltas meanwhile).
        clients.subscribe(a, Some(AOI));
        step(&mut hub, delta(3, &[(1, [2.0, 0.0, 1.0])], &[]));
        assert!(recv(&rx).is_none());
        assert_eq!(hub.stats.figures(0).ws_resets_sent, 1);
    }

    #[test]
    fn a_huge_world_gets_coarser_cells() {
        let b = WorldBounds { min: [0.0; 3], max: [1_000_000.0, 10.0, 1_000_000.0] };
        let g = Grid::new(&b, 1.0);
        assert!(g.len() <= Grid::MAX_CELLS);
        assert_eq!(g.cell([1_000_000.0, 0.0, 1_000_000.0]), g.len() - 1);
        assert_eq!(g.cell([f32::NAN, 0.0, -5.0]), 0);
    }
}
