//! Batching of position, metric and event updates: the `Record` stage builds at most one
//! [`WriteBatch`] per tick, the `Flush` stage hands it to a [`BatchSink`] (normally the
//! write-behind queue).
//!
//! # Streams and when they flush
//! All limits come from `EngineConfig::batching`; ages are simulated time (ticks). Positions
//! also wait for the sink (below).
//!
//! - **Positions**: one row per NPC whose `Position` changed since the last position flush,
//!   with its latest position (latest wins). Due when *more than* `max_items` NPCs wait (the
//!   batch is full and a new NPC would not fit: NPCs already waiting add no row when they move
//!   again), or when the oldest change is `max_age_ms` old; due by size at most once per
//!   `min_interval_ms` (simulated) after the previous position flush in a world of at least
//!   `min_interval_npcs` NPCs, except the first position flush after a tick that applied
//!   commands (a spawned or teleported NPC is stored where it was put, when the sink can take
//!   that flush: while it is still busy with the previous one, the cut waits, see below, and an
//!   NPC that walks on meanwhile is stored where it is then). So 100 NPCs walking
//!   with the default 100 rows / 500 ms flush by age, twice a second; 150 by size every tick;
//!   a million (over the default 100 000) every 4th tick at 20 Hz with the default 200 ms.
//! - **Registry**: an `NpcRecord` for each NPC spawned since the last position flush (found in
//!   the same pass), and for each NPC whose role, status, swarm, health or inventory changed
//!   (looked for at most once per positions `max_age_ms`, so a big world does not scan five
//!   columns every tick, and not at all while no table's state columns changed: those five
//!   components keep bevy summary ticks, one per table, and the batcher reads them every tick);
//!   removals from `TickLog::despawned`. Code that writes their change ticks by hand (the
//!   movement pass does, for `Status`) must touch the summary tick too
//!   (`mark_all_as_changed` on an empty slice of the column's ticks), or the change is not
//!   looked for.
//! - **Metrics** ([`Metrics`]): one row per (entity, metric) per flush. Due at more than
//!   `max_items` rows or `max_age_ms` after the first sample.
//! - **Events** ([`DomainEvents`] → [`EventBatcher`]): due at more than `max_items` or
//!   `max_age_ms`; identical events within `dedup_window_ms` become one row with a count;
//!   payloads over `compress_threshold_bytes` are compressed.
//!
//! A batch is cut when positions are due, when metrics or events pass their size limit, or
//! when any stream is due by age while no position row waits. Otherwise a stream that is due
//! waits for the next position flush (at most the positions' `max_age_ms` later), so every
//! stream shares one store call. A cut batch carries every waiting position, event and
//! registry row, and the metrics only when they are due (their interval is what aggregates).
//!
//! # Positions wait for the sink
//! Positions (and the spawns found with them) are cut only when the sink can take them
//! ([`BatchSink::wants_positions`]: no position batch waits in the write-behind). A batch that
//! would wait there is overwritten by the next one (latest wins), so cutting it every tick
//! copied a whole population per tick for nothing; now a population is copied once per store
//! call, and the NPCs' own `Position` components are the buffer in between. While positions
//! wait for the sink they count as "no position row waits" above, so other streams flush on
//! their own. The consequence: *which* ticks batches are cut at depends on how fast the store
//! is, not only on seed and inputs (with a sink that always says yes, like
//! `testing::RecordingSink`, it still depends only on them). The world never depends on
//! batching, so `world_hash` is unaffected.
//!
//! # Big worlds cut over several ticks
//! At a million NPCs a position cut copies about as many bytes as the movement pass touches,
//! so the tick that cuts costs nearly twice the others. In a world of at least
//! `positions.min_interval_npcs` NPCs, a cut due by size or age is therefore read a slice of
//! chunks per tick over `positions.spread_ms` (default 400 ms: 8 ticks at 20 Hz; at least four
//! chunks, 65 536 NPCs, per slice, so a world under 131 072 NPCs is cut in one tick; at most 16
//! slices), on the tick's own thread. Each chunk's rows are its NPCs as they
//! are on its slice's tick (pending: changed since the previous cut's start). The batch carries
//! the tick the cut *began* (so the storage lag never claims more than the store holds), is
//! handed over after the last slice, and the next cut is due `min_interval_ms` after this one
//! began. Nothing else is cut meanwhile: metrics and events wait for that batch. A spread cut
//! does not wait for [`BatchSink::wants_positions`] either: cuts are spaced by `spread_ms`
//! anyway, and a store slower than that gets the newest whole batch when it is free (the
//! write-behind drops a waiting one for it), so the store never idles while a cut is read.
//!
//! A slice names rows by table slot, so a spread cut is only right if every NPC stays in its
//! slot until it ends. It is dropped, and the cut done in one pass on that tick instead, when
//! the tick applied commands (what a command changed is stored as it was ordered), when it is
//! forced ([`flush_now`], checkpoints), when an NPC was spawned or despawned, when a table's
//! length changed, and at its end when the ids it read are not exactly the index's: their
//! count and the wrapping sum of a 64-bit mix of each id ([`NpcIndex::fingerprint`]) must both
//! match, which rows swapped between tables with every length intact (an NPC given a component
//! while another lost one) cannot pass, barring a 64-bit collision.
//! `BatcherStats::spread_cuts` and `spreads_redone` count both.

