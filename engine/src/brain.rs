//! Agents' decision state: what an agent is doing and why ([`Brain`]), the path it follows
//! ([`AgentPath`]) and what it has learned about ores ([`OreProfile`]).
//!
//! The decision loop that drives them lives in `terrarium_systems::agents`; the state lives here so
//! snapshots and `world_hash` cover it (a loaded world decides exactly as the saved one would).

use bevy_ecs::prelude::*;
use serde::{Deserialize, Serialize};

use crate::voxel::{BlockPos, Ore};

/// The step of the decision loop an agent is in:
/// `Idle → Choosing → Planning → Travelling → Mining → (Planning → Returning → Depositing) → Idle`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[repr(u8)]
pub enum BrainState {
    /// Waiting until [`Brain::wake_at`], then choosing a task.
    #[default]
    Idle,
    /// Waiting for the mining round to assign a deposit.
    Choosing,
    /// Waiting for a path to [`Brain::goal`].
    Planning,
    /// Walking to a deposit or an ordered point.
    Travelling,
    /// Breaking the deposit's block, until [`Brain::wake_at`].
    Mining,
    /// Walking back to a depot with a load.
    Returning,
    /// Handing the load in, until [`Brain::wake_at`].
    Depositing,
}

impl BrainState {
    /// Every state, in code order.
    pub const ALL: [BrainState; 7] = [
        BrainState::Idle,
        BrainState::Choosing,
        BrainState::Planning,
        BrainState::Travelling,
        BrainState::Mining,
        BrainState::Returning,
        BrainState::Depositing,
    ];

    /// Lower-case name.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            BrainState::Idle => "idle",
            BrainState::Choosing => "choosing",
            BrainState::Planning => "planning",
            BrainState::Travelling => "travelling",
            BrainState::Mining => "mining",
            BrainState::Returning => "returning",
            BrainState::Depositing => "depositing",
        }
    }
}

/// Where an agent is headed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Goal {
    /// Nowhere.
    #[default]
    None,
    /// The ore block at this position: reach it, then mine it.
    Deposit(BlockPos),
    /// The depot with this index in `VoxelWorld::depots`.
    Depot(u32),
    /// A cell the agent was ordered to walk to (`Order::MoveTo`).
    Point(BlockPos),
}

/// An agent's decision state. One per agent, added by [`crate::AgentBundle`].
#[derive(Component, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Brain {
    /// The step of the loop it is in.
    pub state: BrainState,
    /// What it is working towards.
    pub goal: Goal,
    /// Tick at which the current timed step (waiting, a walking step, mining, depositing) ends.
    pub wake_at: u64,
    /// Tool power, 1 ..= 8: a block of hardness `h` breaks in `h / tool` seconds.
    pub tool: u8,
    /// Times the current goal was replanned because its path was blocked.
    pub replans: u8,
    /// Tasks failed in a row; the wait after a failure grows with it.
    pub failures: u8,
    /// A deposit that recently failed and is not chosen again before [`Brain::avoid_until`].
    pub avoid: BlockPos,
    /// Tick until which [`Brain::avoid`] is skipped (0: nothing avoided).
    pub avoid_until: u64,
}

impl Default for Brain {
    fn default() -> Self {
        Self {
            state: BrainState::Idle,
            goal: Goal::None,
            wake_at: 0,
            tool: 1,
            replans: 0,
            failures: 0,
            avoid: BlockPos::default(),
            avoid_until: 0,
        }
    }
}

impl Brain {
    /// An idle brain with a tool of power `tool` (clamped to 1 ..= 8) that wakes at `wake_at`.
    #[must_use]
    pub fn with_tool(tool: u8, wake_at: u64) -> Self {
        Self { tool: tool.clamp(1, 8), wake_at, ..Self::default() }
    }
}

/// The path an agent follows: feet cells, start excluded, goal last. Empty when it has none.
#[derive(Component, Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AgentPath {
    /// The cells, in walking order.
    pub cells: Vec<BlockPos>,
    /// Index in `cells` of the next cell to step into (`cells.len()`: arrived).
    pub next: u32,
}

