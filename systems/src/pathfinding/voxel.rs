//! Walking in the voxel world: the move rules and an A* over them.
//!
//! An agent occupies two blocks, its feet cell and the head cell above, and stands on a solid
//! block. From a cell it can step
//! - to one of the 4 cardinal neighbours on the same level (cost 1),
//! - diagonally on the same level (cost √2) when both cardinal cells beside the step are clear
//!   too: no corner cutting, and no digging around corners,
//! - up one block onto a cardinal neighbour (cost 1.5), with room above its head to climb,
//! - down one block to a cardinal neighbour (cost 1.5), walking out at its own level first.
//!
//! The target always needs a solid block under it. "Clear" means air or, for a miner, a block it
//! may dig through (dirt, grass, stone; never ores, water or bedrock): each dug block adds
//! `hardness × dig_cost` to the step. Path costs are in "blocks of walking"; with
//! `dig_cost = walk speed / tool power` they are walking time × speed.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

use terrarium_engine::voxel::{Block, BlockPos, VoxelWorld};

/// Cost of a step up or down.
pub const CLIMB_COST: f32 = 1.5;
const DIAGONAL_COST: f32 = std::f32::consts::SQRT_2;

/// How an agent may move.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WalkRules {
    /// Cost per unit of hardness of each block dug on the way; `None`: never dig.
    pub dig_cost: Option<f32>,
}

impl WalkRules {
    /// Walks through air only.
    pub const WALKER: Self = Self { dig_cost: None };

    /// A miner with a tool of power `tool` (≥ 1) that walks `walk_speed` blocks per second: digging
    /// a block of hardness `h` costs what walking `h / tool × walk_speed` blocks would.
    #[must_use]
    pub fn miner(tool: u8, walk_speed: f32) -> Self {
        Self { dig_cost: Some(walk_speed / f32::from(tool.max(1))) }
    }

    /// Cost of making `b` clear: 0 for air, the dig cost for a diggable block, `None` when it
    /// can't be cleared.
    #[inline]
    fn clear_cost(&self, b: Block) -> Option<f32> {
        if b.is_open() {
            return Some(0.0);
        }
        Some(b.dig_hardness()? * self.dig_cost?)
    }
}

/// One legal step: its cost and the blocks to dig first (empty slots are `None`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    /// Cost, walking and digging.
    pub cost: f32,
    /// Blocks to dig before stepping.
    pub dig: [Option<BlockPos>; 3],
}

/// The step from `from` to the adjacent cell `to`, if the rules allow it in `world` as it is.
///
/// # Examples
/// ```
/// use terrarium_engine::voxel::{BlockPos, VoxelWorld, WorldGen};
/// use terrarium_systems::pathfinding::{WalkRules, step};
/// let world = VoxelWorld::generate(WorldGen::small()).unwrap();
/// let y = world.surface_y(8, 8).unwrap() + 1;
/// let here = BlockPos::new(8, y, 8);
/// // Straight down into the ground: never a single step.
/// assert!(step(&world, here, here.offset(0, -1, 0), &WalkRules::miner(2, 4.0)).is_none());
/// ```
#[must_use]
pub fn step(world: &VoxelWorld, from: BlockPos, to: BlockPos, rules: &WalkRules) -> Option<Step> {
    step_in(|p| world.get(p), from, to, rules)
}

