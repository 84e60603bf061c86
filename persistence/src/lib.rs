#![doc = include_str!("../README.md")]

mod breaker;
mod clock;
mod config;
mod error;
mod l1;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
mod record;
#[cfg(feature = "redis")]
mod redis;
mod retry;
mod stack;
mod storage;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use breaker::{BreakerMetrics, BreakerState, CircuitBreaker};
pub use clock::{Clock, ManualClock, TokioClock};
pub use config::{
    BackendKind, BreakerConfig, L1Config, PostgresConfig, RedisConfig, RetentionConfig, RetryConfig,
    StorageConfig, is_identifier,
};
pub use error::{StorageConfigError, StorageError};
pub use l1::{L1Cache, L1Metrics, TierMetrics};
pub use memory::{MemoryStats, MemoryStore};
#[cfg(feature = "postgres")]
pub use postgres::{
    EventQuery, MigrationReport, PgMetrics, PgStore, PoolMetrics, RetentionReport, RowCounts,
};
pub use record::{
    BatchId, EntityKind, EventRow, MetricRow, NpcFilter, NpcPage, NpcRecord, Page, PositionRow, WriteBatch,
};
#[cfg(feature = "redis")]
pub use redis::{EventSubscriber, RedisCache, RedisMetrics, Tier};
pub use retry::{Retry, RetryMetrics};
pub use stack::{Backend, Layers, RedisLayer, StorageMetrics, StorageStack};
pub use storage::Storage;