mod events;
mod metrics;
mod positions;
mod stats;

use std::sync::Arc;

use bevy_ecs::prelude::*;
use bevy_ecs::system::{SystemChangeTick, SystemParam};
use terrarium_engine::{Engine, EngineConfig, NpcId, NpcIndex, ParPool, SimClock, TickLog, TickSet};
use terrarium_persistence::{BatchSink, Handoff, NpcRecord, PositionColumns, WriteBatch};

pub use events::{DomainEvent, DomainEvents, EventBatcher, Subject, decode_payload};
pub use metrics::{Metrics, names as metric_names};
pub use stats::{BatcherStats, PersistenceHealth, StreamStats};

use positions::{Marks, Note, NpcData, Want};

use crate::par;

/// Options of the batching plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchingOptions {
    /// Record the wall-clock time of each stage as a metric (`stage_us`). The only
    /// non-reproducible content of a batch; turn it off to compare batches between runs.
    pub stage_times: bool,
}

impl Default for BatchingOptions {
    fn default() -> Self {
        Self { stage_times: true }
    }
}

/// The batching plugin, handing batches to `sink`.
///
/// # Examples
/// ```
/// use std::sync::Arc;
/// use terrarium_engine::{Engine, EngineConfig, NpcSpec, Position, Role, Velocity};
/// use terrarium_persistence::testing::RecordingSink;
/// use terrarium_systems::batching;
///
/// let sink = Arc::new(RecordingSink::new(1));
/// let mut engine = Engine::builder(EngineConfig::default())
///     .add_plugin(terrarium_systems::core_plugin)
///     .add_plugin(batching::plugin(sink.clone()))
///     .build()
///     .unwrap();
/// let spec = NpcSpec::new(Role::Scout, Position::new(10.0, 0.0, 10.0)).moving(Velocity::new(1.0, 0.0, 0.0));
/// let id = engine.spawn_npc(spec);
/// engine.run_ticks(11); // 500 ms at 20 Hz: the position flush is due
/// let batch = &sink.batches()[0];
/// assert_eq!(batch.npcs[0].id, id.0);
/// assert_eq!(batch.positions.len(), 1);
/// ```
pub fn plugin(sink: Arc<dyn BatchSink>) -> impl Fn(&mut Engine) + 'static {
    plugin_with(sink, BatchingOptions::default())
}

/// [`plugin`] with options.
pub fn plugin_with(sink: Arc<dyn BatchSink>, options: BatchingOptions) -> impl Fn(&mut Engine) + 'static {
    move |engine: &mut Engine| register(engine, Arc::clone(&sink), options)
}

/// Adds the batching resources and systems: `Record` samples metrics, takes despawns and
/// events, and cuts the batch; `Flush` hands it over and mirrors the sink's health.
pub fn register(engine: &mut Engine, sink: Arc<dyn BatchSink>, options: BatchingOptions) {
    let ev = engine.config().batching.events.clone();
    let world = engine.world_mut();
    world.insert_resource(EventBatcher::new(sink.run_id(), ev.dedup_window_ms, ev.compress_threshold_bytes));
    world.insert_resource(Sink(sink));
    let started_tick = world.get_resource::<SimClock>().map_or(0, |c| c.tick);
    world.insert_resource(PositionBatcher { started_tick, ..PositionBatcher::default() });
    world.insert_resource(Metrics::default());
    world.insert_resource(DomainEvents::default());
    world.insert_resource(Registry::default());
    world.insert_resource(Outgoing::default());
    world.insert_resource(BatcherStats::default());
    world.insert_resource(PersistenceHealth::default());
    world.insert_resource(metrics::SampleStageTimes(options.stage_times));
    if let Some(StoredWorld(at)) = world.remove_resource::<StoredWorld>() {
        take_as_stored(world, at);
    }
    engine.add_systems(
        TickSet::Record,
        (metrics::sample_metrics, record_despawns, record_events, cut_batch).chain(),
    );
    engine.add_systems(TickSet::Flush, (hand_over, mirror_health).chain());
}

