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

    /// A box inside which every point belongs to `region` ([`RegionGrid::region_at`] would say
    /// so): its cell shrunk by a thousandth of the cell on each side (a margin for the rounding
    /// of `region_at`'s division), and open to infinity on the sides where the cell meets the
    /// edge of the world (points beyond it belong to the nearest cell). Testing four
    /// comparisons first spares most NPCs of a step the division and rounding.
    #[must_use]
    pub fn surely_within(&self, region: RegionId) -> Interior {
        let (lo, hi) = self.cell(region);
        let (c, r) = (region.0 % self.cols, region.0 / self.cols);
        let (mx, mz) = ((hi[0] - lo[0]) * 1e-3, (hi[1] - lo[1]) * 1e-3);
        Interior {
            min: [
                if c == 0 { f32::NEG_INFINITY } else { lo[0] + mx },
                if r == 0 { f32::NEG_INFINITY } else { lo[1] + mz },
            ],
            max: [
                if c + 1 == self.cols { f32::INFINITY } else { hi[0] - mx },
                if r + 1 == self.rows { f32::INFINITY } else { hi[1] - mz },
            ],
        }
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

/// See [`RegionGrid::surely_within`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interior {
    min: [f32; 2],
    max: [f32; 2],
}

impl Interior {
    /// True when `(x, z)` is inside (false for NaN).
    #[must_use]
    pub fn contains(&self, x: f32, z: f32) -> bool {
        x > self.min[0] && x < self.max[0] && z > self.min[1] && z < self.max[1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_point_surely_within_a_region_is_in_it() {
        let mut rng = fastrand::Rng::with_seed(5);
        for (spec, min, max) in [
            ("2x2", [0.0, 0.0], [100.0, 100.0]),
            ("3x1", [-256.0, -7.5], [255.0, 1000.25]),
            ("16x16", [-1e5, -1e5], [1e5, 1e5]),
            ("1x1", [0.0, 0.0], [1.0, 1.0]),
        ] {
            let g = RegionGrid::parse(spec, min, max).unwrap();
            let boxes: Vec<Interior> = (0..g.count()).map(|r| g.surely_within(RegionId(r))).collect();
            let (w, h) = (max[0] - min[0], max[1] - min[1]);
            let mut inside = 0;
            for i in 0..200_000 {
                // Points over and beyond the box, half of them on a cell edge or next to one.
                let (mut x, mut z) =
                    (min[0] - w * 0.1 + rng.f32() * w * 1.2, min[1] - h * 0.1 + rng.f32() * h * 1.2);
                if i % 2 == 0 {
                    let (cols, rows) = g.shape();
                    x = min[0] + w * (rng.u32(0..=cols) as f32 / cols as f32);
                    z = min[1] + h * (rng.u32(0..=rows) as f32 / rows as f32);
                    x = f32::from_bits(x.to_bits().wrapping_add(rng.u32(0..5)).wrapping_sub(2));
                    z = f32::from_bits(z.to_bits().wrapping_add(rng.u32(0..5)).wrapping_sub(2));
                }
                let at = g.region_at(x, z);
                for (r, b) in boxes.iter().enumerate() {
                    if b.contains(x, z) {
                        inside += 1;
                        assert_eq!(at, RegionId(r as u32), "{spec}: ({x}, {z}) surely in {r}");
                    }
                }
            }
            assert!(inside > 100_000, "{spec}: the boxes hold most points ({inside})");
        }
        assert!(
            !RegionGrid::parse("2x2", [0.0, 0.0], [1.0, 1.0])
                .unwrap()
                .surely_within(RegionId(0))
                .contains(f32::NAN, 0.1)
        );
    }

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
