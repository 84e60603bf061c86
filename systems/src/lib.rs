#![doc = include_str!("../README.md")]

pub mod batching;
pub mod movement;
pub mod par;
pub mod steering;
pub mod wander;

use terrarium_engine::Engine;

/// The standard systems of a world without agents: movement (with the wander rule).
pub fn core_plugin(engine: &mut Engine) {
    movement::register(engine);
}
