//! RegionProcess: one region of a world split across processes. It takes its region's lease,
//! loads the NPCs the region owns, ticks them at the world's rate, hands off every NPC that
//! leaves its cell (at once: out of this world in the same step), adopts what other regions
//! hand it, writes its NPCs' state back to their ownership rows, and stops itself the moment
//! a fence says another process took its region. The protocol is `persistence/DESIGN.md`
//! ("Regions"); its decisions are `RegionCore`'s.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bevy_ecs::prelude::*;
use hdrhistogram::Histogram;
use terrarium_engine::{Engine, EngineConfig, NpcId, NpcSpec, Position, Role, Swarm, Velocity};
use terrarium_persistence::PostgresConfig;
use terrarium_persistence::region::{
    Epoch, NpcState, OwnerRow, RegionCore, RegionError, RegionId, RegionStore,
};

use super::RegionGrid;

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
    /// Ticks run.
    pub ticks: u64,
    /// Tick time p50, ms.
    pub tick_ms_p50: f64,
    /// Tick time p99, ms.
    pub tick_ms_p99: f64,
    /// Syncs committed.
    pub syncs: u64,
    /// Lease renewals committed.
    pub renewals: u64,
}

type SyncResult = (RegionStore, Result<u64, RegionError>);

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
        let mut core = RegionCore::new(opts.region);
        core.on_lease(epoch);
        let mut engine = Engine::builder(opts.engine.clone())
            .add_plugin(terrarium_systems::core_plugin)
            .build()
            .map_err(RegionRunError::Engine)?;
        for row in core.on_loaded(rows) {
            engine.spawn_with_id(NpcId(row.npc), &spec(&row.state));
        }
        let stats = RegionStats {
            region: opts.region.0,
            epoch,
            loaded: core.stats().loaded,
            load_ms: ms(started.elapsed()),
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
            ..self.stats
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
        self.cross();
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
            let (ids, pos, vel) = self.gather();
            let r = self.rt.block_on(self.store.sync(self.opts.region, self.epoch, &ids, &pos, &vel));
            self.check(r.map(drop))?;
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
        let mut q = self.engine.world_mut().query::<(&NpcId, &Position, &Velocity, &Role, &Swarm)>();
        for (id, p, v, role, swarm) in q.iter(self.engine.world()) {
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
            for row in self.core.on_arrivals(adopted.rows) {
                self.engine.spawn_with_id(NpcId(row.npc), &spec(&row.state));
            }
            if !adopted.commit_known {
                self.reconnect()?;
            }
            if n < 10_000 {
                return Ok(());
            }
        }
    }

    fn gather(&mut self) -> (Vec<u64>, Vec<[f32; 3]>, Vec<[f32; 3]>) {
        let mut q = self.engine.world_mut().query::<(&NpcId, &Position, &Velocity)>();
        let n = self.core.world_len();
        let (mut ids, mut pos, mut vel) =
            (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        for (id, p, v) in q.iter(self.engine.world()) {
            ids.push(id.0);
            pos.push([p.x, p.y, p.z]);
            vel.push([v.x, v.y, v.z]);
        }
        (ids, pos, vel)
    }

    /// Starts a sync of every NPC's state on the second connection, beside the tick.
    fn start_sync(&mut self) {
        let Some(mut store) = self.sync_store.take() else { return };
        self.last_sync = Instant::now();
        let (ids, pos, vel) = self.gather();
        let (region, epoch) = (self.opts.region, self.epoch);
        self.sync_task = Some(self.rt.spawn(async move {
            let r = store.sync(region, epoch, &ids, &pos, &vel).await;
            (store, r)
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
        let Ok((store, r)) = self.rt.block_on(task) else {
            // The task panicked: a fresh connection next time.
            self.sync_store = Some(self.rt.block_on(RegionStore::connect(&self.opts.postgres))?);
            return Ok(());
        };
        match r {
            Ok(_) => {
                self.stats.syncs += 1;
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
        let (ids, pos, vel) = self.gather();
        let r = self.rt.block_on(self.store.sync(self.opts.region, self.epoch, &ids, &pos, &vel));
        self.check(r)?;
        self.stats.syncs += 1;
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
