//! `StorageStack`: the storage layers assembled from a [`StorageConfig`], outermost first:
//! L1 → Redis → Retry → CircuitBreaker → PostgreSQL or memory. Which store and whether Redis is
//! there are runtime choices, so the stack dispatches through two small enums ([`Backend`],
//! [`RedisLayer`]): `Storage` returns `impl Future`, which rules out `dyn Storage`.

use crate::{
    BackendKind, BreakerMetrics, CircuitBreaker, L1Cache, L1Metrics, MemoryStore, NpcFilter, NpcPage,
    NpcRecord, Page, Retry, RetryMetrics, Storage, StorageConfig, StorageConfigError, StorageError,
    WriteBatch,
};

/// The store at the bottom of the stack.
#[derive(Debug)]
#[non_exhaustive]
#[cfg_attr(
    any(feature = "postgres", feature = "file-store"),
    expect(clippy::large_enum_variant, reason = "one per stack; boxing buys nothing")
)]
pub enum Backend {
    /// In process; nothing outlives it.
    Memory(MemoryStore),
    /// PostgreSQL.
    #[cfg(feature = "postgres")]
    Postgres(crate::PgStore),
    /// The embedded on-disk store (SQLite).
    #[cfg(feature = "file-store")]
    Embedded(crate::FileStore),
}

impl Backend {
    /// Stores a checkpoint and keeps the newest `keep`. Checkpoints go to the store directly,
    /// not through the caches, retries and breaker of the stack (the caller, the checkpoint
    /// writer, retries on its own schedule).
    ///
    /// # Errors
    /// As the store's write.
    pub async fn save_checkpoint(
        &self,
        checkpoint: crate::Checkpoint,
        keep: u32,
    ) -> Result<(), StorageError> {
        match self {
            Self::Memory(s) => {
                let _ = keep; // memory keeps one
                s.save_checkpoint(checkpoint);
                Ok(())
            }
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => s.save_checkpoint(&checkpoint, keep).await,
            #[cfg(feature = "file-store")]
            Self::Embedded(s) => s.save_checkpoint(checkpoint, keep).await,
        }
    }

    /// What the store holds of a world to resume (`None`: nothing stored, a new world).
    ///
    /// # Errors
    /// [`StorageError::Corrupt`] (naming the file or schema) for a damaged database or a
    /// checkpoint that fails its checksum; [`StorageError::NoCheckpoint`] (naming them) for a
    /// durable store holding rows but no checkpoint; otherwise as the store's reads.
    pub async fn resume_point(&self) -> Result<Option<crate::ResumePoint>, StorageError> {
        match self {
            Self::Memory(s) => Ok(s.resume_point()),
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => s.resume_point().await,
            #[cfg(feature = "file-store")]
            Self::Embedded(s) => s.resume_point().await,
        }
    }

    /// Highest batch `seq` the store applied for `run`.
    ///
    /// # Errors
    /// As the store's reads.
    pub async fn applied_seq(&self, run: u64) -> Result<Option<u64>, StorageError> {
        match self {
            Self::Memory(s) => Ok(s.applied_seq(run)),
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => s.applied_seq(run).await,
            #[cfg(feature = "file-store")]
            Self::Embedded(s) => s.applied_seq(run).await,
        }
    }

    /// At most `limit` of an NPC's stored positions with `tick` in `ticks`, by tick (the
    /// oldest first). PostgreSQL and the embedded store keep a history row per NPC per flush;
    /// the memory store keeps only the newest position, so its track is at most that one.
    ///
    /// # Errors
    /// As the store's reads.
    pub async fn position_history(
        &self,
        npc_id: u64,
        ticks: std::ops::Range<u64>,
        limit: usize,
    ) -> Result<Vec<crate::PositionRow>, StorageError> {
        let mut rows: Vec<crate::PositionRow> = match self {
            Self::Memory(s) => {
                s.last_position(npc_id).filter(|p| ticks.contains(&p.tick)).into_iter().collect()
            }
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => s.position_history(npc_id, ticks).await?,
            #[cfg(feature = "file-store")]
            Self::Embedded(s) => s.position_history(npc_id, ticks).await?,
        };
        rows.truncate(limit);
        Ok(rows)
    }

