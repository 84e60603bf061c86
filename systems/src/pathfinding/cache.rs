//! [`PathCache`]: finished voxel searches keyed by (start, target, rules), each stamped with the
//! versions of the chunks its search read.
//!
//! A search reads only blocks inside its `read` region, so while every chunk touching that
//! region keeps its version, running it again would give the same result: a hit is exactly what
//! a fresh search would return. That makes the cache invisible to the simulation (same world
//! with or without it, after a snapshot load with an empty cache too), and lets it keep
//! failures as well as paths.

use bevy_ecs::prelude::*;
use rustc_hash::FxHashMap;
use terrarium_engine::voxel::{BlockPos, CHUNK, VoxelWorld};

use super::voxel::{Region, SearchOutcome, Target};

/// What a search is keyed by: start, target, the rules' dig cost (bits, `u32::MAX` for none) and
/// which limits it ran under (a caller's own numbering).
pub type CacheKey = (BlockPos, Target, u32, u8);

/// Finished searches (a resource). Capacity-bounded: when full, the least recently used half
/// is dropped.
#[derive(Resource, Debug)]
pub struct PathCache {
    entries: FxHashMap<CacheKey, Entry>,
    capacity: usize,
    /// Lookups that found a valid entry.
    pub hits: u64,
    /// Lookups that found nothing or a stale entry.
    pub misses: u64,
    /// Entries dropped because a chunk they read changed.
    pub invalidated: u64,
}

#[derive(Debug)]
struct Entry {
    outcome: SearchOutcome,
    chunks: Vec<(u32, u32)>,
    last_used: u64,
}

impl Default for PathCache {
    fn default() -> Self {
        Self::with_capacity(16_384)
    }
}

impl PathCache {
    /// An empty cache holding up to `capacity` searches.
    #[must_use]
    pub fn with_capacity(capacity: usize) -> Self {
        Self { entries: FxHashMap::default(), capacity: capacity.max(1), hits: 0, misses: 0, invalidated: 0 }
    }

    /// Searches held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The cached outcome for `key`, if every chunk its search read is unchanged in `world`.
    /// A stale entry is dropped.
    pub fn get(&mut self, key: &CacheKey, world: &VoxelWorld, now: u64) -> Option<&SearchOutcome> {
        let fresh = match self.entries.get(key) {
            None => {
                self.misses += 1;
                return None;
            }
            Some(e) => e.chunks.iter().all(|&(c, v)| world.chunk_version(c as usize) == v),
        };
        if !fresh {
            self.entries.remove(key);
            self.misses += 1;
            self.invalidated += 1;
            return None;
        }
        self.hits += 1;
        let e = self.entries.get_mut(key).expect("checked above");
        e.last_used = now;
        Some(&e.outcome)
    }

    /// Stores an outcome computed on `world` as it is now.
    pub fn insert(&mut self, key: CacheKey, outcome: SearchOutcome, world: &VoxelWorld, now: u64) {
        if self.entries.len() >= self.capacity {
            self.evict_half();
        }
        let chunks = chunks_of(world, outcome.read);
        self.entries.insert(key, Entry { outcome, chunks, last_used: now });
    }

    /// Drops the least recently used half (ties by key order, so it is deterministic too).
    fn evict_half(&mut self) {
        let mut ages: Vec<(u64, CacheKey)> = self.entries.iter().map(|(k, e)| (e.last_used, *k)).collect();
        ages.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| key_order(&a.1).cmp(&key_order(&b.1))));
        for (_, k) in ages.iter().take(ages.len() / 2 + 1) {
            self.entries.remove(k);
        }
    }
}

fn key_order(k: &CacheKey) -> (BlockPos, u8, BlockPos, u32, u8) {
    let (tag, p) = match k.1 {
        Target::Cell(p) => (0, p),
        Target::Reach(p) => (1, p),
    };
    (k.0, tag, p, k.2, k.3)
}

/// `(index, version)` of every chunk that touches `region` (clamped to the world).
fn chunks_of(world: &VoxelWorld, region: Region) -> Vec<(u32, u32)> {
    let size = world.size();
    let lo = |v: i32, s: i32| v.clamp(0, s - 1) / CHUNK;
    let (x0, x1) = (lo(region.min.x, size[0]), lo(region.max.x, size[0]));
    let (y0, y1) = (lo(region.min.y, size[1]), lo(region.max.y, size[1]));
    let (z0, z1) = (lo(region.min.z, size[2]), lo(region.max.z, size[2]));
    let mut out = Vec::with_capacity(((x1 - x0 + 1) * (y1 - y0 + 1) * (z1 - z0 + 1)) as usize);
    for cy in y0..=y1 {
        for cz in z0..=z1 {
            for cx in x0..=x1 {
                let c = world
                    .chunk_index(BlockPos::new(cx * CHUNK, cy * CHUNK, cz * CHUNK))
                    .expect("clamped inside");
                out.push((c as u32, world.chunk_version(c)));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pathfinding::{SearchLimits, WalkRules, find_path};
    use terrarium_engine::voxel::{Block, WorldGen};

    #[test]
    fn an_edit_in_a_read_chunk_invalidates_and_elsewhere_does_not() {
        let mut world = VoxelWorld::generate(WorldGen::small()).unwrap();
        let d = world.depots()[0].cell;
        let target = Target::Cell(d.offset(4, 0, 0));
        let rules = WalkRules::miner(2, 4.0);
        let out = find_path(&world, d, target, &rules, &SearchLimits::default());
        let key = (d, target, rules.dig_cost.map_or(u32::MAX, f32::to_bits), 0);
        let mut cache = PathCache::with_capacity(8);
        cache.insert(key, out.clone(), &world, 1);
        assert_eq!(cache.get(&key, &world, 2), Some(&out));
        // Far away (another chunk column, outside the read region): still valid.
        let far = BlockPos::new((d.x + 40) % 64, 2, (d.z + 40) % 64);
        assert!(
            !(out.read.min.x..=out.read.max.x).contains(&far.x)
                || !(out.read.min.z..=out.read.max.z).contains(&far.z)
        );
        let far_chunk = world.chunk_index(far).unwrap();
        assert!(!chunks_of(&world, out.read).iter().any(|&(c, _)| c as usize == far_chunk));
        world.set(far, Block::Air);
        assert!(cache.get(&key, &world, 3).is_some(), "an edit in a chunk the search never read");
        // On the path: stale.
        world.set(d.offset(2, 0, 0), Block::Stone);
        assert!(cache.get(&key, &world, 4).is_none());
        assert_eq!((cache.invalidated, cache.len()), (1, 0));
    }

    #[test]
    fn full_cache_drops_the_oldest_half() {
        let world = VoxelWorld::generate(WorldGen::small()).unwrap();
        let d = world.depots()[0].cell;
        let mut cache = PathCache::with_capacity(4);
        let outcome = find_path(&world, d, Target::Cell(d), &WalkRules::WALKER, &SearchLimits::default());
        for i in 0..5 {
            cache.insert((d.offset(i, 0, 0), Target::Cell(d), 0, 0), outcome.clone(), &world, i as u64);
        }
        assert_eq!(cache.len(), 2, "4 full, 3 dropped, then the fifth inserted");
        assert!(cache.get(&(d.offset(4, 0, 0), Target::Cell(d), 0, 0), &world, 9).is_some());
        assert!(cache.get(&(d.offset(0, 0, 0), Target::Cell(d), 0, 0), &world, 9).is_none());
    }
}
