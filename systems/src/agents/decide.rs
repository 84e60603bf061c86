//! The `Decide` stage: the deposit index follows the voxel world, orders are taken, and every
//! due agent takes its next decision (wake, arrive, mine, hand a load in), in `NpcId` order.

use bevy_ecs::prelude::*;
use terrarium_engine::rng::hash3;
use terrarium_engine::voxel::{Block, BlockPos, Ore, VoxelWorld};
use terrarium_engine::{
    Agent, AgentPath, Brain, BrainState, Goal, Inventory, MoveTarget, NpcId, OreProfile, ParPool, Position,
    SimClock, SimRng, Status,
};

use super::state::{Task, fail_task, secs_to_ticks, transition};
use super::{AgentConfig, AgentEvents, Cause, MiningStats};
use crate::mining::DepositIndex;
use crate::pathfinding::Target;

/// Builds the deposit index when a voxel world appears (or is replaced), with claims taken
/// from the agents' goals; clears last tick's events.
pub(super) fn sync_deposits(
    world: Option<Res<VoxelWorld>>,
    mut index: ResMut<DepositIndex>,
    mut events: ResMut<AgentEvents>,
    brains: Query<&Brain, With<Agent>>,
    pool: Res<ParPool>,
) {
    events.clear();
    let Some(world) = world else { return };
    if world.is_added() {
        *index = DepositIndex::build(&pool, &world);
        let mut claims: Vec<BlockPos> = brains
            .iter()
            .filter_map(|b| if let Goal::Deposit(p) = b.goal { Some(p) } else { None })
            .collect();
        claims.sort_unstable();
        for p in claims {
            index.claim(p);
        }
    }
}

type OrderData = (
    &'static NpcId,
    &'static Position,
    &'static MoveTarget,
    &'static mut Brain,
    &'static mut AgentPath,
    &'static mut Status,
);

/// Agents ordered to walk somewhere (`Order::MoveTo`) drop their task and plan a path there.
pub(super) fn take_orders(
    mut agents: Query<OrderData, With<Agent>>,
    mut index: ResMut<DepositIndex>,
    mut events: ResMut<AgentEvents>,
    clock: Res<SimClock>,
) {
    let mut ordered: Vec<_> = agents
        .iter_mut()
        .filter(|(_, _, t, b, ..)| b.goal != Goal::Point(BlockPos::containing(t.0)))
        .collect();
    ordered.sort_unstable_by_key(|o| *o.0);
    for (id, _, target, mut brain, mut path, mut status) in ordered {
        if let Goal::Deposit(p) = brain.goal {
            index.release(p);
        }
        brain.goal = Goal::Point(BlockPos::containing(target.0));
        brain.wake_at = clock.tick;
        brain.replans = 0;
        path.clear();
        transition(
            &mut events,
            clock.tick,
            *id,
            &mut brain,
            &mut status,
            BrainState::Planning,
            Cause::Ordered,
        );
    }
}

type AgentData = (
    Entity,
    &'static NpcId,
    &'static Position,
    &'static mut Brain,
    &'static mut AgentPath,
    &'static mut Inventory,
    &'static mut OreProfile,
    &'static mut Status,
    Has<MoveTarget>,
);

/// True when the agent has something to decide this tick.
fn is_due(brain: &Brain, path: &AgentPath, tick: u64, has_order: bool) -> bool {
    if matches!(brain.goal, Goal::Point(_)) && !has_order {
        return true;
    }
    match brain.state {
        BrainState::Idle | BrainState::Mining | BrainState::Depositing => tick >= brain.wake_at,
        BrainState::Travelling | BrainState::Returning => path.arrived() && tick >= brain.wake_at,
        BrainState::Choosing | BrainState::Planning => false,
    }
}

