//! Swarms flock: every plain NPC in a swarm (`Swarm` other than `Swarm::NONE`) steers by the
//! flocking rule among the members of its own swarm, in the ground plane (x, z).

use bevy_ecs::prelude::*;
use terrarium_engine::{
    Agent, Engine, MoveTarget, NpcId, ParPool, Position, SimClock, SimRng, Status, Swarm, TickSet, Velocity,
    Wander, WorldBounds,
};

use super::{Boid, Flock, FlockParams, Space, SteeringError};
use crate::par;

/// Adds swarm flocking to the `Plan` stage (before movement moves the NPCs), with the default
/// [`Flocking`] unless the world already has one.
///
/// # Examples
/// ```
/// use terrarium_engine::{Engine, EngineConfig, NpcSpec, Position, Role, Velocity};
/// let mut engine = Engine::builder(EngineConfig { seed: 1, ..EngineConfig::default() })
///     .add_plugin(terrarium_systems::core_plugin)
///     .add_plugin(terrarium_systems::steering::register)
///     .build()
///     .unwrap();
/// let a = engine.spawn_npc(NpcSpec::new(Role::Scout, Position::new(10.0, 0.0, 10.0)).in_swarm(1));
/// engine.spawn_npc(NpcSpec::new(Role::Scout, Position::new(11.0, 0.0, 10.0)).in_swarm(1));
/// engine.run_ticks(5);
/// let v = engine.world().get::<Velocity>(engine.entity(a).unwrap()).unwrap();
/// assert!((v.x * v.x + v.z * v.z).sqrt() > 1.3, "flocking at 1.4 blocks/s");
/// ```
pub fn register(engine: &mut Engine) {
    if !engine.world().contains_resource::<Flocking>() {
        engine.world_mut().insert_resource(Flocking::default());
    }
    engine.add_systems(TickSet::Plan, steer_swarms);
}

/// How swarms flock: the rule's parameters, distances in blocks and `speed` in blocks per
/// second. Always valid (checked by [`Flocking::new`]).
///
/// # Examples
/// ```
/// use terrarium_engine::{Engine, EngineConfig};
/// use terrarium_systems::steering::{FlockParams, Flocking};
/// let mut engine = Engine::builder(EngineConfig::default())
///     .add_plugin(terrarium_systems::steering::register)
///     .build()
///     .unwrap();
/// // Faster, tighter swarms from the next tick on.
/// let params = FlockParams { speed: 3.0, cohere: 0.1, ..*Flocking::default().params() };
/// engine.world_mut().insert_resource(Flocking::new(params).unwrap());
/// assert!(Flocking::new(FlockParams { vision: 0.0, ..params }).is_err());
/// ```
#[derive(Resource, Debug, Clone, Copy, PartialEq)]
pub struct Flocking {
    params: FlockParams,
}

impl Default for Flocking {
    /// The benchmark's weights and distances, at walking pace (1.4 blocks/s).
    fn default() -> Self {
        Self { params: FlockParams { speed: 1.4, ..FlockParams::default() } }
    }
}

impl Flocking {
    /// Flocking with `params`.
    ///
    /// # Errors
    /// [`SteeringError::InvalidParam`] for a value out of range.
    pub fn new(params: FlockParams) -> Result<Self, SteeringError> {
        params.validate()?;
        Ok(Self { params })
    }

    /// The parameters.
    #[must_use]
    pub fn params(&self) -> &FlockParams {
        &self.params
    }
}

/// Salt of the random stream that gives a still boid with no neighbours its first heading.
const START_SALT: u64 = 0x464C_4F43_4B53; // "FLOCKS"

type BoidData = (
    Entity,
    &'static NpcId,
    &'static Position,
    &'static mut Velocity,
    &'static Swarm,
    &'static mut Status,
    &'static mut Wander,
);

/// Buffers kept between ticks.
#[derive(Default)]
struct Scratch {
    flock: Option<Flock>,
    boids: Vec<(NpcId, Entity, Boid, u32)>,
    headings: Vec<[f64; 2]>,
}

/// Gathers the swarm members, sorted by id (so the result does not depend on table order or
/// threads), computes every new heading in parallel, then writes the velocities back in id
/// order. Boids do not wander: their wander turn is put off for good.
fn steer_swarms(
    mut boids: Query<BoidData, (Without<Agent>, Without<MoveTarget>)>,
    flocking: Res<Flocking>,
    bounds: Res<WorldBounds>,
    pool: Res<ParPool>,
    rng: Res<SimRng>,
    clock: Res<SimClock>,
    mut scratch: Local<Scratch>,
) {
    let scratch = &mut *scratch;
    scratch.boids.clear();
    for (e, id, pos, vel, swarm, _, _) in &boids {
        if *swarm != Swarm::NONE {
            let heading = unit([f64::from(vel.x), f64::from(vel.z)]);
            let position = [f64::from(pos.x), f64::from(pos.z)];
            scratch.boids.push((*id, e, Boid { position, velocity: heading }, swarm.0));
        }
    }
    if scratch.boids.is_empty() {
        return;
    }
    par::sort_by_key(&pool, &mut scratch.boids, |b| b.0);
    let params = flocking.params;
    let space = match Space::bounded(
        [f64::from(bounds.min[0]), f64::from(bounds.min[2])],
        [f64::from(bounds.max[0]), f64::from(bounds.max[2])],
    ) {
        Ok(space) => space,
        Err(e) => {
            tracing::error!(error = %e, "world bounds unusable for flocking; swarms not steered");
            return;
        }
    };
    let flock = match &mut scratch.flock {
        Some(f) if *f.params() == params && *f.space() == space => f,
        slot => slot.insert(Flock::new(params, space).expect("Flocking holds checked params")),
    };
    flock.load_grouped(scratch.boids.iter().map(|b| (b.2, Some(b.3))));
    flock.steer(&pool, &mut scratch.headings);
    let speed = params.speed;
    for (&(id, e, _, _), &h) in scratch.boids.iter().zip(&scratch.headings) {
        let Ok((_, _, _, mut vel, _, mut status, mut wander)) = boids.get_mut(e) else {
            continue;
        };
        let h = if h == [0.0, 0.0] {
            // Still and alone: no heading to keep, so pick one from the NPC's own stream.
            let (x, z) = crate::wander::heading(&mut rng.stream(id.0, START_SALT ^ clock.tick));
            [f64::from(x), f64::from(z)]
        } else {
            h
        };
        let want = Velocity::new((h[0] * speed) as f32, 0.0, (h[1] * speed) as f32);
        if *vel != want {
            *vel = want;
        }
        if *status != Status::Moving {
            *status = Status::Moving;
        }
        if wander.next_turn != Wander::NEVER {
            // Wander's change ticks are not maintained (see its docs).
            wander.bypass_change_detection().next_turn = Wander::NEVER;
        }
    }
}

