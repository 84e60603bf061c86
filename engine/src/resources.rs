//! World-wide resources: the clock, the bounds, the id index, the worker pool, per-tick logs.

use std::sync::Arc;
use std::time::Duration;

use bevy_ecs::prelude::*;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::NpcId;

/// Simulation time. Systems read time only from here, never from the wall clock.
#[derive(Resource, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimClock {
    /// Ticks completed before the current one; during a tick's systems, the current tick's number
    /// (the first tick is 1).
    pub tick: u64,
    /// Ticks per simulated second.
    pub tick_hz: u32,
}

impl SimClock {
    /// Length of one tick in simulated seconds.
    #[must_use]
    pub fn dt_secs(&self) -> f32 {
        1.0 / self.tick_hz as f32
    }

    /// Length of one tick.
    #[must_use]
    pub fn dt(&self) -> Duration {
        Duration::from_nanos(1_000_000_000 / u64::from(self.tick_hz))
    }

    /// Simulated time since tick 0, in milliseconds.
    #[must_use]
    pub fn now_ms(&self) -> u64 {
        self.tick * 1000 / u64::from(self.tick_hz)
    }

    /// Whole ticks in `ms` simulated milliseconds, rounded up, at least one.
    #[must_use]
    pub fn ticks_in_ms(&self, ms: u64) -> u64 {
        (ms * u64::from(self.tick_hz)).div_ceil(1000).max(1)
    }
}

/// The box every NPC stays in, in blocks.
#[derive(Resource, Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WorldBounds {
    /// Lowest corner.
    pub min: [f32; 3],
    /// Highest corner.
    pub max: [f32; 3],
}

impl WorldBounds {
    /// Largest extent of one axis, in blocks.
    pub const MAX_EXTENT: f32 = 1_000_000.0;

    /// The first axis (0 = x, 1 = y, 2 = z) that breaks the rule `EngineConfig::validate`
    /// applies to `[engine.world]` (`min` within ±10⁹, `max - min` from 0.001 to
    /// [`WorldBounds::MAX_EXTENT`]); `None` when every axis keeps it. Clamping into bounds that
    /// break it would panic or pass NaN on.
    #[must_use]
    pub fn invalid_axis(&self) -> Option<usize> {
        (0..3).find(|&axis| {
            let (lo, hi) = (self.min[axis], self.max[axis]);
            !(-1e9..=1e9).contains(&lo) || !(0.001..=Self::MAX_EXTENT).contains(&(hi - lo))
        })
    }

    /// True when `(x, y, z)` is inside (edges included).
    #[must_use]
    pub fn contains(&self, x: f32, y: f32, z: f32) -> bool {
        (self.min[0]..=self.max[0]).contains(&x)
            && (self.min[1]..=self.max[1]).contains(&y)
            && (self.min[2]..=self.max[2]).contains(&z)
    }
}

/// Finds the ECS entity of an NPC by its id.
///
/// Ids are handed out in order, so most live in a dense table indexed by id (8 bytes per id, no
/// hashing); ids far beyond it (from a snapshot or a command that names its own) go to a hash map.
#[derive(Resource, Debug, Default)]
pub struct NpcIndex {
    dense: Vec<Option<Entity>>,
    sparse: FxHashMap<u64, Entity>,
    len: usize,
    inserted: u64,
    /// Wrapping sum of [`NpcIndex::fingerprint`] over the live ids.
    fingerprints: u64,
}

impl NpcIndex {
    /// How far past the end of the dense table an id may be and still extend it.
    const DENSE_SLACK: u64 = 1 << 16;

    /// The entity of `id`, if it is alive.
    #[must_use]
    pub fn get(&self, id: NpcId) -> Option<Entity> {
        match usize::try_from(id.0).ok().and_then(|i| self.dense.get(i)) {
            Some(slot) => *slot,
            None => self.sparse.get(&id.0).copied(),
        }
    }

    /// Number of live NPCs.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there are no NPCs.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Wrapping sum of [`NpcIndex::fingerprint`] over the live ids: a set of ids read
    /// elsewhere (a table walked over several ticks) with the same count and sum is, barring a
    /// 64-bit collision, the same set.
    #[must_use]
    pub fn fingerprint_sum(&self) -> u64 {
        self.fingerprints
    }

    /// An id's fingerprint: a 64-bit mix (made of 32×32-bit products, which SIMD units have),
    /// so that sums over different sets of ids differ.
    #[must_use]
    #[inline(always)]
    pub fn fingerprint(id: u64) -> u64 {
        let id = id ^ 0x9e37_79b9_7f4a_7c15;
        let (lo, hi) = (id & 0xffff_ffff, id >> 32);
        let t = (lo * 0x9e37_79b9) ^ (hi * 0x85eb_ca77).rotate_left(32);
        let t = t ^ (t >> 29);
        let u = ((t & 0xffff_ffff) * 0xc2b2_ae3d) ^ ((t >> 32) * 0x27d4_eb2f).rotate_left(32);
        u ^ (u >> 32)
    }

