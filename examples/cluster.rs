//! One world across several engine processes (issue 17): a supervisor that seeds a world into
//! PostgreSQL's ownership table, starts one region process per cell of a grid (this same
//! binary, re-executed with `--region-worker`), restarts any that dies, SIGKILLs one at random
//! every `--kill-every` seconds (seeded), optionally freezes one past its lease and thaws it
//! (`--freeze-at`), checks at sampled moments that the regions' worlds are disjoint, and at
//! the end that they cover every NPC exactly once. With `--redis-url` (feature `redis`) each
//! region also publishes its NPCs near a border to its neighbours through Redis pub/sub, which
//! show them as read-only ghosts (`ghost*` keys). With `--json` the last line of stdout is the
//! summary (its keys are a contract).
//!
//! ```text
//! cargo run --release --features postgres --example cluster -- \
//!     --database-url "$DATABASE_URL" --regions 2x2 --npcs 20000 --seconds 60 --kill-every 10 --json
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{Value, json};
use terrarium::engine::EngineConfig;
use terrarium::perf::{Performance, RegionFigures};
use terrarium::persistence::PostgresConfig;
use terrarium::persistence::region::{RegionId, RegionStore};
use terrarium::region::{GhostOptions, RegionGrid, RegionOptions, RegionProcess, RegionRunError, seed_rows};

mod common;

/// Exit code of a region process that a fence stopped (another process took its region).
const EXIT_FENCED: u8 = 3;

/// How the supervisor gives its region processes the border feed's Redis URL (by environment:
/// it may hold a password).
const GHOST_URL_VAR: &str = "TERRARIUM_CLUSTER_GHOST_URL";

#[derive(Parser, Debug, Clone)]
#[command(about = "A world split into region processes, with exactly-once hand-off through PostgreSQL")]
struct Args {
    /// Grid of regions, COLSxROWS.
    #[arg(long, default_value = "2x2")]
    regions: String,
    /// NPCs in the world.
    #[arg(long, default_value_t = 20_000)]
    npcs: u64,
    /// Seconds to run.
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
    /// Ticks per second of every region.
    #[arg(long, default_value_t = 20)]
    tick_hz: u32,
    /// SIGKILL a random region process every this many seconds (0: never).
    #[arg(long, default_value_t = 0.0)]
    kill_every: f64,
    /// Seed of the world and of the kill schedule.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the summary as JSON on the last line of stdout.
    #[arg(long)]
    json: bool,
    /// PostgreSQL URL (default: the DATABASE_URL environment variable).
    #[arg(long)]
    database_url: Option<String>,
    /// Schema of the ownership tables (emptied at start).
    #[arg(long, default_value = "terrarium_cluster")]
    schema: String,
    /// Side of the square world, blocks (x and z).
    #[arg(long, default_value_t = 256.0)]
    world_size: f32,
    /// Lease length, ms (renewed every third of it).
    #[arg(long, default_value_t = 2000)]
    lease_ms: u64,
    /// How often a region writes its NPCs' state into their rows, ms.
    #[arg(long, default_value_t = 1000)]
    sync_ms: u64,
    /// Freeze (SIGSTOP) one random region this many seconds in, until another process has
    /// taken its lease, then thaw it (0: never).
    #[arg(long, default_value_t = 0.0)]
    freeze_at: f64,
    /// Check the regions' worlds for disjointness every this many seconds (0: never).
    #[arg(long, default_value_t = 2.0)]
    sample_every: f64,
    /// Engine threads per region process.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Redis URL of the border feed: each region shows its neighbours' NPCs near its cell as
    /// read-only ghosts (needs the `redis` feature; none without it).
    #[arg(long)]
    redis_url: Option<String>,
    /// Channel prefix of the border feed.
    #[arg(long, default_value = "terrarium_cluster:")]
    redis_prefix: String,
    /// NPCs within this many blocks of a neighbour's cell are its ghosts.
    #[arg(long, default_value_t = 8.0)]
    ghost_margin: f32,
    /// How often each region publishes its border NPCs, ms.
    #[arg(long, default_value_t = 200)]
    ghost_every_ms: u64,
    /// Ghosts not refreshed for this long disappear, ms.
    #[arg(long, default_value_t = 1000)]
    ghost_ttl_ms: u64,
    /// Serve every region's figures as Prometheus text on `http://ADDR/metrics` (the
    /// supervisor's, from the regions' reports each second; needs the `prometheus` feature).
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Runs one region process (used by the supervisor).
    #[arg(long, hide = true)]
    region_worker: Option<u32>,
}

