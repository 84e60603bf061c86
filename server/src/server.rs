//! [`Server`]: starting the tick, hub and HTTP tasks, and stopping them in order.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use terrarium::engine::{CommandSender, ConfigError, Engine, WorldBounds};
use terrarium::persistence::{ShutdownReport, StorageStack, WriteBehindHandle};
use terrarium::systems::batching;
use tokio::sync::watch;

use terrarium::StoragePipeline;
use terrarium::config::{Config, ServerConfig};
use terrarium::perf::prometheus::PrometheusExporter;
use terrarium::perf::{PerfConfig, Performance, PerformanceSnapshot, publish_now};

use crate::error::ServerError;
use crate::guard::{ConnLimits, DoorConfig, LimitedListener};
use crate::keys::Keys;
use crate::rate::{ClientBuckets, KeyBuckets, RateLimit, TrustedProxies};
use crate::spawns::Spawns;
use crate::stats::{ServerFigures, ServerStats};
use crate::stream::{Clients, HubThread, Inbox};
use crate::tick::{Job, TickStatus, TickThread};

/// What the server's tasks share.
pub(crate) struct AppState {
    pub(crate) config: ServerConfig,
    pub(crate) keys: Keys,
    pub(crate) commands: CommandSender,
    pub(crate) storage: Option<Arc<StorageStack>>,
    pub(crate) write_behind: Option<WriteBehindHandle>,
    pub(crate) perf: Performance,
    pub(crate) exporter: PrometheusExporter,
    pub(crate) stats: Arc<ServerStats>,
    pub(crate) limits: Arc<ConnLimits>,
    pub(crate) clients: Arc<Clients>,
    pub(crate) bounds: WorldBounds,
    pub(crate) tick_hz: u32,
    /// Ticks between two published views (the WebSocket rate is `tick_hz / view_every`).
    pub(crate) view_every: u64,
    pub(crate) tick: Arc<TickStatus>,
    /// Jobs for the tick thread (run between two ticks).
    pub(crate) jobs: mpsc::Sender<Job>,
    /// The population cap, the spawn budget, the ids spawned lately.
    pub(crate) spawns: Spawns,
    /// Token buckets per client (HTTP requests and WebSocket messages).
    pub(crate) buckets: ClientBuckets,
    /// Token buckets per API key (HTTP requests, all clients together).
    pub(crate) key_buckets: KeyBuckets,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub(crate) proxies: TrustedProxies,
    /// One permit per open WebSocket (`max_ws_connections`).
    pub(crate) ws_slots: Arc<tokio::sync::Semaphore>,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) ws_options: yawc::Options,
}

/// A running game server. Stop it with [`Server::shutdown`]; dropping it stops the threads
/// without draining storage.
pub struct Server {
    addr: SocketAddr,
    state: Arc<AppState>,
    shutdown: watch::Sender<bool>,
    serve: Option<tokio::task::JoinHandle<()>>,
    tick: Option<TickThread>,
    tick_stop: Arc<AtomicBool>,
    jobs: mpsc::Sender<Job>,
    hub: Option<HubThread>,
    inbox: Arc<Inbox>,
    storage: Option<StoragePipeline>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("addr", &self.addr).finish_non_exhaustive()
    }
}

/// What [`Server::shutdown`] hands back.
#[non_exhaustive]
pub struct ShutdownSummary {
    /// The engine after its last tick (the batcher's last batch cut and handed over).
    pub engine: Engine,
    /// The write-behind's final report (`None` without storage).
    pub write_behind: Option<ShutdownReport>,
    /// The storage stack, for reading what was written (`None` without storage).
    pub storage: Option<Arc<StorageStack>>,
    /// The performance figures at the end.
    pub performance: PerformanceSnapshot,
}

