//! Steering: a spatial index for neighbour queries ([`Grid`] over a [`Space`]) and flocking
//! ([`Flock`], the boids rule), plus the system that makes the NPCs of each swarm flock.
//!
//! The kernel is shared: the engine's swarm system and the `flocking` benchmark example step
//! the same [`Flock`].

mod flocking;
mod grid;
mod kernel;
mod swarms;

pub use flocking::{Boid, Flock, FlockParams, Neighbourhood, benchmark_order, rule};
pub use grid::{FAR, Grid, PAD, Run, Space};
pub use swarms::{Flocking, register};

/// A steering value out of range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SteeringError {
    /// A space with a non-finite corner, or a side that is not positive (periodic) or negative
    /// (bounded).
    #[error("invalid space: min {min:?}, size {size:?}, periodic {periodic}")]
    InvalidSpace {
        /// Lowest corner.
        min: [f64; 2],
        /// Side lengths.
        size: [f64; 2],
        /// Whether the space was to be periodic.
        periodic: bool,
    },
    /// A flocking parameter outside its range (keys `flocking.vision`, …).
    #[error("{0}")]
    InvalidParam(#[from] terrarium_codec::OutOfRange),
}
