//! Deterministic world generation: terrain height from value noise, water up to the sea level,
//! ore veins as short random walks, depots on a grid. Every block is a pure function of the
//! parameters and the chunk it is in, so chunks can be generated in any order, on any thread.

use serde::{Deserialize, Serialize};

use super::{Block, BlockPos, CHUNK, CHUNK_VOLUME, Chunk, local_index};
use crate::ConfigError;
use crate::config::in_range;
use crate::rng::{StreamRng, hash3, unit_f32};

/// The parameters of a generated world. The same parameters always give the same blocks.
///
/// # Examples
/// ```
/// use terrarium_engine::voxel::{Block, VoxelWorld, WorldGen};
/// let world = VoxelWorld::generate(WorldGen { seed: 7, ..WorldGen::small() }).unwrap();
/// assert_eq!(world.get(terrarium_engine::voxel::BlockPos::new(3, 0, 3)), Block::Bedrock);
/// assert!(world.depots().len() > 0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WorldGen {
    /// Seed of every random choice.
    pub seed: u64,
    /// World size in chunks of 16³ blocks: `[x, y, z]`; x and z 1 ..= 512, y 1 ..= 16.
    pub size_chunks: [u32; 3],
    /// Mean terrain height, blocks; 4 ..= world height − 6.
    pub base_height: i32,
    /// Height of the hills above and below the mean, blocks; 0 ..= 64.
    pub relief: i32,
    /// Water fills dry space up to this height, blocks; below `base_height` gives mostly land.
    pub sea_level: i32,
    /// Mean number of ore veins per chunk that holds stone; 0 ..= 64.
    pub veins_per_chunk: f32,
    /// Distance between depots on the depot grid, blocks; 8 ..= 4096.
    pub depot_spacing: u32,
}

impl Default for WorldGen {
    fn default() -> Self {
        Self {
            seed: 0,
            size_chunks: [16, 3, 16],
            base_height: 28,
            relief: 6,
            sea_level: 23,
            veins_per_chunk: 6.0,
            depot_spacing: 64,
        }
    }
}

impl WorldGen {
    /// A 64 × 48 × 64 world, for tests and examples.
    #[must_use]
    pub fn small() -> Self {
        Self { size_chunks: [4, 3, 4], depot_spacing: 32, ..Self::default() }
    }

    /// A world about `columns` columns large (square, rounded up to whole chunks), otherwise
    /// the defaults.
    #[must_use]
    pub fn with_area(seed: u64, columns: u64) -> Self {
        let side = (columns as f64).sqrt().ceil() as u64;
        let chunks = u32::try_from(side.div_ceil(CHUNK as u64)).unwrap_or(u32::MAX).clamp(1, 512);
        Self { seed, size_chunks: [chunks, 3, chunks], ..Self::default() }
    }

