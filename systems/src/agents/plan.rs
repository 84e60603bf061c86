//! The `Plan` stage: the mining round gives deposits to the agents that are choosing, then
//! path planning answers the agents waiting for a path. Requests are answered from the
//! [`PathCache`] or solved in parallel on the engine's pool; results are applied in `NpcId`
//! order.

use bevy_ecs::prelude::*;
use terrarium_engine::voxel::{BlockPos, Ore, VoxelWorld};
use terrarium_engine::{
    Agent, AgentPath, Brain, BrainState, Goal, Inventory, NpcId, OreProfile, ParPool, Position, SimClock,
    Status,
};

use super::state::{Task, fail_task, transition};
use super::{AgentConfig, AgentEvents, Cause, MiningStats, PathStats};
use crate::mining::{DepositIndex, Miner, assign};
use crate::par;
use crate::pathfinding::{CacheKey, PathCache, SearchOutcome, Target, WalkRules, find_path};

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
pub(super) fn assign_deposits(
    mut agents: Query<ChooserData, With<Agent>>,
    mut index: ResMut<DepositIndex>,
    mut events: ResMut<AgentEvents>,
    mut stats: ResMut<MiningStats>,
    config: Res<AgentConfig>,
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
        transition(&mut events, tick, id, &mut brain, &mut status, to, cause);
    }
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
pub fn rules_of(brain: &Brain, config: &AgentConfig) -> WalkRules {
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
pub(super) fn plan_paths(
    mut agents: Query<PlannerData, With<Agent>>,
    world: Option<Res<VoxelWorld>>,
    mut cache: ResMut<PathCache>,
    mut index: ResMut<DepositIndex>,
    mut events: ResMut<AgentEvents>,
    mut stats: ResMut<PathStats>,
    mut mining: ResMut<MiningStats>,
    config: Res<AgentConfig>,
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
                transition(&mut events, tick, *id, &mut brain, &mut status, to, Cause::PathFound);
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
            Task { brain: &mut brain, path: &mut path, profile: &mut profile, status: &mut status };
        fail_task(
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
