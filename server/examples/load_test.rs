//! A bounded load test of the game server on loopback, in two phases:
//!
//! 1. HTTP: `--clients` connections, each sending `GET /api/npcs/{id}` (a random id) as soon as
//!    the previous answer arrived (closed loop, one request in flight per connection), for
//!    `--seconds`. Reports requests per second, latency percentiles (hdrhistogram, microsecond
//!    resolution), errors, and what the tick achieved meanwhile (from `/api/performance`).
//! 2. WebSocket: `--ws-clients` connections, each subscribed to a random square area of
//!    `--ws-area` blocks, counting the delta frames it receives for `--ws-seconds`. Reports
//!    frames per second per client and how many got less than 90 % of the server's `ws_hz`.
//!    With `--ws-binary` the clients offer `terrarium.binary.v1` and get (and decode) binary
//!    frames instead of JSON; `bytes_per_frame` compares the two. `--ws-v2` offers
//!    `terrarium.binary.v2` first (binary frames with each NPC's role and status).
//!
//! ```text
//! cargo run --release -p terrarium-server --example load_test -- \
//!     --clients 200 --seconds 20 --npcs 100000 --tick-hz 20 --ws-clients 500 --json
//! ```
//!
//! By default it starts the server in this process, on a tokio runtime of its own
//! (`--server-threads` workers; the load generator has `--client-threads`), with memory
//! storage, and raises the per-IP connection limit and the rate limits (per client and per
//! key) so that one loopback address and one key can drive it (the limiter still runs on every request). With `--url` it drives a
//! server that is already running instead (`--api-key` or `TERRARIUM_SERVER__API_KEY`; that
//! server's limits apply). With `--json` the last line of stdout is one JSON object
//! (`Report`).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::Value;
use terrarium::engine::Engine;
use terrarium::{Config, StoragePipeline};
use terrarium_server::Server;
use terrarium_server::protocol::BinaryFrame;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[path = "../../examples/common/mod.rs"]
mod common;

/// NPCs of the world started in process when `--npcs` is not given.
const DEFAULT_NPCS: u64 = 100_000;

/// How long one request (connecting included) may take before the load test gives up on it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Load-tests the game server's HTTP API and WebSocket streams on loopback.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// HTTP connections, each with one request in flight (0 skips the HTTP phase).
    #[arg(long, default_value_t = 200)]
    clients: usize,
    /// Length of the HTTP phase, seconds.
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    /// NPCs in the world (ids 1 ..= npcs are requested). The size of the world started in
    /// process (default 100000); with `--url`, at most the server's NPC count, which is also the
    /// default there.
    #[arg(long)]
    npcs: Option<u64>,
    /// Ticks per second of the server started in process.
    #[arg(long = "tick-hz", default_value_t = 20)]
    tick_hz: u32,
    /// WebSocket clients (0 skips the WebSocket phase).
    #[arg(long = "ws-clients", default_value_t = 500)]
    ws_clients: usize,
    /// Length of the WebSocket phase, seconds (after every client subscribed).
    #[arg(long = "ws-seconds", default_value_t = 10.0)]
    ws_seconds: f64,
    /// Side of each WebSocket client's square area of interest, blocks.
    #[arg(long = "ws-area", default_value_t = 128.0)]
    ws_area: f32,
    /// WebSocket clients ask for binary position frames (`terrarium.binary.v1`) instead of JSON.
    #[arg(long = "ws-binary")]
    ws_binary: bool,
    /// WebSocket clients offer `terrarium.binary.v2` first (binary frames with role and status).
    #[arg(long = "ws-v2")]
    ws_v2: bool,
    /// Deltas per second per WebSocket client of the server started in process.
    #[arg(long = "ws-hz", default_value_t = 10)]
    ws_hz: u32,
    /// Worker threads of the in-process server's tokio runtime.
    #[arg(long = "server-threads", default_value_t = 2)]
    server_threads: usize,
    /// Worker threads of the load generator's tokio runtime.
    #[arg(long = "client-threads", default_value_t = 2)]
    client_threads: usize,
    /// Threads of the in-process engine's parallel systems.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Drive the server at this address (`http://127.0.0.1:8080`) instead of starting one.
    #[arg(long)]
    url: Option<String>,
    /// The API key of the server at `--url`.
    #[arg(long = "api-key", env = "TERRARIUM_SERVER__API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// World seed of the in-process server.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Print the report as one JSON object on the last line of stdout.
    #[arg(long)]
    json: bool,
}

