//! `CircuitBreaker<S>`: stops calling a store that keeps failing, and tries it again later.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{
    BreakerConfig, Clock, NpcFilter, NpcPage, NpcRecord, Page, Storage, StorageError, TokioClock, WriteBatch,
};

/// Where a [`CircuitBreaker`] stands (serialised `closed`, `open`, `half_open`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// `deadline`: by then every trial let in has had the time its call may take; trials still
    /// unsettled then are presumed lost (a call that was never polled again), and a fresh
    /// half-open round starts instead of refusing forever.
    HalfOpen {
        successes: u32,
        trials: u32,
        deadline: Instant,
    },
}

#[derive(Debug)]
struct Machine {
    state: State,
    /// Bumped at every state change, so a call's outcome only counts in the state that let it in.
    generation: u64,
}

/// One circuit: its state machine and counters. A [`CircuitBreaker`] has two, one for writes
/// and one for reads, so that slow or refused reads never stop the writer (and the reverse).
#[derive(Debug)]
struct Circuit {
    machine: Mutex<Machine>,
    calls: AtomicU64,
    successes: AtomicU64,
    failures: AtomicU64,
    timeouts: AtomicU64,
    rejected: AtomicU64,
    opened: AtomicU64,
    closed: AtomicU64,
}

impl Circuit {
    fn new() -> Self {
        Self {
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Machine> {
        // Every update below leaves the machine in a valid state before anything can panic.
        self.machine.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn state(&self) -> BreakerState {
        match self.lock().state {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    fn metrics(&self) -> BreakerMetrics {
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
}

/// Fails fast while a store is down.
///
/// Closed: calls pass, each bounded by a timeout (`call_timeout`, plus for a write the time its
/// rows take at [`BreakerConfig::write_rows_per_s`]); `failure_threshold` consecutive transient
/// failures open the circuit. Open: calls are refused at once with
/// [`StorageError::CircuitOpen`] (not transient, so a [`crate::Retry`] outside stops at once).
/// After `reset_timeout` the next call moves it to half-open, where up to `success_threshold`
/// trial calls go through at a time: that many successes in a row close it, one failure opens it
/// again for another `reset_timeout`. A trial whose caller gives up (its future dropped) gives
/// its slot back; a half-open round whose trials have not decided by the time their calls may
/// take starts over, so the circuit can never stay half-open for good.
///
/// Writes and reads have a circuit each ([`CircuitBreaker::metrics`],
/// [`CircuitBreaker::read_metrics`]): a burst of slow reads can't stop the writer.
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
/// assert_eq!(store.read_metrics().state, BreakerState::Open);
/// assert!(matches!(store.get_npc(1).await, Err(StorageError::CircuitOpen { .. })));
/// assert_eq!(store.inner().reads().gets, 2, "the open circuit did not call the store");
/// assert_eq!(store.metrics().state, BreakerState::Closed, "writes have a circuit of their own");
/// # });
/// ```
pub struct CircuitBreaker<S> {
    inner: S,
    cfg: BreakerConfig,
    clock: Arc<dyn Clock>,
    writes: Circuit,
    reads: Circuit,
}

impl<S> std::fmt::Debug for CircuitBreaker<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("cfg", &self.cfg)
            .field("writes", &self.metrics())
            .field("reads", &self.read_metrics())
            .finish()
    }
}

/// Permission to make one call, from the state it was given in. Dropped without being settled
/// (the caller gave up: a disconnected client, a timeout outside, a shutdown), it gives its
/// half-open trial slot back, so cancelled calls can't wedge the circuit.
struct Ticket<'a> {
    circuit: &'a Circuit,
    generation: u64,
    /// It holds one of the half-open round's trial slots.
    trial: bool,
    settled: bool,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if self.settled || !self.trial {
            return;
        }
        let mut m = self.circuit.lock();
        if m.generation != self.generation {
            return;
        }
        if let State::HalfOpen { trials, .. } = &mut m.state {
            *trials = trials.saturating_sub(1);
        }
    }
}

impl<S> CircuitBreaker<S> {
    /// Wraps `inner`, timing with tokio's clock.
    pub fn new(inner: S, cfg: BreakerConfig) -> Self {
        Self::with_clock(inner, cfg, Arc::new(TokioClock))
    }

    /// Wraps `inner`, reading the time from `clock` (call timeouts still use tokio's timer).
    pub fn with_clock(inner: S, cfg: BreakerConfig, clock: Arc<dyn Clock>) -> Self {
        Self { inner, cfg, clock, writes: Circuit::new(), reads: Circuit::new() }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The state of the write circuit now (the one the write-behind depends on).
    pub fn state(&self) -> BreakerState {
        self.writes.state()
    }

    /// State and counters of the write circuit.
    pub fn metrics(&self) -> BreakerMetrics {
        self.writes.metrics()
    }

    /// State and counters of the read circuit (`get_npc`, `list_npcs`, `load_npcs`, [`Self::read`]).
    pub fn read_metrics(&self) -> BreakerMetrics {
        self.reads.metrics()
    }

    /// How long a write of `batches` may take: the call timeout plus the time its rows take at
    /// the slowest rate the store is expected to write, so a write whose size grows with the
    /// world (the first write of a large world, a catch-up after an outage) still fits.
    #[must_use]
    pub fn write_timeout(&self, batches: &[WriteBatch]) -> Duration {
        let rows: usize = batches.iter().map(WriteBatch::len).sum();
        self.call_timeout() + rows_time(rows, self.cfg.write_rows_per_s)
    }

    /// Lets a call in, or refuses it without touching the store. `limit` is how long the call
    /// may take (it bounds a half-open round).
    fn admit<'a>(&self, circuit: &'a Circuit, limit: Duration) -> Result<Ticket<'a>, StorageError> {
        let mut m = circuit.lock();
        let now = self.clock.now();
        if let State::Open { until } = m.state {
            if now < until {
                drop(m);
                circuit.rejected.fetch_add(1, Ordering::Relaxed);
                return Err(StorageError::CircuitOpen { retry_after: until - now });
            }
            m.state = State::HalfOpen { successes: 0, trials: 0, deadline: now };
            m.generation += 1;
            tracing::info!("storage circuit half-open: trying the store again");
        }
        if let State::HalfOpen { trials, deadline, .. } = m.state
            && trials >= self.cfg.success_threshold
        {
            if now < deadline {
                drop(m);
                circuit.rejected.fetch_add(1, Ordering::Relaxed);
                return Err(StorageError::CircuitOpen { retry_after: deadline - now });
            }
            // Every trial has had its time and none decided: they were lost (a caller that
            // never polled again). Start a new round; their late outcomes no longer count.
            tracing::warn!(trials, "storage circuit: half-open trials never settled; starting a new round");
            m.state = State::HalfOpen { successes: 0, trials: 0, deadline: now };
            m.generation += 1;
        }
        let mut trial = false;
        if let State::HalfOpen { trials, deadline, .. } = &mut m.state {
            *trials += 1;
            *deadline = (*deadline).max(now + limit);
            trial = true;
        }
        circuit.calls.fetch_add(1, Ordering::Relaxed);
        Ok(Ticket { circuit, generation: m.generation, trial, settled: false })
    }

    /// Counts one call's outcome against the state that let it in.
    fn settle(&self, ticket: &mut Ticket<'_>, failed: bool) {
        ticket.settled = true;
        let circuit = ticket.circuit;
        if failed {
            circuit.failures.fetch_add(1, Ordering::Relaxed);
        } else {
            circuit.successes.fetch_add(1, Ordering::Relaxed);
        }
        let mut m = circuit.lock();
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
            (State::HalfOpen { successes, trials, deadline }, false) => {
                State::HalfOpen { successes: successes + 1, trials: trials.saturating_sub(1), deadline }
            }
            (open @ State::Open { .. }, _) => open,
        };
        let changed = std::mem::discriminant(&next) != std::mem::discriminant(&m.state);
        m.state = next;
        if changed {
            m.generation += 1;
            match next {
                State::Open { .. } => circuit.opened.fetch_add(1, Ordering::Relaxed),
                State::Closed { .. } => circuit.closed.fetch_add(1, Ordering::Relaxed),
                State::HalfOpen { .. } => 0,
            };
        }
    }

