//! A uniform grid over a plane rectangle: points sorted by cell, so that the points near a
//! position lie in a few contiguous runs of memory, for neighbour queries by radius.

use std::ops::Range;

use super::SteeringError;

/// The rectangle points live in: bounded, or periodic (a torus: leaving one side enters the
/// opposite one, and distances are measured to the nearest image).
///
/// # Examples
/// ```
/// use terrarium_systems::steering::Space;
/// let torus = Space::periodic([100.0, 100.0]).unwrap();
/// assert_eq!(torus.offset([99.0, 50.0], [1.0, 50.0]), [2.0, 0.0]);
/// assert_eq!(torus.wrap([101.5, -1.0]), [1.5, 99.0]);
/// let plane = Space::bounded([0.0, 0.0], [100.0, 100.0]).unwrap();
/// assert_eq!(plane.offset([99.0, 50.0], [1.0, 50.0]), [-98.0, 0.0]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Space {
    min: [f64; 2],
    size: [f64; 2],
    periodic: bool,
}

impl Space {
    /// The periodic rectangle `[0, size[0]) × [0, size[1])`.
    ///
    /// # Errors
    /// [`SteeringError::InvalidSpace`] unless both sides are finite and positive.
    pub fn periodic(size: [f64; 2]) -> Result<Self, SteeringError> {
        Self::new([0.0; 2], size, true)
    }

    /// The bounded rectangle from `min` to `max`. Offsets are plain differences; points outside
    /// are allowed (a bounded grid covers the points it is given).
    ///
    /// # Errors
    /// [`SteeringError::InvalidSpace`] unless the corners are finite and `max` ≥ `min`.
    pub fn bounded(min: [f64; 2], max: [f64; 2]) -> Result<Self, SteeringError> {
        Self::new(min, [max[0] - min[0], max[1] - min[1]], false)
    }

    fn new(min: [f64; 2], size: [f64; 2], periodic: bool) -> Result<Self, SteeringError> {
        let ok = min.iter().chain(&size).all(|v| v.is_finite())
            && size.iter().all(|&s| if periodic { s > 0.0 } else { s >= 0.0 });
        if ok {
            Ok(Self { min, size, periodic })
        } else {
            Err(SteeringError::InvalidSpace { min, size, periodic })
        }
    }

    /// True for a periodic space.
    #[must_use]
    pub fn is_periodic(&self) -> bool {
        self.periodic
    }

    /// Lowest corner.
    #[must_use]
    pub fn min(&self) -> [f64; 2] {
        self.min
    }

    /// Side lengths.
    #[must_use]
    pub fn size(&self) -> [f64; 2] {
        self.size
    }

    /// The offset from `from` to `to`: `to − from`, in a periodic space to the nearest image of
    /// `to` (each component within half a side).
    #[must_use]
    pub fn offset(&self, from: [f64; 2], to: [f64; 2]) -> [f64; 2] {
        let d = [to[0] - from[0], to[1] - from[1]];
        if !self.periodic {
            return d;
        }
        [0, 1].map(|k| fold(d[k], self.size[k]))
    }

    /// `p` moved into the space: in a periodic space, into `[min, min + size)` on each axis; a
    /// bounded space returns it unchanged.
    #[must_use]
    #[inline(always)]
    pub fn wrap(&self, p: [f64; 2]) -> [f64; 2] {
        if !self.periodic {
            return p;
        }
        [0, 1].map(|k| self.min[k] + wrap_len(p[k] - self.min[k], self.size[k]))
    }
}

/// `d` folded into `[-len/2, len/2]` for `d` within one period of it: the nearest image. The
/// SIMD kernels of `flocking.rs` use the same expression, lane by lane.
#[inline(always)]
pub(crate) fn fold(d: f64, len: f64) -> f64 {
    if d > 0.5 * len {
        d - len
    } else if d < -0.5 * len {
        d + len
    } else {
        d
    }
}

/// `v` wrapped into `[0, len)`.
#[inline(always)]
fn wrap_len(v: f64, len: f64) -> f64 {
    if (0.0..len).contains(&v) {
        return v;
    }
    let r = v.rem_euclid(len);
    // A tiny negative `v` rounds up to `len` itself.
    if r >= len { 0.0 } else { r }
}

/// `⌊v⌋` as an integer, saturating (NaN gives 0). `f64::floor` is a libm call on baseline
/// x86-64, and this runs several times per query.
#[inline(always)]
fn floor_i(v: f64) -> i64 {
    let t = v as i64;
    t - i64::from((t as f64) > v)
}

