//! `WriteBehindConfig`: the settings of the write-behind queue, with defaults and range checks.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use terrarium_codec::in_range;

use crate::WriteBehindError;

/// Settings of a [`crate::WriteBehind`]. Every field has a default; sizes are in rows (of any kind).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WriteBehindConfig {
    /// Spill file (append-only, replayed after a failure or a restart). `None`: no spilling;
    /// batches wait in memory up to `max_queued_rows`, and what does not fit is dropped and
    /// counted.
    pub outbox_path: Option<PathBuf>,
    /// Hard bound on rows waiting in memory; a batch that would exceed it is refused (dropped,
    /// counted, reported). 1 ..= 1 000 000 000.
    pub max_queued_rows: usize,
    /// Above this many rows waiting in memory, waiting batches move to the outbox (when there
    /// is one). 1 ..= `max_queued_rows`.
    pub spill_queued_rows: usize,
    /// Largest outbox file, bytes; a spill that would pass it fails (and the batches stay in
    /// memory). 1 MiB ..= 1 TiB.
    pub max_outbox_bytes: u64,
    /// Largest single frame (one encoded batch) the outbox writes or reads back, bytes.
    /// 1 KiB ..= 4 GiB.
    pub max_frame_bytes: u64,
    /// Most batches in one store call (group commit). 1 ..= 100 000.
    pub max_group_batches: usize,
    /// A store call takes more batches only while it has fewer rows than this. 1 ..= 1 000 000 000.
    pub max_group_rows: usize,
    /// Most rows (of every kind) in one store call, whatever the world's size: a batch with
    /// more (the first write of a large world: a registry row and a position per NPC; a
    /// position batch covering a big population) is cut into parts of at most this many rows,
    /// each written as a batch of its own (own id, in order), and a group never takes a batch
    /// that would pass it. 1 000 ..= 100 000 000.
    pub max_call_rows: usize,
    /// Least wall-clock time between two store calls, milliseconds; batches that arrive in
    /// between wait and go together. `flush` and `shutdown` skip it. 0 ..= 60 000.
    pub commit_interval_ms: u64,
    /// A store call that takes longer counts as failed (`StorageError::Timeout`), milliseconds.
    /// 1 ..= 3 600 000.
    pub write_timeout_ms: u64,
    /// First wait before retrying a failed call, milliseconds; doubles up to `retry_max_ms`.
    /// 1 ..= 3 600 000.
    pub retry_min_ms: u64,
    /// Longest wait between retries, milliseconds. `retry_min_ms` ..= 3 600 000.
    pub retry_max_ms: u64,
    /// Tries for a batch the store refuses with a non-transient error before it is given up
    /// (kept in `<outbox>.dead`, counted, logged). Transient errors are retried forever.
    /// 1 ..= 1000.
    pub max_attempts: u32,
    /// At start-up, queue the batches of `<outbox>.dead` (given up earlier) again, with fresh
    /// ids, before anything new; the file is removed once they are in the outbox. For after
    /// the cause (a bad deploy, a constraint) is fixed. Needs `outbox_path`.
    pub replay_dead: bool,
    /// The slowest rate, in rows per second, a store call is expected to reach: a call may take
    /// `write_timeout_ms` plus its rows at this rate, so a call whose size grows with the world
    /// (the first write of a large world, a catch-up) is not cut off for its size alone.
    /// 1 ..= 1 000 000 000.
    pub write_rows_per_s: u64,
    /// Producer id for batch ids, for tests only: `None` (always, outside tests) picks a fresh
    /// random one per start. Not read from configuration files or the environment: a fixed id
    /// reused by a second start would make every store skip that start's batches as already
    /// applied (issue 13, defect 6).
    #[serde(skip)]
    #[doc(hidden)]
    pub run_id: Option<u64>,
}

impl Default for WriteBehindConfig {
    fn default() -> Self {
        Self {
            outbox_path: None,
            max_queued_rows: 16_000_000,
            spill_queued_rows: 4_000_000,
            max_outbox_bytes: 4 << 30,
            max_frame_bytes: 1 << 30,
            max_group_batches: 64,
            max_group_rows: 4_000_000,
            max_call_rows: 250_000,
            commit_interval_ms: 100,
            write_timeout_ms: 30_000,
            retry_min_ms: 50,
            retry_max_ms: 5_000,
            max_attempts: 5,
            replay_dead: false,
            write_rows_per_s: 20_000,
            run_id: None,
        }
    }
}

impl WriteBehindConfig {
    /// Checks every value against its allowed range.
    ///
    /// # Errors
    /// [`WriteBehindError::OutOfRange`] naming the first bad setting.
    pub fn validate(&self) -> Result<(), WriteBehindError> {
        let w = self;
        in_range("write_behind.max_queued_rows", w.max_queued_rows, &(1..=1_000_000_000))?;
        in_range("write_behind.spill_queued_rows", w.spill_queued_rows, &(1..=w.max_queued_rows))?;
        in_range("write_behind.max_outbox_bytes", w.max_outbox_bytes, &((1 << 20)..=(1 << 40)))?;
        in_range("write_behind.max_frame_bytes", w.max_frame_bytes, &((1 << 10)..=(4 << 30)))?;
        in_range("write_behind.max_group_batches", w.max_group_batches, &(1..=100_000))?;
        in_range("write_behind.max_group_rows", w.max_group_rows, &(1..=1_000_000_000))?;
        in_range("write_behind.max_call_rows", w.max_call_rows, &(1_000..=100_000_000))?;
        in_range("write_behind.commit_interval_ms", w.commit_interval_ms, &(0..=60_000))?;
        in_range("write_behind.write_timeout_ms", w.write_timeout_ms, &(1..=3_600_000))?;
        in_range("write_behind.retry_min_ms", w.retry_min_ms, &(1..=3_600_000))?;
        in_range("write_behind.retry_max_ms", w.retry_max_ms, &(w.retry_min_ms..=3_600_000))?;
        in_range("write_behind.max_attempts", w.max_attempts, &(1..=1000))?;
        in_range("write_behind.write_rows_per_s", w.write_rows_per_s, &(1..=1_000_000_000))?;
        Ok(())
    }
}
