//! The voxel world: a chunked 3D grid of [`Block`]s that agents walk, dig and mine, with the
//! depots they bring ore to. It is part of the simulation state: snapshots save it and
//! `world_hash` covers it.
//!
//! Every edit bumps the version of the chunk it falls in, so a cache of anything computed from
//! blocks (paths, in `terrarium_systems`) stays valid while the versions of the chunks it read
//! are unchanged.

mod block;
mod worldgen;

use std::sync::Arc;

use bevy_ecs::prelude::*;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

pub use block::{Block, Ore};
pub use worldgen::WorldGen;

use crate::{ConfigError, SnapshotError};

/// Edge of a chunk, blocks.
pub const CHUNK: i32 = 16;
/// Blocks in a chunk.
pub const CHUNK_VOLUME: usize = (CHUNK * CHUNK * CHUNK) as usize;

/// Integer block coordinates; `y` is up. A block fills `[x, x + 1) × [y, y + 1) × [z, z + 1)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct BlockPos {
    /// East-west.
    pub x: i32,
    /// Height.
    pub y: i32,
    /// North-south.
    pub z: i32,
}

impl BlockPos {
    /// A position from its coordinates.
    #[must_use]
    pub const fn new(x: i32, y: i32, z: i32) -> Self {
        Self { x, y, z }
    }

    /// This position moved by `(dx, dy, dz)`.
    #[must_use]
    pub const fn offset(self, dx: i32, dy: i32, dz: i32) -> Self {
        Self { x: self.x + dx, y: self.y + dy, z: self.z + dz }
    }

    /// The block an entity at `p` stands in (its feet).
    #[must_use]
    pub fn containing(p: crate::Position) -> Self {
        Self { x: p.x.floor() as i32, y: p.y.floor() as i32, z: p.z.floor() as i32 }
    }

    /// Where an entity standing in this block is placed: the middle of the block's floor.
    #[must_use]
    pub fn feet_position(self) -> crate::Position {
        crate::Position::new(self.x as f32 + 0.5, self.y as f32, self.z as f32 + 0.5)
    }
}

impl std::fmt::Display for BlockPos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "({}, {}, {})", self.x, self.y, self.z)
    }
}

/// Index of `(lx, ly, lz)` inside a chunk (each 0 ..= 15): x fastest, then z, then y.
#[must_use]
pub(crate) const fn local_index(lx: i32, ly: i32, lz: i32) -> usize {
    ((ly * CHUNK + lz) * CHUNK + lx) as usize
}

/// 16³ blocks and a version that every edit bumps. A chunk of one kind only (all air, say) is
/// stored as that kind, without the 4 KiB array. A dense chunk's array is shared, copy on
/// write: cloning a chunk (or the whole [`VoxelWorld`]) copies no blocks, and the first edit of
/// a shared array copies it (readers off the tick thread take such a clone, see
/// [`VoxelWorld`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    blocks: ChunkBlocks,
    version: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ChunkBlocks {
    Uniform(Block),
    Dense(Arc<[Block; CHUNK_VOLUME]>),
}

impl Chunk {
    /// A chunk from its blocks, stored compactly when they are all the same.
    #[must_use]
    pub fn from_blocks(blocks: Box<[Block; CHUNK_VOLUME]>, version: u32) -> Self {
        let first = blocks[0];
        let blocks = if blocks.iter().all(|&b| b == first) {
            ChunkBlocks::Uniform(first)
        } else {
            ChunkBlocks::Dense(Arc::from(blocks))
        };
        Self { blocks, version }
    }

    /// Edits so far (wraps after 2³² edits).
    #[must_use]
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The blocks, when they are not all of one kind (index: x fastest, then z, then y).
    #[must_use]
    pub fn dense(&self) -> Option<&[Block; CHUNK_VOLUME]> {
        match &self.blocks {
            ChunkBlocks::Dense(blocks) => Some(blocks),
            ChunkBlocks::Uniform(_) => None,
        }
    }

    /// The one kind every block is, for a uniform chunk.
    #[must_use]
    pub fn uniform(&self) -> Option<Block> {
        match self.blocks {
            ChunkBlocks::Uniform(b) => Some(b),
            ChunkBlocks::Dense(_) => None,
        }
    }

