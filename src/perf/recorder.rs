//! The tick side of [`crate::perf::Performance`]: a system that records each finished tick
//! into HDR histograms and copies the engine's counters, without ever waiting on a reader.

use std::sync::{Mutex, TryLockError};
use std::time::{Duration, Instant};

use bevy_ecs::prelude::*;
use hdrhistogram::Histogram;
use terrarium_engine::{Agent, NpcIndex, ParPool, SimClock, StageTimings, TickSet};
use terrarium_systems::agents::PathStats;
use terrarium_systems::batching::{BatcherStats, PersistenceHealth};

use super::Performance;

/// Samples kept on the tick thread while a reader holds the lock (a reader holds it for a
/// memory copy, so a handful is plenty; more are counted as lost, never waited for).
const MAX_PENDING: usize = 256;

/// Histogram range in microseconds: 1 µs to one minute; longer samples count as one minute.
const MAX_US: u64 = 60_000_000;

/// Storage lag range in milliseconds: up to one day; longer samples count as one day.
const MAX_LAG_MS: u64 = 86_400_000;

/// The resource the recording system works from.
#[derive(Resource)]
pub(crate) struct Probe {
    pub(crate) handle: Performance,
    /// `StageTimings::ticks` already recorded.
    recorded_through: u64,
    pending: Vec<Sample>,
    lost: u64,
}

impl Probe {
    pub(crate) fn new(handle: Performance) -> Self {
        Self { handle, recorded_through: 0, pending: Vec::with_capacity(MAX_PENDING), lost: 0 }
    }
}

/// One finished tick.
#[derive(Debug, Clone, Copy)]
struct Sample {
    started: Instant,
    tick_us: u64,
    stage_us: [u64; 6],
    /// Storage lag at the end of the tick (`None` without batching).
    store_lag_ms: Option<u64>,
}

/// What the tick thread publishes; readers copy it under the lock and compute outside it.
#[derive(Debug, Clone)]
pub(crate) struct TickSide {
    pub(crate) current: Window,
    pub(crate) previous: Window,
    pub(crate) ticks_total: u64,
    pub(crate) samples_lost: u64,
    pub(crate) tick: u64,
    pub(crate) tick_hz: u32,
    pub(crate) npcs: u64,
    pub(crate) agents: u64,
    pub(crate) threads: u64,
    pub(crate) last_stage_us: [u64; 6],
    pub(crate) batcher: Option<BatcherStats>,
    pub(crate) paths: Option<PathStats>,
}

impl TickSide {
    pub(crate) fn new() -> Self {
        Self {
            current: Window::new(),
            previous: Window::new(),
            ticks_total: 0,
            samples_lost: 0,
            tick: 0,
            tick_hz: 0,
            npcs: 0,
            agents: 0,
            threads: 0,
            last_stage_us: [0; 6],
            batcher: None,
            paths: None,
        }
    }

    /// Adds a finished tick; the window turns over when the current one is `window` old.
    fn add(&mut self, s: &Sample, window: Duration) {
        match self.current.started {
            Some(started) if s.started.saturating_duration_since(started) >= window => {
                std::mem::swap(&mut self.current, &mut self.previous);
                self.current.clear(s.started);
            }
            Some(_) => {}
            None => self.current.started = Some(s.started),
        }
        self.current.ticks += 1;
        self.current.tick.saturating_record(s.tick_us.min(MAX_US));
        for (h, &us) in self.current.stages.iter_mut().zip(&s.stage_us) {
            h.saturating_record(us.min(MAX_US));
        }
        if let Some(ms) = s.store_lag_ms {
            self.current.store_lag_ms.saturating_record(ms.min(MAX_LAG_MS));
        }
        self.ticks_total += 1;
        self.last_stage_us = s.stage_us;
    }
}

/// Histograms of one window of wall-clock time.
#[derive(Debug, Clone)]
pub(crate) struct Window {
    /// Start of the first tick in the window.
    pub(crate) started: Option<Instant>,
    pub(crate) ticks: u64,
    /// Whole ticks, microseconds.
    pub(crate) tick: Histogram<u64>,
    /// Each stage, microseconds, indexed by `TickSet::index`.
    pub(crate) stages: [Histogram<u64>; 6],
    /// Storage lag sampled at the end of each tick, milliseconds of simulated time.
    pub(crate) store_lag_ms: Histogram<u64>,
}

