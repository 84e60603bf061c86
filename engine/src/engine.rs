//! [`Engine`]: the world, its stages and the fixed-step tick, as a game server links it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use bevy_ecs::prelude::*;
use bevy_ecs::schedule::{IntoScheduleConfigs, LogLevel, ScheduleBuildSettings, SingleThreadedExecutor};
use bevy_ecs::system::ScheduleSystem;

use crate::command::{Queued, SenderShared};
use crate::spawn::{AgentBundle, NpcBundle, PlainNpcBundle};
use crate::{
    Command, CommandSender, EngineConfig, EngineError, MoveTarget, NpcId, NpcIndex, NpcSpec, Order, ParPool,
    Position, SimClock, SimRng, StageTimings, Status, Swarm, TickLog, TickSet, Velocity, Wander, WorldBounds,
};

/// Adds systems and resources to an engine. The systems crate provides the standard ones.
pub trait Plugin {
    /// Registers this plugin's systems and resources.
    fn build(&self, engine: &mut Engine);
}

impl<F: Fn(&mut Engine)> Plugin for F {
    fn build(&self, engine: &mut Engine) {
        self(engine);
    }
}

/// Builds an [`Engine`] from a configuration and plugins.
pub struct EngineBuilder {
    config: EngineConfig,
    plugins: Vec<Box<dyn Plugin>>,
}

impl EngineBuilder {
    /// Adds a plugin; plugins are built in the order they were added.
    #[must_use]
    pub fn add_plugin(mut self, plugin: impl Plugin + 'static) -> Self {
        self.plugins.push(Box::new(plugin));
        self
    }

    /// Builds an empty world.
    ///
    /// # Errors
    /// [`EngineError::Config`] for an invalid configuration, [`EngineError::ThreadPool`] when the
    /// worker threads can't be started.
    pub fn build(self) -> Result<Engine, EngineError> {
        self.config.validate()?;
        let threads = self.config.effective_threads();
        let pool = ParPool::with_pinning(threads, self.config.pin_threads)
            .map_err(|source| EngineError::ThreadPool { threads, source })?;
        let mut engine = Engine::new(self.config, pool);
        for plugin in &self.plugins {
            plugin.build(&mut engine);
        }
        Ok(engine)
    }

    /// Builds a world from a snapshot instead of an empty one. The snapshot's clock, seed, bounds
    /// and NPCs replace those of the configuration.
    ///
    /// # Errors
    /// As [`EngineBuilder::build`], plus [`EngineError::Snapshot`] for a snapshot that can't be read.
    pub fn build_from_snapshot(self, reader: &mut impl std::io::Read) -> Result<Engine, EngineError> {
        let limit = self.config.snapshot.max_bytes;
        let body = crate::snapshot::read_body(reader, limit)?;
        let mut engine = self.build()?;
        crate::snapshot::restore(&mut engine, body, limit)?;
        Ok(engine)
    }
}

/// A simulated world with a fixed-step tick.
///
/// The tick applies queued commands, then runs the stages of [`TickSet`] in order. Nothing in
/// it reads the wall clock or waits on I/O, so the same seed and inputs give the same world.
///
/// # Examples
/// ```
/// use terrarium_engine::{Engine, EngineConfig, NpcSpec, Position, Role, Velocity};
/// let mut engine = Engine::builder(EngineConfig { seed: 7, ..EngineConfig::default() }).build().unwrap();
/// let ids = engine.spawn_batch((0..100).map(|i| NpcSpec::new(Role::Miner, Position::new(i as f32, 0.0, 5.0))));
/// assert_eq!(ids.len(), 100);
/// engine.run_ticks(10);
/// assert_eq!(engine.clock().tick, 10);
/// let before = engine.world_hash();
/// assert!(engine.despawn(ids.get(0).unwrap()));
/// assert_ne!(engine.world_hash(), before);
/// ```
pub struct Engine {
    world: World,
    stages: Vec<Schedule>,
    inbox: mpsc::Receiver<Queued>,
    sender: CommandSender,
    next_id: Arc<AtomicU64>,
    config: EngineConfig,
    pending: Vec<Queued>,
}

