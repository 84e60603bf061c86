//! `PgStore`: the PostgreSQL adapter (feature `postgres`): a deadpool-postgres pool, versioned
//! migrations, COPY BINARY for history, set-based upserts for current state, exactly once per
//! batch id, cursor-paginated reads and a retention job.

mod checkpoint;
mod migrate;
mod read;
mod retention;
mod write;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime};
use hdrhistogram::Histogram;

pub use migrate::MigrationReport;
pub use read::{EventQuery, RowCounts};
pub use retention::RetentionReport;

use crate::{
    NpcFilter, NpcPage, NpcRecord, Page, PostgresConfig, Storage, StorageError, WriteBatch, is_identifier,
};

const BACKEND: &str = "postgres";

/// Connections of a pool, and how long statements took.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PoolMetrics {
    /// Most connections allowed.
    pub max_size: usize,
    /// Connections handed out now.
    pub active: usize,
    /// Connections open and free now.
    pub idle: usize,
    /// Callers waiting for a connection now.
    pub waiting: usize,
    /// Median time of a store call (one transaction or query, pool wait included), µs.
    pub query_p50_us: u64,
    /// 95th percentile, µs.
    pub query_p95_us: u64,
    /// 99th percentile, µs.
    pub query_p99_us: u64,
    /// Calls measured.
    pub queries: u64,
}

/// Counters of a [`PgStore`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PgMetrics {
    /// The pool and statement times.
    pub pool: PoolMetrics,
    /// Batches committed.
    pub batches_applied: u64,
    /// Batches skipped because they had been applied before (replays).
    pub batches_skipped: u64,
    /// Position history rows copied.
    pub position_rows: u64,
    /// Metric rows copied.
    pub metric_rows: u64,
    /// Event rows offered (an event id already stored is not stored again).
    pub event_rows: u64,
    /// Rows inserted or replaced in `npcs`.
    pub npc_upserts: u64,
    /// `npcs` rows whose position was updated.
    pub npc_position_updates: u64,
    /// Rows deleted from `npcs`.
    pub npc_removals: u64,
    /// Rows deleted by the retention job, all tables.
    pub retention_deleted: u64,
    /// Retention runs that failed (the job goes on at the next interval).
    pub retention_failures: u64,
}

/// The PostgreSQL store.
///
/// Tables (schema from versioned migrations, see `postgres/migrations/`): `npcs` (the registry:
/// role, status, swarm, health, inventory; never touched by a position), `position_blocks`
/// (current positions, one row per block of 64 ids holding arrays), `position_history`
/// (hourly partitions, one row per block per flush tick) and `metrics` (append-only history,
/// written with COPY BINARY), `events` (unique by event id), `applied_batches` (the exactly-once
/// high-water mark per producer run), `schema_migrations`. Views `npc_positions`,
/// `npc_current_positions` and `npcs_now` show one row per NPC to people. All live in one schema ([`PostgresConfig::schema`]), set as the
/// connections' `search_path`.
///
/// A `write` is one transaction: it locks the runs' rows in `applied_batches`, drops the
/// batches already applied, copies history, upserts current state set-based, and raises the
/// high-water mark, so a batch lands exactly once whatever is retried. Cheap to clone (the pool
/// is shared).
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    /// Connections readers may hold at once: the pool less the writer's reserve, so a burst of
    /// reads can never leave the write-behind waiting for a connection.
    readers: tokio::sync::Semaphore,
    schema: String,
    statement_timeout: Duration,
    wait_timeout: Duration,
    query_us: Mutex<Histogram<u64>>,
    counters: Counters,
    /// End of the newest history partition known to exist (server time).
    partitions_until: Mutex<Option<std::time::SystemTime>>,
}

#[derive(Default)]
struct Counters {
    batches_applied: AtomicU64,
    batches_skipped: AtomicU64,
    position_rows: AtomicU64,
    metric_rows: AtomicU64,
    event_rows: AtomicU64,
    npc_upserts: AtomicU64,
    npc_position_updates: AtomicU64,
    npc_removals: AtomicU64,
    retention_deleted: AtomicU64,
    retention_failures: AtomicU64,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("schema", &self.inner.schema)
            .field("pool", &self.pool_metrics())
            .finish()
    }
}