/// Number of cells from `lo` to `hi` inclusive, saturating.
#[inline]
fn span(lo: i64, hi: i64) -> i64 {
    hi.saturating_sub(lo).saturating_add(1)
}

/// A contiguous run of grid slots that may hold neighbours of a query point.
///
/// The offset from the query point `p` to the point in slot `s` is
/// `(xs[s] − p[0]) + shift[0]` (likewise for y), unless `fold` is set: then the run comes from a
/// query wider than half the space and each offset must be folded to its nearest image
/// ([`Space::offset`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// Slots in grid order.
    pub slots: Range<usize>,
    /// What to add to the raw difference to reach the image near the query point.
    pub shift: [f64; 2],
    /// Offsets of this run must be folded one by one.
    pub fold: bool,
}

/// Extra slots after the last point, at [`FAR`], so SIMD kernels may read four slots from any
/// slot without bounds checks.
pub const PAD: usize = 3;

/// Where padding slots and points with a non-finite coordinate are stored: finite (so a kernel
/// may multiply it by zero), and so far away that no query within the space reaches it.
pub const FAR: f64 = 1e300;

/// A uniform grid of square-ish cells over a [`Space`], rebuilt from scratch whenever the
/// points move (a counting sort: O(points + cells)).
///
/// After [`Grid::rebuild`], points are stored sorted by cell, rows after rows, so one row of
/// cells is one contiguous slice: a query visits one or two runs per row.
///
/// # Examples
/// ```
/// use terrarium_systems::steering::{Grid, Space};
/// let mut grid = Grid::new(Space::periodic([100.0, 100.0]).unwrap());
/// grid.rebuild(&[1.0, 50.0, 99.0], &[1.0, 50.0, 99.0], 5.0);
/// let mut near = Vec::new();
/// grid.within([0.5, 0.5], 3.0, &mut near);
/// near.sort();
/// assert_eq!(near, [0, 2], "point 2 is near across the corner of the torus");
/// ```
#[derive(Debug, Clone)]
pub struct Grid {
    space: Space,
    /// Lowest corner of the gridded area (the space's, or the points' box when bounded).
    origin: [f64; 2],
    /// Columns and rows.
    dims: [usize; 2],
    cell: [f64; 2],
    inv_cell: [f64; 2],
    /// `starts[c]..starts[c + 1]`: the slots of cell `c` (`c = row · columns + column`).
    starts: Vec<u32>,
    xs: Vec<f64>,
    ys: Vec<f64>,
    order: Vec<u32>,
    /// Scratch: the cell of each input point.
    cells: Vec<u32>,
}

impl Grid {
    /// An empty grid over `space`.
    #[must_use]
    pub fn new(space: Space) -> Self {
        Self {
            space,
            origin: space.min,
            dims: [1, 1],
            cell: [1.0; 2],
            inv_cell: [1.0; 2],
            starts: vec![0, 0],
            xs: vec![FAR; PAD],
            ys: vec![FAR; PAD],
            order: Vec::new(),
            cells: Vec::new(),
        }
    }

    /// The space.
    #[must_use]
    pub fn space(&self) -> &Space {
        &self.space
    }

    /// Number of points.
    #[must_use]
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// True when the grid holds no points.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Columns and rows of the last rebuild.
    #[must_use]
    pub fn dims(&self) -> [usize; 2] {
        self.dims
    }

