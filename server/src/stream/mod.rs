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
//!    permessage-deflate for large ones (yawc), rate and size limits.

mod hub;
mod view;
pub(crate) mod ws;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use serde::Deserialize;
use tokio::sync::mpsc;

pub(crate) use hub::HubThread;
pub(crate) use view::register;

/// What changed between two published views.
#[derive(Debug, Default)]
pub(crate) struct ViewDelta {
    pub(crate) tick: u64,
    /// NPCs that moved or appeared, with their position now.
    pub(crate) moved: Vec<(u64, [f32; 3])>,
    /// NPCs removed from the world.
    pub(crate) removed: Vec<u64>,
    /// `moved` holds every NPC alive: anything else in the hub's view is gone.
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
                waiting.removed.clear();
                s.spare.push(waiting);
                s.pending = Some(delta);
                true
            }
            Some(mut waiting) if waiting.moved.len() + delta.moved.len() <= max_rows => {
                waiting.moved.append(&mut delta.moved);
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
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
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
}

/// The WebSocket clients the hub serves.
#[derive(Debug, Default)]
pub(crate) struct Clients {
    next_id: AtomicU64,
    slots: Mutex<HashMap<u64, Slot>>,
}

#[derive(Debug)]
struct Slot {
    aoi: Option<Aoi>,
    /// Send the whole area next time (new subscription, or a frame was skipped).
    reset: bool,
    tx: mpsc::Sender<Frame>,
}

impl Clients {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Slot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new client with room for `queue` frames; its id and where its frames arrive.
    pub(crate) fn register(&self, queue: usize) -> (u64, mpsc::Receiver<Frame>) {
        let (tx, rx) = mpsc::channel(queue);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, Slot { aoi: None, reset: false, tx });
        (id, rx)
    }

    /// Sets (or clears) a client's area; a new area is sent whole at the next frame.
    pub(crate) fn subscribe(&self, id: u64, aoi: Option<Aoi>) {
        if let Some(slot) = self.lock().get_mut(&id) {
            slot.aoi = aoi;
            slot.reset = aoi.is_some();
        }
    }

    pub(crate) fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }
}