/// The report (`--json`). Latencies in milliseconds.
#[derive(Debug, Default, Serialize)]
struct Report {
    npcs: u64,
    /// `in-process` or the `--url`.
    server: String,
    http: Option<HttpReport>,
    ws: Option<WsReport>,
}

/// The HTTP phase.
#[derive(Debug, Default, Serialize)]
struct HttpReport {
    clients: usize,
    seconds: f64,
    requests: u64,
    req_per_s: f64,
    /// Answers other than 200 and 429, and connections that failed (each reconnects).
    errors: u64,
    /// Answers 429: the server's rate limit refused the request (working as configured).
    rate_limited: u64,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    tick: TickReport,
}

/// What the tick achieved during a phase.
#[derive(Debug, Default, Serialize)]
struct TickReport {
    /// The server's `tick_hz`.
    tick_hz: u32,
    /// Ticks run during the phase over its wall-clock length.
    ticks_per_s: f64,
    /// Tick duration percentiles at the end of the phase (the server's latency window, which
    /// the in-process server sets to cover the phase).
    tick_p99_ms: f64,
    tick_max_ms: f64,
    /// Ticks the server skipped because it fell more than a second behind.
    ticks_skipped: u64,
}

/// The WebSocket phase.
#[derive(Debug, Default, Serialize)]
struct WsReport {
    clients: usize,
    /// Clients whose connection or subscription failed, or whose connection closed early.
    failed: usize,
    seconds: f64,
    /// The server's delta rate per client.
    ws_hz: f64,
    /// Delta frames per second per client.
    frames_per_s_min: f64,
    frames_per_s_p50: f64,
    frames_per_s_mean: f64,
    /// Clients under 90 % of `ws_hz` (0 means every client got its rate).
    clients_below_target: usize,
    /// Frames (and bytes of JSON, or of binary frames with `binary`) all clients received
    /// together.
    frames_total: u64,
    bytes_total: u64,
    /// The clients got binary frames (`--ws-binary`).
    binary: bool,
    /// `bytes_total / frames_total`: the payload of one delta frame.
    bytes_per_frame: f64,
    tick: TickReport,
}

fn main() -> ExitCode {
    common::main_with("load_test", run)
}

