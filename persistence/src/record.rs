//! Plain record types that cross the storage boundary. No ECS types here: the systems crate turns
//! components into these, adapters turn these into rows and keys.

use serde::{Deserialize, Serialize};
pub use smol_str::SmolStr;

/// Identifies a batch for idempotency: `run` is unique per producer instance (a process start),
/// `seq` increases by one per batch within a run. A store that has applied `(run, seq)` ignores
/// it, and every batch before it of the same run, when it comes again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct BatchId {
    /// The producer instance.
    pub run: u64,
    /// Position in the producer's sequence, from 1.
    pub seq: u64,
}

impl std::fmt::Display for BatchId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}:{}", self.run, self.seq)
    }
}

/// Where one NPC was at one tick. One row per NPC per flush, the latest position winning.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PositionRow {
    /// The NPC.
    pub npc_id: u64,
    /// Tick of the position.
    pub tick: u64,
    /// Blocks.
    pub x: f32,
    /// Blocks (up).
    pub y: f32,
    /// Blocks.
    pub z: f32,
}

/// Position rows in column form, as the tick hands them over (see [`crate::Handoff`]).
///
/// Filling two columns is two block copies per chunk of NPCs where filling rows is a struct
/// store per NPC, and a row costs 20 bytes here against 32 as a [`PositionRow`]. The
/// write-behind turns columns into rows only for the batches it writes; most of a backlog is
/// overwritten (coalesced) before that.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PositionColumns {
    /// Tick of every position (the flush tick).
    pub tick: u64,
    /// NPC ids.
    pub ids: Vec<u64>,
    /// Positions `[x, y, z]`, blocks, one per id.
    pub xyz: Vec<[f32; 3]>,
}

impl PositionColumns {
    /// Rows held (the shorter column, should they differ).
    #[must_use]
    pub fn len(&self) -> usize {
        self.ids.len().min(self.xyz.len())
    }

    /// True when there is no row.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends the rows, in order, to `out`.
    pub fn append_to(&self, out: &mut Vec<PositionRow>) {
        let tick = self.tick;
        out.extend(self.ids.iter().zip(&self.xyz).map(|(&npc_id, &[x, y, z])| PositionRow {
            npc_id,
            tick,
            x,
            y,
            z,
        }));
    }
}

/// What a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EntityKind {
    /// An NPC (agents included).
    Npc,
    /// A system of the tick (for per-system metrics).
    System,
    /// The world as a whole.
    World,
    /// The storage pipeline itself.
    Storage,
}

impl EntityKind {
    /// Lower-case name, as stored.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Npc => "npc",
            Self::System => "system",
            Self::World => "world",
            Self::Storage => "storage",
        }
    }
}

/// One aggregated metric value: the total of `name` for one entity between two flushes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricRow {
    /// What the metric is about.
    pub entity_kind: EntityKind,
    /// Entity id (NPC id; for systems, the stage index).
    pub entity_id: u64,
    /// Metric name, for example `distance_travelled` or `stage_us.act`.
    pub name: String,
    /// Tick of the flush.
    pub tick: u64,
    /// The aggregated value (a sum over the interval).
    pub value: f64,
    /// How many samples went into `value`.
    pub samples: u32,
}

/// One domain event, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRow {
    /// Unique id; storing the same id twice stores it once.
    pub event_id: u64,
    /// Links events of one story (a task from start to finish).
    pub correlation_id: u64,
    /// Event type, for example `npc_spawned`, `task_completed`.
    pub event_type: String,
    /// What the event is about.
    pub entity_kind: EntityKind,
    /// Entity id.
    pub entity_id: u64,
    /// Tick it happened.
    pub tick: u64,
    /// Simulated time it happened, milliseconds since tick 0.
    pub time_ms: u64,
    /// Payload (codec-encoded), LZ4-compressed when `compressed`.
    pub payload: Vec<u8>,
    /// True when `payload` is compressed.
    pub compressed: bool,
    /// How many identical events this row stands for (deduplication), at least 1.
    pub count: u32,
}

/// The current state of an NPC (the `npcs` table, the registry a game server reads).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NpcRecord {
    /// The NPC.
    pub id: u64,
    /// Role name (`miner`, …), held inline: a name of up to 23 bytes takes no heap
    /// allocation (serialized as a string, the same bytes as a `String`).
    pub role: SmolStr,
    /// Status name (`idle`, …), inline like `role`.
    pub status: SmolStr,
    /// Swarm, 0 for none.
    pub swarm: u32,
    /// True for agents.
    pub agent: bool,
    /// Position, blocks.
    pub x: f32,
    /// Position, blocks.
    pub y: f32,
    /// Position, blocks.
    pub z: f32,
    /// Hit points.
    pub health: u16,
    /// Inventory as `(item kind, count)` stacks.
    pub inventory: Vec<(u16, u16)>,
    /// Tick of the last change written.
    pub updated_tick: u64,
}

/// Everything one flush hands to storage. Written whole or not at all.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct WriteBatch {
    /// Idempotency key.
    pub id: BatchId,
    /// Tick of the flush.
    pub tick: u64,
    /// Position history rows; also update the position in the NPC's current state.
    pub positions: Vec<PositionRow>,
    /// Aggregated metrics.
    pub metrics: Vec<MetricRow>,
    /// Domain events.
    pub events: Vec<EventRow>,
    /// Current-state upserts (spawns, status changes, …).
    pub npcs: Vec<NpcRecord>,
    /// NPCs removed from the world (deleted from current state).
    pub removed: Vec<u64>,
}

