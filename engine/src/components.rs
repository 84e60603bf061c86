//! NPC components: identity, kinematics, role, status, inventory, health, swarm, agent brain.
//!
//! All of them are plain `Copy` data with a fixed size, so a million NPCs sit in one dense table
//! and snapshot as columns. Units: positions in blocks, velocities in blocks per second.

use bevy_ecs::prelude::*;
use bytemuck::{Pod, Zeroable};
use serde::{Deserialize, Serialize};

/// Stable identity of an NPC, unique for the life of a world (also across snapshots).
///
/// Ids are handed out by the engine in increasing order; they are never reused.
///
/// `repr(transparent)` and `Pod`, so a column of ids can be copied as plain `u64`s.
#[derive(
    Component, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Pod, Zeroable,
)]
#[repr(transparent)]
pub struct NpcId(pub u64);

impl std::fmt::Display for NpcId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "npc#{}", self.0)
    }
}

/// Where an NPC stands, in blocks. `y` is up.
///
/// `repr(C)` and `Pod`, so the movement pass can treat a column of positions as one flat `[f32]`.
#[derive(Component, Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize, Pod, Zeroable)]
#[repr(C)]
pub struct Position {
    /// East-west, blocks.
    pub x: f32,
    /// Height, blocks.
    pub y: f32,
    /// North-south, blocks.
    pub z: f32,
}

impl Position {
    /// A position from its three coordinates.
    #[must_use]
    pub const fn new(x: f32, y: f32, z: f32) -> Self {
        Self { x, y, z }
    }

    /// Euclidean distance to `other`, in blocks.
    #[must_use]
    pub fn distance(self, other: Self) -> f32 {
        let (dx, dy, dz) = (self.x - other.x, self.y - other.y, self.z - other.z);
        (dx * dx + dy * dy + dz * dz).sqrt()
    }
}

/// How fast an NPC moves, in blocks per second. `repr(C)` and `Pod`, like [`Position`].
#[derive(Component, Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize, Pod, Zeroable)]
#[repr(C)]
pub struct Velocity {
    /// Blocks per second along x.
    pub x: f32,
    /// Blocks per second along y.
    pub y: f32,
    /// Blocks per second along z.
    pub z: f32,
}

impl Velocity {
    /// Standing still.
    pub const ZERO: Self = Self { x: 0.0, y: 0.0, z: 0.0 };

    /// A velocity from its three components.
    #[must_use]
    pub const fn new(x: f32, y: f32, z: f32) -> Self {
        Self { x, y, z }
    }

    /// True when every component is zero.
    #[must_use]
    pub fn is_zero(self) -> bool {
        self.x == 0.0 && self.y == 0.0 && self.z == 0.0
    }
}

/// What an NPC does for a living. `Other(n)` is free for game-specific roles.
#[derive(Component, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[component(summary_tick)]
pub enum Role {
    /// Mines ore and brings it to a depot.
    Miner,
    /// Places blocks.
    Builder,
    /// Protects an area.
    Guard,
    /// Moves goods between depots.
    Trader,
    /// Explores.
    Scout,
    /// A game-specific role.
    Other(u16),
}

impl Role {
    /// The five built-in roles, in a fixed order (used to pick roles from a seed).
    pub const BUILT_IN: [Role; 5] = [Role::Miner, Role::Builder, Role::Guard, Role::Trader, Role::Scout];

    /// A small number that identifies the role in hashes and wire formats.
    #[must_use]
    pub fn code(self) -> u32 {
        match self {
            Role::Miner => 0,
            Role::Builder => 1,
            Role::Guard => 2,
            Role::Trader => 3,
            Role::Scout => 4,
            Role::Other(n) => 0x1_0000 | u32::from(n),
        }
    }

    /// Lower-case name (`"miner"`, …, `"other:7"`).
    #[must_use]
    pub fn name(self) -> String {
        match self {
            Role::Other(n) => format!("other:{n}"),
            known => known.static_name().unwrap_or_default().into(),
        }
    }