    #[inline]
    fn get(&self, i: usize) -> Block {
        match &self.blocks {
            ChunkBlocks::Uniform(b) => *b,
            ChunkBlocks::Dense(blocks) => blocks[i],
        }
    }

    fn set(&mut self, i: usize, block: Block) -> Block {
        let blocks = match &mut self.blocks {
            ChunkBlocks::Uniform(b) if *b == block => return block,
            ChunkBlocks::Uniform(b) => {
                self.blocks = ChunkBlocks::Dense(Arc::new([*b; CHUNK_VOLUME]));
                let ChunkBlocks::Dense(blocks) = &mut self.blocks else { unreachable!("just made dense") };
                Arc::make_mut(blocks)
            }
            // Copies the array only while a clone of the world still shares it.
            ChunkBlocks::Dense(blocks) => Arc::make_mut(blocks),
        };
        let old = std::mem::replace(&mut blocks[i], block);
        if old != block {
            self.version = self.version.wrapping_add(1);
        }
        old
    }
}

/// A depot: where agents hand in what they mined, and what it holds. It stands on a
/// [`Block::Depot`] floor, which nothing digs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Depot {
    /// The cell an agent stands in to use the depot.
    pub cell: BlockPos,
    /// Items handed in so far, per ore ([`Ore::index`]).
    pub stock: [u64; Ore::COUNT],
}

/// The voxel world (a resource). Out of bounds reads as [`Block::Bedrock`]: nothing walks or
/// digs there. Cloning it copies the chunk table, not the blocks (dense chunks are shared
/// copy on write): a cheap snapshot the tick thread can hand to a reader on another thread.
///
/// # Examples
/// ```
/// use terrarium_engine::voxel::{Block, BlockPos, VoxelWorld, WorldGen};
/// let mut world = VoxelWorld::generate(WorldGen::small()).unwrap();
/// let p = BlockPos::new(10, 5, 10);
/// assert_eq!(world.get(p), Block::Stone);
/// let chunk = world.chunk_index(p).unwrap();
/// let before = world.chunk_version(chunk);
/// assert_eq!(world.set(p, Block::Air), Some(Block::Stone));
/// assert_eq!(world.chunk_version(chunk), before + 1);
/// assert_eq!(world.get(BlockPos::new(-1, 5, 10)), Block::Bedrock);
/// ```
#[derive(Resource, Debug, Clone, PartialEq)]
pub struct VoxelWorld {
    params: WorldGen,
    chunk_dims: [i32; 3],
    size: [i32; 3],
    chunks: Vec<Chunk>,
    depots: Vec<Depot>,
    edits: u64,
}

impl VoxelWorld {
    /// Generates the whole world on this thread (see [`WorldGen::chunk`] to spread the work).
    ///
    /// # Errors
    /// [`ConfigError::OutOfRange`] for parameters out of range.
    pub fn generate(params: WorldGen) -> Result<Self, ConfigError> {
        params.validate()?;
        let chunks = (0..params.chunk_count()).map(|i| params.chunk(i)).collect();
        Self::from_chunks(params, chunks)
    }

    /// Assembles a world from chunks generated elsewhere (`chunks[i] == params.chunk(i)`).
    ///
    /// # Errors
    /// [`ConfigError::OutOfRange`] for bad parameters, [`ConfigError::Invalid`] when the number
    /// of chunks does not match them.
    pub fn from_chunks(params: WorldGen, chunks: Vec<Chunk>) -> Result<Self, ConfigError> {
        params.validate()?;
        if chunks.len() != params.chunk_count() {
            return Err(ConfigError::Invalid {
                key: "worldgen.size_chunks".into(),
                reason: format!("{} chunks given for a world of {}", chunks.len(), params.chunk_count()),
            });
        }
        let depots = params.depots().into_iter().map(|cell| Depot { cell, stock: [0; Ore::COUNT] }).collect();
        let mut world = Self::assemble(params, chunks, depots, 0);
        // Depot floors are part of the generated world: not edits, no version bump.
        for i in 0..world.depots.len() {
            let floor = world.depots[i].cell.offset(0, -1, 0);
            if let Some(c) = world.chunk_index(floor) {
                world.chunks[c].set(
                    local_index(floor.x & (CHUNK - 1), floor.y & (CHUNK - 1), floor.z & (CHUNK - 1)),
                    Block::Depot,
                );
                world.chunks[c].version = 0;
            }
        }
        Ok(world)
    }

