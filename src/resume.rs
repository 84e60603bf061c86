//! Resuming a world from storage: the newest checkpoint (the engine's snapshot frame), then the
//! current state the store committed after it laid over the plain NPCs.
//!
//! What a resumed world equals (see `persistence/DESIGN.md`, "Resume"):
//! - everything the checkpoint holds, as it was at the checkpoint's tick: every NPC's
//!   components, agents' brains, paths and learning profiles, the voxel world (dug blocks,
//!   depot stock), the RNG, the id counter;
//! - then, from the `npcs` table (every batch committed after the checkpoint): NPCs removed
//!   since are removed, NPCs spawned since are spawned (agents with a fresh brain and empty
//!   hands, so ore stays conserved against the checkpoint's voxel world), and plain NPCs
//!   changed since take their stored role, status, swarm, health, inventory and position;
//! - the clock at the newest tick the store saw, so later writes are never older than what is
//!   stored; ids continue above every id the checkpoint or the store ever held.
//!
//! After a clean shutdown the last checkpoint follows every batch: nothing is laid over it and
//! the resumed world is exactly the one that stopped (`world_hash` equal).

use std::time::Instant;

use bevy_ecs::prelude::*;
use terrarium_engine::{
    Agent, Engine, EngineBuilder, EngineError, Health, Inventory, ItemKind, ItemStack, NpcId, NpcIndex,
    NpcSpec, Position, Role, SimClock, Status, Swarm,
};
use terrarium_persistence::{NpcRecord, ResumePoint};

/// How far past every id the store saw a world resumed after a crash starts handing out ids.
/// Ids handed out (by the game server's API) after the last committed batch are not in the
/// store; skipping this many keeps them from being handed out again, unless more than this
/// many were handed out in that window. After a clean shutdown the checkpoint holds the exact
/// counter and no gap is left.
pub const CRASH_ID_GAP: u64 = 50_000;

/// What [`resume`] rebuilt.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ResumeReport {
    /// The world's tick after resuming.
    pub tick: u64,
    /// The checkpoint's tick.
    pub checkpoint_tick: u64,
    /// Whether the checkpoint was written by a clean shutdown.
    pub clean: bool,
    /// NPCs in the resumed world, agents included.
    pub npcs: u64,
    /// Agents in the resumed world.
    pub agents: u64,
    /// NPCs spawned from rows committed after the checkpoint.
    pub spawned: u64,
    /// NPCs of the checkpoint removed because the store removed them after it.
    pub despawned: u64,
    /// Plain NPCs updated from rows committed after the checkpoint.
    pub updated: u64,
    /// The checkpoint's size, bytes.
    pub checkpoint_bytes: u64,
    /// Wall-clock milliseconds: decoding the checkpoint, spawning, laying rows over it.
    pub ms: f64,
    /// The store had not committed every batch the checkpoint follows: a new world killed
    /// while its population was being written (its first checkpoint is stored ahead of it).
    /// The world is the checkpoint's alone; store it whole again before the first tick with
    /// [`crate::StoragePipeline::checkpoint_new_world`] (`headless` and `game_server` do).
    pub rows_behind: bool,
}

/// Why a world could not be resumed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResumeError {
    /// The checkpoint does not decode into a world (a build that can't read its format, or
    /// damage the checksum did not catch), or the engine could not be built.
    #[error("cannot restore the checkpoint of tick {tick}")]
    Checkpoint {
        /// The checkpoint's tick.
        tick: u64,
        /// Why.
        #[source]
        source: EngineError,
    },
    /// A stored row names a role or status this build does not know.
    #[error("stored npc {id}: {reason}")]
    Row {
        /// The NPC.
        id: u64,
        /// What is wrong.
        reason: String,
    },
}