    /// Sorts the points `(xs[i], ys[i])` into cells of side about `cell` (at least `cell`; fewer
    /// cells when there would be more than four per point). In a periodic space the stored
    /// positions are wrapped into it.
    ///
    /// Points are stable-sorted: within a cell they keep their input order, so the same input
    /// gives the same grid. A point with a non-finite coordinate lands in the first cell, stored
    /// at ([`FAR`], [`FAR`]), and never matches a query.
    ///
    /// # Panics
    /// When `xs` and `ys` differ in length, or there are `u32::MAX` points or more.
    pub fn rebuild(&mut self, xs: &[f64], ys: &[f64], cell: f64) {
        assert_eq!(xs.len(), ys.len(), "one x and one y per point");
        let n = xs.len();
        assert!(u32::try_from(n).is_ok_and(|n| n < u32::MAX), "too many points for a grid");
        self.layout(xs, ys, cell);
        let [cols, rows] = self.dims;
        let ncells = cols * rows;
        self.starts.clear();
        self.starts.resize(ncells + 2, 0);
        self.cells.clear();
        self.cells.reserve(n);
        for (&x, &y) in xs.iter().zip(ys) {
            let [x, y] = self.space.wrap([x, y]);
            let c = self.cell_of(x, y);
            self.cells.push(c as u32);
            self.starts[c + 2] += 1;
        }
        for c in 2..self.starts.len() {
            self.starts[c] += self.starts[c - 1];
        }
        // Each point goes to `starts[c + 1]`, which then moves on; afterwards `starts[c]` is the
        // start of cell `c` and `starts[c + 1]` its end.
        self.xs.clear();
        self.xs.resize(n + PAD, FAR);
        self.ys.clear();
        self.ys.resize(n + PAD, FAR);
        self.order.clear();
        self.order.resize(n, 0);
        for (i, (&x, &y)) in xs.iter().zip(ys).enumerate() {
            let c = self.cells[i] as usize;
            let s = self.starts[c + 1] as usize;
            self.starts[c + 1] += 1;
            let [x, y] = self.space.wrap([x, y]);
            let far = !(x.is_finite() && y.is_finite());
            self.xs[s] = if far { FAR } else { x };
            self.ys[s] = if far { FAR } else { y };
            self.order[s] = i as u32;
        }
        self.starts.pop();
    }

    /// Chooses the gridded area and the cell counts for this rebuild.
    fn layout(&mut self, xs: &[f64], ys: &[f64], cell: f64) {
        let (origin, size) = if self.space.periodic {
            (self.space.min, self.space.size)
        } else {
            // A bounded grid covers the points' box, so a few points in a large world still get
            // small cells.
            let (mut lo, mut hi) = ([f64::INFINITY; 2], [f64::NEG_INFINITY; 2]);
            for (&x, &y) in xs.iter().zip(ys) {
                for (k, v) in [x, y].into_iter().enumerate() {
                    if v.is_finite() {
                        lo[k] = lo[k].min(v);
                        hi[k] = hi[k].max(v);
                    }
                }
            }
            if lo[0] > hi[0] || lo[1] > hi[1] {
                (self.space.min, [0.0; 2])
            } else {
                (lo, [hi[0] - lo[0], hi[1] - lo[1]])
            }
        };
        let cell = if cell.is_finite() && cell > 0.0 { cell } else { f64::INFINITY };
        let max_cells = (4 * xs.len()).max(64) as f64;
        let mut dims = size.map(|s| (s / cell).floor().clamp(1.0, max_cells));
        if dims[0] * dims[1] > max_cells {
            let f = (max_cells / (dims[0] * dims[1])).sqrt();
            dims = dims.map(|d| (d * f).floor().max(1.0));
        }
        self.origin = origin;
        self.dims = dims.map(|d| d as usize);
        self.cell = [0, 1].map(|k| if size[k] > 0.0 { size[k] / dims[k] } else { 1.0 });
        self.inv_cell = self.cell.map(|c| 1.0 / c);
    }

    #[inline]
    fn cell_of(&self, x: f64, y: f64) -> usize {
        let [cols, rows] = self.dims;
        // The clamp keeps rounding at the far edge (and non-finite coordinates) inside.
        let col = floor_i((x - self.origin[0]) * self.inv_cell[0]).clamp(0, cols as i64 - 1);
        let row = floor_i((y - self.origin[1]) * self.inv_cell[1]).clamp(0, rows as i64 - 1);
        row as usize * cols + col as usize
    }

    /// X coordinates in grid order, followed by [`PAD`] slots at [`FAR`].
    #[must_use]
    pub fn xs(&self) -> &[f64] {
        &self.xs
    }

    /// Y coordinates in grid order, followed by [`PAD`] slots at [`FAR`].
    #[must_use]
    pub fn ys(&self) -> &[f64] {
        &self.ys
    }

    /// Both coordinate columns, mutably, to move points in place between rebuilds.
    ///
    /// A point keeps its cell until the next rebuild, so after moving points by at most `d`,
    /// query with `radius + d` (and test the exact distance) to stay exact. Points in a periodic
    /// space may step outside it (by less than half a side); offsets stay right. Leave the
    /// padding alone.
    pub fn positions_mut(&mut self) -> (&mut [f64], &mut [f64]) {
        (&mut self.xs, &mut self.ys)
    }