    fn assemble(params: WorldGen, chunks: Vec<Chunk>, depots: Vec<Depot>, edits: u64) -> Self {
        let chunk_dims = params.size_chunks.map(|c| c as i32);
        Self { params, chunk_dims, size: chunk_dims.map(|c| c * CHUNK), chunks, depots, edits }
    }

    /// The parameters the world was generated from.
    #[must_use]
    pub fn params(&self) -> &WorldGen {
        &self.params
    }

    /// Size in blocks `[x, y, z]`.
    #[must_use]
    pub fn size(&self) -> [i32; 3] {
        self.size
    }

    /// True when `p` is inside the world.
    #[inline]
    #[must_use]
    pub fn contains(&self, p: BlockPos) -> bool {
        (p.x as u32) < self.size[0] as u32
            && (p.y as u32) < self.size[1] as u32
            && (p.z as u32) < self.size[2] as u32
    }

    /// The block at `p`; [`Block::Bedrock`] outside the world.
    #[inline]
    #[must_use]
    pub fn get(&self, p: BlockPos) -> Block {
        match self.chunk_index(p) {
            Some(c) => {
                self.chunks[c].get(local_index(p.x & (CHUNK - 1), p.y & (CHUNK - 1), p.z & (CHUNK - 1)))
            }
            None => Block::Bedrock,
        }
    }

    /// The blocks at `p.x − 1`, `p.x` and `p.x + 1` (same `y` and `z`): one chunk lookup for
    /// the three when they share a chunk. Searches read neighbourhoods this way.
    #[inline]
    #[must_use]
    pub fn row3(&self, p: BlockPos) -> [Block; 3] {
        let lx = p.x & (CHUNK - 1);
        if (1..CHUNK - 1).contains(&lx)
            && let Some(c) = self.chunk_index(p)
        {
            return match &self.chunks[c].blocks {
                ChunkBlocks::Uniform(b) => [*b; 3],
                ChunkBlocks::Dense(blocks) => {
                    let i = local_index(lx, p.y & (CHUNK - 1), p.z & (CHUNK - 1));
                    [blocks[i - 1], blocks[i], blocks[i + 1]]
                }
            };
        }
        [self.get(p.offset(-1, 0, 0)), self.get(p), self.get(p.offset(1, 0, 0))]
    }

    /// Fills `out` with the blocks from `start` eastwards (`start.x`, `start.x + 1`, …), one
    /// chunk lookup per chunk crossed.
    pub fn read_row(&self, start: BlockPos, out: &mut [Block]) {
        let mut i = 0;
        while i < out.len() {
            let p = start.offset(i as i32, 0, 0);
            let lx = (p.x & (CHUNK - 1)) as usize;
            let run = (CHUNK as usize - lx).min(out.len() - i);
            match self.chunk_index(p).map(|c| &self.chunks[c].blocks) {
                Some(ChunkBlocks::Dense(blocks)) => {
                    let at = local_index(lx as i32, p.y & (CHUNK - 1), p.z & (CHUNK - 1));
                    out[i..i + run].copy_from_slice(&blocks[at..at + run]);
                }
                Some(ChunkBlocks::Uniform(b)) => out[i..i + run].fill(*b),
                None => {
                    // Outside: block by block (the row may come back inside further east).
                    out[i] = self.get(p);
                    i += 1;
                    continue;
                }
            }
            i += run;
        }
    }

    /// Replaces the block at `p` and returns the old one; `None` (and no change) outside the
    /// world. A real change bumps the chunk's version and the edit count.
    pub fn set(&mut self, p: BlockPos, block: Block) -> Option<Block> {
        let c = self.chunk_index(p)?;
        let old =
            self.chunks[c].set(local_index(p.x & (CHUNK - 1), p.y & (CHUNK - 1), p.z & (CHUNK - 1)), block);
        if old != block {
            self.edits += 1;
        }
        Some(old)
    }

    /// Index of the chunk holding `p` (x fastest, then z, then y), if `p` is inside.
    #[inline]
    #[must_use]
    pub fn chunk_index(&self, p: BlockPos) -> Option<usize> {
        if !self.contains(p) {
            return None;
        }
        let [nx, _, nz] = self.chunk_dims;
        Some((((p.y >> 4) * nz + (p.z >> 4)) * nx + (p.x >> 4)) as usize)
    }

