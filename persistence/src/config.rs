//! `StorageConfig`: the `[storage]` section of the configuration file, with defaults and range
//! checks. Every key is listed, with its default, in `assets/config/default.toml`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::StorageConfigError;
use terrarium_codec::in_range;

mod write_behind;

pub use write_behind::WriteBehindConfig;

/// Where world state goes, and the layers in front of it.
///
/// The stack built from it is, outermost first: L1 → Redis (when `redis.url` is set) → Retry →
/// CircuitBreaker → PostgreSQL or memory (see [`crate::StorageStack`]).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Which store holds the data.
    pub backend: BackendKind,
    /// PostgreSQL (used when `backend = "postgres"`).
    pub postgres: PostgresConfig,
    /// The embedded on-disk store (used when `backend = "embedded"`).
    pub embedded: EmbeddedConfig,
    /// Checkpoints of the whole world, what a restart resumes from.
    pub checkpoint: CheckpointConfig,
    /// Deleting old history and events (PostgreSQL and the embedded store).
    pub retention: RetentionConfig,
    /// The Redis cache (off while `url` is empty).
    pub redis: RedisConfig,
    /// The in-process cache.
    pub l1: L1Config,
    /// The circuit breaker in front of the store.
    pub breaker: BreakerConfig,
    /// Retries of transient failures.
    pub retry: RetryConfig,
}

/// The store behind the caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// [`crate::MemoryStore`]: in-process, nothing outlives the process.
    #[default]
    Memory,
    /// `PgStore` (feature `postgres`).
    Postgres,
    /// `FileStore` (feature `file-store`): SQLite in one file on local disk, no server.
    Embedded,
}

impl BackendKind {
    /// The name used in the config file (`memory`, `postgres`).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Postgres => "postgres",
            Self::Embedded => "embedded",
        }
    }
}

/// PostgreSQL connection pool and statements. `Debug` shows the URL without its password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// `postgres://user[:password]@host:port/database`. Required with `backend = "postgres"`.
    pub url: String,
    /// Schema holding the tables: a plain lower-case identifier (`[a-z_][a-z0-9_]*`, ≤ 63 bytes).
    pub schema: String,
    /// Most connections open at once, 1 ..= 1000.
    pub max_size: usize,
    /// Connections opened at start-up and kept, 0 ..= `max_size`.
    pub min_size: usize,
    /// Opening a TCP connection, milliseconds, 1 ..= 600 000.
    pub connect_timeout_ms: u64,
    /// Waiting for a free connection from the pool, milliseconds, 1 ..= 600 000.
    pub wait_timeout_ms: u64,
    /// Opening a pooled connection (connect + start-up), milliseconds, 1 ..= 600 000.
    pub create_timeout_ms: u64,
    /// Checking a returned connection before reuse, milliseconds, 1 ..= 600 000.
    pub recycle_timeout_ms: u64,
    /// Server-side limit per statement, milliseconds, 0 (none) ..= 3 600 000.
    pub statement_timeout_ms: u64,
    /// TLS to the server, libpq's `sslmode` values: `disable`, `prefer` (the default: TLS when
    /// the server offers it, certificate not checked), `require` (TLS or no connection,
    /// certificate not checked), `verify-ca` (the certificate must chain to a trusted CA),
    /// `verify-full` (and name the host of the URL). An `sslmode` in the URL applies too: the
    /// stricter of the two wins. Only `verify-full` stops a machine in the middle.
    pub tls: PgTlsMode,
    /// PEM file of the CA certificates trusted for the server's certificate (a managed
    /// PostgreSQL's CA bundle); empty: Mozilla's root certificates, compiled in. Same as
    /// `sslrootcert` in the URL (give one or the other, or the same file). With `prefer` or
    /// `require`, a CA file makes the certificate checked as with `verify-ca` (as libpq does).
    pub tls_ca_file: std::path::PathBuf,
}

