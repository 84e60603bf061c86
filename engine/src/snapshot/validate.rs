//! What a snapshot's payload may hold once its checksum matched. The checksum proves the bytes
//! are the ones that were written, not that this engine wrote them: a file can be crafted, so
//! everything the world relies on (bounds a clamp can use, unique ids below the counter, finite
//! motion, health and stacks in range, agents' indices) is checked before anything is spawned.

use super::{Body, Columns};
use crate::voxel::VoxelRecord;
use crate::{Goal, Inventory, SnapshotError, WorldBounds};

/// Every NPC id in a snapshot is below this, and the id counter at most this: ids are stored as
/// signed 64-bit integers (PostgreSQL `bigint`), and the counter can count on from here without
/// overflowing.
pub const ID_LIMIT: u64 = 1 << 63;

/// The largest tick a snapshot may hold: tick arithmetic (`tick * 1000` for milliseconds, the
/// next tick, wake-up ticks) stays far from overflowing. At 1000 Hz it is about 8900 years.
pub const MAX_TICK: u64 = 1 << 48;

/// Checks everything in `body` that decoding alone does not.
pub(super) fn validate(body: &Body) -> Result<(), SnapshotError> {
    body.plain.check_lengths("plain NPC")?;
    body.agents.check_lengths("agent")?;
    if body.wanders.len() != body.plain.len() {
        return Err(SnapshotError::Inconsistent("wander column length differs from plain NPCs".into()));
    }
    let n = body.agents.len();
    let minds = &body.minds;
    if minds.brains.len() != n || minds.paths.len() != n || minds.profiles.len() != n {
        return Err(SnapshotError::Inconsistent(
            "agent decision columns differ in length from the agents".into(),
        ));
    }
    let clock = body.clock;
    if clock.tick_hz == 0 || clock.tick_hz > 1000 || clock.tick > MAX_TICK {
        return Err(SnapshotError::Clock { tick: clock.tick, tick_hz: clock.tick_hz, max_tick: MAX_TICK });
    }
    let bounds = body.bounds;
    if let Some(axis) = bounds.invalid_axis() {
        return Err(SnapshotError::Bounds { axis, min: bounds.min[axis], max: bounds.max[axis] });
    }
    let sorted = check_ids(body)?;
    check_npcs(&body.plain, &bounds)?;
    // Agents walk the voxel world, which may reach past the bounds plain NPCs keep to.
    let walkable = body.voxels.as_ref().map_or(bounds, |v| hull(&bounds, v));
    check_npcs(&body.agents, &walkable)?;
    check_minds(body)?;
    for (id, target) in &body.move_targets {
        if sorted.binary_search(&id.0).is_err() {
            return Err(SnapshotError::Inconsistent(format!("move target for unknown {id}")));
        }
        let p = target.0;
        if !inside(&walkable, [p.x, p.y, p.z]) {
            return Err(SnapshotError::Position { id: id.0, what: "move target", value: [p.x, p.y, p.z] });
        }
    }
    Ok(())
}

/// Ids below [`ID_LIMIT`], each once, all below the counter; returns them sorted.
fn check_ids(body: &Body) -> Result<Vec<u64>, SnapshotError> {
    let mut ids: Vec<u64> = body.plain.ids.iter().chain(&body.agents.ids).map(|id| id.0).collect();
    if let Some(&id) = ids.iter().find(|&&id| id >= ID_LIMIT) {
        return Err(SnapshotError::IdOutOfRange { id, limit: ID_LIMIT });
    }
    ids.sort_unstable();
    if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
        return Err(SnapshotError::DuplicateId { id: w[0] });
    }
    let max = ids.last().copied();
    if body.next_id > ID_LIMIT || max.is_some_and(|m| m >= body.next_id) {
        return Err(SnapshotError::IdCounter {
            next_id: body.next_id,
            id: max.unwrap_or(0),
            limit: ID_LIMIT,
        });
    }
    Ok(ids)
}