fn run(args: &Args) -> Result<()> {
    ensure!(args.seconds > 0.0 && args.ws_seconds > 0.0, "--seconds and --ws-seconds must be above 0");
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .thread_name("load-client")
        .enable_all()
        .build()
        .context("cannot start the client runtime")?;
    let mut report = Report::default();
    let (target, local) = match &args.url {
        Some(url) => {
            let key = args.api_key.clone().context("--url needs --api-key (or TERRARIUM_SERVER__API_KEY)")?;
            let addr = url.trim_start_matches("http://").trim_end_matches('/');
            let addr: SocketAddr =
                addr.parse().with_context(|| format!("--url {url}: want http://IP:PORT"))?;
            report.server.clone_from(url);
            (Target { addr, key }, None)
        }
        None => {
            let local = LocalServer::start(args, args.npcs.unwrap_or(DEFAULT_NPCS))?;
            report.server = "in-process".into();
            (local.target(), Some(local))
        }
    };
    let target = Arc::new(target);
    let npcs = match &args.url {
        None => args.npcs.unwrap_or(DEFAULT_NPCS),
        Some(url) => {
            let on_server = client_rt.block_on(target.npc_count())?;
            ensure!(on_server > 0, "the server at {url} has no NPCs to read");
            match args.npcs {
                Some(n) if n > on_server => {
                    eprintln!(
                        "load_test: the server has {on_server} NPCs; requesting ids 1 ..= {on_server}, not {n}"
                    );
                    on_server
                }
                Some(n) => n,
                None => on_server,
            }
        }
    };
    report.npcs = npcs;
    eprintln!("load_test: server at {}; waiting until NPC {npcs} is readable", target.addr);
    client_rt.block_on(target.wait_ready(npcs))?;

    if args.clients > 0 {
        let http = client_rt.block_on(http_phase(args, &target, npcs))?;
        eprintln!(
            "http: {} clients, {:.0} req/s, p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max {:.2} ms, {} errors, \
             {} rate-limited (429); tick {:.1}/s (of {} Hz), p99 {:.2} ms",
            http.clients,
            http.req_per_s,
            http.p50_ms,
            http.p95_ms,
            http.p99_ms,
            http.max_ms,
            http.errors,
            http.rate_limited,
            http.tick.ticks_per_s,
            http.tick.tick_hz,
            http.tick.tick_p99_ms
        );
        report.http = Some(http);
    }
    if args.ws_clients > 0 {
        let ws = client_rt.block_on(ws_phase(args, &target))?;
        eprintln!(
            "ws: {} clients ({} failed), {:.2} frames/s per client (min {:.2}, median {:.2}) of {} Hz; \
             {} below 90 %; {:.1} MB received ({}, {:.0} bytes a frame); tick {:.1}/s, p99 {:.2} ms",
            ws.clients,
            ws.failed,
            ws.frames_per_s_mean,
            ws.frames_per_s_min,
            ws.frames_per_s_p50,
            ws.ws_hz,
            ws.clients_below_target,
            ws.bytes_total as f64 / 1e6,
            if ws.binary { "binary" } else { "JSON" },
            ws.bytes_per_frame,
            ws.tick.ticks_per_s,
            ws.tick.tick_p99_ms
        );
        report.ws = Some(ws);
    }
    drop(client_rt);
    if let Some(local) = local {
        local.stop()?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

/// Where the load goes.
struct Target {
    addr: SocketAddr,
    key: String,
}

impl Target {
    /// `GET path` on a fresh connection; the status and the JSON body. Gives up after
    /// [`REQUEST_TIMEOUT`] (a frozen server accepts connections and never answers).
    async fn get_json(&self, path: &str) -> Result<(u16, Value)> {
        let call = async {
            let mut conn = Conn::open(self).await?;
            conn.get(self, path).await
        };
        let (status, body) = tokio::time::timeout(REQUEST_TIMEOUT, call).await.with_context(|| {
            format!("GET {path} got no answer from {} within {REQUEST_TIMEOUT:?}", self.addr)
        })??;
        Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
    }

    /// The server's live NPC count (`npcs` of `/api/performance`).
    async fn npc_count(&self) -> Result<u64> {
        let (status, p) = self.get_json("/api/performance").await?;
        ensure!(status != 401, "the server refused the API key");
        ensure!(status == 200, "GET /api/performance answered {status}");
        p["npcs"].as_u64().context("/api/performance has no `npcs`")
    }

    /// Waits (up to a minute) until NPC `last` can be read: the whole population is stored.
    /// Nothing listening at the address fails at once.
    async fn wait_ready(&self, last: u64) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.get_json(&format!("/api/npcs/{last}")).await {
                Ok((200, _)) => return Ok(()),
                Ok((401, _)) => bail!("the server refused the API key"),
                Err(e) if refused(&e) => bail!("nothing listens at {}: {e:#}", self.addr),
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context(format!("NPC {last} was not readable within a minute")));
                }
                _ if Instant::now() > deadline => bail!("NPC {last} was not readable within a minute"),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// The tick figures now: (ticks_total, tick_hz, p99 ms, max ms, skipped).
    async fn tick_figures(&self) -> Result<(u64, u32, f64, f64, u64)> {
        let (status, p) = self.get_json("/api/performance").await?;
        ensure!(status == 200, "GET /api/performance answered {status}");
        let skipped = p["ticks_skipped"].as_u64().unwrap_or(0);
        Ok((
            p["ticks_total"].as_u64().unwrap_or(0),
            p["tick_hz"].as_u64().unwrap_or(0) as u32,
            p["tick_latency"]["p99_ms"].as_f64().unwrap_or(0.0),
            p["tick_latency"]["max_ms"].as_f64().unwrap_or(0.0),
            skipped,
        ))
    }

    /// Runs `phase` and reports what the tick did during it.
    async fn measure_tick<T>(&self, phase: impl Future<Output = Result<T>>) -> Result<(T, TickReport)> {
        let (ticks0, _, _, _, skipped0) = self.tick_figures().await?;
        let started = Instant::now();
        let out = phase.await?;
        let elapsed = started.elapsed().as_secs_f64();
        let (ticks1, tick_hz, p99, max, skipped1) = self.tick_figures().await?;
        let tick = TickReport {
            tick_hz,
            ticks_per_s: (ticks1 - ticks0) as f64 / elapsed,
            tick_p99_ms: p99,
            tick_max_ms: max,
            ticks_skipped: skipped1 - skipped0,
        };
        Ok((out, tick))
    }
}

/// One HTTP/1.1 keep-alive connection (hyper's client connection, no pool).
struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
}

