//! Mining: the deposit index, the mining round that gives deposits to miners (Plan stage) and
//! the colony set-up other crates reuse ([`spawn_colony`], [`mining_plugin`]).

mod assign;
mod colony;
mod index;

use bevy_ecs::prelude::*;
use terrarium_engine::voxel::{BlockPos, Ore, VoxelWorld};
use terrarium_engine::{
    Agent, Brain, BrainState, Engine, Goal, Inventory, NpcId, OreProfile, ParPool, Position, SimClock,
    Status, TickSet,
};

pub use assign::{AssignParams, Assignment, Miner, assign, score};
pub use colony::{COLUMNS_PER_AGENT, colony_world, mining_plugin, spawn_colony};
pub use index::{Deposit, DepositIndex, Nearby, ground_distance};

use crate::ai::{self, AgentEvents, Cause};
use crate::pathfinding::SearchLimits;

/// Adds the mining round to the `Plan` stage, before path planning.
pub fn register(engine: &mut Engine) {
    engine.add_systems(TickSet::Plan, assign_deposits.before(crate::pathfinding::plan_paths));
}

/// How agents mine (a resource; [`mining_plugin`] inserts the defaults when absent).
#[derive(Resource, Debug, Clone, PartialEq)]
pub struct MiningConfig {
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

impl Default for MiningConfig {
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

impl MiningConfig {
    /// The assignment parameters.
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

/// Counters of the mining loop since the plugin was added (observability, not world state).
#[derive(Resource, Debug, Default, Clone, PartialEq, Eq)]
pub struct MiningStats {
    /// Items mined, per ore ([`Ore::index`]).
    pub ore_mined: [u64; Ore::COUNT],
    /// Items handed in at depots, per ore.
    pub ore_deposited: [u64; Ore::COUNT],
    /// Ore blocks mined.
    pub blocks_mined: u64,
    /// Blocks dug through on the way.
    pub blocks_dug: u64,
    /// Deposits given out by mining rounds.
    pub assigned: u64,
    /// Miners that found no deposit worth having.
    pub no_deposit: u64,
    /// Miners outbid in a round.
    pub outbid: u64,
    /// Tasks that failed (unreachable, gone, blocked too often).
    pub failed_tasks: u64,
    /// Groups solved with Kuhn–Munkres.
    pub exact_groups: u64,
    /// Groups solved with the auction.
    pub auction_groups: u64,
}

type ChooserData = (
    Entity,
    &'static NpcId,
    &'static Position,
    &'static mut Brain,
    &'static Inventory,
    &'static OreProfile,
    &'static mut Status,
);

/// The mining round: every agent in `Choosing` scores nearby deposits; each gets at most one,
/// no deposit goes to two (see [`assign`]).
#[expect(clippy::too_many_arguments, reason = "a system's parameters are its data dependencies")]
fn assign_deposits(
    mut agents: Query<ChooserData, With<Agent>>,
    mut index: ResMut<DepositIndex>,
    mut events: ResMut<AgentEvents>,
    mut stats: ResMut<MiningStats>,
    config: Res<MiningConfig>,
    clock: Res<SimClock>,
    pool: Res<ParPool>,
    world: Option<Res<VoxelWorld>>,
) {
    if world.is_none() {
        return;
    }
    let tick = clock.tick;
    let mut choosing: Vec<(NpcId, Entity, Miner)> = agents
        .iter()
        .filter(|(.., b, _, _, _)| b.state == BrainState::Choosing)
        .map(|(e, id, pos, brain, inv, profile, _)| {
            let room = Ore::ALL.map(|o| inv.room_for(o.item()));
            let avoid = (tick < brain.avoid_until).then_some(brain.avoid);
            let cell = BlockPos::containing(*pos);
            (*id, e, Miner { id: *id, cell, tool: brain.tool, room, profile: *profile, avoid })
        })
        .collect();
    if choosing.is_empty() {
        return;
    }
    choosing.sort_unstable_by_key(|c| c.0);
    let miners: Vec<Miner> = choosing.iter().map(|c| c.2).collect();
    let result = assign(&pool, &index, &miners, &config.assign_params());
    stats.exact_groups += result.exact_groups as u64;
    stats.auction_groups += result.auction_groups as u64;
    for (i, (id, e, _)) in choosing.into_iter().enumerate() {
        let Ok((.., mut brain, _, _, mut status)) = agents.get_mut(e) else { continue };
        let (to, cause) = match result.choice[i] {
            Some(p) if index.claim(p) => {
                stats.assigned += 1;
                brain.goal = Goal::Deposit(p);
                (BrainState::Planning, Cause::Assigned(p))
            }
            _ if result.had_candidates[i] => {
                stats.outbid += 1;
                brain.wake_at = tick + config.wait_ticks;
                (BrainState::Idle, Cause::Outbid)
            }
            _ => {
                stats.no_deposit += 1;
                brain.wake_at = tick + config.retry_ticks;
                (BrainState::Idle, Cause::NoDeposit)
            }
        };
        if to == BrainState::Planning {
            brain.wake_at = tick;
            brain.replans = 0;
        }
        ai::transition(&mut events, tick, id, &mut brain, &mut status, to, cause);
    }
}