/// The `Decide` stage: every due agent takes its next decision, in `NpcId` order.
#[expect(clippy::too_many_arguments, reason = "a system's parameters are its data dependencies")]
pub(super) fn decide(
    mut agents: Query<AgentData, With<Agent>>,
    world: Option<ResMut<VoxelWorld>>,
    mut index: ResMut<DepositIndex>,
    mut events: ResMut<AgentEvents>,
    mut stats: ResMut<MiningStats>,
    config: Res<AgentConfig>,
    clock: Res<SimClock>,
    rng: Res<SimRng>,
    mut commands: Commands,
) {
    let Some(mut world) = world else { return };
    let tick = clock.tick;
    let mut due: Vec<(NpcId, Entity)> = agents
        .iter()
        .filter(|(_, _, _, b, p, .., has_order)| is_due(b, p, tick, *has_order))
        .map(|(e, id, ..)| (*id, e))
        .collect();
    due.sort_unstable_by_key(|d| d.0);
    let hz = u64::from(clock.tick_hz);
    for (id, e) in due {
        let Ok((_, _, pos, mut brain, mut path, mut inv, mut profile, mut status, has_order)) =
            agents.get_mut(e)
        else {
            continue;
        };
        let cell = BlockPos::containing(*pos);
        let (brain, path, inv, profile, status) =
            (&mut *brain, &mut *path, &mut *inv, &mut *profile, &mut *status);
        if matches!(brain.goal, Goal::Point(_)) && (!has_order || path.arrived()) {
            if has_order && path.arrived() && brain.state == BrainState::Travelling {
                commands.entity(e).remove::<MoveTarget>();
            }
            brain.goal = Goal::None;
            brain.wake_at = tick + 1;
            path.clear();
            let cause = if has_order { Cause::Arrived } else { Cause::Ordered };
            transition(&mut events, tick, id, brain, status, BrainState::Idle, cause);
            continue;
        }
        // Each step either succeeds or ends the task for a reason, handled once below.
        let outcome: Result<(), Cause> = 'agent: {
            match brain.state {
                BrainState::Idle => {
                    if full(inv, &config) {
                        head_home(brain, status, cell, tick, &world, &mut events, id, Cause::InventoryFull);
                    } else {
                        transition(&mut events, tick, id, brain, status, BrainState::Choosing, Cause::Woke);
                    }
                }
                BrainState::Travelling => {
                    let Goal::Deposit(p) = brain.goal else {
                        brain.goal = Goal::None;
                        transition(&mut events, tick, id, brain, status, BrainState::Idle, Cause::Arrived);
                        break 'agent Ok(());
                    };
                    let Some(ore) = world.get(p).ore() else {
                        break 'agent Err(Cause::DepositGone);
                    };
                    if !Target::Reach(p).is_met(cell) {
                        brain.wake_at = tick;
                        transition(
                            &mut events,
                            tick,
                            id,
                            brain,
                            status,
                            BrainState::Planning,
                            Cause::Blocked,
                        );
                        break 'agent Ok(());
                    }
                    let hardness = ore.block().hardness().expect("ores break");
                    brain.wake_at = tick + secs_to_ticks(hardness / f32::from(brain.tool.max(1)), hz);
                    transition(&mut events, tick, id, brain, status, BrainState::Mining, Cause::Arrived);
                }
                BrainState::Mining => {
                    let Goal::Deposit(p) = brain.goal else {
                        transition(
                            &mut events,
                            tick,
                            id,
                            brain,
                            status,
                            BrainState::Idle,
                            Cause::DepositGone,
                        );
                        break 'agent Ok(());
                    };
                    let (Some(ore), true) = (world.get(p).ore(), Target::Reach(p).is_met(cell)) else {
                        break 'agent Err(Cause::DepositGone);
                    };
                    let (lo, hi) = ore.yield_range();
                    let roll = hash3(rng.seed() ^ 0x4D49_4E45, id.0, tick) % u64::from(hi - lo + 1);
                    let items =
                        (lo + roll as u16).min(u16::try_from(inv.room_for(ore.item())).unwrap_or(u16::MAX));
                    inv.add(ore.item(), items);
                    world.set(p, Block::Air);
                    index.remove(p);
                    profile.record_success(ore, items);
                    stats.ore_mined[ore.index()] += u64::from(items);
                    stats.blocks_mined += 1;
                    brain.failures = 0;
                    brain.goal = Goal::None;
                    path.clear();
                    if full(inv, &config) {
                        head_home(
                            brain,
                            status,
                            cell,
                            tick,
                            &world,
                            &mut events,
                            id,
                            Cause::Mined(ore, items, p),
                        );
                    } else {
                        transition(
                            &mut events,
                            tick,
                            id,
                            brain,
                            status,
                            BrainState::Choosing,
                            Cause::Mined(ore, items, p),
                        );
                    }
                }
                BrainState::Returning => {
                    brain.wake_at = tick + config.deposit_ticks;
                    transition(&mut events, tick, id, brain, status, BrainState::Depositing, Cause::Arrived);
                }
                BrainState::Depositing => {
                    let mut total = 0u32;
                    let depot = if let Goal::Depot(i) = brain.goal { Some(i as usize) } else { None };
                    for s in inv.take_all() {
                        let Some(ore) = Ore::from_item(s.kind) else { continue };
                        total += u32::from(s.count);
                        stats.ore_deposited[ore.index()] += u64::from(s.count);
                        if let Some(d) = depot.and_then(|i| world.depots_mut().get_mut(i)) {
                            d.stock[ore.index()] += u64::from(s.count);
                        }
                    }
                    brain.goal = Goal::None;
                    brain.wake_at = tick + 1;
                    path.clear();
                    transition(
                        &mut events,
                        tick,
                        id,
                        brain,
                        status,
                        BrainState::Idle,
                        Cause::Deposited(total),
                    );
                }
                BrainState::Choosing | BrainState::Planning => {}
            }
            Ok(())
        };
        if let Err(cause) = outcome {
            let mut task = Task { brain, path, profile, status };
            fail_task(&mut task, id, cause, tick, &world, &mut index, &mut events, &mut stats, &config);
        }
    }
}

/// True when the inventory is full enough to go back.
fn full(inv: &Inventory, config: &AgentConfig) -> bool {
    inv.is_full() || inv.total() as f32 >= config.return_at * Inventory::CAPACITY as f32
}

/// Sends the agent to plan a path to its nearest depot (or to wait when there is none).
#[expect(clippy::too_many_arguments, reason = "the pieces of one transition")]
fn head_home(
    brain: &mut Brain,
    status: &mut Status,
    cell: BlockPos,
    tick: u64,
    world: &VoxelWorld,
    events: &mut AgentEvents,
    id: NpcId,
    cause: Cause,
) {
    match world.nearest_depot(cell) {
        Some(i) => {
            brain.goal = Goal::Depot(u32::try_from(i).expect("fewer than 2³² depots"));
            brain.wake_at = tick;
            brain.replans = 0;
            transition(events, tick, id, brain, status, BrainState::Planning, cause);
        }
        None => {
            brain.wake_at = tick + 100;
            transition(events, tick, id, brain, status, BrainState::Idle, Cause::Unreachable);
        }
    }
}