impl PgStore {
    /// Opens the pool (`min_size` connections at once), then brings the schema up to date.
    ///
    /// # Errors
    /// [`StorageError::Failed`] for a malformed URL or schema name, or a schema newer than this
    /// build; [`StorageError::Unavailable`] / [`StorageError::Timeout`] when the server can't
    /// be reached; [`StorageError::Tls`] when the server offers no TLS though the settings
    /// require it, or its certificate is refused.
    pub async fn connect(cfg: &PostgresConfig) -> Result<Self, StorageError> {
        let store = Self::connect_lazy(cfg)?;
        let mut warm = Vec::with_capacity(cfg.min_size);
        for _ in 0..cfg.min_size {
            warm.push(store.client().await?);
        }
        drop(warm);
        store.migrate().await?;
        Ok(store)
    }

    /// Builds the pool without connecting and without migrating: connections open on first use,
    /// and [`PgStore::migrate`] must run before the first write. TLS as
    /// [`PostgresConfig::tls`] and the URL's `sslmode` / `sslrootcert` ask.
    ///
    /// # Errors
    /// [`StorageError::Failed`] for a malformed URL, [`StorageError::Rejected`] for a schema
    /// name that is not a plain identifier, [`StorageError::Config`] for a bad `sslmode` or a
    /// CA file that can't be read.
    pub fn connect_lazy(cfg: &PostgresConfig) -> Result<Self, StorageError> {
        if !is_identifier(&cfg.schema) {
            return Err(StorageError::Rejected {
                backend: BACKEND,
                reason: format!("schema {:?} is not a plain identifier", cfg.schema),
            });
        }
        let tls = crate::tls::PgTls::from_config(cfg)?;
        let mut pg: tokio_postgres::Config = tls.url.parse().map_err(|e| StorageError::failed(BACKEND, e))?;
        pg.ssl_mode(tls.driver_mode());
        let statement_timeout = cfg.statement_timeout().unwrap_or(Duration::ZERO);
        // The schema is a checked identifier (no quoting needed); both values are ours.
        pg.options(format!(
            "-c search_path={} -c statement_timeout={}",
            cfg.schema,
            statement_timeout.as_millis()
        ));
        pg.application_name("terrarium");
        pg.connect_timeout(Duration::from_millis(cfg.connect_timeout_ms));
        let manager = Manager::from_config(
            pg,
            tls.connector()?,
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let wait_timeout = Duration::from_millis(cfg.wait_timeout_ms);
        let pool = Pool::builder(manager)
            .max_size(cfg.max_size)
            .wait_timeout(Some(wait_timeout))
            .create_timeout(Some(Duration::from_millis(cfg.create_timeout_ms)))
            .recycle_timeout(Some(Duration::from_millis(cfg.recycle_timeout_ms)))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StorageError::failed(BACKEND, e))?;
        let query_us = Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("bounds are valid constants");
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                readers: tokio::sync::Semaphore::new(reader_slots(cfg.max_size)),
                schema: cfg.schema.clone(),
                statement_timeout,
                wait_timeout,
                query_us: Mutex::new(query_us),
                counters: Counters::default(),
                partitions_until: Mutex::new(None),
            }),
        })
    }

    /// The schema holding the tables.
    #[must_use]
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// Applies the migrations this build knows and the database lacks (see [`MigrationReport`]).
    /// [`PgStore::connect`] already did; running it again changes nothing.
    ///
    /// # Errors
    /// As [`PgStore::connect`].
    pub async fn migrate(&self) -> Result<MigrationReport, StorageError> {
        let mut client = self.client().await?;
        migrate::run(self, &mut client).await
    }

    /// Deletes the schema and everything in it. For tests and tools; the store is unusable
    /// afterwards.
    ///
    /// # Errors
    /// When the server can't be reached.
    pub async fn drop_schema(&self) -> Result<(), StorageError> {
        let client = self.client().await?;
        // The schema is a checked identifier.
        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.inner.schema);
        client.batch_execute(&sql).await.map_err(|e| self.pg_error(e))
    }

    /// Connections and statement times.
    #[must_use]
    pub fn pool_metrics(&self) -> PoolMetrics {
        let s = self.inner.pool.status();
        let h = self.inner.query_us.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        PoolMetrics {
            max_size: s.max_size,
            active: s.size.saturating_sub(s.available),
            idle: s.available,
            waiting: s.waiting,
            query_p50_us: h.value_at_quantile(0.50),
            query_p95_us: h.value_at_quantile(0.95),
            query_p99_us: h.value_at_quantile(0.99),
            queries: h.len(),
        }
    }

    /// Every counter.
    #[must_use]
    pub fn metrics(&self) -> PgMetrics {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PgMetrics {
            pool: self.pool_metrics(),
            batches_applied: get(&c.batches_applied),
            batches_skipped: get(&c.batches_skipped),
            position_rows: get(&c.position_rows),
            metric_rows: get(&c.metric_rows),
            event_rows: get(&c.event_rows),
            npc_upserts: get(&c.npc_upserts),
            npc_position_updates: get(&c.npc_position_updates),
            npc_removals: get(&c.npc_removals),
            retention_deleted: get(&c.retention_deleted),
            retention_failures: get(&c.retention_failures),
        }
    }

    /// Closes the pool: calls after this fail with [`StorageError::Unavailable`].
    pub fn close(&self) {
        self.inner.pool.close();
    }

    async fn client(&self) -> Result<Object, StorageError> {
        self.inner.pool.get().await.map_err(|e| match e {
            PoolError::Timeout(_) => StorageError::Timeout(self.inner.wait_timeout),
            PoolError::Backend(e) => self.pg_error(e),
            other => StorageError::unavailable(BACKEND, other),
        })
    }

    /// A connection for a read: waits (up to the pool's wait timeout) for one of the reader
    /// slots first, so readers never take the connections kept for the writer.
    async fn read_client(&self) -> Result<ReadClient<'_>, StorageError> {
        let wait = self.inner.wait_timeout;
        let permit = match tokio::time::timeout(wait, self.inner.readers.acquire()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(closed)) => return Err(StorageError::unavailable(BACKEND, closed)),
            Err(_) => return Err(StorageError::Timeout(wait)),
        };
        Ok(ReadClient { client: self.client().await?, _permit: permit })
    }

    /// Times one store call into the query histogram.
    async fn timed<T>(&self, call: impl Future<Output = Result<T, StorageError>>) -> Result<T, StorageError> {
        let start = Instant::now();
        let result = call.await;
        let us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.inner
            .query_us
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .saturating_record(us.max(1));
        result
    }

    /// Sorts a driver error into transient (connection lost, server restarting, overloaded,
    /// serialization conflict), a timeout (statement timeout), or a failure retrying won't fix.
    fn pg_error(&self, e: tokio_postgres::Error) -> StorageError {
        if let Some(code) = e.code() {
            let c = code.code();
            if c == "57014" {
                // query_canceled: our statement_timeout (nothing else cancels our queries).
                return StorageError::Timeout(self.inner.statement_timeout);
            }
            let transient = c.starts_with("08") // connection exception
                || c.starts_with("53") // insufficient resources (too many connections, disk full)
                || c.starts_with("57P") // admin/crash shutdown, cannot connect now
                || matches!(c, "40001" | "40P01" | "55P03" | "58030")
                || is_outage(c);
            return if transient {
                StorageError::unavailable(BACKEND, e)
            } else {
                StorageError::failed(BACKEND, e)
            };
        }
        let io = std::error::Error::source(&e).is_some_and(<dyn std::error::Error>::is::<std::io::Error>);
        // tokio-postgres's error kinds are private; these messages are its transport failures.
        let transport = matches!(
            e.to_string().as_str(),
            "error communicating with the server"
                | "unexpected message from server"
                | "error connecting to server"
                | "error parsing response from server"
                | "error encoding message to server"
        );
        if e.to_string() == "error performing TLS handshake" {
            // No TLS offered where required, or a certificate refused: an outage until someone
            // fixes the server or the settings.
            StorageError::Tls { backend: BACKEND, reason: crate::tls::error_chain(&e) }
        } else if e.to_string() == "timeout waiting for server" {
            StorageError::Timeout(self.inner.statement_timeout)
        } else if e.is_closed() || io || transport {
            StorageError::unavailable(BACKEND, e)
        } else {
            StorageError::failed(BACKEND, e)
        }
    }
}