    /// Deletes every stored row and checkpoint: the next start is a new world.
    ///
    /// # Errors
    /// As the store's writes.
    pub async fn wipe(&self) -> Result<(), StorageError> {
        match self {
            Self::Memory(s) => {
                s.wipe();
                Ok(())
            }
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => s.wipe().await,
            #[cfg(feature = "file-store")]
            Self::Embedded(s) => s.wipe().await,
        }
    }
}

impl Storage for Backend {
    fn name(&self) -> &'static str {
        match self {
            Self::Memory(s) => s.name(),
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => s.name(),
            #[cfg(feature = "file-store")]
            Self::Embedded(s) => s.name(),
        }
    }

    async fn write(&self, batches: &[WriteBatch]) -> Result<(), StorageError> {
        match self {
            Self::Memory(s) => s.write(batches).await,
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => s.write(batches).await,
            #[cfg(feature = "file-store")]
            Self::Embedded(s) => s.write(batches).await,
        }
    }

    async fn get_npc(&self, id: u64) -> Result<Option<NpcRecord>, StorageError> {
        match self {
            Self::Memory(s) => s.get_npc(id).await,
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => s.get_npc(id).await,
            #[cfg(feature = "file-store")]
            Self::Embedded(s) => s.get_npc(id).await,
        }
    }

    async fn list_npcs(&self, filter: &NpcFilter, page: Page) -> Result<NpcPage, StorageError> {
        match self {
            Self::Memory(s) => s.list_npcs(filter, page).await,
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => s.list_npcs(filter, page).await,
            #[cfg(feature = "file-store")]
            Self::Embedded(s) => s.list_npcs(filter, page).await,
        }
    }

    async fn load_npcs(&self) -> Result<Vec<NpcRecord>, StorageError> {
        match self {
            Self::Memory(s) => s.load_npcs().await,
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => s.load_npcs().await,
            #[cfg(feature = "file-store")]
            Self::Embedded(s) => s.load_npcs().await,
        }
    }
}

/// The Redis layer, or nothing when no Redis URL is configured.
#[derive(Debug)]
#[non_exhaustive]
#[cfg_attr(
    feature = "redis",
    expect(clippy::large_enum_variant, reason = "one per stack; boxing buys nothing")
)]
pub enum RedisLayer<S> {
    /// No Redis: calls go straight to `S`.
    Off(S),
    /// A [`crate::RedisCache`] in front of `S`.
    #[cfg(feature = "redis")]
    On(crate::RedisCache<S>),
}

impl<S: Storage> RedisLayer<S> {
    /// The layer below.
    pub fn inner(&self) -> &S {
        match self {
            Self::Off(s) => s,
            #[cfg(feature = "redis")]
            Self::On(c) => c.inner(),
        }
    }
}

impl<S: Storage> Storage for RedisLayer<S> {
    fn name(&self) -> &'static str {
        self.inner().name()
    }

    async fn write(&self, batches: &[WriteBatch]) -> Result<(), StorageError> {
        match self {
            Self::Off(s) => s.write(batches).await,
            #[cfg(feature = "redis")]
            Self::On(c) => c.write(batches).await,
        }
    }

    async fn get_npc(&self, id: u64) -> Result<Option<NpcRecord>, StorageError> {
        match self {
            Self::Off(s) => s.get_npc(id).await,
            #[cfg(feature = "redis")]
            Self::On(c) => c.get_npc(id).await,
        }
    }

    async fn list_npcs(&self, filter: &NpcFilter, page: Page) -> Result<NpcPage, StorageError> {
        match self {
            Self::Off(s) => s.list_npcs(filter, page).await,
            #[cfg(feature = "redis")]
            Self::On(c) => c.list_npcs(filter, page).await,
        }
    }

    async fn load_npcs(&self) -> Result<Vec<NpcRecord>, StorageError> {
        match self {
            Self::Off(s) => s.load_npcs().await,
            #[cfg(feature = "redis")]
            Self::On(c) => c.load_npcs().await,
        }
    }
}