    /// The name of a built-in role without allocating; `None` for [`Role::Other`].
    pub fn static_name(self) -> Option<&'static str> {
        match self {
            Role::Miner => Some("miner"),
            Role::Builder => Some("builder"),
            Role::Guard => Some("guard"),
            Role::Trader => Some("trader"),
            Role::Scout => Some("scout"),
            Role::Other(_) => None,
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "miner" => Ok(Role::Miner),
            "builder" => Ok(Role::Builder),
            "guard" => Ok(Role::Guard),
            "trader" => Ok(Role::Trader),
            "scout" => Ok(Role::Scout),
            other => {
                other.strip_prefix("other:").and_then(|n| n.parse().ok()).map(Role::Other).ok_or_else(|| {
                    format!("unknown role {other:?} (miner, builder, guard, trader, scout, other:N)")
                })
            }
        }
    }
}

/// What an NPC is doing right now.
#[derive(
    Component, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[repr(u8)]
#[component(summary_tick)]
pub enum Status {
    /// Standing around, waiting for something to do.
    #[default]
    Idle,
    /// Walking somewhere.
    Moving,
    /// Breaking a block.
    Mining,
    /// Walking back to a depot with a load.
    Returning,
    /// Handing a load over at a depot.
    Depositing,
    /// Running from danger.
    Fleeing,
    /// Out of health; waits to be despawned.
    Dead,
}

impl Status {
    /// Every status, in code order.
    pub const ALL: [Status; 7] = [
        Status::Idle,
        Status::Moving,
        Status::Mining,
        Status::Returning,
        Status::Depositing,
        Status::Fleeing,
        Status::Dead,
    ];

    /// Lower-case name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Status::Idle => "idle",
            Status::Moving => "moving",
            Status::Mining => "mining",
            Status::Returning => "returning",
            Status::Depositing => "depositing",
            Status::Fleeing => "fleeing",
            Status::Dead => "dead",
        }
    }
}

impl std::str::FromStr for Status {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL.into_iter().find(|st| st.name() == s).ok_or_else(|| {
            format!("unknown status {s:?} (idle, moving, mining, returning, depositing, fleeing, dead)")
        })
    }
}

/// Hit points. `current` never exceeds `max`.
#[derive(Component, Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[component(summary_tick)]
pub struct Health {
    /// Hit points left.
    pub current: u16,
    /// Hit points when unhurt.
    pub max: u16,
}

impl Default for Health {
    fn default() -> Self {
        Self { current: 100, max: 100 }
    }
}

/// Swarm membership: NPCs of one swarm act as a group. `Swarm::NONE` (0) means no swarm.
#[derive(
    Component, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[component(summary_tick)]
pub struct Swarm(pub u32);

impl Swarm {
    /// Not in any swarm.
    pub const NONE: Swarm = Swarm(0);
}

/// A kind of item (ore, tool, block). `ItemKind(0)` is "nothing".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct ItemKind(pub u16);

/// Some items of one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct ItemStack {
    /// What the stack holds; `ItemKind(0)` for an empty slot.
    pub kind: ItemKind,
    /// How many, at most [`Inventory::STACK_MAX`].
    pub count: u16,
}

/// A fixed number of stacks; nothing on the heap, so an inventory costs 16 bytes.
#[derive(Component, Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[component(summary_tick)]
pub struct Inventory {
    /// The slots; an empty slot has kind 0 and count 0.
    pub stacks: [ItemStack; Inventory::SLOTS],
}

impl Inventory {
    /// Number of slots.
    pub const SLOTS: usize = 4;
    /// Most items one stack holds.
    pub const STACK_MAX: u16 = 64;
    /// Most items an inventory holds.
    pub const CAPACITY: u32 = Self::SLOTS as u32 * Self::STACK_MAX as u32;

    /// Adds up to `count` items of `kind`; returns how many did not fit.
    pub fn add(&mut self, kind: ItemKind, mut count: u16) -> u16 {
        if kind.0 == 0 {
            return count;
        }
        // Top up stacks of the same kind first, then use empty slots, in slot order.
        for pass_empty in [false, true] {
            for s in &mut self.stacks {
                if count == 0 {
                    return 0;
                }
                let usable = if pass_empty { s.count == 0 } else { s.kind == kind && s.count > 0 };
                if usable {
                    let room = Self::STACK_MAX - s.count;
                    let moved = room.min(count);
                    s.kind = kind;
                    s.count += moved;
                    count -= moved;
                }
            }
        }
        count
    }