impl Storage for PgStore {
    fn name(&self) -> &'static str {
        BACKEND
    }

    async fn write(&self, batches: &[WriteBatch]) -> Result<(), StorageError> {
        self.timed(self.write_batches(batches)).await
    }

    async fn get_npc(&self, id: u64) -> Result<Option<NpcRecord>, StorageError> {
        self.timed(self.read_npc(id)).await
    }

    async fn list_npcs(&self, filter: &NpcFilter, page: Page) -> Result<NpcPage, StorageError> {
        self.timed(self.read_page(filter, page)).await
    }

    async fn load_npcs(&self) -> Result<Vec<NpcRecord>, StorageError> {
        self.timed(self.read_all()).await
    }
}

/// Closes `client` instead of handing it back to the pool. A connection keeps buffers the size
/// of the largest message it sent or received (tokio-postgres's encoding buffer and its
/// codec's) for as long as it lives: after a checkpoint of a million NPCs, up to 200 MB per
/// pooled connection, for good (heaptrack; BENCHMARKS.md, "Eighth pass"). The next call opens
/// a new one.
fn discard(client: Object) {
    drop(Object::take(client));
}

/// SQLSTATEs that every call gets alike until someone fixes the server or its settings (a
/// credential rotation, a failover to a read-only standby, revoked rights, a dropped database
/// or schema): an outage, not a bad batch. They are transient, so the breaker opens and the
/// write-behind keeps the batches (memory, then outbox) and retries with backoff, instead of
/// giving each batch up after a few tries (issue 13, defect 4).
fn is_outage(code: &str) -> bool {
    code.starts_with("28") // invalid authorization (28000), invalid password (28P01)
        || matches!(
            code,
            "25006" // read_only_sql_transaction: a standby, or default_transaction_read_only
                | "42501" // insufficient_privilege
                | "3D000" // invalid_catalog_name: the database is gone
                | "3F000" // invalid_schema_name
                | "42P01" // undefined_table: our statements name only our own tables
        )
}

