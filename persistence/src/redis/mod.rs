//! `RedisCache<S>`: a Redis cache (feature `redis`, fred) in front of a store: TTL tiers,
//! cache-aside reads, invalidation by key and by tag, warming, and pub/sub of events. Redis
//! trouble is a cache miss, never a failed game call.

mod pubsub;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fred::clients::Pipeline;
use fred::prelude::{
    Builder, ClientLike, Config as FredConfig, Expiration, KeysInterface, Options, Pool, PubsubInterface,
    ReconnectPolicy, SetsInterface, Value,
};
use fred::types::{ClusterHash, CustomCommand};
use futures_util::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use pubsub::EventSubscriber;

use crate::{
    Clock, NpcFilter, NpcPage, NpcRecord, Page, PositionRow, RedisConfig, Storage, StorageError, TierMetrics,
    TokioClock, WriteBatch,
};

const BACKEND: &str = "redis";

/// Largest cached value decoded (a page of 100 NPCs is far below it).
const VALUE_LIMIT: usize = 1 << 20;

/// Keys per pipeline: bounds the memory of one round trip, and makes enough pipelines to keep
/// every pooled connection busy.
const PIPELINE_LEN: usize = 1_000;

/// Deletes every key in the set `KEYS[1]`, then the set. Atomic, so no key cached under the tag
/// while it runs escapes.
const INVALIDATE_TAG: &str = r"
local members = redis.call('SMEMBERS', KEYS[1])
for i = 1, #members, 1000 do
  redis.call('DEL', unpack(members, i, math.min(i + 999, #members)))
end
redis.call('DEL', KEYS[1])
return #members
";

/// Writes positions: for each pair of keys, SETs `KEYS[i]` (the position, `ARGV[k + 1]`) with a
/// TTL of `ARGV[1]` seconds and cuts the TTL of `KEYS[i + 1]` (the NPC's record) to at most that.
/// One command per chunk instead of two per NPC: Redis itself takes millions of SETs a second,
/// the client's cost per command is what bounds the rate (measured: ≈ 3.6 µs per pipelined
/// command with fred on the development machine).
const SET_POSITIONS: &str = r"
local ttl = ARGV[1]
for i = 1, #KEYS, 2 do
  redis.call('SET', KEYS[i], ARGV[(i + 1) / 2 + 1], 'EX', ttl)
  redis.call('EXPIRE', KEYS[i + 1], ttl, 'LT')
end
return #KEYS / 2
";

/// Positions per [`SET_POSITIONS`] call.
const POSITIONS_PER_CALL: usize = 256;

/// Deletes every key matching `ARGV[1]` (tests and tools; it blocks Redis while it runs).
const CLEAR_PATTERN: &str = r"
local cursor, n = '0', 0
repeat
  local r = redis.call('SCAN', cursor, 'MATCH', ARGV[1], 'COUNT', 1000)
  cursor = r[1]
  for _, k in ipairs(r[2]) do redis.call('DEL', k); n = n + 1 end
until cursor == '0'
return n
";

/// How long a cached value lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// Latest positions ([`RedisConfig::hot_ttl_s`], 60 s by default).
    Hot,
    /// The NPC registry, status and listings ([`RedisConfig::warm_ttl_s`], 300 s).
    Warm,
    /// Slow-changing values such as learning profiles ([`RedisConfig::cold_ttl_s`], 600 s).
    Cold,
}

/// Counters of a [`RedisCache`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RedisMetrics {
    /// Positions overlaid on cached records.
    pub hot: TierMetrics,
    /// NPC records and listing pages.
    pub warm: TierMetrics,
    /// Values of [`RedisCache::get_value`].
    pub cold: TierMetrics,
    /// Redis commands (or pipelines) that failed or timed out; each was treated as a miss.
    pub errors: u64,
    /// Calls that skipped Redis because it had just failed ([`RedisConfig::bypass_ms`]).
    pub bypassed: u64,
    /// Cached values that did not decode (deleted, treated as misses).
    pub decode_errors: u64,
    /// Keys deleted by invalidation, by key and by tag.
    pub invalidated: u64,
    /// Events published.
    pub published: u64,
    /// Key generation in use (bumped at start-up and after a write the cache could not follow).
    pub epoch: u64,
}

#[derive(Default)]
struct Counters {
    hot: (AtomicU64, AtomicU64),
    warm: (AtomicU64, AtomicU64),
    cold: (AtomicU64, AtomicU64),
    errors: AtomicU64,
    bypassed: AtomicU64,
    decode_errors: AtomicU64,
    invalidated: AtomicU64,
    published: AtomicU64,
}

/// A listing page as cached: the request is kept with the answer, so a hash collision of two
/// requests is a miss, not a wrong answer.
#[derive(Serialize, serde::Deserialize)]
struct CachedPage {
    filter: NpcFilter,
    page: Page,
    result: NpcPage,
}

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
    /// # Errors
    /// [`StorageError::Failed`] when the URL is malformed. An unreachable server is not an error.
    pub async fn connect(inner: S, cfg: &RedisConfig) -> Result<Self, StorageError> {
        let fred_cfg = FredConfig { fail_fast: true, ..FredConfig::from_url(&cfg.url).map_err(failed)? };
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
                tracing::warn!(url = %cfg.url, "redis did not answer at start-up; running uncached until it does");
            }
        }
        Ok(cache)
    }

    /// Caches up to `max` NPCs (by ascending id) from the store, so the first reads after a
    /// start hit. The store's current state holds the NPCs in the world (removed ones are
    /// deleted), so these are active NPCs. Returns how many were cached.
    ///
    /// # Errors
    /// When the store fails; Redis trouble only stops the warming early.
    pub async fn warm(&self, max: usize) -> Result<usize, StorageError> {
        let mut page = Page::first(Page::MAX_LIMIT);
        let mut cached = 0;
        while cached < max {
            let got = self.inner.list_npcs(&NpcFilter::default(), page).await?;
            let take = got.npcs.len().min(max - cached);
            let generation = self.generation.load(Ordering::Acquire);
            if !self.fill_npcs(&got.npcs[..take], generation).await {
                break;
            }
            cached += take;
            match got.next {
                Some(after) => page = Page { after: Some(after), limit: Page::MAX_LIMIT },
                None => break,
            }
        }
        Ok(cached)
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

    /// Counters so far.
    pub fn metrics(&self) -> RedisMetrics {
        let c = &self.counters;
        let tier = |t: &(AtomicU64, AtomicU64)| TierMetrics {
            hits: t.0.load(Ordering::Relaxed),
            misses: t.1.load(Ordering::Relaxed),
        };
        RedisMetrics {
            hot: tier(&c.hot),
            warm: tier(&c.warm),
            cold: tier(&c.cold),
            errors: c.errors.load(Ordering::Relaxed),
            bypassed: c.bypassed.load(Ordering::Relaxed),
            decode_errors: c.decode_errors.load(Ordering::Relaxed),
            invalidated: c.invalidated.load(Ordering::Relaxed),
            published: c.published.load(Ordering::Relaxed),
            epoch: self.epoch.load(Ordering::Relaxed),
        }
    }

    /// The channel events of `event_type` are published on.
    #[must_use]
    pub fn event_channel(&self, event_type: &str) -> String {
        format!("{}events:{event_type}", self.cfg.key_prefix)
    }

    /// Drops one NPC's cached record (by key). Returns false when Redis could not be reached
    /// (the next use of Redis then starts a new epoch).
    pub async fn invalidate_npc(&self, id: u64) -> bool {
        let key = self.key("npc", id);
        self.invalidate_keys(vec![key]).await
    }

    /// Drops every cached record and listing page of a swarm (by tag).
    pub async fn invalidate_swarm(&self, swarm: u32) -> bool {
        self.invalidate_tag(&format!("swarm:{swarm}")).await
    }

    /// Drops every cached listing page (by tag).
    pub async fn invalidate_lists(&self) -> bool {
        self.invalidate_tag("lists").await
    }

    /// Caches `value` under `name` in `tier` (for example a learning profile in [`Tier::Cold`]).
    /// Returns false when it was not cached.
    pub async fn put_value<T: Serialize + ?Sized>(&self, tier: Tier, name: &str, value: &T) -> bool {
        let Ok(bytes) = terrarium_codec::encode(value) else { return false };
        let key = self.key("val", name);
        let ttl = self.ttl(tier);
        self.redis("put_value", self.pool.set::<Value, _, _>(key, bytes, Some(ttl), None, false))
            .await
            .is_some()
    }

    /// A value cached with [`RedisCache::put_value`], counted as a hit or miss of `tier`.
    pub async fn get_value<T: DeserializeOwned>(&self, tier: Tier, name: &str) -> Option<T> {
        let key = self.key("val", name);
        let found = self.redis("get_value", self.pool.get::<Value, _>(key.clone())).await;
        let value = match found {
            Some(v) => self.decode(&key, &v).await,
            None => None,
        };
        self.count(tier, value.is_some());
        value
    }

    /// Deletes every key under this cache's prefix, all epochs (tests and tools: it blocks Redis
    /// while it scans).
    ///
    /// # Errors
    /// When Redis can't be reached.
    pub async fn clear_prefix(&self) -> Result<u64, StorageError> {
        let pattern = format!("{}*", escape_glob(&self.cfg.key_prefix));
        self.eval(CLEAR_PATTERN, vec![], vec![Value::from(pattern)]).await.map_err(unavailable)
    }

    /// EVAL with the pipeline timeout (fred's `eval` would use the short command timeout).
    async fn eval(
        &self,
        script: &'static str,
        keys: Vec<String>,
        argv: Vec<Value>,
    ) -> Result<u64, fred::error::Error> {
        let client = self.pool.next().with_options(&self.long_options());
        let mut args = Vec::with_capacity(keys.len() + argv.len() + 2);
        args.push(Value::from_static_str(script));
        args.push(Value::from(keys.len() as i64));
        args.extend(keys.into_iter().map(Value::from));
        args.extend(argv);
        client.custom(CustomCommand::new_static("EVAL", ClusterHash::FirstKey, false), args).await
    }

    fn long_options(&self) -> Options {
        Options { timeout: Some(Duration::from_millis(self.cfg.pipeline_timeout_ms)), ..Default::default() }
    }

    fn key(&self, kind: &str, id: impl std::fmt::Display) -> String {
        format!("{}{}:{kind}:{id}", self.cfg.key_prefix, self.epoch.load(Ordering::Acquire))
    }

    fn tag_key(&self, tag: &str) -> String {
        self.key("tag", tag)
    }

    fn ttl(&self, tier: Tier) -> Expiration {
        let s = match tier {
            Tier::Hot => self.cfg.hot_ttl_s,
            Tier::Warm => self.cfg.warm_ttl_s,
            Tier::Cold => self.cfg.cold_ttl_s,
        };
        Expiration::EX(i64::try_from(s).unwrap_or(i64::MAX))
    }

    fn count(&self, tier: Tier, hit: bool) {
        let t = match tier {
            Tier::Hot => &self.counters.hot,
            Tier::Warm => &self.counters.warm,
            Tier::Cold => &self.counters.cold,
        };
        if hit { &t.0 } else { &t.1 }.fetch_add(1, Ordering::Relaxed);
    }

    fn start_bypass(&self) {
        let until = self.clock.now() + Duration::from_millis(self.cfg.bypass_ms);
        *self.bypass_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(until);
    }

    fn note_failure(&self, what: &str, e: &fred::error::Error) {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        let first = self.bypass_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner).is_none();
        self.start_bypass();
        if first {
            tracing::warn!(what, error = %e, "redis failed; serving from the store");
        } else {
            tracing::debug!(what, error = %e, "redis failed again");
        }
    }

    /// False while Redis is being skipped after a failure.
    fn usable(&self) -> bool {
        let mut until = self.bypass_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match *until {
            Some(t) if self.clock.now() < t => false,
            Some(_) => {
                *until = None;
                true
            }
            None => true,
        }
    }

    /// Starts a new key epoch when the last one can't be trusted. False if Redis failed.
    async fn ensure_epoch(&self) -> bool {
        if !self.dirty.load(Ordering::Acquire) {
            return true;
        }
        let key = format!("{}epoch", self.cfg.key_prefix);
        let current = self.epoch.load(Ordering::Acquire);
        let next = match self.pool.incr::<u64, _>(key.clone()).await {
            // The counter was lost (a restarted or evicting Redis): never reuse an epoch.
            Ok(e) if e <= current => {
                self.pool.set::<(), _, _>(key, current + 1, None, None, false).await.map(|()| current + 1)
            }
            other => other,
        };
        match next {
            Ok(epoch) => {
                self.epoch.store(epoch, Ordering::Release);
                self.dirty.store(false, Ordering::Release);
                tracing::debug!(epoch, "redis cache epoch");
                true
            }
            Err(e) => {
                self.note_failure("epoch", &e);
                false
            }
        }
    }

    /// Runs one Redis call, unless Redis is being skipped. `None` is a miss (counted).
    async fn redis<T>(
        &self,
        what: &str,
        call: impl Future<Output = Result<T, fred::error::Error>>,
    ) -> Option<T> {
        if !self.usable() {
            self.counters.bypassed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if !self.ensure_epoch().await {
            return None;
        }
        match call.await {
            Ok(v) => Some(v),
            Err(e) => {
                self.note_failure(what, &e);
                None
            }
        }
    }

    /// Runs `commands` as pipelines of at most [`PIPELINE_LEN`], spread over the pool. False if
    /// any failed (or Redis is being skipped).
    async fn pipelined(&self, what: &str, commands: Vec<Command>) -> bool {
        if commands.is_empty() {
            return true;
        }
        if !self.usable() {
            self.counters.bypassed.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        if !self.ensure_epoch().await {
            return false;
        }
        // Writes are not on a game call's path: they get the longer pipeline timeout.
        let options = self.long_options();
        let mut chunks: Vec<&[Command]> = Vec::new();
        let (mut start, mut weight) = (0, 0);
        for (i, c) in commands.iter().enumerate() {
            weight += c.weight();
            if weight >= PIPELINE_LEN || i + 1 == commands.len() {
                chunks.push(&commands[start..=i]);
                (start, weight) = (i + 1, 0);
            }
        }
        let mut pipelines = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            let pipeline = Pipeline::from(self.pool.next().with_options(&options));
            for c in chunk {
                // Queuing into a pipeline only fails on argument conversion, which these
                // types never fail; the real result comes from `all` below.
                let queued: Result<(), _> = match c {
                    Command::Set(k, v, ttl) => {
                        pipeline.set(k.as_str(), v.clone(), Some(ttl.clone()), None, false).await
                    }
                    Command::SetPositions(args) => {
                        // EVAL by hand: fred's pipelines have no `eval`.
                        let eval = CustomCommand::new_static("EVAL", ClusterHash::FirstKey, false);
                        pipeline.custom(eval, args.clone()).await
                    }
                    Command::Del(k) => pipeline.del(k.as_str()).await,
                    Command::Tag(tag, k) => {
                        let _: Result<(), _> = pipeline.sadd(tag.as_str(), k.as_str()).await;
                        pipeline
                            .expire(
                                tag.as_str(),
                                i64::try_from(self.cfg.cold_ttl_s).unwrap_or(i64::MAX),
                                None,
                            )
                            .await
                    }
                    Command::Publish(channel, v) => pipeline.publish(channel.as_str(), v.clone()).await,
                };
                drop(queued);
            }
            pipelines.push(pipeline);
        }
        let runs = pipelines.into_iter().map(|p| async move { p.all::<Value>().await });
        // One pipeline in flight per connection: more only queue up behind each other and run
        // into the command timeout.
        let results: Vec<_> =
            futures_util::stream::iter(runs).buffer_unordered(self.cfg.pool_size.max(1)).collect().await;
        match results.into_iter().find_map(Result::err) {
            None => true,
            Some(e) => {
                self.note_failure(what, &e);
                false
            }
        }
    }

    async fn invalidate_keys(&self, keys: Vec<String>) -> bool {
        let n = keys.len() as u64;
        let ok = self.pipelined("invalidate", keys.into_iter().map(Command::Del).collect()).await;
        if ok {
            self.counters.invalidated.fetch_add(n, Ordering::Relaxed);
        } else {
            self.dirty.store(true, Ordering::Release);
        }
        ok
    }

    async fn invalidate_tag(&self, tag: &str) -> bool {
        let key = self.tag_key(tag);
        match self.redis("invalidate_tag", self.eval(INVALIDATE_TAG, vec![key], vec![])).await {
            Some(n) => {
                self.counters.invalidated.fetch_add(n, Ordering::Relaxed);
                true
            }
            None => {
                self.dirty.store(true, Ordering::Release);
                false
            }
        }
    }

    /// Decodes a cached value; a value that does not decode is deleted and counted.
    async fn decode<T: DeserializeOwned>(&self, key: &str, v: &Value) -> Option<T> {
        let bytes = v.as_bytes()?;
        match terrarium_codec::decode(bytes, VALUE_LIMIT) {
            Ok(t) => Some(t),
            Err(e) => {
                self.counters.decode_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(key, error = %e, "undecodable cached value; deleting it");
                let _ = self.redis("delete", self.pool.del::<Value, _>(key)).await;
                None
            }
        }
    }

    /// Caches NPC records (warm) tagged by swarm, unless a write finished since `generation`
    /// was read. False when Redis failed.
    async fn fill_npcs(&self, records: &[NpcRecord], generation: u64) -> bool {
        let mut commands = Vec::with_capacity(records.len() * 2);
        let ttl = self.ttl(Tier::Warm);
        for r in records {
            let Ok(bytes) = terrarium_codec::encode(r) else { continue };
            let key = self.key("npc", r.id);
            commands.push(Command::Set(key.clone(), bytes, ttl.clone()));
            commands.push(Command::Tag(self.tag_key(&format!("swarm:{}", r.swarm)), key));
        }
        let ok = self.pipelined("fill", commands).await;
        if ok && self.generation.load(Ordering::Acquire) != generation {
            let keys = records.iter().map(|r| self.key("npc", r.id)).collect();
            self.invalidate_keys(keys).await;
        }
        ok
    }

    /// Positions from the hot tier for `ids`, in order (`None` where missing or on error).
    async fn positions(&self, ids: &[u64]) -> Vec<Option<PositionRow>> {
        if ids.is_empty() {
            return Vec::new();
        }
        let keys: Vec<String> = ids.iter().map(|&id| self.key("pos", id)).collect();
        let Some(Value::Array(values)) = self.redis("mget", self.pool.mget::<Value, _>(keys.clone())).await
        else {
            return vec![None; ids.len()];
        };
        let mut out = Vec::with_capacity(ids.len());
        for (key, v) in keys.iter().zip(values.iter()) {
            out.push(if v.is_null() { None } else { self.decode(key, v).await });
        }
        out.resize(ids.len(), None);
        for p in &out {
            self.count(Tier::Hot, p.is_some());
        }
        out
    }

    /// After a write: invalidation always; positions and events only when it succeeded.
    async fn after_write(&self, batches: &[WriteBatch], stored: bool) {
        let started = Instant::now();
        let mut stale: Vec<u64> = Vec::new();
        let mut latest: HashMap<u64, PositionRow> = HashMap::new();
        for b in batches {
            stale.extend(b.npcs.iter().map(|r| r.id).chain(b.removed.iter().copied()));
            for p in &b.positions {
                latest
                    .entry(p.npc_id)
                    .and_modify(|q| {
                        if p.tick >= q.tick {
                            *q = *p;
                        }
                    })
                    .or_insert(*p);
            }
            for id in &b.removed {
                latest.remove(id);
            }
        }
        let changed_npcs = !stale.is_empty();
        let mut commands = Vec::with_capacity(stale.len() + latest.len());
        if !stored {
            // It may or may not have been stored: forget everything it touched.
            stale.extend(latest.drain().map(|(id, _)| id));
        }
        for &id in &stale {
            commands.push(Command::Del(self.key("npc", id)));
            commands.push(Command::Del(self.key("pos", id)));
        }
        let hot_s = i64::try_from(self.cfg.hot_ttl_s).unwrap_or(i64::MAX);
        let latest: Vec<PositionRow> = latest.into_values().collect();
        for chunk in latest.chunks(POSITIONS_PER_CALL) {
            let mut args = Vec::with_capacity(3 + chunk.len() * 3);
            args.push(Value::from_static_str(SET_POSITIONS));
            args.push(Value::from(chunk.len() as i64 * 2));
            for p in chunk {
                args.push(Value::from(self.key("pos", p.npc_id)));
                args.push(Value::from(self.key("npc", p.npc_id)));
            }
            args.push(Value::from(hot_s));
            for p in chunk {
                // A position always encodes; an empty value would only be a miss later.
                args.push(Value::Bytes(terrarium_codec::encode(p).unwrap_or_default().into()));
            }
            commands.push(Command::SetPositions(args));
        }
        let mut published = 0;
        if stored && self.cfg.publish_events {
            for e in batches.iter().flat_map(|b| &b.events) {
                if let Ok(bytes) = terrarium_codec::encode(e) {
                    commands.push(Command::Publish(self.event_channel(&e.event_type), bytes));
                    published += 1;
                }
            }
        }
        let n_stale = stale.len() as u64 * 2;
        tracing::debug!(elapsed = ?started.elapsed(), "cache commands built");
        let (n_commands, started) = (commands.len(), Instant::now());
        let ok = self.pipelined("after_write", commands).await;
        tracing::debug!(n_commands, elapsed = ?started.elapsed(), ok, "cache updated after a write");
        if ok {
            self.counters.invalidated.fetch_add(n_stale, Ordering::Relaxed);
            self.counters.published.fetch_add(published, Ordering::Relaxed);
        }
        let lists_ok = !changed_npcs || self.invalidate_tag("lists").await;
        if !(ok && lists_ok) {
            self.dirty.store(true, Ordering::Release);
        }
    }
}

