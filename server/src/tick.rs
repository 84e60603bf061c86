//! The tick thread: owns the [`Engine`], ticks it at `tick_hz` on wall-clock time, and runs
//! jobs other threads send it between two ticks.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use terrarium::engine::Engine;

use crate::error::ServerError;

/// Something to do with the engine between two ticks.
pub(crate) type Job = Box<dyn FnOnce(&mut Engine) + Send>;

/// What other threads can see of the tick thread.
#[derive(Debug)]
pub(crate) struct TickStatus {
    started: Instant,
    /// The last tick run.
    pub(crate) tick: AtomicU64,
    /// When it ended, milliseconds after `started`.
    last_tick_ms: AtomicU64,
    /// Ticks skipped because the loop fell more than a second behind.
    pub(crate) skipped: AtomicU64,
    /// False once the loop has stopped.
    pub(crate) running: AtomicBool,
    /// NPCs in the world after the last tick.
    npcs: AtomicU64,
    /// The next NPC id when the last tick began (ids handed out since are not in `npcs` yet).
    ids_before: AtomicU64,
}

impl TickStatus {
    fn new(npcs: u64, next_id: u64) -> Self {
        Self {
            started: Instant::now(),
            tick: AtomicU64::new(0),
            last_tick_ms: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            running: AtomicBool::new(true),
            npcs: AtomicU64::new(npcs),
            ids_before: AtomicU64::new(next_id),
        }
    }

    /// The population once every spawn handed an id so far has landed, never less: the last
    /// tick's count plus the ids handed out since that tick began (`next_id`: the id the next
    /// spawn gets now). Spawns queued while that tick ran may be counted twice.
    pub(crate) fn population(&self, next_id: u64) -> u64 {
        // The tick thread stores the count, then the start; read in the other order, a new
        // start implies the new count, and an old start with a new count overcounts.
        let before = self.ids_before.load(Ordering::Acquire);
        let npcs = self.npcs.load(Ordering::Acquire);
        npcs + next_id.saturating_sub(before)
    }

    /// Wall-clock time since the last tick ended (since the start before the first).
    pub(crate) fn since_last_tick(&self) -> Duration {
        let last = Duration::from_millis(self.last_tick_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }
}

/// The running tick thread.
pub(crate) struct TickThread {
    handle: JoinHandle<Engine>,
    stop: Arc<AtomicBool>,
    jobs: mpsc::Sender<Job>,
    pub(crate) status: Arc<TickStatus>,
}

impl TickThread {
    /// Starts ticking `engine` at `tick_hz`. `after_tick` runs on the tick thread after every
    /// tick (the periodic checkpoint); `on_stop` after the last tick (the last flush).
    pub(crate) fn start(
        engine: Engine,
        tick_hz: u32,
        mut after_tick: impl FnMut(&mut Engine) + Send + 'static,
        on_stop: impl FnOnce(&mut Engine) + Send + 'static,
    ) -> Result<Self, ServerError> {
        let stop = Arc::new(AtomicBool::new(false));
        let status = Arc::new(TickStatus::new(engine.npc_count() as u64, engine.next_npc_id().0));
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (stop2, status2) = (Arc::clone(&stop), Arc::clone(&status));
        let handle = std::thread::Builder::new()
            .name("terrarium-tick".into())
            .spawn(move || {
                crate::priority::favour_the_tick();
                let mut engine = engine;
                run(&mut engine, tick_hz, &stop2, &inbox, &status2, &mut after_tick);
                on_stop(&mut engine);
                status2.running.store(false, Ordering::Release);
                engine
            })
            .map_err(|source| ServerError::Thread { name: "terrarium-tick", source })?;
        Ok(Self { handle, stop, jobs, status })
    }

    /// The flag that stops the loop after the tick in progress (for a stop without joining).
    pub(crate) fn stop_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stop)
    }

    /// A sender for jobs.
    pub(crate) fn jobs(&self) -> mpsc::Sender<Job> {
        self.jobs.clone()
    }

    /// Stops after the tick in progress, runs `on_stop`, and hands the engine back.
    pub(crate) fn stop(self) -> Result<Engine, ServerError> {
        self.stop.store(true, Ordering::Release);
        // Wake the loop if it waits for its next tick.
        let _ = self.jobs.send(Box::new(|_| {}));
        self.handle.join().map_err(|_| ServerError::TickThread)
    }
}

/// The fixed-step loop: tick, then wait for the next step, running jobs as they come.
fn run(
    engine: &mut Engine,
    tick_hz: u32,
    stop: &AtomicBool,
    inbox: &mpsc::Receiver<Job>,
    status: &TickStatus,
    after_tick: &mut dyn FnMut(&mut Engine),
) {
    let dt = Duration::from_secs(1) / tick_hz.max(1);
    let mut next = Instant::now();
    while !stop.load(Ordering::Acquire) {
        while let Ok(job) = inbox.try_recv() {
            job(engine);
        }
        let ids_before = engine.next_npc_id().0;
        let tick = engine.tick();
        // The count first (see `TickStatus::population`).
        status.npcs.store(engine.npc_count() as u64, Ordering::Release);
        status.ids_before.store(ids_before, Ordering::Release);
        after_tick(engine);
        status.tick.store(tick, Ordering::Relaxed);
        let done = status.started.elapsed();
        status.last_tick_ms.store(u64::try_from(done.as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
        next += dt;
        let now = Instant::now();
        if now > next + Duration::from_secs(1) {
            // More than a second behind: catching up would only run ticks back to back for a
            // while; drop the backlog instead and say so.
            let behind = (now - next).as_nanos() / dt.as_nanos().max(1);
            status.skipped.fetch_add(u64::try_from(behind).unwrap_or(u64::MAX), Ordering::Relaxed);
            tracing::warn!(ticks = %behind, "tick loop fell more than a second behind; skipping ahead");
            next = now;
        }
        while let Some(wait) = next.checked_duration_since(Instant::now()) {
            if stop.load(Ordering::Acquire) {
                break;
            }
            match inbox.recv_timeout(wait) {
                Ok(job) => job(engine),
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(wait),
            }
        }
    }
}