/// Connections held back from readers for the writer: a quarter of the pool (at least one once
/// the pool has two).
#[must_use]
fn writer_reserve(max_size: usize) -> usize {
    if max_size < 2 { 0 } else { (max_size / 4).max(1) }
}

/// Reader slots of a pool of `max_size`.
fn reader_slots(max_size: usize) -> usize {
    max_size - writer_reserve(max_size)
}

/// A pooled connection held by a reader, with its reader slot.
struct ReadClient<'a> {
    client: Object,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl std::ops::Deref for ReadClient<'_> {
    type Target = Object;
    fn deref(&self) -> &Object {
        &self.client
    }
}

/// NPC ids and ticks are stored as `bigint`: values above `i64::MAX` are refused, not wrapped
/// (ordering and pagination depend on them).
fn to_i64(what: &str, v: u64) -> Result<i64, StorageError> {
    i64::try_from(v).map_err(|_| StorageError::Rejected {
        backend: BACKEND,
        reason: format!("{what} {v} does not fit a bigint"),
    })
}

/// Opaque ids (events, correlations, producer runs) are stored bit for bit.
fn bits(v: u64) -> i64 {
    i64::from_le_bytes(v.to_le_bytes())
}

fn unbits(v: i64) -> u64 {
    u64::from_le_bytes(v.to_le_bytes())
}
