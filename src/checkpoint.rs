//! The checkpoint writer: a thread that encodes the snapshot bodies the tick thread copies out
//! of the world, waits until the store has committed every batch the checkpoint follows, and
//! stores it. The tick only copies columns (see BENCHMARKS.md for the figures); encoding and
//! writing never hold it up.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use terrarium_engine::SnapshotBody;
use terrarium_persistence::{Checkpoint, StorageStack};

/// Counters of the checkpoint writer, readable from any thread.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckpointStats {
    /// Checkpoints stored.
    pub written: u64,
    /// Checkpoints not taken because the previous one was still being written.
    pub skipped: u64,
    /// Checkpoints that could not be stored (logged at `error`; the next one tries again).
    pub failed: u64,
    /// Tick of the newest checkpoint stored.
    pub last_tick: u64,
    /// Its size, bytes.
    pub last_bytes: u64,
    /// Microseconds the tick thread spent copying the world for it.
    pub last_gather_us: u64,
    /// Microseconds encoding it took (on the writer thread).
    pub last_encode_us: u64,
    /// Microseconds storing it took, waiting for its batches included.
    pub last_store_us: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    written: AtomicU64,
    skipped: AtomicU64,
    failed: AtomicU64,
    last_tick: AtomicU64,
    last_bytes: AtomicU64,
    last_gather_us: AtomicU64,
    last_encode_us: AtomicU64,
    last_store_us: AtomicU64,
}

impl Counters {
    pub(crate) fn stats(&self) -> CheckpointStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CheckpointStats {
            written: g(&self.written),
            skipped: g(&self.skipped),
            failed: g(&self.failed),
            last_tick: g(&self.last_tick),
            last_bytes: g(&self.last_bytes),
            last_gather_us: g(&self.last_gather_us),
            last_encode_us: g(&self.last_encode_us),
            last_store_us: g(&self.last_store_us),
        }
    }
}

/// One checkpoint to write.
pub(crate) struct Job {
    pub body: SnapshotBody,
    pub run: u64,
    pub seq: u64,
    pub clean: bool,
    pub gather_us: u64,
    /// Stored before its batches are handed over (a new world's first checkpoint): nothing to
    /// wait for; a resume finds the store's mark below `seq` until they are all committed
    /// and takes the checkpoint alone as the world.
    pub ahead: bool,
}

/// The writer thread and the way to it.
pub(crate) struct Checkpointer {
    jobs: Option<mpsc::SyncSender<Job>>,
    thread: Option<JoinHandle<()>>,
    pub(crate) counters: Arc<Counters>,
}

/// How long the writer waits for a checkpoint's batches before giving it up (the store is
/// down or far behind; the next checkpoint tries again).
const BATCH_WAIT: Duration = Duration::from_secs(300);

impl Checkpointer {
    pub(crate) fn start(
        stack: Arc<StorageStack>,
        runtime: tokio::runtime::Handle,
        keep: u32,
    ) -> std::io::Result<Self> {
        let counters = Arc::new(Counters::default());
        // One waiting at most: the tick skips a checkpoint rather than queue a second copy
        // of the world behind one still being written.
        let (tx, rx) = mpsc::sync_channel::<Job>(0);
        let c = Arc::clone(&counters);
        let thread = std::thread::Builder::new().name("terrarium-checkpoint".into()).spawn(move || {
            // Encoding a checkpoint is storage work: it never preempts the tick.
            terrarium_persistence::os::mark_background_thread();
            while let Ok(job) = rx.recv() {
                if let Err(e) = write(&stack, &runtime, job, keep, &c, BATCH_WAIT) {
                    c.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, "checkpoint not stored; the next one tries again");
                }
            }
        })?;
        Ok(Self { jobs: Some(tx), thread: Some(thread), counters })
    }

    /// Hands a checkpoint to the writer, or counts it skipped when the writer is busy.
    pub(crate) fn offer(&self, job: Job) -> bool {
        let Some(jobs) = &self.jobs else { return false };
        match jobs.try_send(job) {
            Ok(()) => true,
            Err(_) => {
                self.counters.skipped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Waits for the checkpoint being written, then stops the thread.
    pub(crate) fn stop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Encodes, waits for the batches, stores.
pub(crate) fn write(
    stack: &StorageStack,
    runtime: &tokio::runtime::Handle,
    job: Job,
    keep: u32,
    c: &Counters,
    batch_wait: Duration,
) -> Result<(), CheckpointError> {
    let t = Instant::now();
    let tick = job.body.tick();
    let bytes = job.body.to_bytes().map_err(CheckpointError::Encode)?;
    drop(job.body);
    let encode_us = micros(t.elapsed());
    let t = Instant::now();
    let deadline = t + batch_wait;
    loop {
        let mark = runtime.block_on(stack.backend().applied_seq(job.run));
        match mark {
            Ok(m) if job.ahead || job.seq == 0 || m.is_some_and(|m| m >= job.seq) => break,
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "checkpoint: cannot read the batch mark yet"),
        }
        if Instant::now() >= deadline {
            return Err(CheckpointError::BatchesNotCommitted { tick, seq: job.seq, waited: batch_wait });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let size = bytes.len() as u64;
    let cp = Checkpoint { run: job.run, seq: job.seq, tick, clean: job.clean, bytes };
    runtime.block_on(stack.backend().save_checkpoint(cp, keep)).map_err(CheckpointError::Store)?;
    c.written.fetch_add(1, Ordering::Relaxed);
    c.last_tick.store(tick, Ordering::Relaxed);
    c.last_bytes.store(size, Ordering::Relaxed);
    c.last_gather_us.store(job.gather_us, Ordering::Relaxed);
    c.last_encode_us.store(encode_us, Ordering::Relaxed);
    c.last_store_us.store(micros(t.elapsed()), Ordering::Relaxed);
    tracing::info!(tick, bytes = size, clean = job.clean, "checkpoint stored");
    Ok(())
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A checkpoint could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The world could not be encoded.
    #[error("cannot encode the checkpoint")]
    Encode(#[source] terrarium_engine::SnapshotError),
    /// The batches it follows were not committed in time (the store is down or far behind).
    #[error("batches up to {seq} not committed after {waited:?}; checkpoint of tick {tick} given up")]
    BatchesNotCommitted {
        /// The checkpoint's tick.
        tick: u64,
        /// The batch it follows.
        seq: u64,
        /// How long the writer waited.
        waited: Duration,
    },
    /// The store refused or failed the write.
    #[error("cannot store the checkpoint")]
    Store(#[source] terrarium_persistence::StorageError),
}
