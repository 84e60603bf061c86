//! Jump point search (Harabor & Grastien) for octile grids without corner cutting, with
//! block-based jumps: a straight jump scans 64 cells per word operation on the bit rows (or the
//! transposed bit columns) of a [`Grid2d`].
//!
//! Pruning rules without corner cutting: a diagonal move has no forced neighbours, only its two
//! cardinal components and itself; a straight move forces the side cell `s` (and the diagonal
//! towards it) when `s` is free and the cell behind `s` is blocked. A straight jump stops at such
//! a cell; a diagonal jump stops where either of its straight components would find a jump point.
//! Optimal: tested against every scenario of the Moving AI maps in `../shared/movingai/`.

use std::cell::RefCell;

use super::grid::{Cell, Grid2d, GridPath, LEAD, octile};
use super::radix::RadixHeap;

const NONE: u32 = u32::MAX;

/// Reusable search state: cost and parent per cell, stamped with a search number so a new
/// search costs nothing to reset. One per thread; [`jps_path`] keeps one in a thread-local.
#[derive(Debug, Default)]
pub struct JpsSearch {
    /// Per padded cell: `epoch << 1` once it has a cost this search, `| 1` once it is closed.
    /// Two bytes a cell keep the array in L2 for 512 × 512 maps: most lookups only need this.
    mark: Vec<u16>,
    /// Per padded cell: cost and parent, valid when `mark` says so.
    nodes: Vec<Node>,
    epoch: u16,
    /// Cells by `f` in fixed point ([`key`]); equal keys pop last in, first out (deeper first).
    open: RadixHeap,
    /// Cells expanded by the last search.
    pub expanded: usize,
}

#[derive(Debug, Clone, Copy, Default)]
struct Node {
    g: f64,
    parent: u32,
}

/// The queue key of a cell: `f = g + h` in units of 2⁻²⁰ blocks. Ordering only (costs stay
/// exact `f64`). Rounding is monotone, so keys never decrease along a search (the octile
/// estimate is consistent), and a cell is closed with `g` at most 2⁻²⁰ above the best: paths
/// are optimal to 10⁻⁶, well inside the benchmark's 10⁻³.
#[inline]
fn key(f: f64) -> u64 {
    (f * 1_048_576.0) as u64
}

thread_local! {
    static SCRATCH: RefCell<JpsSearch> = RefCell::new(JpsSearch::default());
}

/// An optimal path from `start` to `goal` on `grid`, or `None` when there is none (or an end is
/// blocked or outside). Uses this thread's scratch buffers: no lock, no allocation once warm.
///
/// # Examples
/// ```
/// use terrarium_systems::pathfinding::{Grid2d, jps_path};
/// // ...
/// // .@.    no corner cutting: around the block takes four cardinal steps
/// // ...
/// let grid = Grid2d::from_fn(3, 3, |x, y| (x, y) != (1, 1));
/// let path = jps_path(&grid, (0, 1), (2, 1)).unwrap();
/// assert_eq!(path.length, 4.0);
/// assert_eq!(path.cells.len(), 5);
/// assert_eq!(path.validate(&grid), Ok(4.0));
/// ```
#[must_use]
pub fn jps_path(grid: &Grid2d, start: Cell, goal: Cell) -> Option<GridPath> {
    SCRATCH.with_borrow_mut(|s| s.path(grid, start, goal))
}

/// The length of an optimal path, as [`jps_path`] without building the cell list.
#[must_use]
pub fn jps_length(grid: &Grid2d, start: Cell, goal: Cell) -> Option<f64> {
    SCRATCH.with_borrow_mut(|s| s.length(grid, start, goal))
}

impl JpsSearch {
    /// An optimal path, or `None`.
    pub fn path(&mut self, grid: &Grid2d, start: Cell, goal: Cell) -> Option<GridPath> {
        let (s, t) = self.run(grid, start, goal)?;
        let pw = grid.width() as usize + 2;
        let mut jumps = vec![t];
        let mut n = t;
        while n != s {
            n = self.nodes[n as usize].parent;
            jumps.push(n);
        }
        jumps.reverse();
        let at = |n: u32| ((n as usize % pw) as i64, (n as usize / pw) as i64);
        let mut cells = vec![start];
        for w in jumps.windows(2) {
            let ((mut x, mut y), (tx, ty)) = (at(w[0]), at(w[1]));
            let (dx, dy) = ((tx - x).signum(), (ty - y).signum());
            while (x, y) != (tx, ty) {
                x += dx;
                y += dy;
                cells.push(((x - 1) as u32, (y - 1) as u32));
            }
        }
        Some(GridPath { cells, length: self.nodes[t as usize].g })
    }

