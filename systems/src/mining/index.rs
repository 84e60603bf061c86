//! [`DepositIndex`]: every ore block of the voxel world in a grid of buckets over the ground
//! plane, for nearest-deposit queries, with the claims that keep two miners off one deposit.
//!
//! The index is derived state: built from the [`VoxelWorld`] (and claims from agents' brains),
//! never saved. Queries order their results by (distance, position), never by bucket order, so
//! a rebuilt index answers exactly as the one it replaces.

use bevy_ecs::prelude::*;
use terrarium_engine::ParPool;
use terrarium_engine::voxel::{Block, BlockPos, CHUNK, CHUNK_VOLUME, Ore, VoxelWorld};

use crate::par;

/// Blocks per side of a bucket.
const BUCKET: i32 = 4;

/// One ore block.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Deposit {
    /// Where it is.
    pub pos: BlockPos,
    /// What it is.
    pub ore: Ore,
    /// Solid blocks above it up to the generated surface when the index was built: a hint of how
    /// much digging reaching it takes.
    pub depth: u8,
    /// True while a miner has it as its task.
    pub claimed: bool,
}

/// Deposits bucketed by ground position (a resource).
///
/// Every deposit also has a slot number, fixed when the index is built, so a mining round can
/// keep per-deposit scratch in flat arrays. Slot numbers never decide anything: results are
/// ordered by position.
#[derive(Resource, Debug, Default, Clone)]
pub struct DepositIndex {
    dims: [i32; 2],
    buckets: Vec<Vec<(u32, Deposit)>>,
    slots: usize,
    len: usize,
    claimed: usize,
}

/// A deposit near a miner, with its estimated walking distance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Nearby {
    /// Estimated distance (octile on the ground plus half a block per level), blocks.
    pub distance: f32,
    /// The deposit's slot (below [`DepositIndex::slots`]).
    pub slot: u32,
    /// The deposit.
    pub deposit: Deposit,
}

impl DepositIndex {
    /// Indexes every ore block of `world`, scanning chunk columns in parallel on `pool`.
    #[must_use]
    pub fn build(pool: &ParPool, world: &VoxelWorld) -> Self {
        let [nx, ny, nz] = world.chunk_dims();
        let columns: Vec<(i32, i32)> = (0..nz).flat_map(|cz| (0..nx).map(move |cx| (cx, cz))).collect();
        let found = par::map(pool, columns, |(cx, cz)| {
            let mut out = Vec::new();
            for cy in 0..ny {
                let idx =
                    world.chunk_index(BlockPos::new(cx * CHUNK, cy * CHUNK, cz * CHUNK)).expect("inside");
                let chunk = &world.chunks()[idx];
                let origin = world.chunk_origin(idx);
                let blocks = match (chunk.dense(), chunk.uniform().and_then(Block::ore)) {
                    (Some(blocks), _) => blocks,
                    (None, None) => continue,
                    // A whole chunk of ore never comes from the generator; index it anyway.
                    (None, Some(_)) => &[chunk.uniform().expect("uniform"); CHUNK_VOLUME],
                };
                for (i, b) in blocks.iter().enumerate() {
                    if let Some(ore) = b.ore() {
                        let i = i as i32;
                        let pos = origin.offset(i % CHUNK, i / (CHUNK * CHUNK), (i / CHUNK) % CHUNK);
                        let surface = world.params().terrain_height(pos.x, pos.z);
                        let depth = u8::try_from((surface - pos.y).clamp(0, 255)).expect("clamped");
                        out.push(Deposit { pos, ore, depth, claimed: false });
                    }
                }
            }
            out
        });
        let size = world.size();
        Self::from_deposits([size[0], size[2]], found.into_iter().flatten())
    }

    /// An index of `deposits` over a ground area of `size` = `[x, z]` blocks (deposits outside it
    /// are dropped).
    #[must_use]
    pub fn from_deposits(size: [i32; 2], deposits: impl IntoIterator<Item = Deposit>) -> Self {
        let dims = size.map(|s| (s.max(1) + BUCKET - 1) / BUCKET);
        let mut index = Self {
            dims,
            buckets: vec![Vec::new(); (dims[0] * dims[1]) as usize],
            slots: 0,
            len: 0,
            claimed: 0,
        };
        for d in deposits {
            if let Some(b) = index.bucket_of(d.pos) {
                index.claimed += usize::from(d.claimed);
                index.buckets[b].push((u32::try_from(index.slots).expect("under 2³² deposits"), d));
                index.slots += 1;
                index.len += 1;
            }
        }
        index
    }