fn main() -> ExitCode {
    let mut fenced = false;
    let code = common::main_with("cluster", |args: &Args| match args.region_worker {
        Some(region) => match worker(args, RegionId(region)) {
            Err(e)
                if e.downcast_ref::<RegionRunError>()
                    .is_some_and(|e| matches!(e, RegionRunError::Fenced(_))) =>
            {
                fenced = true;
                Ok(())
            }
            other => other,
        },
        None => supervise(args),
    });
    if fenced { ExitCode::from(EXIT_FENCED) } else { code }
}

fn pg_config(args: &Args) -> Result<PostgresConfig> {
    let url = match &args.database_url {
        Some(url) => url.clone(),
        None => std::env::var("DATABASE_URL").context("give --database-url or set DATABASE_URL")?,
    };
    Ok(PostgresConfig { url, schema: args.schema.clone(), ..PostgresConfig::default() })
}

fn grid(args: &Args) -> Result<RegionGrid> {
    Ok(RegionGrid::parse(&args.regions, [0.0, 0.0], [args.world_size, args.world_size])?)
}

fn engine_config(args: &Args) -> EngineConfig {
    let mut cfg = EngineConfig {
        seed: args.seed,
        tick_hz: args.tick_hz,
        threads: args.threads,
        ..EngineConfig::default()
    };
    cfg.world.min = [0.0, 0.0, 0.0];
    cfg.world.max = [args.world_size, 64.0, args.world_size];
    cfg
}

// ---------------------------------------------------------------------------------------------
// A region process: ticks, hands off, adopts; answers the supervisor on stdin/stdout (one JSON
// object per line).

fn say(v: &Value) {
    let mut out = std::io::stdout().lock();
    // A supervisor gone away is no reason to stop simulating: the lease decides.
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

fn pairs(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect()
}

/// CPU seconds this process has used (user + system), from /proc (Linux; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else { return 0.0 };
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of stat (utime, stime), counted from field 3 here; USER_HZ is 100 on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

fn report(p: &mut RegionProcess, kind: &str) -> Value {
    json!({
        kind: true,
        "region": p.region().0,
        "pid": std::process::id(),
        "stats": p.stats(),
        "figures": p.figures(),
        "cpu_s": cpu_seconds(),
        "tick_ns": pairs(p.tick_histogram()),
        "adopt_us": pairs(p.adopt_histogram()),
    })
}

fn worker(args: &Args, region: RegionId) -> Result<()> {
    let opts = RegionOptions {
        grid: grid(args)?,
        region,
        engine: engine_config(args),
        postgres: pg_config(args)?,
        lease_ttl: Duration::from_millis(args.lease_ms),
        sync_every: Duration::from_millis(args.sync_ms),
        poll_every: Duration::from_millis(500),
        max_moves_per_tx: 2_000,
        holder: format!("cluster pid {}", std::process::id()),
        ghosts: std::env::var(GHOST_URL_VAR).ok().filter(|u| !u.is_empty()).map(|url| GhostOptions {
            url,
            key_prefix: args.redis_prefix.clone(),
            margin: args.ghost_margin,
            publish_every: Duration::from_millis(args.ghost_every_ms),
            ttl: Duration::from_millis(args.ghost_ttl_ms),
        }),
    };
    let (tx, commands) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut p = RegionProcess::start(opts)?;
    say(&report(&mut p, "up"));
    let period = Duration::from_secs_f64(1.0 / f64::from(args.tick_hz.max(1)));
    let mut next_tick = Instant::now();
    let mut last_report = Instant::now();
    loop {
        let now = Instant::now();
        if now < next_tick {
            std::thread::sleep(next_tick - now);
        }
        next_tick += period;
        if Instant::now() > next_tick + period * 20 {
            // Far behind (a freeze, a slow store): don't try to catch up tick by tick.
            next_tick = Instant::now();
        }
        p.step()?;
        if last_report.elapsed() >= Duration::from_secs(1) {
            say(&report(&mut p, "report"));
            last_report = Instant::now();
        }
        while let Ok(cmd) = commands.try_recv() {
            let mut words = cmd.split_whitespace();
            match (words.next(), words.next()) {
                (Some("hold"), Some(n)) => hold(&mut p, &commands, n)?,
                (Some("stop"), _) => return stop(&mut p, &commands),
                _ => tracing::warn!(cmd, "unknown supervisor command"),
            }
        }
    }
}

/// Stands still (no tick, no hand-off, no adoption: only the lease) while the supervisor
/// compares the regions' worlds; at most 10 s (the lease is kept meanwhile).
fn hold(p: &mut RegionProcess, commands: &mpsc::Receiver<String>, n: &str) -> Result<()> {
    p.keep_lease_only()?;
    let ghosts: Vec<u64> = p.ghosts().iter().map(|g| g.npc).collect();
    say(&json!({ "sample": n, "region": p.region().0, "ids": p.npcs(), "ghosts": ghosts }));
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        match commands.recv_timeout(Duration::from_millis(50)) {
            Ok(cmd) if cmd.starts_with("go") => return Ok(()),
            Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => p.keep_lease_only()?,
            Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
        }
    }
    Ok(())
}

