//! The border feed (issue 17): each region publishes the NPCs it owns near a neighbour's cell
//! to that neighbour's Redis channel (`<prefix>ghosts:<region>`); the neighbour shows them as
//! read-only ghosts. The feed is lossy by design (Redis pub/sub keeps nothing): a message lost,
//! a Redis that is down, a region that restarts loses ghosts for a moment and nothing durable.
//! Ownership never travels here: it is PostgreSQL's (`RegionStore`).
//!
//! Every message is a whole [`GhostBatch`] (everything one region shows one neighbour now), so
//! the receiver replaces what it had from that region; a batch with an older epoch than one
//! already seen from the same region (a zombie that has not yet noticed its fence) is ignored.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fred::clients::{Client, SubscriberClient};
use fred::prelude::{ClientLike, EventInterface, PubsubInterface};
use fred::types::Message;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::{Epoch, RegionId};

/// Largest ghost message decoded (about 150k ghosts); a bigger one counts as undecodable.
pub const GHOST_MESSAGE_LIMIT: usize = 8 << 20;

/// One NPC of another region, as its owner last published it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ghost {
    /// The NPC.
    pub npc: u64,
    /// Role name.
    pub role: String,
    /// Position, blocks.
    pub position: [f32; 3],
    /// Velocity, blocks per second.
    pub velocity: [f32; 3],
}

/// What one region shows one neighbour now (replaces the previous batch from that region).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GhostBatch {
    /// The publishing region.
    pub from: u32,
    /// Its lease's epoch when it published.
    pub epoch: Epoch,
    /// Its tick when it published.
    pub tick: u64,
    /// The ghosts.
    pub ghosts: Vec<Ghost>,
}

/// A bad border-feed setting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GhostFeedError {
    /// The URL or the key prefix can't be used.
    #[error("invalid border feed setting: {0}")]
    Invalid(String),
}

/// Where the border feed runs.
#[derive(Debug, Clone, PartialEq)]
pub struct GhostFeedConfig {
    /// `redis://host:port[/db]`, or `rediss://…` for TLS (checked as the Redis cache checks it:
    /// against `tls_ca_file`, or Mozilla's roots, and the URL's host name).
    pub url: String,
    /// CA certificates (PEM) a `rediss://` server's certificate must chain to; empty: Mozilla's.
    pub tls_ca_file: std::path::PathBuf,
    /// Prepended to every channel (1 ..= 64 printable bytes, no spaces), so several worlds
    /// (or tests) can share one server.
    pub key_prefix: String,
    /// Longest wait for one publish, ms; a slower one counts as an error.
    pub command_timeout_ms: u64,
    /// Longest wait for a connection, ms.
    pub connect_timeout_ms: u64,
}

impl Default for GhostFeedConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            tls_ca_file: std::path::PathBuf::new(),
            key_prefix: "terrarium:".into(),
            command_timeout_ms: 500,
            connect_timeout_ms: 500,
        }
    }
}

/// Counters of a border feed since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct GhostFeedStats {
    /// Batches published.
    pub published: u64,
    /// Publishes that failed (Redis down or slow): those ghosts were not shown.
    pub publish_errors: u64,
    /// Batches received.
    pub received: u64,
    /// Messages that were not a ghost batch (or too big).
    pub undecodable: u64,
    /// Messages dropped because this region read too slowly.
    pub missed: u64,
    /// True while the subscription is in place.
    pub subscribed: bool,
}

#[derive(Debug, Default)]
struct Counters {
    published: AtomicU64,
    publish_errors: AtomicU64,
    subscribed: std::sync::atomic::AtomicBool,
}

/// The channel a region's ghosts are published on.
#[must_use]
pub fn ghost_channel(prefix: &str, region: RegionId) -> String {
    format!("{prefix}ghosts:{}", region.0)
}

/// Publishes ghost batches; cheap to clone (one connection, shared).
#[derive(Clone)]
pub struct GhostPublisher {
    client: Client,
    prefix: Arc<str>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for GhostPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GhostPublisher").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl GhostPublisher {
    /// Publishes each batch on its neighbour's channel. A failure is counted (and logged at
    /// debug level) and never returned: the feed is lossy.
    pub async fn publish(&self, batches: Vec<(RegionId, GhostBatch)>) {
        for (to, batch) in batches {
            let bytes = match terrarium_codec::encode(&batch) {
                Ok(b) if b.len() <= GHOST_MESSAGE_LIMIT => b,
                _ => {
                    self.counters.publish_errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            };
            let channel = ghost_channel(&self.prefix, to);
            match self.client.publish::<i64, _, _>(channel, bytes).await {
                Ok(_) => {
                    self.counters.published.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    self.counters.publish_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, "ghost batch not published");
                }
            }
        }
    }
}

