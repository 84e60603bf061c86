//! Mining as algorithms: the deposit index (ore blocks bucketed on the ground plane, with
//! claims) and the mining round that gives each miner at most one deposit. It knows nothing of
//! agents: `agents` calls it from its `Plan` stage.

mod assign;
mod index;

pub use assign::{AssignParams, Assignment, Miner, assign, score};
pub use index::{Deposit, DepositIndex, Nearby, ground_distance};
