//! Block kinds and ores: what a voxel is made of, what it is worth and how long it takes to break.

use serde::{Deserialize, Serialize};

use crate::ItemKind;

/// One voxel. A `u8` in storage; [`Block::from_u8`] checks bytes from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[repr(u8)]
pub enum Block {
    /// Empty space: agents walk and stand in it.
    #[default]
    Air = 0,
    /// The bulk of the underground.
    Stone = 1,
    /// A few blocks under the grass.
    Dirt = 2,
    /// The top of dry land.
    Grass = 3,
    /// Lakes and the sea: neither walkable nor diggable.
    Water = 4,
    /// The floor of the world: nothing breaks it.
    Bedrock = 5,
    /// Coal ore.
    Coal = 6,
    /// Iron ore.
    Iron = 7,
    /// Gold ore.
    Gold = 8,
    /// Diamond ore.
    Diamond = 9,
    /// The floor of a depot: solid, never dug, so a depot stays reachable.
    Depot = 10,
}

impl Block {
    /// Every kind, in code order.
    pub const ALL: [Block; 11] = [
        Block::Air,
        Block::Stone,
        Block::Dirt,
        Block::Grass,
        Block::Water,
        Block::Bedrock,
        Block::Coal,
        Block::Iron,
        Block::Gold,
        Block::Diamond,
        Block::Depot,
    ];

    /// The kind stored as `byte`, or `None` for a byte no kind uses.
    #[must_use]
    pub const fn from_u8(byte: u8) -> Option<Block> {
        if (byte as usize) < Self::ALL.len() { Some(Self::ALL[byte as usize]) } else { None }
    }

    /// True for blocks an agent can stand on (everything but air and water).
    #[must_use]
    pub const fn is_solid(self) -> bool {
        !matches!(self, Block::Air | Block::Water)
    }

    /// True for blocks an agent's body can occupy (air only).
    #[must_use]
    pub const fn is_open(self) -> bool {
        matches!(self, Block::Air)
    }

    /// Seconds to break the block with a tool of power 1 (bare hands), or `None` when it can't be
    /// broken (air, water, bedrock). A tool of power `p` takes `hardness / p` seconds.
    #[must_use]
    pub const fn hardness(self) -> Option<f32> {
        match self {
            Block::Dirt => Some(0.5),
            Block::Grass => Some(0.6),
            Block::Stone => Some(1.5),
            Block::Coal | Block::Iron | Block::Gold => Some(3.0),
            Block::Diamond => Some(5.0),
            Block::Air | Block::Water | Block::Bedrock | Block::Depot => None,
        }
    }

    /// Hardness of a block an agent may dig through on its way (dirt, grass, stone); ores are
    /// only ever mined on purpose, so they are not diggable in passing.
    #[must_use]
    pub const fn dig_hardness(self) -> Option<f32> {
        match self {
            Block::Dirt | Block::Grass | Block::Stone => self.hardness(),
            _ => None,
        }
    }

    /// The ore this block is, if it is one.
    #[must_use]
    pub const fn ore(self) -> Option<Ore> {
        match self {
            Block::Coal => Some(Ore::Coal),
            Block::Iron => Some(Ore::Iron),
            Block::Gold => Some(Ore::Gold),
            Block::Diamond => Some(Ore::Diamond),
            _ => None,
        }
    }

    /// Lower-case name.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Block::Air => "air",
            Block::Stone => "stone",
            Block::Dirt => "dirt",
            Block::Grass => "grass",
            Block::Water => "water",
            Block::Bedrock => "bedrock",
            Block::Coal => "coal",
            Block::Iron => "iron",
            Block::Gold => "gold",
            Block::Diamond => "diamond",
            Block::Depot => "depot",
        }
    }
}

/// A kind of ore: what mining is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[repr(u8)]
pub enum Ore {
    /// Common, shallow, cheap.
    Coal = 0,
    /// Common at mid depth.
    Iron = 1,
    /// Rare and deep.
    Gold = 2,
    /// Rarest, deepest, hardest.
    Diamond = 3,
}

impl Ore {
    /// Number of ore kinds.
    pub const COUNT: usize = 4;
    /// Every ore, in index order.
    pub const ALL: [Ore; Ore::COUNT] = [Ore::Coal, Ore::Iron, Ore::Gold, Ore::Diamond];

    /// Position in [`Ore::ALL`] (0 ..= 3), for per-ore arrays.
    #[must_use]
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The block this ore is found in.
    #[must_use]
    pub const fn block(self) -> Block {
        match self {
            Ore::Coal => Block::Coal,
            Ore::Iron => Block::Iron,
            Ore::Gold => Block::Gold,
            Ore::Diamond => Block::Diamond,
        }
    }

    /// The inventory item one unit of this ore becomes: the block's code (6 ..= 9).
    #[must_use]
    pub const fn item(self) -> ItemKind {
        ItemKind(self.block() as u16)
    }

    /// The ore an inventory item is, if it is one.
    #[must_use]
    pub fn from_item(item: ItemKind) -> Option<Ore> {
        u8::try_from(item.0).ok().and_then(Block::from_u8).and_then(Block::ore)
    }

    /// Worth of one item of this ore, in arbitrary units (coal 1, iron 4, gold 10, diamond 40).
    #[must_use]
    pub const fn value(self) -> u32 {
        match self {
            Ore::Coal => 1,
            Ore::Iron => 4,
            Ore::Gold => 10,
            Ore::Diamond => 40,
        }
    }

    /// Items one block yields: a uniform draw from this inclusive range.
    #[must_use]
    pub const fn yield_range(self) -> (u16, u16) {
        match self {
            Ore::Coal => (2, 5),
            Ore::Iron => (1, 3),
            Ore::Gold => (1, 2),
            Ore::Diamond => (1, 1),
        }
    }

    /// Mean of [`Ore::yield_range`].
    #[must_use]
    pub fn mean_yield(self) -> f32 {
        let (lo, hi) = self.yield_range();
        f32::from(lo + hi) / 2.0
    }

    /// Lower-case name.
    #[must_use]
    pub const fn name(self) -> &'static str {
        self.block().name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_bytes_are_refused() {
        for b in Block::ALL {
            assert_eq!(Block::from_u8(b as u8), Some(b));
        }
        assert_eq!(Block::from_u8(11), None);
        assert_eq!(Block::from_u8(255), None);
        for ore in Ore::ALL {
            assert_eq!(ore.block().ore(), Some(ore));
            assert_eq!(Ore::from_item(ore.item()), Some(ore));
            assert_eq!(Ore::ALL[ore.index()], ore);
        }
        assert_eq!(Ore::from_item(ItemKind(1)), None, "stone is not an ore");
    }

    #[test]
    fn properties_are_consistent() {
        assert!(Block::Stone.is_solid() && !Block::Stone.is_open());
        assert!(!Block::Water.is_solid() && !Block::Water.is_open(), "water is neither floor nor room");
        assert!(Block::Air.is_open());
        assert_eq!(Block::Bedrock.hardness(), None);
        assert!(Block::Depot.is_solid() && Block::Depot.dig_hardness().is_none());
        assert_eq!(Block::Gold.dig_hardness(), None, "ores are mined, not dug through");
        assert!(Block::Diamond.hardness() > Block::Coal.hardness());
        assert!(Ore::ALL.windows(2).all(|w| w[0].value() < w[1].value()));
    }
}