impl WriteBatch {
    /// Version of the encoded layout of a `WriteBatch` (with `terrarium_codec`). Outbox frames
    /// carry it, and an outbox with frames of another layout is refused at start-up rather than
    /// skipped. Bump it with any change to this type or to the types it holds; the test
    /// `the_encoded_layout_is_pinned` fails until you do.
    pub const LAYOUT: u32 = 1;

    /// Rows of every kind in the batch.
    #[must_use]
    pub fn len(&self) -> usize {
        self.positions.len() + self.metrics.len() + self.events.len() + self.npcs.len() + self.removed.len()
    }

    /// True when there is nothing to write.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which NPCs a listing returns. Empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NpcFilter {
    /// Only this status.
    pub status: Option<String>,
    /// Only this role.
    pub role: Option<String>,
    /// Only this swarm.
    pub swarm: Option<u32>,
}

impl NpcFilter {
    /// True when `r` passes the filter.
    #[must_use]
    pub fn matches(&self, r: &NpcRecord) -> bool {
        self.status.as_ref().is_none_or(|s| *s == r.status)
            && self.role.as_ref().is_none_or(|s| *s == r.role)
            && self.swarm.is_none_or(|s| s == r.swarm)
    }
}

/// A page of a listing: ids after `after`, ascending, at most `limit` (1 ..= [`Page::MAX_LIMIT`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    /// Cursor: the last id of the previous page.
    pub after: Option<u64>,
    /// Page size.
    pub limit: u32,
}

impl Page {
    /// The largest page.
    pub const MAX_LIMIT: u32 = 100;

    /// The first page of `limit` (clamped to 1 ..= 100).
    #[must_use]
    pub fn first(limit: u32) -> Self {
        Self { after: None, limit: limit.clamp(1, Self::MAX_LIMIT) }
    }
}

/// One page of NPCs, and the cursor of the next one (`None` on the last page).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct NpcPage {
    /// The NPCs, by ascending id.
    pub npcs: Vec<NpcRecord>,
    /// Pass as `Page::after` to get the next page.
    pub next: Option<u64>,
}

/// A stored snapshot of the whole world (the engine's snapshot frame, opaque here), and the
/// batch it follows: every batch of `run` up to `seq` was committed before it was stored, and
/// the world it holds is the one at `tick`, after that batch was cut.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Checkpoint {
    /// The producer run whose batches it follows.
    pub run: u64,
    /// The last batch of `run` cut at or before `tick` (0: none).
    pub seq: u64,
    /// Tick of the world it holds.
    pub tick: u64,
    /// Written by a clean shutdown (after the last tick and the drain): nothing happened after it.
    pub clean: bool,
    /// The snapshot frame.
    pub bytes: Vec<u8>,
}

/// What a store holds of a world to resume: its newest checkpoint and the current state the
/// batches committed since.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ResumePoint {
    /// The newest checkpoint (checksum verified).
    pub checkpoint: Checkpoint,
    /// Every NPC id in the current state (`npcs`), ascending.
    pub ids: Vec<u64>,
    /// The current state of the NPCs changed after the checkpoint's tick
    /// (`updated_tick > checkpoint.tick`), ascending by id.
    pub newer: Vec<NpcRecord>,
    /// Whether every batch the checkpoint follows is committed (`applied_batches` of its run
    /// has reached its seq). False only when a checkpoint was stored ahead of its batches.
    pub batches_committed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes of a batch with one row of every kind, as the outbox stores them.
    fn sample() -> Vec<u8> {
        let batch = WriteBatch {
            id: BatchId { run: 0x0102_0304_0506_0708, seq: 9 },
            tick: 10,
            positions: vec![PositionRow { npc_id: 11, tick: 12, x: 1.5, y: -2.5, z: 3.0 }],
            metrics: vec![MetricRow {
                entity_kind: EntityKind::System,
                entity_id: 13,
                name: "m".into(),
                tick: 14,
                value: 15.5,
                samples: 16,
            }],
            events: vec![EventRow {
                event_id: 17,
                correlation_id: 18,
                event_type: "e".into(),
                entity_kind: EntityKind::Npc,
                entity_id: 19,
                tick: 20,
                time_ms: 21,
                payload: vec![22, 23],
                compressed: true,
                count: 24,
            }],
            npcs: vec![NpcRecord {
                id: 25,
                role: "r".into(),
                status: "s".into(),
                swarm: 26,
                agent: true,
                x: 27.0,
                y: 28.0,
                z: 29.0,
                health: 30,
                inventory: vec![(31, 32)],
                updated_tick: 33,
            }],
            removed: vec![34],
        };
        terrarium_codec::encode(&batch).expect("encodes")
    }

    #[test]
    fn the_encoded_layout_is_pinned() {
        // If this fails, the encoded layout of `WriteBatch` changed: bump `WriteBatch::LAYOUT`
        // (outboxes written before then are refused with a clear error, not misread), then pin
        // the new checksum here.
        assert_eq!(
            (WriteBatch::LAYOUT, terrarium_codec::checksum(&sample())),
            (1, 17_425_014_916_331_903_242),
            "WriteBatch's encoding changed: bump WriteBatch::LAYOUT"
        );
    }
}