    /// NPCs ever added (spawned or restored), counting up: when it has not changed, no NPC
    /// appeared (so a system can skip looking for new ones).
    #[must_use]
    pub fn added_total(&self) -> u64 {
        self.inserted
    }

    /// Records `id → e`; returns the entity `id` had before, if any.
    pub(crate) fn insert(&mut self, id: NpcId, e: Entity) -> Option<Entity> {
        let old = if id.0 < self.dense.len() as u64 + Self::DENSE_SLACK {
            let i = usize::try_from(id.0).expect("dense ids fit in usize");
            if i >= self.dense.len() {
                self.dense.resize(i + 1, None);
            }
            self.dense[i].replace(e)
        } else {
            self.sparse.insert(id.0, e)
        };
        if old.is_none() {
            self.len += 1;
            self.fingerprints = self.fingerprints.wrapping_add(Self::fingerprint(id.0));
        }
        self.inserted += 1;
        old
    }

    /// Records `id → e` for a world being restored: the dense table grows only while `id` is
    /// below `dense_cap` (plus the usual slack), so ids spread out on purpose (each a little
    /// past the table's end) can't make it far larger than the population. Ids above go to the
    /// sparse map.
    pub(crate) fn insert_restored(&mut self, id: NpcId, e: Entity, dense_cap: u64) -> Option<Entity> {
        if id.0 >= self.dense.len() as u64 && id.0 >= dense_cap.saturating_add(Self::DENSE_SLACK) {
            let old = self.sparse.insert(id.0, e);
            if old.is_none() {
                self.len += 1;
                self.fingerprints = self.fingerprints.wrapping_add(Self::fingerprint(id.0));
            }
            self.inserted += 1;
            return old;
        }
        self.insert(id, e)
    }

    /// Slots in the dense table (tests check that restoring keeps it small).
    #[cfg(test)]
    pub(crate) fn dense_len(&self) -> usize {
        self.dense.len()
    }

    pub(crate) fn remove(&mut self, id: NpcId) -> Option<Entity> {
        let old = match usize::try_from(id.0).ok().and_then(|i| self.dense.get_mut(i)) {
            Some(slot) => slot.take(),
            None => self.sparse.remove(&id.0),
        };
        if old.is_some() {
            self.len -= 1;
            self.fingerprints = self.fingerprints.wrapping_sub(Self::fingerprint(id.0));
        }
        old
    }

    /// Makes room for ids up to `max_id` in the dense table.
    pub(crate) fn reserve_to(&mut self, max_id: u64) {
        if max_id < self.dense.len() as u64 + Self::DENSE_SLACK {
            self.dense.reserve(usize::try_from(max_id + 1).unwrap_or(0).saturating_sub(self.dense.len()));
        }
    }
}

/// The engine's worker pool. Parallel systems run on it (through `terrarium_systems::par`), so
/// two engines in one process can use different thread counts.
#[derive(Resource, Clone)]
pub struct ParPool(pub Arc<rayon::ThreadPool>);

impl ParPool {
    /// A pool of `threads` workers (named `terrarium-par-N`), for tools that run parallel
    /// systems' functions outside an engine.
    ///
    /// # Errors
    /// rayon's error when the threads can't be started.
    pub fn new(threads: usize) -> Result<Self, rayon::ThreadPoolBuildError> {
        Self::with_pinning(threads, false)
    }

    /// [`ParPool::new`], with each worker pinned to a CPU of its own when `pin` is set: worker
    /// `i` to the `i`-th CPU this thread may run on (round robin when there are more workers
    /// than CPUs). See [`crate::EngineConfig::pin_threads`] for when that helps. A worker that
    /// can't be pinned (the platform can't, or the CPU was taken away) runs unpinned and says
    /// so in a warning.
    ///
    /// # Errors
    /// rayon's error when the threads can't be started.
    pub fn with_pinning(threads: usize, pin: bool) -> Result<Self, rayon::ThreadPoolBuildError> {
        let cpus = if pin { core_affinity::get_core_ids().unwrap_or_default() } else { Vec::new() };
        if pin && cpus.is_empty() {
            tracing::warn!(
                "pin_threads: this platform does not say which CPUs may be used; workers run unpinned"
            );
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("terrarium-par-{i}"))
            .start_handler(move |i| {
                if let Some(&cpu) = cpus.get(i % cpus.len().max(1))
                    && !core_affinity::set_for_current(cpu)
                {
                    tracing::warn!(
                        worker = i,
                        cpu = cpu.id,
                        "pin_threads: cannot pin the worker; it runs unpinned"
                    );
                }
            })
            .build()
            .map(|pool| Self(Arc::new(pool)))
    }

