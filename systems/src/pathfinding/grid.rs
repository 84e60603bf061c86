//! [`Grid2d`]: an 8-connected octile grid stored as bits, row by row and column by column, so a
//! search can scan 64 cells with one word operation in either direction.

use terrarium_engine::math::SQRT_2;

/// A grid cell `(x, y)`; `x` grows east, `y` grows south (the Moving AI convention).
pub type Cell = (u32, u32);

/// A passability grid under the Moving AI rules: 8-connected, a cardinal step costs 1, a diagonal
/// step √2, and a diagonal step needs both cardinal cells beside it passable (no corner cutting).
///
/// Stored with a one-cell blocked border and a blank word at the front of every row and column,
/// so scans never check bounds: the border always stops them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grid2d {
    width: u32,
    height: u32,
    /// Words per row of `rows`.
    row_words: usize,
    /// Words per column of `cols`.
    col_words: usize,
    /// Row `py` (padded, 0 ..= height + 1): bit `px + 64` is set when padded cell `(px, py)` is free.
    pub(crate) rows: Vec<u64>,
    /// Column `px`: bit `py + 64` is set when `(px, py)` is free.
    pub(crate) cols: Vec<u64>,
}

/// Bit offset of padded coordinate 0 in a row or column (one blank word in front).
pub(crate) const LEAD: usize = 64;

impl Grid2d {
    /// Searches number the cells of the grid with its border as `u32` (and keep `u32::MAX` for
    /// "none"): `(width + 2) × (height + 2)` must be below this for a grid to be searched.
    pub const MAX_PADDED_CELLS: u64 = u32::MAX as u64;

    /// True when a search can number every cell of a `width × height` grid (see
    /// [`Grid2d::MAX_PADDED_CELLS`]).
    #[must_use]
    pub fn searchable(width: u64, height: u64) -> bool {
        (width + 2).saturating_mul(height + 2) < Self::MAX_PADDED_CELLS
    }

    /// A grid from `cells`, row by row (`cells[y * width + x]` true when passable).
    ///
    /// # Panics
    /// When `cells.len() != width * height`.
    #[must_use]
    pub fn from_cells(width: u32, height: u32, cells: &[bool]) -> Self {
        assert_eq!(cells.len(), width as usize * height as usize, "one flag per cell");
        Self::from_fn(width, height, |x, y| cells[y as usize * width as usize + x as usize])
    }

    /// A grid where `(x, y)` is passable when `free(x, y)`.
    #[must_use]
    pub fn from_fn(width: u32, height: u32, mut free: impl FnMut(u32, u32) -> bool) -> Self {
        let (pw, ph) = (width as usize + 2, height as usize + 2);
        // One extra word after the border, so a scan may read one word past it.
        let row_words = (LEAD + pw).div_ceil(64) + 1;
        let col_words = (LEAD + ph).div_ceil(64) + 1;
        let mut rows = vec![0u64; row_words * ph];
        let mut cols = vec![0u64; col_words * pw];
        for y in 0..height {
            for x in 0..width {
                if free(x, y) {
                    let (px, py) = (x as usize + 1, y as usize + 1);
                    rows[py * row_words + (LEAD + px) / 64] |= 1 << ((LEAD + px) % 64);
                    cols[px * col_words + (LEAD + py) / 64] |= 1 << ((LEAD + py) % 64);
                }
            }
        }
        Self { width, height, row_words, col_words, rows, cols }
    }

    /// Width in cells.
    #[must_use]
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in cells.
    #[must_use]
    pub fn height(&self) -> u32 {
        self.height
    }

    /// True when `(x, y)` is inside and passable.
    #[must_use]
    pub fn is_free(&self, x: u32, y: u32) -> bool {
        x < self.width && y < self.height && self.free_padded(x as usize + 1, y as usize + 1)
    }