/// Cuts a batch now with everything that waits (positions, registry rows, metrics, events),
/// whatever the limits say, and hands it to the sink. Call it between ticks before shutting the
/// sink down, so that what changed since the last flush is written too. Returns false when the
/// engine has no batching.
///
/// # Examples
/// ```
/// use std::sync::Arc;
/// use terrarium_engine::{Engine, EngineConfig, NpcSpec, Position, Role};
/// use terrarium_persistence::testing::RecordingSink;
/// use terrarium_systems::batching;
///
/// let sink = Arc::new(RecordingSink::new(1));
/// let mut engine = Engine::builder(EngineConfig::default()).add_plugin(batching::plugin(sink.clone())).build().unwrap();
/// engine.spawn_npc(NpcSpec::new(Role::Guard, Position::new(1.0, 0.0, 1.0)));
/// engine.tick();
/// assert!(sink.batches().is_empty(), "not due yet");
/// assert!(batching::flush_now(&mut engine));
/// assert_eq!(sink.batches()[0].npcs.len(), 1);
/// ```
pub fn flush_now(engine: &mut Engine) -> bool {
    let world = engine.world_mut();
    if !world.contains_resource::<Sink>() {
        return false;
    }
    cut_forced(world);
    world
        .run_system_cached(hand_over)
        .expect("batching systems take no input and their resources are installed");
    true
}

/// Cuts a batch now with everything that waits, as [`flush_now`] does, but returns it instead
/// of handing it to the sink: for a caller that must do something first (a new world's first
/// checkpoint is stored before its whole population goes to the store) and then submits it
/// itself. `None` when nothing waits or the engine has no batching.
pub fn cut_now(engine: &mut Engine) -> Option<Handoff> {
    let world = engine.world_mut();
    if !world.contains_resource::<Sink>() {
        return None;
    }
    cut_forced(world);
    world.resource_mut::<Outgoing>().0.take()
}

/// Whether the batching plugin is registered in `engine`.
#[must_use]
pub fn is_registered(engine: &Engine) -> bool {
    engine.world().contains_resource::<Sink>()
}

/// Runs the `Record` stage's batching systems with the limits lifted; the batch waits in
/// [`Outgoing`].
fn cut_forced(world: &mut World) {
    world.resource_mut::<PositionBatcher>().force = true;
    let ran = [
        world.run_system_cached(record_despawns),
        world.run_system_cached(record_events),
        world.run_system_cached(cut_batch),
    ];
    for r in ran {
        r.expect("batching systems take no input and their resources are installed");
    }
    // Reported now; the next tick must not report them again.
    world.resource_mut::<TickLog>().despawned.clear();
}

/// Takes the world as it is now as already stored: the next batches carry only what changes
/// from here on (positions, spawns, state changes), not the whole population. Call it right
/// after resuming a world from the store that holds exactly this state, so the first store call
/// of a resumed million-NPC world is not a million registry rows and positions sent again.
/// Without batching yet, the world is marked and [`register`] takes the mark when the plugin
/// is added later (a game server adds it after building the world).
///
/// # Examples
/// ```
/// use std::sync::Arc;
/// use terrarium_engine::{Engine, EngineConfig, NpcSpec, Position, Role};
/// use terrarium_persistence::testing::RecordingSink;
/// use terrarium_systems::batching;
///
/// let sink = Arc::new(RecordingSink::new(1));
/// let mut engine = Engine::builder(EngineConfig::default()).add_plugin(batching::plugin(sink.clone())).build().unwrap();
/// engine.spawn_npc(NpcSpec::new(Role::Guard, Position::new(1.0, 0.0, 1.0)));
/// batching::mark_stored(&mut engine);
/// engine.run_ticks(20);
/// batching::flush_now(&mut engine);
/// assert!(sink.batches().iter().all(|b| b.npcs.is_empty() && b.positions.is_empty()));
/// ```
pub fn mark_stored(engine: &mut Engine) {
    let world = engine.world_mut();
    // Every change so far carries a change tick at or before this one; the batcher's marks
    // compare with "newer than", so nothing made so far counts as pending, and whatever is
    // changed after this call (even before batching is registered) is.
    let now = world.change_tick();
    world.increment_change_tick();
    if world.contains_resource::<PositionBatcher>() {
        take_as_stored(world, now);
    } else {
        world.insert_resource(StoredWorld(now));
    }
}

