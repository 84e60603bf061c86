#![doc = include_str!("../README.md")]

mod error;
mod memory;
mod outbox;
mod record;
mod sink;
mod storage;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod write_behind;

pub use error::{StorageError, WriteBehindError};
pub use memory::{MemoryStats, MemoryStore};
pub use record::{
    BatchId, EntityKind, EventRow, MetricRow, NpcFilter, NpcPage, NpcRecord, Page, PositionColumns,
    PositionRow, WriteBatch,
};
pub use sink::{BatchSink, Handoff, SinkHealth};
pub use storage::Storage;
pub use write_behind::{ShutdownReport, WriteBehind, WriteBehindConfig, WriteBehindHandle, WriteBehindStats};
