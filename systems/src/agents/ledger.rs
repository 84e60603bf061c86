//! The ore ledger: where every bit of ore a world took out of the ground is now. Built from
//! world state only (the voxel world, agents' learning profiles, inventories, depot stock),
//! so it holds for a world restored from a snapshot or resumed from a store as well as for
//! one that never stopped: a check that a restart neither made nor lost ore.

use bevy_ecs::prelude::*;
use serde::Serialize;
use terrarium_engine::voxel::{Ore, VoxelWorld};
use terrarium_engine::{Agent, Inventory, OreProfile};

/// Ore per kind ([`Ore::index`]) of a world with agents: blocks out of the ground, and items.
///
/// Two equalities hold per ore in any world whose agents were never removed (an agent
/// removed takes its load and its profile with it):
/// - blocks: `taken` (generated − left in the voxel world) = `blocks_mined` (the successes in
///   agents' [`OreProfile`]s: only mining takes ore out, digging never cuts through ore);
/// - items: `items_mined` (the items in agents' profiles) = `carried` (ore items in every
///   inventory) + `deposited` (depot stock).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct OreLedger {
    /// Ore blocks taken out of the ground ([`VoxelWorld::ore_taken`]).
    pub taken: [u64; Ore::COUNT],
    /// Ore blocks agents mined, by their profiles.
    pub blocks_mined: [u64; Ore::COUNT],
    /// Items agents mined, by their profiles.
    pub items_mined: [u64; Ore::COUNT],
    /// Ore items in inventories now.
    pub carried: [u64; Ore::COUNT],
    /// Ore items in depots now.
    pub deposited: [u64; Ore::COUNT],
}

impl OreLedger {
    /// The ledger of `world`; `None` when it has no voxel world.
    pub fn of(world: &mut World) -> Option<Self> {
        let taken = world.get_resource::<VoxelWorld>()?.ore_taken();
        let mut ledger = Self { taken, ..Self::default() };
        let voxels = world.resource::<VoxelWorld>();
        for d in voxels.depots() {
            for k in 0..Ore::COUNT {
                ledger.deposited[k] += d.stock[k];
            }
        }
        let mut profiles = world.query_filtered::<&OreProfile, With<Agent>>();
        for p in profiles.iter(world) {
            for (k, s) in p.stats.iter().enumerate() {
                ledger.blocks_mined[k] += u64::from(s.successes);
                ledger.items_mined[k] += u64::from(s.items);
            }
        }
        let mut inventories = world.query::<&Inventory>();
        for inv in inventories.iter(world) {
            for s in &inv.stacks {
                if let Some(ore) = Ore::from_item(s.kind) {
                    ledger.carried[ore.index()] += u64::from(s.count);
                }
            }
        }
        Some(ledger)
    }

    /// Whether both equalities hold for every ore.
    #[must_use]
    pub fn conserved(&self) -> bool {
        (0..Ore::COUNT).all(|k| {
            self.taken[k] == self.blocks_mined[k]
                && self.items_mined[k] == self.carried[k] + self.deposited[k]
        })
    }

    /// Items mined, all ores together.
    #[must_use]
    pub fn total_mined(&self) -> u64 {
        self.items_mined.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use terrarium_engine::{Engine, EngineConfig};

    use super::*;
    use crate::agents::spawn_colony;

    fn colony() -> Engine {
        let mut e = Engine::builder(EngineConfig { seed: 3, threads: 1, ..EngineConfig::default() })
            .add_plugin(crate::core_plugin)
            .add_plugin(crate::agents::plugin)
            .build()
            .unwrap();
        spawn_colony(&mut e, 40, 3).unwrap();
        e
    }

    #[test]
    fn a_mining_colony_conserves_ore_and_a_changed_world_does_not() {
        let mut e = colony();
        e.run_ticks(600);
        let ledger = OreLedger::of(e.world_mut()).unwrap();
        assert!(ledger.total_mined() > 0, "nothing mined in 600 ticks: {ledger:?}");
        assert!(ledger.conserved(), "{ledger:?}");

        // Ore out of nowhere, in a depot or in a hand: both are caught.
        let k = (0..Ore::COUNT).find(|&k| ledger.items_mined[k] > 0).unwrap();
        e.world_mut().resource_mut::<VoxelWorld>().depots_mut()[0].stock[k] += 1;
        assert!(!OreLedger::of(e.world_mut()).unwrap().conserved());
        e.world_mut().resource_mut::<VoxelWorld>().depots_mut()[0].stock[k] -= 1;
        assert!(OreLedger::of(e.world_mut()).unwrap().conserved());
        let mut inv = e.world_mut().query::<&mut Inventory>();
        let mut one = inv.iter_mut(e.world_mut()).find(|i| i.room_for(Ore::ALL[k].item()) > 0).unwrap();
        assert_eq!(one.add(Ore::ALL[k].item(), 1), 0);
        assert!(!OreLedger::of(e.world_mut()).unwrap().conserved());
    }

    #[test]
    fn a_world_without_voxels_has_no_ledger() {
        let mut e = Engine::builder(EngineConfig::default()).build().unwrap();
        assert_eq!(OreLedger::of(e.world_mut()), None);
    }
}