/// Marks a world whose state as of a change tick the store holds (left by [`mark_stored`]
/// before batching was registered; [`register`] takes it).
#[derive(Resource, Debug, Clone, Copy)]
pub struct StoredWorld(bevy_ecs::change_detection::Tick);

fn take_as_stored(world: &mut World, now: bevy_ecs::change_detection::Tick) {
    let added = world.get_resource::<NpcIndex>().map_or(0, NpcIndex::added_total);
    let tick = world.get_resource::<SimClock>().map_or(0, |c| c.tick);
    *world.resource_mut::<PositionBatcher>() = PositionBatcher {
        last_flush: now,
        last_run: now,
        last_state: now,
        last_state_tick: Some(tick),
        added_at_flush: added,
        started_tick: tick,
        ..PositionBatcher::default()
    };
    let mut registry = world.resource_mut::<Registry>();
    registry.records.clear();
    registry.removed.clear();
    registry.first_pending_tick = None;
    if let Some(mut log) = world.get_resource_mut::<TickLog>() {
        log.despawned.clear();
    }
}

/// The sink batches go to.
#[derive(Resource, Clone)]
pub struct Sink(pub Arc<dyn BatchSink>);

/// Position batching state kept between ticks.
#[derive(Resource, Debug, Default)]
struct PositionBatcher {
    /// Change ticks of the last position flush, the last run, the last registry scan.
    last_flush: bevy_ecs::change_detection::Tick,
    last_run: bevy_ecs::change_detection::Tick,
    last_state: bevy_ecs::change_detection::Tick,
    /// Simulated tick of the last registry scan.
    last_state_tick: Option<u64>,
    /// Tick the oldest waiting change was first counted.
    first_pending_tick: Option<u64>,
    /// Simulated tick of the last position flush (`positions.min_interval_ms` counts from it).
    last_flush_tick: Option<u64>,
    /// Commands were applied since the last position flush: the next one is not held back by
    /// `positions.min_interval_ms` (what a command changed is stored as it was ordered).
    commanded: bool,
    /// NPC moves counted since the last flush (one per NPC per tick it moved).
    moves_since_flush: u64,
    /// `NpcIndex::added_total` at the last position flush: unchanged means no spawn to find.
    added_at_flush: u64,
    /// Cut a batch at the next run whatever the limits say ([`flush_now`]).
    force: bool,
    /// No role, status, swarm, health or inventory column changed since the last registry
    /// scan (false until the first one: a scan runs).
    state_clean: bool,
    /// A position cut being done a slice per tick.
    spread: Option<positions::Spread>,
    /// Tick batching started at: the storage lag counts from here until the first commit.
    started_tick: u64,
}

/// Registry rows waiting for the next batch.
#[derive(Resource, Debug, Default)]
struct Registry {
    records: Vec<NpcRecord>,
    removed: Vec<u64>,
    first_pending_tick: Option<u64>,
}

/// The batch cut in `Record`, handed over in `Flush`.
#[derive(Resource, Debug, Default)]
struct Outgoing(Option<Handoff>);

/// What `cut_batch` reads.
#[derive(SystemParam)]
struct Env<'w> {
    clock: Res<'w, SimClock>,
    config: Res<'w, EngineConfig>,
    pool: Res<'w, ParPool>,
    index: Res<'w, NpcIndex>,
    sink: Res<'w, Sink>,
    log: Res<'w, TickLog>,
}

/// The batchers `cut_batch` drains.
#[derive(SystemParam)]
struct Batchers<'w> {
    metrics: ResMut<'w, Metrics>,
    events: ResMut<'w, EventBatcher>,
    registry: ResMut<'w, Registry>,
    outgoing: ResMut<'w, Outgoing>,
    stats: ResMut<'w, BatcherStats>,
}