/// The layers of a [`StorageStack`], outermost first.
pub type Layers = L1Cache<RedisLayer<Retry<CircuitBreaker<Backend>>>>;

/// Every counter of a stack, in one place.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StorageMetrics {
    /// The in-process cache.
    pub l1: L1Metrics,
    /// The Redis cache (hits and misses per tier), when there is one.
    #[cfg(feature = "redis")]
    pub redis: Option<crate::RedisMetrics>,
    /// Retries of transient failures.
    pub retry: RetryMetrics,
    /// The circuit breaker's write circuit (the one the write-behind depends on).
    pub breaker: BreakerMetrics,
    /// The circuit breaker's read circuit (`get_npc`, `list_npcs`, `load_npcs`).
    pub read_breaker: BreakerMetrics,
    /// PostgreSQL: the pool (active, idle, waiting, query time percentiles) and write counters,
    /// when it is the backend.
    #[cfg(feature = "postgres")]
    pub postgres: Option<crate::PgMetrics>,
}

/// The storage stack a game server (or the headless harness) writes to and reads from.
///
/// [`StorageStack::build`] connects everything a [`StorageConfig`] asks for, runs migrations,
/// warms the Redis cache and starts the retention job; the stack then implements [`Storage`].
/// Dropping it stops the retention job.
///
/// # Examples
/// ```
/// use terrarium_persistence::{BatchId, Storage, StorageConfig, StorageStack, WriteBatch};
/// use terrarium_persistence::testing::npc;
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let stack = StorageStack::build(&StorageConfig::default()).await?; // memory, no Redis
/// stack.write(&[WriteBatch { id: BatchId { run: 1, seq: 1 }, npcs: vec![npc(3, 0)], ..Default::default() }]).await?;
/// assert_eq!(stack.get_npc(3).await?.map(|r| r.id), Some(3));
/// assert_eq!(stack.metrics().l1.tier.misses, 1);
/// # Ok::<(), terrarium_persistence::StorageError>(()) }).unwrap();
/// ```
pub struct StorageStack {
    layers: Layers,
    retention: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for StorageStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageStack")
            .field("backend", &self.name())
            .field("metrics", &self.metrics())
            .finish()
    }
}

impl StorageStack {
    /// Validates `cfg`, connects the backend (PostgreSQL: pool, migrations) and Redis (when
    /// `redis.url` is set), warms the cache and starts the retention job (PostgreSQL, when
    /// enabled). Must run inside a tokio runtime.
    ///
    /// # Errors
    /// [`StorageError::Config`] for a bad setting (including a backend or Redis URL this build
    /// has no feature for), otherwise as [`crate::PgStore::connect`]. An unreachable Redis is
    /// not an error (the cache starts in bypass).
    pub async fn build(cfg: &StorageConfig) -> Result<Self, StorageError> {
        cfg.validate()?;
        let backend = match cfg.backend {
            BackendKind::Memory => Backend::Memory(MemoryStore::default()),
            BackendKind::Postgres => postgres_backend(cfg).await?,
            BackendKind::Embedded => embedded_backend(cfg).await?,
        };
        let retention = match &backend {
            #[cfg(feature = "postgres")]
            Backend::Postgres(pg) if cfg.retention.enabled => Some(pg.spawn_retention(&cfg.retention)),
            #[cfg(feature = "file-store")]
            Backend::Embedded(f) if cfg.retention.enabled => Some(f.spawn_retention(&cfg.retention)),
            _ => None,
        };
        let stack = Self::assemble(backend, cfg, retention).await?;
        #[cfg(feature = "redis")]
        if let (Some(redis), n @ 1..) = (stack.redis(), cfg.redis.warm_on_start) {
            match redis.warm(n).await {
                Ok(cached) => tracing::info!(cached, "redis cache warmed"),
                Err(e) => tracing::warn!(error = %e, "could not warm the redis cache; starting cold"),
            }
        }
        Ok(stack)
    }

