#![doc = include_str!("../README.md")]

pub mod agents;
pub mod batching;
pub mod error;
pub mod mining;
pub mod movement;
pub mod par;
pub mod pathfinding;
pub mod steering;
mod stream;
pub mod wander;

pub use error::MapError;

use terrarium_engine::Engine;

/// The standard systems of a world without agents: movement (with the wander rule).
pub fn core_plugin(engine: &mut Engine) {
    movement::register(engine);
}