impl Batchers<'_> {
    /// Records what waits when the tick cuts no batch: `positions` pending rows, and the
    /// metrics and events held by their batchers.
    fn waiting(&mut self, positions: usize) {
        self.stats.positions.pending_items = positions as u64;
        self.stats.metrics.pending_items = self.metrics.pending() as u64;
        self.stats.events.pending_items = self.events.pending() as u64;
    }
}

/// Despawns since the last tick become removals and events.
fn record_despawns(
    log: Res<TickLog>,
    clock: Res<SimClock>,
    mut registry: ResMut<Registry>,
    mut events: ResMut<EventBatcher>,
    mut stats: ResMut<BatcherStats>,
) {
    if log.despawned.is_empty() {
        return;
    }
    registry.removed.extend(log.despawned.iter().map(|id| id.0));
    registry.first_pending_tick.get_or_insert(clock.tick);
    let list = log.despawned.iter().map(|&id| (id, DomainEvent::NpcDespawned)).collect();
    let bulk = |count, first_id, last_id| DomainEvent::NpcsDespawned { count, first_id, last_id };
    per_npc_or_bulk(list, bulk, (clock.tick, clock.now_ms()), &mut events, &mut stats);
}

/// Events emitted by systems this tick go to the event batcher.
fn record_events(
    mut queue: ResMut<DomainEvents>,
    clock: Res<SimClock>,
    mut events: ResMut<EventBatcher>,
    mut stats: ResMut<BatcherStats>,
) {
    let (tick, ms) = (clock.tick, clock.now_ms());
    for (subject, correlation, e) in queue.drain() {
        events.push(tick, ms, subject, correlation, &e, &mut stats);
    }
}