    /// Puts the layers of `cfg` (L1, Redis when configured, retry, breaker) over an existing
    /// backend. No retention job, no warming.
    ///
    /// # Errors
    /// As [`StorageStack::build`].
    pub async fn with_backend(backend: Backend, cfg: &StorageConfig) -> Result<Self, StorageError> {
        cfg.validate()?;
        Self::assemble(backend, cfg, None).await
    }

    async fn assemble(
        backend: Backend,
        cfg: &StorageConfig,
        retention: Option<tokio::task::JoinHandle<()>>,
    ) -> Result<Self, StorageError> {
        let guarded = Retry::new(CircuitBreaker::new(backend, cfg.breaker.clone()), cfg.retry.clone());
        let cached = match redis_layer(guarded, cfg).await {
            Ok(cached) => cached,
            Err(e) => {
                if let Some(job) = retention {
                    job.abort();
                }
                return Err(e);
            }
        };
        Ok(Self { layers: L1Cache::new(cached, cfg.l1.clone()), retention })
    }

    /// All the layers, outermost first.
    pub fn layers(&self) -> &Layers {
        &self.layers
    }

    /// The circuit breaker (state, counters).
    pub fn breaker(&self) -> &CircuitBreaker<Backend> {
        self.layers.inner().inner().inner()
    }

    /// The backend.
    pub fn backend(&self) -> &Backend {
        self.breaker().inner()
    }

    /// The PostgreSQL store, when it is the backend.
    #[cfg(feature = "postgres")]
    pub fn postgres(&self) -> Option<&crate::PgStore> {
        match self.backend() {
            Backend::Postgres(pg) => Some(pg),
            _ => None,
        }
    }

    /// The embedded store, when it is the backend.
    #[cfg(feature = "file-store")]
    pub fn embedded(&self) -> Option<&crate::FileStore> {
        match self.backend() {
            Backend::Embedded(f) => Some(f),
            _ => None,
        }
    }

    /// The Redis cache, when there is one.
    #[cfg(feature = "redis")]
    pub fn redis(&self) -> Option<&crate::RedisCache<Retry<CircuitBreaker<Backend>>>> {
        match self.layers.inner() {
            RedisLayer::On(c) => Some(c),
            RedisLayer::Off(_) => None,
        }
    }

    /// An NPC's track: at most `limit` stored positions with `tick` in `ticks`, oldest first
    /// (see [`Backend::position_history`]), read through the breaker's read circuit like
    /// `get_npc` (no cache holds history).
    ///
    /// # Errors
    /// [`StorageError::CircuitOpen`] while the read circuit is open, a timeout after the
    /// breaker's call timeout, otherwise as the store's reads.
    pub async fn position_history(
        &self,
        npc_id: u64,
        ticks: std::ops::Range<u64>,
        limit: usize,
    ) -> Result<Vec<crate::PositionRow>, StorageError> {
        self.breaker().read(self.backend().position_history(npc_id, ticks, limit)).await
    }

    /// Every counter, read now.
    pub fn metrics(&self) -> StorageMetrics {
        StorageMetrics {
            l1: self.layers.metrics(),
            #[cfg(feature = "redis")]
            redis: self.redis().map(crate::RedisCache::metrics),
            retry: self.layers.inner().inner().metrics(),
            breaker: self.breaker().metrics(),
            read_breaker: self.breaker().read_metrics(),
            #[cfg(feature = "postgres")]
            postgres: self.postgres().map(crate::PgStore::metrics),
        }
    }
}

impl Drop for StorageStack {
    fn drop(&mut self) {
        if let Some(job) = self.retention.take() {
            job.abort();
        }
    }
}

impl Storage for StorageStack {
    fn name(&self) -> &'static str {
        self.layers.name()
    }

    async fn write(&self, batches: &[WriteBatch]) -> Result<(), StorageError> {
        self.layers.write(batches).await
    }

    async fn get_npc(&self, id: u64) -> Result<Option<NpcRecord>, StorageError> {
        self.layers.get_npc(id).await
    }

    async fn list_npcs(&self, filter: &NpcFilter, page: Page) -> Result<NpcPage, StorageError> {
        self.layers.list_npcs(filter, page).await
    }

    async fn load_npcs(&self) -> Result<Vec<NpcRecord>, StorageError> {
        self.layers.load_npcs().await
    }
}

