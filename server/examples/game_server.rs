//! A game server that links the engine: the world ticks on its own thread at `--tick-hz`, an
//! HTTP API and WebSocket position streams serve it (see `terrarium_server` for the routes and
//! the WebSocket protocol).
//!
//! ```text
//! export TERRARIUM_SERVER__API_KEY=$(openssl rand -hex 32)   # at least 32 bytes
//! cargo run --release -p terrarium-server --example game_server -- \
//!     --port 8080 --npcs 100000 --tick-hz 20
//! curl -H "x-api-key: $TERRARIUM_SERVER__API_KEY" 'http://127.0.0.1:8080/api/npcs?status=moving&limit=5'
//! ```
//!
//! The first line on stdout is `listening on http://ADDR`. SIGINT or SIGTERM stops it
//! gracefully: requests in flight finish, WebSockets close, the last batch is cut and the
//! write-behind drained, a final checkpoint stored; then one summary line (JSON with `--json`).
//!
//! Storage defaults to `embedded` (`./terrarium-data`): a server survives its own restart. A
//! start on a store that holds a world resumes it (`--npcs`/`--agents` are then ignored);
//! `--new-world --wipe` starts over.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use serde::Serialize;
use terrarium::engine::Engine;
use terrarium::resume::ResumeReport;
use terrarium::{Config, StoragePipeline};
use terrarium_server::Server;

#[path = "../../examples/common/mod.rs"]
mod common;
#[path = "../../examples/common/flags.rs"]
mod flags;

use flags::{StorageFlags, StorageKind, WorldFlags};

/// What `--help` says after the flags: the `[server]` settings against hostile clients.
const SERVER_SETTINGS: &str = "\
Every [server] setting can be set in the configuration file (--config) or the environment as
TERRARIUM_SERVER__<NAME>. Keys and limits against hostile clients (defaults in brackets):
  api_key                read-write key, >= 32 printable bytes, required (use the environment)
  read_api_key           optional read-only key: GET routes and /ws [none]
  header_read_timeout_s  to send a request's header; also ends an idle keep-alive [10]
  idle_timeout_s         no byte either way closes an HTTP connection [60]
  request_timeout_s      one request, header to response, then 503 [30]
  tcp_keepalive_s        TCP keepalive idle time, 0 off [60]
  max_connections, max_connections_per_ip   open connections, in all and per client [4096, 64]
  rate_limit_per_s, rate_burst   requests + WebSocket messages per client (IPv6 per /64) [200, 400]
  rate_limit_clients     clients whose buckets are kept (bounded map) [65536]
  key_rate_limit_per_s, key_rate_burst   requests per API key, all its clients together [5000, 10000]
  ipv6_prefix_bits       an IPv6 client is this prefix [64]
  trusted_proxies        proxies whose X-Forwarded-For is believed (addresses, CIDR) [none]
  max_pending_refusals   refusals answered 503; past it closed unanswered [64]
  max_npcs               spawns over it answer 409 [1000000]
  spawn_rate_per_s, spawn_burst   spawns per API key (429 over it) [100, 1000]
  max_ws_connections     open WebSockets [1024]
  ws_max_buffered_bytes  frames cut and not yet sent, all clients [268435456]
  ws_reset_interval_ms   shortest time between two resets to one client [1000]
  ws_ping_interval_s, ws_idle_timeout_s   pings; silence that closes a WebSocket [15, 45]
A browser passes its key to /ws as the sub-protocols terrarium.v1 and terrarium.key.<KEY>.
The OpenAPI document is served at /api/openapi.json.";

/// Serves a Terrarium world over HTTP and WebSocket.
#[derive(Parser, Debug)]
#[command(version, about, after_help = SERVER_SETTINGS)]
struct Args {
    /// TCP port (0 picks a free one). Default: `server.port` of the configuration (8080).
    #[arg(long)]
    port: Option<u16>,
    /// Address to listen on. Default: `server.bind` (127.0.0.1).
    #[arg(long)]
    bind: Option<String>,
    /// The read-write API key clients send in `x-api-key` (at least 32 bytes). Prefer the
    /// environment (`TERRARIUM_SERVER__API_KEY`): command lines are visible to other users.
    #[arg(long = "api-key")]
    api_key: Option<String>,
    /// Plain (wandering) NPCs to spawn (ignored when a stored world is resumed).
    #[arg(long, default_value_t = 10_000)]
    npcs: u64,
    /// Mining agents to spawn, in a voxel world generated for them (ignored when a stored
    /// world is resumed).
    #[arg(long, default_value_t = 0)]
    agents: u64,
    #[command(flatten)]
    world: WorldFlags,
    /// Where NPCs are stored (`none`: no batching, and the NPC reads answer 503).
    #[command(flatten)]
    storage: StorageFlags,
    /// Position deltas per second per WebSocket client.
    #[arg(long = "ws-hz")]
    ws_hz: Option<u32>,
    /// Open connections in all.
    #[arg(long = "max-connections")]
    max_connections: Option<usize>,
    /// Open connections per client IP.
    #[arg(long = "max-connections-per-ip")]
    max_connections_per_ip: Option<usize>,
    /// Messages per second per client, all its connections together (HTTP requests,
    /// WebSocket messages); the burst is twice that.
    #[arg(long = "rate-limit")]
    rate_limit: Option<u32>,
    /// Most NPCs in the world; spawns over it answer 409 (`server.max_npcs`).
    #[arg(long = "max-npcs")]
    max_npcs: Option<u64>,
    /// Seconds a client has to send a request's header (`server.header_read_timeout_s`).
    #[arg(long = "header-read-timeout")]
    header_read_timeout: Option<u64>,
    /// Print the shutdown summary as one JSON object on the last line of stdout.
    #[arg(long)]
    json: bool,
}