/// [`step`] over any block lookup (the search reads a cell's neighbourhood once, then asks this).
#[inline]
fn step_in(get: impl Fn(BlockPos) -> Block, from: BlockPos, to: BlockPos, rules: &WalkRules) -> Option<Step> {
    let (dx, dy, dz) = (to.x - from.x, to.y - from.y, to.z - from.z);
    if dx.abs() > 1 || dy.abs() > 1 || dz.abs() > 1 || (dx == 0 && dz == 0) {
        return None;
    }
    let diagonal = dx != 0 && dz != 0;
    if diagonal && dy != 0 {
        return None;
    }
    if !get(to.offset(0, -1, 0)).is_solid() {
        return None;
    }
    let mut dig = [None; 3];
    let mut cost = match (dy, diagonal) {
        (0, false) => 1.0,
        (0, true) => DIAGONAL_COST,
        _ => CLIMB_COST,
    };
    let mut n = 0;
    let mut need = |p: BlockPos, may_dig: bool| -> Option<()> {
        let b = get(p);
        if b.is_open() {
            return Some(());
        }
        if !may_dig {
            return None;
        }
        cost += rules.clear_cost(b)?;
        dig[n] = Some(p);
        n += 1;
        Some(())
    };
    match dy {
        0 => {
            need(to, !diagonal)?;
            need(to.offset(0, 1, 0), !diagonal)?;
            if diagonal {
                for side in [from.offset(dx, 0, 0), from.offset(0, 0, dz)] {
                    need(side, false)?;
                    need(side.offset(0, 1, 0), false)?;
                }
            }
        }
        1 => {
            need(from.offset(0, 2, 0), true)?;
            need(to, true)?;
            need(to.offset(0, 1, 0), true)?;
        }
        _ => {
            need(to.offset(0, 2, 0), true)?;
            need(to.offset(0, 1, 0), true)?;
            need(to, true)?;
        }
    }
    Some(Step { cost, dig })
}

/// The 16 moves a cell may have: 4 flat, 4 diagonal, 4 up, 4 down.
pub const MOVES: [(i32, i32, i32); 16] = [
    (1, 0, 0),
    (-1, 0, 0),
    (0, 0, 1),
    (0, 0, -1),
    (1, 0, 1),
    (1, 0, -1),
    (-1, 0, 1),
    (-1, 0, -1),
    (1, 1, 0),
    (-1, 1, 0),
    (0, 1, 1),
    (0, 1, -1),
    (1, -1, 0),
    (-1, -1, 0),
    (0, -1, 1),
    (0, -1, -1),
];

/// Where a search should end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// Stand in exactly this cell.
    Cell(BlockPos),
    /// Stand where this block is within reach: beside the feet or the head, under the feet or
    /// over the head.
    Reach(BlockPos),
}

impl Target {
    /// True when an agent standing in `c` is done.
    #[inline]
    #[must_use]
    pub fn is_met(&self, c: BlockPos) -> bool {
        match *self {
            Target::Cell(p) => c == p,
            Target::Reach(b) => {
                let (dx, dy, dz) = (b.x - c.x, b.y - c.y, b.z - c.z);
                match dx.abs() + dz.abs() {
                    0 => dy == -1 || dy == 2,
                    1 => dy == 0 || dy == 1,
                    _ => false,
                }
            }
        }
    }

    /// The block the search heads for.
    #[must_use]
    pub fn anchor(&self) -> BlockPos {
        match *self {
            Target::Cell(p) | Target::Reach(p) => p,
        }
    }

    /// A lower bound on the walking part of the cost from `c` (consistent with the move costs).
    #[inline]
    fn walk_estimate(&self, c: BlockPos) -> f32 {
        let a = self.anchor();
        let (dx, dz) = ((a.x - c.x).unsigned_abs(), (a.z - c.z).unsigned_abs());
        let (lo, hi) = if dx < dz { (dx, dz) } else { (dz, dx) };
        let flat = (hi - lo) as f32 + lo as f32 * DIAGONAL_COST;
        let dy = (a.y - c.y).unsigned_abs() as f32;
        match self {
            Target::Cell(_) => flat + (CLIMB_COST - 1.0) * dy,
            // Goal cells lie within one flat step and two levels of the block.
            Target::Reach(_) => (flat - 1.0).max(0.0) + (CLIMB_COST - 1.0) * (dy - 2.0).max(0.0),
        }
    }
}

/// The estimate of a search: walking distance plus a bound on the digging left.
///
/// Digging bound: let ring `k` be the blocks at Chebyshev distance `k` from the target's block,
/// `R` the first ring with an open (air) block, and `m_k` the softest block of ring `k`. Every
/// block in a ring below `R` is not open, a step changes the ring by at most one, and a step
/// must clear the feet and head cells it lands in. So a path from ring `D` lands in every ring
/// `j` from `min(D, R) − 1` down to 2, digging there at least `m_j` (feet) plus the softest of
/// rings `j − 1 ..= j + 1` (head, while `j + 1 < R`), times `dig_cost`. The bound drops by at
/// most what the step into ring `j` digs, so it stays consistent and A* stays exact.
#[derive(Debug, Clone)]
struct Estimate {
    target: Target,
    /// Rings of blocks around the target that were read.
    scanned: i32,
    /// `R`: the first ring with an open block (0: the target's block is open).
    open_ring: i32,
    /// `bound[j]`: the digging bound, as cost, for a cell in ring `j + 1` (for `j + 1 <= R`).
    bound: Vec<f32>,
}

