//! RegionError: what a region's PostgreSQL transactions can answer.

use super::{Epoch, RegionId};

/// A region transaction's failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegionError {
    /// The fence refused the write: another process took the region's lease (a newer epoch).
    /// Nothing was written; the process must stop.
    #[error("{region} lost its lease: epoch {epoch} is not the current epoch {current:?}")]
    Fenced {
        /// The region.
        region: RegionId,
        /// The epoch the process holds.
        epoch: Epoch,
        /// The lease's epoch now (None: no lease row).
        current: Option<Epoch>,
    },
    /// The connection was lost at `COMMIT`: the transaction may or may not have committed.
    /// Read the rows back (on a new connection) before doing anything else with them.
    #[error("connection lost at the commit of {what}: outcome unknown")]
    CommitUnknown {
        /// The transaction.
        what: &'static str,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A statement failed before the commit: the transaction was rolled back.
    #[error("postgresql refused or failed {what}")]
    Db {
        /// The statement or transaction.
        what: &'static str,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A bad argument or configuration (a schema name, a URL).
    #[error("invalid region store setting: {0}")]
    Invalid(String),
}

impl RegionError {
    /// True for a refused fence.
    #[must_use]
    pub fn is_fenced(&self) -> bool {
        matches!(self, Self::Fenced { .. })
    }
}
