//! Domain events: the typed events systems emit ([`DomainEvent`] through [`DomainEvents`]),
//! and the event batcher that gives them ids, folds identical ones within the dedup window into
//! one row and compresses large payloads.

use std::collections::VecDeque;

use bevy_ecs::prelude::*;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use terrarium_engine::rng::hash3;
use terrarium_engine::{NpcId, Position, Role, Status};
use terrarium_persistence::{EntityKind, EventRow};

use super::BatcherStats;

/// Something that happened in the world, worth keeping.
///
/// The whole value is the stored payload (codec-encoded), so readers can decode it back;
/// [`DomainEvent::kind`] is the stored `event_type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum DomainEvent {
    /// An NPC appeared in the world (spawned, or restored from a snapshot).
    NpcSpawned {
        /// Its role.
        role: Role,
        /// Where, blocks.
        position: Position,
        /// True for an agent.
        agent: bool,
    },
    /// Many NPCs appeared at once: one event instead of one per NPC (see
    /// [`DomainEvents::PER_NPC_LIMIT`]).
    NpcsSpawned {
        /// How many.
        count: u64,
        /// Lowest id among them.
        first_id: u64,
        /// Highest id among them.
        last_id: u64,
    },
    /// An NPC left the world.
    NpcDespawned,
    /// Many NPCs left the world at once.
    NpcsDespawned {
        /// How many.
        count: u64,
        /// Lowest id among them.
        first_id: u64,
        /// Highest id among them.
        last_id: u64,
    },
    /// An NPC's status changed.
    StatusChanged {
        /// The new status.
        status: Status,
    },
    /// Many NPCs changed status at once.
    StatusesChanged {
        /// How many.
        count: u64,
        /// Lowest id among them.
        first_id: u64,
        /// Highest id among them.
        last_id: u64,
    },
    /// A task finished well.
    TaskCompleted {
        /// What the task was.
        task: String,
    },
    /// A task was given up.
    TaskFailed {
        /// What the task was.
        task: String,
        /// Why it failed.
        reason: String,
    },
    /// Ore was mined.
    OreMined {
        /// Item kind of the ore.
        ore: u16,
        /// How many items.
        amount: u32,
        /// The block, in block coordinates.
        at: [i32; 3],
    },
    /// No path could be found.
    PathFailed {
        /// Start, blocks.
        from: Position,
        /// Goal, blocks.
        to: Position,
        /// Why.
        reason: String,
    },
    /// Storage started failing; batches wait (and spill to the outbox).
    StorageDegraded {
        /// The store's error.
        error: String,
    },
    /// Storage works again.
    StorageRecovered,
    /// Rows were given up: they will never reach the store.
    WritesDropped {
        /// How many rows (all kinds).
        rows: u64,
        /// Why.
        reason: String,
    },
}

impl DomainEvent {
    /// The stored event type.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NpcSpawned { .. } => "npc_spawned",
            Self::NpcsSpawned { .. } => "npcs_spawned",
            Self::NpcDespawned => "npc_despawned",
            Self::NpcsDespawned { .. } => "npcs_despawned",
            Self::StatusChanged { .. } => "status_changed",
            Self::StatusesChanged { .. } => "statuses_changed",
            Self::TaskCompleted { .. } => "task_completed",
            Self::TaskFailed { .. } => "task_failed",
            Self::OreMined { .. } => "ore_mined",
            Self::PathFailed { .. } => "path_failed",
            Self::StorageDegraded { .. } => "storage_degraded",
            Self::StorageRecovered => "storage_recovered",
            Self::WritesDropped { .. } => "writes_dropped",
        }
    }
}

/// What an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subject {
    /// An NPC.
    Npc(NpcId),
    /// A system or stage (by index).
    System(u64),
    /// The world.
    World,
    /// The storage pipeline.
    Storage,
}

impl Subject {
    fn kind_and_id(self) -> (EntityKind, u64) {
        match self {
            Self::Npc(id) => (EntityKind::Npc, id.0),
            Self::System(i) => (EntityKind::System, i),
            Self::World => (EntityKind::World, 0),
            Self::Storage => (EntityKind::Storage, 0),
        }
    }
}

/// The queue systems emit domain events into; the batcher drains it in the `Record` stage.
///
/// # Examples
/// ```
/// use terrarium_engine::NpcId;
/// use terrarium_systems::batching::{DomainEvent, DomainEvents, Subject};
/// let mut events = DomainEvents::default();
/// events.emit(Subject::Npc(NpcId(7)), DomainEvent::TaskCompleted { task: "mine".into() });
/// assert_eq!(events.len(), 1);
/// ```
#[derive(Resource, Debug, Default)]
pub struct DomainEvents {
    queue: Vec<(Subject, u64, DomainEvent)>,
}