impl AgentPath {
    /// The next cell to step into, if any is left.
    #[must_use]
    pub fn next_cell(&self) -> Option<BlockPos> {
        self.cells.get(self.next as usize).copied()
    }

    /// True when every cell has been walked.
    #[must_use]
    pub fn arrived(&self) -> bool {
        self.next as usize >= self.cells.len()
    }

    /// Forgets the path (keeps the allocation).
    pub fn clear(&mut self) {
        self.cells.clear();
        self.next = 0;
    }
}

/// What an agent learned about one ore kind from its own attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct OreStats {
    /// Tasks started for this ore (assigned deposits).
    pub attempts: u32,
    /// Tasks that ended with ore mined.
    pub successes: u32,
    /// Items mined in those successes.
    pub items: u32,
}

/// An agent's learning profile: per ore kind, how often its tasks succeed and how much they
/// yield. The mining round scores deposits with it, so an agent drifts towards the ores that
/// work for it.
///
/// # Examples
/// ```
/// use terrarium_engine::{OreProfile, voxel::Ore};
/// let mut p = OreProfile::default();
/// let prior = p.success_rate(Ore::Gold);
/// p.record_failure(Ore::Gold);
/// assert!(p.success_rate(Ore::Gold) < prior);
/// p.record_success(Ore::Iron, 3);
/// assert!(p.expected_yield(Ore::Iron) > Ore::Iron.mean_yield());
/// ```
#[derive(Component, Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct OreProfile {
    /// Per ore, indexed by [`Ore::index`].
    pub stats: [OreStats; Ore::COUNT],
}

impl OreProfile {
    /// Weight of the prior (in pseudo-attempts) against the agent's own outcomes.
    const PRIOR: f32 = 2.0;

    /// Estimated chance that a task for `ore` succeeds: Laplace-smoothed, 0.5 with no history.
    #[must_use]
    pub fn success_rate(&self, ore: Ore) -> f32 {
        let s = self.stats[ore.index()];
        (s.successes as f32 + 1.0) / (s.attempts as f32 + Self::PRIOR)
    }

    /// Estimated items per success for `ore`: the ore's mean yield blended with what the agent got.
    #[must_use]
    pub fn expected_yield(&self, ore: Ore) -> f32 {
        let s = self.stats[ore.index()];
        (s.items as f32 + Self::PRIOR * ore.mean_yield()) / (s.successes as f32 + Self::PRIOR)
    }

    /// Counts a task for `ore` that ended with `items` mined.
    pub fn record_success(&mut self, ore: Ore, items: u16) {
        let s = &mut self.stats[ore.index()];
        s.attempts = s.attempts.saturating_add(1);
        s.successes = s.successes.saturating_add(1);
        s.items = s.items.saturating_add(u32::from(items));
    }

    /// Counts a task for `ore` that failed (unreachable, blocked, gone).
    pub fn record_failure(&mut self, ore: Ore) {
        let s = &mut self.stats[ore.index()];
        s.attempts = s.attempts.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_learns_from_outcomes() {
        let mut p = OreProfile::default();
        assert!((p.success_rate(Ore::Coal) - 0.5).abs() < 1e-6);
        for _ in 0..8 {
            p.record_success(Ore::Coal, 5);
        }
        for _ in 0..8 {
            p.record_failure(Ore::Diamond);
        }
        assert!(p.success_rate(Ore::Coal) > 0.85);
        assert!(p.success_rate(Ore::Diamond) < 0.15);
        assert!(p.expected_yield(Ore::Coal) > 4.0 && p.expected_yield(Ore::Coal) <= 5.0);
        assert!((p.expected_yield(Ore::Diamond) - 1.0).abs() < 1e-6, "no successes: the prior");
    }

    #[test]
    fn path_walks_to_the_end() {
        let mut path = AgentPath { cells: vec![BlockPos::new(1, 0, 0), BlockPos::new(2, 0, 0)], next: 0 };
        assert_eq!(path.next_cell(), Some(BlockPos::new(1, 0, 0)));
        path.next = 2;
        assert!(path.arrived() && path.next_cell().is_none());
        path.clear();
        assert!(path.arrived());
    }
}
