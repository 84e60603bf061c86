//! Moves every NPC by one tick of its velocity, bouncing off the world bounds, and steers NPCs
//! that were ordered to walk somewhere.

use bevy_ecs::change_detection::{ContiguousMut, Tick};
use bevy_ecs::prelude::*;
use terrarium_engine::{
    Engine, EngineConfig, MoveTarget, ParPool, Position, SimClock, SimRng, Status, TickSet, Velocity, Wander,
    WorldBounds,
};

use wide::f32x4;

use crate::par;
pub use crate::wander::WANDER_STRIDE;
use crate::wander::WanderRule;

/// Adds movement to the `Act` stage, in the [`Movement`] set: steering first, then the
/// movement pass (which also applies the wander rule).
pub fn register(engine: &mut Engine) {
    engine.add_systems(TickSet::Act, (steer_to_targets, integrate_velocity).chain().in_set(Movement));
}

/// The `Act` stage's movement systems, for other systems to order themselves against (agents
/// walk before it: both write agents' `Position` and `Status`).
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Movement;

/// Distance (blocks) at which an NPC counts as arrived at its target.
pub const ARRIVE_DISTANCE: f32 = 0.25;

/// One pass over every NPC: plain NPCs whose turn is due pick a new velocity (the wander rule),
/// then `position += velocity · dt`, reflecting off the bounds.
///
/// Runs over whole table columns in parallel chunks. Only NPCs that actually moved get their
/// `Position` marked changed (so batching never writes rows for NPCs that stood still).
fn integrate_velocity(
    mut movers: Query<(&mut Position, &mut Velocity, &mut Status, Option<&mut Wander>)>,
    clock: Res<SimClock>,
    bounds: Res<WorldBounds>,
    rng: Res<SimRng>,
    config: Res<EngineConfig>,
    pool: Res<ParPool>,
) {
    let k = Kernel {
        dt: clock.dt_secs(),
        bounds: *bounds,
        wander: WanderRule::new(&clock, &rng, &config),
        tick: clock.tick,
    };
    for (pos, vel, status, wander) in movers.contiguous_iter_mut().expect("movement components are dense") {
        let (pos, mut pos_ticks) = ContiguousMut::bypass_change_detection_split(pos);
        let (vel, mut vel_ticks) = ContiguousMut::bypass_change_detection_split(vel);
        let (status, mut status_ticks) = ContiguousMut::bypass_change_detection_split(status);
        // Wander's change ticks are deliberately not maintained (see its docs).
        let wander = wander.map(|w| ContiguousMut::bypass_change_detection_split(w).0);
        let now = pos_ticks.this_run();
        let wander_chunks: Box<dyn Iterator<Item = Option<&mut [Wander]>>> = match wander {
            Some(w) => Box::new(w.chunks_mut(par::CHUNK).map(Some)),
            None => Box::new(std::iter::repeat_with(|| None)),
        };
        let chunks: Vec<Chunk<'_>> = pos
            .chunks_mut(par::CHUNK)
            .zip(pos_ticks.changed_mut().chunks_mut(par::CHUNK))
            .zip(vel.chunks_mut(par::CHUNK))
            .zip(vel_ticks.changed_mut().chunks_mut(par::CHUNK))
            .zip(status.chunks_mut(par::CHUNK))
            .zip(status_ticks.changed_mut().chunks_mut(par::CHUNK))
            .zip(wander_chunks)
            .enumerate()
            .map(|(index, ((((((p, pt), v), vt), s), st), w))| Chunk { index, p, pt, v, vt, s, st, w, now })
            .collect();
        let statuses_changed = par::map(&pool, chunks, |c| k.run(c)).contains(&true);
        if statuses_changed {
            // The kernel writes change ticks by hand, which leaves the column's summary tick
            // (what tells the batcher a registry scan would find something) alone: touch it
            // through an empty slice, which marks no row.
            status_ticks.reborrow().slice(0..0).mark_all_as_changed();
        }
    }
}

/// Slices of one chunk of a table, all the same length (`w` absent for agents).
struct Chunk<'a> {
    index: usize,
    p: &'a mut [Position],
    pt: &'a mut [Tick],
    v: &'a mut [Velocity],
    vt: &'a mut [Tick],
    s: &'a mut [Status],
    st: &'a mut [Tick],
    w: Option<&'a mut [Wander]>,
    now: Tick,
}

/// What the movement pass needs, copied out of the resources.
#[derive(Clone, Copy)]
struct Kernel {
    dt: f32,
    bounds: WorldBounds,
    wander: WanderRule,
    tick: u64,
}