    /// The length of an optimal path, or `None`.
    pub fn length(&mut self, grid: &Grid2d, start: Cell, goal: Cell) -> Option<f64> {
        self.run(grid, start, goal).map(|(_, t)| self.nodes[t as usize].g)
    }

    /// Searches; on success returns the padded node indices of start and goal.
    fn run(&mut self, grid: &Grid2d, start: Cell, goal: Cell) -> Option<(u32, u32)> {
        self.expanded = 0;
        if !grid.is_free(start.0, start.1)
            || !grid.is_free(goal.0, goal.1)
            || !Grid2d::searchable(grid.width().into(), grid.height().into())
        {
            return None;
        }
        let pw = grid.width() as usize + 2;
        let n = pw * (grid.height() as usize + 2);
        self.begin(n);
        let node = |(x, y): Cell| (y as usize + 1) * pw + x as usize + 1;
        let (s, t) = (node(start), node(goal));
        let (gx, gy) = (goal.0 as usize + 1, goal.1 as usize + 1);
        let h = |x: usize, y: usize| octile(x.abs_diff(gx) as u32, y.abs_diff(gy) as u32);
        let (seen, closed) = (self.epoch << 1, (self.epoch << 1) | 1);
        self.open.clear();
        self.nodes[s] = Node { g: 0.0, parent: NONE };
        self.mark[s] = seen;
        let hs = h(start.0 as usize + 1, start.1 as usize + 1);
        self.open.push(key(hs), s as u32);
        let jumper = Jumper { grid, gx, gy };
        while let Some((_, cur)) = self.open.pop() {
            let cur = cur as usize;
            if self.mark[cur] == closed {
                continue;
            }
            self.mark[cur] = closed;
            if cur == t {
                return Some((s as u32, t as u32));
            }
            self.expanded += 1;
            let (x, y) = (cur % pw, cur / pw);
            let mut dirs = [(0isize, 0isize); 8];
            let count = match self.nodes[cur].parent {
                NONE => {
                    dirs = [(1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (1, -1), (-1, 1), (-1, -1)];
                    8
                }
                p => pruned_dirs(grid, x, y, p as usize % pw, p as usize / pw, &mut dirs),
            };
            let g_cur = self.nodes[cur].g;
            for &(dx, dy) in &dirs[..count] {
                let Some((jx, jy)) = jumper.jump(x, y, dx, dy) else { continue };
                let j = jy * pw + jx;
                let mark = self.mark[j];
                if mark == closed {
                    continue;
                }
                let ng = g_cur + octile(jx.abs_diff(x) as u32, jy.abs_diff(y) as u32);
                if mark != seen || ng < self.nodes[j].g {
                    self.nodes[j] = Node { g: ng, parent: cur as u32 };
                    self.mark[j] = seen;
                    let hj = h(jx, jy);
                    self.open.push(key(ng + hj), j as u32);
                }
            }
        }
        None
    }

    /// Sizes the buffers for `n` cells and starts a new search number.
    fn begin(&mut self, n: usize) {
        if self.nodes.len() < n {
            self.nodes.resize(n, Node::default());
            self.mark.resize(n, 0);
        }
        self.epoch += 1;
        if self.epoch >= 1 << 15 {
            self.mark.fill(0);
            self.epoch = 1;
        }
    }
}

/// The directions worth searching from `(x, y)` reached from `(px, py)`; returns how many were
/// written to `out`.
fn pruned_dirs(
    grid: &Grid2d,
    x: usize,
    y: usize,
    px: usize,
    py: usize,
    out: &mut [(isize, isize); 8],
) -> usize {
    let dx = (x as isize - px as isize).signum();
    let dy = (y as isize - py as isize).signum();
    let free = |x: isize, y: isize| grid.free_padded(x as usize, y as usize);
    let (xi, yi) = (x as isize, y as isize);
    let mut n = 0;
    let mut push = |d: (isize, isize)| {
        out[n] = d;
        n += 1;
    };
    if dx != 0 && dy != 0 {
        push((dx, 0));
        push((0, dy));
        push((dx, dy));
    } else if dx != 0 {
        push((dx, 0));
        for s in [-1, 1] {
            if free(xi, yi + s) && !free(xi - dx, yi + s) {
                push((0, s));
                push((dx, s));
            }
        }
    } else {
        push((0, dy));
        for s in [-1, 1] {
            if free(xi + s, yi) && !free(xi + s, yi - dy) {
                push((s, 0));
                push((s, dy));
            }
        }
    }
    n
}

/// Jumps on one grid towards one goal (padded coordinates).
struct Jumper<'a> {
    grid: &'a Grid2d,
    gx: usize,
    gy: usize,
}