impl Conn {
    async fn open(target: &Target) -> Result<Self> {
        let stream = tokio::time::timeout(REQUEST_TIMEOUT, TcpStream::connect(target.addr))
            .await
            .with_context(|| format!("connecting to {} timed out", target.addr))?
            .with_context(|| format!("cannot connect to {}", target.addr))?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self { sender })
    }

    async fn get(&mut self, target: &Target, path: &str) -> Result<(u16, Bytes)> {
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, "loopback")
            .header("x-api-key", &target.key)
            .body(Empty::new())?;
        self.sender.ready().await?;
        let res = self.sender.send_request(req).await?;
        let status = res.status().as_u16();
        let body = res.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

/// Whether `e` is a refused TCP connection (nothing listens there).
fn refused(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
    })
}

/// What one HTTP client measured.
struct ClientTally {
    latency_us: Histogram<u64>,
    errors: u64,
    rate_limited: u64,
}

async fn http_phase(args: &Args, target: &Arc<Target>, npcs: u64) -> Result<HttpReport> {
    let run_for = Duration::from_secs_f64(args.seconds);
    let phase = async {
        let start = Instant::now();
        let mut tasks = Vec::with_capacity(args.clients);
        for i in 0..args.clients {
            let target = Arc::clone(target);
            tasks.push(tokio::spawn(
                async move { http_client(&target, npcs, i as u64, start + run_for).await },
            ));
        }
        let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("static bounds are valid");
        let (mut errors, mut rate_limited) = (0, 0);
        for t in tasks {
            let tally = t.await.context("an HTTP client panicked")??;
            total.add(&tally.latency_us).context("histograms share their bounds")?;
            errors += tally.errors;
            rate_limited += tally.rate_limited;
        }
        Ok((total, errors, rate_limited, start.elapsed()))
    };
    let ((h, errors, rate_limited, elapsed), tick) = target.measure_tick(phase).await?;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
    Ok(HttpReport {
        clients: args.clients,
        seconds: elapsed.as_secs_f64(),
        requests: h.len(),
        req_per_s: h.len() as f64 / elapsed.as_secs_f64(),
        errors,
        rate_limited,
        p50_ms: ms(0.5),
        p95_ms: ms(0.95),
        p99_ms: ms(0.99),
        max_ms: h.max() as f64 / 1e3,
        tick,
    })
}