/// Decides whether a batch is due (see the module docs) and builds it.
fn cut_batch(
    npcs: Query<NpcData>,
    ticks: SystemChangeTick,
    env: Env,
    mut state: ResMut<PositionBatcher>,
    mut b: Batchers,
) {
    let Env { clock, config, pool, index, sink, log } = env;
    let cfg = &config.batching;
    let tick = clock.tick;
    let aged =
        |first: Option<u64>, ms: u64| first.is_some_and(|f| tick.saturating_sub(f) >= clock.ticks_in_ms(ms));
    let m = Marks {
        flush: state.last_flush,
        run: state.last_run,
        state: state.last_state,
        now: ticks.this_run(),
    };
    state.last_run = m.now;
    let force = std::mem::take(&mut state.force);

    // Summary ticks say, per table, whether a state column changed since this system last ran
    // (it runs every tick): a registry scan finds nothing until one did.
    if positions::state_changed(&npcs) {
        state.state_clean = false;
    }
    let count = positions::count_pending(&npcs, m, cfg.positions.max_items);
    if count.pending == 0 {
        // Nothing waits (the NPCs that moved may have been despawned since).
        state.first_pending_tick = None;
    } else {
        state.first_pending_tick.get_or_insert(tick);
    }
    if !count.capped {
        state.moves_since_flush += count.moved_now;
    }
    state.commanded |= log.commands_applied > 0;

    // A cut spread over ticks goes on (and nothing else is cut meanwhile: the streams wait for
    // its batch), ends, or is redone in one pass now when the rows moved under it.
    let mut redo: Option<(PositionColumns, bool)> = None;
    let mut spread_done = None;
    if let Some(mut s) = state.spread.take() {
        if force || log.commands_applied > 0 || !s.intact(&npcs, &index) {
            redo = Some((std::mem::take(&mut s.columns), s.want.state));
        } else {
            s.step(&npcs, m);
            if !s.is_done() {
                state.spread = Some(s);
                b.waiting(count.pending);
                return;
            }
            let (marks, at, want, added) = (s.marks, s.tick, s.want, s.added);
            match s.finish(&index) {
                Ok((collected, columns)) => spread_done = Some((marks, at, want, added, collected, columns)),
                Err(columns) => redo = Some((columns, want.state)),
            }
        }
        if redo.is_some() {
            b.stats.spreads_redone += 1;
        }
    }

    let p_pending = count.pending > 0;
    let spaced_world = cfg.positions.min_interval_ms > 0 && index.len() >= cfg.positions.min_interval_npcs;
    // A big world's cut is read a slice per tick over `spread_ms` (two slices at least).
    let slices = usize::try_from(clock.ticks_in_ms(cfg.positions.spread_ms)).unwrap_or(1).min(16);
    let spreads = spaced_world
        && slices >= 2
        && index.len() > positions::CHUNKS_PER_SLICE * par::CHUNK
        && !force
        && !state.commanded
        && redo.is_none();
    // Positions are cut only when the sink can take them: a position batch waiting in the
    // write-behind would be overwritten by the next one, so copying it would be wasted. A
    // spread cut does not wait: it is handed over a `spread_ms` later, and whatever of the
    // previous one still waits then is older, so the write-behind drops it for the new one.
    let p_ready = p_pending && (force || spreads || sink.0.wants_positions());
    let m_size = b.metrics.pending() > cfg.metrics.max_items;
    let m_due = force || m_size || aged(b.metrics.first_pending_tick(), cfg.metrics.max_age_ms);
    let state_due = state
        .last_state_tick
        .is_none_or(|t| tick.saturating_sub(t) >= clock.ticks_in_ms(cfg.positions.max_age_ms));

    // The batch's tick, the new flush mark and the ids added by then (a spread cut: its start's).
    let (mut cut, want, mut collected, columns, at, flush_mark, added_at);
    if let Some((marks, start, w, added, c, cols)) = spread_done {
        (cut, want, collected, columns, at, flush_mark, added_at) =
            (true, w, c, cols, start, marks.now, added);
        if want.state {
            state.last_state = marks.now;
            state.last_state_tick = Some(start);
        }
    } else {
        // Due by size at most once per `min_interval_ms` since the last position flush in a big
        // world, unless commands changed something since (simulated time, population and
        // commands: with a sink that always takes them, the cut ticks still depend only on seed
        // and inputs); due by age whatever the interval; at once when a spread cut is redone.
        let spaced = state.commanded
            || index.len() < cfg.positions.min_interval_npcs
            || state
                .last_flush_tick
                .is_none_or(|t| tick.saturating_sub(t) >= clock.ticks_in_ms(cfg.positions.min_interval_ms));
        let p_due = p_ready
            && (redo.is_some()
                || (count.capped && spaced)
                || aged(state.first_pending_tick, cfg.positions.max_age_ms));
        let e_size = b.events.pending() > cfg.events.max_items;
        let e_due = e_size || aged(b.events.first_pending_tick(), cfg.events.max_age_ms);
        let r_due = aged(b.registry.first_pending_tick, cfg.positions.max_age_ms);
        let anything = p_pending
            || b.metrics.pending() > 0
            || b.events.pending() > 0
            || b.registry.first_pending_tick.is_some();
        cut = (force && anything) || p_due || m_size || e_size || (!p_ready && (m_due || e_due || r_due));
        // Without a cut, the registry scan only runs when no position flush is coming to carry it.
        // Where cuts are spread, positions never ride along in one pass with a batch cut for
        // another stream (events or metrics over their size): they wait for their own cut.
        let positions = cut && p_ready && (p_due || !spreads);
        let spawns = positions && index.added_total() != state.added_at_flush;
        // The registry scan rides along with a cut (one pass over the NPCs), or runs alone when
        // no position flush is coming to carry it. In a world whose position cuts are spaced
        // (big worlds), it runs on a tick without a position cut instead, so the two passes
        // never add up in one tick (at a million NPCs that tick was the p99); once it is twice
        // overdue (a cut every tick: commands every tick) it rides along again; a spread cut
        // carries it in its slices, spread as well. It is skipped (and counts as done) while no
        // state column changed since the last one.
        let overdue = state
            .last_state_tick
            .is_none_or(|t| tick.saturating_sub(t) >= 2 * clock.ticks_in_ms(cfg.positions.max_age_ms));
        let scan = if spaced_world && !force && !overdue { !positions } else { cut || !p_ready };
        let redo_state = redo.as_ref().is_some_and(|r| r.1);
        let w = Want { positions, spawns, state: redo_state || (state_due && scan && !state.state_clean) };
        let mut cols = PositionColumns::default();
        if w.positions {
            cols = match redo.take() {
                Some((c, _)) => c,
                None => sink.0.reuse_columns().unwrap_or_default(),
            };
        }
        if p_due && w.positions && spreads {
            let sw = Want { state: state_due && !state.state_clean, ..w };
            match positions::Spread::start(&npcs, &index, m, tick, sw, slices, cols) {
                Ok(s) => {
                    if state_due {
                        // Scanned from here on (by the spread), or nothing to scan.
                        state.state_clean = true;
                        if !sw.state {
                            state.last_state = m.now;
                            state.last_state_tick = Some(tick);
                        }
                    }
                    b.stats.spread_cuts += 1;
                    state.spread = Some(s);
                    b.waiting(count.pending);
                    return;
                }
                Err(c) => cols = c,
            }
        }
        if state_due && scan && state.state_clean && !w.state {
            // Nothing changed since the last scan: it counts as done.
            state.last_state = m.now;
            state.last_state_tick = Some(tick);
        }
        let mut c = positions::Collected::default();
        if w.positions || w.state {
            c = positions::collect(&pool, &npcs, m, tick, w, &mut cols);
            if w.state {
                state.last_state = m.now;
                state.last_state_tick = Some(tick);
                state.state_clean = true;
            }
            // State changes found without a position flush coming have waited long enough.
            cut |= !c.records.is_empty();
        }
        (want, collected, columns, at, flush_mark, added_at) = (w, c, cols, tick, m.now, index.added_total());
    }
    if !cut {
        b.waiting(count.pending);
        return;
    }
    b.stats.positions.pending_items = count.pending as u64;

    let complete = want.positions && collected.rows == collected.entities;
    if want.positions {
        if count.capped {
            state.moves_since_flush += collected.moved_now;
        }
        let rows = collected.rows as u64;
        b.stats.positions.flushed(rows, state.moves_since_flush.saturating_sub(rows));
        state.moves_since_flush = 0;
        // What moved after a spread cut began waits since the tick after it.
        state.first_pending_tick = (tick > at && p_pending).then_some(at + 1);
        state.last_flush = flush_mark;
        state.last_flush_tick = Some(at);
        state.commanded = false;
        state.added_at_flush = added_at;
    }
    let (stats, events) = (&mut *b.stats, &mut *b.events);
    push_notes(&collected.notes, tick, clock.now_ms(), events, stats);
    let registry = &mut *b.registry;
    if registry.records.is_empty() {
        // Taken, not copied (a new world's spawn: every NPC's record).
        registry.records = std::mem::take(&mut collected.records);
    } else {
        registry.records.append(&mut collected.records);
    }
    registry.first_pending_tick = None;
    let mut batch = WriteBatch {
        tick: at,
        npcs: std::mem::take(&mut registry.records),
        removed: std::mem::take(&mut registry.removed),
        ..WriteBatch::default()
    };
    stats.registry_rows += (batch.npcs.len() + batch.removed.len()) as u64;
    if m_due && b.metrics.pending() > 0 {
        let samples = b.metrics.samples();
        batch.metrics = b.metrics.take(tick);
        let rows = batch.metrics.len() as u64;
        stats.metrics.flushed(rows, samples.saturating_sub(rows));
    }
    if events.pending() > 0 {
        let folded = stats.events_deduplicated - stats.events.items_coalesced;
        batch.events = events.take();
        stats.events.flushed(batch.events.len() as u64, folded);
    }
    stats.metrics.pending_items = b.metrics.pending() as u64;
    stats.events.pending_items = 0;
    let handoff = Handoff { batch, positions: columns, covers_all_positions: complete };
    tracing::debug!(
        tick,
        rows = handoff.len(),
        positions = want.positions,
        forced = force,
        capped = count.capped,
        "batch cut"
    );
    if !handoff.is_empty() {
        stats.batches_created += 1;
        b.outgoing.0 = Some(handoff);
    }
}

