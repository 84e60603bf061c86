//! What a new NPC looks like: [`NpcSpec`] and the component bundles built from it.

use bevy_ecs::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{
    Agent, AgentPath, Brain, Health, Inventory, NpcId, OreProfile, Position, Role, Status, Swarm, Velocity,
    Wander,
};

/// Everything needed to spawn an NPC. Start from [`NpcSpec::new`] and change what you need.
///
/// # Examples
/// ```
/// use terrarium_engine::{Engine, EngineConfig, NpcSpec, Position, Role};
/// let mut engine = Engine::builder(EngineConfig::default()).build().unwrap();
/// let id = engine.spawn_npc(NpcSpec::new(Role::Guard, Position::new(10.0, 0.0, 10.0)).in_swarm(3));
/// assert_eq!(engine.npc_count(), 1);
/// assert!(engine.entity(id).is_some());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NpcSpec {
    /// Role.
    pub role: Role,
    /// Starting position (clamped into the world bounds when spawned).
    pub position: Position,
    /// Starting velocity.
    pub velocity: Velocity,
    /// Starting status.
    pub status: Status,
    /// Starting health.
    pub health: Health,
    /// Starting inventory.
    pub inventory: Inventory,
    /// Swarm, or [`Swarm::NONE`].
    pub swarm: Swarm,
    /// True for an agent (an NPC with a brain); false for a plain, wandering NPC.
    pub agent: bool,
}

impl NpcSpec {
    /// An idle, unhurt, empty-handed plain NPC.
    #[must_use]
    pub fn new(role: Role, position: Position) -> Self {
        Self {
            role,
            position,
            velocity: Velocity::ZERO,
            status: Status::Idle,
            health: Health::default(),
            inventory: Inventory::default(),
            swarm: Swarm::NONE,
            agent: false,
        }
    }

    /// The same NPC with a brain.
    #[must_use]
    pub fn as_agent(mut self) -> Self {
        self.agent = true;
        self
    }

    /// The same NPC in swarm `swarm`.
    #[must_use]
    pub fn in_swarm(mut self, swarm: u32) -> Self {
        self.swarm = Swarm(swarm);
        self
    }

    /// The same NPC moving at `velocity` (and with status `Moving` when it is not zero).
    #[must_use]
    pub fn moving(mut self, velocity: Velocity) -> Self {
        self.velocity = velocity;
        if !velocity.is_zero() {
            self.status = Status::Moving;
        }
        self
    }
}

/// The components every NPC has, written once: `field: snapshot column: type = "doc"`, in the
/// order the snapshot stores them. [`NpcBundle`] and the snapshot's columns (gather, length
/// check, restore) are generated from this list, so a component added here is spawned, saved
/// and restored everywhere (and the compiler points at the few places that fill it in).
macro_rules! npc_components {
    ($then:ident) => {
        $then! {
            id: ids: NpcId = "Identity.",
            position: positions: Position = "Position.",
            velocity: velocities: Velocity = "Velocity.",
            role: roles: Role = "Role.",
            status: statuses: Status = "Status.",
            health: healths: Health = "Health.",
            inventory: inventories: Inventory = "Inventory.",
            swarm: swarms: Swarm = "Swarm.",
        }
    };
}
pub(crate) use npc_components;

macro_rules! npc_bundle {
    ($($field:ident: $column:ident: $ty:ty = $doc:literal,)*) => {
        /// The components every NPC has.
        #[derive(Bundle, Clone, Copy)]
        pub struct NpcBundle {
            $(#[doc = $doc] pub $field: $ty,)*
        }
    };
}
npc_components!(npc_bundle);

impl NpcBundle {
    /// The bundle of `spec` under `id`.
    #[must_use]
    pub fn new(id: NpcId, spec: &NpcSpec) -> Self {
        Self {
            id,
            position: spec.position,
            velocity: spec.velocity,
            role: spec.role,
            status: spec.status,
            health: spec.health,
            inventory: spec.inventory,
            swarm: spec.swarm,
        }
    }
}

/// A plain NPC: the common components plus wandering.
#[derive(Bundle, Clone, Copy)]
pub struct PlainNpcBundle {
    /// Common components.
    pub npc: NpcBundle,
    /// Wander state.
    pub wander: Wander,
}

/// An agent: the common components, the [`Agent`] marker and the decision state the AI systems
/// drive (an idle [`Brain`], no path, an empty learning profile).
#[derive(Bundle, Clone)]
pub struct AgentBundle {
    /// Common components.
    pub npc: NpcBundle,
    /// Marker.
    pub agent: Agent,
    /// Decision state.
    pub brain: Brain,
    /// The path being followed.
    pub path: AgentPath,
    /// What it learned about ores.
    pub profile: OreProfile,
}

impl AgentBundle {
    /// A fresh agent with the common components `npc`.
    #[must_use]
    pub fn new(npc: NpcBundle) -> Self {
        Self {
            npc,
            agent: Agent,
            brain: Brain::default(),
            path: AgentPath::default(),
            profile: OreProfile::default(),
        }
    }
}