/// One closed-loop client: a request, its answer, the next, until `until`.
async fn http_client(target: &Target, npcs: u64, seed: u64, until: Instant) -> Result<ClientTally> {
    let mut tally = ClientTally {
        latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("static bounds are valid"),
        errors: 0,
        rate_limited: 0,
    };
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut conn = None;
    let mut path = String::with_capacity(32);
    while Instant::now() < until {
        let c = match &mut conn {
            Some(c) => c,
            None => match Conn::open(target).await {
                Ok(c) => conn.insert(c),
                Err(_) => {
                    tally.errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        path.clear();
        std::fmt::Write::write_fmt(&mut path, format_args!("/api/npcs/{}", rng.u64(1..=npcs)))?;
        let sent = Instant::now();
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, c.get(target, &path))
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {REQUEST_TIMEOUT:?}")));
        match answer {
            Ok((200, _)) => {
                let us = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                tally.latency_us.saturating_record(us.max(1));
            }
            Ok((429, _)) => tally.rate_limited += 1,
            Ok(_) => tally.errors += 1,
            Err(_) => {
                tally.errors += 1;
                conn = None;
            }
        }
    }
    Ok(tally)
}

/// What one WebSocket client counted: delta frames and bytes after its first reset.
struct WsTally {
    frames: u64,
    bytes: u64,
    seconds: f64,
}

async fn ws_phase(args: &Args, target: &Arc<Target>) -> Result<WsReport> {
    // Connect and subscribe everyone first, then count together.
    let hello = ws_hello(target).await?;
    let ws_hz = hello["ws_hz"].as_f64().unwrap_or(0.0);
    let world = hello_world(&hello);
    let mut rng = fastrand::Rng::with_seed(args.seed);
    let side = args.ws_area.min(world.1[0] - world.0[0]).min(world.1[1] - world.0[1]);
    let (go_tx, go_rx) = tokio::sync::watch::channel(false);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<bool>(args.ws_clients);
    let listen = Duration::from_secs_f64(args.ws_seconds);
    let mut tasks = Vec::with_capacity(args.ws_clients);
    for _ in 0..args.ws_clients {
        let x = world.0[0] + rng.f32() * (world.1[0] - world.0[0] - side);
        let z = world.0[1] + rng.f32() * (world.1[1] - world.0[1] - side);
        let sub =
            serde_json::json!({"type": "subscribe", "min": [x, z], "max": [x + side, z + side]}).to_string();
        let (target, go, ready) = (Arc::clone(target), go_rx.clone(), ready_tx.clone());
        let offer = if args.ws_v2 {
            Some("terrarium.binary.v2, terrarium.binary.v1, terrarium.v1")
        } else {
            args.ws_binary.then_some("terrarium.binary.v1, terrarium.v1")
        };
        tasks.push(tokio::spawn(async move { ws_client(&target, sub, offer, go, ready, listen).await }));
    }
    drop(ready_tx);
    for _ in 0..args.ws_clients {
        let _ = ready_rx.recv().await;
    }
    let phase = async {
        let _ = go_tx.send(true);
        let mut tallies = Vec::with_capacity(tasks.len());
        for t in tasks {
            if let Some(tally) = t.await.context("a WebSocket client panicked")? {
                tallies.push(tally);
            }
        }
        Ok(tallies)
    };
    let (tallies, tick) = target.measure_tick(phase).await?;
    let failed = args.ws_clients - tallies.len();
    let mut rates: Vec<f64> = tallies.iter().map(|t| t.frames as f64 / t.seconds).collect();
    rates.sort_by(f64::total_cmp);
    let n = rates.len().max(1) as f64;
    Ok(WsReport {
        clients: args.ws_clients,
        failed,
        seconds: args.ws_seconds,
        ws_hz,
        frames_per_s_min: rates.first().copied().unwrap_or(0.0),
        frames_per_s_p50: rates.get(rates.len() / 2).copied().unwrap_or(0.0),
        frames_per_s_mean: rates.iter().sum::<f64>() / n,
        clients_below_target: rates.iter().filter(|&&r| r < 0.9 * ws_hz).count() + failed,
        frames_total: tallies.iter().map(|t| t.frames).sum(),
        bytes_total: tallies.iter().map(|t| t.bytes).sum(),
        binary: args.ws_binary || args.ws_v2,
        bytes_per_frame: tallies.iter().map(|t| t.bytes).sum::<u64>() as f64
            / tallies.iter().map(|t| t.frames).sum::<u64>().max(1) as f64,
        tick,
    })
}

/// The world's ground rectangle (`[x, z]` min and max), from a `/ws` hello.
fn hello_world(hello: &Value) -> ([f32; 2], [f32; 2]) {
    let f = |v: &Value| v.as_f64().unwrap_or(0.0) as f32;
    let w = &hello["world"];
    ([f(&w["min"][0]), f(&w["min"][2])], [f(&w["max"][0]), f(&w["max"][2])])
}

/// The first message of a `/ws` connection.
async fn ws_hello(target: &Target) -> Result<Value> {
    let url = format!("ws://{}/ws?api_key={}", target.addr, target.key);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.context("WebSocket connect")?;
    let hello = ws.next().await.context("no hello")??.into_text()?;
    let _ = ws.close(None).await;
    Ok(serde_json::from_str(&hello)?)
}

/// One WebSocket client: connects, subscribes, says it is ready, waits for the go, then counts
/// the delta frames that arrive in `listen` (after the reset of its area).
async fn ws_client(
    target: &Target,
    subscribe: String,
    offer: Option<&'static str>,
    mut go: tokio::sync::watch::Receiver<bool>,
    ready: tokio::sync::mpsc::Sender<bool>,
    listen: Duration,
) -> Option<WsTally> {
    let url = format!("ws://{}/ws?api_key={}", target.addr, target.key);
    let Ok(mut req) = url.into_client_request() else {
        let _ = ready.send(false).await;
        return None;
    };
    if let Some(offer) = offer {
        req.headers_mut().insert(
            "sec-websocket-protocol",
            tokio_tungstenite::tungstenite::http::HeaderValue::from_static(offer),
        );
    }
    let Ok((mut ws, _)) = tokio_tungstenite::connect_async(req).await else {
        let _ = ready.send(false).await;
        return None;
    };
    // Ready once the server confirmed the subscription (it answers an error for a bad area).
    let mut subscribed = ws.send(Message::text(subscribe)).await.is_ok();
    while subscribed {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => match serde_json::from_str::<Value>(t.as_str()) {
                Ok(v) if v["type"] == "subscribed" => break,
                Ok(v) if v["type"] == "error" => {
                    eprintln!("load_test: subscription refused: {}", v["error"]);
                    subscribed = false;
                }
                _ => {}
            },
            Some(Ok(_)) => {}
            _ => subscribed = false,
        }
    }
    let _ = ready.send(subscribed).await;
    if !subscribed {
        return None;
    }
    // Frames before the go are read (so the server never sees a slow client) and not counted.
    loop {
        tokio::select! {
            r = go.wait_for(|go| *go) => { if r.is_err() { return None; } break; }
            m = ws.next() => if !matches!(m, Some(Ok(_))) { return None; },
        }
    }
    let started = tokio::time::Instant::now();
    let end = started + listen;
    let mut tally = WsTally { frames: 0, bytes: 0, seconds: listen.as_secs_f64() };
    loop {
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    if t.as_str().starts_with(r#"{"type":"delta""#) {
                        tally.frames += 1;
                        tally.bytes += t.len() as u64;
                    }
                }
                // A binary delta, read as a client would (a bad one fails the client).
                Some(Ok(Message::Binary(b))) => match BinaryFrame::decode(&b) {
                    Ok(f) if !f.reset => {
                        tally.frames += 1;
                        tally.bytes += b.len() as u64;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("load_test: {e}");
                        return None;
                    }
                },
                Some(Ok(_)) => {}
                _ => {
                    tally.seconds = started.elapsed().as_secs_f64().max(1e-3);
                    break;
                }
            },
            () = tokio::time::sleep_until(end) => break,
        }
    }
    let _ = ws.close(None).await;
    Some(tally)
}