/// `v` scaled to length one, or zero when it has no direction.
fn unit(v: [f64; 2]) -> [f64; 2] {
    let len = (v[0] * v[0] + v[1] * v[1]).sqrt();
    if len > 0.0 { [v[0] / len, v[1] / len] } else { [0.0, 0.0] }
}

#[cfg(test)]
mod tests {
    use super::*;
    use terrarium_engine::{EngineConfig, NpcSpec, Role};

    fn engine(threads: usize) -> Engine {
        let mut cfg = EngineConfig { seed: 5, threads, tick_hz: 10, ..EngineConfig::default() };
        cfg.world.max = [60.0, 10.0, 60.0];
        Engine::builder(cfg).add_plugin(crate::core_plugin).add_plugin(register).build().unwrap()
    }

    /// 600 NPCs in two swarms, scattered with random headings, plus plain wanderers.
    fn populate(engine: &mut Engine) -> Vec<NpcId> {
        let mut r = terrarium_engine::rng::StreamRng::new(17);
        let specs: Vec<NpcSpec> = (0..700)
            .map(|i| {
                let pos = Position::new(r.range_f32(0.0, 60.0), 0.0, r.range_f32(0.0, 60.0));
                let vel = Velocity::new(r.range_f32(-1.0, 1.0), 0.0, r.range_f32(-1.0, 1.0));
                let spec = NpcSpec::new(Role::Scout, pos).moving(vel);
                if i < 600 { spec.in_swarm(1 + i % 2) } else { spec }
            })
            .collect();
        engine.spawn_batch(specs).collect()
    }

    /// Local order of a swarm: the mean cosine between the headings of members within 5 blocks
    /// of each other; about 0 for random headings, 1 when neighbours agree.
    fn local_order(engine: &Engine, ids: &[NpcId], swarm: u32) -> f32 {
        let members: Vec<(Position, Velocity)> = ids
            .iter()
            .map(|&id| engine.entity(id).unwrap())
            .filter(|&e| engine.world().get::<Swarm>(e).unwrap().0 == swarm)
            .map(|e| {
                (*engine.world().get::<Position>(e).unwrap(), *engine.world().get::<Velocity>(e).unwrap())
            })
            .collect();
        let (mut sum, mut pairs) = (0.0, 0.0);
        for (i, (p, v)) in members.iter().enumerate() {
            for (q, w) in &members[i + 1..] {
                if p.distance(*q) <= 5.0 {
                    sum +=
                        (v.x * w.x + v.z * w.z) / ((v.x * v.x + v.z * v.z) * (w.x * w.x + w.z * w.z)).sqrt();
                    pairs += 1.0;
                }
            }
        }
        sum / pairs
    }

    #[test]
    fn swarm_members_align_and_keep_flocking_speed() {
        let mut engine = engine(2);
        let ids = populate(&mut engine);
        engine.tick();
        let start = local_order(&engine, &ids, 1);
        engine.run_ticks(300);
        let end = local_order(&engine, &ids, 1);
        assert!(start < 0.3 && end > 0.5, "swarm 1 local order {start} -> {end}");
        let e = engine.entity(ids[0]).unwrap();
        let v = engine.world().get::<Velocity>(e).unwrap();
        assert!(((v.x * v.x + v.z * v.z).sqrt() - 1.4).abs() < 1e-4);
        assert_eq!(engine.world().get::<Wander>(e).unwrap().next_turn, Wander::NEVER);
        let plain = engine.entity(ids[650]).unwrap();
        assert_ne!(engine.world().get::<Wander>(plain).unwrap().next_turn, Wander::NEVER, "wanderers wander");
    }

    #[test]
    fn a_still_lonely_boid_gets_moving() {
        let mut engine = engine(1);
        let id = engine.spawn_npc(NpcSpec::new(Role::Scout, Position::new(30.0, 0.0, 30.0)).in_swarm(4));
        engine.tick();
        let e = engine.entity(id).unwrap();
        assert_eq!(engine.world().get::<Status>(e), Some(&Status::Moving));
        let v = engine.world().get::<Velocity>(e).unwrap();
        assert!(((v.x * v.x + v.z * v.z).sqrt() - 1.4).abs() < 1e-4, "{v:?}");
    }

    #[test]
    fn invalid_parameters_are_refused() {
        let err = Flocking::new(FlockParams { vision: -1.0, ..FlockParams::default() }).unwrap_err();
        assert!(err.to_string().contains("vision"), "{err}");
    }
}