/// One command of a pipeline.
enum Command {
    Set(String, Vec<u8>, Expiration),
    /// [`SET_POSITIONS`] with its arguments (script, key count, keys, TTL, values): SET positions
    /// (hot tier) and cut the TTL of each NPC's cached record to at most the same, so a record
    /// never outlives the position that supersedes it.
    SetPositions(Vec<Value>),
    Del(String),
    /// Add a key to a tag set (and refresh the set's TTL).
    Tag(String, String),
    Publish(String, Vec<u8>),
}

impl Command {
    /// Keys it touches, for sizing pipelines.
    fn weight(&self) -> usize {
        match self {
            Self::SetPositions(args) => args.len() / 3,
            _ => 1,
        }
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
        let (npc_key, pos_key) = (self.key("npc", id), self.key("pos", id));
        if let Some(Value::Array(v)) =
            self.redis("get_npc", self.pool.mget::<Value, _>(vec![npc_key.clone(), pos_key.clone()])).await
            && v.len() == 2
        {
            let record: Option<NpcRecord> =
                if v[0].is_null() { None } else { self.decode(&npc_key, &v[0]).await };
            if let Some(mut record) = record {
                self.count(Tier::Warm, true);
                let pos: Option<PositionRow> =
                    if v[1].is_null() { None } else { self.decode(&pos_key, &v[1]).await };
                self.count(Tier::Hot, pos.is_some());
                if let Some(p) = pos
                    && p.tick >= record.updated_tick
                {
                    (record.x, record.y, record.z, record.updated_tick) = (p.x, p.y, p.z, p.tick);
                }
                return Ok(Some(record));
            }
        }
        self.count(Tier::Warm, false);
        let generation = self.generation.load(Ordering::Acquire);
        let found = self.inner.get_npc(id).await?;
        if let Some(record) = &found {
            self.fill_npcs(std::slice::from_ref(record), generation).await;
        }
        Ok(found)
    }