/// The end: stop ticking, send every outgoing hand-off, say so; once told every region has,
/// adopt everything, write the state back and report the world.
fn stop(p: &mut RegionProcess, commands: &mpsc::Receiver<String>) -> Result<()> {
    let drained = p.drain_outgoing(Duration::from_secs(20))?;
    say(&json!({ "drained": drained, "region": p.region().0 }));
    loop {
        match commands.recv_timeout(Duration::from_millis(50)) {
            Ok(cmd) if cmd.starts_with("finish") => break,
            Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => p.keep_lease_only()?,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    p.finish()?;
    let ids = p.npcs();
    let rows = p.owned_rows()?;
    let mut last = report(p, "final");
    last["ids"] = json!(ids);
    last["rows_equal_world"] = json!(rows == ids);
    say(&last);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The supervisor.

/// A line from a region process.
struct Line {
    instance: u64,
    msg: Value,
}

struct Proc {
    region: u32,
    instance: u64,
    child: Child,
    stdin: ChildStdin,
}

impl Proc {
    fn send(&mut self, cmd: &str) {
        // A process that died is noticed by try_wait; a failed write here changes nothing.
        let _ = writeln!(self.stdin, "{cmd}");
        let _ = self.stdin.flush();
    }
}

#[derive(Serialize)]
struct Summary {
    regions: String,
    npcs_start: u64,
    npcs_end: u64,
    npcs_lost: u64,
    npcs_duplicated: u64,
    handoffs: u64,
    handoffs_per_s: f64,
    region_restarts: u64,
    max_handoff_ms: f64,
    tick_ms_p99: Vec<f64>,
    fenced_writes_rejected: u64,
    // Added beside the contract keys.
    seconds: f64,
    handoff_ms_p50: f64,
    handoff_ms_p99: f64,
    tick_ms_p50: Vec<f64>,
    cpu_s_per_region: Vec<f64>,
    owned_per_region: Vec<u64>,
    samples: u64,
    sample_violations: u64,
    rows_equal_worlds: bool,
    zombie_fenced: Option<bool>,
    unknown_commits: u64,
    anomalies: u64,
    seed_ms: f64,
    /// Border feed (0 without `--redis-url`): ghosts shown per region at the last sample.
    ghosts_per_region: Vec<u64>,
    /// Most ghosts one region showed at a sample.
    ghosts_max: u64,
    /// Ghosts that were also in the showing region's own world at a sample (should be 0).
    ghost_violations: u64,
    ghost_batches_published: u64,
    ghost_batches_received: u64,
    ghost_publish_errors: u64,
    ghosts_expired: u64,
    /// Ticks run per region (all its processes together).
    ticks_per_region: Vec<u64>,
    /// NPCs ticked per wall-clock second, all regions together (simulation throughput).
    npc_ticks_per_s: f64,
    /// Each region's world tick at the end (a restarted region resumes its newest sync's tick).
    tick_per_region: Vec<u64>,
    /// The tick each region's last process resumed from (0: it was the region's first).
    resumed_tick_per_region: Vec<u64>,
    /// Processes started per region beyond its first (kills, deaths, a frozen one's successor).
    restarts_per_region: Vec<u64>,
}

struct Supervisor {
    args: Args,
    exe: std::path::PathBuf,
    lines_tx: mpsc::Sender<Line>,
    lines: mpsc::Receiver<Line>,
    next_instance: u64,
    /// Newest cumulative report per process instance: (region, report).
    reports: HashMap<u64, (u32, Value)>,
    pending: Vec<Line>,
    /// Processes started per region.
    started: BTreeMap<u32, u64>,
}

impl Supervisor {
    fn spawn(&mut self, region: u32) -> Result<Proc> {
        let a = &self.args;
        let mut cmd = Command::new(&self.exe);
        cmd.args(["--region-worker", &region.to_string(), "--regions", &a.regions])
            .args(["--tick-hz", &a.tick_hz.to_string(), "--seed", &a.seed.to_string()])
            .args(["--schema", &a.schema, "--world-size", &a.world_size.to_string()])
            .args(["--lease-ms", &a.lease_ms.to_string(), "--sync-ms", &a.sync_ms.to_string()])
            .args(["--threads", &a.threads.to_string(), "--redis-prefix", &a.redis_prefix])
            .args(["--ghost-margin", &a.ghost_margin.to_string()])
            .args(["--ghost-every-ms", &a.ghost_every_ms.to_string()])
            .args(["--ghost-ttl-ms", &a.ghost_ttl_ms.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // The URL (it may hold a password) goes by environment, not on a command line others can read.
        cmd.env("DATABASE_URL", pg_config(a)?.url);
        cmd.env(GHOST_URL_VAR, a.redis_url.clone().unwrap_or_default());
        let mut child = cmd.spawn().context("cannot start a region process")?;
        let stdin = child.stdin.take().context("piped stdin")?;
        let stdout = child.stdout.take().context("piped stdout")?;
        let instance = self.next_instance;
        self.next_instance += 1;
        *self.started.entry(region).or_default() += 1;
        let tx = self.lines_tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Ok(msg) = serde_json::from_str::<Value>(&line) else { continue };
                if tx.send(Line { instance, msg }).is_err() {
                    break;
                }
            }
        });
        Ok(Proc { region, instance, child, stdin })
    }

    /// Takes lines that arrived: reports are kept, anything else is left for whoever waits.
    fn pump(&mut self, wait: Duration) {
        let mut first = true;
        loop {
            let got = if first { self.lines.recv_timeout(wait).ok() } else { self.lines.try_recv().ok() };
            first = false;
            let Some(line) = got else { return };
            if let Some(region) = ["up", "report", "final"]
                .iter()
                .find(|k| line.msg.get(**k).is_some())
                .and_then(|_| line.msg["region"].as_u64())
            {
                self.reports.insert(line.instance, (u32::try_from(region).unwrap_or(0), line.msg.clone()));
            }
            self.pending.push(line);
        }
    }

    /// Waits until `want` says a pending line is the one, up to `timeout`.
    fn take(&mut self, timeout: Duration, mut want: impl FnMut(&Line) -> bool) -> Option<Line> {
        let until = Instant::now() + timeout;
        loop {
            if let Some(i) = self.pending.iter().position(&mut want) {
                return Some(self.pending.remove(i));
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.pump(left.min(Duration::from_millis(20)));
        }
    }
}

/// Serves `/metrics` on `addr` (a thread and runtime of its own) from the snapshots of the
/// returned handle, into which the supervisor puts the regions' figures.
#[cfg(feature = "prometheus")]
fn serve_metrics(addr: std::net::SocketAddr) -> Result<Performance> {
    use terrarium::perf::prometheus::PrometheusExporter;
    let perf = Performance::new();
    let listener = std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    listener.set_nonblocking(true)?;
    eprintln!("cluster: region figures on http://{}/metrics", listener.local_addr()?);
    let handle = perf.clone();
    std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => return tracing::error!(error = %e, "no runtime for /metrics"),
        };
        rt.block_on(async move {
            let exporter = std::sync::Arc::new(PrometheusExporter::new());
            let app = axum::Router::new().route(
                "/metrics",
                axum::routing::get(move || {
                    let (exporter, handle) = (exporter.clone(), handle.clone());
                    async move {
                        exporter.record(&handle.snapshot());
                        ([("content-type", "text/plain; version=0.0.4")], exporter.render())
                    }
                }),
            );
            match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => {
                    if let Err(e) = axum::serve(l, app).await {
                        tracing::error!(error = %e, "/metrics server stopped");
                    }
                }
                Err(e) => tracing::error!(error = %e, "/metrics listener"),
            }
        });
    });
    Ok(perf)
}

