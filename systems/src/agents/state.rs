//! The agents' state machine: how a decision state shows to observers ([`status_of`]), the one
//! way to change state ([`transition`], which records the event), and giving a task up
//! ([`fail_task`]). Every stage changes state through these.

use terrarium_engine::voxel::VoxelWorld;
use terrarium_engine::{AgentPath, Brain, BrainState, Goal, NpcId, OreProfile, Status};

use super::{AgentConfig, AgentEvent, AgentEvents, Cause, MiningStats};
use crate::mining::DepositIndex;

/// The status observers see for a decision state.
#[must_use]
pub fn status_of(state: BrainState, goal: Goal) -> Status {
    match state {
        BrainState::Idle | BrainState::Choosing => Status::Idle,
        BrainState::Planning if matches!(goal, Goal::Depot(_)) => Status::Returning,
        BrainState::Planning | BrainState::Travelling => Status::Moving,
        BrainState::Mining => Status::Mining,
        BrainState::Returning => Status::Returning,
        BrainState::Depositing => Status::Depositing,
    }
}

/// Moves `brain` to `to`, keeps `status` in step and records the event.
pub(super) fn transition(
    events: &mut AgentEvents,
    tick: u64,
    npc: NpcId,
    brain: &mut Brain,
    status: &mut Status,
    to: BrainState,
    cause: Cause,
) {
    events.push(AgentEvent { tick, npc, from: brain.state, to, cause });
    brain.state = to;
    let s = status_of(to, brain.goal);
    if *status != s {
        *status = s;
    }
}

/// The mutable parts of one agent a task failure touches.
pub(super) struct Task<'a> {
    pub brain: &'a mut Brain,
    pub path: &'a mut AgentPath,
    pub profile: &'a mut OreProfile,
    pub status: &'a mut Status,
}

/// Gives the current task up: the ore kind counts a failure in the profile, the deposit is
/// released (and avoided for a while), and the agent waits longer the more it failed in a row.
#[expect(clippy::too_many_arguments, reason = "everything a failure touches")]
pub(super) fn fail_task(
    task: &mut Task<'_>,
    npc: NpcId,
    cause: Cause,
    tick: u64,
    world: &VoxelWorld,
    index: &mut DepositIndex,
    events: &mut AgentEvents,
    stats: &mut MiningStats,
    config: &AgentConfig,
) {
    stats.failed_tasks += 1;
    if let Goal::Deposit(p) = task.brain.goal {
        index.release(p);
        match world.get(p).ore() {
            Some(ore) => task.profile.record_failure(ore),
            None => {
                index.remove(p);
            }
        }
        task.brain.avoid = p;
        task.brain.avoid_until = tick + config.avoid_ticks;
    }
    task.brain.failures = task.brain.failures.saturating_add(1);
    task.brain.wake_at = tick + config.retry_ticks * u64::from(task.brain.failures.min(8));
    task.brain.goal = Goal::None;
    task.brain.replans = 0;
    task.path.clear();
    transition(events, tick, npc, task.brain, task.status, BrainState::Idle, cause);
}

/// Whole ticks (at least one) that `secs` simulated seconds take at `hz` ticks per second.
pub(super) fn secs_to_ticks(secs: f32, hz: u64) -> u64 {
    ((secs * hz as f32).ceil() as u64).max(1)
}