/// One region's end of the border feed: a publisher and a subscription to its own channel.
pub struct GhostFeed {
    publisher: GhostPublisher,
    subscriber: SubscriberClient,
    rx: broadcast::Receiver<Message>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    received: u64,
    undecodable: u64,
    missed: u64,
}

impl std::fmt::Debug for GhostFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GhostFeed").field("stats", &self.stats()).finish_non_exhaustive()
    }
}

fn valid_prefix(p: &str) -> bool {
    (1..=64).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_graphic())
}

impl GhostFeed {
    /// Connects (in the background: a Redis that is down is not an error, the feed starts
    /// when it comes back) and subscribes to `region`'s channel. Must run inside a tokio
    /// runtime.
    ///
    /// # Errors
    /// [`GhostFeedError::Invalid`] for a malformed URL or key prefix.
    pub fn connect(cfg: &GhostFeedConfig, region: RegionId) -> Result<Self, GhostFeedError> {
        if !valid_prefix(&cfg.key_prefix) {
            return Err(GhostFeedError::Invalid(format!("key prefix {:?}", cfg.key_prefix)));
        }
        // Built as the Redis cache builds its clients (TLS, timeouts, reconnecting).
        let redis = crate::RedisConfig {
            url: cfg.url.clone(),
            tls_ca_file: cfg.tls_ca_file.clone(),
            command_timeout_ms: cfg.command_timeout_ms,
            connect_timeout_ms: cfg.connect_timeout_ms,
            ..crate::RedisConfig::default()
        };
        let builder =
            crate::redis::fred_builder(&redis).map_err(|e| GhostFeedError::Invalid(e.to_string()))?;
        let invalid = |e: fred::error::Error| GhostFeedError::Invalid(e.to_string());
        let client = builder.build().map_err(invalid)?;
        let subscriber = builder.build_subscriber_client().map_err(invalid)?;
        let rx = subscriber.message_rx();
        let counters = Arc::new(Counters::default());
        let mut tasks = Vec::new();
        drop(client.connect());
        drop(subscriber.connect());
        tasks.push(subscriber.manage_subscriptions());
        // Subscribe once the server answers (manage_subscriptions resubscribes after that).
        let (sub, channel, flags) =
            (subscriber.clone(), ghost_channel(&cfg.key_prefix, region), Arc::clone(&counters));
        tasks.push(tokio::spawn(async move {
            loop {
                if sub.subscribe(channel.clone()).await.is_ok() {
                    flags.subscribed.store(true, Ordering::Relaxed);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }));
        Ok(Self {
            publisher: GhostPublisher { client, prefix: cfg.key_prefix.as_str().into(), counters },
            subscriber,
            rx,
            tasks,
            received: 0,
            undecodable: 0,
            missed: 0,
        })
    }

    /// A publisher for a task of its own.
    #[must_use]
    pub fn publisher(&self) -> GhostPublisher {
        self.publisher.clone()
    }

    /// Every batch received since the last call, oldest first, without waiting.
    pub fn drain(&mut self) -> Vec<GhostBatch> {
        let mut out = Vec::new();
        loop {
            match self.rx.try_recv() {
                Ok(message) => {
                    let batch = message
                        .value
                        .as_bytes()
                        .and_then(|b| terrarium_codec::decode::<GhostBatch>(b, GHOST_MESSAGE_LIMIT).ok());
                    match batch {
                        Some(b) => {
                            self.received += 1;
                            out.push(b);
                        }
                        None => self.undecodable += 1,
                    }
                }
                Err(broadcast::error::TryRecvError::Lagged(n)) => self.missed += n,
                Err(broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed) => {
                    return out;
                }
            }
        }
    }

    /// Counters now.
    #[must_use]
    pub fn stats(&self) -> GhostFeedStats {
        let c = &self.publisher.counters;
        GhostFeedStats {
            published: c.published.load(Ordering::Relaxed),
            publish_errors: c.publish_errors.load(Ordering::Relaxed),
            received: self.received,
            undecodable: self.undecodable,
            missed: self.missed,
            subscribed: c.subscribed.load(Ordering::Relaxed),
        }
    }
}

impl Drop for GhostFeed {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (sub, client) = (self.subscriber.clone(), self.publisher.client.clone());
            runtime.spawn(async move {
                let _ = sub.quit().await;
                let _ = client.quit().await;
            });
        }
    }
}
