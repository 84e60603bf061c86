//! Shared fixtures for the Terrarium benchmarks: worlds of a given size, built the same way the
//! headless example builds them.

use terrarium::engine::rng::{StreamRng, hash3};
use terrarium::engine::{Engine, EngineConfig, NpcSpec, Position, Role};

/// `n` wandering NPC specs spread over the default world, derived from `seed`.
pub fn specs(n: u64, seed: u64) -> impl ExactSizeIterator<Item = NpcSpec> {
    let max = EngineConfig::default().world.max;
    (0..usize::try_from(n).expect("bench sizes fit in usize")).map(move |i| {
        let mut r = StreamRng::new(hash3(seed, i as u64, 1));
        let role = Role::BUILT_IN[r.below(5) as usize];
        NpcSpec::new(role, Position::new(r.range_f32(0.0, max[0]), 0.0, r.range_f32(0.0, max[2])))
    })
}

/// An engine with the core systems and `threads` workers, not yet populated.
pub fn engine(threads: usize) -> Engine {
    Engine::builder(EngineConfig { seed: 42, threads, ..EngineConfig::default() })
        .add_plugin(terrarium::systems::core_plugin)
        .build()
        .expect("default config is valid")
}

/// An engine with `n` NPCs that has run a few ticks, so every NPC is moving.
pub fn populated(n: u64, threads: usize) -> Engine {
    let mut e = engine(threads);
    e.spawn_batch(specs(n, 42));
    e.run_ticks(8);
    e
}

/// Human label for a size: `10k`, `1m`.
#[must_use]
pub fn label(n: u64) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}m", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

/// The Moving AI benchmark maps: `../shared/movingai` (or `TERRARIUM_MOVINGAI_DIR`) when this
/// checkout can see it, otherwise the two maps bundled in `assets/maps`. Sorted by file name.
#[must_use]
pub fn movingai_maps() -> Vec<std::path::PathBuf> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let shared = std::env::var_os("TERRARIUM_MOVINGAI_DIR")
        .map(std::path::PathBuf::from)
        .into_iter()
        .chain([root.join("../shared/movingai"), root.join("../../shared/movingai")])
        .find(|d| d.is_dir());
    let dir = shared.unwrap_or_else(|| root.join("assets/maps"));
    let mut maps: Vec<_> = std::fs::read_dir(&dir)
        .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    maps.retain(|p: &std::path::PathBuf| p.extension().is_some_and(|e| e == "map"));
    maps.sort();
    maps
}

/// A mining round's input: `deposits` ore blocks and `miners` miners spread uniformly over a
/// square with about ten ground columns per deposit, derived from `seed`.
#[must_use]
pub fn mining_round(
    miners: u64,
    deposits: u64,
    seed: u64,
) -> (terrarium::systems::mining::DepositIndex, Vec<terrarium::systems::mining::Miner>) {
    use terrarium::engine::voxel::{BlockPos, Ore};
    use terrarium::engine::{NpcId, OreProfile};
    use terrarium::systems::mining::{Deposit, DepositIndex, Miner};
    let side = ((deposits * 10) as f64).sqrt().ceil() as i32;
    let below = |r: &mut StreamRng, n: i32| r.below(n as u64) as i32;
    let index = DepositIndex::from_deposits(
        [side, side],
        (0..deposits).map(|i| {
            let mut r = StreamRng::new(hash3(seed, i, 2));
            Deposit {
                pos: BlockPos::new(below(&mut r, side), 4 + below(&mut r, 24), below(&mut r, side)),
                ore: Ore::ALL[r.below(4) as usize],
                depth: below(&mut r, 12) as u8,
                claimed: false,
            }
        }),
    );
    let miners = (0..miners)
        .map(|i| {
            let mut r = StreamRng::new(hash3(seed, i, 3));
            Miner {
                id: NpcId(i + 1),
                cell: BlockPos::new(below(&mut r, side), 20 + below(&mut r, 10), below(&mut r, side)),
                tool: 1 + r.below(4) as u8,
                room: [256; Ore::COUNT],
                profile: OreProfile::default(),
                avoid: None,
            }
        })
        .collect();
    (index, miners)
}

/// A sink as fast as can be: takes every batch and hands its position buffer straight back for
/// reuse, so a benchmark measures the batcher alone.
#[derive(Debug, Default)]
pub struct RecycleSink {
    spare: std::sync::Mutex<Vec<terrarium::persistence::PositionColumns>>,
    batches: std::sync::atomic::AtomicU64,
}

impl RecycleSink {
    /// Batches taken so far.
    pub fn batches(&self) -> u64 {
        self.batches.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl terrarium::persistence::BatchSink for RecycleSink {
    fn submit(
        &self,
        handoff: terrarium::persistence::Handoff,
    ) -> Result<(), terrarium::persistence::WriteBehindError> {
        self.batches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut spare = self.spare.lock().expect("no panics while holding it");
        if spare.len() < 2 {
            spare.push(handoff.positions);
        }
        Ok(())
    }

    fn run_id(&self) -> u64 {
        1
    }

    fn reuse_columns(&self) -> Option<terrarium::persistence::PositionColumns> {
        self.spare.lock().expect("no panics while holding it").pop()
    }
}

/// An engine with `n` NPCs, the core systems and batching into `sink` (positions flushed every
/// tick once more than 100 NPCs move), that has run a few ticks so every NPC is moving.
pub fn populated_with_batching(
    n: u64,
    threads: usize,
    sink: std::sync::Arc<dyn terrarium::persistence::BatchSink>,
) -> Engine {
    let mut e = Engine::builder(EngineConfig { seed: 42, threads, ..EngineConfig::default() })
        .add_plugin(terrarium::systems::core_plugin)
        .add_plugin(terrarium::systems::batching::plugin(sink))
        .build()
        .expect("default config is valid");
    e.spawn_batch(specs(n, 42));
    e.run_ticks(16);
    e
}
