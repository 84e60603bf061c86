//! RegionGrid: the static grid that cuts a world's ground plane (x, z) into regions.

use terrarium_persistence::region::RegionId;

/// A bad `--regions` value.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum GridError {
    /// Not `COLSxROWS` with both from 1 to 16.
    #[error("regions {0:?} is not COLSxROWS with each from 1 to 16 (e.g. 2x2)")]
    Malformed(String),
    /// The world has no area to cut.
    #[error("the world's ground plane is empty ({0} by {1} blocks)")]
    Empty(f32, f32),
}

/// `cols × rows` equal cells over `[min, max)` of the ground plane (x east, z south), numbered
/// row by row: region `r` is column `r % cols`, row `r / cols`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RegionGrid {
    cols: u32,
    rows: u32,
    min: [f32; 2],
    max: [f32; 2],
}

impl RegionGrid {
    /// A grid over the box `min..max` (`[x, z]`).
    ///
    /// # Errors
    /// [`GridError::Malformed`] for a count outside 1..=16, [`GridError::Empty`] for an empty box.
    pub fn new(cols: u32, rows: u32, min: [f32; 2], max: [f32; 2]) -> Result<Self, GridError> {
        if !(1..=16).contains(&cols) || !(1..=16).contains(&rows) {
            return Err(GridError::Malformed(format!("{cols}x{rows}")));
        }
        let (w, h) = (max[0] - min[0], max[1] - min[1]);
        if w.is_nan() || h.is_nan() || w <= 0.0 || h <= 0.0 {
            return Err(GridError::Empty(w, h));
        }
        Ok(Self { cols, rows, min, max })
    }

    /// Parses `COLSxROWS` (`2x2`) over the box `min..max`.
    ///
    /// # Errors
    /// As [`RegionGrid::new`].
    pub fn parse(spec: &str, min: [f32; 2], max: [f32; 2]) -> Result<Self, GridError> {
        let bad = || GridError::Malformed(spec.to_owned());
        let (c, r) = spec.split_once(['x', 'X']).ok_or_else(bad)?;
        let cols = c.trim().parse().map_err(|_| bad())?;
        let rows = r.trim().parse().map_err(|_| bad())?;
        Self::new(cols, rows, min, max)
            .map_err(|e| if matches!(e, GridError::Malformed(_)) { bad() } else { e })
    }

    /// Number of regions.
    #[must_use]
    pub fn count(&self) -> u32 {
        self.cols * self.rows
    }

    /// Columns and rows.
    #[must_use]
    pub fn shape(&self) -> (u32, u32) {
        (self.cols, self.rows)
    }

    /// The region whose cell holds `(x, z)`; points outside the box belong to the nearest cell.
    #[must_use]
    pub fn region_at(&self, x: f32, z: f32) -> RegionId {
        let cell = |v: f32, lo: f32, hi: f32, n: u32| -> u32 {
            let t = ((v - lo) / (hi - lo) * n as f32).floor();
            if t.is_nan() || t < 0.0 {
                0
            } else {
                // Truncation is the point: t is a non-negative whole number.
                #[expect(
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss,
                    reason = "t is a clamped whole number"
                )]
                let t = t.min((n - 1) as f32) as u32;
                t
            }
        };
        RegionId(
            cell(z, self.min[1], self.max[1], self.rows) * self.cols
                + cell(x, self.min[0], self.max[0], self.cols),
        )
    }

    /// The cell of `region`: `([x_min, z_min], [x_max, z_max])`.
    #[must_use]
    pub fn cell(&self, region: RegionId) -> ([f32; 2], [f32; 2]) {
        let (c, r) = ((region.0 % self.cols) as f32, (region.0 / self.cols) as f32);
        let (w, h) =
            ((self.max[0] - self.min[0]) / self.cols as f32, (self.max[1] - self.min[1]) / self.rows as f32);
        (
            [self.min[0] + c * w, self.min[1] + r * h],
            [self.min[0] + (c + 1.0) * w, self.min[1] + (r + 1.0) * h],
        )
    }

    /// True when `(x, z)` is within `margin` blocks of `region`'s cell but outside it: a
    /// neighbour's NPC that `region` shows as a ghost.
    #[must_use]
    pub fn near(&self, region: RegionId, x: f32, z: f32, margin: f32) -> bool {
        let (lo, hi) = self.cell(region);
        self.region_at(x, z) != region
            && x >= lo[0] - margin
            && x < hi[0] + margin
            && z >= lo[1] - margin
            && z < hi[1] + margin
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_numbered_row_by_row_and_cover_the_box() {
        let g = RegionGrid::parse("2x2", [0.0, 0.0], [100.0, 100.0]).unwrap();
        assert_eq!(g.count(), 4);
        assert_eq!(g.region_at(10.0, 10.0), RegionId(0));
        assert_eq!(g.region_at(60.0, 10.0), RegionId(1));
        assert_eq!(g.region_at(10.0, 60.0), RegionId(2));
        assert_eq!(g.region_at(99.9, 99.9), RegionId(3));
        assert_eq!(g.region_at(100.0, 100.0), RegionId(3), "the far edge belongs to the last cell");
        assert_eq!(g.region_at(-5.0, f32::NAN), RegionId(0));
        assert_eq!(g.cell(RegionId(3)), ([50.0, 50.0], [100.0, 100.0]));
        assert!(g.near(RegionId(0), 52.0, 10.0, 4.0));
        assert!(!g.near(RegionId(0), 58.0, 10.0, 4.0));
        assert!(!g.near(RegionId(0), 40.0, 10.0, 4.0), "its own NPCs are not ghosts");
    }

    #[test]
    fn bad_specs_are_refused() {
        for bad in ["2", "0x2", "2x17", "ax2", "2x"] {
            assert!(
                matches!(RegionGrid::parse(bad, [0.0; 2], [1.0; 2]), Err(GridError::Malformed(_))),
                "{bad}"
            );
        }
        assert!(matches!(RegionGrid::parse("2x2", [0.0; 2], [0.0, 1.0]), Err(GridError::Empty(..))));
    }
}
