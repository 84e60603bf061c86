//! Regions (issue 17): one world across several engine processes, each owning the NPCs in its
//! cell of a static grid, with ownership, fencing and exactly-once hand-off in PostgreSQL
//! (`terrarium_persistence::region`). The single-process engine is untouched by any of this.

mod ghosts;
mod grid;
#[cfg(feature = "postgres")]
mod process;

pub use ghosts::{BorderGhost, BorderGhosts, GhostOptions};
pub use grid::{GridError, Interior, RegionGrid};
#[cfg(feature = "postgres")]
pub use process::{RegionOptions, RegionProcess, RegionRunError, RegionStats, seed_rows};