    async fn list_npcs(&self, filter: &NpcFilter, page: Page) -> Result<NpcPage, StorageError> {
        let request = terrarium_codec::encode(&(filter, page)).unwrap_or_default();
        let key = self.key("list", format_args!("{:016x}", terrarium_codec::checksum(&request)));
        if let Some(v) = self.redis("list_npcs", self.pool.get::<Value, _>(key.clone())).await
            && !v.is_null()
            && let Some(cached) = self.decode::<CachedPage>(&key, &v).await
            && cached.filter == *filter
            && cached.page == page
        {
            self.count(Tier::Warm, true);
            let mut result = cached.result;
            let ids: Vec<u64> = result.npcs.iter().map(|r| r.id).collect();
            for (r, p) in result.npcs.iter_mut().zip(self.positions(&ids).await) {
                if let Some(p) = p
                    && p.tick >= r.updated_tick
                {
                    (r.x, r.y, r.z, r.updated_tick) = (p.x, p.y, p.z, p.tick);
                }
            }
            return Ok(result);
        }
        self.count(Tier::Warm, false);
        let generation = self.generation.load(Ordering::Acquire);
        let result = self.inner.list_npcs(filter, page).await?;
        let cached = CachedPage { filter: filter.clone(), page, result };
        if let Ok(bytes) = terrarium_codec::encode(&cached) {
            // Hot tier: the page's positions are refreshed from the hot tier, so it must not
            // outlive them.
            let mut commands = vec![
                Command::Set(key.clone(), bytes, self.ttl(Tier::Hot)),
                Command::Tag(self.tag_key("lists"), key.clone()),
            ];
            if let Some(swarm) = filter.swarm {
                commands.push(Command::Tag(self.tag_key(&format!("swarm:{swarm}")), key.clone()));
            }
            if self.pipelined("fill_list", commands).await
                && self.generation.load(Ordering::Acquire) != generation
            {
                self.invalidate_keys(vec![key]).await;
            }
        }
        Ok(cached.result)
    }

    async fn load_npcs(&self) -> Result<Vec<NpcRecord>, StorageError> {
        self.inner.load_npcs().await
    }
}

/// Escapes `*?[]\` so a prefix matches only itself in a SCAN pattern.
fn escape_glob(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn failed(e: fred::error::Error) -> StorageError {
    StorageError::failed(BACKEND, e)
}

fn unavailable(e: fred::error::Error) -> StorageError {
    StorageError::unavailable(BACKEND, e)
}