/// Builds the world `point` describes with `builder`'s configuration and plugins.
///
/// # Errors
/// [`ResumeError`] when the checkpoint or a row can't be turned back into a world.
pub fn resume(builder: EngineBuilder, point: ResumePoint) -> Result<(Engine, ResumeReport), ResumeError> {
    let started = Instant::now();
    let ResumePoint { checkpoint, ids, newer, batches_committed } = point;
    let cp_tick = checkpoint.tick;
    let mut engine = builder
        .build_from_snapshot(&mut checkpoint.bytes.as_slice())
        .map_err(|source| ResumeError::Checkpoint { tick: cp_tick, source })?;
    let mut report = ResumeReport {
        checkpoint_tick: cp_tick,
        clean: checkpoint.clean,
        checkpoint_bytes: checkpoint.bytes.len() as u64,
        rows_behind: !batches_committed,
        ..ResumeReport::default()
    };
    drop(checkpoint);
    // A checkpoint is stored only once its batches are committed, so the rows are at least as
    // new as it is. Should they not be (a store restored from an older backup), the rows are
    // the older truth about who exists: keep the checkpoint's population then.
    if batches_committed {
        report.despawned = remove_gone(&mut engine, &ids);
    }
    let mut newest = cp_tick;
    for r in &newer {
        newest = newest.max(r.updated_tick);
        let id = NpcId(r.id);
        match engine.entity(id) {
            Some(e) => {
                if engine.world().get::<Agent>(e).is_none() {
                    apply_row(engine.world_mut(), e, r)?;
                    report.updated += 1;
                }
            }
            None => {
                let mut spec = spec_of(r)?;
                if r.agent {
                    // Ore an agent carries was mined after the checkpoint from a block the
                    // checkpoint's voxel world still holds: it starts empty-handed.
                    spec.inventory = Inventory::default();
                }
                if engine.spawn_with_id(id, &spec) {
                    report.spawned += 1;
                }
            }
        }
    }
    engine.world_mut().resource_mut::<SimClock>().tick = newest;
    let max_id = ids.last().copied().unwrap_or(0).max(newer.last().map_or(0, |r| r.id));
    let mut next = engine.next_npc_id().0.max(max_id.saturating_add(1));
    if !report.clean {
        next = next.saturating_add(CRASH_ID_GAP);
    }
    engine.reserve_npc_ids_below(next);
    if batches_committed {
        // The store holds exactly this world: the batcher starts from it instead of sending
        // every NPC again (a million registry rows and positions in the first store call).
        terrarium_systems::batching::mark_stored(&mut engine);
        if !report.clean {
            // After a crash, agents keep the checkpoint's state while the store may hold newer
            // rows of theirs: send their state and position again.
            resend_agents(engine.world_mut());
        }
    }
    report.tick = newest;
    report.npcs = engine.npc_count() as u64;
    report.agents = engine.agent_count() as u64;
    report.ms = started.elapsed().as_secs_f64() * 1e3;
    Ok((engine, report))
}

/// Marks every agent's position and status as changed, so the batcher writes them again.
fn resend_agents(world: &mut World) {
    let mut q = world.query_filtered::<(&mut Position, &mut Status), With<Agent>>();
    for (mut p, mut s) in q.iter_mut(world) {
        p.set_changed();
        s.set_changed();
    }
}

/// Despawns the NPCs the store no longer has (`ids` ascending); returns how many.
fn remove_gone(engine: &mut Engine, ids: &[u64]) -> u64 {
    let mut alive: Vec<NpcId> = {
        let world = engine.world_mut();
        let mut q = world.query::<&NpcId>();
        q.iter(world).copied().collect()
    };
    alive.sort_unstable();
    let gone: Vec<NpcId> = alive.into_iter().filter(|id| ids.binary_search(&id.0).is_err()).collect();
    for &id in &gone {
        engine.despawn(id);
    }
    // Despawns between ticks are reported with the next tick's batch; these were reported by
    // the run that stored them.
    engine.world_mut().resource_mut::<terrarium_engine::TickLog>().despawned.clear();
    debug_assert!(engine.world().resource::<NpcIndex>().len() <= ids.len() + gone.len());
    gone.len() as u64
}

fn apply_row(world: &mut World, e: Entity, r: &NpcRecord) -> Result<(), ResumeError> {
    let spec = spec_of(r)?;
    let bounds = *world.resource::<terrarium_engine::WorldBounds>();
    let mut entity = world.entity_mut(e);
    if let Some(mut p) = entity.get_mut::<Position>() {
        *p = terrarium_engine::clamp_position(spec.position, &bounds);
    }
    if let Some(mut v) = entity.get_mut::<Role>() {
        *v = spec.role;
    }
    if let Some(mut v) = entity.get_mut::<Status>() {
        *v = spec.status;
    }
    if let Some(mut v) = entity.get_mut::<Swarm>() {
        *v = spec.swarm;
    }
    if let Some(mut v) = entity.get_mut::<Health>() {
        v.current = spec.health.current.min(v.max);
    }
    if let Some(mut v) = entity.get_mut::<Inventory>() {
        *v = spec.inventory;
    }
    Ok(())
}

/// The NPC a stored row describes (velocity zero: rows don't hold it; a wanderer picks a new
/// heading at its next turn).
fn spec_of(r: &NpcRecord) -> Result<NpcSpec, ResumeError> {
    let bad = |reason: String| ResumeError::Row { id: r.id, reason };
    let role: Role = r.role.parse().map_err(bad)?;
    let status: Status = r.status.parse().map_err(bad)?;
    let mut inventory = Inventory::default();
    for (slot, &(kind, count)) in r.inventory.iter().enumerate() {
        let Some(s) = inventory.stacks.get_mut(slot) else {
            return Err(bad(format!("{} inventory stacks, at most {}", r.inventory.len(), Inventory::SLOTS)));
        };
        *s = ItemStack { kind: ItemKind(kind), count: count.min(Inventory::STACK_MAX) };
    }
    let mut spec = NpcSpec::new(role, Position::new(r.x, r.y, r.z));
    spec.status = status;
    spec.swarm = Swarm(r.swarm);
    spec.health = Health { current: r.health, max: r.health.max(Health::default().max) };
    spec.inventory = inventory;
    spec.agent = r.agent;
    Ok(spec)
}
