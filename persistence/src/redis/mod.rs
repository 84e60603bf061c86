//! `RedisCache<S>`: a Redis cache (feature `redis`, fred) in front of a store: TTL tiers,
//! cache-aside reads, invalidation by key and by tag, warming, and pub/sub of events. Redis
//! trouble is a cache miss, never a failed game call.

mod health;
mod keys;
mod pipeline;
mod pubsub;
mod reads;
mod scripts;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fred::prelude::{Builder, ClientLike, Config as FredConfig, Pool, ReconnectPolicy};

pub use health::RedisMetrics;
pub use keys::Tier;
pub use pubsub::EventSubscriber;

use health::Counters;

use crate::{
    Clock, NpcFilter, NpcPage, NpcRecord, Page, RedisConfig, Storage, StorageError, TokioClock, WriteBatch,
};

const BACKEND: &str = "redis";

/// Largest cached value decoded (a page of 100 NPCs is far below it).
const VALUE_LIMIT: usize = 1 << 20;

/// Caches reads of `S` in Redis.
///
/// - **Keys** (all under [`RedisConfig::key_prefix`] and an epoch number): `npc:<id>` (warm),
///   `pos:<id>` (hot: the latest position, written through on every write; writing it also
///   cuts the TTL of `npc:<id>` to the hot tier's, so a record never outlives a newer position),
///   `list:<hash>` (a listing page; hot tier, since its positions come from there), `val:<name>` (any tier, [`RedisCache::put_value`]), and tag sets
///   `tag:<name>` listing the keys cached under a tag (`swarm:<n>`, `lists`). Values are
///   terrarium-codec bytes, never JSON.
/// - **Reads** are cache-aside: `get_npc` reads `npc:<id>` and `pos:<id>` in one round trip and
///   overlays the newer position; on a miss it reads the store and caches the record (unless a
///   write finished meanwhile: the record may predate it). Listing pages are cached the same way
///   with their positions refreshed from the hot tier. `load_npcs` passes through.
/// - **Writes** go to the store first. Then, whatever the outcome: `npc:<id>` of every NPC
///   upserted or removed is deleted (by key), every listing page is deleted when NPCs changed
///   (by tag `lists`); on success the latest position per NPC is SET in the hot tier and each
///   event is published on `<prefix>events:<event type>`.
/// - **Failures**: a Redis error or timeout counts as a miss (and in [`RedisMetrics::errors`]),
///   the call goes to the store, and Redis is skipped for [`RedisConfig::bypass_ms`]. If a
///   write's invalidation could not reach Redis, the epoch is bumped before Redis is used again,
///   so nothing cached before the outage is ever served. The epoch is also bumped at start-up.
///
/// One process writes through one key prefix; see `persistence/DESIGN.md`.
pub struct RedisCache<S> {
    inner: S,
    pool: Pool,
    builder: Builder,
    cfg: RedisConfig,
    clock: Arc<dyn Clock>,
    epoch: AtomicU64,
    /// A write's cache maintenance failed: bump the epoch before trusting anything cached.
    dirty: AtomicBool,
    bypass_until: Mutex<Option<Instant>>,
    /// Bumped after every write, so a read that overlapped one can drop what it cached.
    generation: AtomicU64,
    counters: Counters,
}

impl<S> std::fmt::Debug for RedisCache<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCache")
            .field("prefix", &self.cfg.key_prefix)
            .field("metrics", &self.metrics())
            .finish()
    }
}