impl DomainEvents {
    /// Lifecycle events (spawn, despawn, status) per NPC, per tick, before the rest are folded
    /// into one bulk event: a bulk spawn of a million NPCs writes one event, not a million.
    pub const PER_NPC_LIMIT: usize = 64;

    /// Emits an event about `subject`.
    pub fn emit(&mut self, subject: Subject, event: DomainEvent) {
        self.queue.push((subject, 0, event));
    }

    /// Emits an event that belongs to a story (`correlation_id`, for example a task id).
    pub fn emit_correlated(&mut self, subject: Subject, correlation_id: u64, event: DomainEvent) {
        self.queue.push((subject, correlation_id, event));
    }

    /// Events waiting for the batcher.
    #[must_use]
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// True when no event waits.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub(crate) fn drain(&mut self) -> std::vec::Drain<'_, (Subject, u64, DomainEvent)> {
        self.queue.drain(..)
    }
}

/// Gives events ids, folds identical ones, compresses payloads, and holds the rows until the
/// next flush.
#[derive(Resource, Debug)]
pub struct EventBatcher {
    run_id: u64,
    next: u64,
    pending: Vec<EventRow>,
    first_pending_tick: Option<u64>,
    window_ms: u64,
    compress_above: usize,
    /// Identical events seen within the window, and (while it is still pending) their row.
    seen: FxHashMap<DedupKey, Seen>,
    /// Keys in the order they were first seen, to expire them.
    order: VecDeque<(u64, DedupKey)>,
    /// Bumped by every flush; a `Seen` of an older generation has no pending row.
    generation: u64,
}

/// Events are identical when all of this is equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DedupKey {
    event_type: &'static str,
    subject: Subject,
    correlation_id: u64,
    payload: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    first_ms: u64,
    generation: u64,
    row: usize,
}

impl EventBatcher {
    /// A batcher for producer `run_id` (event ids are unique per run), folding identical events
    /// within `window_ms` simulated milliseconds and compressing payloads over `compress_above`
    /// bytes.
    #[must_use]
    pub fn new(run_id: u64, window_ms: u64, compress_above: usize) -> Self {
        Self {
            run_id,
            next: 0,
            pending: Vec::new(),
            first_pending_tick: None,
            window_ms,
            compress_above,
            seen: FxHashMap::default(),
            order: VecDeque::new(),
            generation: 0,
        }
    }

    /// Records one event at `tick` (`time_ms` simulated). Identical to an event seen within the
    /// window: counted on that event's row while it is pending, otherwise only counted in
    /// [`BatcherStats::events_deduplicated`] (it was stored once already).
    ///
    /// # Panics
    /// Never for the events of this crate: they always encode.
    pub fn push(
        &mut self,
        tick: u64,
        time_ms: u64,
        subject: Subject,
        correlation_id: u64,
        event: &DomainEvent,
        stats: &mut BatcherStats,
    ) {
        stats.events_emitted += 1;
        self.expire(time_ms);
        let payload = terrarium_codec::encode(event).expect("domain events are plain data and always encode");
        let key = DedupKey { event_type: event.kind(), subject, correlation_id, payload };
        if let Some(seen) = self.seen.get(&key) {
            stats.events_deduplicated += 1;
            if seen.generation == self.generation {
                let row = &mut self.pending[seen.row];
                row.count = row.count.saturating_add(1);
            }
            return;
        }
        let (entity_kind, entity_id) = subject.kind_and_id();
        self.next += 1;
        let raw = key.payload.len();
        let (payload, compressed) = if raw > self.compress_above {
            let packed = terrarium_codec::compress(&key.payload);
            stats.payload_bytes_raw += raw as u64;
            stats.payload_bytes_stored += packed.len() as u64;
            (packed, true)
        } else {
            (key.payload.clone(), false)
        };
        self.pending.push(EventRow {
            event_id: hash3(self.run_id, self.next, EVENT_SALT),
            correlation_id,
            event_type: event.kind().to_string(),
            entity_kind,
            entity_id,
            tick,
            time_ms,
            payload,
            compressed,
            count: 1,
        });
        self.first_pending_tick.get_or_insert(tick);
        if self.window_ms > 0 {
            let seen = Seen { first_ms: time_ms, generation: self.generation, row: self.pending.len() - 1 };
            self.order.push_back((time_ms, key.clone()));
            self.seen.insert(key, seen);
        }
    }