    /// Runs a read of the wrapped store that [`Storage`] has no method for (a history, a
    /// report) through the read circuit, cut off after the call timeout, like `get_npc`.
    ///
    /// # Errors
    /// [`StorageError::CircuitOpen`] without calling while the circuit is open,
    /// [`StorageError::Timeout`] after the call timeout, otherwise `call`'s error.
    pub async fn read<T>(
        &self,
        call: impl Future<Output = Result<T, StorageError>>,
    ) -> Result<T, StorageError> {
        self.guard(&self.reads, Some(self.call_timeout()), call).await
    }

    fn call_timeout(&self) -> Duration {
        Duration::from_millis(self.cfg.call_timeout_ms)
    }

    /// Runs `call` through `circuit`, cut off after `timeout` (`None`: not timed).
    async fn guard<T>(
        &self,
        circuit: &Circuit,
        timeout: Option<Duration>,
        call: impl Future<Output = Result<T, StorageError>>,
    ) -> Result<T, StorageError> {
        let limit = timeout.unwrap_or(Duration::from_millis(self.cfg.reset_timeout_ms));
        let mut ticket = self.admit(circuit, limit)?;
        let result = match timeout {
            Some(limit) => match tokio::time::timeout(limit, call).await {
                Ok(r) => r,
                Err(_) => {
                    circuit.timeouts.fetch_add(1, Ordering::Relaxed);
                    Err(StorageError::Timeout(limit))
                }
            },
            None => call.await,
        };
        self.settle(&mut ticket, result.as_ref().is_err_and(StorageError::is_transient));
        result
    }
}