impl Engine {
    /// Starts building an engine.
    #[must_use]
    pub fn builder(config: EngineConfig) -> EngineBuilder {
        EngineBuilder { config, plugins: Vec::new() }
    }

    fn new(config: EngineConfig, pool: ParPool) -> Self {
        let mut world = World::new();
        world.insert_resource(SimClock { tick: 0, tick_hz: config.tick_hz });
        world.insert_resource(SimRng::new(config.seed));
        world.insert_resource(WorldBounds { min: config.world.min, max: config.world.max });
        world.insert_resource(NpcIndex::default());
        world.insert_resource(pool);
        world.insert_resource(TickLog::default());
        world.insert_resource(StageTimings::default());
        world.insert_resource(config.clone());
        let stages = TickSet::ALL
            .iter()
            .map(|&set| {
                let mut s = Schedule::new(set);
                s.set_executor(SingleThreadedExecutor::new());
                s
            })
            .collect();
        let (tx, inbox) = mpsc::sync_channel(config.commands.queue_capacity);
        let next_id = Arc::new(AtomicU64::new(1));
        let shared = Arc::new(SenderShared {
            next_npc: Arc::clone(&next_id),
            next_sender: AtomicU64::new(0),
            capacity: config.commands.queue_capacity,
        });
        let sender = CommandSender::new(tx, shared);
        Self { world, stages, inbox, sender, next_id, config, pending: Vec::new() }
    }

    /// Adds systems to a stage of the tick.
    pub fn add_systems<M>(
        &mut self,
        set: TickSet,
        systems: impl IntoScheduleConfigs<ScheduleSystem, M>,
    ) -> &mut Self {
        self.stages[set.index()].add_systems(systems);
        self
    }

    /// Builds every stage's schedule now with bevy's ambiguity detection as an error: two
    /// systems of one stage that touch the same data, one of them writing, with no order
    /// declared between them (`.before`, `.after`, `.chain`) make it fail, naming both. bevy
    /// promises no order for such systems, so a tick could change with a plugin added elsewhere.
    /// Tests call it once every plugin is in; ticking does not need it.
    ///
    /// # Errors
    /// [`EngineError::Schedule`] for the first stage that can't be built, with bevy's report.
    pub fn check_system_order(&mut self) -> Result<(), EngineError> {
        for (set, stage) in TickSet::ALL.into_iter().zip(&mut self.stages) {
            let saved = stage.get_build_settings();
            stage.set_build_settings(ScheduleBuildSettings {
                ambiguity_detection: LogLevel::Error,
                ..saved.clone()
            });
            let built = stage.initialize(&mut self.world);
            stage.set_build_settings(saved);
            if let Err(e) = built {
                return Err(EngineError::Schedule {
                    stage: set.name(),
                    report: e.to_string(stage.graph(), &self.world),
                });
            }
        }
        Ok(())
    }

    /// The configuration the engine was built with.
    #[must_use]
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The ECS world, for queries.
    #[must_use]
    pub fn world(&self) -> &World {
        &self.world
    }

    /// The ECS world, mutably (for tests, tools and plugins).
    pub fn world_mut(&mut self) -> &mut World {
        &mut self.world
    }

    /// The simulation clock.
    #[must_use]
    pub fn clock(&self) -> SimClock {
        *self.world.resource::<SimClock>()
    }

    /// Number of live NPCs (agents included).
    #[must_use]
    pub fn npc_count(&self) -> usize {
        self.world.resource::<NpcIndex>().len()
    }

    /// Number of live agents.
    pub fn agent_count(&mut self) -> usize {
        self.world.query_filtered::<(), With<crate::Agent>>().iter(&self.world).count()
    }

    /// Worker threads of parallel systems.
    #[must_use]
    pub fn threads(&self) -> usize {
        self.world.resource::<ParPool>().threads()
    }

    /// The entity of an NPC, if it is alive.
    #[must_use]
    pub fn entity(&self, id: NpcId) -> Option<Entity> {
        self.world.resource::<NpcIndex>().get(id)
    }

