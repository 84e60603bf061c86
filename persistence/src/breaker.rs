//! `CircuitBreaker<S>`: stops calling a store that keeps failing, and tries it again later.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{
    BreakerConfig, Clock, NpcFilter, NpcPage, NpcRecord, Page, Storage, StorageError, TokioClock, WriteBatch,
};

/// Where a [`CircuitBreaker`] stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BreakerState {
    /// Calls go through; consecutive transient failures are counted.
    #[default]
    Closed,
    /// Calls are refused with [`StorageError::CircuitOpen`] until the reset timeout has passed.
    Open,
    /// A few trial calls go through; enough successes close the circuit, one failure opens it.
    HalfOpen,
}

/// State and counters of a [`CircuitBreaker`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BreakerMetrics {
    /// The state now (an open circuit whose reset timeout has passed still reads `Open` until
    /// the next call moves it to half-open).
    pub state: BreakerState,
    /// Calls let through.
    pub calls: u64,
    /// Calls that succeeded (an error that is not transient counts: the store answered).
    pub successes: u64,
    /// Calls that failed transiently, timeouts included.
    pub failures: u64,
    /// Calls cut off by the call timeout (also counted in `failures`).
    pub timeouts: u64,
    /// Calls refused without trying because the circuit was open.
    pub rejected: u64,
    /// Times the circuit opened.
    pub opened: u64,
    /// Times it closed again after being open.
    pub closed: u64,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { successes: u32, trials: u32 },
}

#[derive(Debug)]
struct Machine {
    state: State,
    /// Bumped at every state change, so a call's outcome only counts in the state that let it in.
    generation: u64,
}

/// Fails fast while a store is down.
///
/// Closed: calls pass, each bounded by `call_timeout`; `failure_threshold` consecutive transient
/// failures open the circuit. Open: calls are refused at once with
/// [`StorageError::CircuitOpen`] (not transient, so a [`crate::Retry`] outside stops at once).
/// After `reset_timeout` the next call moves it to half-open, where up to `success_threshold`
/// trial calls go through at a time: that many successes in a row close it, one failure opens it
/// again for another `reset_timeout`.
///
/// # Examples
/// ```
/// use terrarium_persistence::testing::{Fault, FaultyStore};
/// use terrarium_persistence::{BreakerConfig, BreakerState, CircuitBreaker, MemoryStore, Storage, StorageError};
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let cfg = BreakerConfig { failure_threshold: 2, ..BreakerConfig::default() };
/// let store = CircuitBreaker::new(FaultyStore::new(MemoryStore::default()), cfg);
/// store.inner().inject_always(Fault::Unavailable);
/// for _ in 0..2 {
///     assert!(store.get_npc(1).await.is_err());
/// }
/// assert_eq!(store.metrics().state, BreakerState::Open);
/// assert!(matches!(store.get_npc(1).await, Err(StorageError::CircuitOpen { .. })));
/// assert_eq!(store.inner().reads().gets, 2, "the open circuit did not call the store");
/// # });
/// ```
pub struct CircuitBreaker<S> {
    inner: S,
    cfg: BreakerConfig,
    clock: Arc<dyn Clock>,
    machine: Mutex<Machine>,
    calls: AtomicU64,
    successes: AtomicU64,
    failures: AtomicU64,
    timeouts: AtomicU64,
    rejected: AtomicU64,
    opened: AtomicU64,
    closed: AtomicU64,
}

impl<S> std::fmt::Debug for CircuitBreaker<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker").field("cfg", &self.cfg).field("metrics", &self.metrics()).finish()
    }
}

/// Permission to make one call, from the state it was given in.
struct Ticket {
    generation: u64,
}

impl<S> CircuitBreaker<S> {
    /// Wraps `inner`, timing with tokio's clock.
    pub fn new(inner: S, cfg: BreakerConfig) -> Self {
        Self::with_clock(inner, cfg, Arc::new(TokioClock))
    }