impl Jumper<'_> {
    /// The next jump point from `(x, y)` in direction `(dx, dy)`, if any.
    #[inline]
    fn jump(&self, x: usize, y: usize, dx: isize, dy: isize) -> Option<(usize, usize)> {
        if dy == 0 {
            self.horizontal(x, y, dx).map(|jx| (jx, y))
        } else if dx == 0 {
            self.vertical(x, y, dy).map(|jy| (x, jy))
        } else {
            self.diagonal(x, y, dx, dy)
        }
    }

    #[inline]
    fn horizontal(&self, x: usize, y: usize, dx: isize) -> Option<usize> {
        let (plane, words) = self.grid.row_plane();
        let goal = (self.gy == y).then_some(self.gx);
        jump_line(plane, words, y, x, dx > 0, goal)
    }

    #[inline]
    fn vertical(&self, x: usize, y: usize, dy: isize) -> Option<usize> {
        let (plane, words) = self.grid.col_plane();
        let goal = (self.gx == x).then_some(self.gy);
        jump_line(plane, words, x, y, dy > 0, goal)
    }

    fn diagonal(&self, mut x: usize, mut y: usize, dx: isize, dy: isize) -> Option<(usize, usize)> {
        let g = self.grid;
        loop {
            let (nx, ny) = (x.wrapping_add_signed(dx), y.wrapping_add_signed(dy));
            if !(g.free_padded(nx, ny) && g.free_padded(nx, y) && g.free_padded(x, ny)) {
                return None;
            }
            (x, y) = (nx, ny);
            if (x, y) == (self.gx, self.gy)
                || self.horizontal(x, y, dx).is_some()
                || self.vertical(x, y, dy).is_some()
            {
                return Some((x, y));
            }
        }
    }
}

/// A straight jump along line `r` of a bit plane from position `p`, forwards (`up`) or
/// backwards: the first free cell with a forced neighbour, or the goal (`goal`: its position on
/// this line, if it lies on it) if that comes first; `None` when a blocked cell comes first.
#[inline]
fn jump_line(
    plane: &[u64],
    words: usize,
    r: usize,
    p: usize,
    up: bool,
    goal: Option<usize>,
) -> Option<usize> {
    let (q, blocked) = if up { scan_up(plane, words, r, p) } else { scan_down(plane, words, r, p) };
    if let Some(t) = goal {
        let between = if up { t > p && t <= q } else { t < p && t >= q };
        if between {
            return Some(t);
        }
    }
    (!blocked).then_some(q)
}

/// First position after `p` on line `r` that is blocked or has a forced neighbour (a side cell
/// that is free while the one behind it is blocked); returns it and whether it is blocked.
#[inline]
fn scan_up(plane: &[u64], words: usize, r: usize, p: usize) -> (usize, bool) {
    let line = &plane[r * words..(r + 1) * words];
    let side_a = &plane[(r - 1) * words..r * words];
    let side_b = &plane[(r + 1) * words..(r + 2) * words];
    let start = LEAD + p + 1;
    let mut w = start / 64;
    let mut mask = !0u64 << (start % 64);
    loop {
        let (f, a, b) = (line[w], side_a[w], side_b[w]);
        // Bit i of `*_behind` is the side cell at i − 1.
        let a_behind = (a << 1) | (side_a[w - 1] >> 63);
        let b_behind = (b << 1) | (side_b[w - 1] >> 63);
        let stop = (!f | (a & !a_behind) | (b & !b_behind)) & mask;
        if stop != 0 {
            let bit = stop.trailing_zeros() as usize;
            return (w * 64 + bit - LEAD, (f >> bit) & 1 == 0);
        }
        w += 1;
        mask = !0;
    }
}