    /// Wall-clock time per stage, measured around the stages.
    #[must_use]
    pub fn stage_timings(&self) -> &StageTimings {
        self.world.resource::<StageTimings>()
    }

    /// A new handle for queuing commands from another thread.
    #[must_use]
    pub fn command_sender(&self) -> CommandSender {
        self.sender.clone()
    }

    /// The id the next spawned NPC gets.
    #[must_use]
    pub fn next_npc_id(&self) -> NpcId {
        NpcId(self.next_id.load(Ordering::Relaxed))
    }

    pub(crate) fn set_next_npc_id(&mut self, id: u64) {
        self.next_id.store(id, Ordering::Relaxed);
    }

    /// Makes sure no id below `id` is handed out from now on (the counter only goes up): a
    /// world resumed from storage calls it with one past every id the store ever saw.
    pub fn reserve_npc_ids_below(&mut self, id: u64) {
        self.next_id.fetch_max(id, Ordering::Relaxed);
        self.world.resource_mut::<NpcIndex>().reserve_to(id);
    }

    /// Spawns one NPC now and returns its id.
    pub fn spawn_npc(&mut self, spec: NpcSpec) -> NpcId {
        let id = NpcId(self.next_id.fetch_add(1, Ordering::Relaxed));
        self.spawn_with_id(id, &spec);
        id
    }

    /// Spawns many NPCs now, in order, and returns their ids (consecutive, in the same order).
    pub fn spawn_batch(&mut self, specs: impl IntoIterator<Item = NpcSpec>) -> NpcIdRange {
        let specs = specs.into_iter();
        // Ids are reserved up front (other threads may reserve ids at the same time), so the
        // count must be known: exact when the iterator says so, otherwise by collecting first.
        match specs.size_hint() {
            (lo, Some(hi)) if lo == hi => self.spawn_counted(specs, lo as u64),
            _ => {
                let specs: Vec<NpcSpec> = specs.collect();
                let n = specs.len() as u64;
                self.spawn_counted(specs.into_iter(), n)
            }
        }
    }

    fn spawn_counted(&mut self, specs: impl Iterator<Item = NpcSpec>, n: u64) -> NpcIdRange {
        let first = self.next_id.fetch_add(n, Ordering::Relaxed);
        let next_turn = self.clock().tick + 1;
        let bounds = *self.world.resource::<WorldBounds>();
        // One pass: plain NPCs go straight into their table (the iterator's upper bound lets bevy
        // reserve it exactly); the few agents wait in a side list.
        let mut agents: Vec<(NpcId, NpcSpec)> = Vec::new();
        let mut plain_ids: Vec<NpcId> = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
        let plain = specs.zip((first..first + n).map(NpcId)).filter_map(|(spec, id)| {
            if spec.agent {
                agents.push((id, spec));
                return None;
            }
            plain_ids.push(id);
            Some(PlainNpcBundle {
                npc: NpcBundle::new(id, &clamped(&spec, &bounds)),
                wander: Wander::new(id, next_turn),
            })
        });
        let plain_entities: Vec<Entity> = self.world.spawn_batch(plain).collect();
        let agent_entities: Vec<Entity> = self
            .world
            .spawn_batch(
                agents.iter().map(|(id, s)| AgentBundle::new(NpcBundle::new(*id, &clamped(s, &bounds)))),
            )
            .collect();
        let mut index = self.world.resource_mut::<NpcIndex>();
        index.reserve_to(first + n);
        for (id, e) in
            plain_ids.into_iter().zip(plain_entities).chain(agents.iter().map(|a| a.0).zip(agent_entities))
        {
            index.insert(id, e);
        }
        NpcIdRange { next: first, end: first + n }
    }

