//! Snapshots: the whole simulation (every NPC component, agents' decision state, clock, RNG, id
//! counter, bounds, the voxel world) as one checksummed frame.
//!
//! NPCs are stored as columns, table by table, in iteration order, so saving is a few slice copies
//! and a loaded world iterates in the same order as the saved one (a run continued from a
//! snapshot matches one that never stopped).

use bevy_ecs::prelude::*;
use serde::{Deserialize, Serialize};

mod validate;

pub use validate::{ID_LIMIT, MAX_TICK};

use crate::spawn::{AgentBundle, NpcBundle, PlainNpcBundle};
use crate::voxel::{VoxelRecord, VoxelWorld};
use crate::{
    Agent, AgentPath, Brain, Engine, Health, Inventory, MoveTarget, NpcId, NpcIndex, OreProfile, Position,
    Role, SimClock, SimRng, SnapshotError, Status, Swarm, Velocity, Wander, WorldBounds,
};

/// First eight bytes of every snapshot.
pub const MAGIC: [u8; 8] = *b"TRRMSNAP";
/// The snapshot format this build writes and reads (2: agents' decision state and the voxel
/// world were added).
pub const FORMAT_VERSION: u32 = 2;

#[derive(Serialize, Deserialize)]
pub(crate) struct Body {
    clock: SimClock,
    rng: SimRng,
    next_id: u64,
    bounds: WorldBounds,
    plain: Columns,
    wanders: Vec<Wander>,
    agents: Columns,
    minds: Minds,
    move_targets: Vec<(NpcId, MoveTarget)>,
    voxels: Option<VoxelRecord>,
}

/// Agents' decision state, in the order of the agent columns.
#[derive(Serialize, Deserialize, Default)]
struct Minds {
    brains: Vec<Brain>,
    paths: Vec<AgentPath>,
    profiles: Vec<OreProfile>,
}