    /// The block with the lowest coordinates in chunk `index`.
    #[must_use]
    pub fn chunk_origin(&self, index: usize) -> BlockPos {
        let [nx, _, nz] = self.chunk_dims.map(|c| c as usize);
        let (cx, cz, cy) = (index % nx, (index / nx) % nz, index / (nx * nz));
        BlockPos::new(cx as i32 * CHUNK, cy as i32 * CHUNK, cz as i32 * CHUNK)
    }

    /// Chunks along each axis `[x, y, z]`.
    #[must_use]
    pub fn chunk_dims(&self) -> [i32; 3] {
        self.chunk_dims
    }

    /// Version of chunk `index` (0 for an index past the end).
    #[inline]
    #[must_use]
    pub fn chunk_version(&self, index: usize) -> u32 {
        self.chunks.get(index).map_or(0, Chunk::version)
    }

    /// The chunks, in index order.
    #[must_use]
    pub fn chunks(&self) -> &[Chunk] {
        &self.chunks
    }

    /// Block edits since the world was generated.
    #[must_use]
    pub fn edits(&self) -> u64 {
        self.edits
    }

    /// Ore blocks the generated world held that this one no longer holds, per ore
    /// ([`Ore::index`]): the ore taken out of the ground. Only edited chunks (version above 0)
    /// are compared, each against its chunk generated again from the parameters (with the
    /// depot floors laid as at generation). Edits only ever take ore out; a chunk holding more
    /// of an ore than it was generated with counts 0 for it.
    ///
    /// # Examples
    /// ```
    /// use terrarium_engine::voxel::{Block, BlockPos, VoxelWorld, WorldGen};
    /// let mut world = VoxelWorld::generate(WorldGen::small()).unwrap();
    /// assert_eq!(world.ore_taken(), [0; 4]);
    /// let ore = (0..world.size()[1])
    ///     .flat_map(|y| (0..64).flat_map(move |x| (0..64).map(move |z| BlockPos::new(x, y, z))))
    ///     .find(|&p| world.get(p).ore().is_some())
    ///     .unwrap();
    /// let kind = world.get(ore).ore().unwrap();
    /// world.set(ore, Block::Air);
    /// assert_eq!(world.ore_taken()[kind.index()], 1);
    /// ```
    #[must_use]
    pub fn ore_taken(&self) -> [u64; Ore::COUNT] {
        let count = |c: &Chunk, out: &mut [u64; Ore::COUNT]| {
            if let Some(ore) = c.uniform().and_then(Block::ore) {
                out[ore.index()] += CHUNK_VOLUME as u64;
            } else if let Some(blocks) = c.dense() {
                for b in blocks {
                    if let Some(ore) = b.ore() {
                        out[ore.index()] += 1;
                    }
                }
            }
        };
        let mut taken = [0u64; Ore::COUNT];
        for (i, chunk) in self.chunks.iter().enumerate() {
            if chunk.version == 0 {
                continue;
            }
            let mut generated = self.params.chunk(i);
            let origin = self.chunk_origin(i);
            for d in &self.depots {
                let floor = d.cell.offset(0, -1, 0);
                if self.chunk_index(floor) == Some(i) {
                    generated.set(
                        local_index(floor.x - origin.x, floor.y - origin.y, floor.z - origin.z),
                        Block::Depot,
                    );
                }
            }
            let (mut was, mut now) = ([0u64; Ore::COUNT], [0u64; Ore::COUNT]);
            count(&generated, &mut was);
            count(chunk, &mut now);
            for k in 0..Ore::COUNT {
                taken[k] += was[k].saturating_sub(now[k]);
            }
        }
        taken
    }

    /// Height of the highest solid block of column `(x, z)`, if it has one.
    #[must_use]
    pub fn surface_y(&self, x: i32, z: i32) -> Option<i32> {
        (0..self.size[1]).rev().find(|&y| self.get(BlockPos::new(x, y, z)).is_solid())
    }

    /// The depots.
    #[must_use]
    pub fn depots(&self) -> &[Depot] {
        &self.depots
    }

    /// The depots, to hand items in.
    pub fn depots_mut(&mut self) -> &mut [Depot] {
        &mut self.depots
    }