impl Window {
    fn new() -> Self {
        let h = || Histogram::new_with_bounds(1, MAX_US, 2).expect("static bounds are valid");
        let lag = Histogram::new_with_bounds(1, MAX_LAG_MS, 2).expect("static bounds are valid");
        Self { started: None, ticks: 0, tick: h(), stages: std::array::from_fn(|_| h()), store_lag_ms: lag }
    }

    fn clear(&mut self, started: Instant) {
        self.started = Some(started);
        self.ticks = 0;
        self.tick.reset();
        self.store_lag_ms.reset();
        for h in &mut self.stages {
            h.reset();
        }
    }

    /// Storage lag of this window and `older` together (milliseconds).
    pub(crate) fn merged_lag(&self, older: &Window) -> Histogram<u64> {
        let mut lag = self.store_lag_ms.clone();
        // Same bounds and precision on both sides, so adding can't fail.
        let _ = lag.add(&older.store_lag_ms);
        lag
    }

    /// This window and `older` together.
    pub(crate) fn merged(&self, older: &Window) -> (Histogram<u64>, [Histogram<u64>; 6]) {
        let mut tick = self.tick.clone();
        let mut stages = self.stages.clone();
        // Same bounds and precision on both sides, so adding can't fail.
        let _ = tick.add(&older.tick);
        for (h, o) in stages.iter_mut().zip(&older.stages) {
            let _ = h.add(o);
        }
        (tick, stages)
    }
}

/// What the recording system reads from the world.
type Counters<'w, 's> = (
    Res<'w, SimClock>,
    Res<'w, NpcIndex>,
    Query<'w, 's, (), With<Agent>>,
    Option<Res<'w, BatcherStats>>,
    Option<Res<'w, PathStats>>,
    Res<'w, ParPool>,
    Option<Res<'w, PersistenceHealth>>,
);

/// Records the last finished tick (its times are known only once it has ended, so this runs
/// at the start of the next one, in `Input`, or from [`crate::perf::publish_now`]) and
/// publishes the engine's counters. Reads no clock: the engine measured the tick.
pub(crate) fn record(mut probe: ResMut<Probe>, timings: Res<StageTimings>, counters: Counters) {
    let probe = &mut *probe;
    let store_lag_ms = counters.6.as_ref().map(|h| h.store_lag_ms);
    if timings.ticks > probe.recorded_through {
        probe.recorded_through = timings.ticks;
        if let Some(started) = timings.last_started {
            let sample = Sample {
                started,
                tick_us: micros(timings.last_tick),
                stage_us: std::array::from_fn(|i| micros(timings.last[i])),
                store_lag_ms,
            };
            if probe.pending.len() < MAX_PENDING {
                probe.pending.push(sample);
            } else {
                probe.lost += 1;
            }
        }
    }
    let shared = &probe.handle.shared;
    let mut side = match shared.tick.try_lock() {
        Ok(side) => side,
        // A reader is copying: keep the samples for the next tick rather than wait.
        Err(TryLockError::WouldBlock) => return,
        Err(TryLockError::Poisoned(p)) => p.into_inner(),
    };
    for s in probe.pending.drain(..) {
        side.add(&s, shared.window);
    }
    let (clock, index, agents, batcher, paths, pool, _) = counters;
    side.samples_lost = probe.lost;
    side.tick = clock.tick;
    side.tick_hz = clock.tick_hz;
    side.npcs = index.len() as u64;
    side.agents = agents.count() as u64;
    side.threads = pool.threads() as u64;
    side.batcher = batcher.map(|b| b.clone());
    side.paths = paths.map(|p| p.clone());
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Adds the recording system to the start of the tick.
pub(crate) fn register(engine: &mut terrarium_engine::Engine, handle: Performance) {
    engine.world_mut().insert_resource(Probe::new(handle));
    engine.add_systems(TickSet::Input, record);
}

/// The shared half of the tick side, as [`Performance`] holds it.
pub(crate) type SharedTick = Mutex<TickSide>;

/// Stage names in run order (for snapshots).
pub(crate) fn stage_names() -> impl Iterator<Item = &'static str> {
    TickSet::ALL.iter().map(|s| s.name())
}