    /// Spawns one NPC with the id it names (a world rebuilt from storage); false when that id
    /// is alive. The id counter moves past it.
    pub fn spawn_with_id(&mut self, id: NpcId, spec: &NpcSpec) -> bool {
        if self.entity(id).is_some() {
            return false;
        }
        let bounds = *self.world.resource::<WorldBounds>();
        let npc = NpcBundle::new(id, &clamped(spec, &bounds));
        let e = if spec.agent {
            self.world.spawn(AgentBundle::new(npc)).id()
        } else {
            let wander = Wander::new(id, self.clock().tick + 1);
            self.world.spawn(PlainNpcBundle { npc, wander }).id()
        };
        self.world.resource_mut::<NpcIndex>().insert(id, e);
        // Keep ids unique when a spawn names its own id (commands, snapshots).
        self.next_id.fetch_max(id.0.saturating_add(1), Ordering::Relaxed);
        true
    }

    /// Removes an NPC now; false when there is no such NPC.
    pub fn despawn(&mut self, id: NpcId) -> bool {
        let Some(e) = self.world.resource_mut::<NpcIndex>().remove(id) else {
            return false;
        };
        self.world.despawn(e);
        self.world.resource_mut::<TickLog>().despawned.push(id);
        true
    }

    /// Runs one tick: applies queued commands, then every stage in order. Returns the tick number.
    pub fn tick(&mut self) -> u64 {
        let started = Instant::now();
        {
            // `despawned` is not cleared here: despawns made between two ticks (direct
            // `despawn` calls) belong to the coming tick. It is cleared when the tick ends.
            let mut log = self.world.resource_mut::<TickLog>();
            log.commands_applied = 0;
            log.commands_rejected = 0;
        }
        let tick = {
            let mut clock = self.world.resource_mut::<SimClock>();
            clock.tick += 1;
            clock.tick
        };
        // One span per tick with a child span per stage (each stage is one system set), so a
        // trace shows where a slow tick spent its time.
        let _tick_span = tracing::debug_span!("tick", tick).entered();
        self.apply_commands();
        let mut last = [std::time::Duration::ZERO; 6];
        for (i, stage) in self.stages.iter_mut().enumerate() {
            let _span = tracing::debug_span!("stage", name = TickSet::ALL[i].name(), tick).entered();
            let t = Instant::now();
            stage.run(&mut self.world);
            last[i] = t.elapsed();
        }
        self.world.clear_trackers();
        self.world.resource_mut::<TickLog>().despawned.clear();
        let mut timings = self.world.resource_mut::<StageTimings>();
        for (total, l) in timings.total.iter_mut().zip(last) {
            *total += l;
        }
        timings.last = last;
        timings.last_tick = started.elapsed();
        timings.last_started = Some(started);
        timings.ticks += 1;
        tick
    }

    /// Runs `n` ticks back to back.
    pub fn run_ticks(&mut self, n: u64) {
        for _ in 0..n {
            self.tick();
        }
    }

    fn apply_commands(&mut self) {
        self.pending.clear();
        self.pending.extend(self.inbox.try_iter());
        if self.pending.is_empty() {
            return;
        }
        // Arrival order depends on thread timing; this order does not.
        self.pending.sort_unstable_by_key(Queued::key);
        let pending = std::mem::take(&mut self.pending);
        let (mut applied, mut rejected) = (0u32, 0u32);
        for q in &pending {
            if self.apply(&q.command) {
                applied += 1;
            } else {
                rejected += 1;
                tracing::debug!(command = ?q.command, "command refused: no such npc, or id taken");
            }
        }
        self.pending = pending;
        let mut log = self.world.resource_mut::<TickLog>();
        log.commands_applied += applied;
        log.commands_rejected += rejected;
    }

