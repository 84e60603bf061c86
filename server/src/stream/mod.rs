//! Position streaming to WebSocket clients, in three steps:
//!
//! 1. `view.rs` (tick thread, `Flush` stage, every `tick_hz / ws_hz` ticks): the positions that
//!    changed since its last run (bevy change ticks) and the NPCs despawned meanwhile, handed
//!    to the hub's inbox (a brief lock and a notify; the tick never waits for the hub).
//! 2. `hub.rs` (a thread of its own): applies them to its view of the world, buckets the
//!    changes by grid cell, and cuts one frame per client from the cells its area of interest
//!    covers: NPCs that moved inside it, NPCs that left it or were removed. A client that
//!    subscribed (or fell behind) gets its whole area instead.
//! 3. `ws.rs` (a tokio task per connection): the protocol, JSON text frames,
//!    permessage-deflate for large ones (yawc), rate and size limits, pings.
//!
//! Between the hub and a client's task is one slot ([`Outbox`]), not a queue: a client that
//! is behind gets the frames it missed folded into the one waiting, so it holds at most one
//! waiting frame and one being sent, whatever its speed; and all clients' frames together stay
//! under a byte budget (a frame over it is dropped and its client later gets a reset, at most
//! one reset per client per `ws_reset_interval_ms`).

mod hub;
mod view;
pub(crate) mod ws;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use crate::protocol::NpcKind;

pub(crate) use hub::HubThread;
pub(crate) use view::register;

/// What changed between two published views.
#[derive(Debug, Default)]
pub(crate) struct ViewDelta {
    pub(crate) tick: u64,
    /// NPCs that moved or appeared, with their position now.
    pub(crate) moved: Vec<(u64, [f32; 3])>,
    /// NPCs that appeared or changed role or status (or wrote them back unchanged), with their
    /// role and status now: a list of its own, usually short, so a view of moving NPCs costs
    /// the tick what it did before role and status were streamed.
    pub(crate) kinds: Vec<(u64, NpcKind)>,
    /// NPCs removed from the world.
    pub(crate) removed: Vec<u64>,
    /// `moved` and `kinds` hold every NPC alive: anything else in the hub's view is gone.
    pub(crate) full: bool,
    /// Two or more deltas appended together (an id may appear more than once).
    pub(crate) merged: bool,
}

/// Where the tick hands deltas to the hub.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    state: Mutex<InboxState>,
    ready: Condvar,
}

#[derive(Debug, Default)]
struct InboxState {
    pending: Option<ViewDelta>,
    /// Emptied buffers the hub gives back for the next delta.
    spare: Vec<ViewDelta>,
    /// The hub fell too far behind: the next delta must be a full one.
    resync: bool,
    closed: bool,
}

impl Inbox {
    fn lock(&self) -> MutexGuard<'_, InboxState> {
        // Plain data, consistent at every unlock.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An empty delta to fill (recycled when the hub gave one back), and whether it must be full.
    pub(crate) fn buffer(&self) -> (ViewDelta, bool) {
        let mut s = self.lock();
        let full = std::mem::take(&mut s.resync);
        (s.spare.pop().unwrap_or_default(), full)
    }

    /// Hands a delta over. When the hub has not taken the previous one yet, the two are merged;
    /// past `max_rows` waiting, both are dropped and the next delta will be a full view.
    /// Returns false when that happened.
    pub(crate) fn submit(&self, mut delta: ViewDelta, max_rows: usize) -> bool {
        let mut s = self.lock();
        let accepted = match s.pending.take() {
            None => {
                s.pending = Some(delta);
                true
            }
            Some(mut waiting) if delta.full => {
                // A full view supersedes whatever waits.
                waiting.moved.clear();
                waiting.kinds.clear();
                waiting.removed.clear();
                s.spare.push(waiting);
                s.pending = Some(delta);
                true
            }
            Some(mut waiting)
                if waiting.moved.len() + waiting.kinds.len() + delta.moved.len() + delta.kinds.len()
                    <= max_rows =>
            {
                waiting.moved.append(&mut delta.moved);
                waiting.kinds.append(&mut delta.kinds);
                waiting.removed.append(&mut delta.removed);
                waiting.tick = delta.tick;
                waiting.merged = true;
                s.spare.push(delta);
                s.pending = Some(waiting);
                true
            }
            Some(_) => {
                s.resync = true;
                false
            }
        };
        drop(s);
        self.ready.notify_one();
        accepted
    }

    /// Waits up to `timeout` for a delta; `None` on time-out or once closed.
    fn take(&self, timeout: std::time::Duration) -> Option<ViewDelta> {
        let s = self.lock();
        let (mut s, _) = self
            .ready
            .wait_timeout_while(s, timeout, |s| s.pending.is_none() && !s.closed)
            .unwrap_or_else(PoisonError::into_inner);
        s.pending.take()
    }