/// How long `rows` take at `rows_per_s`.
fn rows_time(rows: usize, rows_per_s: u64) -> Duration {
    let micros = (rows as u128 * 1_000_000) / u128::from(rows_per_s.max(1));
    Duration::from_micros(u64::try_from(micros).unwrap_or(u64::MAX))
}

impl<S: Storage> Storage for CircuitBreaker<S> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn write(&self, batches: &[WriteBatch]) -> Result<(), StorageError> {
        let limit = self.write_timeout(batches);
        self.guard(&self.writes, Some(limit), self.inner.write(batches)).await
    }

    async fn get_npc(&self, id: u64) -> Result<Option<NpcRecord>, StorageError> {
        self.guard(&self.reads, Some(self.call_timeout()), self.inner.get_npc(id)).await
    }

    async fn list_npcs(&self, filter: &NpcFilter, page: Page) -> Result<NpcPage, StorageError> {
        self.guard(&self.reads, Some(self.call_timeout()), self.inner.list_npcs(filter, page)).await
    }

    async fn load_npcs(&self) -> Result<Vec<NpcRecord>, StorageError> {
        // A full load grows with the world; the store's own statement timeout bounds it.
        self.guard(&self.reads, None, self.inner.load_npcs()).await
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

    /// `n` reads that fail transiently.
    async fn fail_n(s: &Store, n: usize) {
        for _ in 0..n {
            assert!(s.get_npc(1).await.unwrap_err().is_transient());
        }
    }

    fn reads(s: &Store) -> BreakerState {
        s.read_metrics().state
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_five_consecutive_failures_and_rejects_without_calling() {
        let s = store();
        s.inner().inject_always(Fault::Unavailable);
        fail_n(&s, 4).await;
        assert_eq!(reads(&s), BreakerState::Closed);
        fail_n(&s, 1).await;
        assert_eq!(reads(&s), BreakerState::Open);
        let err = s.get_npc(1).await.unwrap_err();
        let StorageError::CircuitOpen { retry_after } = err else { panic!("{err}") };
        assert_eq!(retry_after, Duration::from_secs(60));
        assert!(!StorageError::CircuitOpen { retry_after }.is_transient());
        let m = s.read_metrics();
        assert_eq!((m.calls, m.failures, m.rejected, m.opened), (5, 5, 1, 1));
        assert_eq!(s.inner().reads().gets, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn other_reads_share_the_read_circuit() {
        let s = store();
        s.inner().inject_always(Fault::Unavailable);
        fail_n(&s, 4).await;
        // A fifth failure through `read` opens the circuit `get_npc` uses …
        let failing = async { Err::<(), _>(StorageError::Timeout(Duration::from_millis(1))) };
        assert!(s.read(failing).await.unwrap_err().is_transient());
        assert_eq!(reads(&s), BreakerState::Open);
        // … and, open, it refuses `read` without running it.
        let mut ran = false;
        let err = s
            .read(async {
                ran = true;
                Ok(())
            })
            .await
            .unwrap_err();
        assert!(matches!(err, StorageError::CircuitOpen { .. }), "{err}");
        assert!(!ran);
        assert_eq!(s.metrics().state, BreakerState::Closed, "writes keep their own circuit");
    }

    #[tokio::test(start_paused = true)]
    async fn failing_reads_never_open_the_writers_circuit() {
        // Issue 13 defect 2: reads and the write-behind shared one circuit, so a burst of slow
        // reads refused every write for a minute while the store was fine for writes.
        let s = store();
        s.inner().inject(5, Fault::Timeout);
        fail_n(&s, 5).await;
        assert_eq!(reads(&s), BreakerState::Open);
        s.write(&[WriteBatch::default()]).await.unwrap();
        assert_eq!(s.state(), BreakerState::Closed);
        assert_eq!(s.metrics().rejected, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_failure_count() {
        let s = store();
        s.inner().inject(4, Fault::Timeout);
        fail_n(&s, 4).await;
        s.get_npc(1).await.unwrap();
        s.inner().inject(4, Fault::Timeout);
        fail_n(&s, 4).await;
        assert_eq!(reads(&s), BreakerState::Closed);
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
        assert_eq!(reads(&s), BreakerState::HalfOpen);
        s.get_npc(1).await.unwrap();
        assert_eq!(reads(&s), BreakerState::Closed);
        assert_eq!(s.read_metrics().closed, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_trial_opens_it_again() {
        let s = store();
        s.inner().inject_always(Fault::Unavailable);
        fail_n(&s, 5).await;
        tokio::time::advance(Duration::from_secs(60)).await;
        fail_n(&s, 1).await;
        assert_eq!(reads(&s), BreakerState::Open);
        assert_eq!(s.read_metrics().opened, 2);
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
        assert_eq!(reads(&s), BreakerState::Closed);
    }

    /// Opens the read circuit, waits out the reset timeout and makes the store slow, so the
    /// next calls are half-open trials that take 3 s.
    async fn half_open_and_slow(s: &Store) {
        s.inner().inject_always(Fault::Unavailable);
        fail_n(s, 5).await;
        tokio::time::advance(Duration::from_secs(60)).await;
        s.inner().inject_always(Fault::SlowReply(Duration::from_secs(3)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_half_open_trial_gives_its_slot_back() {
        // Issue 13 defect 1 (review H1): a trial whose future is dropped (an HTTP client that
        // disconnects mid-read, a timeout outside) kept its slot; after `success_threshold`
        // such drops every call got `CircuitOpen` forever.
        let s = store();
        half_open_and_slow(&s).await;
        for _ in 0..4 {
            let gave_up = tokio::time::timeout(Duration::from_millis(100), s.get_npc(1)).await;
            assert!(gave_up.is_err(), "the caller gave up mid-call");
        }
        assert_eq!(reads(&s), BreakerState::HalfOpen);
        s.inner().heal();
        s.get_npc(1).await.expect("a trial is let through after the drops");
        s.get_npc(1).await.unwrap();
        assert_eq!(reads(&s), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_trials_that_never_settle_expire() {
        // A trial that is never polled again and never dropped (a leaked task) can't hold the
        // circuit half-open for good: the round starts over once its calls' time is up.
        let s = store();
        half_open_and_slow(&s).await;
        for _ in 0..2 {
            let mut call = Box::pin(s.get_npc(1));
            assert!(futures_util::poll!(call.as_mut()).is_pending());
            std::mem::forget(call);
        }
        assert!(matches!(s.get_npc(1).await, Err(StorageError::CircuitOpen { .. })));
        tokio::time::advance(Duration::from_secs(5)).await;
        s.inner().heal();
        s.get_npc(1).await.expect("a new half-open round");
        s.get_npc(1).await.unwrap();
        assert_eq!(reads(&s), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_call_times_out_and_counts_as_a_failure() {
        let s = store();
        s.inner().inject(1, Fault::SlowReply(Duration::from_secs(10)));
        let err = s.get_npc(1).await.unwrap_err();
        assert!(matches!(err, StorageError::Timeout(d) if d == Duration::from_secs(5)), "{err}");
        let m = s.read_metrics();
        assert_eq!((m.timeouts, m.failures), (1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_may_take_the_time_its_rows_need() {
        // Issue 13 defect 3 / issue 14 item 1: the call timeout was the same for a write of one
        // row and one of a million, so a big write timed out on every try, forever.
        let cfg =
            BreakerConfig { call_timeout_ms: 100, write_rows_per_s: 10_000, ..BreakerConfig::default() };
        let s = CircuitBreaker::new(FaultyStore::new(MemoryStore::default()), cfg);
        let big = WriteBatch {
            positions: (0..20_000)
                .map(|npc_id| crate::PositionRow { npc_id, tick: 1, x: 0.0, y: 0.0, z: 0.0 })
                .collect(),
            ..WriteBatch::default()
        };
        assert_eq!(s.write_timeout(std::slice::from_ref(&big)), Duration::from_millis(2_100));
        s.inner().set_delay(Duration::from_secs(2));
        s.write(std::slice::from_ref(&big)).await.expect("fits its timeout");
        s.write(&[WriteBatch::default()]).await.expect_err("a small write gets the short timeout");
    }

    #[tokio::test(start_paused = true)]
    async fn errors_that_are_not_transient_do_not_open_it() {
        let s = store();
        s.inner().inject_always(Fault::Rejected);
        for _ in 0..10 {
            assert!(matches!(s.get_npc(1).await, Err(StorageError::Rejected { .. })));
        }
        assert_eq!(reads(&s), BreakerState::Closed);
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
        assert_eq!(reads(&s), BreakerState::HalfOpen);
    }
}