/// How the connection to PostgreSQL uses TLS ([`PostgresConfig::tls`]): libpq's `sslmode`
/// values, in order of strictness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PgTlsMode {
    /// No TLS.
    Disable,
    /// TLS when the server offers it, else plain; the certificate is not checked.
    #[default]
    Prefer,
    /// TLS or no connection; the certificate is not checked (encrypts, but does not stop a
    /// machine in the middle).
    Require,
    /// TLS, and the certificate must chain to a trusted CA (any host name).
    VerifyCa,
    /// TLS, the certificate must chain to a trusted CA and name the host connected to.
    VerifyFull,
}

impl PgTlsMode {
    /// The name used in the configuration and in libpq's `sslmode`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// The mode named `s` (libpq's `sslmode` values; `allow` is taken as `prefer`).
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "disable" => Self::Disable,
            "allow" | "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => return None,
        })
    }
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            schema: "terrarium".into(),
            max_size: 20,
            min_size: 2,
            connect_timeout_ms: 2_000,
            wait_timeout_ms: 5_000,
            create_timeout_ms: 5_000,
            recycle_timeout_ms: 2_000,
            statement_timeout_ms: 30_000,
            tls: PgTlsMode::Prefer,
            tls_ca_file: std::path::PathBuf::new(),
        }
    }
}

/// The embedded store: one SQLite database file (WAL mode, so also `<path>-wal` and
/// `<path>-shm` beside it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedConfig {
    /// The database file; its directory is created when missing.
    pub path: std::path::PathBuf,
    /// How long a statement waits for another process's lock, milliseconds, 0 ..= 600 000.
    pub busy_timeout_ms: u64,
    /// Page cache per connection, MiB, 1 ..= 16 384. With the default (16) a million NPCs
    /// stored with the same lag as with 64, in 54 MB less resident memory (BENCHMARKS.md,
    /// "Eighth pass").
    pub cache_mib: u64,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        Self { path: "terrarium-data/terrarium.db".into(), busy_timeout_ms: 5_000, cache_mib: 16 }
    }
}

/// Checkpoints: the whole world (the engine's snapshot frame) stored when a new world is
/// spawned, every `every_ticks` ticks and at every clean shutdown, with the batch it follows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Ticks between checkpoints, 0 (only a new world's first and at a clean shutdown)
    /// ..= 10 000 000. Default 1200
    /// (a minute at 20 Hz).
    pub every_ticks: u64,
    /// Checkpoints kept in the store, 1 ..= 100 (the newest; older ones are deleted).
    pub keep: u32,
    /// Longest wait at a clean shutdown for the batches a final checkpoint follows,
    /// milliseconds, 1 ..= 3 600 000.
    pub drain_timeout_ms: u64,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self { every_ticks: 1200, keep: 2, drain_timeout_ms: 120_000 }
    }
}

/// The retention job: history (`npc_positions`, `metrics`) and `events` older than `max_age_s`
/// are deleted, `chunk_rows` rows per statement, every `interval_s`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Run the job in the background (PostgreSQL only).
    pub enabled: bool,
    /// Age after which rows go, seconds, 60 ..= 3 650 days. Default 7 days.
    pub max_age_s: u64,
    /// Rows deleted per statement, 1 ..= 1 000 000 (bounds lock time and WAL per step).
    pub chunk_rows: u32,
    /// Seconds between runs, 1 ..= 86 400.
    pub interval_s: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self { enabled: true, max_age_s: 7 * 24 * 3600, chunk_rows: 10_000, interval_s: 3600 }
    }
}

