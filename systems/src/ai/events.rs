//! [`AgentEvents`]: every transition of every agent's decision loop during the current tick.
//!
//! A plain per-tick queue for now: the batching systems turn it into persisted events. It is
//! cleared when the next tick's `Decide` stage starts, so during `Record` and `Flush` it holds
//! exactly this tick's transitions, in the order they happened (stage by stage, `NpcId` order
//! within a stage).

use bevy_ecs::prelude::*;
use terrarium_engine::voxel::{BlockPos, Ore};
use terrarium_engine::{BrainState, NpcId};

/// Why an agent changed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Cause {
    /// Its wait ended; it looks for a task.
    Woke,
    /// The mining round gave it this deposit.
    Assigned(BlockPos),
    /// No deposit worth having is within reach.
    NoDeposit,
    /// It had candidates, but other miners got them this round.
    Outbid,
    /// Its inventory is full enough to head for a depot.
    InventoryFull,
    /// A path was found (or came from the cache).
    PathFound,
    /// No path to the goal (search exhausted or over budget).
    Unreachable,
    /// The next step of its path is no longer walkable; it will replan.
    Blocked,
    /// Blocked too often: it gave the task up.
    GaveUp,
    /// It reached the end of its path.
    Arrived,
    /// It broke the deposit's block and got this many items of this ore.
    Mined(Ore, u16),
    /// The deposit was gone (mined or changed) when it got there.
    DepositGone,
    /// It handed this many items in at a depot.
    Deposited(u32),
    /// It got an order (`Order::MoveTo`); its task was dropped.
    Ordered,
}

/// One transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AgentEvent {
    /// Tick it happened in.
    pub tick: u64,
    /// The agent.
    pub npc: NpcId,
    /// State before.
    pub from: BrainState,
    /// State after.
    pub to: BrainState,
    /// Why.
    pub cause: Cause,
}

/// This tick's transitions (a resource).
#[derive(Resource, Debug, Default, Clone)]
pub struct AgentEvents {
    events: Vec<AgentEvent>,
}

impl AgentEvents {
    /// The transitions, in order.
    #[must_use]
    pub fn events(&self) -> &[AgentEvent] {
        &self.events
    }

    /// Records a transition.
    pub fn push(&mut self, event: AgentEvent) {
        self.events.push(event);
    }

    /// Forgets everything (done at the start of each tick).
    pub fn clear(&mut self) {
        self.events.clear();
    }
}