/// Spawn and status notes become events.
fn push_notes(notes: &[Note], tick: u64, ms: u64, events: &mut EventBatcher, stats: &mut BatcherStats) {
    let (mut spawned, mut statuses) = (Vec::new(), Vec::new());
    for n in notes {
        match *n {
            Note::Spawned { id, role, position, agent } => {
                spawned.push((id, DomainEvent::NpcSpawned { role, position, agent }));
            }
            Note::Status { id, status } => statuses.push((id, DomainEvent::StatusChanged { status })),
        }
    }
    let at = (tick, ms);
    per_npc_or_bulk(
        spawned,
        |count, first_id, last_id| DomainEvent::NpcsSpawned { count, first_id, last_id },
        at,
        events,
        stats,
    );
    per_npc_or_bulk(
        statuses,
        |count, first_id, last_id| DomainEvent::StatusesChanged { count, first_id, last_id },
        at,
        events,
        stats,
    );
}

/// Pushes one event per NPC for the first [`DomainEvents::PER_NPC_LIMIT`], then one bulk
/// event (about the world) for the rest.
fn per_npc_or_bulk(
    list: Vec<(NpcId, DomainEvent)>,
    bulk: fn(u64, u64, u64) -> DomainEvent,
    (tick, ms): (u64, u64),
    events: &mut EventBatcher,
    stats: &mut BatcherStats,
) {
    let (mut count, mut first, mut last) = (0u64, u64::MAX, 0u64);
    for (i, (id, e)) in list.into_iter().enumerate() {
        if i < DomainEvents::PER_NPC_LIMIT {
            events.push(tick, ms, Subject::Npc(id), 0, &e, stats);
        } else {
            (count, first, last) = (count + 1, first.min(id.0), last.max(id.0));
        }
    }
    if count > 0 {
        events.push(tick, ms, Subject::World, 0, &bulk(count, first, last), stats);
    }
}