    fn apply(&mut self, command: &Command) -> bool {
        if let Command::Spawn { id, spec } = command {
            return self.spawn_with_id(*id, spec);
        }
        if let Command::Despawn { id } = command {
            return self.despawn(*id);
        }
        let Some(e) = self.entity(command.npc()) else {
            return false;
        };
        let bounds = *self.world.resource::<WorldBounds>();
        let mut entity = self.world.entity_mut(e);
        match command {
            Command::Teleport { position, .. } => {
                if let Some(mut p) = entity.get_mut::<Position>() {
                    *p = clamp_position(*position, &bounds);
                }
            }
            Command::SetVelocity { velocity, .. } => {
                if let Some(mut v) = entity.get_mut::<Velocity>() {
                    *v = *velocity;
                }
            }
            Command::Order { order, .. } => match order {
                Order::MoveTo(target) => {
                    entity.insert(MoveTarget(clamp_position(*target, &bounds)));
                    if let Some(mut s) = entity.get_mut::<Status>() {
                        *s = Status::Moving;
                    }
                }
                Order::Stop => {
                    entity.remove::<MoveTarget>();
                    if let Some(mut v) = entity.get_mut::<Velocity>() {
                        *v = Velocity::ZERO;
                    }
                    if let Some(mut s) = entity.get_mut::<Status>() {
                        *s = Status::Idle;
                    }
                    // A stopped wanderer stays put until it gets another order.
                    if let Some(mut w) = entity.get_mut::<Wander>() {
                        w.next_turn = Wander::NEVER;
                    }
                }
                Order::SetRole(role) => set(&mut entity, *role),
                Order::JoinSwarm(swarm) => set(&mut entity, Swarm(*swarm)),
            },
            Command::Spawn { .. } | Command::Despawn { .. } => unreachable!("handled above"),
        }
        true
    }

    /// A stable 64-bit hash of the whole simulation state, independent of memory layout and
    /// iteration order (NPCs are hashed in `NpcId` order).
    pub fn world_hash(&mut self) -> u64 {
        crate::hash::world_hash(&mut self.world)
    }

    /// Copies the whole simulation out of the world, to be encoded elsewhere
    /// ([`crate::SnapshotBody::write`]): what a checkpoint takes on the tick thread.
    pub fn snapshot_body(&mut self) -> crate::SnapshotBody {
        let next_id = self.next_npc_id().0;
        crate::snapshot::gather(&mut self.world, next_id)
    }

    /// Writes a snapshot of the whole simulation; returns its size in bytes.
    ///
    /// # Errors
    /// [`crate::SnapshotError::Io`] when the writer fails.
    pub fn save_snapshot(&mut self, writer: &mut impl std::io::Write) -> Result<u64, crate::SnapshotError> {
        let next_id = self.next_npc_id().0;
        crate::snapshot::save(&mut self.world, next_id, writer)
    }
}

/// Consecutive NPC ids, as returned by [`Engine::spawn_batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpcIdRange {
    next: u64,
    end: u64,
}

impl NpcIdRange {
    /// The `i`-th id of the range.
    #[must_use]
    pub fn get(&self, i: usize) -> Option<NpcId> {
        let id = self.next.checked_add(i as u64)?;
        (id < self.end).then_some(NpcId(id))
    }
}

impl Iterator for NpcIdRange {
    type Item = NpcId;

    fn next(&mut self) -> Option<NpcId> {
        (self.next < self.end).then(|| {
            self.next += 1;
            NpcId(self.next - 1)
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = usize::try_from(self.end - self.next).unwrap_or(usize::MAX);
        (n, Some(n))
    }
}

impl ExactSizeIterator for NpcIdRange {}

fn set<C: Component<Mutability = bevy_ecs::component::Mutable>>(entity: &mut EntityWorldMut<'_>, value: C) {
    if let Some(mut c) = entity.get_mut::<C>() {
        *c = value;
    }
}

fn clamped(spec: &NpcSpec, bounds: &WorldBounds) -> NpcSpec {
    NpcSpec { position: clamp_position(spec.position, bounds), ..*spec }
}

/// `p` moved into `bounds` (NaN coordinates go to the lower corner).
#[must_use]
pub fn clamp_position(p: Position, bounds: &WorldBounds) -> Position {
    let c = |v: f32, lo: f32, hi: f32| if v.is_nan() { lo } else { v.clamp(lo, hi) };
    Position::new(
        c(p.x, bounds.min[0], bounds.max[0]),
        c(p.y, bounds.min[1], bounds.max[1]),
        c(p.z, bounds.min[2], bounds.max[2]),
    )
}
