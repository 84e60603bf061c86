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
