//! [`AgentConfig`]: every setting of the agents, from walking speed to the path budget.

use bevy_ecs::prelude::*;

use crate::mining::AssignParams;
use crate::pathfinding::SearchLimits;

/// How agents behave (a resource; [`super::plugin`] inserts the defaults when absent).
#[derive(Resource, Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// Walking speed, blocks per second; also converts digging time into path cost.
    pub walk_speed: f32,
    /// Deposits each miner scores per round (its nearest unclaimed ones).
    pub candidates: usize,
    /// Farthest deposit a miner considers, blocks on the ground.
    pub radius: i32,
    /// Farthest deposit a miner considers, levels up or down.
    pub reach_y: i32,
    /// Largest group of competing miners solved exactly (Kuhn–Munkres); larger ones use the auction.
    pub exact_group: usize,
    /// Limits of the searches towards deposits and ordered points.
    pub search: SearchLimits,
    /// Limits of the searches back to a depot: from deep tunnels towards a target in open air
    /// no digging bound applies, so these are greedier (miners dig their way home).
    pub home_search: SearchLimits,
    /// Most path searches per tick; the oldest requests go first, the rest wait a tick.
    pub max_paths_per_tick: usize,
    /// Replans of one goal before the agent gives the task up.
    pub max_replans: u8,
    /// Ticks an agent waits after a failed task, times its failures in a row (at most 8).
    pub retry_ticks: u64,
    /// Ticks an outbid or empty-handed agent waits before the next round.
    pub wait_ticks: u64,
    /// Ticks a deposit that failed is avoided by the agent that failed.
    pub avoid_ticks: u64,
    /// Ticks handing a load in takes.
    pub deposit_ticks: u64,
    /// An agent heads for a depot once its inventory holds this share of its capacity, 0 ..= 1.
    pub return_at: f32,
    /// Searches the path cache holds.
    pub cache_capacity: usize,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            walk_speed: 4.0,
            candidates: 6,
            radius: 16,
            reach_y: 10,
            exact_group: 12,
            search: SearchLimits { weight: 5.0, max_expanded: 2_000, ..SearchLimits::default() },
            home_search: SearchLimits { weight: 20.0, max_expanded: 4_000, ..SearchLimits::default() },
            max_paths_per_tick: 4096,
            max_replans: 3,
            retry_ticks: 20,
            wait_ticks: 5,
            avoid_ticks: 600,
            deposit_ticks: 10,
            return_at: 0.1,
            cache_capacity: 16_384,
        }
    }
}

impl AgentConfig {
    /// The parameters of the mining round.
    #[must_use]
    pub fn assign_params(&self) -> AssignParams {
        AssignParams {
            candidates: self.candidates,
            radius: self.radius,
            reach_y: self.reach_y,
            exact_group: self.exact_group,
            walk_speed: self.walk_speed,
        }
    }
}
