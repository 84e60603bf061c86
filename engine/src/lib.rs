#![doc = include_str!("../README.md")]

mod brain;
mod command;
mod components;
mod config;
mod engine;
mod error;
mod hash;
pub mod math;
mod resources;
pub mod rng;
mod schedule;
pub mod snapshot;
mod spawn;
pub mod voxel;

pub use brain::{AgentPath, Brain, BrainState, Goal, OreProfile, OreStats};
pub use command::{Command, CommandSender, Order};
pub use components::{
    Agent, Health, Inventory, ItemKind, ItemStack, MoveTarget, NpcId, Position, Role, Status, Swarm,
    Velocity, Wander,
};
pub use config::{
    BatchLimits, BatchingConfig, CommandConfig, EngineConfig, EventBatchConfig, NpcConfig, SnapshotConfig,
    WorldConfig, in_range, load_layered,
};
pub use engine::{Engine, EngineBuilder, NpcIdRange, Plugin, clamp_position};
pub use error::{CommandError, ConfigError, EngineError, SnapshotError};
pub use resources::{NpcIndex, ParPool, SimClock, TickLog, WorldBounds};
pub use rng::SimRng;
pub use schedule::{StageTimings, TickSet};
pub use snapshot::SnapshotBody;
pub use spawn::{AgentBundle, NpcBundle, NpcSpec, PlainNpcBundle};

/// The types most users need.
pub mod prelude {
    pub use crate::voxel::{Block, BlockPos, Ore, VoxelWorld, WorldGen};
    pub use crate::{
        Agent, AgentPath, Brain, BrainState, Command, CommandSender, Engine, EngineConfig, Goal, Health,
        Inventory, ItemKind, NpcId, NpcSpec, Order, OreProfile, Position, Role, SimClock, SimRng, Status,
        Swarm, TickSet, Velocity, WorldBounds,
    };
}
