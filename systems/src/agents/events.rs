//! [`AgentEvents`]: every transition of every agent's decision loop during the current tick.
//!
//! A plain per-tick queue, cleared when the next tick's `Decide` stage starts, so during `Record`
//! and `Flush` it holds exactly this tick's transitions, in the order they happened (stage by
//! stage, `NpcId` order within a stage). At the end of `Act`, the outcomes that matter to
//! storage (ore mined, loads handed in, tasks given up) are forwarded to the batching systems'
//! [`DomainEvents`] when they are present; state changes reach storage through `Status`.

use bevy_ecs::prelude::*;
use terrarium_engine::voxel::{BlockPos, Ore};
use terrarium_engine::{BrainState, NpcId};

use crate::batching::{DomainEvent, DomainEvents, Subject};

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
    /// It broke the deposit's block at this position and got this many items of this ore.
    Mined(Ore, u16, BlockPos),
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

impl Cause {
    /// Lower-case name, for logs and stored events.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Cause::Woke => "woke",
            Cause::Assigned(_) => "assigned",
            Cause::NoDeposit => "no_deposit",
            Cause::Outbid => "outbid",
            Cause::InventoryFull => "inventory_full",
            Cause::PathFound => "path_found",
            Cause::Unreachable => "unreachable",
            Cause::Blocked => "blocked",
            Cause::GaveUp => "gave_up",
            Cause::Arrived => "arrived",
            Cause::Mined(..) => "mined",
            Cause::DepositGone => "deposit_gone",
            Cause::Deposited(_) => "deposited",
            Cause::Ordered => "ordered",
        }
    }
}

/// The stored form of a transition, if storage cares: ore mined, a load handed in, a task
/// given up. Other transitions show up as `Status` changes.
#[must_use]
pub fn domain_event(event: &AgentEvent) -> Option<DomainEvent> {
    let task = |from: BrainState| if from == BrainState::Returning { "return" } else { "mine" };
    match event.cause {
        Cause::Mined(ore, items, at) => Some(DomainEvent::OreMined {
            ore: ore.item().0,
            amount: u32::from(items),
            at: [at.x, at.y, at.z],
        }),
        Cause::Deposited(_) => Some(DomainEvent::TaskCompleted { task: "deposit".into() }),
        Cause::Unreachable | Cause::GaveUp | Cause::DepositGone if event.to == BrainState::Idle => {
            Some(DomainEvent::TaskFailed { task: task(event.from).into(), reason: event.cause.name().into() })
        }
        _ => None,
    }
}

/// Hands this tick's outcomes to the batching systems (when they run in this engine).
pub(super) fn forward_to_storage(events: Res<AgentEvents>, queue: Option<ResMut<DomainEvents>>) {
    let Some(mut queue) = queue else { return };
    for e in &events.events {
        if let Some(d) = domain_event(e) {
            queue.emit(Subject::Npc(e.npc), d);
        }
    }
}