type MindQuery = (Option<&'static Brain>, Option<&'static AgentPath>, Option<&'static OreProfile>);

impl Minds {
    /// Gathers in the same table order as `Columns::gather::<With<Agent>>`: both walk the same
    /// dense tables of the same archetypes.
    fn gather(world: &mut World) -> Self {
        let mut out = Self::default();
        let mut q = world.query_filtered::<MindQuery, With<Agent>>();
        for (brain, path, profile) in q.iter(world) {
            out.brains.push(brain.copied().unwrap_or_default());
            out.paths.push(path.cloned().unwrap_or_default());
            out.profiles.push(profile.copied().unwrap_or_default());
        }
        out
    }
}

/// Every NPC component as a column, from the one list in `spawn.rs` (`npc_components!`): the
/// columns are encoded in that order.
macro_rules! columns {
    ($($field:ident: $column:ident: $ty:ty = $doc:literal,)*) => {
        #[derive(Serialize, Deserialize, Default)]
        struct Columns {
            $($column: Vec<$ty>,)*
        }

        type ColumnQuery = ($(&'static $ty,)*);

        impl Columns {
            fn len(&self) -> usize {
                self.ids.len()
            }

            fn gather<F: bevy_ecs::query::QueryFilter + bevy_ecs::query::ArchetypeFilter>(
                world: &mut World,
            ) -> Self {
                let mut out = Self::default();
                let mut q = world.query_filtered::<ColumnQuery, F>();
                for ($($column,)*) in q.contiguous_iter(world).expect("NPC components are dense") {
                    $(out.$column.extend_from_slice($column);)*
                }
                out
            }

            fn check_lengths(&self, what: &str) -> Result<(), SnapshotError> {
                let n = self.ids.len();
                if [$(self.$column.len(),)*].iter().any(|&l| l != n) {
                    return Err(SnapshotError::Inconsistent(format!("{what} columns have different lengths")));
                }
                Ok(())
            }

            fn bundle(&self, i: usize) -> NpcBundle {
                NpcBundle { $($field: self.$column[i],)* }
            }
        }
    };
}
crate::spawn::npc_components!(columns);

/// Encodes the world and writes it as one frame; returns the bytes written.
pub(crate) fn save(
    world: &mut World,
    next_id: u64,
    writer: &mut impl std::io::Write,
) -> Result<u64, SnapshotError> {
    gather(world, next_id).write(writer)
}

/// The whole simulation copied out of the world, not encoded yet: taking it is column copies
/// (the tick thread's part); encoding it can run on another thread.
pub struct SnapshotBody(Body);

impl std::fmt::Debug for SnapshotBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotBody")
            .field("tick", &self.0.clock.tick)
            .field("npcs", &(self.0.plain.len() + self.0.agents.len()))
            .finish_non_exhaustive()
    }
}

impl SnapshotBody {
    /// Tick of the world it holds.
    #[must_use]
    pub fn tick(&self) -> u64 {
        self.0.clock.tick
    }

    /// NPCs it holds (agents included).
    #[must_use]
    pub fn npcs(&self) -> usize {
        self.0.plain.len() + self.0.agents.len()
    }

    /// Encodes it and writes it as one snapshot frame; returns the bytes written.
    ///
    /// # Errors
    /// [`SnapshotError::Encode`], or [`SnapshotError::Io`] when the writer fails.
    pub fn write(&self, writer: &mut impl std::io::Write) -> Result<u64, SnapshotError> {
        let payload = terrarium_codec::encode(&self.0).map_err(SnapshotError::Encode)?;
        Ok(terrarium_codec::write_frame(writer, MAGIC, FORMAT_VERSION, &payload)?)
    }

    /// The snapshot frame, in memory.
    ///
    /// # Errors
    /// As [`SnapshotBody::write`].
    pub fn to_bytes(&self) -> Result<Vec<u8>, SnapshotError> {
        let mut out = Vec::new();
        self.write(&mut out)?;
        Ok(out)
    }
}

/// Copies the world into a [`SnapshotBody`].
pub(crate) fn gather(world: &mut World, next_id: u64) -> SnapshotBody {
    let plain = Columns::gather::<Without<Agent>>(world);
    let mut wanders = Vec::with_capacity(plain.len());
    let mut q = world.query_filtered::<&Wander, Without<Agent>>();
    for w in q.contiguous_iter(world).expect("Wander is dense") {
        wanders.extend_from_slice(w);
    }
    let agents = Columns::gather::<With<Agent>>(world);
    let minds = Minds::gather(world);
    let mut move_targets: Vec<(NpcId, MoveTarget)> =
        world.query::<(&NpcId, &MoveTarget)>().iter(world).map(|(id, t)| (*id, *t)).collect();
    move_targets.sort_unstable_by_key(|(id, _)| *id);
    SnapshotBody(Body {
        clock: *world.resource::<SimClock>(),
        rng: world.resource::<SimRng>().clone(),
        next_id,
        bounds: *world.resource::<WorldBounds>(),
        plain,
        wanders,
        agents,
        minds,
        move_targets,
        voxels: world.get_resource::<VoxelWorld>().map(VoxelWorld::to_record),
    })
}

/// Reads and checks a frame and decodes its body; nothing is spawned yet.
pub(crate) fn read_body(reader: &mut impl std::io::Read, limit: u64) -> Result<Body, SnapshotError> {
    let supported = FORMAT_VERSION.to_string();
    let Some((_, payload)) =
        terrarium_codec::read_frame(reader, MAGIC, |v| v == FORMAT_VERSION, &supported, limit)?
    else {
        return Err(SnapshotError::Truncated {
            expected: terrarium_codec::FRAME_HEADER_LEN as u64,
            found: 0,
        });
    };
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let body: Body = terrarium_codec::decode(&payload, limit).map_err(SnapshotError::Decode)?;
    validate::validate(&body)?;
    Ok(body)
}

/// Replaces the engine's (empty) world state with the body's (checked by [`read_body`]);
/// `limit` is `snapshot.max_bytes`, which the voxel world may not exceed either.
pub(crate) fn restore(engine: &mut Engine, body: Body, limit: u64) -> Result<(), SnapshotError> {
    if engine.npc_count() != 0 {
        return Err(SnapshotError::Inconsistent("snapshots load into an empty world only".into()));
    }
    // Built before anything is spawned, so a voxel record over the limit leaves no half world.
    let voxels = body.voxels.map(|rec| VoxelWorld::from_record(rec, limit)).transpose()?;
    let world = engine.world_mut();
    world.insert_resource(body.clock);
    world.insert_resource(body.rng);
    world.insert_resource(body.bounds);
    let plain =
        (0..body.plain.len()).map(|i| PlainNpcBundle { npc: body.plain.bundle(i), wander: body.wanders[i] });
    let mut entities: Vec<Entity> = world.spawn_batch(plain).collect();
    let Minds { brains, paths, profiles } = body.minds;
    let agents = paths.into_iter().enumerate().map(|(i, path)| AgentBundle {
        brain: brains[i],
        path,
        profile: profiles[i],
        ..AgentBundle::new(body.agents.bundle(i))
    });
    entities.extend(world.spawn_batch(agents));
    if let Some(voxels) = voxels {
        world.insert_resource(voxels);
    }
    {
        let mut index = world.resource_mut::<NpcIndex>();
        index.reserve_to(body.next_id);
        // Ids are unique (checked), but may be spread out: the dense table grows only to a
        // size proportional to the population, the rest goes to the sparse map.
        let dense_cap = (entities.len() as u64).saturating_mul(2);
        let ids = body.plain.ids.iter().chain(&body.agents.ids);
        for (&id, &e) in ids.zip(&entities) {
            index.insert_restored(id, e, dense_cap);
        }
    }
    for (id, target) in body.move_targets {
        let Some(e) = world.resource::<NpcIndex>().get(id) else {
            return Err(SnapshotError::Inconsistent(format!("move target for unknown {id}")));
        };
        world.entity_mut(e).insert(target);
    }
    // The counter is above every id (checked).
    engine.set_next_npc_id(body.next_id);
    Ok(())
}
