//! What the batchers did ([`BatcherStats`]) and how storage is doing ([`PersistenceHealth`]),
//! both resources readable at any time.

use bevy_ecs::prelude::*;
use terrarium_persistence::SinkHealth;

/// Counters of one stream of rows (positions, metrics or events).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Flushes of this stream (batches that carried its rows).
    pub flushes: u64,
    /// Rows put into batches.
    pub items_batched: u64,
    /// Updates folded into a row instead of becoming one: moves of an NPC already pending,
    /// metric samples added to a pending total, duplicate events.
    pub items_coalesced: u64,
    /// Rows waiting for the next flush. For positions the count stops just past `max_items`
    /// (deciding a flush does not need more).
    pub pending_items: u64,
}

impl StreamStats {
    pub(crate) fn flushed(&mut self, rows: u64, coalesced: u64) {
        self.flushes += 1;
        self.items_batched += rows;
        self.items_coalesced += coalesced;
        self.pending_items = 0;
    }
}

/// What the batchers have done since the engine started.
///
/// # Examples
/// ```
/// use terrarium_systems::batching::BatcherStats;
/// let stats = BatcherStats::default();
/// assert_eq!(stats.average_batch_size(), 0.0);
/// assert_eq!(stats.average_compression_ratio(), None);
/// ```
#[derive(Resource, Debug, Clone, Default, PartialEq)]
pub struct BatcherStats {
    /// Batches built and handed to the sink.
    pub batches_created: u64,
    /// Position rows.
    pub positions: StreamStats,
    /// Metric rows.
    pub metrics: StreamStats,
    /// Event rows.
    pub events: StreamStats,
    /// Registry rows: NPC upserts (spawns, state changes) and removals.
    pub registry_rows: u64,
    /// Domain events recorded (before deduplication).
    pub events_emitted: u64,
    /// Events folded into an identical one within the dedup window.
    pub events_deduplicated: u64,
    /// Bytes of event payloads before compression (compressed payloads only).
    pub payload_bytes_raw: u64,
    /// Bytes of the same payloads after compression.
    pub payload_bytes_stored: u64,
    /// Batches the sink refused (full or shut down).
    pub batches_refused: u64,
    /// Rows in refused batches.
    pub writes_dropped: u64,
    /// Position cuts done a slice per tick (big worlds; see the batching module docs).
    pub spread_cuts: u64,
    /// Of those, given up and redone in one pass (the world's rows moved under them: a spawn, a
    /// despawn, a command, a component added or removed).
    pub spreads_redone: u64,
}

impl BatcherStats {
    /// Flushes of all streams.
    #[must_use]
    pub fn flush_count(&self) -> u64 {
        self.positions.flushes + self.metrics.flushes + self.events.flushes
    }

    /// Rows of all kinds put into batches.
    #[must_use]
    pub fn items_batched(&self) -> u64 {
        self.positions.items_batched
            + self.metrics.items_batched
            + self.events.items_batched
            + self.registry_rows
    }

    /// Updates folded into existing rows, all streams.
    #[must_use]
    pub fn items_coalesced(&self) -> u64 {
        self.positions.items_coalesced + self.metrics.items_coalesced + self.events.items_coalesced
    }

    /// Rows waiting for a flush, all streams (positions counted up to just past `max_items`).
    #[must_use]
    pub fn pending_items(&self) -> u64 {
        self.positions.pending_items + self.metrics.pending_items + self.events.pending_items
    }

    /// Rows per batch, on average (0 before the first batch).
    #[must_use]
    pub fn average_batch_size(&self) -> f64 {
        if self.batches_created == 0 {
            0.0
        } else {
            self.items_batched() as f64 / self.batches_created as f64
        }
    }

    /// Compressed size over raw size of the payloads that were compressed (`None` before the
    /// first); below 1 means compression saved space.
    #[must_use]
    pub fn average_compression_ratio(&self) -> Option<f64> {
        (self.payload_bytes_raw > 0).then(|| self.payload_bytes_stored as f64 / self.payload_bytes_raw as f64)
    }
}

/// How persistence is doing, mirrored from the sink every tick (in the `Flush` stage).
///
/// Transitions also become events: `storage_degraded`, `storage_recovered`, and
/// `writes_dropped` whenever `writes_dropped` grows.
#[derive(Resource, Debug, Clone, Default, PartialEq, Eq)]
pub struct PersistenceHealth {
    /// Batches given up on (refused, or refused by the store too many times).
    pub failed_batches: u64,
    /// The last storage error, as text.
    pub last_error: Option<String>,
    /// True while the store answers with an open circuit breaker.
    pub breaker_open: bool,
    /// True from a failed store call until the next successful one.
    pub degraded: bool,
    /// Rows that will never reach the store.
    pub writes_dropped: u64,
    /// Rows waiting in memory in the sink.
    pub queued_rows: u64,
    /// Batches waiting in the outbox file.
    pub outbox_batches: u64,
    /// Tick of the newest batch of this run the store has committed (`None` before the first).
    pub committed_tick: Option<u64>,
    /// Storage lag: simulated milliseconds between the current tick and the newest tick the
    /// store is caught up with: the tick of the newest committed batch (the current tick when
    /// the store holds every batch handed over), but not past the tick before the oldest
    /// position, registry or event change still waiting in the batcher. Sampled every tick in
    /// `Flush`. Metrics are not counted: they aggregate over their own interval by design.
    pub store_lag_ms: u64,
}

impl From<SinkHealth> for PersistenceHealth {
    fn from(h: SinkHealth) -> Self {
        Self {
            failed_batches: h.failed_batches,
            last_error: h.last_error,
            breaker_open: h.breaker_open,
            degraded: h.degraded,
            writes_dropped: h.writes_dropped,
            queued_rows: h.queued_rows,
            outbox_batches: h.outbox_batches,
            committed_tick: h.committed_tick,
            store_lag_ms: 0,
        }
    }
}