/// The Redis cache: TTL tiers, timeouts and what it publishes. `Debug` shows the URL without
/// its password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://[[user]:password@]host:port[/db]`, or `rediss://…` for TLS (the certificate
    /// must chain to a trusted CA and name the host of the URL); empty turns the Redis layer
    /// off.
    pub url: String,
    /// PEM file of the CA certificates trusted for a `rediss://` server's certificate; empty:
    /// Mozilla's root certificates, compiled in. Only with a `rediss://` URL.
    pub tls_ca_file: std::path::PathBuf,
    /// Connections, 1 ..= 64.
    pub pool_size: usize,
    /// Prepended to every key and channel (1 ..= 64 printable bytes, no spaces), so several
    /// worlds can share one server.
    pub key_prefix: String,
    /// Hot tier (latest positions), seconds, 1 ..= 86 400.
    pub hot_ttl_s: u64,
    /// Warm tier (NPC registry, status, listings), seconds, 1 ..= 86 400.
    pub warm_ttl_s: u64,
    /// Cold tier (learning profiles and other slow-changing values), seconds, 1 ..= 86 400.
    pub cold_ttl_s: u64,
    /// Longest wait for one Redis command, milliseconds, 1 ..= 60 000. A slower answer counts as
    /// an error (a miss).
    pub command_timeout_ms: u64,
    /// Longest wait for a pipeline of cache updates after a write (invalidations, positions,
    /// events), milliseconds, 1 ..= 600 000. Longer than `command_timeout_ms`: it runs on the
    /// writer's path, not a game call's.
    pub pipeline_timeout_ms: u64,
    /// Longest wait for the first connection at start-up, milliseconds, 1 ..= 600 000. The game
    /// starts anyway (uncached) if Redis is not there.
    pub connect_timeout_ms: u64,
    /// After a Redis error, go straight to the store for this long, milliseconds, 0 ..= 600 000.
    pub bypass_ms: u64,
    /// NPCs cached at start-up, 0 (off) ..= 10 000 000.
    pub warm_on_start: usize,
    /// Publish each written event on its type's channel.
    pub publish_events: bool,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            tls_ca_file: std::path::PathBuf::new(),
            pool_size: 4,
            key_prefix: "terrarium:".into(),
            hot_ttl_s: 60,
            warm_ttl_s: 300,
            cold_ttl_s: 600,
            command_timeout_ms: 250,
            pipeline_timeout_ms: 5_000,
            connect_timeout_ms: 2_000,
            bypass_ms: 1_000,
            warm_on_start: 10_000,
            publish_events: true,
        }
    }
}

/// The in-process cache of NPC records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct L1Config {
    /// Most records kept, 0 (off) ..= 100 000 000.
    pub capacity: u64,
    /// How long a record may be served, milliseconds, 1 ..= 3 600 000.
    pub ttl_ms: u64,
}

impl Default for L1Config {
    fn default() -> Self {
        Self { capacity: 100_000, ttl_ms: 5_000 }
    }
}

/// When the circuit breaker opens and closes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Consecutive failures that open the circuit, 1 ..= 1000.
    pub failure_threshold: u32,
    /// Consecutive successes in half-open that close it again, 1 ..= 1000.
    pub success_threshold: u32,
    /// A call slower than this fails with a timeout, milliseconds, 1 ..= 600 000.
    /// (`load_npcs` is exempt: it grows with the world; the statement timeout bounds it.)
    pub call_timeout_ms: u64,
    /// How long the circuit stays open before a trial call, milliseconds, 1 ..= 3 600 000.
    pub reset_timeout_ms: u64,
    /// The slowest rate, in rows per second, a write is expected to reach: a write may take
    /// `call_timeout_ms` plus its rows at this rate, so a write whose size grows with the world
    /// still fits its timeout. 1 ..= 1 000 000 000.
    pub write_rows_per_s: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            success_threshold: 2,
            call_timeout_ms: 5_000,
            reset_timeout_ms: 60_000,
            write_rows_per_s: 20_000,
        }
    }
}

/// How transient failures are retried: exponential backoff with jitter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Tries in all, the first one included, 1 ..= 20.
    pub max_attempts: u32,
    /// Delay before the first retry, milliseconds, 1 ..= 60 000; doubles for each later retry.
    pub base_delay_ms: u64,
    /// Longest delay, milliseconds, `base_delay_ms` ..= 600 000.
    pub max_delay_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self { max_attempts: 3, base_delay_ms: 50, max_delay_ms: 2_000 }
    }
}

