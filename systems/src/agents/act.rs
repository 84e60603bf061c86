//! The `Act` stage: every walking agent whose last step is done takes the next one, digging
//! what is in the way, in `NpcId` order.

use bevy_ecs::prelude::*;
use terrarium_engine::voxel::{Block, BlockPos, VoxelWorld};
use terrarium_engine::{Agent, AgentPath, Brain, BrainState, NpcId, OreProfile, Position, SimClock, Status};

use super::plan::rules_of;
use super::state::{Task, fail_task, secs_to_ticks, transition};
use super::{AgentConfig, AgentEvents, Cause, MiningStats, PathStats};
use crate::mining::DepositIndex;
use crate::pathfinding::step;

type WalkerData = (
    Entity,
    &'static NpcId,
    &'static mut Position,
    &'static mut Brain,
    &'static mut AgentPath,
    &'static mut OreProfile,
    &'static mut Status,
);

/// The `Act` stage: every walking agent whose last step is done takes the next one, digging
/// what is in the way; a step that is no longer allowed sends it back to planning.
#[expect(clippy::too_many_arguments, reason = "a system's parameters are its data dependencies")]
pub(super) fn walk(
    mut agents: Query<WalkerData, With<Agent>>,
    world: Option<ResMut<VoxelWorld>>,
    mut index: ResMut<DepositIndex>,
    mut events: ResMut<AgentEvents>,
    mut stats: ResMut<MiningStats>,
    mut path_stats: ResMut<PathStats>,
    config: Res<AgentConfig>,
    clock: Res<SimClock>,
) {
    let Some(mut world) = world else { return };
    let tick = clock.tick;
    let mut due: Vec<(NpcId, Entity)> = agents
        .iter()
        .filter(|(_, _, _, b, p, ..)| {
            matches!(b.state, BrainState::Travelling | BrainState::Returning)
                && tick >= b.wake_at
                && !p.arrived()
        })
        .map(|(e, id, ..)| (*id, e))
        .collect();
    due.sort_unstable_by_key(|d| d.0);
    let hz = u64::from(clock.tick_hz);
    for (id, e) in due {
        let Ok((_, _, mut pos, mut brain, mut path, mut profile, mut status)) = agents.get_mut(e) else {
            continue;
        };
        let here = BlockPos::containing(*pos);
        let next = path.next_cell().expect("not arrived");
        let rules = rules_of(&brain, &config);
        match step(&world, here, next, &rules) {
            Some(st) => {
                for b in st.dig.into_iter().flatten() {
                    world.set(b, Block::Air);
                    stats.blocks_dug += 1;
                }
                *pos = next.feet_position();
                path.next += 1;
                brain.wake_at = tick + secs_to_ticks(st.cost / config.walk_speed, hz);
            }
            None if brain.replans < config.max_replans => {
                path_stats.replans += 1;
                brain.replans += 1;
                brain.wake_at = tick;
                path.clear();
                transition(
                    &mut events,
                    tick,
                    id,
                    &mut brain,
                    &mut status,
                    BrainState::Planning,
                    Cause::Blocked,
                );
            }
            None => {
                let mut task =
                    Task { brain: &mut brain, path: &mut path, profile: &mut profile, status: &mut status };
                fail_task(
                    &mut task,
                    id,
                    Cause::GaveUp,
                    tick,
                    &world,
                    &mut index,
                    &mut events,
                    &mut stats,
                    &config,
                );
            }
        }
    }
}