impl Kernel {
    /// Integrates the chunk, then applies due wander turns (on this chunk's tick) while its
    /// velocities are still in cache; a new heading takes effect from the next tick. Returns
    /// whether a status changed.
    fn run(&self, c: Chunk<'_>) -> bool {
        let Chunk { index, p, pt, v, vt, s, st, w, now } = c;
        let n = p.len();
        let (pt, v, vt, s, st) = (&mut pt[..n], &mut v[..n], &mut vt[..n], &mut s[..n], &mut st[..n]);
        self.integrate(p, pt, v, vt, now);
        let mut changed = false;
        if let Some(w) = w
            && (self.tick + index as u64).is_multiple_of(WANDER_STRIDE)
        {
            for (i, w) in w[..n].iter_mut().enumerate() {
                if self.wander.is_due(w) {
                    v[i] = self.wander.turn(w);
                    vt[i] = now;
                    let want = if v[i].is_zero() { Status::Idle } else { Status::Moving };
                    if s[i] != want {
                        s[i] = want;
                        st[i] = now;
                        changed = true;
                    }
                }
            }
        }
        changed
    }

    /// `p += v · dt` for the chunk, four NPCs (twelve floats, three SIMD vectors) at a time, with
    /// the bounds check and the change ticks in the same pass; the rare NPC that left the bounds
    /// is folded back by [`reflect`].
    fn integrate(&self, p: &mut [Position], pt: &mut [Tick], v: &mut [Velocity], vt: &mut [Tick], now: Tick) {
        let b = &self.bounds;
        let pattern = |a: [f32; 3]| {
            [0, 1, 2].map(|k| {
                f32x4::from([a[(4 * k) % 3], a[(4 * k + 1) % 3], a[(4 * k + 2) % 3], a[(4 * k + 3) % 3]])
            })
        };
        let (lo, hi) = (pattern(b.min), pattern(b.max));
        let (dt, zero) = (f32x4::splat(self.dt), f32x4::splat(0.0));
        let groups = p.len() / 4;
        let mut escaped = false;
        {
            let pf: &mut [f32] = bytemuck::cast_slice_mut(&mut p[..groups * 4]);
            let vf: &[f32] = bytemuck::cast_slice(&v[..groups * 4]);
            for ((pg, vg), tg) in pf.chunks_exact_mut(12).zip(vf.chunks_exact(12)).zip(pt.chunks_exact_mut(4))
            {
                let (mut out, mut moving) = (0u32, 0u32);
                for k in 0..3 {
                    let pk = f32x4::from(<[f32; 4]>::try_from(&pg[4 * k..4 * k + 4]).expect("four floats"));
                    let vk = f32x4::from(<[f32; 4]>::try_from(&vg[4 * k..4 * k + 4]).expect("four floats"));
                    let np = pk + vk * dt;
                    pg[4 * k..4 * k + 4].copy_from_slice(&np.to_array());
                    out |= (np.simd_lt(lo[k]) | np.simd_gt(hi[k])).to_bitmask();
                    moving |= vk.simd_ne(zero).to_bitmask() << (4 * k);
                }
                for (e, t) in tg.iter_mut().enumerate() {
                    if (moving >> (3 * e)) & 7 != 0 {
                        *t = now;
                    }
                }
                escaped |= out != 0;
            }
        }
        for i in groups * 4..p.len() {
            let vi = v[i];
            if !vi.is_zero() {
                p[i] =
                    Position::new(p[i].x + vi.x * self.dt, p[i].y + vi.y * self.dt, p[i].z + vi.z * self.dt);
                pt[i] = now;
            }
        }
        // Escapes are rare (a wall hit every few hundred ticks per NPC); only chunks with one pay
        // for the scalar check.
        if escaped || groups * 4 < p.len() {
            for i in 0..p.len() {
                let pi = p[i];
                let inside = pi.x >= b.min[0]
                    && pi.x <= b.max[0]
                    && pi.y >= b.min[1]
                    && pi.y <= b.max[1]
                    && pi.z >= b.min[2]
                    && pi.z <= b.max[2];
                if !inside {
                    let vi = v[i];
                    let (np, nv) = reflect(pi, vi, b);
                    p[i] = np;
                    if nv != vi {
                        v[i] = nv;
                        vt[i] = now;
                    }
                }
            }
        }
    }
}

/// Folds a position that overshot the bounds back inside and reverses the velocity along every
/// axis it crossed. Pure, so every thread computes the same.
fn reflect(p: Position, v: Velocity, b: &WorldBounds) -> (Position, Velocity) {
    let axis = |x: f32, vx: f32, lo: f32, hi: f32| {
        if x < lo {
            ((lo + (lo - x)).min(hi), -vx)
        } else if x > hi {
            ((hi - (x - hi)).max(lo), -vx)
        } else {
            (x, vx)
        }
    };
    let (x, vx) = axis(p.x, v.x, b.min[0], b.max[0]);
    let (y, vy) = axis(p.y, v.y, b.min[1], b.max[1]);
    let (z, vz) = axis(p.z, v.z, b.min[2], b.max[2]);
    (Position::new(x, y, z), Velocity::new(vx, vy, vz))
}

type WalkerData = (
    Entity,
    &'static Position,
    &'static mut Velocity,
    &'static MoveTarget,
    &'static mut Status,
    &'static mut Wander,
);