    /// Index of the depot nearest to `p` (horizontal distance, ties to the lower index).
    #[must_use]
    pub fn nearest_depot(&self, p: BlockPos) -> Option<usize> {
        self.depots
            .iter()
            .enumerate()
            .min_by_key(|(i, d)| {
                let (dx, dz) = (i64::from(d.cell.x - p.x), i64::from(d.cell.z - p.z));
                (dx * dx + dz * dz, *i)
            })
            .map(|(i, _)| i)
    }

    /// Feeds the canonical bytes of the world (parameters, every chunk with its version, depots,
    /// edit count) to `h`.
    pub(crate) fn hash_into(&self, h: &mut Xxh3) {
        h.update(&terrarium_codec::encode(&self.params).expect("world parameters always encode"));
        for c in &self.chunks {
            h.update(&c.version.to_le_bytes());
            match &c.blocks {
                ChunkBlocks::Uniform(b) => h.update(&[0, *b as u8]),
                ChunkBlocks::Dense(blocks) => {
                    h.update(&[1]);
                    h.update(&dense_bytes(blocks));
                }
            }
        }
        for d in &self.depots {
            for v in [d.cell.x, d.cell.y, d.cell.z] {
                h.update(&v.to_le_bytes());
            }
            for s in d.stock {
                h.update(&s.to_le_bytes());
            }
        }
        h.update(&self.edits.to_le_bytes());
    }

    /// The world as a snapshot record: blocks LZ4-compressed in one stream.
    pub(crate) fn to_record(&self) -> VoxelRecord {
        let mut raw = Vec::with_capacity(self.chunks.len() * 2);
        for c in &self.chunks {
            match &c.blocks {
                ChunkBlocks::Uniform(b) => raw.push(*b as u8),
                ChunkBlocks::Dense(blocks) => {
                    raw.push(DENSE_TAG);
                    raw.extend_from_slice(&dense_bytes(blocks));
                }
            }
        }
        VoxelRecord {
            params: self.params,
            versions: self.chunks.iter().map(Chunk::version).collect(),
            blocks: terrarium_codec::compress(&raw),
            depots: self.depots.clone(),
            edits: self.edits,
        }
    }

    /// Rebuilds a world from a snapshot record, checking everything it was told. The
    /// decompressed blocks, the chunk table and the dense chunks together may take at most
    /// `limit` bytes (`snapshot.max_bytes`): a small record can't claim a huge world.
    pub(crate) fn from_record(rec: VoxelRecord, limit: u64) -> Result<Self, SnapshotError> {
        let bad = |what: String| SnapshotError::Inconsistent(format!("voxel world: {what}"));
        rec.params.validate().map_err(|e| bad(e.to_string()))?;
        let n = rec.params.chunk_count();
        if rec.versions.len() != n {
            return Err(bad(format!("{} chunk versions for {n} chunks", rec.versions.len())));
        }
        let table = (n as u64).saturating_mul(std::mem::size_of::<Chunk>() as u64);
        let too_large = |needed: u64| SnapshotError::VoxelTooLarge { needed, limit };
        let room = limit.checked_sub(table).ok_or_else(|| too_large(table))?;
        let most = n.saturating_mul(CHUNK_VOLUME + 1).min(usize::try_from(room).unwrap_or(usize::MAX));
        let raw = terrarium_codec::decompress(&rec.blocks, most).map_err(|e| match e {
            terrarium_codec::CodecError::TooLarge { len, .. } => too_large(table.saturating_add(len)),
            other => SnapshotError::Decode(other),
        })?;
        // Each dense chunk is boxed next to the decompressed stream until it is dropped.
        let mut used = table.saturating_add(raw.len() as u64);
        let mut chunks = Vec::with_capacity(n);
        let mut at = 0;
        for &version in &rec.versions {
            let tag = *raw.get(at).ok_or_else(|| bad("block stream ends early".into()))?;
            at += 1;
            let blocks = if tag == DENSE_TAG {
                let bytes =
                    raw.get(at..at + CHUNK_VOLUME).ok_or_else(|| bad("block stream ends early".into()))?;
                at += CHUNK_VOLUME;
                used = used.saturating_add(CHUNK_VOLUME as u64);
                if used > limit {
                    return Err(too_large(used));
                }
                let mut blocks = Box::new([Block::Air; CHUNK_VOLUME]);
                for (b, &byte) in blocks.iter_mut().zip(bytes) {
                    *b = Block::from_u8(byte).ok_or_else(|| bad(format!("unknown block code {byte}")))?;
                }
                ChunkBlocks::Dense(Arc::from(blocks))
            } else {
                ChunkBlocks::Uniform(
                    Block::from_u8(tag).ok_or_else(|| bad(format!("unknown block code {tag}")))?,
                )
            };
            chunks.push(Chunk { blocks, version });
        }
        if at != raw.len() {
            return Err(bad(format!("{} bytes after the last chunk", raw.len() - at)));
        }
        let world = Self::assemble(rec.params, chunks, rec.depots, rec.edits);
        if let Some(d) = world.depots.iter().find(|d| !world.contains(d.cell)) {
            return Err(bad(format!("depot at {} is outside the world", d.cell)));
        }
        Ok(world)
    }
}