    /// Checks every parameter against its documented range.
    ///
    /// # Errors
    /// [`ConfigError::OutOfRange`] naming the first parameter out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let [x, y, z] = self.size_chunks;
        in_range("worldgen.size_chunks[0]", x, &(1..=512))?;
        in_range("worldgen.size_chunks[1]", y, &(1..=16))?;
        in_range("worldgen.size_chunks[2]", z, &(1..=512))?;
        let height = self.height_blocks();
        in_range("worldgen.base_height", self.base_height, &(4..=height - 6))?;
        in_range("worldgen.relief", self.relief, &(0..=64))?;
        in_range("worldgen.sea_level", self.sea_level, &(0..=height - 1))?;
        in_range("worldgen.veins_per_chunk", self.veins_per_chunk, &(0.0..=64.0))?;
        in_range("worldgen.depot_spacing", self.depot_spacing, &(8..=4096))?;
        Ok(())
    }

    /// World height in blocks.
    #[must_use]
    pub fn height_blocks(&self) -> i32 {
        self.size_chunks[1] as i32 * CHUNK
    }

    /// Number of chunks.
    #[must_use]
    pub fn chunk_count(&self) -> usize {
        self.size_chunks.iter().map(|&c| c as usize).product()
    }

    /// Height of the top solid block of column `(x, z)` as generated (before any edit).
    #[must_use]
    pub fn terrain_height(&self, x: i32, z: i32) -> i32 {
        let hills = noise(self.seed, 0x4849_4C4C, x, z, 48) * 2.0 - 1.0;
        let bumps = noise(self.seed, 0x4255_4D50, x, z, 12) * 2.0 - 1.0;
        let h = self.base_height as f32 + self.relief as f32 * (0.8 * hills + 0.35 * bumps);
        (h as i32).clamp(2, self.height_blocks() - 6)
    }

    /// Generates chunk number `index` (chunks are numbered x fastest, then z, then y).
    #[must_use]
    pub fn chunk(&self, index: usize) -> Chunk {
        let [nx, _, nz] = self.size_chunks.map(|c| c as usize);
        let (cx, cz, cy) = (index % nx, (index / nx) % nz, index / (nx * nz));
        let origin = BlockPos::new(cx as i32 * CHUNK, cy as i32 * CHUNK, cz as i32 * CHUNK);
        let mut blocks = Box::new([Block::Air; CHUNK_VOLUME]);
        let mut has_stone = false;
        for lz in 0..CHUNK {
            for lx in 0..CHUNK {
                let h = self.terrain_height(origin.x + lx, origin.z + lz);
                for ly in 0..CHUNK {
                    let b = self.terrain_block(origin.y + ly, h);
                    has_stone |= b == Block::Stone;
                    blocks[local_index(lx, ly, lz)] = b;
                }
            }
        }
        if has_stone {
            self.carve_veins(index, origin, &mut blocks);
        }
        Chunk::from_blocks(blocks, 0)
    }

    /// The depot cells (where an agent stands; the block below becomes the depot's floor): one
    /// near every node of a grid with `depot_spacing` between nodes, on
    /// dry land (a node under water looks for the nearest dry column within a quarter spacing).
    #[must_use]
    pub fn depots(&self) -> Vec<BlockPos> {
        let s = self.depot_spacing as i32;
        let (w, d) = (self.size_chunks[0] as i32 * CHUNK, self.size_chunks[2] as i32 * CHUNK);
        let mut out = Vec::new();
        let mut gz = s / 2;
        while gz < d.max(s / 2 + 1) {
            let mut gx = s / 2;
            while gx < w.max(s / 2 + 1) {
                if let Some(p) = self.dry_spot_near(gx.min(w - 1), gz.min(d - 1), (s / 4).max(2)) {
                    out.push(p);
                }
                gx += s;
            }
            gz += s;
        }
        out
    }

    fn dry_spot_near(&self, x: i32, z: i32, radius: i32) -> Option<BlockPos> {
        let (w, d) = (self.size_chunks[0] as i32 * CHUNK, self.size_chunks[2] as i32 * CHUNK);
        for r in 0..=radius {
            for dz in -r..=r {
                for dx in -r..=r {
                    if dx.abs().max(dz.abs()) != r {
                        continue;
                    }
                    let (px, pz) = (x + dx, z + dz);
                    if !(0..w).contains(&px) || !(0..d).contains(&pz) {
                        continue;
                    }
                    let h = self.terrain_height(px, pz);
                    if h >= self.sea_level {
                        return Some(BlockPos::new(px, h + 1, pz));
                    }
                }
            }
        }
        None
    }

    fn terrain_block(&self, y: i32, h: i32) -> Block {
        if y == 0 {
            Block::Bedrock
        } else if y < h - 3 {
            Block::Stone
        } else if y < h || (y == h && h < self.sea_level) {
            Block::Dirt
        } else if y == h {
            Block::Grass
        } else if y <= self.sea_level {
            Block::Water
        } else {
            Block::Air
        }
    }

    /// Ore veins: random walks that start in this chunk and stay in it, replacing stone only.
    fn carve_veins(&self, index: usize, origin: BlockPos, blocks: &mut [Block; CHUNK_VOLUME]) {
        let mut r = StreamRng::new(hash3(self.seed, index as u64, 0x5645_494E)); // "VEIN"
        let whole = self.veins_per_chunk as u32;
        let extra = u32::from(r.next_f32() < self.veins_per_chunk - whole as f32);
        for _ in 0..whole + extra {
            let (mut x, mut y, mut z) = (r.below(16) as i32, r.below(16) as i32, r.below(16) as i32);
            let roll = r.next_f32();
            let depth = origin.y + y;
            let (ore, len) = if depth < 12 && roll < 0.12 {
                (Block::Diamond, 2 + r.below(3))
            } else if depth < 20 && roll < 0.30 {
                (Block::Gold, 3 + r.below(4))
            } else if roll < 0.62 {
                (Block::Iron, 5 + r.below(6))
            } else {
                (Block::Coal, 8 + r.below(9))
            };
            for _ in 0..len {
                let i = local_index(x, y, z);
                if blocks[i] == Block::Stone {
                    blocks[i] = ore;
                }
                let step = if r.below(2) == 0 { -1 } else { 1 };
                match r.below(3) {
                    0 => x = (x + step).clamp(0, CHUNK - 1),
                    1 => y = (y + step).clamp(0, CHUNK - 1),
                    _ => z = (z + step).clamp(0, CHUNK - 1),
                }
            }
        }
    }
}

/// Smooth value noise in `[0, 1)`: random values on a lattice of `period` blocks, blended with
/// a smoothstep. Integer lattice coordinates and IEEE arithmetic only, so it is portable.
fn noise(seed: u64, salt: u64, x: i32, z: i32, period: i32) -> f32 {
    let (ix, iz) = (x.div_euclid(period), z.div_euclid(period));
    let p = period as f32;
    let (tx, tz) = (x.rem_euclid(period) as f32 / p, z.rem_euclid(period) as f32 / p);
    let lattice = |a: i32, b: i32| unit_f32(hash3(seed ^ salt, a as u64, b as u64));
    let smooth = |t: f32| t * t * (3.0 - 2.0 * t);
    let (sx, sz) = (smooth(tx), smooth(tz));
    let top = lattice(ix, iz) + (lattice(ix + 1, iz) - lattice(ix, iz)) * sx;
    let bottom = lattice(ix, iz + 1) + (lattice(ix + 1, iz + 1) - lattice(ix, iz + 1)) * sx;
    top + (bottom - top) * sz
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_in_range_and_continuous() {
        let mut prev = noise(1, 2, 0, 5, 16);
        for x in 1..200 {
            let v = noise(1, 2, x, 5, 16);
            assert!((0.0..1.0).contains(&v));
            assert!((v - prev).abs() < 0.2, "noise jumps at x = {x}");
            prev = v;
        }
    }

    #[test]
    fn validation_names_the_bad_parameter() {
        assert!(WorldGen::default().validate().is_ok());
        let bad = WorldGen { size_chunks: [4, 0, 4], ..WorldGen::default() };
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains("size_chunks"), "{err}");
        let bad = WorldGen { depot_spacing: 2, ..WorldGen::default() };
        assert!(bad.validate().unwrap_err().to_string().contains("depot_spacing"));
    }

    #[test]
    fn depots_stand_on_dry_land() {
        let g = WorldGen::small();
        let depots = g.depots();
        assert!(!depots.is_empty());
        for d in depots {
            assert!(g.terrain_height(d.x, d.z) == d.y - 1 && d.y > g.sea_level);
        }
    }
}
