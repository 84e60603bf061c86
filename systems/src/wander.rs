//! The wander rule of plain NPCs: every few seconds each picks a new heading and pace at random,
//! from its own random stream, so a world without agents still has motion.
//!
//! The rule is applied inside the movement pass (see `movement.rs`): checking `next_turn` while
//! the velocity is already in cache costs almost nothing, where a separate pass over a million
//! NPCs cost more than the movement itself (measured: 3.3 ms against 1.1 ms, one thread).

use terrarium_engine::rng::{StreamRng, hash3};
use terrarium_engine::{
    Engine, EngineConfig, NpcIdRange, NpcSpec, Position, Role, SimClock, SimRng, Velocity, Wander, math,
};

/// Salt of the wander random stream.
const WANDER_SALT: u64 = 0x5741_4E44_4552; // "WANDER"

/// Salt of the spawn stream of [`spawn_wanderers`].
const SPAWN_SALT: u64 = 0x0053_5041_574E; // "SPAWN"

/// Spawns `n` plain NPCs spread over the ground of the world, each with one of the built-in
/// roles and already walking (status `moving`, at 50 to 100 % of the wander speed), so the world
/// does not begin with `n` status changes. Everything derives from the world seed: the same
/// seed gives the same population.
///
/// # Examples
/// ```
/// use terrarium_engine::{Engine, EngineConfig, Status};
/// let mut engine = Engine::builder(EngineConfig { seed: 3, ..EngineConfig::default() }).build().unwrap();
/// let ids = terrarium_systems::wander::spawn_wanderers(&mut engine, 100);
/// assert_eq!((ids.len(), engine.npc_count()), (100, 100));
/// ```
pub fn spawn_wanderers(engine: &mut Engine, n: u64) -> NpcIdRange {
    let seed = engine.config().seed;
    let (min, max) = (engine.config().world.min, engine.config().world.max);
    let speed = engine.config().npc.wander_speed;
    engine.spawn_batch((0..n).map(|i| {
        let mut r = StreamRng::new(hash3(seed, i, SPAWN_SALT));
        let pos = Position::new(r.range_f32(min[0], max[0]), min[1], r.range_f32(min[2], max[2]));
        let role = Role::BUILT_IN[r.below(Role::BUILT_IN.len() as u64) as usize];
        let pace = speed * r.range_f32(0.5, 1.0);
        let (vx, vz) =
            math::with_length_2d(r.range_f32(-1.0, 1.0), r.range_f32(-1.0, 1.0), pace).unwrap_or((pace, 0.0));
        NpcSpec::new(role, pos).moving(Velocity::new(vx, 0.0, vz))
    }))
}

/// Each chunk of wanderers checks for due turns on one tick in `WANDER_STRIDE`, so a tick reads
/// only a quarter of the wander column (a turn is late by at most three ticks, 0.15 s at 20 Hz).
/// Which tick depends on the chunk's place in its table, never on the thread count.
pub const WANDER_STRIDE: u64 = 4;

/// The parameters of the wander rule for one tick.
#[derive(Debug, Clone, Copy)]
pub struct WanderRule {
    seed: u64,
    tick: u64,
    tick32: u32,
    speed: f32,
    min_ticks: u64,
    span_ticks: u64,
}

impl WanderRule {
    /// The rule for the current tick.
    #[must_use]
    pub fn new(clock: &SimClock, rng: &SimRng, config: &EngineConfig) -> Self {
        let ticks = |s: f32| (f64::from(s) * f64::from(clock.tick_hz)).round().max(1.0) as u64;
        let min_ticks = ticks(config.npc.turn_min_s);
        Self {
            seed: rng.seed() ^ WANDER_SALT,
            tick: clock.tick,
            tick32: u32::try_from(clock.tick).unwrap_or(Wander::NEVER - 1),
            speed: config.npc.wander_speed,
            min_ticks,
            span_ticks: ticks(config.npc.turn_max_s).saturating_sub(min_ticks) + 1,
        }
    }

    /// True when `w` turns this tick.
    #[inline]
    #[must_use]
    pub fn is_due(&self, w: &Wander) -> bool {
        w.next_turn <= self.tick32
    }

    /// Picks a new heading in the ground plane and a pace between half and full wander speed,
    /// and schedules the next turn. Depends only on the seed, the NPC's stream and the tick.
    #[must_use]
    pub fn turn(&self, w: &mut Wander) -> Velocity {
        let mut r = StreamRng::new(hash3(self.seed, u64::from(w.stream), self.tick));
        let (hx, hz) = heading(&mut r);
        let pace = self.speed * r.range_f32(0.5, 1.0);
        let next = self.tick + self.min_ticks + r.below(self.span_ticks);
        w.next_turn = u32::try_from(next).unwrap_or(Wander::NEVER - 1);
        Velocity::new(hx * pace, 0.0, hz * pace)
    }
}

/// A uniformly random unit vector in the ground plane, without trigonometry: rejection-sample
/// the unit disc, then normalise (sqrt is exact in IEEE 754, so every platform agrees).
pub(crate) fn heading(r: &mut StreamRng) -> (f32, f32) {
    loop {
        let (x, z) = (r.range_f32(-1.0, 1.0), r.range_f32(-1.0, 1.0));
        let n2 = x * x + z * z;
        if n2 > 1e-4 && n2 <= 1.0 {
            let n = n2.sqrt();
            return (x / n, z / n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use terrarium_engine::{Engine, NpcSpec, Position, Role, Status};

    #[test]
    fn wanderers_start_moving_and_turn_within_the_configured_interval() {
        let mut engine = Engine::builder(EngineConfig { seed: 3, threads: 2, ..EngineConfig::default() })
            .add_plugin(crate::core_plugin)
            .build()
            .unwrap();
        let ids = engine
            .spawn_batch((0..1000).map(|i| NpcSpec::new(Role::Scout, Position::new(i as f32, 0.0, 1.0))));
        // Each chunk checks its wanderers on one tick in WANDER_STRIDE.
        engine.run_ticks(WANDER_STRIDE);
        let (min, max) = (engine.config().npc.turn_min_s, engine.config().npc.turn_max_s);
        let mut headings = std::collections::HashSet::new();
        for id in ids {
            let e = engine.entity(id).unwrap();
            let v = engine.world().get::<Velocity>(e).unwrap();
            let speed = (v.x * v.x + v.z * v.z).sqrt();
            assert!((0.5 * 1.4 - 1e-4..=1.4 + 1e-4).contains(&speed), "{speed}");
            headings.insert((v.x.to_bits(), v.z.to_bits()));
            assert_eq!(engine.world().get::<Status>(e), Some(&Status::Moving));
            let next = engine.world().get::<Wander>(e).unwrap().next_turn;
            let stride = WANDER_STRIDE as u32;
            assert!((1 + (min * 20.0) as u32..=stride + (max * 20.0) as u32).contains(&next), "{next}");
        }
        assert!(headings.len() > 990, "every NPC draws from its own stream");
    }

    #[test]
    fn headings_are_unit_length() {
        let mut r = StreamRng::new(9);
        for _ in 0..1000 {
            let (x, z) = heading(&mut r);
            assert!(((x * x + z * z) - 1.0).abs() < 1e-5);
        }
    }
}