    /// Number of passable cells.
    #[must_use]
    pub fn free_cells(&self) -> usize {
        self.rows.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// True when padded cell `(px, py)` is free (the border and everything past it is not).
    #[inline]
    pub(crate) fn free_padded(&self, px: usize, py: usize) -> bool {
        let b = LEAD + px;
        (self.rows[py * self.row_words + b / 64] >> (b % 64)) & 1 == 1
    }

    /// Row `r` of the row plane and its width in words.
    #[inline]
    pub(crate) fn row_plane(&self) -> (&[u64], usize) {
        (&self.rows, self.row_words)
    }

    /// Column plane (the grid transposed) and its column length in words.
    #[inline]
    pub(crate) fn col_plane(&self) -> (&[u64], usize) {
        (&self.cols, self.col_words)
    }

    /// True when the step from `a` to the adjacent cell `b` is allowed: both passable and, for a
    /// diagonal step, both cardinal cells beside it passable.
    #[must_use]
    pub fn step_allowed(&self, a: Cell, b: Cell) -> bool {
        let (dx, dy) = (i64::from(b.0) - i64::from(a.0), i64::from(b.1) - i64::from(a.1));
        if dx.abs() > 1 || dy.abs() > 1 || (dx == 0 && dy == 0) {
            return false;
        }
        self.is_free(a.0, a.1)
            && self.is_free(b.0, b.1)
            && (dx == 0 || dy == 0 || (self.is_free(b.0, a.1) && self.is_free(a.0, b.1)))
    }

    /// The cells one legal step from `c`, with the step's cost.
    pub fn neighbours(&self, c: Cell) -> impl Iterator<Item = (Cell, f64)> + '_ {
        const DIRS: [(i32, i32); 8] = [(1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (1, -1), (-1, 1), (-1, -1)];
        DIRS.iter().filter_map(move |&(dx, dy)| {
            let (nx, ny) = (c.0.checked_add_signed(dx)?, c.1.checked_add_signed(dy)?);
            let cost = if dx != 0 && dy != 0 { SQRT_2 } else { 1.0 };
            self.step_allowed(c, (nx, ny)).then_some(((nx, ny), cost))
        })
    }
}

/// Octile distance: the cost of the shortest path on an empty grid.
#[inline]
#[must_use]
pub fn octile(dx: u32, dy: u32) -> f64 {
    let (lo, hi) = if dx < dy { (dx, dy) } else { (dy, dx) };
    f64::from(hi - lo) + f64::from(lo) * SQRT_2
}

/// A path on a [`Grid2d`]: every cell from start to goal, and its length.
#[derive(Debug, Clone, PartialEq)]
pub struct GridPath {
    /// Cells from start to goal, both included; consecutive cells are one legal step apart.
    pub cells: Vec<Cell>,
    /// Sum of the step costs.
    pub length: f64,
}

impl GridPath {
    /// Checks the path step by step on `grid`; returns its recomputed length, or the index of
    /// the first illegal step.
    ///
    /// # Errors
    /// The index `i` of the first step `cells[i] → cells[i + 1]` that `grid` does not allow.
    pub fn validate(&self, grid: &Grid2d) -> Result<f64, usize> {
        let mut len = 0.0;
        for (i, w) in self.cells.windows(2).enumerate() {
            if !grid.step_allowed(w[0], w[1]) {
                return Err(i);
            }
            len += if w[0].0 != w[1].0 && w[0].1 != w[1].1 { SQRT_2 } else { 1.0 };
        }
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_match_cells_in_both_planes() {
        let g = Grid2d::from_fn(130, 70, |x, y| (x * 7 + y * 3) % 5 != 0);
        for y in 0..70 {
            for x in 0..130 {
                let want = (x * 7 + y * 3) % 5 != 0;
                assert_eq!(g.is_free(x, y), want);
                let (cols, cw) = g.col_plane();
                let b = LEAD + y as usize + 1;
                assert_eq!((cols[(x as usize + 1) * cw + b / 64] >> (b % 64)) & 1 == 1, want);
            }
        }
        assert!(!g.is_free(130, 0) && !g.free_padded(0, 5) && !g.free_padded(131, 5));
    }

    #[test]
    fn diagonal_steps_never_cut_corners() {
        // .@
        // ..
        let g = Grid2d::from_cells(2, 2, &[true, false, true, true]);
        assert!(!g.step_allowed((0, 1), (1, 0)), "(1, 0) is blocked");
        assert!(!g.step_allowed((0, 0), (1, 1)), "would cut the corner of (1, 0)");
        assert!(g.step_allowed((0, 0), (0, 1)) && g.step_allowed((0, 1), (1, 1)));
        assert_eq!(g.neighbours((0, 0)).count(), 1);
        assert!((octile(3, 1) - (2.0 + SQRT_2)).abs() < 1e-12);
    }
}