/// The server started in this process.
struct LocalServer {
    runtime: tokio::runtime::Runtime,
    server: Option<Server>,
    addr: SocketAddr,
    key: String,
}

impl LocalServer {
    fn start(args: &Args, npcs: u64) -> Result<Self> {
        let key = "load-test-key-0123456789abcdefghijklmnop".to_string();
        let mut cfg = Config::default();
        cfg.engine.seed = args.seed;
        cfg.engine.tick_hz = args.tick_hz;
        cfg.engine.threads = args.threads;
        cfg.engine.validate()?;
        let s = &mut cfg.server;
        s.api_key.clone_from(&key);
        s.port = 0;
        s.ws_hz = args.ws_hz;
        // One loopback address drives every connection; the limiter still runs per request.
        s.max_connections = (args.clients + args.ws_clients + 64).max(s.max_connections);
        s.max_connections_per_ip = s.max_connections;
        s.max_ws_connections = s.max_connections;
        s.rate_limit_per_s = 1_000_000;
        s.rate_burst = 1_000_000;
        s.key_rate_limit_per_s = 1_000_000;
        s.key_rate_burst = 1_000_000;
        // Tick percentiles over the last half phase to one phase.
        s.perf_window_s = (args.seconds.min(args.ws_seconds) / 2.0).clamp(0.1, 3600.0);
        cfg.server.validate()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.server_threads.max(1))
            .thread_name("terrarium-http")
            .enable_all()
            .build()
            .context("cannot start the server runtime")?;
        let storage = StoragePipeline::start_on(runtime.handle(), &cfg).context("cannot start storage")?;
        let mut engine =
            Engine::builder(cfg.engine.clone()).add_plugin(terrarium::systems::core_plugin).build()?;
        let spawned = Instant::now();
        terrarium::systems::wander::spawn_wanderers(&mut engine, npcs);
        eprintln!("load_test: spawned {npcs} NPCs in {:.0} ms", spawned.elapsed().as_secs_f64() * 1e3);
        let server = runtime.block_on(Server::start(&cfg, engine, Some(storage)))?;
        let addr = server.local_addr();
        Ok(Self { runtime, server: Some(server), addr, key })
    }

    fn target(&self) -> Target {
        Target { addr: self.addr, key: self.key.clone() }
    }

    fn stop(mut self) -> Result<()> {
        if let Some(server) = self.server.take() {
            let end = self.runtime.block_on(server.shutdown())?;
            let dropped = end.write_behind.map_or(0, |r| r.stats.writes_dropped);
            ensure!(dropped == 0, "the server dropped {dropped} rows at shutdown");
        }
        Ok(())
    }
}