impl Estimate {
    /// Largest ring searched for an open block; farther ones count as this far.
    const MAX_RING: i32 = 10;

    /// The estimate for a search starting at `start`. Rings beyond the start's ring (plus one)
    /// are not scanned: cells out there count as if the next ring were open, which keeps the
    /// bound a lower bound.
    fn new(world: &VoxelWorld, start: BlockPos, target: Target, rules: &WalkRules) -> Self {
        let none = Self { target, scanned: 0, open_ring: 0, bound: Vec::new() };
        let Some(dig) = rules.dig_cost else { return none };
        let a = target.anchor();
        let start_ring = (a.x - start.x).abs().max((a.y - start.y).abs()).max((a.z - start.z).abs());
        // Standing in air, the start itself bounds the first open ring.
        let past_start = if world.get(start).is_open() { 0 } else { 1 };
        let max_ring = Self::MAX_RING.min(start_ring + past_start);
        // Hardness of the softest block of each ring (huge when nothing in it can be dug).
        let mut softest: Vec<f32> = Vec::new();
        let mut open_ring = max_ring + 1;
        let mut row = [Block::Air; 2 * Self::MAX_RING as usize + 1];
        for r in 0..=max_ring {
            let (mut found, mut soft) = (false, 1e6f32);
            let mut look = |b: Block| {
                if b.is_open() {
                    found = true;
                } else if let Some(h) = b.dig_hardness() {
                    soft = soft.min(h);
                }
            };
            for y in -r..=r {
                for z in -r..=r {
                    if y.abs() == r || z.abs() == r {
                        let row = &mut row[..(2 * r + 1) as usize];
                        world.read_row(a.offset(-r, y, z), row);
                        row.iter().for_each(|&b| look(b));
                    } else {
                        look(world.get(a.offset(-r, y, z)));
                        look(world.get(a.offset(r, y, z)));
                    }
                }
            }
            softest.push(soft);
            if found {
                open_ring = r;
                break;
            }
        }
        let scanned = (softest.len() - 1) as i32;
        // bound[j] for a cell in ring j + 1: the sum over rings 2 ..= j of feet + head.
        let r = open_ring as usize;
        let ring = |k: usize| softest.get(k).copied().unwrap_or(0.0);
        let mut bound = vec![0.0f32; r.max(1)];
        let mut sum = 0.0;
        for (j, b) in bound.iter_mut().enumerate().skip(2) {
            let head = if j + 1 < r { ring(j - 1).min(ring(j)).min(ring(j + 1)) } else { 0.0 };
            sum += (ring(j) + head) * dig;
            *b = sum;
        }
        Self { target, scanned, open_ring, bound }
    }

    #[inline]
    fn at(&self, c: BlockPos) -> f32 {
        let walk = self.target.walk_estimate(c);
        if self.open_ring <= 2 {
            return walk;
        }
        let a = self.target.anchor();
        let d = (a.x - c.x).abs().max((a.y - c.y).abs()).max((a.z - c.z).abs());
        let j = (d.min(self.open_ring) - 1).max(0) as usize;
        walk + self.bound[j]
    }
}

/// Limits of one search.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SearchLimits {
    /// Blocks the search box extends past the start and the target, horizontally.
    pub margin_xz: i32,
    /// Blocks the search box extends past them vertically.
    pub margin_y: i32,
    /// Most cells expanded before giving up.
    pub max_expanded: u32,
    /// Weight of the estimate in `f = g + weight × h`: 1 finds cheapest paths; above 1 expands
    /// far fewer cells for paths at most `weight` times the cheapest.
    pub weight: f32,
}

impl Default for SearchLimits {
    fn default() -> Self {
        Self { margin_xz: 12, margin_y: 6, max_expanded: 20_000, weight: 1.0 }
    }
}

