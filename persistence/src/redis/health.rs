//! Health of the Redis connection: counters, the bypass after a failure, and key epochs.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fred::prelude::KeysInterface;

use super::RedisCache;
use super::keys::Tier;
use crate::TierMetrics;

/// Counters of a [`RedisCache`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RedisMetrics {
    /// Positions overlaid on cached records.
    pub hot: TierMetrics,
    /// NPC records and listing pages.
    pub warm: TierMetrics,
    /// Values of [`RedisCache::get_value`].
    pub cold: TierMetrics,
    /// Redis commands (or pipelines) that failed or timed out; each was treated as a miss.
    pub errors: u64,
    /// Calls that skipped Redis because it had just failed ([`crate::RedisConfig::bypass_ms`]).
    pub bypassed: u64,
    /// Cached values that did not decode (deleted, treated as misses).
    pub decode_errors: u64,
    /// Keys deleted by invalidation, by key and by tag.
    pub invalidated: u64,
    /// Events published.
    pub published: u64,
    /// Key generation in use (bumped at start-up and after a write the cache could not follow).
    pub epoch: u64,
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) hot: (AtomicU64, AtomicU64),
    pub(super) warm: (AtomicU64, AtomicU64),
    pub(super) cold: (AtomicU64, AtomicU64),
    pub(super) errors: AtomicU64,
    pub(super) bypassed: AtomicU64,
    pub(super) decode_errors: AtomicU64,
    pub(super) invalidated: AtomicU64,
    pub(super) published: AtomicU64,
}

impl<S> RedisCache<S> {
    /// Counters so far.
    pub fn metrics(&self) -> RedisMetrics {
        let c = &self.counters;
        let tier = |t: &(AtomicU64, AtomicU64)| TierMetrics {
            hits: t.0.load(Ordering::Relaxed),
            misses: t.1.load(Ordering::Relaxed),
        };
        RedisMetrics {
            hot: tier(&c.hot),
            warm: tier(&c.warm),
            cold: tier(&c.cold),
            errors: c.errors.load(Ordering::Relaxed),
            bypassed: c.bypassed.load(Ordering::Relaxed),
            decode_errors: c.decode_errors.load(Ordering::Relaxed),
            invalidated: c.invalidated.load(Ordering::Relaxed),
            published: c.published.load(Ordering::Relaxed),
            epoch: self.epoch.load(Ordering::Relaxed),
        }
    }

    pub(super) fn count(&self, tier: Tier, hit: bool) {
        let t = match tier {
            Tier::Hot => &self.counters.hot,
            Tier::Warm => &self.counters.warm,
            Tier::Cold => &self.counters.cold,
        };
        if hit { &t.0 } else { &t.1 }.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn start_bypass(&self) {
        let until = self.clock.now() + Duration::from_millis(self.cfg.bypass_ms);
        *self.bypass_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(until);
    }

    pub(super) fn note_failure(&self, what: &str, e: &fred::error::Error) {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        let first = self.bypass_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner).is_none();
        self.start_bypass();
        if first {
            tracing::warn!(what, error = %e, "redis failed; serving from the store");
        } else {
            tracing::debug!(what, error = %e, "redis failed again");
        }
    }

    /// False while Redis is being skipped after a failure.
    pub(super) fn usable(&self) -> bool {
        let mut until = self.bypass_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match *until {
            Some(t) if self.clock.now() < t => false,
            Some(_) => {
                *until = None;
                true
            }
            None => true,
        }
    }

    /// Starts a new key epoch when the last one can't be trusted. False if Redis failed.
    pub(super) async fn ensure_epoch(&self) -> bool {
        if !self.dirty.load(Ordering::Acquire) {
            return true;
        }
        let key = format!("{}epoch", self.cfg.key_prefix);
        let current = self.epoch.load(Ordering::Acquire);
        let next = match self.pool.incr::<u64, _>(key.clone()).await {
            // The counter was lost (a restarted or evicting Redis): never reuse an epoch.
            Ok(e) if e <= current => {
                self.pool.set::<(), _, _>(key, current + 1, None, None, false).await.map(|()| current + 1)
            }
            other => other,
        };
        match next {
            Ok(epoch) => {
                self.epoch.store(epoch, Ordering::Release);
                self.dirty.store(false, Ordering::Release);
                tracing::debug!(epoch, "redis cache epoch");
                true
            }
            Err(e) => {
                self.note_failure("epoch", &e);
                false
            }
        }
    }

    /// Starts the new epoch a failed write asked for (when Redis may be used) and returns the
    /// epoch keys are to be built with. Keys must be built after this, never before: a key of
    /// the old epoch read after the bump could serve the record a failed invalidation left
    /// behind (issue 13, defect 7).
    pub(super) async fn fresh_epoch(&self) -> u64 {
        if self.dirty.load(Ordering::Acquire) && self.usable() {
            self.ensure_epoch().await;
        }
        self.epoch.load(Ordering::Acquire)
    }

    /// True when keys built with `epoch` are still current (no bump since, none pending), so
    /// what they returned may be served.
    pub(super) fn same_epoch(&self, epoch: u64) -> bool {
        !self.dirty.load(Ordering::Acquire) && self.epoch.load(Ordering::Acquire) == epoch
    }

    /// Runs one Redis call, unless Redis is being skipped. `None` is a miss (counted).
    pub(super) async fn redis<T>(
        &self,
        what: &str,
        call: impl Future<Output = Result<T, fred::error::Error>>,
    ) -> Option<T> {
        if !self.usable() {
            self.counters.bypassed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if !self.ensure_epoch().await {
            return None;
        }
        match call.await {
            Ok(v) => Some(v),
            Err(e) => {
                self.note_failure(what, &e);
                None
            }
        }
    }
}
