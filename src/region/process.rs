//! RegionProcess: one region of a world split across processes. It takes its region's lease,
//! loads the NPCs the region owns and the tick of its newest sync (a restart ticks on from
//! there), ticks them at the world's rate, hands off every NPC that
//! leaves its cell (at once: out of this world in the same step), adopts what other regions
//! hand it, writes its NPCs' state and its tick back (one fenced sync), and stops itself the moment
//! a fence says another process took its region. The protocol is `persistence/DESIGN.md`
//! ("Regions"); its decisions are `RegionCore`'s.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bevy_ecs::prelude::*;
use hdrhistogram::Histogram;
use terrarium_engine::{Engine, EngineConfig, NpcId, NpcSpec, Position, Role, SimClock, Swarm, Velocity};
use terrarium_persistence::PostgresConfig;
use terrarium_persistence::region::{
    Epoch, NpcState, OwnerRow, RegionCore, RegionError, RegionId, RegionStore,
};

use super::{BorderGhosts, GhostOptions, RegionGrid};

/// How a region process runs.
#[derive(Debug, Clone)]
pub struct RegionOptions {
    /// The grid the world is cut into.
    pub grid: RegionGrid,
    /// The region this process runs.
    pub region: RegionId,
    /// The engine's configuration (seed, tick rate, world bounds, threads).
    pub engine: EngineConfig,
    /// Where the ownership tables live (the schema is the store's).
    pub postgres: PostgresConfig,
    /// Lease length; renewed every third of it.
    pub lease_ttl: Duration,
    /// How often NPC state is written back to the ownership rows.
    pub sync_every: Duration,
    /// How often arrivals are looked for without a notification.
    pub poll_every: Duration,
    /// Most hand-offs sent in one transaction.
    pub max_moves_per_tx: usize,
    /// Who holds the lease (for people reading `region_leases`).
    pub holder: String,
    /// The border feed of ghosts through Redis (needs the `redis` feature); `None`: no ghosts.
    pub ghosts: Option<GhostOptions>,
}