#[cfg(feature = "postgres")]
async fn postgres_backend(cfg: &StorageConfig) -> Result<Backend, StorageError> {
    if cfg.postgres.url.is_empty() {
        return Err(StorageConfigError::Invalid {
            key: "storage.postgres.url".into(),
            reason: "required when storage.backend = \"postgres\"".into(),
        }
        .into());
    }
    Ok(Backend::Postgres(crate::PgStore::connect(&cfg.postgres).await?))
}

#[cfg(not(feature = "postgres"))]
async fn postgres_backend(_: &StorageConfig) -> Result<Backend, StorageError> {
    Err(StorageConfigError::Invalid {
        key: "storage.backend".into(),
        reason: "\"postgres\" needs the `postgres` feature, which this build does not have".into(),
    }
    .into())
}

#[cfg(feature = "file-store")]
async fn embedded_backend(cfg: &StorageConfig) -> Result<Backend, StorageError> {
    Ok(Backend::Embedded(crate::FileStore::open(&cfg.embedded).await?))
}

#[cfg(not(feature = "file-store"))]
async fn embedded_backend(_: &StorageConfig) -> Result<Backend, StorageError> {
    Err(StorageConfigError::Invalid {
        key: "storage.backend".into(),
        reason: "\"embedded\" needs the `file-store` feature, which this build does not have".into(),
    }
    .into())
}

#[cfg(feature = "redis")]
async fn redis_layer<S: Storage>(inner: S, cfg: &StorageConfig) -> Result<RedisLayer<S>, StorageError> {
    if cfg.redis.url.is_empty() {
        return Ok(RedisLayer::Off(inner));
    }
    Ok(RedisLayer::On(crate::RedisCache::connect(inner, &cfg.redis).await?))
}

#[cfg(not(feature = "redis"))]
async fn redis_layer<S: Storage>(inner: S, cfg: &StorageConfig) -> Result<RedisLayer<S>, StorageError> {
    if cfg.redis.url.is_empty() {
        return Ok(RedisLayer::Off(inner));
    }
    Err(StorageConfigError::Invalid {
        key: "storage.redis.url".into(),
        reason: "set, but this build does not have the `redis` feature".into(),
    }
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::npc;
    use crate::{BatchId, BreakerState};

    #[tokio::test]
    async fn the_default_stack_is_memory_behind_every_layer() {
        let stack = StorageStack::build(&StorageConfig::default()).await.unwrap();
        assert_eq!(stack.name(), "memory");
        stack
            .write(&[WriteBatch {
                id: BatchId { run: 1, seq: 1 },
                npcs: vec![npc(1, 2)],
                ..Default::default()
            }])
            .await
            .unwrap();
        assert_eq!(stack.get_npc(1).await.unwrap().map(|r| r.swarm), Some(2));
        assert_eq!(stack.get_npc(1).await.unwrap().map(|r| r.swarm), Some(2));
        let m = stack.metrics();
        assert_eq!((m.l1.tier.hits, m.l1.tier.misses), (1, 1));
        assert_eq!((m.retry.calls, m.breaker.calls, m.breaker.state), (2, 1, BreakerState::Closed));
        assert_eq!(m.read_breaker.calls, 1);
        assert!(matches!(stack.backend(), Backend::Memory(_)));
    }

    #[tokio::test]
    async fn bad_settings_are_refused_before_connecting() {
        let mut cfg = StorageConfig::default();
        cfg.breaker.failure_threshold = 0;
        let err = StorageStack::build(&cfg).await.unwrap_err();
        assert!(err.to_string().contains("storage.breaker.failure_threshold"), "{err}");
        let cfg = StorageConfig { backend: BackendKind::Postgres, ..Default::default() };
        let err = StorageStack::build(&cfg).await.unwrap_err();
        assert!(matches!(err, StorageError::Config(_)) && !err.is_transient(), "{err}");
    }
}
