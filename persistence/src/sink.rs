//! `BatchSink`: where a batcher hands its finished batches (the write-behind queue, or a test
//! recorder). The one call the tick makes towards storage; it never blocks and never does I/O.

use crate::{PositionColumns, WriteBatch, WriteBehindError};

/// One batch as the tick hands it over.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Handoff {
    /// The batch. Its `id` is set by the sink.
    pub batch: WriteBatch,
    /// Position rows in column form; the sink appends them to `batch.positions` (after the
    /// rows already there) before the batch is written.
    pub positions: PositionColumns,
    /// True when the batch's positions hold a row for every NPC alive at `batch.tick`: the
    /// sink may then drop the position rows of earlier batches that are still waiting (they
    /// are superseded: latest wins per NPC).
    pub covers_all_positions: bool,
}

impl Handoff {
    /// Rows of every kind, columns included.
    #[must_use]
    pub fn len(&self) -> usize {
        self.batch.len() + self.positions.len()
    }

    /// True when there is nothing to write.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The batch with the columns turned into rows.
    #[must_use]
    pub fn into_batch(mut self) -> WriteBatch {
        self.positions.append_to(&mut self.batch.positions);
        self.batch
    }
}

/// Takes finished batches from the tick and gets them to storage eventually.
///
/// # Contract
/// - [`BatchSink::submit`] returns at once: no I/O, no waiting on a lock held across I/O, no
///   blocking channel send.
/// - The sink gives every accepted batch its [`crate::BatchId`] (`run` = [`BatchSink::run_id`],
///   `seq` counting up from 1 in submit order), overwriting what the batch carried.
/// - A refused batch is counted by the sink (`writes_dropped`) and logged; the caller should
///   count and report it too. Nothing is dropped silently.
pub trait BatchSink: Send + Sync + 'static {
    /// Hands over one batch.
    ///
    /// # Errors
    /// [`WriteBehindError::Full`] when taking the batch would exceed the sink's memory bound,
    /// [`WriteBehindError::Closed`] after shutdown. The batch is dropped and counted.
    fn submit(&self, handoff: Handoff) -> Result<(), WriteBehindError>;

    /// The producer instance id used in [`crate::BatchId::run`] (and by batchers to make event
    /// ids unique across process restarts).
    fn run_id(&self) -> u64;

    /// Position columns to fill again (their lengths and capacities are kept, so refilling
    /// them neither allocates nor faults pages in), if the sink has some to give back.
    fn reuse_columns(&self) -> Option<PositionColumns> {
        None
    }

    /// How the storage behind the sink is doing.
    fn health(&self) -> SinkHealth {
        SinkHealth::default()
    }

    /// True when the sink can take a batch of position rows now: no batch holding positions
    /// waits for the store. A batcher that holds its positions back while this is false copies
    /// a population once per store call instead of once per tick (what would wait here would
    /// be coalesced away by the next batch anyway). Sinks that write at once always say true.
    fn wants_positions(&self) -> bool {
        true
    }
}

/// A point-in-time view of a sink's health, mirrored into the ECS each tick by the batching
/// systems.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkHealth {
    /// Batches given up on (refused by the store too many times, or refused at submit).
    pub failed_batches: u64,
    /// Rows that will never reach the store (given up or refused), all kinds together.
    pub writes_dropped: u64,
    /// The last storage error, as text (`None` until something fails).
    pub last_error: Option<String>,
    /// True while the store refuses calls with an open circuit breaker.
    pub breaker_open: bool,
    /// True from a failed store call until the next successful one.
    pub degraded: bool,
    /// Rows waiting in memory.
    pub queued_rows: u64,
    /// Batches waiting in the outbox file.
    pub outbox_batches: u64,
    /// Tick of the newest batch of this run the store has committed (`None` before the first).
    pub committed_tick: Option<u64>,
    /// Batches of this run accepted and not yet settled (written, or given up and counted).
    /// 0 means the store holds everything the sink was given.
    pub unsettled_batches: u64,
}
