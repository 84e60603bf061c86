//! The baseline: plain A* from the `pathfinding` crate over the grid's 8 neighbours. Exact, and
//! the yardstick the jump point search is measured against (same grids, same queries).

use pathfinding::prelude::astar;

use terrarium_engine::math::SQRT_2;

use super::grid::{Cell, Grid2d, GridPath};

/// Fixed-point unit of the baseline's integer costs (the crate's A* wants `Ord` costs): 10⁻⁹
/// blocks, so rounding stays under 10⁻⁵ even on paths of ten thousand steps.
const UNIT: f64 = 1e9;

/// An optimal path by plain A* (`pathfinding::directed::astar::astar`), or `None`.
///
/// # Examples
/// ```
/// use terrarium_systems::pathfinding::{Grid2d, astar_baseline, jps_path};
/// let grid = Grid2d::from_fn(40, 40, |x, y| !(x == 20 && y > 3));
/// let slow = astar_baseline(&grid, (1, 30), (38, 30)).unwrap();
/// let fast = jps_path(&grid, (1, 30), (38, 30)).unwrap();
/// assert!((slow.length - fast.length).abs() < 1e-6);
/// ```
#[must_use]
pub fn astar_baseline(grid: &Grid2d, start: Cell, goal: Cell) -> Option<GridPath> {
    if !grid.is_free(start.0, start.1) || !grid.is_free(goal.0, goal.1) {
        return None;
    }
    // Integer step costs, and a heuristic made of the same integers: consistent, so exact.
    let (straight, diagonal) = (UNIT as u64, (SQRT_2 * UNIT) as u64);
    let (cells, cost) = astar(
        &start,
        |&c| grid.neighbours(c).map(move |(n, cost)| (n, if cost > 1.0 { diagonal } else { straight })),
        |&(x, y)| {
            let (dx, dy) = (u64::from(x.abs_diff(goal.0)), u64::from(y.abs_diff(goal.1)));
            dx.abs_diff(dy) * straight + dx.min(dy) * diagonal
        },
        |&c| c == goal,
    )?;
    Some(GridPath { cells, length: cost as f64 / UNIT })
}
