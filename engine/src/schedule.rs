//! The tick's stages, in their fixed order, and what each one cost.

use std::time::{Duration, Instant};

use bevy_ecs::prelude::*;
use bevy_ecs::schedule::ScheduleLabel;
use serde::{Deserialize, Serialize};

/// The stages of a tick. They always run in this order, each to completion before the next:
/// `Input → Decide → Plan → Act → Record → Flush`.
///
/// Systems join a stage with [`crate::Engine::add_systems`]. Within a stage they run on one
/// thread, one after the other; parallel work happens inside systems, on the engine's worker
/// pool. bevy promises no order between systems that are not ordered explicitly (not the order
/// they were added in), so any two systems of a stage that touch the same data, one of them
/// writing, must be ordered with `.before`, `.after` or `.chain`;
/// [`crate::Engine::check_system_order`] fails when two are not.
#[derive(ScheduleLabel, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TickSet {
    /// Apply what arrived from outside (commands, orders).
    Input,
    /// Agents choose what to do.
    Decide,
    /// Plan how to do it (pathfinding, mining assignment).
    Plan,
    /// Change the world (movement, mining).
    Act,
    /// Collect what changed (batching).
    Record,
    /// Hand finished batches to persistence.
    Flush,
}

impl TickSet {
    /// Every stage, in run order.
    pub const ALL: [TickSet; 6] =
        [TickSet::Input, TickSet::Decide, TickSet::Plan, TickSet::Act, TickSet::Record, TickSet::Flush];

    /// Lower-case name, for metrics and logs.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            TickSet::Input => "input",
            TickSet::Decide => "decide",
            TickSet::Plan => "plan",
            TickSet::Act => "act",
            TickSet::Record => "record",
            TickSet::Flush => "flush",
        }
    }

    /// Position in [`TickSet::ALL`].
    #[must_use]
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Wall-clock time spent in each stage. Measured around the stages by the engine (no system reads
/// the clock), for metrics only: nothing in the simulation depends on it.
#[derive(Resource, Debug, Clone, Default, PartialEq)]
pub struct StageTimings {
    /// Time of each stage during the last tick, indexed by [`TickSet::index`].
    pub last: [Duration; 6],
    /// Time of each stage summed over every tick so far.
    pub total: [Duration; 6],
    /// Time of the last whole tick, command application included.
    pub last_tick: Duration,
    /// Ticks measured.
    pub ticks: u64,
    /// When the last tick started (`None` before the first), so observers can tell the rate
    /// ticks actually run at, pauses between them included.
    pub last_started: Option<Instant>,
}
