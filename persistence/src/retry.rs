//! `Retry<S>`: tries a call again after a transient failure, with exponential backoff and jitter.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::{NpcFilter, NpcPage, NpcRecord, Page, RetryConfig, Storage, StorageError, WriteBatch};

/// Counters of a [`Retry`] layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryMetrics {
    /// Calls made through the layer.
    pub calls: u64,
    /// Extra attempts made (a call tried three times counts two).
    pub retries: u64,
    /// Calls that failed at first and then succeeded.
    pub recovered: u64,
    /// Calls that still failed transiently after the last attempt.
    pub exhausted: u64,
    /// Calls that failed with an error that is not transient (never retried).
    pub not_retried: u64,
}

/// Repeats a call that failed with a transient error ([`StorageError::is_transient`]), up to
/// `max_attempts` tries in all. Before retry `n` (from 1) it waits a random time between half and
/// all of `min(base_delay · 2ⁿ⁻¹, max_delay)` ("equal jitter"), so callers that failed together
/// do not come back together. Anything else (an open circuit, a rejected or corrupt record) is
/// returned at once.
///
/// Retrying a write is safe because writes are idempotent by batch id (see [`Storage`]).
///
/// # Examples
/// ```
/// use terrarium_persistence::testing::{Fault, FaultyStore};
/// use terrarium_persistence::{MemoryStore, Retry, RetryConfig, Storage};
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let cfg = RetryConfig { base_delay_ms: 1, ..RetryConfig::default() };
/// let store = Retry::new(FaultyStore::new(MemoryStore::default()), cfg);
/// store.inner().inject(2, Fault::Unavailable);
/// assert_eq!(store.get_npc(7).await?, None); // third try succeeds
/// assert_eq!(store.metrics().retries, 2);
/// # Ok::<(), terrarium_persistence::StorageError>(()) }).unwrap();
/// ```
#[derive(Debug)]
pub struct Retry<S> {
    inner: S,
    cfg: RetryConfig,
    calls: AtomicU64,
    retries: AtomicU64,
    recovered: AtomicU64,
    exhausted: AtomicU64,
    not_retried: AtomicU64,
}