    /// Number of worker threads.
    #[must_use]
    pub fn threads(&self) -> usize {
        self.0.current_num_threads()
    }
}

impl std::fmt::Debug for ParPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParPool").field("threads", &self.threads()).finish()
    }
}

/// What happened to the NPC population during the current tick, for systems that report it
/// (events, persistence).
#[derive(Resource, Debug, Default, Clone)]
pub struct TickLog {
    /// NPCs despawned since the previous tick ended, in the order it happened: direct
    /// [`crate::Engine::despawn`] calls between two ticks belong to the next tick, so nothing
    /// is missed. Cleared when a tick ends.
    pub despawned: Vec<NpcId>,
    /// Commands applied at the start of this tick.
    pub commands_applied: u32,
    /// Commands refused at the start of this tick (unknown id, duplicate spawn).
    pub commands_rejected: u32,
}

#[cfg(test)]
mod tests {
    use crate::{Engine, EngineConfig, NpcSpec, Position, Role, TickLog};

    /// The CPUs each worker of `pool` may run on.
    fn worker_cpus(pool: &super::ParPool) -> Vec<Vec<usize>> {
        pool.0.broadcast(|_| core_affinity::get_core_ids().unwrap_or_default().iter().map(|c| c.id).collect())
    }

    /// The index's fingerprint sum is the sum over the live ids, through spawns, despawns, far
    /// ids (the sparse map) and an id given a new entity; sets that differ by a swapped pair
    /// or by one id have different sums.
    #[test]
    fn the_id_fingerprint_sum_follows_the_live_ids() {
        use bevy_ecs::entity::Entity;
        let mut index = super::NpcIndex::default();
        let e = Entity::PLACEHOLDER;
        let sum =
            |ids: &[u64]| ids.iter().fold(0u64, |a, &i| a.wrapping_add(super::NpcIndex::fingerprint(i)));
        for id in [1, 2, 3, 1 << 40, (1 << 32) + 1] {
            index.insert(crate::NpcId(id), e);
        }
        index.insert(crate::NpcId(2), e);
        index.remove(crate::NpcId(3));
        index.remove(crate::NpcId(99));
        assert_eq!(index.fingerprint_sum(), sum(&[1, 2, 1 << 40, (1 << 32) + 1]));
        assert_ne!(sum(&[1, 2]), sum(&[0, 3]));
        assert_ne!(sum(&[1, 1]), sum(&[1, 2]));
        assert_ne!(sum(&[1]), sum(&[(1 << 32) + 1]));
        assert_ne!(super::NpcIndex::fingerprint(0), 0);
    }

    #[test]
    fn pinned_workers_each_run_on_one_cpu_of_their_own_and_unpinned_ones_anywhere() {
        let allowed: Vec<usize> =
            core_affinity::get_core_ids().unwrap_or_default().iter().map(|c| c.id).collect();
        if allowed.is_empty() {
            return; // this platform cannot say (nor pin)
        }
        let threads = allowed.len().min(4);
        let config = EngineConfig { threads, pin_threads: true, ..EngineConfig::default() };
        let engine = Engine::builder(config).build().unwrap();
        let pinned = worker_cpus(engine.world().resource::<super::ParPool>());
        assert_eq!(pinned.len(), threads);
        for (i, cpus) in pinned.iter().enumerate() {
            assert_eq!(cpus, &[allowed[i]], "worker {i} runs on the {i}-th allowed CPU only");
        }
        let free = worker_cpus(&super::ParPool::new(threads).unwrap());
        assert!(free.iter().all(|cpus| cpus == &allowed), "unpinned workers may run on every allowed CPU");
    }

    #[test]
    fn despawns_between_ticks_are_in_the_next_ticks_log_and_additions_are_counted() {
        let mut engine = Engine::builder(EngineConfig::default()).build().unwrap();
        let spec = NpcSpec::new(Role::Guard, Position::new(1.0, 0.0, 1.0));
        let ids: Vec<_> = engine.spawn_batch([spec, spec, spec]).collect();
        assert_eq!(engine.world().resource::<super::NpcIndex>().added_total(), 3);
        engine.tick();
        assert!(engine.despawn(ids[0]));
        // Still there when the next tick's systems run; gone once that tick ends.
        assert_eq!(engine.world().resource::<TickLog>().despawned, [ids[0]]);
        engine.tick();
        assert!(engine.world().resource::<TickLog>().despawned.is_empty());
        engine.spawn_npc(spec);
        let index = engine.world().resource::<super::NpcIndex>();
        assert_eq!(
            (index.added_total(), index.len()),
            (4, 3),
            "a despawn does not lower the count of additions"
        );
    }
}