    /// Forgets events first seen more than the window ago.
    fn expire(&mut self, now_ms: u64) {
        while let Some((first, _)) = self.order.front() {
            if now_ms.saturating_sub(*first) <= self.window_ms {
                break;
            }
            let (first, key) = self.order.pop_front().expect("front exists");
            if self.seen.get(&key).is_some_and(|s| s.first_ms == first) {
                self.seen.remove(&key);
            }
        }
    }

    /// Rows waiting for the next flush.
    #[must_use]
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Tick of the oldest waiting row.
    #[must_use]
    pub fn first_pending_tick(&self) -> Option<u64> {
        self.first_pending_tick
    }

    /// Takes the waiting rows for a batch.
    pub fn take(&mut self) -> Vec<EventRow> {
        self.generation += 1;
        self.first_pending_tick = None;
        std::mem::take(&mut self.pending)
    }
}

/// Salt of event ids.
const EVENT_SALT: u64 = 0x4556_454E_5453; // "EVENTS"

/// Decodes a stored event payload (decompressing it first when needed).
///
/// # Errors
/// A [`terrarium_codec::CodecError`] when the bytes are not an event of this version, or
/// larger than `limit` once decompressed.
pub fn decode_payload(row: &EventRow, limit: usize) -> Result<DomainEvent, terrarium_codec::CodecError> {
    if row.compressed {
        let raw = terrarium_codec::decompress(&row.payload, limit)?;
        terrarium_codec::decode(&raw, limit)
    } else {
        terrarium_codec::decode(&row.payload, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(name: &str) -> DomainEvent {
        DomainEvent::TaskCompleted { task: name.into() }
    }

    #[test]
    fn identical_events_within_the_window_are_stored_once_and_counted() {
        let mut stats = BatcherStats::default();
        let mut b = EventBatcher::new(1, 1000, 1024);
        let npc = Subject::Npc(NpcId(5));
        b.push(1, 50, npc, 0, &task("mine"), &mut stats);
        b.push(2, 100, npc, 0, &task("mine"), &mut stats);
        b.push(3, 150, npc, 0, &task("build"), &mut stats); // different payload
        b.push(4, 200, Subject::Npc(NpcId(6)), 0, &task("mine"), &mut stats); // different NPC
        b.push(21, 1050, npc, 0, &task("mine"), &mut stats); // exactly 1000 ms later: same window
        b.push(22, 1100, npc, 0, &task("mine"), &mut stats); // 1050 ms after the first: new row
        let rows = b.take();
        assert_eq!(rows.iter().map(|r| r.count).collect::<Vec<_>>(), [3, 1, 1, 1]);
        assert_eq!((stats.events_emitted, stats.events_deduplicated), (6, 2));
        assert_eq!(rows[3].tick, 22);
        let ids: std::collections::HashSet<u64> = rows.iter().map(|r| r.event_id).collect();
        assert_eq!(ids.len(), 4, "ids are unique");
        // Within the window but after a flush: stored once already, so only counted.
        b.push(23, 1150, npc, 0, &task("mine"), &mut stats);
        assert_eq!(b.pending(), 0);
        assert_eq!(stats.events_deduplicated, 3);
    }

    #[test]
    fn large_payloads_are_compressed_and_round_trip() {
        let mut stats = BatcherStats::default();
        let mut b = EventBatcher::new(1, 0, 64);
        let long = DomainEvent::TaskFailed { task: "haul".into(), reason: "blocked ".repeat(100) };
        b.push(1, 50, Subject::World, 9, &long, &mut stats);
        b.push(1, 50, Subject::World, 9, &task("x"), &mut stats);
        let rows = b.take();
        assert!(rows[0].compressed && !rows[1].compressed);
        assert!(rows[0].payload.len() < 200, "{} bytes", rows[0].payload.len());
        assert_eq!(decode_payload(&rows[0], 1 << 20).unwrap(), long);
        assert_eq!(decode_payload(&rows[1], 1 << 20).unwrap(), task("x"));
        assert!(stats.average_compression_ratio().unwrap() < 0.5);
        assert_eq!(rows[0].correlation_id, 9);
        assert!(decode_payload(&rows[0], 100).is_err(), "decompression is size-limited");
    }

    #[test]
    fn a_zero_window_never_folds() {
        let mut stats = BatcherStats::default();
        let mut b = EventBatcher::new(1, 0, 1024);
        b.push(1, 50, Subject::World, 0, &task("a"), &mut stats);
        b.push(1, 50, Subject::World, 0, &task("a"), &mut stats);
        assert_eq!(b.take().len(), 2);
    }
}