    /// One more than the highest slot number.
    #[must_use]
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Number of deposits.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there are no deposits.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of claimed deposits.
    #[must_use]
    pub fn claimed(&self) -> usize {
        self.claimed
    }

    /// The deposit at `pos`, if there is one.
    #[must_use]
    pub fn get(&self, pos: BlockPos) -> Option<&Deposit> {
        self.buckets.get(self.bucket_of(pos)?)?.iter().map(|(_, d)| d).find(|d| d.pos == pos)
    }

    /// Claims the deposit at `pos`; false when there is none or it is claimed already.
    pub fn claim(&mut self, pos: BlockPos) -> bool {
        match self.get_mut(pos) {
            Some(d) if !d.claimed => {
                d.claimed = true;
                self.claimed += 1;
                true
            }
            _ => false,
        }
    }

    /// Releases the claim on `pos`; false when there was none.
    pub fn release(&mut self, pos: BlockPos) -> bool {
        match self.get_mut(pos) {
            Some(d) if d.claimed => {
                d.claimed = false;
                self.claimed -= 1;
                true
            }
            _ => false,
        }
    }

    /// Removes the deposit at `pos` (it was mined or is gone).
    pub fn remove(&mut self, pos: BlockPos) -> Option<Deposit> {
        let b = self.bucket_of(pos)?;
        let bucket = &mut self.buckets[b];
        let i = bucket.iter().position(|(_, d)| d.pos == pos)?;
        let (_, d) = bucket.swap_remove(i);
        self.len -= 1;
        self.claimed -= usize::from(d.claimed);
        Some(d)
    }

    /// The `k` unclaimed deposits nearest to `from` within `radius` blocks on the ground (for
    /// which `keep` is true), nearest first, ties by position; written to `out` (cleared first).
    pub fn nearest(
        &self,
        from: BlockPos,
        k: usize,
        radius: i32,
        mut keep: impl FnMut(&Deposit) -> bool,
        out: &mut Vec<Nearby>,
    ) {
        out.clear();
        if k == 0 || self.buckets.is_empty() {
            return;
        }
        let (bx, bz) = (from.x.div_euclid(BUCKET), from.z.div_euclid(BUCKET));
        let rings = radius.max(0) / BUCKET + 1;
        // Blocks from `from` to the nearest side of its own bucket, plus one.
        let (fx, fz) = (from.x.rem_euclid(BUCKET), from.z.rem_euclid(BUCKET));
        let edge = fx.min(BUCKET - 1 - fx).min(fz).min(BUCKET - 1 - fz) + 1;
        for r in 0..=rings {
            for z in bz - r..=bz + r {
                if z < 0 || z >= self.dims[1] {
                    continue;
                }
                let step = if z == bz - r || z == bz + r { 1 } else { (2 * r).max(1) };
                let mut x = bx - r;
                while x <= bx + r {
                    if x >= 0 && x < self.dims[0] {
                        for (slot, d) in &self.buckets[(z * self.dims[0] + x) as usize] {
                            if d.claimed || !keep(d) {
                                continue;
                            }
                            if (d.pos.x - from.x).abs().max((d.pos.z - from.z).abs()) > radius {
                                continue;
                            }
                            let distance = ground_distance(from, d.pos);
                            if out.len() == k && distance > out[k - 1].distance {
                                continue;
                            }
                            insert_best(out, k, Nearby { distance, slot: *slot, deposit: *d });
                        }
                    }
                    x += step;
                }
            }
            // Every deposit in a farther ring is farther on the ground than the edge of ring r.
            if out.len() == k && out[k - 1].distance <= (r * BUCKET + edge) as f32 {
                break;
            }
        }
    }