/// The summary printed at shutdown.
#[derive(Serialize)]
struct Summary {
    addr: String,
    storage: StorageKind,
    ticks: u64,
    npcs: u64,
    ticks_per_sec: f64,
    tick_ms_p99: f64,
    http_requests: u64,
    ws_connections: u64,
    batches_submitted: u64,
    batches_written: u64,
    writes_dropped: u64,
    left_in_outbox: u64,
    /// True when the world was resumed from the store.
    resumed: bool,
    /// The tick it resumed at (0 when not resumed).
    resumed_tick: u64,
    /// NPCs (agents included) it resumed with.
    resumed_npcs: u64,
    /// Agents it resumed with.
    resumed_agents: u64,
    /// Milliseconds from asking the store to a world ready to tick (0 when not resumed).
    resume_ms: f64,
}

fn main() -> ExitCode {
    // Before any thread starts: big buffers (a million positions or records) go back to the
    // system when freed instead of staying in glibc's heap (`os::map_big_blocks`).
    terrarium::persistence::os::map_big_blocks();
    common::main_with("game_server", |args: &Args| {
        let mut cfg = config(args)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("terrarium-http")
            .build()
            .context("cannot start the tokio runtime")?;
        // Listen before anything else: a SIGTERM during a long resume, or right after the
        // address is printed, then stops the server cleanly instead of killing it.
        let signals = {
            let _in_runtime = runtime.enter();
            Signals::listen()?
        };
        // Storage I/O shares the HTTP runtime: on a small machine, fewer threads than cores
        // matter more than isolation (the write-behind's work per batch is short).
        let mut flags = args.storage.clone();
        flags.default_kind = StorageKind::Embedded;
        let storage = flags.start(&mut cfg, Some(runtime.handle()))?;
        // Outside the runtime: reading the stored world blocks until it is read.
        let (engine, resumed) = world(args, &flags, &cfg, storage.as_ref())?;
        runtime.block_on(run(args, &flags, &cfg, storage, engine, resumed, signals))
    })
}

/// The stored world, resumed, or a new one spawned from the flags.
fn world(
    args: &Args,
    flags: &StorageFlags,
    cfg: &Config,
    storage: Option<&StoragePipeline>,
) -> Result<(Engine, Option<ResumeReport>)> {
    let started = std::time::Instant::now();
    let mut builder = Engine::builder(cfg.engine.clone()).add_plugin(terrarium::systems::core_plugin);
    let point = match storage {
        Some(p) if flags.durable() => p.resume_point().context("cannot read the stored world")?,
        _ => None,
    };
    if args.agents > 0 || point.is_some() {
        builder = builder.add_plugin(terrarium::systems::agents::plugin);
    }
    if let Some(point) = point {
        let (mut engine, mut report) =
            terrarium::resume::resume(builder, point).context("cannot resume the stored world")?;
        report.ms = started.elapsed().as_secs_f64() * 1e3;
        eprintln!(
            "game_server: resumed the stored world at tick {} ({} NPCs, {} agents) in {:.1} ms; --npcs and --agents are ignored",
            report.tick, report.npcs, report.agents, report.ms
        );
        if let Some(p) = storage.filter(|_| report.rows_behind) {
            // Killed while the new world's population was being stored: store it whole again.
            store_new_world(p, &mut engine)?;
        }
        return Ok((engine, Some(report)));
    }
    let mut engine = builder.build()?;
    terrarium::systems::wander::spawn_wanderers(&mut engine, args.npcs);
    if args.agents > 0 {
        let seed = engine.config().seed;
        terrarium::systems::agents::spawn_colony(&mut engine, args.agents, seed)
            .context("cannot set up the mining agents")?;
    }
    if let Some(p) = storage.filter(|_| flags.durable()) {
        store_new_world(p, &mut engine)?;
    }
    Ok((engine, None))
}