#[cfg(not(feature = "prometheus"))]
fn serve_metrics(_addr: std::net::SocketAddr) -> Result<Performance> {
    bail!("--metrics-addr needs the prometheus feature")
}

fn signal(pid: u32, sig: &str) -> Result<()> {
    let status = Command::new("kill").args([sig, &pid.to_string()]).status().context("kill(1) runs")?;
    if !status.success() {
        bail!("kill {sig} {pid} failed");
    }
    Ok(())
}

fn merge(into: &mut Histogram<u64>, v: &Value) {
    for pair in v.as_array().into_iter().flatten() {
        if let (Some(value), Some(count)) = (pair[0].as_u64(), pair[1].as_u64()) {
            let _ = into.record_n(value.max(1), count);
        }
    }
}

fn quantile(h: &Histogram<u64>, q: f64, unit: f64) -> f64 {
    if h.is_empty() { 0.0 } else { h.value_at_quantile(q) as f64 / unit }
}

#[expect(clippy::too_many_lines, reason = "the supervisor's timeline reads best in one place")]
fn supervise(args: &Args) -> Result<()> {
    let grid = grid(args)?;
    let regions = grid.count();
    let pg = pg_config(args)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut admin = rt.block_on(RegionStore::connect(&pg)).context("cannot reach the ownership store")?;
    let seeding = Instant::now();
    let cfg = engine_config(args);
    let rows = seed_rows(&grid, args.npcs, cfg.world.min, cfg.world.max, args.seed);
    rt.block_on(admin.seed(&rows)).context("cannot seed the world")?;
    drop(rows);
    let seed_ms = seeding.elapsed().as_secs_f64() * 1000.0;

    let (lines_tx, lines) = mpsc::channel();
    let mut sup = Supervisor {
        args: args.clone(),
        exe: std::env::current_exe()?,
        lines_tx,
        lines,
        next_instance: 0,
        reports: HashMap::new(),
        pending: Vec::new(),
        started: BTreeMap::new(),
    };
    let mut procs: Vec<Proc> = (0..regions).map(|r| sup.spawn(r)).collect::<Result<_>>()?;
    // Wait until every region is up (loaded) before the clock starts.
    for _ in 0..regions {
        sup.take(Duration::from_secs(120), |l| l.msg.get("up").is_some())
            .context("a region did not start")?;
    }

    let metrics = match args.metrics_addr {
        Some(addr) => Some(serve_metrics(addr)?),
        None => None,
    };
    let mut rng = fastrand::Rng::with_seed(args.seed);
    let started = Instant::now();
    let run = Duration::from_secs_f64(args.seconds);
    let mut next_kill = (args.kill_every > 0.0).then(|| Duration::from_secs_f64(args.kill_every));
    let mut next_sample = (args.sample_every > 0.0).then(|| Duration::from_secs_f64(args.sample_every));
    let mut restarts = 0u64;
    let mut samples = 0u64;
    let mut violations = 0u64;
    // The freeze: (zombie, when it was frozen, thawed yet).
    let mut freeze_due = (args.freeze_at > 0.0).then(|| Duration::from_secs_f64(args.freeze_at));
    let mut zombie: Option<(Proc, bool)> = None;
    let mut zombie_fenced: Option<bool> = None;
    let (mut ghost_violations, mut ghosts_max) = (0u64, 0u64);
    let mut ghosts_now = vec![0u64; regions as usize];

    while started.elapsed() < run {
        sup.pump(Duration::from_millis(20));
        if let Some(perf) = &metrics {
            // The live processes' newest figures (a dead one's stay until its successor reports).
            for p in &procs {
                if let Some((_, msg)) = sup.reports.get(&p.instance)
                    && let Ok(f) = serde_json::from_value::<RegionFigures>(msg["figures"].clone())
                {
                    perf.set_region(f);
                }
            }
        }
        let t = started.elapsed();
        // Restart whatever died.
        for p in &mut procs {
            if let Some(status) = p.child.try_wait()? {
                tracing::warn!(region = p.region, %status, "region process died; restarting");
                *p = sup.spawn(p.region)?;
                restarts += 1;
            }
        }
        if let Some(due) = next_kill
            && t >= due
        {
            next_kill = Some(due + Duration::from_secs_f64(args.kill_every));
            let victim = rng.usize(..procs.len());
            let _ = procs[victim].child.kill();
            let _ = procs[victim].child.wait();
            tracing::warn!(region = procs[victim].region, "SIGKILLed a region process; restarting it");
            procs[victim] = sup.spawn(procs[victim].region)?;
            restarts += 1;
        }
        if let Some(due) = freeze_due
            && t >= due
        {
            // A process that holds its lease (it said so): freeze it.
            let held: Vec<(usize, i64)> = procs
                .iter()
                .enumerate()
                .filter_map(|(i, p)| {
                    let (_, up) = sup.reports.get(&p.instance)?;
                    Some((i, up["stats"]["epoch"].as_i64()?))
                })
                .collect();
            if held.is_empty() {
                continue;
            }
            freeze_due = None;
            let (r, epoch) = held[rng.usize(..held.len())];
            signal(procs[r].child.id(), "-STOP")?;
            tracing::warn!(region = r, epoch, "froze a region process (SIGSTOP)");
            // Once its lease has run out (PostgreSQL's clock), a new process takes the region.
            let region = RegionId(procs[r].region);
            let until = Instant::now() + Duration::from_millis(args.lease_ms * 5);
            while rt.block_on(admin.lease(region))? != Some((epoch, true)) {
                if Instant::now() > until {
                    bail!("the frozen region's lease did not expire");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let fresh = sup.spawn(procs[r].region)?;
            let old = std::mem::replace(&mut procs[r], fresh);
            zombie = Some((old, false));
        }
        if let Some((z, thawed)) = &mut zombie {
            if !*thawed {
                // Thaw once the new process holds the lease (a newer epoch than the zombie's).
                let took = sup.reports.iter().any(|(i, (region, _))| *i > z.instance && *region == z.region);
                if took {
                    signal(z.child.id(), "-CONT")?;
                    tracing::warn!(region = z.region, "thawed the zombie");
                    *thawed = true;
                }
            } else if let Some(status) = z.child.try_wait()? {
                zombie_fenced = Some(status.code() == Some(i32::from(EXIT_FENCED)));
                zombie = None;
            }
        }
        if let Some(due) = next_sample
            && t >= due
        {
            next_sample = Some(due + Duration::from_secs_f64(args.sample_every));
            samples += 1;
            let tag = format!("s{samples}");
            for p in &mut procs {
                p.send(&format!("hold {tag}"));
            }
            let mut sets: Vec<(u32, BTreeSet<u64>)> = Vec::new();
            let mut ghost_sets: Vec<(u32, Vec<u64>)> = Vec::new();
            // One deadline for all: a dead or frozen process does not answer (and is not live).
            let until = Instant::now() + Duration::from_secs(2);
            for p in &procs {
                let inst = p.instance;
                let left = until.saturating_duration_since(Instant::now());
                if let Some(line) = sup.take(left, |l| l.instance == inst && l.msg["sample"] == tag.as_str())
                {
                    let ids =
                        line.msg["ids"].as_array().into_iter().flatten().filter_map(Value::as_u64).collect();
                    sets.push((p.region, ids));
                    let ghosts =
                        line.msg["ghosts"].as_array().into_iter().flatten().filter_map(Value::as_u64);
                    ghost_sets.push((p.region, ghosts.collect()));
                }
            }
            // The rows, read while every region still holds still (before "go").
            let mut owned_rows: HashMap<u32, BTreeSet<u64>> = HashMap::new();
            for (region, _) in &sets {
                owned_rows
                    .insert(*region, rt.block_on(admin.owned_by(RegionId(*region)))?.into_iter().collect());
            }
            // Disjoint, and each world within its region's rows.
            let mut seen: HashMap<u64, u32> = HashMap::new();
            for (region, ids) in &sets {
                for id in ids {
                    if let Some(other) = seen.insert(*id, *region) {
                        violations += 1;
                        tracing::error!(npc = id, region, other, "NPC held by two live regions");
                    }
                }
                let outside = ids.difference(&owned_rows[region]).count() as u64;
                if outside > 0 {
                    violations += outside;
                    tracing::error!(region, outside, "a region holds NPCs its rows don't name");
                }
            }
            for ((region, ids), (_, ghosts)) in sets.iter().zip(&ghost_sets) {
                let inside = ghosts.iter().filter(|g| ids.contains(g)).count() as u64;
                if inside > 0 {
                    ghost_violations += inside;
                    tracing::error!(region, inside, "a region shows its own NPCs as ghosts");
                }
                ghosts_max = ghosts_max.max(ghosts.len() as u64);
                ghosts_now[*region as usize] = ghosts.len() as u64;
            }
            for p in &mut procs {
                p.send("go");
            }
        }
    }

    // The end: stop ticking everywhere, let every hand-off land, then adopt and report.
    if let Some((mut z, thawed)) = zombie.take() {
        if !thawed {
            signal(z.child.id(), "-CONT")?;
        }
        let until = Instant::now() + Duration::from_secs(15);
        zombie_fenced = Some(loop {
            if let Some(status) = z.child.try_wait()? {
                break status.code() == Some(i32::from(EXIT_FENCED));
            }
            if Instant::now() > until {
                tracing::error!(region = z.region, "the thawed zombie did not stop; killing it");
                let _ = z.child.kill();
                let _ = z.child.wait();
                break false;
            }
            std::thread::sleep(Duration::from_millis(20));
        });
    }
    for p in &mut procs {
        if let Some(status) = p.child.try_wait()? {
            tracing::warn!(region = p.region, %status, "region process died; restarting");
            *p = sup.spawn(p.region)?;
            restarts += 1;
        }
        p.send("stop");
    }
    for p in &procs {
        let inst = p.instance;
        sup.take(Duration::from_secs(30), |l| l.instance == inst && l.msg.get("drained").is_some())
            .with_context(|| format!("region {} did not drain", p.region))?;
    }
    for p in &mut procs {
        p.send("finish");
    }
    let mut finals: BTreeMap<u32, Value> = BTreeMap::new();
    for p in &procs {
        let inst = p.instance;
        let line = sup
            .take(Duration::from_secs(60), |l| l.instance == inst && l.msg.get("final").is_some())
            .with_context(|| format!("region {} did not finish", p.region))?;
        finals.insert(p.region, line.msg);
    }
    for p in &mut procs {
        p.child.wait()?;
    }
    sup.pump(Duration::from_millis(10));

    let mut holders: HashMap<u64, u32> = HashMap::new();
    let mut duplicated = 0u64;
    let mut rows_equal = true;
    for msg in finals.values() {
        rows_equal &= msg["rows_equal_world"].as_bool() == Some(true);
        for id in msg["ids"].as_array().into_iter().flatten().filter_map(Value::as_u64) {
            *holders.entry(id).or_default() += 1;
        }
    }
    for n in holders.values() {
        if *n > 1 {
            duplicated += 1;
        }
    }
    let present = (1..=args.npcs).filter(|id| holders.contains_key(id)).count() as u64;
    let strays = holders.keys().filter(|id| !(1..=args.npcs).contains(*id)).count() as u64;
    let summary_db = rt.block_on(admin.summary())?;

    let mut tick: Vec<Histogram<u64>> = (0..regions)
        .map(|_| Histogram::new_with_bounds(1, 3_600_000_000_000, 2))
        .collect::<Result<_, _>>()?;
    let mut adopt = Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 2)?;
    let mut cpu = vec![0.0; regions as usize];
    let (mut unknown, mut anomalies) = (0u64, 0u64);
    let mut feed = [0u64; 4];
    let mut ticks = vec![0u64; regions as usize];
    let mut npc_ticks = 0u64;
    for (region, msg) in sup.reports.values() {
        let r = *region as usize;
        merge(&mut tick[r], &msg["tick_ns"]);
        merge(&mut adopt, &msg["adopt_us"]);
        cpu[r] += msg["cpu_s"].as_f64().unwrap_or(0.0);
        ticks[r] += msg["stats"]["ticks"].as_u64().unwrap_or(0);
        npc_ticks += msg["stats"]["npc_ticks"].as_u64().unwrap_or(0);
        unknown += msg["stats"]["unknown_commits"].as_u64().unwrap_or(0);
        anomalies += msg["stats"]["anomalies"].as_u64().unwrap_or(0);
        let keys =
            ["ghost_batches_published", "ghost_batches_received", "ghost_publish_errors", "ghosts_expired"];
        for (total, key) in feed.iter_mut().zip(keys) {
            *total += msg["stats"][key].as_u64().unwrap_or(0);
        }
    }
    let summary = Summary {
        regions: args.regions.clone(),
        npcs_start: args.npcs,
        npcs_end: present + strays,
        npcs_lost: args.npcs - present,
        npcs_duplicated: duplicated,
        handoffs: summary_db.handoffs,
        handoffs_per_s: summary_db.handoffs as f64 / args.seconds,
        region_restarts: restarts,
        max_handoff_ms: if adopt.is_empty() { 0.0 } else { adopt.max() as f64 / 1e3 },
        tick_ms_p99: tick.iter().map(|h| quantile(h, 0.99, 1e6)).collect(),
        fenced_writes_rejected: summary_db.fence_rejections,
        seconds: args.seconds,
        handoff_ms_p50: quantile(&adopt, 0.5, 1e3),
        handoff_ms_p99: quantile(&adopt, 0.99, 1e3),
        tick_ms_p50: tick.iter().map(|h| quantile(h, 0.5, 1e6)).collect(),
        cpu_s_per_region: cpu,
        owned_per_region: finals.values().map(|m| m["ids"].as_array().map_or(0, Vec::len) as u64).collect(),
        samples,
        sample_violations: violations,
        rows_equal_worlds: rows_equal,
        zombie_fenced,
        unknown_commits: unknown,
        anomalies,
        seed_ms,
        ghosts_per_region: ghosts_now,
        ghosts_max,
        ghost_violations,
        ghost_batches_published: feed[0],
        ghost_batches_received: feed[1],
        ghost_publish_errors: feed[2],
        ghosts_expired: feed[3],
        ticks_per_region: ticks,
        npc_ticks_per_s: npc_ticks as f64 / args.seconds,
        tick_per_region: finals.values().map(|m| m["stats"]["tick"].as_u64().unwrap_or(0)).collect(),
        resumed_tick_per_region: finals
            .values()
            .map(|m| m["stats"]["resumed_tick"].as_u64().unwrap_or(0))
            .collect(),
        restarts_per_region: (0..regions)
            .map(|r| sup.started.get(&r).copied().unwrap_or(0).saturating_sub(1))
            .collect(),
    };
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    if summary.npcs_lost > 0 || summary.npcs_duplicated > 0 || violations > 0 || ghost_violations > 0 {
        bail!(
            "the regions lost {} and duplicated {} NPCs ({violations} violations at samples, \
             {ghost_violations} ghosts of a region's own NPCs)",
            summary.npcs_lost,
            summary.npcs_duplicated
        );
    }
    Ok(())
}
