#![doc = include_str!("../README.md")]

mod breaker;
mod clock;
mod config;
mod error;
#[cfg(feature = "file-store")]
mod file;
#[cfg(feature = "file-store")]
mod fold;
mod l1;
mod memory;
pub mod os;
mod outbox;
#[cfg(feature = "postgres")]
mod postgres;
mod record;
#[cfg(feature = "redis")]
mod redis;
pub mod region;
mod retry;
mod sink;
mod stack;
mod storage;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(any(feature = "postgres", feature = "redis"))]
mod tls;
mod write_behind;

pub use breaker::{BreakerMetrics, BreakerState, CircuitBreaker};
pub use clock::{Clock, ManualClock, TokioClock};
pub use config::{
    BackendKind, BreakerConfig, CheckpointConfig, EmbeddedConfig, L1Config, PgTlsMode, PostgresConfig,
    RedisConfig, RetentionConfig, RetryConfig, StorageConfig, WriteBehindConfig, is_identifier,
    url_without_password,
};
pub use error::{StorageConfigError, StorageError, WriteBehindError};
#[cfg(feature = "file-store")]
pub use file::{FileMetrics, FileStore};
pub use l1::{L1Cache, L1Metrics, TierMetrics};
pub use memory::{MemoryStats, MemoryStore};
#[cfg(feature = "postgres")]
pub use postgres::{
    EventQuery, MigrationReport, PgMetrics, PgStore, PoolMetrics, RetentionReport, RowCounts,
};
pub use record::{
    BatchId, Checkpoint, EntityKind, EventRow, MetricRow, NpcFilter, NpcPage, NpcRecord, Page,
    PositionColumns, PositionRow, ResumePoint, SmolStr, WriteBatch,
};
#[cfg(feature = "redis")]
pub use redis::{EventSubscriber, RedisCache, RedisMetrics, Tier};
pub use retry::{Retry, RetryMetrics};
pub use sink::{BatchSink, Handoff, SinkHealth};
pub use stack::{Backend, Layers, RedisLayer, StorageMetrics, StorageStack};
pub use storage::Storage;
pub use write_behind::{ShutdownReport, WriteBehind, WriteBehindHandle, WriteBehindStats};