    /// Wraps `inner`, reading the time from `clock` (call timeouts still use tokio's timer).
    pub fn with_clock(inner: S, cfg: BreakerConfig, clock: Arc<dyn Clock>) -> Self {
        Self {
            inner,
            cfg,
            clock,
            machine: Mutex::new(Machine { state: State::Closed { failures: 0 }, generation: 0 }),
            calls: AtomicU64::new(0),
            successes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            opened: AtomicU64::new(0),
            closed: AtomicU64::new(0),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The state now.
    pub fn state(&self) -> BreakerState {
        match self.lock().state {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// State and counters.
    pub fn metrics(&self) -> BreakerMetrics {
        BreakerMetrics {
            state: self.state(),
            calls: self.calls.load(Ordering::Relaxed),
            successes: self.successes.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            opened: self.opened.load(Ordering::Relaxed),
            closed: self.closed.load(Ordering::Relaxed),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Machine> {
        // Every update below leaves the machine in a valid state before anything can panic.
        self.machine.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Lets a call in, or refuses it without touching the store.
    fn admit(&self) -> Result<Ticket, StorageError> {
        let mut m = self.lock();
        if let State::Open { until } = m.state {
            let now = self.clock.now();
            if now < until {
                drop(m);
                self.rejected.fetch_add(1, Ordering::Relaxed);
                return Err(StorageError::CircuitOpen { retry_after: until - now });
            }
            m.state = State::HalfOpen { successes: 0, trials: 0 };
            m.generation += 1;
            tracing::info!("storage circuit half-open: trying the store again");
        }
        if let State::HalfOpen { trials, .. } = &mut m.state {
            if *trials >= self.cfg.success_threshold {
                drop(m);
                self.rejected.fetch_add(1, Ordering::Relaxed);
                return Err(StorageError::CircuitOpen { retry_after: self.call_timeout() });
            }
            *trials += 1;
        }
        self.calls.fetch_add(1, Ordering::Relaxed);
        Ok(Ticket { generation: m.generation })
    }

    /// Counts one call's outcome against the state that let it in.
    fn settle(&self, ticket: &Ticket, failed: bool) {
        if failed {
            self.failures.fetch_add(1, Ordering::Relaxed);
        } else {
            self.successes.fetch_add(1, Ordering::Relaxed);
        }
        let mut m = self.lock();
        if m.generation != ticket.generation {
            return;
        }
        let open_until = self.clock.now() + Duration::from_millis(self.cfg.reset_timeout_ms);
        let next = match (m.state, failed) {
            (State::Closed { failures }, true) if failures + 1 >= self.cfg.failure_threshold => {
                tracing::warn!(failures = failures + 1, "storage circuit open");
                State::Open { until: open_until }
            }
            (State::Closed { failures }, true) => State::Closed { failures: failures + 1 },
            (State::Closed { .. }, false) => State::Closed { failures: 0 },
            (State::HalfOpen { .. }, true) => {
                tracing::warn!("storage circuit open again: the trial call failed");
                State::Open { until: open_until }
            }
            (State::HalfOpen { successes, .. }, false) if successes + 1 >= self.cfg.success_threshold => {
                tracing::info!("storage circuit closed");
                State::Closed { failures: 0 }
            }
            (State::HalfOpen { successes, trials }, false) => {
                State::HalfOpen { successes: successes + 1, trials: trials.saturating_sub(1) }
            }
            (open @ State::Open { .. }, _) => open,
        };
        let changed = std::mem::discriminant(&next) != std::mem::discriminant(&m.state);
        m.state = next;
        if changed {
            m.generation += 1;
            match next {
                State::Open { .. } => self.opened.fetch_add(1, Ordering::Relaxed),
                State::Closed { .. } => self.closed.fetch_add(1, Ordering::Relaxed),
                State::HalfOpen { .. } => 0,
            };
        }
    }

    fn call_timeout(&self) -> Duration {
        Duration::from_millis(self.cfg.call_timeout_ms)
    }

    async fn guard<T>(
        &self,
        timed: bool,
        call: impl Future<Output = Result<T, StorageError>>,
    ) -> Result<T, StorageError> {
        let ticket = self.admit()?;
        let result = if timed {
            match tokio::time::timeout(self.call_timeout(), call).await {
                Ok(r) => r,
                Err(_) => {
                    self.timeouts.fetch_add(1, Ordering::Relaxed);
                    Err(StorageError::Timeout(self.call_timeout()))
                }
            }
        } else {
            call.await
        };
        self.settle(&ticket, result.as_ref().is_err_and(StorageError::is_transient));
        result
    }
}

impl<S: Storage> Storage for CircuitBreaker<S> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn write(&self, batches: &[WriteBatch]) -> Result<(), StorageError> {
        self.guard(true, self.inner.write(batches)).await
    }

    async fn get_npc(&self, id: u64) -> Result<Option<NpcRecord>, StorageError> {
        self.guard(true, self.inner.get_npc(id)).await
    }

    async fn list_npcs(&self, filter: &NpcFilter, page: Page) -> Result<NpcPage, StorageError> {
        self.guard(true, self.inner.list_npcs(filter, page)).await
    }

    async fn load_npcs(&self) -> Result<Vec<NpcRecord>, StorageError> {
        // A full load grows with the world; the store's own statement timeout bounds it.
        self.guard(false, self.inner.load_npcs()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Fault, FaultyStore};
    use crate::{ManualClock, MemoryStore};

    type Store = CircuitBreaker<FaultyStore<MemoryStore>>;

    fn store() -> Store {
        CircuitBreaker::new(FaultyStore::new(MemoryStore::default()), BreakerConfig::default())
    }

    async fn fail_n(s: &Store, n: usize) {
        for _ in 0..n {
            assert!(s.get_npc(1).await.unwrap_err().is_transient());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_five_consecutive_failures_and_rejects_without_calling() {
        let s = store();
        s.inner().inject_always(Fault::Unavailable);
        fail_n(&s, 4).await;
        assert_eq!(s.state(), BreakerState::Closed);
        fail_n(&s, 1).await;
        assert_eq!(s.state(), BreakerState::Open);
        let err = s.write(&[]).await.unwrap_err();
        let StorageError::CircuitOpen { retry_after } = err else { panic!("{err}") };
        assert_eq!(retry_after, Duration::from_secs(60));
        assert!(!StorageError::CircuitOpen { retry_after }.is_transient());
        let m = s.metrics();
        assert_eq!((m.calls, m.failures, m.rejected, m.opened), (5, 5, 1, 1));
        assert_eq!(s.inner().calls(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_failure_count() {
        let s = store();
        s.inner().inject(4, Fault::Timeout);
        fail_n(&s, 4).await;
        s.get_npc(1).await.unwrap();
        s.inner().inject(4, Fault::Timeout);
        fail_n(&s, 4).await;
        assert_eq!(s.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_after_reset_timeout_then_closes_after_two_successes() {
        let s = store();
        s.inner().inject_always(Fault::Unavailable);
        fail_n(&s, 5).await;
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(matches!(s.get_npc(1).await, Err(StorageError::CircuitOpen { .. })));
        tokio::time::advance(Duration::from_secs(1)).await;
        s.inner().heal();
        s.get_npc(1).await.unwrap();
        assert_eq!(s.state(), BreakerState::HalfOpen);
        s.get_npc(1).await.unwrap();
        assert_eq!(s.state(), BreakerState::Closed);
        assert_eq!(s.metrics().closed, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_trial_opens_it_again() {
        let s = store();
        s.inner().inject_always(Fault::Unavailable);
        fail_n(&s, 5).await;
        tokio::time::advance(Duration::from_secs(60)).await;
        fail_n(&s, 1).await;
        assert_eq!(s.state(), BreakerState::Open);
        assert_eq!(s.metrics().opened, 2);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(matches!(s.get_npc(1).await, Err(StorageError::CircuitOpen { .. })));
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_lets_only_a_few_trials_through_at_once() {
        let s = Arc::new(store());
        s.inner().inject_always(Fault::Unavailable);
        fail_n(&s, 5).await;
        tokio::time::advance(Duration::from_secs(60)).await;
        s.inner().inject_always(Fault::SlowReply(Duration::from_secs(1)));
        let trials: Vec<_> = (0..2)
            .map(|_| {
                let s = Arc::clone(&s);
                tokio::spawn(async move { s.get_npc(1).await })
            })
            .collect();
        tokio::task::yield_now().await;
        assert!(matches!(s.get_npc(1).await, Err(StorageError::CircuitOpen { .. })), "third trial refused");
        for t in trials {
            t.await.unwrap().unwrap();
        }
        assert_eq!(s.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_call_times_out_and_counts_as_a_failure() {
        let s = store();
        s.inner().inject(1, Fault::SlowReply(Duration::from_secs(10)));
        let err = s.get_npc(1).await.unwrap_err();
        assert!(matches!(err, StorageError::Timeout(d) if d == Duration::from_secs(5)), "{err}");
        let m = s.metrics();
        assert_eq!((m.timeouts, m.failures), (1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn errors_that_are_not_transient_do_not_open_it() {
        let s = store();
        s.inner().inject_always(Fault::Rejected);
        for _ in 0..10 {
            assert!(matches!(s.get_npc(1).await, Err(StorageError::Rejected { .. })));
        }
        assert_eq!(s.state(), BreakerState::Closed);
    }

    #[tokio::test]
    async fn the_clock_is_injectable() {
        let clock = Arc::new(ManualClock::new());
        let cfg = BreakerConfig { failure_threshold: 1, reset_timeout_ms: 1000, ..BreakerConfig::default() };
        let s = CircuitBreaker::with_clock(FaultyStore::new(MemoryStore::default()), cfg, clock.clone());
        s.inner().inject(1, Fault::Unavailable);
        fail_n(&s, 1).await;
        assert!(matches!(s.get_npc(1).await, Err(StorageError::CircuitOpen { .. })));
        clock.advance(Duration::from_millis(1000));
        s.get_npc(1).await.unwrap();
        assert_eq!(s.state(), BreakerState::HalfOpen);
    }
}
