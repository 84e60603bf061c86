//! What bounds spawning through the API: the population cap (`server.max_npcs`), a spawn
//! budget per API key, and the ids spawned lately (an order may name an NPC whose spawn still
//! waits in the command queue).

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::rate::{Bucket, RateLimit};

/// How long an id spawned through the API counts as existing before the world has it.
pub(crate) const RECENT: Duration = Duration::from_secs(30);

/// Why a spawn was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpawnRefused {
    /// The world holds (or will, once queued spawns land) `max_npcs` NPCs.
    Full,
    /// The key's budget is spent for now; a token comes back after this long.
    Budget(Duration),
}

/// The spawn gate shared by the API's handlers.
#[derive(Debug)]
pub(crate) struct Spawns {
    max_npcs: u64,
    rate: RateLimit,
    /// The read-write key's budget (the read-only key can't spawn).
    budget: Mutex<Bucket>,
    /// `(when, first id)`: ids at or above `first id` were handed out at or after `when`;
    /// at most one entry per second, oldest first, none older than [`RECENT`].
    recent: Mutex<VecDeque<(Instant, u64)>>,
}

impl Spawns {
    pub(crate) fn new(max_npcs: u64, rate: RateLimit) -> Self {
        Self {
            max_npcs,
            rate,
            budget: Mutex::new(Bucket::full(rate, Instant::now())),
            recent: Mutex::new(VecDeque::new()),
        }
    }

    /// Admits one spawn into a world of about `population` NPCs (an estimate that never
    /// undercounts: the last tick's population plus ids handed out since it began).
    pub(crate) fn admit(&self, population: u64) -> Result<(), SpawnRefused> {
        if population >= self.max_npcs {
            return Err(SpawnRefused::Full);
        }
        let mut budget = self.budget.lock().unwrap_or_else(PoisonError::into_inner);
        budget.take(self.rate, 1.0, Instant::now()).map_err(SpawnRefused::Budget)
    }

    /// Notes that `id` was just handed out. O(1) amortised.
    pub(crate) fn remember(&self, id: u64) {
        let now = Instant::now();
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        while recent.front().is_some_and(|(at, _)| now.duration_since(*at) >= RECENT) {
            recent.pop_front();
        }
        match recent.back_mut() {
            // Handlers may finish out of order: the entry keeps the lowest id of its second.
            Some((at, first)) if now.duration_since(*at) < Duration::from_secs(1) => {
                *first = (*first).min(id);
            }
            _ => recent.push_back((now, id)),
        }
    }

    /// Whether `id` (below the next id to hand out) was handed out within [`RECENT`], give or
    /// take a second. O(1) amortised.
    pub(crate) fn is_recent(&self, id: u64) -> bool {
        let now = Instant::now();
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        while recent.front().is_some_and(|(at, _)| now.duration_since(*at) >= RECENT) {
            recent.pop_front();
        }
        recent.front().is_some_and(|(_, first)| id >= *first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_and_the_budget_refuse_with_their_reason() {
        let s = Spawns::new(10, RateLimit { per_s: 1.0, burst: 2.0 });
        assert_eq!(s.admit(10), Err(SpawnRefused::Full));
        assert_eq!(s.admit(3), Ok(()));
        assert_eq!(s.admit(4), Ok(()));
        assert!(matches!(s.admit(5), Err(SpawnRefused::Budget(_))));
    }

    #[test]
    fn recent_ids_are_remembered_in_constant_space() {
        let s = Spawns::new(u64::MAX, RateLimit { per_s: 1.0, burst: 1.0 });
        assert!(!s.is_recent(5));
        for id in (100..200_000).rev() {
            s.remember(id);
        }
        assert!(s.is_recent(100) && s.is_recent(150_000));
        assert!(!s.is_recent(99));
        assert_eq!(s.recent.lock().unwrap().len(), 1, "one entry per second, whatever the count");
    }
}