/// Why a region process stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegionRunError {
    /// Another process took the region: this one must never write again.
    #[error("{0} was taken over by a newer process (fenced)")]
    Fenced(RegionId),
    /// The ownership store failed.
    #[error("ownership store")]
    Store(#[source] RegionError),
    /// The engine could not be built.
    #[error("engine")]
    Engine(#[source] terrarium_engine::EngineError),
    /// The tokio runtime could not be started.
    #[error("runtime")]
    Runtime(#[source] std::io::Error),
    /// The border feed's settings are unusable (a malformed URL or prefix, or a build without
    /// the `redis` feature). A Redis that is down is not an error.
    #[error("border feed: {0}")]
    Ghosts(String),
}

impl From<RegionError> for RegionRunError {
    fn from(e: RegionError) -> Self {
        match e {
            RegionError::Fenced { region, .. } => Self::Fenced(region),
            other => Self::Store(other),
        }
    }
}

/// Figures of one region process (also what the performance snapshot shows per region).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct RegionStats {
    /// The region.
    pub region: u32,
    /// The lease's epoch.
    pub epoch: i64,
    /// NPCs in its world now.
    pub owned: u64,
    /// NPCs loaded at start-up.
    pub loaded: u64,
    /// Start-up: lease wait, load and spawn, ms.
    pub load_ms: f64,
    /// Hand-offs this process committed (out).
    pub handoffs_out: u64,
    /// NPCs it adopted (in).
    pub handoffs_in: u64,
    /// Arrivals offered twice (no effect).
    pub adopt_duplicates: u64,
    /// Hand-off commits whose outcome was unknown (resolved by reading the rows).
    pub unknown_commits: u64,
    /// Rows that matched neither side when read back (should be 0).
    pub anomalies: u64,
    /// Outgoing hand-offs not yet committed.
    pub outgoing: u64,
    /// Time out of any world of the NPCs it adopted: p50, ms.
    pub adopt_ms_p50: f64,
    /// p99, ms.
    pub adopt_ms_p99: f64,
    /// Most, ms.
    pub adopt_ms_max: f64,
    /// Ticks run by this process.
    pub ticks: u64,
    /// The region world's tick now (its `SimClock`): `resumed_tick` plus `ticks`.
    pub tick: u64,
    /// The tick this process resumed from: the region's tick at its newest sync before this
    /// process took the lease (0 for a new world).
    pub resumed_tick: u64,
    /// The tick of this process's newest committed sync (0: none yet); a restart resumes from
    /// it or a later one.
    pub synced_tick: u64,
    /// NPCs ticked, summed over ticks (the region's simulation throughput).
    pub npc_ticks: u64,
    /// Tick time p50, ms.
    pub tick_ms_p50: f64,
    /// Tick time p99, ms.
    pub tick_ms_p99: f64,
    /// Syncs committed.
    pub syncs: u64,
    /// Lease renewals committed.
    pub renewals: u64,
    /// Time since the lease was last renewed (or taken), ms.
    pub lease_age_ms: f64,
    /// Ghosts shown now (neighbours' NPCs near this cell; not owned, not stored).
    pub ghosts: u64,
    /// Neighbours whose ghosts are shown now.
    pub ghost_sources: u64,
    /// Ghosts dropped because their neighbour's feed went quiet for longer than the TTL.
    pub ghosts_expired: u64,
    /// Ghost batches this region published.
    pub ghost_batches_published: u64,
    /// Ghost batches it received.
    pub ghost_batches_received: u64,
    /// Publishes that failed (Redis down or slow); the region simulates on without them.
    pub ghost_publish_errors: u64,
    /// Publishes skipped because the previous one had not finished (a slow Redis).
    pub ghost_publish_skipped: u64,
    /// Batches ignored: undecodable, dropped for reading too slowly, or from an older epoch.
    pub ghost_batches_ignored: u64,
}

/// What a sync writes, taken at one moment: the world's tick, and each NPC's id, position
/// and velocity.
type Gathered = (u64, Vec<u64>, Vec<[f32; 3]>, Vec<[f32; 3]>);

/// A finished background sync: its connection, the tick it wrote and what it answered.
type SyncResult = (RegionStore, u64, Result<u64, RegionError>);

/// A running region.
pub struct RegionProcess {
    opts: RegionOptions,
    rt: tokio::runtime::Runtime,
    store: RegionStore,
    /// A second connection for the state syncs, which run beside the tick.
    sync_store: Option<RegionStore>,
    sync_task: Option<tokio::task::JoinHandle<SyncResult>>,
    core: RegionCore<NpcState>,
    engine: Engine,
    epoch: Epoch,
    left_at: HashMap<u64, Instant>,
    last_renew: Instant,
    last_sync: Instant,
    last_poll: Instant,
    tick_ns: Histogram<u64>,
    adopt_us: Histogram<u64>,
    stats: RegionStats,
    #[cfg(feature = "redis")]
    feed: Option<Feed>,
    perf: Option<(crate::perf::Performance, Option<Instant>)>,
}

/// The border feed of a running region.
#[cfg(feature = "redis")]
struct Feed {
    opts: GhostOptions,
    feed: terrarium_persistence::region::GhostFeed,
    /// Regions whose cells come within the margin of this one's.
    neighbours: Vec<RegionId>,
    publishing: Option<tokio::task::JoinHandle<()>>,
    last_publish: Option<Instant>,
    skipped: u64,
}

impl std::fmt::Debug for RegionProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegionProcess")
            .field("region", &self.opts.region)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 2).expect("bounds are valid constants")
}

fn record_ms(h: &mut Histogram<u64>, ms: f64) {
    // A latency in µs, at least 1; NaN and negatives (clock steps on the server) count as 1.
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "clamped to the histogram's range"
    )]
    let us = (ms * 1000.0).clamp(1.0, 3.6e12) as u64;
    h.saturating_record(us);
}

fn spec(state: &NpcState) -> NpcSpec {
    let role: Role = state.role.parse().unwrap_or(Role::Scout);
    let [x, y, z] = state.position;
    let [vx, vy, vz] = state.velocity;
    let mut spec = NpcSpec::new(role, Position { x, y, z });
    spec.velocity = Velocity { x: vx, y: vy, z: vz };
    spec.swarm = Swarm(state.swarm);
    spec
}