    /// For each grid slot, the index of its point in the input of the last rebuild.
    #[must_use]
    pub fn order(&self) -> &[u32] {
        &self.order
    }

    /// Calls `visit` with every run of slots that may hold a point within `radius` of `p`; each
    /// slot comes at most once. Within each row the column span is cut to the disc, so the runs
    /// cover little more than the disc itself.
    #[inline(always)]
    pub fn for_each_run(&self, p: [f64; 2], radius: f64, mut visit: impl FnMut(Run)) {
        if self.order.is_empty() || !(p[0].is_finite() && p[1].is_finite()) || radius.is_nan() {
            return;
        }
        let p = self.space.wrap(p);
        let q = [p[0] - self.origin[0], p[1] - self.origin[1]];
        // A little slack, so rounding in `cell_of` can never hide a point on the rim.
        let r = radius.max(0.0) * (1.0 + 1e-12) + 1e-9 * (self.cell[0] + self.cell[1]);
        let [cols, rows] = self.dims.map(|d| d as i64);
        if r <= self.cell[0].min(self.cell[1]) && (!self.space.periodic || cols.min(rows) >= 3) {
            self.block_runs(q, &mut visit);
        } else {
            self.disc_runs(q, r, &mut visit);
        }
    }

    /// The runs of the 3 × 3 cells around `q`, for a radius within one cell: a few integer
    /// operations per row, where cutting rows to the disc would cost more than it saves.
    #[inline(always)]
    fn block_runs(&self, q: [f64; 2], visit: &mut impl FnMut(Run)) {
        let [cols, rows] = self.dims.map(|d| d as i64);
        let col = floor_i(q[0] * self.inv_cell[0]).clamp(0, cols - 1);
        let row = floor_i(q[1] * self.inv_cell[1]).clamp(0, rows - 1);
        let (pieces, _) = self.pieces((col - 1, col + 1), false);
        let (lo, hi) = if self.space.periodic {
            (row - 1, row + 1)
        } else {
            ((row - 1).max(0), (row + 1).min(rows - 1))
        };
        for r in lo..hi + 1 {
            let (wrapped, shift_y) = self.wrap_row(r);
            self.emit(wrapped, &pieces, shift_y, false, visit);
        }
    }

    /// The runs of the cells each row of the disc of radius `r` around `q` touches.
    #[inline(always)]
    fn disc_runs(&self, q: [f64; 2], r: f64, visit: &mut impl FnMut(Run)) {
        let periodic = self.space.periodic;
        let rows = self.dims[1] as i64;

        let ch = self.cell[1];
        let (lo, hi) = (floor_i((q[1] - r) * self.inv_cell[1]), floor_i((q[1] + r) * self.inv_cell[1]));
        let fold_y = periodic && span(lo, hi) >= rows;
        let (lo, hi) = if fold_y {
            (0, rows - 1)
        } else if periodic {
            (lo, hi)
        } else {
            (lo.max(0), hi.min(rows - 1))
        };
        // The row holding `q` (the edge row, for a point beyond the edge of a bounded grid, since
        // edge cells hold everything beyond the edge).
        let home = floor_i(q[1] * self.inv_cell[1]);
        let home = if periodic { home } else { home.clamp(0, rows - 1) };
        let r2 = r * r;
        let full = (floor_i((q[0] - r) * self.inv_cell[0]), floor_i((q[0] + r) * self.inv_cell[0]));
        let cols = self.dims[0] as i64;
        // Squared distance from `q` to the strip of row `row` (unwrapped).
        let dy2 = |row: i64| {
            let dy = if row == home {
                0.0
            } else if row < home {
                q[1] - (row + 1) as f64 * ch
            } else {
                row as f64 * ch - q[1]
            };
            dy.max(0.0) * dy.max(0.0)
        };
        if !fold_y && lo >= 0 && hi < rows && full.0 >= 0 && full.1 < cols {
            // Away from the edges (most queries): no wrapping, no shifts, one run per row.
            for row in lo..hi + 1 {
                let h = (r2 - dy2(row)).max(0.0).sqrt();
                let c0 = floor_i((q[0] - h) * self.inv_cell[0]).max(full.0);
                let c1 = floor_i((q[0] + h) * self.inv_cell[0]).min(full.1);
                let base = row as usize * self.dims[0];
                let slots =
                    self.starts[base + c0 as usize] as usize..self.starts[base + c1 as usize + 1] as usize;
                if !slots.is_empty() {
                    visit(Run { slots, shift: [0.0; 2], fold: false });
                }
            }
            return;
        }
        for row in lo..hi + 1 {
            let (wrapped, shift_y) = self.wrap_row(row);
            // The part of the disc in this row.
            let span = if fold_y {
                full
            } else {
                let dy2 = dy2(row);
                if dy2 > r2 {
                    continue;
                }
                let h = (r2 - dy2).sqrt();
                (floor_i((q[0] - h) * self.inv_cell[0]), floor_i((q[0] + h) * self.inv_cell[0]))
            };
            let (pieces, fold) = self.pieces(span, fold_y);
            self.emit(wrapped, &pieces, shift_y, fold, visit);
        }
    }