impl std::fmt::Debug for ShutdownSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShutdownSummary")
            .field("tick", &self.engine.clock().tick)
            .field("write_behind", &self.write_behind)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Starts serving `engine` (NPCs spawned; the server adds batching into `storage` unless
    /// the engine has it already, the performance recorder and the view publisher). Listens
    /// on `config.server.bind:port`. Call it inside a multi-threaded tokio runtime. `storage`
    /// may run on that runtime ([`StoragePipeline::start_on`]) or on its own
    /// ([`StoragePipeline::start`]); without it, batching is off and NPC reads answer 503.
    ///
    /// # Errors
    /// [`ServerError::MissingApiKey`], [`ServerError::Config`] for a bad `[server]` setting,
    /// [`ServerError::Bind`] when the port can't be opened, [`ServerError::Thread`].
    pub async fn start(
        config: &Config,
        mut engine: Engine,
        storage: Option<StoragePipeline>,
    ) -> Result<Self, ServerError> {
        let sc = config.server.clone();
        sc.validate()?;
        if sc.api_key.is_empty() {
            return Err(ServerError::MissingApiKey);
        }
        let keys = Keys::new(&sc)?;
        let tick_hz = engine.config().tick_hz;
        terrarium::engine::in_range("server.ws_hz", sc.ws_hz, &(1..=tick_hz))
            .map_err(terrarium::engine::ConfigError::from)?;
        let view_every = u64::from(tick_hz.div_ceil(sc.ws_hz));

        let perf = Performance::with_config(PerfConfig { window_s: sc.perf_window_s });
        perf.plugin()(&mut engine);
        if let Some(pipeline) = &storage {
            // `checkpoint_new_world` adds it to a new world it stores before serving.
            if !batching::is_registered(&engine) {
                pipeline.batching_plugin()(&mut engine);
            }
            perf.attach_pipeline(pipeline);
        }
        let inbox = Arc::new(Inbox::default());
        crate::stream::register(&mut engine, Arc::clone(&inbox), view_every);
        let bounds = *engine.world().resource::<WorldBounds>();
        let commands = engine.command_sender();

        let ip = sc.bind.parse().map_err(|_| ConfigError::Invalid {
            key: "server.bind".into(),
            reason: format!("{:?} is not an IP address", sc.bind),
        })?;
        let addr = SocketAddr::new(ip, sc.port);
        let tcp =
            tokio::net::TcpListener::bind(addr).await.map_err(|source| ServerError::Bind { addr, source })?;
        let addr = tcp.local_addr().map_err(|source| ServerError::Bind { addr, source })?;

        let stats = Arc::new(ServerStats::default());
        let clients = Arc::new(Clients::new(
            Arc::clone(&stats.ws_buffered_bytes),
            sc.ws_max_buffered_bytes,
            Duration::from_millis(sc.ws_reset_interval_ms),
        ));
        let hub = HubThread::start(
            Arc::clone(&inbox),
            Arc::clone(&clients),
            Arc::clone(&stats),
            bounds,
            sc.ws_cell_blocks,
        )?;
        let mut checkpoint = storage.as_ref().map(StoragePipeline::checkpoint_hook);
        let after_tick = move |e: &mut Engine| {
            if let Some(hook) = checkpoint.as_mut() {
                hook(e);
            }
        };
        let tick = TickThread::start(engine, tick_hz, after_tick, |e| {
            batching::flush_now(e);
            publish_now(e);
        })?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let proxies = TrustedProxies::new(
            sc.trusted_proxies.iter().filter_map(|p| terrarium::config::parse_cidr(p).ok()).collect(),
        );
        let limits = ConnLimits::new(
            sc.max_connections,
            sc.max_connections_per_ip,
            sc.ipv6_prefix_bits,
            proxies.clone(),
        );
        let rate = RateLimit { per_s: f64::from(sc.rate_limit_per_s), burst: f64::from(sc.rate_burst) };
        let spawn_rate =
            RateLimit { per_s: f64::from(sc.spawn_rate_per_s), burst: f64::from(sc.spawn_burst) };
        let key_rate =
            RateLimit { per_s: f64::from(sc.key_rate_limit_per_s), burst: f64::from(sc.key_rate_burst) };
        let door = DoorConfig {
            idle: Duration::from_secs(sc.idle_timeout_s),
            tcp_keepalive: (sc.tcp_keepalive_s > 0).then(|| Duration::from_secs(sc.tcp_keepalive_s)),
            max_pending_refusals: sc.max_pending_refusals,
        };
        let header_read_timeout = Duration::from_secs(sc.header_read_timeout_s);
        let ws_options = ws_options(&sc);
        let (sc_max_npcs, sc_clients, sc_max_ws) =
            (sc.max_npcs, sc.rate_limit_clients, sc.max_ws_connections);
        let state = Arc::new(AppState {
            config: sc,
            keys,
            commands,
            storage: storage.as_ref().map(|p| Arc::clone(p.stack())),
            write_behind: storage.as_ref().map(StoragePipeline::write_behind_handle),
            perf,
            exporter: {
                let exporter = PrometheusExporter::new();
                exporter.describe(crate::stats::COUNTERS, crate::stats::GAUGES);
                exporter
            },
            stats: Arc::clone(&stats),
            limits: Arc::clone(&limits),
            clients,
            bounds,
            tick_hz,
            view_every,
            tick: Arc::clone(&tick.status),
            jobs: tick.jobs(),
            spawns: Spawns::new(sc_max_npcs, spawn_rate),
            buckets: ClientBuckets::new(rate, sc_clients),
            key_buckets: KeyBuckets::new(key_rate),
            proxies,
            ws_slots: Arc::new(tokio::sync::Semaphore::new(sc_max_ws)),
            shutdown: shutdown_rx.clone(),
            ws_options,
        });
        let app = crate::api::router(Arc::clone(&state));
        let listener = LimitedListener::new(tcp, limits, door, stats);
        let serve = tokio::spawn(crate::http::serve(listener, app, header_read_timeout, shutdown_rx));
        tracing::info!(%addr, tick_hz, view_every, "game server listening");
        Ok(Self {
            addr,
            state,
            shutdown,
            serve: Some(serve),
            tick_stop: tick.stop_flag(),
            jobs: tick.jobs(),
            tick: Some(tick),
            hub: Some(hub),
            inbox,
            storage,
        })
    }

    /// The address the server listens on (with the port picked when `port` was 0).
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The performance handle the tick records into.
    #[must_use]
    pub fn performance(&self) -> Performance {
        self.state.perf.clone()
    }

    /// The server's own counters now.
    #[must_use]
    pub fn figures(&self) -> ServerFigures {
        self.state.stats.figures(self.state.limits.open())
    }

    /// Runs `f` on the tick thread between two ticks and returns what it returns (for tools
    /// and tests: inspect or change the world at a tick boundary).
    ///
    /// # Errors
    /// [`ServerError::TickThread`] when the tick thread is gone.
    pub async fn with_engine<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Engine) -> R + Send + 'static,
    ) -> Result<R, ServerError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move |engine: &mut Engine| {
                let _ = tx.send(f(engine));
            }))
            .map_err(|_| ServerError::TickThread)?;
        rx.await.map_err(|_| ServerError::TickThread)
    }

    /// Stops gracefully: stops accepting connections and lets requests in flight finish,
    /// closes WebSockets (1001), stops the tick after the tick in progress, cuts a last batch
    /// with everything pending, and shuts the storage pipeline down (`shutdown_timeout_s`; what
    /// the store does not take in time goes to the outbox, or is counted as dropped without
    /// one).
    ///
    /// # Errors
    /// [`ServerError::TickThread`] when the tick thread died, [`ServerError::Pipeline`] when
    /// the write-behind did not stop.
    pub async fn shutdown(mut self) -> Result<ShutdownSummary, ServerError> {
        let _ = self.shutdown.send(true);
        if let Some(serve) = self.serve.take() {
            let abort = serve.abort_handle();
            match tokio::time::timeout(Duration::from_secs(10), serve).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "http server task failed"),
                Err(_) => {
                    tracing::warn!("requests still running after 10 s; cutting them off");
                    abort.abort();
                }
            }
        }
        let tick = self.tick.take().ok_or(ServerError::TickThread)?;
        let hub = self.hub.take();
        let engine = tokio::task::spawn_blocking(move || {
            let engine = tick.stop();
            if let Some(hub) = hub {
                hub.stop();
            }
            engine
        })
        .await
        .map_err(|_| ServerError::TickThread)??;
        let (engine, write_behind) = match self.storage.take() {
            Some(pipeline) => {
                let timeout = Duration::from_secs(self.state.config.shutdown_timeout_s);
                // The drain blocks (and may stop a runtime of the pipeline's own): not on a
                // runtime worker. The final checkpoint follows the last batch; a failure is
                // logged (the batches are stored, the next start resumes from the previous
                // checkpoint and them).
                let (engine, report) = tokio::task::spawn_blocking(move || {
                    let mut engine = engine;
                    if let Err(e) = pipeline.checkpoint_now(&mut engine, true) {
                        tracing::error!(error = %e, "final checkpoint not stored");
                    }
                    (engine, pipeline.shutdown(timeout))
                })
                .await
                .map_err(|_| ServerError::PipelinePanicked)?;
                (engine, Some(report?))
            }
            None => (engine, None),
        };
        Ok(ShutdownSummary {
            engine,
            write_behind,
            storage: self.state.storage.clone(),
            performance: self.state.perf.snapshot(),
        })
    }
}