/// Stores a new world whole before its first tick (its first checkpoint, then its population):
/// a kill from here on leaves a world the next start resumes, and the ticks never carry the
/// population's first write.
fn store_new_world(p: &StoragePipeline, engine: &mut Engine) -> Result<()> {
    eprintln!("game_server: storing the new world ({} NPCs) before its first tick", engine.npc_count());
    let t = std::time::Instant::now();
    let s = p.checkpoint_new_world(engine).context("cannot store the new world")?;
    eprintln!(
        "game_server: stored in {:.0} ms (checkpoint {:.0} ms, {} rows {:.0} ms)",
        t.elapsed().as_secs_f64() * 1e3,
        s.checkpoint_ms,
        s.rows,
        s.rows_ms
    );
    Ok(())
}

async fn run(
    args: &Args,
    flags: &StorageFlags,
    cfg: &Config,
    storage: Option<StoragePipeline>,
    engine: Engine,
    resumed: Option<ResumeReport>,
    signals: Signals,
) -> Result<()> {
    let server = Server::start(cfg, engine, storage).await?;
    let addr = server.local_addr();
    println!("listening on http://{addr}");

    signals.wait().await;
    eprintln!("game_server: stopping (draining storage)");
    let figures = server.figures();
    let end = server.shutdown().await?;
    let wb = end.write_behind.unwrap_or_default();
    let summary = Summary {
        addr: addr.to_string(),
        storage: flags.kind(),
        ticks: end.engine.clock().tick,
        npcs: end.engine.npc_count() as u64,
        // The average over the whole run, as in `headless` (the snapshot's figure is the window's).
        ticks_per_sec: if end.performance.uptime_s > 0.0 {
            end.performance.ticks_total as f64 / end.performance.uptime_s
        } else {
            0.0
        },
        tick_ms_p99: end.performance.tick_latency.p99_ms,
        http_requests: figures.http_requests,
        ws_connections: figures.ws_accepted,
        batches_submitted: wb.stats.batches_submitted,
        batches_written: wb.stats.batches_written,
        writes_dropped: wb.stats.writes_dropped,
        left_in_outbox: wb.left_in_outbox,
        resumed: resumed.is_some(),
        resumed_tick: resumed.map_or(0, |r| r.tick),
        resumed_npcs: resumed.map_or(0, |r| r.npcs),
        resumed_agents: resumed.map_or(0, |r| r.agents),
        resume_ms: resumed.map_or(0.0, |r| r.ms),
    };
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!(
            "stopped after {} ticks ({:.1}/s, p99 {:.2} ms); {} requests, {} websockets; \
             {} of {} batches written, {} rows dropped, {} left in the outbox",
            summary.ticks,
            summary.ticks_per_sec,
            summary.tick_ms_p99,
            summary.http_requests,
            summary.ws_connections,
            summary.batches_written,
            summary.batches_submitted,
            summary.writes_dropped,
            summary.left_in_outbox
        );
    }
    Ok(())
}

/// The configuration: file or defaults, the environment over it, flags over both.
fn config(args: &Args) -> Result<Config> {
    let mut cfg = args.world.load()?;
    let s = &mut cfg.server;
    if let Some(port) = args.port {
        s.port = port;
    }
    if let Some(bind) = &args.bind {
        s.bind.clone_from(bind);
    }
    if let Some(key) = &args.api_key {
        s.api_key.clone_from(key);
    }
    if let Some(hz) = args.ws_hz {
        s.ws_hz = hz;
    }
    if let Some(n) = args.max_connections {
        s.max_connections = n;
    }
    if let Some(n) = args.max_connections_per_ip {
        s.max_connections_per_ip = n;
    }
    if let Some(n) = args.max_npcs {
        s.max_npcs = n;
    }
    if let Some(t) = args.header_read_timeout {
        s.header_read_timeout_s = t;
    }
    if let Some(r) = args.rate_limit {
        s.rate_limit_per_s = r;
        // The burst follows the rate (two seconds' worth), within the burst's own range.
        s.rate_burst = r.saturating_mul(2).min(terrarium::config::ServerConfig::MAX_RATE).max(r);
    }
    cfg.server.validate()?;
    Ok(cfg)
}

/// SIGINT (Ctrl-C) and SIGTERM, listened for from start-up on.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    /// Starts listening (inside a tokio runtime): from now on either signal is kept for
    /// [`Signals::wait`] instead of ending the process.
    fn listen() -> Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
        })
    }

    /// Until SIGINT or SIGTERM arrives (or has arrived since [`Signals::listen`]).
    async fn wait(mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}