const DENSE_TAG: u8 = 0xFF;

fn dense_bytes(blocks: &[Block; CHUNK_VOLUME]) -> [u8; CHUNK_VOLUME] {
    let mut out = [0u8; CHUNK_VOLUME];
    for (o, b) in out.iter_mut().zip(blocks.iter()) {
        *o = *b as u8;
    }
    out
}

/// How a [`VoxelWorld`] travels in a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct VoxelRecord {
    pub(crate) params: WorldGen,
    pub(crate) versions: Vec<u32>,
    /// Per chunk: a kind byte (uniform chunk) or `0xFF` and 4096 kind bytes; LZ4-compressed.
    pub(crate) blocks: Vec<u8>,
    pub(crate) depots: Vec<Depot>,
    pub(crate) edits: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_world_and_a_different_seed_differs() {
        let a = VoxelWorld::generate(WorldGen { seed: 3, ..WorldGen::small() }).unwrap();
        let b = VoxelWorld::generate(WorldGen { seed: 3, ..WorldGen::small() }).unwrap();
        let c = VoxelWorld::generate(WorldGen { seed: 4, ..WorldGen::small() }).unwrap();
        assert_eq!(a, b);
        assert_ne!(a.chunks, c.chunks);
    }

    #[test]
    fn terrain_has_layers_ores_and_bedrock() {
        let w = VoxelWorld::generate(WorldGen { seed: 9, ..WorldGen::small() }).unwrap();
        let [sx, sy, sz] = w.size();
        let mut counts = [0usize; Block::ALL.len()];
        for y in 0..sy {
            for z in 0..sz {
                for x in 0..sx {
                    counts[w.get(BlockPos::new(x, y, z)) as usize] += 1;
                }
            }
        }
        assert_eq!(counts[Block::Bedrock as usize], (sx * sz) as usize, "one bedrock floor");
        for ore in Ore::ALL {
            assert!(counts[ore.block() as usize] > 0, "no {} generated", ore.name());
        }
        assert!(
            counts[Block::Grass as usize] > 0 && counts[Block::Stone as usize] > counts[Block::Coal as usize]
        );
        for x in [0, 17, 40] {
            let top = w.surface_y(x, 9).unwrap();
            assert_eq!(top, w.params().terrain_height(x, 9));
        }
    }

    #[test]
    fn a_clone_shares_blocks_until_one_side_edits() {
        let mut w = VoxelWorld::generate(WorldGen::small()).unwrap();
        let p = BlockPos::new(10, 5, 10);
        let c = w.chunk_index(p).unwrap();
        let snapshot = w.clone();
        let shared = |a: &VoxelWorld, b: &VoxelWorld| match (&a.chunks[c].blocks, &b.chunks[c].blocks) {
            (ChunkBlocks::Dense(x), ChunkBlocks::Dense(y)) => Arc::ptr_eq(x, y),
            _ => panic!("a stone chunk is dense"),
        };
        assert!(shared(&w, &snapshot), "a clone copies no blocks");
        assert_eq!(w.set(p, Block::Air), Some(Block::Stone));
        assert!(!shared(&w, &snapshot), "the edited chunk was copied");
        assert_eq!((w.get(p), snapshot.get(p)), (Block::Air, Block::Stone), "the clone kept its blocks");
        assert_eq!((w.chunk_version(c), snapshot.chunk_version(c)), (1, 0));
        assert_eq!((w.edits(), snapshot.edits()), (1, 0));
        drop(snapshot);
        // Alone again: edits happen in place.
        let ChunkBlocks::Dense(before) = &w.chunks[c].blocks else { unreachable!() };
        let before = Arc::as_ptr(before);
        w.set(p.offset(1, 0, 0), Block::Air);
        let ChunkBlocks::Dense(after) = &w.chunks[c].blocks else { unreachable!() };
        assert_eq!(Arc::as_ptr(after), before);
    }

    #[test]
    fn edits_bump_only_their_chunk_and_uniform_chunks_become_dense() {
        let mut w = VoxelWorld::generate(WorldGen::small()).unwrap();
        let sky = BlockPos::new(1, 47, 1);
        let c = w.chunk_index(sky).unwrap();
        assert!(matches!(w.chunks[c].blocks, ChunkBlocks::Uniform(Block::Air)));
        let others: Vec<u32> = (0..w.chunks.len()).map(|i| w.chunk_version(i)).collect();
        assert_eq!(w.set(sky, Block::Stone), Some(Block::Air));
        assert_eq!(w.set(sky, Block::Stone), Some(Block::Stone), "no change, no bump");
        assert_eq!(w.get(sky), Block::Stone);
        assert_eq!(w.get(sky.offset(1, 0, 0)), Block::Air);
        for (i, v) in others.iter().enumerate() {
            assert_eq!(w.chunk_version(i), if i == c { v + 1 } else { *v });
        }
        assert_eq!(w.edits(), 1);
        assert_eq!(w.set(BlockPos::new(0, 48, 0), Block::Stone), None, "outside the world");
        for p in [
            sky,
            sky.offset(14, 0, 0),
            BlockPos::new(0, 5, 3),
            BlockPos::new(15, 9, 3),
            BlockPos::new(63, 2, 0),
        ] {
            assert_eq!(w.row3(p), [w.get(p.offset(-1, 0, 0)), w.get(p), w.get(p.offset(1, 0, 0))], "{p}");
        }
        let mut row = [Block::Air; 40];
        for start in [BlockPos::new(-5, 3, 2), BlockPos::new(30, 46, 9), sky.offset(-10, 0, 0)] {
            w.read_row(start, &mut row);
            for (i, b) in row.iter().enumerate() {
                assert_eq!(*b, w.get(start.offset(i as i32, 0, 0)), "{start} + {i}");
            }
        }
    }

    #[test]
    fn dense_chunks_count_against_the_limit_too() {
        let w = VoxelWorld::generate(WorldGen::small()).unwrap();
        let rec = w.to_record();
        let raw = terrarium_codec::decompress(&rec.blocks, usize::MAX).unwrap().len() as u64;
        let table = (rec.versions.len() * std::mem::size_of::<Chunk>()) as u64;
        let dense = w.chunks.iter().filter(|c| matches!(c.blocks, ChunkBlocks::Dense(_))).count() as u64;
        assert!(dense > 1);
        let all = table + raw + dense * CHUNK_VOLUME as u64;
        assert_eq!(VoxelWorld::from_record(rec.clone(), all).unwrap(), w);
        let err = VoxelWorld::from_record(rec, all - 1).unwrap_err();
        assert!(matches!(err, SnapshotError::VoxelTooLarge { needed, .. } if needed == all), "{err}");
    }

    #[test]
    fn record_round_trips_and_rejects_bad_bytes() {
        let mut w = VoxelWorld::generate(WorldGen::small()).unwrap();
        w.set(BlockPos::new(5, 5, 5), Block::Air);
        w.depots_mut()[0].stock[2] = 9;
        let back = VoxelWorld::from_record(w.to_record(), u64::MAX).unwrap();
        assert_eq!(back, w);

        let mut rec = w.to_record();
        rec.versions.pop();
        assert!(matches!(VoxelWorld::from_record(rec, u64::MAX), Err(SnapshotError::Inconsistent(_))));
        let mut rec = w.to_record();
        let mut raw = terrarium_codec::decompress(&rec.blocks, usize::MAX).unwrap();
        raw[0] = 77;
        rec.blocks = terrarium_codec::compress(&raw);
        let err = VoxelWorld::from_record(rec, u64::MAX).unwrap_err();
        assert!(err.to_string().contains("unknown block code 77"), "{err}");
    }
}