impl StorageConfig {
    /// Checks every value against its range.
    ///
    /// # Errors
    /// The first value out of range, by its dotted key under `storage.`.
    pub fn validate(&self) -> Result<(), StorageConfigError> {
        let pg = &self.postgres;
        if !is_identifier(&pg.schema) {
            return Err(StorageConfigError::Invalid {
                key: "storage.postgres.schema".into(),
                reason: format!(
                    "{:?} is not a plain identifier ([a-z_][a-z0-9_]*, at most 63 bytes)",
                    pg.schema
                ),
            });
        }
        in_range("storage.postgres.max_size", pg.max_size, &(1..=1000))?;
        in_range("storage.postgres.min_size", pg.min_size, &(0..=pg.max_size))?;
        in_range("storage.postgres.connect_timeout_ms", pg.connect_timeout_ms, &(1..=600_000))?;
        in_range("storage.postgres.wait_timeout_ms", pg.wait_timeout_ms, &(1..=600_000))?;
        in_range("storage.postgres.create_timeout_ms", pg.create_timeout_ms, &(1..=600_000))?;
        in_range("storage.postgres.recycle_timeout_ms", pg.recycle_timeout_ms, &(1..=600_000))?;
        in_range("storage.postgres.statement_timeout_ms", pg.statement_timeout_ms, &(0..=3_600_000))?;
        let emb = &self.embedded;
        if emb.path.as_os_str().is_empty() {
            return Err(StorageConfigError::Invalid {
                key: "storage.embedded.path".into(),
                reason: "must name a file".into(),
            });
        }
        in_range("storage.embedded.busy_timeout_ms", emb.busy_timeout_ms, &(0..=600_000))?;
        in_range("storage.embedded.cache_mib", emb.cache_mib, &(1..=16_384))?;
        let cp = &self.checkpoint;
        in_range("storage.checkpoint.every_ticks", cp.every_ticks, &(0..=10_000_000))?;
        in_range("storage.checkpoint.keep", cp.keep, &(1..=100))?;
        in_range("storage.checkpoint.drain_timeout_ms", cp.drain_timeout_ms, &(1..=3_600_000))?;
        let ret = &self.retention;
        in_range("storage.retention.max_age_s", ret.max_age_s, &(60..=3650 * 24 * 3600))?;
        in_range("storage.retention.chunk_rows", ret.chunk_rows, &(1..=1_000_000))?;
        in_range("storage.retention.interval_s", ret.interval_s, &(1..=86_400))?;
        let r = &self.redis;
        in_range("storage.redis.pool_size", r.pool_size, &(1..=64))?;
        if !r.tls_ca_file.as_os_str().is_empty() && !r.url.is_empty() && !r.url.starts_with("rediss://") {
            return Err(StorageConfigError::Invalid {
                key: "storage.redis.tls_ca_file".into(),
                reason: "is set but storage.redis.url is not a rediss:// (TLS) URL".into(),
            });
        }
        if r.key_prefix.is_empty()
            || r.key_prefix.len() > 64
            || !r.key_prefix.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(StorageConfigError::Invalid {
                key: "storage.redis.key_prefix".into(),
                reason: format!("{:?} must be 1 ..= 64 printable ASCII bytes without spaces", r.key_prefix),
            });
        }
        in_range("storage.redis.hot_ttl_s", r.hot_ttl_s, &(1..=86_400))?;
        in_range("storage.redis.warm_ttl_s", r.warm_ttl_s, &(1..=86_400))?;
        in_range("storage.redis.cold_ttl_s", r.cold_ttl_s, &(1..=86_400))?;
        in_range("storage.redis.command_timeout_ms", r.command_timeout_ms, &(1..=60_000))?;
        in_range("storage.redis.pipeline_timeout_ms", r.pipeline_timeout_ms, &(1..=600_000))?;
        in_range("storage.redis.connect_timeout_ms", r.connect_timeout_ms, &(1..=600_000))?;
        in_range("storage.redis.bypass_ms", r.bypass_ms, &(0..=600_000))?;
        in_range("storage.redis.warm_on_start", r.warm_on_start, &(0..=10_000_000))?;
        in_range("storage.l1.capacity", self.l1.capacity, &(0..=100_000_000))?;
        in_range("storage.l1.ttl_ms", self.l1.ttl_ms, &(1..=3_600_000))?;
        let b = &self.breaker;
        in_range("storage.breaker.failure_threshold", b.failure_threshold, &(1..=1000))?;
        in_range("storage.breaker.success_threshold", b.success_threshold, &(1..=1000))?;
        in_range("storage.breaker.call_timeout_ms", b.call_timeout_ms, &(1..=600_000))?;
        in_range("storage.breaker.reset_timeout_ms", b.reset_timeout_ms, &(1..=3_600_000))?;
        in_range("storage.breaker.write_rows_per_s", b.write_rows_per_s, &(1..=1_000_000_000))?;
        let rt = &self.retry;
        in_range("storage.retry.max_attempts", rt.max_attempts, &(1..=20))?;
        in_range("storage.retry.base_delay_ms", rt.base_delay_ms, &(1..=60_000))?;
        in_range("storage.retry.max_delay_ms", rt.max_delay_ms, &(rt.base_delay_ms..=600_000))?;
        Ok(())
    }
}

