//! The agents' counters: [`MiningStats`] (the decision loop and the mining round) and
//! [`PathStats`] (path planning). Observability, not world state.

use bevy_ecs::prelude::*;
use terrarium_engine::voxel::Ore;

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

/// Counters of path planning since the plugin was added (observability, not world state).
#[derive(Resource, Debug, Default, Clone, PartialEq, Eq)]
pub struct PathStats {
    /// Requests answered with a path (searched or cached).
    pub solved: u64,
    /// Requests answered with "no path".
    pub failures: u64,
    /// Paths replanned because a step was blocked.
    pub replans: u64,
    /// Requests answered from the cache.
    pub cache_hits: u64,
    /// Searches run.
    pub searches: u64,
    /// Cells expanded by those searches.
    pub expanded: u64,
    /// Requests left for a later tick by `AgentConfig::max_paths_per_tick` (each tick a
    /// request waits counts once).
    pub deferred: u64,
    /// Requests the last `Plan` stage left waiting for a later tick (a gauge, not a total).
    pub waiting: u64,
    /// Searches the last `Plan` stage ran on the engine's pool (a gauge, not a total).
    pub last_searches: u64,
}