    fn bucket_of(&self, p: BlockPos) -> Option<usize> {
        let (x, z) = (p.x.div_euclid(BUCKET), p.z.div_euclid(BUCKET));
        ((0..self.dims[0]).contains(&x) && (0..self.dims[1]).contains(&z))
            .then(|| (z * self.dims[0] + x) as usize)
    }

    fn get_mut(&mut self, pos: BlockPos) -> Option<&mut Deposit> {
        let b = self.bucket_of(pos)?;
        self.buckets[b].iter_mut().map(|(_, d)| d).find(|d| d.pos == pos)
    }
}

/// The distance [`DepositIndex::nearest`] ranks by: octile on the ground plus half a block per
/// level, blocks.
#[inline]
#[must_use]
pub fn ground_distance(from: BlockPos, to: BlockPos) -> f32 {
    let (dx, dz) = ((to.x - from.x).unsigned_abs(), (to.z - from.z).unsigned_abs());
    let (lo, hi) = if dx < dz { (dx, dz) } else { (dz, dx) };
    (hi - lo) as f32 + lo as f32 * std::f32::consts::SQRT_2 + 0.5 * (to.y - from.y).unsigned_abs() as f32
}

/// Keeps `out` the `k` best by (distance, position).
fn insert_best(out: &mut Vec<Nearby>, k: usize, n: Nearby) {
    let before = |a: &Nearby, b: &Nearby| {
        a.distance < b.distance || (a.distance == b.distance && a.deposit.pos < b.deposit.pos)
    };
    if out.len() == k && !before(&n, &out[k - 1]) {
        return;
    }
    let at = out.iter().position(|o| before(&n, o)).unwrap_or(out.len());
    out.insert(at, n);
    out.truncate(k);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dep(x: i32, y: i32, z: i32) -> Deposit {
        Deposit { pos: BlockPos::new(x, y, z), ore: Ore::Iron, depth: 3, claimed: false }
    }

    #[test]
    fn nearest_matches_brute_force_and_skips_claimed() {
        let all: Vec<Deposit> =
            (0..400).map(|i: i32| dep((i * 37) % 100, (i * 7) % 30, (i * 53) % 90)).collect();
        let mut index = DepositIndex::from_deposits([100, 90], all.iter().copied());
        assert!(index.claim(all[5].pos) && !index.claim(all[5].pos));
        let mut out = Vec::new();
        for from in [BlockPos::new(50, 10, 40), BlockPos::new(0, 0, 0), BlockPos::new(99, 29, 89)] {
            index.nearest(from, 6, 30, |_| true, &mut out);
            let mut want: Vec<Nearby> = all[..]
                .iter()
                .filter(|d| d.pos != all[5].pos)
                .filter(|d| (d.pos.x - from.x).abs().max((d.pos.z - from.z).abs()) <= 30)
                .map(|d| Nearby {
                    slot: all.iter().position(|a| a.pos == d.pos).unwrap() as u32,
                    distance: ground_distance(from, d.pos),
                    deposit: *d,
                })
                .collect();
            want.sort_by(|a, b| {
                (a.distance, a.deposit.pos).partial_cmp(&(b.distance, b.deposit.pos)).unwrap()
            });
            want.truncate(6);
            assert_eq!(out, want, "from {from}");
        }
        assert_eq!(index.claimed(), 1);
        assert!(index.release(all[5].pos) && !index.release(all[5].pos));
        assert_eq!(index.remove(all[7].pos).map(|d| d.pos), Some(all[7].pos));
        assert_eq!(index.len(), 399);
        assert!(index.get(all[7].pos).is_none());
    }

    #[test]
    fn builds_from_a_generated_world() {
        let world = VoxelWorld::generate(terrarium_engine::voxel::WorldGen::small()).unwrap();
        let pool = ParPool::new(2).unwrap();
        let index = DepositIndex::build(&pool, &world);
        assert!(index.len() > 50, "{}", index.len());
        let mut out = Vec::new();
        index.nearest(BlockPos::new(32, 30, 32), 4, 64, |_| true, &mut out);
        assert_eq!(out.len(), 4);
        for n in &out {
            assert_eq!(world.get(n.deposit.pos).ore(), Some(n.deposit.ore));
        }
    }
}