/// As [`scan_up`], towards lower positions.
#[inline]
fn scan_down(plane: &[u64], words: usize, r: usize, p: usize) -> (usize, bool) {
    let line = &plane[r * words..(r + 1) * words];
    let side_a = &plane[(r - 1) * words..r * words];
    let side_b = &plane[(r + 1) * words..(r + 2) * words];
    let start = LEAD + p - 1;
    let mut w = start / 64;
    let mut mask = !0u64 >> (63 - start % 64);
    loop {
        let (f, a, b) = (line[w], side_a[w], side_b[w]);
        // Bit i of `*_behind` is the side cell at i + 1.
        let a_behind = (a >> 1) | (side_a[w + 1] << 63);
        let b_behind = (b >> 1) | (side_b[w + 1] << 63);
        let stop = (!f | (a & !a_behind) | (b & !b_behind)) & mask;
        if stop != 0 {
            let bit = 63 - stop.leading_zeros() as usize;
            return (w * 64 + bit - LEAD, (f >> bit) & 1 == 0);
        }
        w -= 1;
        mask = !0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pathfinding::astar_baseline;

    /// A deterministic pseudo-random grid with `percent` blocked cells.
    fn noisy(w: u32, h: u32, percent: u64, seed: u64) -> Grid2d {
        Grid2d::from_fn(w, h, |x, y| {
            terrarium_engine::rng::hash3(seed, u64::from(x), u64::from(y)) % 100 >= percent
        })
    }

    #[test]
    fn matches_plain_astar_on_random_grids() {
        let mut search = JpsSearch::default();
        for (seed, (w, h, pct)) in
            [(70, 50, 20), (130, 65, 30), (64, 64, 10), (200, 3, 15), (3, 150, 15)].into_iter().enumerate()
        {
            let grid = noisy(w, h, pct, seed as u64);
            let free: Vec<Cell> = (0..h)
                .flat_map(|y| (0..w).map(move |x| (x, y)))
                .filter(|&(x, y)| grid.is_free(x, y))
                .collect();
            for k in 0..60 {
                let a = free[(k * 7919) % free.len()];
                let b = free[(k * 104_729 + 13) % free.len()];
                let want = astar_baseline(&grid, a, b).map(|p| p.length);
                let got = search.path(&grid, a, b);
                match (want, &got) {
                    (None, None) => {}
                    (Some(w), Some(p)) => {
                        assert!((w - p.length).abs() < 1e-6, "{a:?} -> {b:?}: astar {w}, jps {}", p.length);
                        let walked =
                            p.validate(&grid).unwrap_or_else(|i| panic!("illegal step {i} in {p:?}"));
                        assert!((walked - p.length).abs() < 1e-6);
                        assert_eq!((p.cells[0], *p.cells.last().unwrap()), (a, b));
                    }
                    _ => panic!("{a:?} -> {b:?}: astar {want:?}, jps {got:?}"),
                }
            }
        }
    }

    #[test]
    fn corners_are_not_cut_and_ends_are_checked() {
        // .@
        // ..   the only way from (0, 0) to (1, 1) is around: two cardinal steps.
        let grid = Grid2d::from_cells(2, 2, &[true, false, true, true]);
        let p = jps_path(&grid, (0, 0), (1, 1)).unwrap();
        assert_eq!(p.cells, [(0, 0), (0, 1), (1, 1)]);
        assert!((p.length - 2.0).abs() < 1e-12);
        assert!(jps_path(&grid, (0, 0), (1, 0)).is_none(), "goal blocked");
        assert!(jps_path(&grid, (0, 0), (5, 0)).is_none(), "goal outside");
        assert_eq!(jps_length(&grid, (0, 1), (0, 1)), Some(0.0));
        // Two rooms joined by a wall: no path.
        let walled = Grid2d::from_fn(9, 9, |x, _| x != 4);
        assert!(jps_path(&walled, (0, 0), (8, 8)).is_none());
    }

    #[test]
    fn long_straight_jumps_cross_word_boundaries() {
        let grid = Grid2d::from_fn(300, 300, |x, y| !(x == 150 && y < 299));
        let p = jps_path(&grid, (0, 0), (299, 0)).unwrap();
        assert!((p.validate(&grid).unwrap() - p.length).abs() < 1e-9);
        let want = astar_baseline(&grid, (0, 0), (299, 0)).unwrap().length;
        assert!((p.length - want).abs() < 1e-6, "{} vs {want}", p.length);
    }
}