impl Drop for Server {
    /// Without [`Server::shutdown`]: stops every thread and drains nothing (the storage
    /// pipeline's own drop, on a thread of its own, still tries for a few seconds).
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        self.tick_stop.store(true, Ordering::Release);
        let _ = self.jobs.send(Box::new(|_| {}));
        self.inbox.close();
        if let Some(pipeline) = self.storage.take() {
            // Its drop blocks (a last drain, maybe a runtime's shutdown), which an async
            // context must not do.
            let _ = std::thread::Builder::new()
                .name("terrarium-storage-drop".into())
                .spawn(move || drop(pipeline));
        }
    }
}

/// WebSocket settings: permessage-deflate (when the client offers it) at the fast level for
/// frames of at least `ws_deflate_min_bytes`, without context takeover so deflate state is
/// pooled rather than kept per connection; the client's message size limit.
fn ws_options(sc: &ServerConfig) -> yawc::Options {
    yawc::Options::default()
        .with_low_latency_compression()
        .server_no_context_takeover()
        .client_no_context_takeover()
        .with_deflate_pool(yawc::DeflatePool::new(16))
        .with_compression_threshold(sc.ws_deflate_min_bytes)
        // yawc's bounds are exclusive: a message of exactly the limit is allowed. The read
        // buffer (fragments of one message being put together) gets the same bound, not
        // yawc's default of twice the payload.
        .with_max_payload_read(sc.max_ws_message_bytes + 1)
        .with_max_read_buffer(sc.max_ws_message_bytes + 1)
        .with_utf8()
}