    /// The real row of unwrapped row `row` and the y shift of its image. A periodic query spans
    /// fewer rows than the grid has, so it wraps at most once at each end.
    #[inline(always)]
    fn wrap_row(&self, row: i64) -> (i64, f64) {
        let rows = self.dims[1] as i64;
        if row < 0 {
            (row + rows, -self.space.size[1])
        } else if row >= rows {
            (row - rows, self.space.size[1])
        } else {
            (row, 0.0)
        }
    }

    /// Visits the pieces of row `row` that hold points.
    #[inline(always)]
    fn emit(
        &self,
        row: i64,
        pieces: &[(i64, i64, f64); 2],
        shift_y: f64,
        fold: bool,
        visit: &mut impl FnMut(Run),
    ) {
        let base = row as usize * self.dims[0];
        for &(a, b, shift_x) in pieces {
            if a <= b {
                let slots =
                    self.starts[base + a as usize] as usize..self.starts[base + b as usize + 1] as usize;
                if !slots.is_empty() {
                    visit(Run { slots, shift: [shift_x, shift_y], fold });
                }
            }
        }
    }

    /// The column span `c0..=c1` of a query as up to two pieces `(first, last, x shift)` of
    /// real columns (a periodic span is split where it wraps around, and each piece has its
    /// own image shift; empty pieces have first > last), and whether offsets must be folded.
    #[inline(always)]
    fn pieces(&self, (c0, c1): (i64, i64), fold_y: bool) -> ([(i64, i64, f64); 2], bool) {
        let cols = self.dims[0] as i64;
        let size_x = self.space.size[0];
        let none = (0, -1, 0.0);
        if !self.space.periodic {
            ([(c0.max(0), c1.min(cols - 1), 0.0), none], false)
        } else if span(c0, c1) >= cols {
            ([(0, cols - 1, 0.0), none], true)
        } else if c0 < 0 {
            ([(c0 + cols, cols - 1, -size_x), (0, c1, 0.0)], fold_y)
        } else if c1 >= cols {
            ([(c0, cols - 1, 0.0), (0, c1 - cols, size_x)], fold_y)
        } else {
            ([(c0, c1, 0.0), none], fold_y)
        }
    }