impl<S> Retry<S> {
    /// Wraps `inner`. `cfg` should be valid ([`crate::StorageConfig::validate`]); zero attempts
    /// are treated as one.
    pub fn new(inner: S, cfg: RetryConfig) -> Self {
        Self {
            inner,
            cfg,
            calls: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            recovered: AtomicU64::new(0),
            exhausted: AtomicU64::new(0),
            not_retried: AtomicU64::new(0),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Counters so far.
    pub fn metrics(&self) -> RetryMetrics {
        RetryMetrics {
            calls: self.calls.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            recovered: self.recovered.load(Ordering::Relaxed),
            exhausted: self.exhausted.load(Ordering::Relaxed),
            not_retried: self.not_retried.load(Ordering::Relaxed),
        }
    }

    /// The delay before retry `n` (1 = the first retry): the upper bound of its jitter range.
    #[must_use]
    pub fn max_delay_before(&self, n: u32) -> Duration {
        let base = Duration::from_millis(self.cfg.base_delay_ms);
        let doubled = base.saturating_mul(1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX));
        doubled.min(Duration::from_millis(self.cfg.max_delay_ms))
    }

    async fn run<T, F, Fut>(&self, what: &'static str, mut call: F) -> Result<T, StorageError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StorageError>>,
    {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let attempts = self.cfg.max_attempts.max(1);
        let mut attempt = 1;
        loop {
            match call().await {
                Ok(v) => {
                    if attempt > 1 {
                        self.recovered.fetch_add(1, Ordering::Relaxed);
                    }
                    return Ok(v);
                }
                Err(e) if e.is_transient() && attempt < attempts => {
                    let cap = self.max_delay_before(attempt);
                    let half = cap / 2;
                    let jitter = Duration::from_nanos(fastrand::u64(0..=(cap - half).as_nanos() as u64));
                    let delay = half + jitter;
                    tracing::debug!(what, attempt, ?delay, error = %e, "storage call failed; retrying");
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) => {
                    if e.is_transient() {
                        self.exhausted.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(what, attempts, error = %e, "storage call failed after every retry");
                    } else {
                        self.not_retried.fetch_add(1, Ordering::Relaxed);
                    }
                    return Err(e);
                }
            }
        }
    }
}

impl<S: Storage> Storage for Retry<S> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn write(&self, batches: &[WriteBatch]) -> Result<(), StorageError> {
        self.run("write", || self.inner.write(batches)).await
    }

    async fn get_npc(&self, id: u64) -> Result<Option<NpcRecord>, StorageError> {
        self.run("get_npc", || self.inner.get_npc(id)).await
    }

    async fn list_npcs(&self, filter: &NpcFilter, page: Page) -> Result<NpcPage, StorageError> {
        self.run("list_npcs", || self.inner.list_npcs(filter, page)).await
    }

    async fn load_npcs(&self) -> Result<Vec<NpcRecord>, StorageError> {
        self.run("load_npcs", || self.inner.load_npcs()).await
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::Instant;

    use super::*;
    use crate::testing::{Fault, FaultyStore, npc};
    use crate::{BatchId, MemoryStore};

    fn store() -> Retry<FaultyStore<MemoryStore>> {
        Retry::new(FaultyStore::new(MemoryStore::default()), RetryConfig::default())
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_with_growing_jittered_delays() {
        let s = store();
        s.inner().inject(2, Fault::Unavailable);
        let t0 = Instant::now();
        assert_eq!(s.get_npc(1).await.unwrap(), None);
        // Two retries: 25..=50 ms, then 50..=100 ms.
        let waited = t0.elapsed();
        assert!(waited >= Duration::from_millis(75) && waited <= Duration::from_millis(150), "{waited:?}");
        assert_eq!(s.inner().reads().gets, 3);
        let m = s.metrics();
        assert_eq!((m.calls, m.retries, m.recovered, m.exhausted), (1, 2, 1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_max_attempts_with_the_last_error() {
        let s = store();
        s.inner().inject_always(Fault::Timeout);
        let err = s.write(&[WriteBatch::default()]).await.unwrap_err();
        assert!(matches!(err, StorageError::Timeout(_)), "{err}");
        assert_eq!(s.inner().calls(), 3);
        assert_eq!(s.metrics().exhausted, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn non_transient_errors_are_returned_at_once() {
        let s = store();
        s.inner().inject(1, Fault::Rejected);
        let t0 = Instant::now();
        assert!(matches!(s.load_npcs().await, Err(StorageError::Rejected { .. })));
        assert_eq!(t0.elapsed(), Duration::ZERO);
        assert_eq!(s.inner().reads().loads, 1);
        assert_eq!(s.metrics().not_retried, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_retried_write_is_stored_once() {
        let s = store();
        let batch =
            WriteBatch { id: BatchId { run: 1, seq: 1 }, npcs: vec![npc(5, 0)], ..Default::default() };
        s.inner().inject(1, Fault::Timeout);
        s.write(std::slice::from_ref(&batch)).await.unwrap();
        s.write(std::slice::from_ref(&batch)).await.unwrap();
        assert_eq!(s.inner().inner().stats().npc_upserts, 1);
        assert_eq!(s.get_npc(5).await.unwrap().map(|r| r.id), Some(5));
    }

    #[test]
    fn delay_doubles_up_to_the_cap() {
        let s = Retry::new(
            MemoryStore::default(),
            RetryConfig { max_attempts: 20, base_delay_ms: 50, max_delay_ms: 300 },
        );
        let caps: Vec<u128> = (1..=6).map(|n| s.max_delay_before(n).as_millis()).collect();
        assert_eq!(caps, [50, 100, 200, 300, 300, 300]);
        assert_eq!(s.max_delay_before(200).as_millis(), 300, "no overflow on huge attempt numbers");
    }
}
