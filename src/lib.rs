#![doc = include_str!("../README.md")]

pub mod checkpoint;
pub mod config;
pub mod perf;
pub mod pipeline;
pub mod region;
pub mod resume;
mod server_config;

pub use terrarium_codec as codec;
pub use terrarium_engine as engine;
pub use terrarium_persistence as persistence;
pub use terrarium_systems as systems;

pub use config::Config;
pub use pipeline::{NewWorldStats, PipelineError, StoragePipeline, StoreCheck, WrittenRows};

/// The types most users need, from every crate.
pub mod prelude {
    pub use terrarium_engine::prelude::*;
}