impl RegionProcess {
    /// Connects, waits for the region's lease (a dead predecessor's runs out on PostgreSQL's
    /// clock), loads what the region owns and spawns it.
    ///
    /// # Errors
    /// [`RegionRunError`] when the store or the engine can't be set up.
    pub fn start(opts: RegionOptions) -> Result<Self, RegionRunError> {
        let started = Instant::now();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("terrarium-region")
            .on_thread_start(|| {
                terrarium_persistence::os::mark_background_thread();
            })
            .enable_all()
            .build()
            .map_err(RegionRunError::Runtime)?;
        let mut store = rt.block_on(RegionStore::connect(&opts.postgres))?;
        let sync_store = rt.block_on(RegionStore::connect(&opts.postgres))?;
        let epoch = loop {
            if let Some(epoch) = rt.block_on(store.take_lease(opts.region, &opts.holder, opts.lease_ttl))? {
                break epoch;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let last_renew = Instant::now();
        rt.block_on(store.listen(opts.region))?;
        let loaded = rt.block_on(store.load(opts.region, epoch))?;
        let mut adopt_us = histogram();
        for (row, ms) in loaded.rows.iter().zip(&loaded.latency_ms) {
            if !row.adopted {
                // Handed here while no process ran the region: it waited for this start.
                record_ms(&mut adopt_us, *ms);
            }
        }
        let rows = loaded.rows;
        let resumed_tick = loaded.region_tick.unwrap_or(0);
        #[cfg(feature = "redis")]
        let feed = match &opts.ghosts {
            Some(g) => Some(Feed::connect(&rt, &opts.grid, opts.region, g)?),
            None => None,
        };
        #[cfg(not(feature = "redis"))]
        if opts.ghosts.is_some() {
            return Err(RegionRunError::Ghosts("built without the redis feature".to_owned()));
        }
        let mut core = RegionCore::new(opts.region);
        core.on_lease(epoch);
        let mut engine = Engine::builder(opts.engine.clone())
            .add_plugin(terrarium_systems::core_plugin)
            .build()
            .map_err(RegionRunError::Engine)?;
        // The region's clock first, so each NPC spawned is scheduled from the resumed tick.
        engine.world_mut().resource_mut::<SimClock>().tick = resumed_tick;
        for row in core.on_loaded(rows) {
            engine.spawn_with_id(NpcId(row.npc), &spec(&row.state));
        }
        engine.world_mut().insert_resource(BorderGhosts::default());
        let stats = RegionStats {
            region: opts.region.0,
            epoch,
            loaded: core.stats().loaded,
            load_ms: ms(started.elapsed()),
            tick: resumed_tick,
            resumed_tick,
            ..RegionStats::default()
        };
        let now = Instant::now();
        Ok(Self {
            opts,
            rt,
            store,
            sync_store: Some(sync_store),
            sync_task: None,
            core,
            engine,
            epoch,
            left_at: HashMap::new(),
            last_renew,
            last_sync: now,
            last_poll: now,
            tick_ns: histogram(),
            adopt_us,
            stats,
            #[cfg(feature = "redis")]
            feed,
            perf: None,
        })
    }

    /// The region.
    #[must_use]
    pub fn region(&self) -> RegionId {
        self.opts.region
    }

    /// The engine (its world holds exactly the NPCs this region holds).
    #[must_use]
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The NPCs in this region's world, ascending.
    #[must_use]
    pub fn npcs(&self) -> Vec<u64> {
        self.core.world().collect()
    }

    /// Figures now.
    #[must_use]
    pub fn stats(&mut self) -> RegionStats {
        let core = self.core.stats();
        let q = |h: &Histogram<u64>, p: f64, unit: f64| {
            if h.is_empty() { 0.0 } else { h.value_at_quantile(p) as f64 / unit }
        };
        RegionStats {
            owned: self.core.world_len() as u64,
            handoffs_out: core.handed_off,
            handoffs_in: core.adopted,
            adopt_duplicates: core.adopt_duplicates,
            unknown_commits: core.unknown_commits,
            anomalies: core.anomalies,
            outgoing: self.core.outgoing_len() as u64,
            adopt_ms_p50: q(&self.adopt_us, 0.5, 1e3),
            adopt_ms_p99: q(&self.adopt_us, 0.99, 1e3),
            adopt_ms_max: if self.adopt_us.is_empty() { 0.0 } else { self.adopt_us.max() as f64 / 1e3 },
            tick_ms_p50: q(&self.tick_ns, 0.5, 1e6),
            tick_ms_p99: q(&self.tick_ns, 0.99, 1e6),
            lease_age_ms: ms(self.last_renew.elapsed()),
            tick: self.engine.clock().tick,
            ..self.ghost_stats()
        }
    }

    fn ghost_stats(&self) -> RegionStats {
        let mut s = self.stats;
        let g = self.ghosts();
        s.ghosts = g.len() as u64;
        s.ghost_sources = g.sources() as u64;
        s.ghosts_expired = g.expired();
        s.ghost_batches_ignored = g.stale();
        #[cfg(feature = "redis")]
        if let Some(f) = &self.feed {
            let fs = f.feed.stats();
            s.ghost_batches_published = fs.published;
            s.ghost_batches_received = fs.received;
            s.ghost_publish_errors = fs.publish_errors;
            s.ghost_publish_skipped = f.skipped;
            s.ghost_batches_ignored += fs.undecodable + fs.missed;
        }
        s
    }

    /// The neighbours' NPCs shown here now (read-only; also the engine world's
    /// [`BorderGhosts`] resource).
    #[must_use]
    pub fn ghosts(&self) -> &BorderGhosts {
        // Inserted at start and never removed; an empty view if a plugin took it away.
        static EMPTY: std::sync::OnceLock<BorderGhosts> = std::sync::OnceLock::new();
        self.engine
            .world()
            .get_resource::<BorderGhosts>()
            .unwrap_or_else(|| EMPTY.get_or_init(BorderGhosts::default))
    }

    /// The region's figures as the performance snapshot shows them.
    #[must_use]
    pub fn figures(&mut self) -> crate::perf::RegionFigures {
        let s = self.stats();
        crate::perf::RegionFigures {
            region: s.region,
            epoch: s.epoch,
            lease_age_ms: s.lease_age_ms,
            lease_renewals: s.renewals,
            owned_npcs: s.owned,
            loaded_npcs: s.loaded,
            handoffs_out: s.handoffs_out,
            handoffs_in: s.handoffs_in,
            handoffs_pending: s.outgoing,
            unknown_commits: s.unknown_commits,
            handoff_latency: crate::perf::Latency::from_us(&self.adopt_us),
            syncs: s.syncs,
            tick: s.tick,
            resumed_tick: s.resumed_tick,
            ghosts: s.ghosts,
            ghost_sources: s.ghost_sources,
            ghosts_expired: s.ghosts_expired,
            ghost_batches_published: s.ghost_batches_published,
            ghost_batches_received: s.ghost_batches_received,
            ghost_publish_errors: s.ghost_publish_errors,
        }
    }

    /// Publishes this region's figures into `perf` (its snapshot's `regions`, and so
    /// `/metrics` wherever that handle is exported), now and about every 250 ms of steps.
    pub fn attach_performance(&mut self, perf: crate::perf::Performance) {
        perf.set_region(self.figures());
        self.perf = Some((perf, Some(Instant::now())));
    }

    fn publish_figures(&mut self) {
        let due = self
            .perf
            .as_ref()
            .is_some_and(|(_, t)| t.is_none_or(|t| t.elapsed() >= Duration::from_millis(250)));
        if due {
            let f = self.figures();
            if let Some((perf, t)) = &mut self.perf {
                perf.set_region(f);
                *t = Some(Instant::now());
            }
        }
    }

    /// Tick durations so far, ns.
    #[must_use]
    pub fn tick_histogram(&self) -> &Histogram<u64> {
        &self.tick_ns
    }

    /// Time out of any world of each NPC it adopted, µs.
    #[must_use]
    pub fn adopt_histogram(&self) -> &Histogram<u64> {
        &self.adopt_us
    }

    /// Renews the lease when due and nothing else (a process held still by its supervisor).
    ///
    /// # Errors
    /// As [`RegionProcess::step`].
    pub fn keep_lease_only(&mut self) -> Result<(), RegionRunError> {
        self.keep_lease()
    }

    /// True when this process has gone longer than its lease without a renewal (it was
    /// frozen, or PostgreSQL was out of reach): it must not tick before a fenced write says
    /// whether the region is still its own.
    #[must_use]
    pub fn suspect(&self) -> bool {
        self.last_renew.elapsed() >= self.opts.lease_ttl
    }

    /// One step: the lease kept, one tick, crossings handed off, arrivals adopted, a sync when
    /// due.
    ///
    /// # Errors
    /// [`RegionRunError::Fenced`] when the region was taken over (the process must exit
    /// without writing anything else); [`RegionRunError::Store`] when PostgreSQL fails in a
    /// way a retry in this process can't fix.
    pub fn step(&mut self) -> Result<(), RegionRunError> {
        self.keep_lease()?;
        let t = Instant::now();
        self.engine.tick();
        self.tick_ns.saturating_record(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX).max(1));
        self.stats.ticks += 1;
        self.stats.npc_ticks += self.core.world_len() as u64;
        self.cross();
        #[cfg(feature = "redis")]
        self.border_feed();
        self.publish_figures();
        self.transact(true)
    }

    /// The transactions of a step without a tick: the lease, read-backs, hand-offs, arrivals,
    /// a sync when due (a held or draining process).
    ///
    /// # Errors
    /// As [`RegionProcess::step`].
    pub fn transact(&mut self, sync: bool) -> Result<(), RegionRunError> {
        self.keep_lease()?;
        self.resolve()?;
        self.send()?;
        let notified = self.store.take_notifications();
        if notified || self.last_poll.elapsed() >= self.opts.poll_every {
            self.adopt()?;
        }
        self.sync_finished()?;
        if sync && self.last_sync.elapsed() >= self.opts.sync_every {
            self.start_sync();
        }
        Ok(())
    }

    /// Keeps the lease: renews every third of it. A process that finds it went longer than
    /// its lease without renewing first tries the write it owes (a sync, fenced), which tells
    /// it whether the region is still its own.
    fn keep_lease(&mut self) -> Result<(), RegionRunError> {
        if self.core.stopped() {
            return Err(RegionRunError::Fenced(self.opts.region));
        }
        if self.suspect() {
            let (tick, ids, pos, vel) = self.gather();
            let r = self.rt.block_on(self.store.sync(self.opts.region, self.epoch, tick, &ids, &pos, &vel));
            self.check(r.map(drop))?;
            self.stats.synced_tick = self.stats.synced_tick.max(tick);
        }
        if self.last_renew.elapsed() >= self.opts.lease_ttl / 3 {
            let r = self.rt.block_on(self.store.renew(self.opts.region, self.epoch, self.opts.lease_ttl));
            self.check(r)?;
            self.last_renew = Instant::now();
            self.stats.renewals += 1;
        }
        Ok(())
    }

    fn check<T>(&mut self, r: Result<T, RegionError>) -> Result<T, RegionRunError> {
        r.map_err(|e| {
            if e.is_fenced() {
                self.core.on_fenced();
            }
            RegionRunError::from(e)
        })
    }

    /// Every NPC outside the cell leaves the world now and is queued for hand-off.
    fn cross(&mut self) {
        let grid = self.opts.grid;
        let me = self.opts.region;
        let mut leaving = Vec::new();
        // Most NPCs are well inside the cell: four comparisons instead of region_at's division
        // and rounding (which took most of a 1M-NPC region's step, 7 times its tick).
        let home = grid.surely_within(me);
        let mut q = self.engine.world_mut().query::<(&NpcId, &Position, &Velocity, &Role, &Swarm)>();
        for (id, p, v, role, swarm) in q.iter(self.engine.world()) {
            if home.contains(p.x, p.z) {
                continue;
            }
            let to = grid.region_at(p.x, p.z);
            if to != me {
                leaving.push((
                    id.0,
                    to,
                    NpcState {
                        role: role.name(),
                        swarm: swarm.0,
                        position: [p.x, p.y, p.z],
                        velocity: [v.x, v.y, v.z],
                    },
                ));
            }
        }
        let now = Instant::now();
        for (npc, to, state) in leaving {
            if self.core.crossed(npc, to, state) {
                self.engine.despawn(NpcId(npc));
                self.left_at.insert(npc, now);
            }
        }
    }

    fn reconnect(&mut self) -> Result<(), RegionRunError> {
        let store = self.rt.block_on(RegionStore::connect(&self.opts.postgres))?;
        self.rt.block_on(store.listen(self.opts.region))?;
        self.store = store;
        Ok(())
    }

    /// Reads back the rows of moves whose commit outcome was unknown.
    fn resolve(&mut self) -> Result<(), RegionRunError> {
        let unresolved = self.core.unresolved();
        if unresolved.is_empty() {
            return Ok(());
        }
        let rows = self.rt.block_on(self.store.read_owners(&unresolved));
        let rows = self.check(rows)?;
        self.core.on_rows_read(&rows);
        self.forget_done();
        Ok(())
    }

    fn forget_done(&mut self) {
        let core = &self.core;
        self.left_at.retain(|npc, _| core.outgoing(*npc).is_some());
    }

    /// Sends the queued hand-offs, a transaction of at most `max_moves_per_tx` at a time.
    fn send(&mut self) -> Result<(), RegionRunError> {
        loop {
            let moves = self.core.take_sendable(self.opts.max_moves_per_tx);
            if moves.is_empty() {
                return Ok(());
            }
            let now = Instant::now();
            let queued: Vec<Duration> =
                moves.iter().map(|m| self.left_at.get(&m.npc).map_or(Duration::ZERO, |t| now - *t)).collect();
            match self.rt.block_on(self.store.hand_off(self.opts.region, self.epoch, &moves, &queued)) {
                Ok(results) => {
                    self.core.on_committed(&results);
                    for m in &moves {
                        self.left_at.remove(&m.npc);
                    }
                }
                Err(RegionError::CommitUnknown { .. }) => {
                    tracing::warn!(
                        region = self.opts.region.0,
                        "hand-off commit outcome unknown: reading the rows back"
                    );
                    self.core.on_commit_unknown();
                    self.reconnect()?;
                    return Ok(());
                }
                Err(e @ RegionError::Fenced { .. }) => {
                    self.core.on_fenced();
                    return Err(e.into());
                }
                Err(e) => {
                    tracing::warn!(region = self.opts.region.0, error = %e, "hand-off rolled back: will send again");
                    self.core.on_not_committed();
                    if self.store.is_closed() {
                        self.reconnect()?;
                    }
                    return Ok(());
                }
            }
        }
    }

    /// The border feed's part of a step: takes the neighbours' batches, expires quiet ones,
    /// and publishes this region's border NPCs when due (in the background; a publish still
    /// running is not waited for: the next one is skipped).
    #[cfg(feature = "redis")]
    fn border_feed(&mut self) {
        let Some(feed) = &mut self.feed else { return };
        let now = Instant::now();
        let batches = feed.feed.drain();
        let ttl = feed.opts.ttl;
        let core = &self.core;
        let world = self.engine.world_mut();
        let Some(mut view) = world.remove_resource::<BorderGhosts>() else { return };
        for b in batches {
            let from = RegionId(b.from);
            let ghosts = b
                .ghosts
                .into_iter()
                .map(|g| super::BorderGhost {
                    npc: g.npc,
                    from,
                    role: g.role.parse().unwrap_or(Role::Scout),
                    position: Position { x: g.position[0], y: g.position[1], z: g.position[2] },
                    velocity: Velocity { x: g.velocity[0], y: g.velocity[1], z: g.velocity[2] },
                })
                .collect();
            view.apply(from, b.epoch, ghosts, now, |npc| core.holds(npc));
        }
        view.expire(now, ttl);
        world.insert_resource(view);
        if feed.last_publish.is_some_and(|t| t.elapsed() < feed.opts.publish_every) {
            return;
        }
        if feed.publishing.as_ref().is_some_and(|t| !t.is_finished()) {
            feed.skipped += 1;
            return;
        }
        feed.last_publish = Some(now);
        let (grid, me, margin) = (self.opts.grid, self.opts.region, feed.opts.margin);
        let (lo, hi) = grid.cell(me);
        let mut out: Vec<(RegionId, terrarium_persistence::region::GhostBatch)> = feed
            .neighbours
            .iter()
            .map(|n| {
                let batch = terrarium_persistence::region::GhostBatch {
                    from: me.0,
                    epoch: self.epoch,
                    tick: self.engine.clock().tick,
                    ghosts: Vec::new(),
                };
                (*n, batch)
            })
            .collect();
        let mut q = self.engine.world_mut().query::<(&NpcId, &Position, &Velocity, &Role)>();
        for (id, p, v, role) in q.iter(self.engine.world()) {
            let inside = p.x >= lo[0] + margin
                && p.x < hi[0] - margin
                && p.z >= lo[1] + margin
                && p.z < hi[1] - margin;
            if inside {
                continue;
            }
            for (n, batch) in &mut out {
                if grid.near(*n, p.x, p.z, margin) {
                    batch.ghosts.push(terrarium_persistence::region::Ghost {
                        npc: id.0,
                        role: role.name(),
                        position: [p.x, p.y, p.z],
                        velocity: [v.x, v.y, v.z],
                    });
                }
            }
        }
        let publisher = feed.feed.publisher();
        feed.publishing = Some(self.rt.spawn(async move { publisher.publish(out).await }));
    }

    /// Adopts what was handed to this region: spawns each NPC not already in the world.
    fn adopt(&mut self) -> Result<(), RegionRunError> {
        self.last_poll = Instant::now();
        loop {
            let r = self.rt.block_on(self.store.adopt(self.opts.region, self.epoch, 10_000));
            let adopted = match r {
                Err(RegionError::Db { source, .. }) => {
                    // Rolled back (a deadlock victim, a dropped connection): nothing was
                    // adopted, the rows wait for the next try.
                    tracing::warn!(region = self.opts.region.0, error = %source, "adoption rolled back; will retry");
                    if self.store.is_closed() {
                        self.reconnect()?;
                    }
                    return Ok(());
                }
                other => self.check(other)?,
            };
            let n = adopted.rows.len();
            for ms in &adopted.latency_ms {
                record_ms(&mut self.adopt_us, *ms);
            }
            let mut spawned = std::collections::HashSet::new();
            for row in self.core.on_arrivals(adopted.rows) {
                self.engine.spawn_with_id(NpcId(row.npc), &spec(&row.state));
                spawned.insert(row.npc);
            }
            if !spawned.is_empty()
                && let Some(mut ghosts) = self.engine.world_mut().get_resource_mut::<BorderGhosts>()
            {
                ghosts.remove_all(&spawned);
            }
            if !adopted.commit_known {
                self.reconnect()?;
            }
            if n < 10_000 {
                return Ok(());
            }
        }
    }

    /// The world's tick and every NPC's state, of one moment (what a sync writes).
    fn gather(&mut self) -> Gathered {
        let tick = self.engine.clock().tick;
        let mut q = self.engine.world_mut().query::<(&NpcId, &Position, &Velocity)>();
        let n = self.core.world_len();
        let (mut ids, mut pos, mut vel) =
            (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        for (id, p, v) in q.iter(self.engine.world()) {
            ids.push(id.0);
            pos.push([p.x, p.y, p.z]);
            vel.push([v.x, v.y, v.z]);
        }
        (tick, ids, pos, vel)
    }

    /// Starts a sync of every NPC's state on the second connection, beside the tick.
    fn start_sync(&mut self) {
        let Some(mut store) = self.sync_store.take() else { return };
        self.last_sync = Instant::now();
        let (tick, ids, pos, vel) = self.gather();
        let (region, epoch) = (self.opts.region, self.epoch);
        self.sync_task = Some(self.rt.spawn(async move {
            let r = store.sync(region, epoch, tick, &ids, &pos, &vel).await;
            (store, tick, r)
        }));
    }

    fn sync_finished(&mut self) -> Result<(), RegionRunError> {
        if !self.sync_task.as_ref().is_some_and(tokio::task::JoinHandle::is_finished) {
            return Ok(());
        }
        let task = self.sync_task.take().expect("checked above");
        self.wait_sync(task)
    }

    fn wait_sync(&mut self, task: tokio::task::JoinHandle<SyncResult>) -> Result<(), RegionRunError> {
        let Ok((store, tick, r)) = self.rt.block_on(task) else {
            // The task panicked: a fresh connection next time.
            self.sync_store = Some(self.rt.block_on(RegionStore::connect(&self.opts.postgres))?);
            return Ok(());
        };
        match r {
            Ok(_) => {
                self.stats.syncs += 1;
                self.stats.synced_tick = self.stats.synced_tick.max(tick);
                self.sync_store = Some(store);
            }
            Err(e) if e.is_fenced() => {
                self.core.on_fenced();
                return Err(e.into());
            }
            Err(e) => {
                // A deadlock with a hand-off or a lost connection: the next sync writes it all.
                tracing::warn!(region = self.opts.region.0, error = %e, "sync failed; next one retries");
                self.sync_store = Some(if store.is_closed() {
                    self.rt.block_on(RegionStore::connect(&self.opts.postgres))?
                } else {
                    store
                });
            }
        }
        Ok(())
    }

    /// Stops crossing (no ticks) and sends every outgoing hand-off until none is left.
    ///
    /// # Errors
    /// As [`RegionProcess::step`].
    pub fn drain_outgoing(&mut self, deadline: Duration) -> Result<bool, RegionRunError> {
        let until = Instant::now() + deadline;
        while self.core.outgoing_len() > 0 && Instant::now() < until {
            self.transact(false)?;
            if self.core.outgoing_len() > 0 {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(self.core.outgoing_len() == 0)
    }

    /// Adopts every arrival, then writes every NPC's state (fenced) and waits for it.
    ///
    /// # Errors
    /// As [`RegionProcess::step`].
    pub fn finish(&mut self) -> Result<(), RegionRunError> {
        self.keep_lease()?;
        self.adopt()?;
        if let Some(task) = self.sync_task.take() {
            self.wait_sync(task)?;
        }
        let (tick, ids, pos, vel) = self.gather();
        let r = self.rt.block_on(self.store.sync(self.opts.region, self.epoch, tick, &ids, &pos, &vel));
        self.check(r)?;
        self.stats.syncs += 1;
        self.stats.synced_tick = self.stats.synced_tick.max(tick);
        Ok(())
    }

    /// The region's ownership rows (its world should equal them once arrivals are adopted).
    ///
    /// # Errors
    /// [`RegionRunError::Store`].
    pub fn owned_rows(&self) -> Result<Vec<u64>, RegionRunError> {
        Ok(self.rt.block_on(self.store.owned_by(self.opts.region))?)
    }
}

#[cfg(feature = "redis")]
impl Feed {
    fn connect(
        rt: &tokio::runtime::Runtime,
        grid: &RegionGrid,
        region: RegionId,
        opts: &GhostOptions,
    ) -> Result<Self, RegionRunError> {
        use terrarium_persistence::region::{GhostFeed, GhostFeedConfig};
        if !(opts.margin.is_finite() && opts.margin >= 0.0) {
            return Err(RegionRunError::Ghosts(format!("margin {} is not a distance", opts.margin)));
        }
        let cfg = GhostFeedConfig {
            url: opts.url.clone(),
            key_prefix: opts.key_prefix.clone(),
            ..GhostFeedConfig::default()
        };
        let _guard = rt.enter();
        let feed = GhostFeed::connect(&cfg, region).map_err(|e| RegionRunError::Ghosts(e.to_string()))?;
        // A neighbour: a region one of whose points lies within the margin of this cell.
        let (lo, hi) = grid.cell(region);
        let neighbours = (0..grid.count())
            .map(RegionId)
            .filter(|n| *n != region)
            .filter(|n| {
                let (nlo, nhi) = grid.cell(*n);
                nlo[0] <= hi[0] + opts.margin
                    && nhi[0] >= lo[0] - opts.margin
                    && nlo[1] <= hi[1] + opts.margin
                    && nhi[1] >= lo[1] - opts.margin
            })
            .collect();
        Ok(Self { opts: opts.clone(), feed, neighbours, publishing: None, last_publish: None, skipped: 0 })
    }
}

/// Rows for a new clustered world: `npcs` NPCs at seeded places inside `bounds` (x, z; y at
/// `height`), each owned by the region whose cell holds it.
#[must_use]
pub fn seed_rows(
    grid: &RegionGrid,
    npcs: u64,
    min: [f32; 3],
    max: [f32; 3],
    seed: u64,
) -> Vec<OwnerRow<NpcState>> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (1..=npcs)
        .map(|npc| {
            let x = min[0] + rng.f32() * (max[0] - min[0]);
            let z = min[2] + rng.f32() * (max[2] - min[2]);
            let y = min[1] + (max[1] - min[1]) * 0.5;
            OwnerRow {
                npc,
                region: grid.region_at(x, z),
                seq: 0,
                adopted: true,
                state: NpcState {
                    role: Role::BUILT_IN[(npc % 5) as usize].name(),
                    swarm: 0,
                    position: [x, y, z],
                    velocity: [0.0; 3],
                },
            }
        })
        .collect()
}
