//! The `Plan` stage's path planning: agents waiting for a path send a request; requests are
//! answered from the [`PathCache`] or solved in parallel on the engine's pool, and the results
//! are applied in `NpcId` order.

use bevy_ecs::prelude::*;
use terrarium_engine::voxel::{BlockPos, VoxelWorld};
use terrarium_engine::{
    Agent, AgentPath, Brain, BrainState, Engine, Goal, NpcId, OreProfile, ParPool, Position, SimClock,
    Status, TickSet,
};

use super::cache::{CacheKey, PathCache};
use super::voxel::{SearchOutcome, Target, WalkRules, find_path};
use crate::ai::{self, AgentEvents, Cause};
use crate::mining::{DepositIndex, MiningConfig, MiningStats};
use crate::par;

/// Adds path planning to the `Plan` stage.
pub fn register(engine: &mut Engine) {
    engine.add_systems(TickSet::Plan, plan_paths);
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
    /// Requests left for a later tick by `MiningConfig::max_paths_per_tick` (each tick a
    /// request waits counts once).
    pub deferred: u64,
    /// Requests the last `Plan` stage left waiting for a later tick (a gauge, not a total).
    pub waiting: u64,
    /// Searches the last `Plan` stage ran on the engine's pool (a gauge, not a total).
    pub last_searches: u64,
}

/// The target an agent's goal stands for.
#[must_use]
pub fn target_of(goal: Goal, world: &VoxelWorld) -> Option<Target> {
    match goal {
        Goal::None => None,
        Goal::Deposit(p) => Some(Target::Reach(p)),
        // Anywhere within reach of the depot's floor block (standing on it, or beside it).
        Goal::Depot(i) => world.depots().get(i as usize).map(|d| Target::Reach(d.cell.offset(0, -1, 0))),
        Goal::Point(p) => Some(Target::Cell(p)),
    }
}

/// The walking rules of an agent with `brain` under `config`.
#[must_use]
pub fn rules_of(brain: &Brain, config: &MiningConfig) -> WalkRules {
    WalkRules::miner(brain.tool, config.walk_speed)
}

struct Request {
    order: (u64, NpcId),
    entity: Entity,
    key: CacheKey,
    rules: WalkRules,
    outcome: Option<SearchOutcome>,
    cached: bool,
}

type PlannerData = (
    Entity,
    &'static NpcId,
    &'static Position,
    &'static mut Brain,
    &'static mut AgentPath,
    &'static mut OreProfile,
    &'static mut Status,
);

/// Answers every path request of this tick (up to the budget).
#[expect(clippy::too_many_arguments, reason = "a system's parameters are its data dependencies")]
pub fn plan_paths(
    mut agents: Query<PlannerData, With<Agent>>,
    world: Option<Res<VoxelWorld>>,
    mut cache: ResMut<PathCache>,
    mut index: ResMut<DepositIndex>,
    mut events: ResMut<AgentEvents>,
    mut stats: ResMut<PathStats>,
    mut mining: ResMut<MiningStats>,
    config: Res<MiningConfig>,
    clock: Res<SimClock>,
    pool: Res<ParPool>,
) {
    let Some(world) = world else { return };
    let tick = clock.tick;
    let mut requests: Vec<Request> = Vec::new();
    let mut lost: Vec<(NpcId, Entity)> = Vec::new();
    for (e, id, pos, brain, ..) in &agents {
        if brain.state != BrainState::Planning {
            continue;
        }
        let Some(target) = target_of(brain.goal, &world) else {
            lost.push((*id, e));
            continue;
        };
        let rules = rules_of(brain, &config);
        let home = u8::from(matches!(brain.goal, Goal::Depot(_)));
        let key = (BlockPos::containing(*pos), target, rules.dig_cost.map_or(u32::MAX, f32::to_bits), home);
        requests.push(Request {
            order: (brain.wake_at, *id),
            entity: e,
            key,
            rules,
            outcome: None,
            cached: false,
        });
    }
    // Oldest requests first; the rest wait for the next tick.
    requests.sort_unstable_by_key(|r| r.order);
    stats.waiting = 0;
    if requests.len() > config.max_paths_per_tick {
        stats.waiting = (requests.len() - config.max_paths_per_tick) as u64;
        stats.deferred += stats.waiting;
        requests.truncate(config.max_paths_per_tick);
    }
    for r in &mut requests {
        if let Some(hit) = cache.get(&r.key, &world, tick) {
            r.outcome = Some(hit.clone());
            r.cached = true;
        }
    }
    let misses: Vec<usize> = (0..requests.len()).filter(|&i| requests[i].outcome.is_none()).collect();
    stats.last_searches = misses.len() as u64;
    let solved = par::map(&pool, misses.clone(), |i| {
        let r = &requests[i];
        let limits = if r.key.3 == 1 { &config.home_search } else { &config.search };
        find_path(&world, r.key.0, r.key.1, &r.rules, limits)
    });
    for (i, outcome) in misses.into_iter().zip(solved) {
        stats.searches += 1;
        stats.expanded += u64::from(outcome.expanded);
        requests[i].outcome = Some(outcome);
    }
    requests.sort_unstable_by_key(|r| r.order.1);
    for r in requests {
        let outcome = r.outcome.expect("every request was answered");
        if r.cached {
            stats.cache_hits += 1;
        } else {
            cache.insert(r.key, outcome.clone(), &world, tick);
        }
        let Ok((_, id, _, mut brain, mut path, _, mut status)) = agents.get_mut(r.entity) else {
            continue;
        };
        match outcome.result {
            Ok(found) => {
                stats.solved += 1;
                path.cells = found.cells;
                path.next = 0;
                brain.wake_at = tick;
                let to = if matches!(brain.goal, Goal::Depot(_)) {
                    BrainState::Returning
                } else {
                    BrainState::Travelling
                };
                ai::transition(&mut events, tick, *id, &mut brain, &mut status, to, Cause::PathFound);
            }
            Err(_) => {
                stats.failures += 1;
                lost.push((*id, r.entity));
            }
        }
    }
    // Goals with no target and requests with no path: the task fails, in NpcId order.
    lost.sort_unstable_by_key(|l| l.0);
    for (id, e) in lost {
        let Ok((.., mut brain, mut path, mut profile, mut status)) = agents.get_mut(e) else { continue };
        let mut task =
            ai::Task { brain: &mut brain, path: &mut path, profile: &mut profile, status: &mut status };
        ai::fail_task(
            &mut task,
            id,
            Cause::Unreachable,
            tick,
            &world,
            &mut index,
            &mut events,
            &mut mining,
            &config,
        );
    }
}