    fn give_back(&self, mut delta: ViewDelta) {
        delta.moved.clear();
        delta.kinds.clear();
        delta.removed.clear();
        delta.full = false;
        delta.merged = false;
        let mut s = self.lock();
        if s.spare.len() < 2 {
            s.spare.push(delta);
        }
    }

    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    fn is_closed(&self) -> bool {
        self.lock().closed
    }
}

/// A rectangle of the ground plane, `min` inclusive, `max` exclusive, blocks: `[x, z]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Aoi {
    pub(crate) min: [f32; 2],
    pub(crate) max: [f32; 2],
}

impl Aoi {
    #[inline]
    fn contains(&self, p: [f32; 3]) -> bool {
        p[0] >= self.min[0] && p[0] < self.max[0] && p[2] >= self.min[1] && p[2] < self.max[1]
    }
}

/// How a client's position frames are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wire {
    /// JSON text (`terrarium.v1`).
    Json,
    /// [`crate::protocol::BinaryFrame`] v1 (`terrarium.binary.v1`): no role/status.
    Binary,
    /// [`crate::protocol::BinaryFrame`] v2 (`terrarium.binary.v2`): with role/status entries.
    BinaryV2,
}

/// What the hub sends one client.
#[derive(Debug, Default)]
pub(crate) struct Frame {
    pub(crate) tick: u64,
    /// Every NPC in the area (the client drops what it had).
    pub(crate) reset: bool,
    /// NPCs in the area that moved or appeared (all of them, for a reset).
    pub(crate) moved: Vec<(u64, [f32; 3])>,
    /// NPCs that left the area or were removed.
    pub(crate) gone: Vec<u64>,
    /// Role and status of NPCs the client can't know them of (all, for a reset; those that
    /// entered or changed, for a delta). Cut only for [`Wire::BinaryV2`] clients.
    pub(crate) kinds: Vec<(u64, NpcKind)>,
}

impl Frame {
    /// What the frame costs while it waits and is sent: its rows, and the message they
    /// become, bytes: JSON text (about 32 bytes a row, 16 a gone id) or a
    /// [`crate::protocol::BinaryFrame`] (16 bytes a row, 8 a gone id, 12 a role/status entry at
    /// most).
    pub(crate) fn cost(&self, wire: Wire) -> usize {
        let (row, gone) = if wire == Wire::Json { (24 + 32, 8 + 16) } else { (24 + 16, 8 + 8) };
        64 + self.moved.len() * row + self.gone.len() * gone + self.kinds.len() * (16 + 12)
    }

    /// Folds `newer` (the next frame for the same area) into `self`: a reset stays a reset (of
    /// the newer tick), a delta over a delta keeps the last word per NPC. Applying the result
    /// gives what applying both in order would have (a `gone` may name an NPC the client never
    /// held, which it ignores).
    pub(crate) fn absorb(&mut self, newer: Frame) {
        if newer.reset {
            *self = newer;
            return;
        }
        let mut last: FxHashMap<u64, Option<[f32; 3]>> =
            FxHashMap::with_capacity_and_hasher(self.moved.len() + self.gone.len(), Default::default());
        last.extend(self.moved.drain(..).map(|(id, p)| (id, Some(p))));
        last.extend(self.gone.drain(..).map(|id| (id, None)));
        last.extend(newer.moved.into_iter().map(|(id, p)| (id, Some(p))));
        last.extend(newer.gone.into_iter().map(|id| (id, None)));
        if !(self.kinds.is_empty() && newer.kinds.is_empty()) {
            // The last role/status per NPC, unless it is gone in the end.
            let mut kinds: FxHashMap<u64, NpcKind> = self.kinds.drain(..).collect();
            kinds.extend(newer.kinds);
            self.kinds.extend(kinds.into_iter().filter(|(id, _)| !matches!(last.get(id), Some(None))));
        }
        for (id, p) in last {
            match p {
                Some(p) => self.moved.push((id, p)),
                // A reset lists what is there; what left is simply not listed.
                None if !self.reset => self.gone.push(id),
                None => {}
            }
        }
        self.tick = newer.tick;
    }
}

/// What became of a frame offered to a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offered {
    /// Waiting alone for the client.
    Placed,
    /// Folded into the frame that was already waiting (the client is behind).
    Merged,
    /// Over the byte budget: nothing waits now, the client needs a reset.
    Dropped,
}

/// One client's outgoing slot: at most one frame waits (newer ones are folded into it), its
/// cost counted in a byte budget shared by every client.
#[derive(Debug)]
pub(crate) struct Outbox {
    state: Mutex<OutboxState>,
    ready: tokio::sync::Notify,
    budget: Arc<AtomicUsize>,
    /// How its client's frames are written (binary ones cost less while sent).
    wire: Wire,
}

#[derive(Debug, Default)]
struct OutboxState {
    frame: Option<Frame>,
    cost: usize,
    closed: bool,
}

