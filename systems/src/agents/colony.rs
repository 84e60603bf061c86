//! Setting up a mining colony: a generated world sized to the colony, and miners spread
//! around the depots. Other crates call [`spawn_colony`] to get a working agent workload in one
//! line.

use terrarium_engine::rng::{StreamRng, hash3};
use terrarium_engine::voxel::{BlockPos, VoxelWorld, WorldGen};
use terrarium_engine::{Brain, ConfigError, Engine, NpcIdRange, NpcSpec, ParPool, Role};

use crate::par;

/// Ground columns generated per agent by [`spawn_colony`] (at least 64 × 64 in all).
pub const COLUMNS_PER_AGENT: u64 = 24;

/// Generates the world of a colony of `agents` miners from `seed` (about [`COLUMNS_PER_AGENT`]
/// ground columns each), chunks in parallel on `pool`.
///
/// # Errors
/// [`ConfigError`] when the size is out of range (over 512 × 512 chunks).
pub fn colony_world(pool: &ParPool, agents: u64, seed: u64) -> Result<VoxelWorld, ConfigError> {
    let params = WorldGen::with_area(seed, (agents * COLUMNS_PER_AGENT).max(64 * 64));
    params.validate()?;
    let chunks = par::map(pool, (0..params.chunk_count()).collect(), |i| params.chunk(i));
    VoxelWorld::from_chunks(params, chunks)
}

/// Spawns `agents` miners into `engine`, spread over the dry land of its voxel world (generated with
/// [`colony_world`] first if it has none), and adds the agents' [`plugin`](super::plugin). Each miner gets a tool of
/// power 1 ..= 4 and a first wake-up within two simulated seconds, all derived from `seed`.
///
/// Returns the new agents' ids.
///
/// # Errors
/// [`ConfigError`] when the world can't be generated or has no depot.
///
/// # Examples
/// ```
/// use terrarium_engine::{Engine, EngineConfig};
/// let mut engine = Engine::builder(EngineConfig { seed: 3, ..EngineConfig::default() }).build().unwrap();
/// let ids = terrarium_systems::agents::spawn_colony(&mut engine, 50, 3).unwrap();
/// assert_eq!(ids.len(), 50);
/// engine.run_ticks(100);
/// assert!(engine.world().resource::<terrarium_systems::agents::MiningStats>().assigned > 0);
/// ```
pub fn spawn_colony(engine: &mut Engine, agents: u64, seed: u64) -> Result<NpcIdRange, ConfigError> {
    super::plugin(engine);
    if !engine.world().contains_resource::<VoxelWorld>() {
        let pool = engine.world().resource::<ParPool>().clone();
        let world = colony_world(&pool, agents, seed)?;
        engine.world_mut().insert_resource(world);
    }
    let world = engine.world().resource::<VoxelWorld>();
    if world.depots().is_empty() {
        return Err(ConfigError::Invalid { key: "worldgen".into(), reason: "the world has no depot".into() });
    }
    let tick_hz = u64::from(engine.config().tick_hz);
    let mut setup = Vec::with_capacity(usize::try_from(agents).unwrap_or(0));
    let specs: Vec<NpcSpec> = (0..agents)
        .map(|i| {
            let mut r = StreamRng::new(hash3(seed, i, 0x434F_4C4F_4E59)); // "COLONY"
            let [sx, _, sz] = world.size();
            let around = BlockPos::new(r.below(sx as u64) as i32, 0, r.below(sz as u64) as i32);
            let fallback = world.depots()[(i % world.depots().len() as u64) as usize].cell;
            let cell = dry_spot(world, around, fallback, &mut r);
            let tool = 1 + r.below(4) as u8;
            setup.push(Brain::with_tool(tool, 1 + r.below(2 * tick_hz)));
            NpcSpec::new(Role::Miner, cell.feet_position()).as_agent()
        })
        .collect();
    let ids = engine.spawn_batch(specs);
    for (id, brain) in ids.clone().zip(setup) {
        let e = engine.entity(id).expect("just spawned");
        if let Some(mut b) = engine.world_mut().get_mut::<Brain>(e) {
            *b = brain;
        }
    }
    Ok(ids)
}

/// A dry standing cell within 12 blocks of `around` (`fallback` if a few tries find none).
fn dry_spot(world: &VoxelWorld, around: BlockPos, fallback: BlockPos, r: &mut StreamRng) -> BlockPos {
    let [sx, sy, sz] = world.size();
    for _ in 0..8 {
        let x = (around.x + r.below(25) as i32 - 12).clamp(0, sx - 1);
        let z = (around.z + r.below(25) as i32 - 12).clamp(0, sz - 1);
        if let Some(top) = world.surface_y(x, z) {
            let feet = BlockPos::new(x, top + 1, z);
            if top + 2 < sy && world.get(BlockPos::new(x, top, z)).is_solid() && world.get(feet).is_open() {
                return feet;
            }
        }
    }
    fallback
}