/// A walkable path.
#[derive(Debug, Clone, PartialEq)]
pub struct VoxelPath {
    /// Feet cells, start excluded, last one meets the target (empty: already there).
    pub cells: Vec<BlockPos>,
    /// Total cost.
    pub cost: f32,
}

/// Why a search found no path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum NoPath {
    /// Every cell of the search box reachable from the start was tried.
    #[error("no path within the search box")]
    Unreachable,
    /// The search gave up after `SearchLimits::max_expanded` cells.
    #[error("search budget exhausted")]
    Budget,
    /// Start or target is outside the world.
    #[error("start or target outside the world")]
    Outside,
}

/// An inclusive box of blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Region {
    /// Lowest corner.
    pub min: BlockPos,
    /// Highest corner.
    pub max: BlockPos,
}

/// A search's result and the region of blocks it read: while no block there changes, the same
/// search gives the same result.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchOutcome {
    /// The path, or why there is none.
    pub result: Result<VoxelPath, NoPath>,
    /// Every block the search looked at lies in here.
    pub read: Region,
    /// Cells expanded.
    pub expanded: u32,
}

/// The box a search from `start` towards `anchor` stays in (clamped to the world).
#[must_use]
pub fn search_box(world: &VoxelWorld, start: BlockPos, anchor: BlockPos, limits: &SearchLimits) -> Region {
    let size = world.size();
    let lo = |a: i32, b: i32, m: i32| (a.min(b) - m).max(0);
    let hi = |a: i32, b: i32, m: i32, s: i32| (a.max(b) + m).min(s - 1);
    Region {
        min: BlockPos::new(
            lo(start.x, anchor.x, limits.margin_xz),
            lo(start.y, anchor.y, limits.margin_y),
            lo(start.z, anchor.z, limits.margin_xz),
        ),
        max: BlockPos::new(
            hi(start.x, anchor.x, limits.margin_xz, size[0]),
            hi(start.y, anchor.y, limits.margin_y, size[1]),
            hi(start.z, anchor.z, limits.margin_xz, size[2]),
        ),
    }
}

/// Reusable search state, sized to the largest search box seen. One per thread; [`find_path`]
/// keeps one in a thread-local.
#[derive(Debug, Default)]
pub struct VoxelSearch {
    g: Vec<f32>,
    parent: Vec<u32>,
    mark: Vec<u32>,
    epoch: u32,
    open: BinaryHeap<Reverse<(u32, u32, u32)>>,
}

thread_local! {
    static SCRATCH: RefCell<VoxelSearch> = RefCell::new(VoxelSearch::default());
}

/// Searches a cheapest walk from `start` to `target` inside the box around both (see
/// [`SearchLimits`]), on this thread's scratch buffers.
///
/// # Examples
/// ```
/// use terrarium_engine::voxel::{BlockPos, VoxelWorld, WorldGen};
/// use terrarium_systems::pathfinding::{SearchLimits, Target, WalkRules, find_path};
/// let world = VoxelWorld::generate(WorldGen::small()).unwrap();
/// let d = world.depots()[0].cell;
/// let out = find_path(&world, d, Target::Reach(d.offset(3, -4, 0)), &WalkRules::miner(2, 4.0), &SearchLimits::default());
/// let path = out.result.unwrap();
/// assert!(Target::Reach(d.offset(3, -4, 0)).is_met(*path.cells.last().unwrap()));
/// ```
#[must_use]
pub fn find_path(
    world: &VoxelWorld,
    start: BlockPos,
    target: Target,
    rules: &WalkRules,
    limits: &SearchLimits,
) -> SearchOutcome {
    SCRATCH.with_borrow_mut(|s| s.search(world, start, target, rules, limits))
}