    /// Removes and returns every stack, leaving the inventory empty.
    pub fn take_all(&mut self) -> [ItemStack; Self::SLOTS] {
        std::mem::take(&mut self.stacks)
    }

    /// Items held, all kinds together.
    #[must_use]
    pub fn total(&self) -> u32 {
        self.stacks.iter().map(|s| u32::from(s.count)).sum()
    }

    /// Items of one kind.
    #[must_use]
    pub fn count_of(&self, kind: ItemKind) -> u32 {
        self.stacks.iter().filter(|s| s.kind == kind).map(|s| u32::from(s.count)).sum()
    }

    /// How many more items of `kind` would fit.
    #[must_use]
    pub fn room_for(&self, kind: ItemKind) -> u32 {
        self.stacks
            .iter()
            .map(|s| {
                if s.count == 0 {
                    u32::from(Self::STACK_MAX)
                } else if s.kind == kind {
                    u32::from(Self::STACK_MAX - s.count)
                } else {
                    0
                }
            })
            .sum()
    }

    /// True when every stack is full: nothing more fits, of any kind.
    #[must_use]
    pub fn is_full(&self) -> bool {
        self.stacks.iter().all(|s| s.count == Self::STACK_MAX)
    }
}

/// Marks an NPC as an agent: an NPC with a brain that plans and decides.
///
/// The decision state itself lives in components that the AI systems add (see
/// `terrarium_systems`); plain NPCs only wander.
#[derive(Component, Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Agent;

/// The wander behaviour of a plain NPC: when it next picks a new heading, and its own random
/// stream. Eight bytes, read every tick by the movement pass, so it stays small.
///
/// This is internal state of the wander rule: its change ticks are not maintained (nothing may
/// rely on `Changed<Wander>`).
#[derive(Component, Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Wander {
    /// Tick at which the NPC turns next ([`Wander::NEVER`]: it was told to stop).
    pub next_turn: u32,
    /// Per-NPC stream key, derived from its id at spawn, so turning needs no other component.
    pub stream: u32,
}

impl Wander {
    /// `next_turn` of an NPC that does not wander until it gets a new order.
    pub const NEVER: u32 = u32::MAX;

    /// A wanderer that turns at `tick` (saturating), for the NPC `id`.
    #[must_use]
    pub fn new(id: NpcId, tick: u64) -> Self {
        let stream = (crate::rng::mix64(id.0) >> 32) as u32;
        Self { next_turn: u32::try_from(tick).unwrap_or(Self::NEVER - 1), stream }
    }
}

/// A point an NPC was ordered to walk to (by a command); plain NPCs head straight for it and
/// stop there, agents plan a path.
#[derive(Component, Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct MoveTarget(pub Position);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inventory_fills_stacks_then_slots_and_reports_overflow() {
        let mut inv = Inventory::default();
        let ore = ItemKind(3);
        assert_eq!(inv.add(ore, 100), 0);
        assert_eq!(inv.count_of(ore), 100);
        assert_eq!(inv.room_for(ore), Inventory::CAPACITY - 100);
        assert_eq!(inv.add(ItemKind(4), 200), 200 - (Inventory::CAPACITY as u16 - 128));
        assert!(!inv.is_full(), "the second ore stack still has room");
        assert_eq!(inv.room_for(ore), 28);
        assert_eq!(inv.room_for(ItemKind(4)), 0);
        assert_eq!(inv.add(ore, 30), 2);
        assert!(inv.is_full());
        assert_eq!(inv.add(ItemKind(0), 5), 5, "kind 0 is nothing and never stored");
        let taken = inv.take_all();
        assert_eq!(taken.iter().map(|s| u32::from(s.count)).sum::<u32>(), Inventory::CAPACITY);
        assert_eq!(taken[1], ItemStack { kind: ore, count: 64 });
        assert_eq!(inv.total(), 0);
    }

    #[test]
    fn names_round_trip() {
        for st in Status::ALL {
            assert_eq!(st.name().parse::<Status>().unwrap(), st);
        }
        for r in Role::BUILT_IN.into_iter().chain([Role::Other(9)]) {
            assert_eq!(r.name().parse::<Role>().unwrap(), r);
        }
        assert!("wizard".parse::<Role>().is_err());
    }
}