fn check_npcs(c: &Columns, bounds: &WorldBounds) -> Result<(), SnapshotError> {
    for (i, id) in c.ids.iter().enumerate() {
        let id = id.0;
        let p = c.positions[i];
        if !inside(bounds, [p.x, p.y, p.z]) {
            return Err(SnapshotError::Position { id, what: "position", value: [p.x, p.y, p.z] });
        }
        let v = c.velocities[i];
        if !(v.x.is_finite() && v.y.is_finite() && v.z.is_finite()) {
            return Err(SnapshotError::Velocity { id, value: [v.x, v.y, v.z] });
        }
        let h = c.healths[i];
        if h.current > h.max {
            return Err(SnapshotError::Health { id, current: h.current, max: h.max });
        }
        let bad_slot = c.inventories[i]
            .stacks
            .iter()
            .enumerate()
            .find(|(_, s)| s.count > Inventory::STACK_MAX || (s.kind.0 == 0 && s.count != 0));
        if let Some((slot, s)) = bad_slot {
            return Err(SnapshotError::Inventory { id, slot, kind: s.kind.0, count: s.count });
        }
    }
    Ok(())
}

fn check_minds(body: &Body) -> Result<(), SnapshotError> {
    let depots = body.voxels.as_ref().map_or(0, |v| v.depots.len());
    for (i, id) in body.agents.ids.iter().enumerate() {
        let fail = |reason| Err(SnapshotError::Agent { id: id.0, reason });
        let brain = &body.minds.brains[i];
        if !(1..=8).contains(&brain.tool) {
            return fail("tool power outside 1 ..= 8");
        }
        if matches!(brain.goal, Goal::Depot(d) if d as usize >= depots) {
            return fail("goal is a depot the voxel world does not have");
        }
        let path = &body.minds.paths[i];
        if path.next as usize > path.cells.len() {
            return fail("path position past the end of its path");
        }
    }
    Ok(())
}

/// Inside `b` (edges included) and finite.
fn inside(b: &WorldBounds, [x, y, z]: [f32; 3]) -> bool {
    // `contains` is false for NaN; infinities can't be inside finite bounds.
    b.contains(x, y, z)
}