    /// Pushes onto `out` the input index of every point within `radius` of `p` (distance ≤
    /// `radius`, to the nearest image in a periodic space), in grid order.
    pub fn within(&self, p: [f64; 2], radius: f64, out: &mut Vec<usize>) {
        let p = self.space.wrap(p);
        let r2 = radius * radius;
        self.for_each_run(p, radius, |run| {
            for s in run.slots {
                let d = if run.fold {
                    self.space.offset(p, [self.xs[s], self.ys[s]])
                } else {
                    [(self.xs[s] - p[0]) + run.shift[0], (self.ys[s] - p[1]) + run.shift[1]]
                };
                if d[0] * d[0] + d[1] * d[1] <= r2 {
                    out.push(self.order[s] as usize);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use terrarium_engine::rng::StreamRng;

    fn brute(space: &Space, xs: &[f64], ys: &[f64], p: [f64; 2], r: f64) -> Vec<usize> {
        (0..xs.len())
            .filter(|&i| {
                let d = space.offset(space.wrap(p), space.wrap([xs[i], ys[i]]));
                d[0] * d[0] + d[1] * d[1] <= r * r
            })
            .collect()
    }

    fn random_points(r: &mut StreamRng, n: usize, lo: [f64; 2], hi: [f64; 2]) -> (Vec<f64>, Vec<f64>) {
        let mut coord = |k: usize| lo[k] + (hi[k] - lo[k]) * f64::from(r.next_f32());
        (0..n).map(|_| (coord(0), coord(1))).unzip()
    }

    /// Many random clouds, spaces, cell sizes and radii (including radii wider than the space):
    /// the grid finds exactly the points brute force finds.
    #[test]
    fn queries_equal_brute_force_on_random_sets() {
        let mut r = StreamRng::new(11);
        let mut checked = 0;
        for case in 0..60 {
            let periodic = case % 2 == 0;
            let size = [1.0 + 200.0 * f64::from(r.next_f32()), 1.0 + 200.0 * f64::from(r.next_f32())];
            let space = if periodic {
                Space::periodic(size).unwrap()
            } else {
                Space::bounded([-10.0, 5.0], [size[0] - 10.0, size[1] + 5.0]).unwrap()
            };
            let n = (r.below(400) + 1) as usize;
            // Bounded clouds may spill over the bounds; periodic ones are wrapped by the grid.
            let (lo, hi) = (
                space.min().map(|m| m - 5.0),
                [space.min()[0] + size[0] + 5.0, space.min()[1] + size[1] + 5.0],
            );
            let (xs, ys) = random_points(&mut r, n, lo, hi);
            let cell = 0.5 + 20.0 * f64::from(r.next_f32());
            let mut grid = Grid::new(space);
            grid.rebuild(&xs, &ys, cell);
            let mut got = Vec::new();
            for _ in 0..40 {
                let radius = [0.0, 1.0, cell, 3.0 * cell, size[0].max(size[1])][r.below(5) as usize]
                    * f64::from(r.next_f32());
                let p = if r.below(4) == 0 {
                    [xs[r.below(n as u64) as usize], ys[r.below(n as u64) as usize]]
                } else {
                    random_points(&mut r, 1, lo, hi)
                        .0
                        .iter()
                        .zip(random_points(&mut r, 1, lo, hi).1)
                        .map(|(&x, y)| [x, y])
                        .next()
                        .unwrap()
                };
                got.clear();
                grid.within(p, radius, &mut got);
                let mut sorted = got.clone();
                sorted.sort_unstable();
                sorted.dedup();
                assert_eq!(sorted.len(), got.len(), "a point came twice (case {case})");
                assert_eq!(sorted, brute(&space, &xs, &ys, p, radius), "case {case}, p {p:?}, r {radius}");
                checked += sorted.len();
            }
        }
        assert!(checked > 10_000, "the cases must find many neighbours, found {checked}");
    }

    #[test]
    fn rebuild_sorts_by_cell_and_keeps_input_order_within_a_cell() {
        let mut grid = Grid::new(Space::periodic([10.0, 10.0]).unwrap());
        // Cells of 5 × 5: point 0 and 2 share the last cell, point 1 is in the first.
        grid.rebuild(&[9.0, 1.0, 6.0, 12.0], &[9.0, 1.0, 8.0, 1.0], 5.0);
        assert_eq!(grid.dims(), [2, 2]);
        assert_eq!(grid.order(), &[1, 3, 0, 2]);
        assert_eq!(grid.xs()[1], 2.0, "wrapped into the space");
        assert!(grid.xs()[4] == FAR && grid.xs().len() == 4 + PAD);
    }

    #[test]
    fn bad_spaces_are_refused() {
        assert!(Space::periodic([0.0, 1.0]).is_err());
        assert!(Space::periodic([f64::NAN, 1.0]).is_err());
        assert!(Space::bounded([0.0, 0.0], [-1.0, 1.0]).is_err());
        assert!(Space::bounded([0.0, 0.0], [0.0, 0.0]).is_ok());
    }

    #[test]
    fn empty_and_degenerate_inputs_do_not_panic() {
        let mut grid = Grid::new(Space::bounded([0.0, 0.0], [10.0, 10.0]).unwrap());
        grid.rebuild(&[], &[], 1.0);
        let mut out = Vec::new();
        grid.within([1.0, 1.0], 5.0, &mut out);
        assert!(out.is_empty());
        grid.rebuild(&[f64::NAN, 3.0, 3.0], &[1.0, 3.0, 3.0], 0.0);
        grid.within([3.0, 3.0], 0.0, &mut out);
        assert_eq!(out, [1, 2]);
        grid.within([f64::INFINITY, 3.0], 1.0, &mut out);
        assert_eq!(out.len(), 2);
    }
}
