//! BorderGhosts: the NPCs of neighbouring regions near this region's cell, as their owners
//! last published them on the border feed (Redis, `terrarium_persistence::region::GhostFeed`).
//! Read-only: a ghost is not an entity of this world (never simulated, never stored, never
//! handed off here); it is a resource of the region's engine world that systems may read.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bevy_ecs::prelude::Resource;
use terrarium_engine::{Position, Role, Velocity};
use terrarium_persistence::region::{Epoch, RegionId};

/// How a region process shows its neighbours' border NPCs (and publishes its own).
#[derive(Debug, Clone, PartialEq)]
pub struct GhostOptions {
    /// Redis URL of the border feed.
    pub url: String,
    /// Channel prefix (1 ..= 64 printable bytes, no spaces): one per world.
    pub key_prefix: String,
    /// NPCs within this many blocks of a neighbour's cell are shown to it.
    pub margin: f32,
    /// How often the region publishes its border NPCs.
    pub publish_every: Duration,
    /// Ghosts not refreshed for this long disappear.
    pub ttl: Duration,
}

impl Default for GhostOptions {
    fn default() -> Self {
        Self {
            url: String::new(),
            key_prefix: "terrarium:".into(),
            margin: 8.0,
            publish_every: Duration::from_millis(200),
            ttl: Duration::from_millis(1000),
        }
    }
}

/// One ghost: an NPC another region owns.
#[derive(Debug, Clone, PartialEq)]
pub struct BorderGhost {
    /// The NPC.
    pub npc: u64,
    /// Its owner.
    pub from: RegionId,
    /// Role.
    pub role: Role,
    /// Position when its owner published it.
    pub position: Position,
    /// Velocity then.
    pub velocity: Velocity,
}

#[derive(Debug, Clone)]
struct Source {
    epoch: Epoch,
    received: Option<Instant>,
    ghosts: Vec<BorderGhost>,
}

/// The ghosts a region shows now, per neighbour: each neighbour's newest batch replaces its
/// previous one; a batch older than `ttl` expires; a batch from an older epoch than one
/// already seen from that neighbour (a zombie) is ignored.
#[derive(Resource, Debug, Clone, Default)]
pub struct BorderGhosts {
    sources: BTreeMap<u32, Source>,
    expired: u64,
    stale: u64,
}

impl BorderGhosts {
    /// Takes `from`'s batch (published under `epoch`), received at `now`. Ghosts this region
    /// owns itself (`owned`) are left out: a hand-off raced the feed. Returns false when the
    /// batch was ignored (an epoch older than one seen from `from`).
    pub fn apply(
        &mut self,
        from: RegionId,
        epoch: Epoch,
        ghosts: Vec<BorderGhost>,
        now: Instant,
        owned: impl Fn(u64) -> bool,
    ) -> bool {
        let source =
            self.sources.entry(from.0).or_insert(Source { epoch, received: None, ghosts: Vec::new() });
        if epoch < source.epoch {
            self.stale += 1;
            return false;
        }
        source.epoch = epoch;
        source.received = Some(now);
        source.ghosts = ghosts.into_iter().filter(|g| g.from == from && !owned(g.npc)).collect();
        true
    }

    /// Drops every neighbour's ghosts received longer than `ttl` before `now`; returns how
    /// many ghosts went.
    pub fn expire(&mut self, now: Instant, ttl: Duration) -> usize {
        let mut gone = 0;
        for s in self.sources.values_mut() {
            if s.received.is_some_and(|t| now.saturating_duration_since(t) > ttl) {
                gone += s.ghosts.len();
                s.ghosts.clear();
                s.received = None;
            }
        }
        self.expired += gone as u64;
        gone
    }

    /// Forgets the ghosts of `npcs` (they were adopted here).
    pub fn remove_all(&mut self, npcs: &std::collections::HashSet<u64>) {
        for s in self.sources.values_mut() {
            s.ghosts.retain(|g| !npcs.contains(&g.npc));
        }
    }

    /// Ghosts shown now.
    #[must_use]
    pub fn len(&self) -> usize {
        self.sources.values().map(|s| s.ghosts.len()).sum()
    }

    /// True when no ghost is shown.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every ghost shown now, by neighbour.
    pub fn iter(&self) -> impl Iterator<Item = &BorderGhost> {
        self.sources.values().flat_map(|s| s.ghosts.iter())
    }

    /// The ghost of `npc`, if shown.
    #[must_use]
    pub fn get(&self, npc: u64) -> Option<&BorderGhost> {
        self.iter().find(|g| g.npc == npc)
    }

    /// Neighbours whose ghosts are shown now.
    #[must_use]
    pub fn sources(&self) -> usize {
        self.sources.values().filter(|s| !s.ghosts.is_empty()).count()
    }

    /// Ghosts that expired since the start.
    #[must_use]
    pub fn expired(&self) -> u64 {
        self.expired
    }

    /// Batches ignored for an older epoch since the start.
    #[must_use]
    pub fn stale(&self) -> u64 {
        self.stale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ghost(npc: u64, from: u32) -> BorderGhost {
        BorderGhost {
            npc,
            from: RegionId(from),
            role: Role::Scout,
            position: Position::new(1.0, 0.0, 1.0),
            velocity: Velocity::default(),
        }
    }

    #[test]
    fn a_batch_replaces_the_last_older_epochs_are_ignored_and_ghosts_expire() {
        let t0 = Instant::now();
        let ttl = Duration::from_millis(100);
        let mut g = BorderGhosts::default();
        assert!(g.apply(RegionId(1), 5, vec![ghost(1, 1), ghost(2, 1), ghost(3, 1)], t0, |n| n == 3));
        assert_eq!(g.len(), 2, "an NPC owned here is not a ghost");
        assert!(g.apply(RegionId(2), 1, vec![ghost(7, 2), ghost(8, 9)], t0, |_| false));
        assert_eq!(g.len(), 3, "a ghost claimed by another region than its batch's is dropped");
        assert!(g.apply(RegionId(1), 5, vec![ghost(2, 1)], t0 + ttl / 2, |_| false));
        assert_eq!(g.len(), 2);
        assert!(g.get(1).is_none() && g.get(2).is_some());
        assert!(!g.apply(RegionId(1), 4, vec![ghost(9, 1)], t0 + ttl / 2, |_| false), "a zombie's batch");
        assert_eq!((g.stale(), g.get(9)), (1, None));
        assert_eq!(g.expire(t0 + ttl + Duration::from_millis(1), ttl), 1, "region 2's batch is old");
        assert_eq!((g.len(), g.sources()), (1, 1));
        assert_eq!(g.expire(t0 + ttl * 2, ttl), 1);
        assert!(g.is_empty());
        assert_eq!(g.expired(), 2);
        g.apply(RegionId(1), 6, vec![ghost(4, 1)], t0 + ttl * 2, |_| false);
        g.remove_all(&[4].into_iter().collect());
        assert!(g.is_empty(), "an adopted NPC is no longer a ghost");
    }
}
