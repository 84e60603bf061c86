//! Pathfinding: exact 2D search on Moving AI octile grids (jump point search, with plain A* as
//! the baseline) and 3D walking in the voxel world (walking rules, search, a path cache).

mod baseline;
mod cache;
mod grid;
mod jps;
mod movingai;
mod radix;
mod voxel;

pub use baseline::astar_baseline;
pub use cache::{CacheKey, PathCache};
pub use grid::{Cell, Grid2d, GridPath, octile};
pub use jps::{JpsSearch, jps_length, jps_path};
pub use movingai::{Scenario, check_scenarios, load_map, load_scenarios, parse_map, parse_scenarios};
pub use voxel::{
    CLIMB_COST, MOVES, NoPath, Region, SearchLimits, SearchOutcome, Step, Target, VoxelPath, VoxelSearch,
    WalkRules, find_path, step,
};