impl VoxelSearch {
    /// As [`find_path`], on this scratch.
    pub fn search(
        &mut self,
        world: &VoxelWorld,
        start: BlockPos,
        target: Target,
        rules: &WalkRules,
        limits: &SearchLimits,
    ) -> SearchOutcome {
        let anchor = target.anchor();
        let empty = Region { min: start, max: start };
        if !world.contains(start) || !world.contains(anchor) {
            return SearchOutcome { result: Err(NoPath::Outside), read: empty, expanded: 0 };
        }
        if target.is_met(start) {
            return SearchOutcome {
                result: Ok(VoxelPath { cells: Vec::new(), cost: 0.0 }),
                read: empty,
                expanded: 0,
            };
        }
        let Region { min: bmin, max: bmax } = search_box(world, start, anchor, limits);
        let (w, d) = ((bmax.x - bmin.x + 1) as usize, (bmax.z - bmin.z + 1) as usize);
        let cells = w * d * (bmax.y - bmin.y + 1) as usize;
        self.begin(cells);
        let index = |p: BlockPos| {
            (((p.y - bmin.y) as usize * d) + (p.z - bmin.z) as usize) * w + (p.x - bmin.x) as usize
        };
        let at = |i: usize| {
            let (x, rest) = (i % w, i / w);
            BlockPos::new(bmin.x + x as i32, bmin.y + (rest / d) as i32, bmin.z + (rest % d) as i32)
        };
        let inside = |p: BlockPos| {
            p.x >= bmin.x && p.x <= bmax.x && p.y >= bmin.y && p.y <= bmax.y && p.z >= bmin.z && p.z <= bmax.z
        };
        let (seen, closed) = (self.epoch << 1, (self.epoch << 1) | 1);
        let s = index(start);
        self.g[s] = 0.0;
        self.parent[s] = u32::MAX;
        self.mark[s] = seen;
        self.open.clear();
        let weight = limits.weight.max(1.0);
        let estimate = Estimate::new(world, start, target, rules);
        let h0 = estimate.at(start) * weight;
        self.open.push(Reverse((h0.to_bits(), h0.to_bits(), s as u32)));
        let (mut rmin, mut rmax) = (start, start);
        let mut expanded = 0u32;
        let mut result = Err(NoPath::Unreachable);
        while let Some(Reverse((_, _, cur))) = self.open.pop() {
            let cur = cur as usize;
            if self.mark[cur] == closed {
                continue;
            }
            self.mark[cur] = closed;
            let c = at(cur);
            if target.is_met(c) {
                result = Ok(self.trace(cur, s, at));
                break;
            }
            if expanded >= limits.max_expanded {
                result = Err(NoPath::Budget);
                break;
            }
            expanded += 1;
            rmin = BlockPos::new(rmin.x.min(c.x), rmin.y.min(c.y), rmin.z.min(c.z));
            rmax = BlockPos::new(rmax.x.max(c.x), rmax.y.max(c.y), rmax.z.max(c.z));
            let g_cur = self.g[cur];
            // Every block a step from c can look at: x and z within 1, y within 2.
            let mut near = [Block::Air; 45];
            for (row, out) in near.chunks_exact_mut(3).enumerate() {
                let row = row as i32;
                out.copy_from_slice(&world.row3(c.offset(0, row / 3 - 2, row % 3 - 1)));
            }
            let local =
                |p: BlockPos| near[((p.y - c.y + 2) * 9 + (p.z - c.z + 1) * 3 + (p.x - c.x + 1)) as usize];
            for (dx, dy, dz) in MOVES {
                let n = c.offset(dx, dy, dz);
                if !inside(n) {
                    continue;
                }
                let ni = index(n);
                if self.mark[ni] == closed {
                    continue;
                }
                let Some(st) = step_in(local, c, n, rules) else { continue };
                let ng = g_cur + st.cost;
                if self.mark[ni] != seen || ng < self.g[ni] {
                    self.g[ni] = ng;
                    self.parent[ni] = cur as u32;
                    self.mark[ni] = seen;
                    let h = estimate.at(n) * weight;
                    self.open.push(Reverse(((ng + h).to_bits(), h.to_bits(), ni as u32)));
                }
            }
        }
        // A step from an expanded cell reads one column to each side, two blocks above its
        // head and one below its feet.
        // The estimate read a cube around the target.
        let k = estimate.scanned;
        let (rmin, rmax) = (
            BlockPos::new(rmin.x.min(anchor.x - k), rmin.y.min(anchor.y - k), rmin.z.min(anchor.z - k)),
            BlockPos::new(rmax.x.max(anchor.x + k), rmax.y.max(anchor.y + k), rmax.z.max(anchor.z + k)),
        );
        let read = Region { min: rmin.offset(-1, -2, -1), max: rmax.offset(1, 3, 1) };
        SearchOutcome { result, read, expanded }
    }

