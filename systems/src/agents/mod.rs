//! The agents: NPCs with a decision loop that mine the voxel world. This module owns them —
//! their settings ([`AgentConfig`]), their state machine (`state.rs`: [`status_of`], the one
//! way to change state, giving a task up), one file per stage (`decide.rs`, `plan.rs`,
//! `act.rs`), what they report ([`AgentEvents`], [`MiningStats`], [`PathStats`]) and setting a
//! colony up ([`plugin`], [`spawn_colony`]). `mining` and `pathfinding` are the algorithms they
//! call and know nothing of agents.
//!
//! - `Decide`: wake idle agents, finish arrivals, mining and depositing, and take orders.
//! - `Plan`: the mining round gives deposits out, then path planning finds paths.
//! - `Act`: walk one step along the path when the last one is done, digging on the way.
//!
//! ```text
//! Idle ─wake─▶ Choosing ─deposit assigned─▶ Planning ─path─▶ Travelling ─arrived─▶ Mining
//!   ▲             │ none / outbid                │ no path          │ blocked: replan  │ mined
//!   │             ▼                              ▼                  ▼                  ▼
//!   └────────── Idle (wait) ◀──── failure ── Idle (backoff)   Planning      Choosing or, when full,
//!   ▲                                                                      Planning ─▶ Returning
//!   └──────────────────────── Depositing ◀─arrived── Returning ◀──────────────────────┘
//! ```
//!
//! Every transition is recorded in [`AgentEvents`]. Agents are visited in `NpcId` order and
//! change the voxel world one after the other, so the outcome never depends on thread count;
//! the parallel work (candidate scoring, assignment, path searches) is pure.

mod act;
mod colony;
mod config;
mod decide;
mod events;
mod ledger;
mod plan;
mod state;
mod stats;

use bevy_ecs::prelude::*;
use terrarium_engine::{Engine, TickSet};

pub use colony::{COLUMNS_PER_AGENT, colony_world, spawn_colony};
pub use config::AgentConfig;
pub use events::{AgentEvent, AgentEvents, Cause, domain_event};
pub use ledger::OreLedger;
pub use plan::{rules_of, target_of};
pub use state::status_of;
pub use stats::{MiningStats, PathStats};

use crate::mining::DepositIndex;
use crate::movement::Movement;
use crate::pathfinding::PathCache;

/// Marks an engine whose agent systems are registered, so the plugin runs once.
#[derive(Resource)]
struct AgentSystems;

/// Everything agents need: the decision loop (`Decide`, `Act`), the mining round and path
/// planning (`Plan`), and their resources. Safe to add twice. The voxel world is not created
/// here (see [`spawn_colony`] or insert a [`VoxelWorld`](terrarium_engine::voxel::VoxelWorld)
/// yourself); without one agents wait.
///
/// # Examples
/// ```
/// use terrarium_engine::{Engine, EngineConfig};
/// let mut engine = Engine::builder(EngineConfig::default())
///     .add_plugin(terrarium_systems::core_plugin)
///     .add_plugin(terrarium_systems::agents::plugin)
///     .build()
///     .unwrap();
/// engine.run_ticks(2);
/// ```
pub fn plugin(engine: &mut Engine) {
    let world = engine.world_mut();
    if world.contains_resource::<AgentSystems>() {
        return;
    }
    world.insert_resource(AgentSystems);
    if !world.contains_resource::<AgentConfig>() {
        world.insert_resource(AgentConfig::default());
    }
    let capacity = world.resource::<AgentConfig>().cache_capacity;
    world.insert_resource(PathCache::with_capacity(capacity));
    world.init_resource::<MiningStats>();
    world.init_resource::<PathStats>();
    world.init_resource::<DepositIndex>();
    world.init_resource::<AgentEvents>();
    register(engine);
}

/// Adds the agents' systems to their stages.
fn register(engine: &mut Engine) {
    engine.add_systems(TickSet::Decide, (decide::sync_deposits, decide::take_orders, decide::decide).chain());
    engine.add_systems(TickSet::Plan, (plan::assign_deposits, plan::plan_paths).chain());
    // Walking and the movement pass both write agents' `Position` and `Status`: agents walk first.
    engine.add_systems(TickSet::Act, (act::walk, events::forward_to_storage).chain().before(Movement));
}
