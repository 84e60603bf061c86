//! `Clock`: where the storage wrappers read the time, so tests can drive it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A source of monotonic time for breakers and caches.
///
/// The default, [`TokioClock`], follows tokio's clock, so `#[tokio::test(start_paused = true)]`
/// tests drive every timer with `tokio::time::advance`. [`ManualClock`] moves only when told to.
pub trait Clock: Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> Instant;
}

/// tokio's clock (`tokio::time::Instant::now`): real time, or paused test time.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }
}

/// A clock that stands still until [`ManualClock::advance`] moves it.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use terrarium_persistence::{Clock, ManualClock};
/// let clock = ManualClock::new();
/// let t0 = clock.now();
/// clock.advance(Duration::from_secs(60));
/// assert_eq!(clock.now() - t0, Duration::from_secs(60));
/// ```
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<Instant>,
}

impl ManualClock {
    /// A clock reading the real time once, then frozen.
    #[must_use]
    pub fn new() -> Self {
        Self { now: Mutex::new(Instant::now()) }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *now += by;
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.now.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl<C: Clock> Clock for std::sync::Arc<C> {
    fn now(&self) -> Instant {
        (**self).now()
    }
}