impl PostgresConfig {
    /// [`PostgresConfig::statement_timeout_ms`] as a duration (`None` when 0).
    #[must_use]
    pub fn statement_timeout(&self) -> Option<Duration> {
        (self.statement_timeout_ms > 0).then(|| Duration::from_millis(self.statement_timeout_ms))
    }
}

/// True for a plain lower-case SQL identifier that needs no quoting: `[a-z_][a-z0-9_]*`, at most
/// 63 bytes (PostgreSQL's limit). Schema names are checked with it before they reach any SQL.
#[must_use]
pub fn is_identifier(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_issue() {
        let c = StorageConfig::default();
        c.validate().unwrap();
        assert_eq!((c.postgres.max_size, c.postgres.connect_timeout_ms), (20, 2000));
        assert_eq!((c.redis.hot_ttl_s, c.redis.warm_ttl_s, c.redis.cold_ttl_s), (60, 300, 600));
        assert_eq!((c.breaker.failure_threshold, c.breaker.success_threshold), (5, 2));
        assert_eq!((c.breaker.call_timeout_ms, c.breaker.reset_timeout_ms), (5_000, 60_000));
        assert_eq!(c.retry.max_attempts, 3);
        assert_eq!(c.retention.max_age_s, 7 * 24 * 3600);
    }

    #[test]
    fn out_of_range_values_name_their_key() {
        let mut c = StorageConfig::default();
        c.postgres.min_size = 30;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("storage.postgres.min_size") && e.contains("0 ..= 20"), "{e}");
        let mut c = StorageConfig::default();
        c.retry.max_delay_ms = 10;
        assert!(c.validate().unwrap_err().to_string().contains("storage.retry.max_delay_ms"));
    }

    #[test]
    fn schema_must_be_a_plain_identifier() {
        for bad in ["", "Public", "a-b", "x; drop table npcs", "9lives", &"a".repeat(64)] {
            let mut c = StorageConfig::default();
            c.postgres.schema = bad.into();
            assert!(c.validate().is_err(), "{bad:?} accepted");
        }
        assert!(is_identifier("test_0a1b"));
    }

    #[test]
    fn tls_settings_parse_and_a_redis_ca_file_needs_rediss() {
        let c: StorageConfig =
            toml::from_str("[postgres]\ntls = \"verify-full\"\ntls_ca_file = \"/ca.pem\"\n").unwrap();
        assert_eq!(
            (c.postgres.tls, c.postgres.tls_ca_file.to_str()),
            (PgTlsMode::VerifyFull, Some("/ca.pem"))
        );
        assert!(toml::from_str::<StorageConfig>("[postgres]\ntls = \"verify\"\n").is_err());
        assert!(
            PgTlsMode::Require < PgTlsMode::VerifyCa && PgTlsMode::parse("allow") == Some(PgTlsMode::Prefer)
        );
        let mut c = StorageConfig::default();
        c.redis.url = "redis://cache:6379".into();
        c.redis.tls_ca_file = "/ca.pem".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("storage.redis.tls_ca_file"), "{e}");
        c.redis.url = "rediss://cache:6380".into();
        c.validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = toml::from_str::<StorageConfig>("[redis]\nttl = 5\n").unwrap_err();
        assert!(e.to_string().contains("ttl"), "{e}");
        let c: StorageConfig = toml::from_str("backend = \"postgres\"\n[l1]\ncapacity = 0\n").unwrap();
        assert_eq!((c.backend, c.l1.capacity, c.l1.ttl_ms), (BackendKind::Postgres, 0, 5_000));
    }
}