/// The smallest box holding both the bounds and the voxel world.
fn hull(b: &WorldBounds, v: &VoxelRecord) -> WorldBounds {
    // Chunk counts are at most 512 (the record's parameters are not validated yet), so the
    // product is exact in f32.
    let size = v.params.size_chunks.map(|c| c.min(512) as f32 * crate::voxel::CHUNK as f32);
    WorldBounds {
        min: [b.min[0].min(0.0), b.min[1].min(0.0), b.min[2].min(0.0)],
        max: [b.max[0].max(size[0]), b.max[1].max(size[1]), b.max[2].max(size[2])],
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Body, SnapshotBody, gather};
    use crate::voxel::{VoxelWorld, WorldGen};
    use crate::{
        Engine, EngineConfig, EngineError, Goal, ItemKind, ItemStack, MoveTarget, NpcId, NpcIndex, NpcSpec,
        Position, Role, SnapshotError, Velocity,
    };

    /// Six plain NPCs and two agents, one of them with a move target; a voxel world when asked.
    fn body(voxels: bool) -> Body {
        let mut engine =
            Engine::builder(EngineConfig { threads: 1, ..EngineConfig::default() }).build().unwrap();
        if voxels {
            engine.world_mut().insert_resource(VoxelWorld::generate(WorldGen::small()).unwrap());
        }
        let ids: Vec<NpcId> = engine
            .spawn_batch((0..8).map(|i| {
                let s = NpcSpec::new(Role::Miner, Position::new(i as f32 + 0.5, 30.0, 4.5));
                if i >= 6 { s.as_agent() } else { s }
            }))
            .collect();
        let e = engine.entity(ids[1]).unwrap();
        engine.world_mut().entity_mut(e).insert(MoveTarget(Position::new(9.0, 0.0, 9.0)));
        let next = engine.next_npc_id().0;
        gather(engine.world_mut(), next).0
    }

    fn load(body: Body, max_bytes: u64) -> Result<Engine, SnapshotError> {
        let bytes = SnapshotBody(body).to_bytes().unwrap();
        let mut config = EngineConfig::default();
        config.snapshot.max_bytes = max_bytes;
        match Engine::builder(config).build_from_snapshot(&mut bytes.as_slice()) {
            Ok(engine) => Ok(engine),
            Err(EngineError::Snapshot(e)) => Err(e),
            Err(other) => panic!("expected a snapshot error, got {other}"),
        }
    }

    /// Loads a changed body through the whole path (frame, checksum, decode, checks) and
    /// returns the error it must give.
    fn refused(change: impl FnOnce(&mut Body)) -> SnapshotError {
        let mut b = body(false);
        change(&mut b);
        match load(b, 4 << 30) {
            Ok(_) => panic!("a crafted snapshot loaded"),
            Err(e) => e,
        }
    }

    #[test]
    fn an_untouched_body_loads() {
        let engine = load(body(true), 4 << 30).unwrap();
        assert_eq!(engine.npc_count(), 8);
    }

    #[test]
    fn bounds_must_be_finite_and_increasing() {
        for (axis, min, max) in
            [(0, 10.0, 5.0), (1, 0.0, f32::NAN), (2, f32::NEG_INFINITY, 1.0), (0, 0.0, 2e6)]
        {
            let err = refused(|b| {
                b.bounds.min[axis] = min;
                b.bounds.max[axis] = max;
            });
            assert!(matches!(err, SnapshotError::Bounds { axis: a, .. } if a == axis), "{err}");
        }
    }

    #[test]
    fn the_clock_must_leave_room_to_count() {
        for (tick, hz) in [(u64::MAX, 20), (super::MAX_TICK + 1, 20), (5, 0), (5, 1001)] {
            let err = refused(|b| {
                b.clock.tick = tick;
                b.clock.tick_hz = hz;
            });
            assert!(matches!(err, SnapshotError::Clock { .. }), "{err}");
        }
    }

    #[test]
    fn ids_at_the_limit_are_refused() {
        let err = refused(|b| {
            b.plain.ids[2] = NpcId(u64::MAX);
            b.next_id = u64::MAX;
        });
        assert!(matches!(err, SnapshotError::IdOutOfRange { id: u64::MAX, .. }), "{err}");
        let err = refused(|b| b.agents.ids[0] = NpcId(super::ID_LIMIT));
        assert!(matches!(err, SnapshotError::IdOutOfRange { .. }), "{err}");
    }

    #[test]
    fn duplicate_ids_are_refused() {
        let err = refused(|b| b.agents.ids[1] = NpcId(3));
        assert!(matches!(err, SnapshotError::DuplicateId { id: 3 }), "{err}");
    }

    #[test]
    fn the_counter_must_be_above_every_id_and_within_the_limit() {
        let err = refused(|b| b.next_id = 3);
        assert!(matches!(err, SnapshotError::IdCounter { next_id: 3, id: 8, .. }), "{err}");
        let err = refused(|b| b.next_id = u64::MAX);
        assert!(matches!(err, SnapshotError::IdCounter { .. }), "{err}");
        let err = refused(|b| b.plain.ids[0] = NpcId(1000));
        assert!(matches!(err, SnapshotError::IdCounter { id: 1000, .. }), "{err}");
    }

    #[test]
    fn positions_must_be_finite_and_inside_the_bounds() {
        for bad in [f32::NAN, f32::INFINITY, -1.0, 1e7] {
            let mut id = 0;
            let err = refused(|b| {
                b.plain.positions[1].z = bad;
                id = b.plain.ids[1].0;
            });
            assert!(
                matches!(err, SnapshotError::Position { id: i, what: "position", .. } if i == id),
                "{bad}: {err}"
            );
        }
        let err = refused(|b| b.agents.positions[0].x = f32::NAN);
        assert!(matches!(err, SnapshotError::Position { id: 7, .. }), "{err}");
        let err = refused(|b| b.move_targets[0].1 = MoveTarget(Position::new(f32::NAN, 0.0, 0.0)));
        assert!(matches!(err, SnapshotError::Position { what: "move target", .. }), "{err}");
    }

    #[test]
    fn velocities_must_be_finite() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut id = 0;
            let err = refused(|b| {
                b.plain.velocities[4] = Velocity::new(0.0, bad, 0.0);
                id = b.plain.ids[4].0;
            });
            assert!(matches!(err, SnapshotError::Velocity { id: i, .. } if i == id), "{err}");
        }
    }

    #[test]
    fn health_may_not_exceed_its_maximum() {
        let err = refused(|b| b.agents.healths[1].current = b.agents.healths[1].max + 1);
        assert!(matches!(err, SnapshotError::Health { id: 8, current: 101, max: 100 }), "{err}");
    }

    #[test]
    fn inventories_hold_stacks_of_something() {
        let err = refused(|b| b.agents.inventories[0].stacks[2] = ItemStack { kind: ItemKind(3), count: 65 });
        assert!(matches!(err, SnapshotError::Inventory { id: 7, slot: 2, count: 65, .. }), "{err}");
        let err = refused(|b| b.plain.inventories[0].stacks[0] = ItemStack { kind: ItemKind(0), count: 1 });
        assert!(matches!(err, SnapshotError::Inventory { kind: 0, .. }), "{err}");
    }

    #[test]
    fn agents_decision_state_must_point_at_real_things() {
        let err = refused(|b| b.minds.brains[0].tool = 0);
        assert!(matches!(err, SnapshotError::Agent { id: 7, .. }), "{err}");
        let err = refused(|b| b.minds.brains[1].goal = Goal::Depot(0));
        assert!(matches!(err, SnapshotError::Agent { id: 8, .. }), "no voxel world, no depot: {err}");
        let err = refused(|b| b.minds.paths[0].next = 1);
        assert!(matches!(err, SnapshotError::Agent { .. }), "{err}");
    }

    #[test]
    fn columns_of_different_lengths_are_inconsistent() {
        let err = refused(|b| {
            b.plain.healths.pop();
        });
        assert!(matches!(err, SnapshotError::Inconsistent(_)), "{err}");
    }

    #[test]
    fn a_voxel_record_that_claims_a_huge_size_is_refused_before_allocating() {
        // A size prefix of 4 GiB in front of a few bytes: LZ4 would size its output from it.
        let mut b = body(true);
        let rec = b.voxels.as_mut().unwrap();
        rec.blocks = [u32::MAX.to_le_bytes().as_slice(), &[0x1F, 0, 0, 0]].concat();
        let err = load(b, 1 << 20).err().unwrap();
        assert!(matches!(err, SnapshotError::VoxelTooLarge { limit: 1_048_576, .. }), "{err}");
        // The real blocks of the small world (48 chunks, a few dense) fit 4 GiB, not 64 KiB.
        let err = load(body(true), 64 << 10).err().unwrap();
        assert!(matches!(err, SnapshotError::VoxelTooLarge { .. }), "{err}");
    }

    #[test]
    fn spread_out_ids_do_not_grow_the_dense_index() {
        // Ids 65,535 apart: each within the usual slack of the last, which would grow the dense
        // table by half a MiB per NPC.
        let mut b = body(false);
        for (i, id) in b.plain.ids.iter_mut().chain(&mut b.agents.ids).enumerate() {
            *id = NpcId(65_535 * (i as u64 + 1));
        }
        b.next_id = 65_535 * 9;
        b.move_targets[0].0 = NpcId(65_535 * 2);
        let engine = load(b, 4 << 30).unwrap();
        let index = engine.world().resource::<NpcIndex>();
        assert!(index.dense_len() <= 1 << 17, "dense table of {} slots", index.dense_len());
        assert_eq!(engine.entity(NpcId(65_535 * 8)), index.get(NpcId(65_535 * 8)));
        assert!(engine.entity(NpcId(65_535 * 8)).is_some());
        assert_eq!(engine.next_npc_id(), NpcId(65_535 * 9));
    }
}