    fn trace(&self, goal: usize, start: usize, at: impl Fn(usize) -> BlockPos) -> VoxelPath {
        let mut cells = Vec::new();
        let mut n = goal;
        while n != start {
            cells.push(at(n));
            n = self.parent[n] as usize;
        }
        cells.reverse();
        VoxelPath { cells, cost: self.g[goal] }
    }

    fn begin(&mut self, n: usize) {
        if self.g.len() < n {
            self.g.resize(n, 0.0);
            self.parent.resize(n, u32::MAX);
            self.mark.resize(n, 0);
        }
        self.epoch += 1;
        if self.epoch >= 1 << 30 {
            self.mark.fill(0);
            self.epoch = 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use terrarium_engine::voxel::WorldGen;

    /// A flat test world: stone up to y = 9, air above, 48 × 48 × 32.
    fn flat() -> VoxelWorld {
        let mut w = VoxelWorld::generate(WorldGen {
            size_chunks: [3, 2, 3],
            base_height: 10,
            relief: 0,
            sea_level: 0,
            veins_per_chunk: 0.0,
            depot_spacing: 16,
            seed: 1,
        })
        .unwrap();
        for x in 0..48 {
            for z in 0..48 {
                for y in 1..32 {
                    w.set(BlockPos::new(x, y, z), if y <= 9 { Block::Stone } else { Block::Air });
                }
            }
        }
        w
    }

    #[test]
    fn flat_walks_cost_octile_distance() {
        let w = flat();
        let out = find_path(
            &w,
            BlockPos::new(5, 10, 5),
            Target::Cell(BlockPos::new(9, 10, 15)),
            &WalkRules::WALKER,
            &SearchLimits::default(),
        );
        let p = out.result.unwrap();
        assert!((p.cost - (6.0 + 4.0 * DIAGONAL_COST)).abs() < 1e-4, "{}", p.cost);
        assert_eq!(p.cells.len(), 10);
    }

    #[test]
    fn walls_need_climbing_and_two_high_walls_stop_walkers() {
        let mut w = flat();
        for z in 0..48 {
            w.set(BlockPos::new(20, 10, z), Block::Stone);
        }
        let rules = WalkRules::WALKER;
        let (a, b) = (BlockPos::new(18, 10, 20), BlockPos::new(22, 10, 20));
        let p = find_path(&w, a, Target::Cell(b), &rules, &SearchLimits::default()).result.unwrap();
        assert!(p.cells.iter().any(|c| c.y == 11), "climbed over the wall: {p:?}");
        assert!((p.cost - (2.0 + 2.0 * CLIMB_COST)).abs() < 1e-4, "{}", p.cost);
        for z in 0..48 {
            w.set(BlockPos::new(20, 11, z), Block::Stone);
        }
        let out = find_path(&w, a, Target::Cell(b), &rules, &SearchLimits::default());
        assert_eq!(out.result, Err(NoPath::Unreachable));
        let miner = WalkRules::miner(1, 1.0);
        let p = find_path(&w, a, Target::Cell(b), &miner, &SearchLimits::default()).result.unwrap();
        assert!(p.cost > 4.0, "digs through: {}", p.cost);
    }

    #[test]
    fn reach_targets_end_next_to_the_block() {
        let w = flat();
        let ore = BlockPos::new(12, 6, 12);
        let out = find_path(
            &w,
            BlockPos::new(3, 10, 3),
            Target::Reach(ore),
            &WalkRules::miner(2, 4.0),
            &SearchLimits::default(),
        );
        let p = out.result.unwrap();
        assert!(Target::Reach(ore).is_met(*p.cells.last().unwrap()));
        assert!(out.read.min.x <= 3 && out.read.max.x >= 12 && out.read.min.y <= 6);
        let none = find_path(
            &w,
            BlockPos::new(3, 10, 3),
            Target::Reach(ore),
            &WalkRules::WALKER,
            &SearchLimits::default(),
        );
        assert_eq!(none.result, Err(NoPath::Unreachable), "walkers can't reach buried blocks");
        let tight = SearchLimits { max_expanded: 5, ..SearchLimits::default() };
        let out =
            find_path(&w, BlockPos::new(3, 10, 3), Target::Reach(ore), &WalkRules::miner(2, 4.0), &tight);
        assert_eq!(out.result, Err(NoPath::Budget));
    }

    /// Dijkstra (the `pathfinding` crate's A* with a zero estimate) over [`step`], inside the
    /// same search box: the reference for exactness.
    fn reference_cost(world: &VoxelWorld, start: BlockPos, target: Target, rules: &WalkRules) -> Option<f64> {
        let b = search_box(world, start, target.anchor(), &SearchLimits::default());
        let inside = |p: BlockPos| {
            p.x >= b.min.x
                && p.x <= b.max.x
                && p.y >= b.min.y
                && p.y <= b.max.y
                && p.z >= b.min.z
                && p.z <= b.max.z
        };
        let (_, cost) = pathfinding::prelude::astar(
            &start,
            |&c| {
                MOVES
                    .iter()
                    .map(move |&(dx, dy, dz)| c.offset(dx, dy, dz))
                    .filter(|&n| inside(n))
                    .filter_map(move |n| {
                        step(world, c, n, rules).map(|s| (n, (f64::from(s.cost) * 1e6).round() as u64))
                    })
                    .collect::<Vec<_>>()
            },
            |_| 0,
            |&c| target.is_met(c),
        )?;
        Some(cost as f64 / 1e6)
    }

    #[test]
    fn searches_are_exact_with_and_without_digging() {
        let world = VoxelWorld::generate(WorldGen { seed: 11, ..WorldGen::small() }).unwrap();
        let ores: Vec<BlockPos> = (0..48)
            .flat_map(|y| (0..64).flat_map(move |z| (0..64).map(move |x| BlockPos::new(x, y, z))))
            .filter(|&p| world.get(p).ore().is_some())
            .collect();
        let mut checked = 0;
        for i in 0..24usize {
            let ore = ores[(i * 7919) % ores.len()];
            let (sx, sz) =
                ((ore.x + 9 - (i as i32 % 19)).clamp(0, 63), (ore.z + (i as i32 * 5 % 17) - 8).clamp(0, 63));
            let start = BlockPos::new(sx, world.surface_y(sx, sz).unwrap() + 1, sz);
            for (target, rules) in [
                (Target::Reach(ore), WalkRules::miner(1 + (i % 4) as u8, 4.0)),
                (
                    Target::Cell(BlockPos::new(sz, world.surface_y(sz, sx).unwrap() + 1, sx)),
                    WalkRules::WALKER,
                ),
            ] {
                let got = find_path(
                    &world,
                    start,
                    target,
                    &rules,
                    &SearchLimits { max_expanded: u32::MAX, ..SearchLimits::default() },
                );
                let want = reference_cost(&world, start, target, &rules);
                match (&got.result, want) {
                    (Ok(p), Some(w)) => {
                        assert!(
                            (f64::from(p.cost) - w).abs() < 1e-3 * w.max(1.0),
                            "{start} -> {target:?}: {} vs {w}",
                            p.cost
                        );
                        let mut at = start;
                        let mut sum = 0.0;
                        for &c in &p.cells {
                            sum += step(&world, at, c, &rules).expect("every step is legal").cost;
                            at = c;
                        }
                        assert!((sum - p.cost).abs() < 1e-3 * sum.max(1.0));
                        checked += 1;
                    }
                    (Err(NoPath::Unreachable), None) => {}
                    (got, want) => panic!("{start} -> {target:?}: got {got:?}, want {want:?}"),
                }
            }
        }
        assert!(checked > 24, "only {checked} paths compared");
    }

    #[test]
    fn reach_set_is_the_blocks_around_the_body() {
        let c = BlockPos::new(0, 0, 0);
        let met: Vec<_> = (-3..=3)
            .flat_map(|x| (-3..=3).flat_map(move |y| (-3..=3).map(move |z| BlockPos::new(x, y, z))))
            .filter(|&b| Target::Reach(b).is_met(c))
            .collect();
        assert_eq!(met.len(), 10, "{met:?}");
        assert!(met.contains(&BlockPos::new(0, -1, 0)) && met.contains(&BlockPos::new(0, 2, 0)));
        assert!(!met.contains(&BlockPos::new(1, 0, 1)), "no diagonal reach");
    }
}
