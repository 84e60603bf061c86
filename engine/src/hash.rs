//! `world_hash`: a stable 64-bit digest of the canonical simulation state.
//!
//! Canonical means: every NPC's components (agents' decision state included) as little-endian
//! bytes, NPCs in `NpcId` order, then the clock, RNG state, bounds and the voxel world. Two worlds that would behave the same hash the same,
//! whatever their memory layout or the thread count that produced them.

use bevy_ecs::prelude::*;
use rayon::slice::ParallelSliceMut;
use xxhash_rust::xxh3::{Xxh3, xxh3_64};

use crate::voxel::{BlockPos, VoxelWorld};
use crate::{
    Agent, AgentPath, Brain, Goal, Health, Inventory, MoveTarget, NpcId, OreProfile, ParPool, Position, Role,
    SimClock, SimRng, Status, Swarm, Velocity, Wander, WorldBounds,
};

type HashQuery = (
    &'static NpcId,
    &'static Position,
    &'static Velocity,
    &'static Role,
    &'static Status,
    &'static Health,
    &'static Inventory,
    &'static Swarm,
    Option<&'static Wander>,
    Option<&'static MoveTarget>,
    Has<Agent>,
    Option<(&'static Brain, &'static AgentPath, &'static OreProfile)>,
);

/// Hashes the world (see the module docs for what is included).
pub(crate) fn world_hash(world: &mut World) -> u64 {
    let mut per_npc: Vec<(u64, u64)> = Vec::with_capacity(world.entities().len() as usize);
    let mut buf = Vec::with_capacity(128);
    let mut q = world.query::<HashQuery>();
    for (id, pos, vel, role, status, hp, inv, swarm, wander, target, agent, mind) in q.iter(world) {
        buf.clear();
        put_f32s(&mut buf, &[pos.x, pos.y, pos.z, vel.x, vel.y, vel.z]);
        buf.extend_from_slice(&role.code().to_le_bytes());
        buf.push(*status as u8);
        buf.extend_from_slice(&hp.current.to_le_bytes());
        buf.extend_from_slice(&hp.max.to_le_bytes());
        for s in &inv.stacks {
            buf.extend_from_slice(&s.kind.0.to_le_bytes());
            buf.extend_from_slice(&s.count.to_le_bytes());
        }
        buf.extend_from_slice(&swarm.0.to_le_bytes());
        match wander {
            Some(w) => {
                buf.push(1);
                buf.extend_from_slice(&w.next_turn.to_le_bytes());
                buf.extend_from_slice(&w.stream.to_le_bytes());
            }
            None => buf.push(0),
        }
        match target {
            Some(t) => {
                buf.push(1);
                put_f32s(&mut buf, &[t.0.x, t.0.y, t.0.z]);
            }
            None => buf.push(0),
        }
        buf.push(u8::from(agent));
        if let Some((brain, path, profile)) = mind {
            put_mind(&mut buf, brain, path, profile);
        }
        per_npc.push((id.0, xxh3_64(&buf)));
    }
    let pool = world.resource::<ParPool>().0.clone();
    pool.install(|| per_npc.par_sort_unstable_by_key(|&(id, _)| id));

    let mut h = Xxh3::new();
    let clock = world.resource::<SimClock>();
    h.update(&clock.tick.to_le_bytes());
    h.update(&clock.tick_hz.to_le_bytes());
    let rng = terrarium_codec::encode(world.resource::<SimRng>()).expect("the RNG state always encodes");
    h.update(&rng);
    let b = world.resource::<WorldBounds>();
    let mut bounds = Vec::with_capacity(24);
    put_f32s(&mut bounds, &[b.min[0], b.min[1], b.min[2], b.max[0], b.max[1], b.max[2]]);
    h.update(&bounds);
    h.update(&(per_npc.len() as u64).to_le_bytes());
    for (id, npc) in &per_npc {
        h.update(&id.to_le_bytes());
        h.update(&npc.to_le_bytes());
    }
    match world.get_resource::<VoxelWorld>() {
        Some(voxels) => {
            h.update(&[1]);
            voxels.hash_into(&mut h);
        }
        None => h.update(&[0]),
    }
    h.digest()
}

fn put_mind(buf: &mut Vec<u8>, brain: &Brain, path: &AgentPath, profile: &OreProfile) {
    buf.push(1);
    buf.push(brain.state as u8);
    let (tag, a, b) = match brain.goal {
        Goal::None => (0u8, BlockPos::default(), 0),
        Goal::Deposit(p) => (1, p, 0),
        Goal::Depot(i) => (2, BlockPos::default(), i),
        Goal::Point(p) => (3, p, 0),
    };
    buf.push(tag);
    put_pos(buf, a);
    buf.extend_from_slice(&b.to_le_bytes());
    buf.extend_from_slice(&brain.wake_at.to_le_bytes());
    buf.extend_from_slice(&[brain.tool, brain.replans, brain.failures]);
    put_pos(buf, brain.avoid);
    buf.extend_from_slice(&brain.avoid_until.to_le_bytes());
    buf.extend_from_slice(&(path.cells.len() as u64).to_le_bytes());
    for &c in &path.cells {
        put_pos(buf, c);
    }
    buf.extend_from_slice(&path.next.to_le_bytes());
    for s in &profile.stats {
        for v in [s.attempts, s.successes, s.items] {
            buf.extend_from_slice(&v.to_le_bytes());
        }
    }
}

fn put_pos(buf: &mut Vec<u8>, p: BlockPos) {
    for v in [p.x, p.y, p.z] {
        buf.extend_from_slice(&v.to_le_bytes());
    }
}

fn put_f32s(buf: &mut Vec<u8>, values: &[f32]) {
    for v in values {
        buf.extend_from_slice(&v.to_bits().to_le_bytes());
    }
}