/// A frame taken from an [`Outbox`]; its cost stays in the budget until this is dropped
/// (after the frame was sent).
#[derive(Debug)]
pub(crate) struct Taken {
    pub(crate) frame: Frame,
    cost: usize,
    budget: Arc<AtomicUsize>,
}

impl Drop for Taken {
    fn drop(&mut self) {
        self.budget.fetch_sub(self.cost, Ordering::Relaxed);
    }
}

impl Outbox {
    pub(crate) fn new(budget: Arc<AtomicUsize>, wire: Wire) -> Self {
        Self { state: Mutex::default(), ready: tokio::sync::Notify::new(), budget, wire }
    }

    fn lock(&self) -> MutexGuard<'_, OutboxState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Offers a frame (the hub): placed, folded into the waiting one, or dropped when all
    /// clients' waiting and sending frames would cost more than `max_bytes`.
    pub(crate) fn offer(&self, frame: Frame, max_bytes: usize) -> Offered {
        let mut s = self.lock();
        let (frame, how) = match s.frame.take() {
            None => (frame, Offered::Placed),
            Some(mut waiting) => {
                waiting.absorb(frame);
                (waiting, Offered::Merged)
            }
        };
        let cost = frame.cost(self.wire);
        let old = std::mem::take(&mut s.cost);
        let others = self.budget.fetch_sub(old, Ordering::Relaxed) - old;
        if others + cost > max_bytes {
            return Offered::Dropped;
        }
        self.budget.fetch_add(cost, Ordering::Relaxed);
        s.frame = Some(frame);
        s.cost = cost;
        drop(s);
        self.ready.notify_one();
        how
    }

    /// The waiting frame, if any (the client's task).
    pub(crate) fn try_take(&self) -> Option<Taken> {
        let mut s = self.lock();
        let frame = s.frame.take()?;
        let cost = std::mem::take(&mut s.cost);
        Some(Taken { frame, cost, budget: Arc::clone(&self.budget) })
    }

    /// Waits for the next frame; `None` once closed. Cancel-safe: a frame stays in the slot
    /// until a call returns it.
    pub(crate) async fn next(&self) -> Option<Taken> {
        loop {
            if let Some(t) = self.try_take() {
                return Some(t);
            }
            if self.lock().closed {
                return None;
            }
            self.ready.notified().await;
        }
    }

    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    #[cfg(test)]
    pub(crate) fn has_frame(&self) -> bool {
        self.lock().frame.is_some()
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let cost = self.lock().cost;
        self.budget.fetch_sub(cost, Ordering::Relaxed);
    }
}

/// The WebSocket clients the hub serves.
#[derive(Debug)]
pub(crate) struct Clients {
    next_id: AtomicU64,
    slots: Mutex<HashMap<u64, Slot>>,
    /// Bytes of frames waiting or being sent, all clients.
    budget: Arc<AtomicUsize>,
    max_bytes: usize,
    reset_interval: Duration,
}

#[derive(Debug)]
struct Slot {
    aoi: Option<Aoi>,
    /// Send the whole area next time (new subscription, or a frame was dropped).
    reset: bool,
    /// When the last reset was handed over (resets are rate-limited per client).
    last_reset: Option<Instant>,
    outbox: Arc<Outbox>,
}

impl Clients {
    pub(crate) fn new(budget: Arc<AtomicUsize>, max_bytes: usize, reset_interval: Duration) -> Self {
        Self { next_id: AtomicU64::new(0), slots: Mutex::default(), budget, max_bytes, reset_interval }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Slot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new client of JSON frames; its id and where its frames arrive.
    #[cfg(test)]
    pub(crate) fn register(&self) -> (u64, Arc<Outbox>) {
        self.register_as(Wire::Json)
    }

    /// A new client, of binary frames or JSON; its id and where its frames arrive.
    pub(crate) fn register_as(&self, wire: Wire) -> (u64, Arc<Outbox>) {
        let outbox = Arc::new(Outbox::new(Arc::clone(&self.budget), wire));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let slot = Slot { aoi: None, reset: false, last_reset: None, outbox: Arc::clone(&outbox) };
        self.lock().insert(id, slot);
        (id, outbox)
    }

    /// Sets (or clears) a client's area; a new area is sent whole at the next frame (or, when
    /// the client had a reset less than `ws_reset_interval_ms` ago, once that has passed).
    pub(crate) fn subscribe(&self, id: u64, aoi: Option<Aoi>) {
        if let Some(slot) = self.lock().get_mut(&id) {
            slot.aoi = aoi;
            slot.reset = aoi.is_some();
            // Whatever waits was cut for the old area.
            if let Some(t) = slot.outbox.try_take() {
                drop(t);
            }
        }
    }

    pub(crate) fn remove(&self, id: u64) {
        if let Some(slot) = self.lock().remove(&id) {
            slot.outbox.close();
        }
    }
}