impl<S: Storage> RedisCache<S> {
    /// Connects a pool of [`RedisConfig::pool_size`] connections and starts a new key epoch.
    /// If Redis does not answer within [`RedisConfig::connect_timeout_ms`], the cache starts in
    /// bypass (every call goes to the store) and keeps reconnecting in the background.
    ///
    /// A `rediss://` URL connects with TLS, the certificate checked against
    /// [`RedisConfig::tls_ca_file`] (or Mozilla's roots) and the URL's host name; a refused
    /// certificate is like an unreachable server (bypass, counted as an error, logged).
    ///
    /// # Errors
    /// [`StorageError::Failed`] when the URL is malformed, [`StorageError::Config`] for a CA
    /// file that can't be read. An unreachable server is not an error.
    pub async fn connect(inner: S, cfg: &RedisConfig) -> Result<Self, StorageError> {
        let builder = fred_builder(cfg)?;
        let pool = builder.build_pool(cfg.pool_size).map_err(failed)?;
        let cache = Self {
            inner,
            pool,
            builder,
            cfg: cfg.clone(),
            clock: Arc::new(TokioClock),
            epoch: AtomicU64::new(0),
            dirty: AtomicBool::new(true),
            bypass_until: Mutex::new(None),
            generation: AtomicU64::new(0),
            counters: Counters::default(),
        };
        let _connection_tasks = cache.pool.connect();
        let wait = Duration::from_millis(cfg.connect_timeout_ms);
        match tokio::time::timeout(wait, cache.pool.wait_for_connect()).await {
            Ok(Ok(())) => {
                cache.ensure_epoch().await;
            }
            Ok(Err(e)) => cache.note_failure("connect", &e),
            Err(_) => {
                cache.counters.errors.fetch_add(1, Ordering::Relaxed);
                cache.start_bypass();
                tracing::warn!(
                    url = %crate::config::url_without_password(&cfg.url),
                    "redis did not answer at start-up; running uncached until it does"
                );
            }
        }
        Ok(cache)
    }
}

impl<S> Drop for RedisCache<S> {
    fn drop(&mut self) {
        // Close the connections; `quit` needs a runtime (without one they close with the process).
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let pool = self.pool.clone();
            runtime.spawn(async move {
                let _ = pool.quit().await;
            });
        }
    }
}

impl<S> RedisCache<S> {
    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The channel events of `event_type` are published on.
    #[must_use]
    pub fn event_channel(&self, event_type: &str) -> String {
        format!("{}events:{event_type}", self.cfg.key_prefix)
    }
}

impl<S: Storage> Storage for RedisCache<S> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn write(&self, batches: &[WriteBatch]) -> Result<(), StorageError> {
        let result = self.inner.write(batches).await;
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.after_write(batches, result.is_ok()).await;
        result
    }

    async fn get_npc(&self, id: u64) -> Result<Option<NpcRecord>, StorageError> {
        self.get_npc_cached(id).await
    }

    async fn list_npcs(&self, filter: &NpcFilter, page: Page) -> Result<NpcPage, StorageError> {
        self.list_npcs_cached(filter, page).await
    }

    async fn load_npcs(&self) -> Result<Vec<NpcRecord>, StorageError> {
        self.inner.load_npcs().await
    }
}

/// A fred client builder for `cfg`: fail fast, one attempt per command, the configured timeouts,
/// reconnecting in the background (exponential, up to 2 s). TLS is ours (the roots of
/// `tls_ca_file` or Mozilla's, checked fully, `crate::tls`), not fred's default (the system's
/// store): a `rediss://` URL goes to fred as plain `redis://` with our connector. Shared by the
/// cache and the regions' ghost feed.
///
/// # Errors
/// [`StorageError::Failed`] when the URL is malformed, [`StorageError::Config`] for a CA file
/// that can't be read.
pub(crate) fn fred_builder(cfg: &RedisConfig) -> Result<Builder, StorageError> {
    let tls = crate::tls::redis_client_config(cfg)?;
    let url = match (&tls, cfg.url.strip_prefix("rediss://")) {
        (Some(_), Some(rest)) => format!("redis://{rest}"),
        _ => cfg.url.clone(),
    };
    let mut fred_cfg = FredConfig { fail_fast: true, ..FredConfig::from_url(&url).map_err(failed)? };
    fred_cfg.tls = tls.map(|c| fred::types::config::TlsConnector::from(c).into());
    let mut builder = Builder::from_config(fred_cfg);
    builder
        .with_performance_config(|p| {
            p.default_command_timeout = Duration::from_millis(cfg.command_timeout_ms);
        })
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_millis(cfg.connect_timeout_ms);
            c.internal_command_timeout = Duration::from_millis(cfg.connect_timeout_ms);
            c.max_command_attempts = 1;
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2));
    Ok(builder)
}

fn failed(e: fred::error::Error) -> StorageError {
    StorageError::failed(BACKEND, e)
}

fn unavailable(e: fred::error::Error) -> StorageError {
    StorageError::unavailable(BACKEND, e)
}