/// `url` with the password of its user info (`scheme://user:PASSWORD@host`) replaced by `***`:
/// what may reach a log line or `Debug` output. The user info ends at the last `@` (a password
/// may hold `/` or `@`).
#[must_use]
pub fn url_without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let Some((userinfo, host)) = rest.rsplit_once('@') else { return url.to_string() };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Every field but the URL as derived; the URL without its password.
        let Self {
            url,
            schema,
            max_size,
            min_size,
            connect_timeout_ms,
            wait_timeout_ms,
            create_timeout_ms,
            recycle_timeout_ms,
            statement_timeout_ms,
            tls,
            tls_ca_file,
        } = self;
        f.debug_struct("PostgresConfig")
            .field("url", &url_without_password(url))
            .field("schema", schema)
            .field("max_size", max_size)
            .field("min_size", min_size)
            .field("connect_timeout_ms", connect_timeout_ms)
            .field("wait_timeout_ms", wait_timeout_ms)
            .field("create_timeout_ms", create_timeout_ms)
            .field("recycle_timeout_ms", recycle_timeout_ms)
            .field("statement_timeout_ms", statement_timeout_ms)
            .field("tls", tls)
            .field("tls_ca_file", tls_ca_file)
            .finish()
    }
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            url,
            tls_ca_file,
            pool_size,
            key_prefix,
            hot_ttl_s,
            warm_ttl_s,
            cold_ttl_s,
            command_timeout_ms,
            pipeline_timeout_ms,
            connect_timeout_ms,
            bypass_ms,
            warm_on_start,
            publish_events,
        } = self;
        f.debug_struct("RedisConfig")
            .field("url", &url_without_password(url))
            .field("tls_ca_file", tls_ca_file)
            .field("pool_size", pool_size)
            .field("key_prefix", key_prefix)
            .field("hot_ttl_s", hot_ttl_s)
            .field("warm_ttl_s", warm_ttl_s)
            .field("cold_ttl_s", cold_ttl_s)
            .field("command_timeout_ms", command_timeout_ms)
            .field("pipeline_timeout_ms", pipeline_timeout_ms)
            .field("connect_timeout_ms", connect_timeout_ms)
            .field("bypass_ms", bypass_ms)
            .field("warm_on_start", warm_on_start)
            .field("publish_events", publish_events)
            .finish()
    }
}

#[cfg(test)]
mod debug_tests {
    use super::*;

    #[test]
    fn debug_output_never_holds_a_password() {
        let pg = PostgresConfig { url: "postgres://writer:s3cret@db:5432/w".into(), ..Default::default() };
        let shown = format!("{pg:?}");
        assert!(!shown.contains("s3cret") && shown.contains("writer:***@db"), "{shown}");
        let redis = RedisConfig { url: "rediss://:s3cret@cache:6380/0".into(), ..Default::default() };
        let shown = format!("{:?}", StorageConfig { redis, ..Default::default() });
        assert!(!shown.contains("s3cret") && shown.contains(":***@cache"), "{shown}");
        assert_eq!(url_without_password("redis://u:p@ss/w@rd@host/0"), "redis://u:***@host/0");
        assert_eq!(url_without_password("redis://host:6379"), "redis://host:6379");
    }
}
