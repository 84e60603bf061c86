//! Regions (issue 17): a world cut into a grid of engine processes, with ownership, leases,
//! fencing and exactly-once hand-off in PostgreSQL. `protocol.rs` is the pure state machine a
//! region process runs (checked by a model test without a server); `pg.rs` (feature
//! `postgres`) is the SQL; `ghosts.rs` (feature `redis`) is the lossy border feed of ghosts. The protocol is written down in `persistence/DESIGN.md`.

#[cfg(feature = "postgres")]
mod error;
#[cfg(feature = "redis")]
mod ghosts;
#[cfg(feature = "postgres")]
mod pg;
mod protocol;

#[cfg(feature = "postgres")]
pub use error::RegionError;
#[cfg(feature = "redis")]
pub use ghosts::{
    GHOST_MESSAGE_LIMIT, Ghost, GhostBatch, GhostFeed, GhostFeedConfig, GhostFeedError, GhostFeedStats,
    GhostPublisher, ghost_channel,
};
#[cfg(feature = "postgres")]
pub use pg::{Adopted, IDLE_IN_TX_MS, NpcState, OwnershipSummary, RegionStore};
pub use protocol::{
    CoreStats, Epoch, Move, MoveResult, Outgoing, OwnerRow, RegionCore, RegionId, Resolution, resolve,
};