/// Hands the batch cut this tick to the sink: one lock and a notify, never I/O.
fn hand_over(mut outgoing: ResMut<Outgoing>, sink: Res<Sink>, mut stats: ResMut<BatcherStats>) {
    let Some(handoff) = outgoing.0.take() else { return };
    let rows = handoff.len() as u64;
    if let Err(e) = sink.0.submit(handoff) {
        // The sink counted it too; `mirror_health` turns the count into an event.
        stats.batches_refused += 1;
        stats.writes_dropped += rows;
        tracing::error!(error = %e, rows, "batch refused by the sink");
    }
}

/// What the storage lag reads besides the sink: whether anything waits in the batcher.
#[derive(SystemParam)]
struct Waiting<'w> {
    clock: Res<'w, SimClock>,
    positions: Res<'w, PositionBatcher>,
    registry: Res<'w, Registry>,
    events: Res<'w, EventBatcher>,
}

impl Waiting<'_> {
    /// Simulated milliseconds the store is behind the current tick (see
    /// [`PersistenceHealth::store_lag_ms`]).
    fn store_lag_ms(&self, sink: &terrarium_persistence::SinkHealth) -> u64 {
        let tick = self.clock.tick;
        // What the store holds: everything handed over (when nothing is unsettled), or up to
        // the newest committed batch.
        let stored = if sink.unsettled_batches == 0 {
            tick
        } else {
            sink.committed_tick.unwrap_or(self.positions.started_tick)
        };
        // What has not been handed over yet: changes since the oldest one waiting here.
        let oldest_waiting = [
            self.positions.first_pending_tick,
            self.registry.first_pending_tick,
            self.events.first_pending_tick(),
        ]
        .into_iter()
        .flatten()
        .min();
        let caught_up = oldest_waiting.map_or(stored, |t| stored.min(t.saturating_sub(1)));
        tick.saturating_sub(caught_up) * 1000 / u64::from(self.clock.tick_hz.max(1))
    }
}

/// Mirrors the sink's health into [`PersistenceHealth`] and samples the storage lag;
/// transitions become events.
fn mirror_health(
    sink: Res<Sink>,
    waiting: Waiting,
    mut health: ResMut<PersistenceHealth>,
    mut queue: ResMut<DomainEvents>,
) {
    let h = sink.0.health();
    let lag = waiting.store_lag_ms(&h);
    tracing::trace!(
        tick = waiting.clock.tick,
        lag,
        unsettled = h.unsettled_batches,
        committed = ?h.committed_tick,
        pos = ?waiting.positions.first_pending_tick,
        reg = ?waiting.registry.first_pending_tick,
        ev = ?waiting.events.first_pending_tick(),
        "store lag"
    );
    let mut now = PersistenceHealth::from(h);
    now.store_lag_ms = lag;
    if now == *health {
        return;
    }
    if now.degraded && !health.degraded {
        let error = now.last_error.clone().unwrap_or_default();
        queue.emit(Subject::Storage, DomainEvent::StorageDegraded { error });
    } else if !now.degraded && health.degraded {
        queue.emit(Subject::Storage, DomainEvent::StorageRecovered);
    }
    if now.writes_dropped > health.writes_dropped {
        let rows = now.writes_dropped - health.writes_dropped;
        let reason = now.last_error.clone().unwrap_or_else(|| "refused by the write-behind".into());
        queue.emit(Subject::Storage, DomainEvent::WritesDropped { rows, reason });
    }
    *health = now;
}