/// Points NPCs with a [`MoveTarget`] at it; on arrival, stops them, removes the target and lets
/// plain NPCs wander again. Agents' targets are handled by their planner instead.
fn steer_to_targets(
    mut commands: Commands,
    mut walkers: Query<WalkerData, Without<terrarium_engine::Agent>>,
    clock: Res<SimClock>,
    config: Res<EngineConfig>,
) {
    let speed = config.npc.wander_speed.max(0.1);
    let dt = clock.dt_secs();
    for (e, pos, mut vel, target, mut status, mut wander) in &mut walkers {
        let (dx, dy, dz) = (target.0.x - pos.x, target.0.y - pos.y, target.0.z - pos.z);
        let dist = terrarium_engine::math::length3(dx, dy, dz);
        wander.next_turn = Wander::NEVER;
        if dist <= ARRIVE_DISTANCE {
            *vel = Velocity::ZERO;
            *status = Status::Idle;
            // Rest for the shortest wander interval, then wander again.
            let rest = clock.ticks_in_ms((config.npc.turn_min_s * 1000.0) as u64);
            wander.next_turn = u32::try_from(clock.tick + rest).unwrap_or(Wander::NEVER - 1);
            commands.entity(e).remove::<MoveTarget>();
            continue;
        }
        // Never overshoot: the last step lands on the target.
        let s = speed.min(dist / dt) / dist;
        let want = Velocity::new(dx * s, dy * s, dz * s);
        if *vel != want {
            *vel = want;
        }
        if *status != Status::Moving {
            *status = Status::Moving;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use terrarium_engine::{EngineConfig, NpcSpec, Order, Role};

    fn engine() -> Engine {
        let mut cfg = EngineConfig { threads: 2, tick_hz: 10, ..EngineConfig::default() };
        cfg.world.max = [100.0, 10.0, 100.0];
        Engine::builder(cfg).add_plugin(register).build().unwrap()
    }

    fn pos(engine: &Engine, id: terrarium_engine::NpcId) -> Position {
        *engine.world().get::<Position>(engine.entity(id).unwrap()).unwrap()
    }

    #[test]
    fn one_tick_moves_by_velocity_times_dt() {
        let mut engine = engine();
        let id = engine.spawn_npc(
            NpcSpec::new(Role::Scout, Position::new(50.0, 1.0, 50.0)).moving(Velocity::new(2.0, 0.0, -1.0)),
        );
        engine.tick();
        assert_eq!(pos(&engine, id), Position::new(50.2, 1.0, 49.9));
    }

    #[test]
    fn bounces_off_the_bounds_and_stays_inside() {
        let mut engine = engine();
        let id = engine.spawn_npc(
            NpcSpec::new(Role::Scout, Position::new(99.5, 1.0, 50.0)).moving(Velocity::new(10.0, 0.0, 0.0)),
        );
        engine.tick();
        let p = pos(&engine, id);
        assert!((p.x - 99.5).abs() < 1e-4, "reflected back to 99.5, got {p:?}");
        let v = *engine.world().get::<Velocity>(engine.entity(id).unwrap()).unwrap();
        assert!(v.x < 0.0, "velocity reversed");
        engine.run_ticks(200);
        let p = pos(&engine, id);
        assert!((0.0..=100.0).contains(&p.x));
    }

    #[test]
    fn still_npcs_are_not_marked_changed() {
        let mut engine = engine();
        let still = engine.spawn_npc(NpcSpec::new(Role::Guard, Position::new(5.0, 1.0, 5.0)));
        let moving = engine.spawn_npc(
            NpcSpec::new(Role::Guard, Position::new(5.0, 1.0, 5.0)).moving(Velocity::new(1.0, 0.0, 0.0)),
        );
        let before = engine.world_mut().change_tick();
        engine.tick();
        let world = engine.world();
        let changed = |id| {
            let e = engine.entity(id).unwrap();
            world
                .entity(e)
                .get_ref::<Position>()
                .unwrap()
                .last_changed()
                .is_newer_than(before, world.read_change_tick())
        };
        assert!(changed(moving));
        assert!(!changed(still), "a still NPC must not produce a position row");
    }

    #[test]
    fn move_order_walks_to_the_target_and_stops() {
        let mut engine = engine();
        let id = engine.spawn_npc(NpcSpec::new(Role::Trader, Position::new(10.0, 1.0, 10.0)));
        let target = Position::new(13.0, 1.0, 14.0);
        engine
            .command_sender()
            .send(terrarium_engine::Command::Order { id, order: Order::MoveTo(target) })
            .unwrap();
        // 5 blocks at 1.4 blocks/s and 10 Hz: about 36 ticks, plus one to notice arrival.
        // 5 blocks at 1.4 blocks/s and 10 Hz: about 36 ticks, plus one to notice arrival.
        let e = engine.entity(id).unwrap();
        let mut ticks = 0;
        while engine.world().get::<MoveTarget>(e).is_some() || ticks == 0 {
            engine.tick();
            ticks += 1;
            assert!(ticks <= 40, "still walking after 40 ticks: {:?}", pos(&engine, id));
        }
        assert!(pos(&engine, id).distance(target) <= ARRIVE_DISTANCE, "{:?}", pos(&engine, id));
        assert_eq!(engine.world().get::<Velocity>(e), Some(&Velocity::ZERO));
        assert_eq!(engine.world().get::<Status>(e), Some(&Status::Idle));
    }
}
