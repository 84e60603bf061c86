#![doc = include_str!("../README.md")]

mod error;
mod memory;
mod record;
mod storage;

pub use error::StorageError;
pub use memory::{MemoryStats, MemoryStore};
pub use record::{
    BatchId, EntityKind, EventRow, MetricRow, NpcFilter, NpcPage, NpcRecord, Page, PositionRow, WriteBatch,
};
pub use storage::Storage;
