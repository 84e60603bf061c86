//! `StorageError`: what can go wrong at the storage boundary, and whether trying again may help.
//! `WriteBehindError`: what the write-behind queue tells the tick and the host.

use std::path::PathBuf;
use std::time::Duration;

/// A storage call failed.
///
/// [`StorageError::is_transient`] tells retry layers whether the same call may succeed later.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The backend could not be reached or failed mid-call (connection refused, reset, server
    /// restarting). Transient.
    #[error("storage backend unavailable: {backend}")]
    Unavailable {
        /// Which backend (`"postgres"`, `"redis"`, `"file"`, …).
        backend: &'static str,
        /// The driver's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The call did not finish in time. Transient.
    #[error("storage call timed out after {0:?}")]
    Timeout(Duration),
    /// A circuit breaker is open and refused the call without trying. Not transient: retrying
    /// at once only adds load; wait `retry_after`.
    #[error("circuit open, retry after {retry_after:?}")]
    CircuitOpen {
        /// When the breaker will let a trial call through.
        retry_after: Duration,
    },
    /// Stored bytes could not be decoded. Not transient.
    #[error("corrupt stored data: {what}")]
    Corrupt {
        /// What was being read.
        what: String,
    },
    /// The backend refused the request itself (a constraint, a bad argument). Not transient.
    #[error("storage request rejected by {backend}: {reason}")]
    Rejected {
        /// Which backend.
        backend: &'static str,
        /// Why.
        reason: String,
    },
    /// The backend answered but failed the request, and sending it again will fail again (a
    /// constraint, a type the server refused, a schema newer than this build). Not transient.
    #[error("storage backend {backend} failed the request")]
    Failed {
        /// Which backend.
        backend: &'static str,
        /// The driver's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The TLS connection the settings ask for could not be made: the server offers no TLS
    /// (`require` or stricter), or its certificate was refused (a CA not trusted, another host
    /// name, expired). Transient, as an outage is: every call gets it until the server or the
    /// settings are fixed, so the breaker opens and the write-behind keeps its batches; at
    /// start-up ([`crate::StorageStack::build`]) it is returned at once.
    #[error("TLS connection to {backend} failed: {reason}")]
    Tls {
        /// Which backend.
        backend: &'static str,
        /// Why, in words (the driver's error and its causes).
        reason: String,
    },
    /// A storage setting is invalid (or needs a feature this build lacks). Not transient.
    #[error(transparent)]
    Config(#[from] StorageConfigError),
    /// The store holds a world's rows (NPCs or applied batches) but no checkpoint to resume it
    /// from: a process that stopped before storing its first one, or a checkpoints table
    /// emptied by hand. Not transient. Taking it for an empty store would spawn a new world
    /// over the stored rows and hand their ids out again; delete it explicitly instead
    /// (`--new-world --wipe` in `headless` and `game_server`).
    #[error(
        "{store} holds {npcs} NPC rows and {batches} applied batch runs but no checkpoint: \
         it cannot be resumed (start over with --new-world --wipe, which deletes it)"
    )]
    NoCheckpoint {
        /// The store: `embedded database <file>` or `postgres schema <name>`.
        store: String,
        /// Rows in `npcs`.
        npcs: u64,
        /// Rows in `applied_batches` (one per producer run).
        batches: u64,
    },
    /// A bound was reached and the data could not be accepted (for example a full outbox with
    /// no disk to spill to). Not transient for this call; the data was *not* dropped silently:
    /// the caller still holds it.
    #[error("storage capacity exceeded: {what}")]
    Full {
        /// Which bound.
        what: String,
    },
}

impl StorageError {
    /// True when the same call may succeed if tried again later.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::Timeout(_) | Self::Tls { .. })
    }

    /// Wraps a driver error as [`StorageError::Unavailable`].
    pub fn unavailable(
        backend: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Unavailable { backend, source: Box::new(source) }
    }

    /// Wraps a driver error as [`StorageError::Failed`].
    pub fn failed(backend: &'static str, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Failed { backend, source: Box::new(source) }
    }
}

/// A `[storage]` setting is out of range or malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StorageConfigError {
    /// A number outside its allowed range (the key is dotted, for example
    /// `storage.postgres.max_size`).
    #[error("config: {0}")]
    OutOfRange(#[from] terrarium_codec::OutOfRange),
    /// A value that is wrong for another reason.
    #[error("config: {key}: {reason}")]
    Invalid {
        /// Dotted key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// The write-behind queue refused a call (the tick's side of it, or the host's).
///
/// Store failures are not returned here: the write-behind retries, spills and counts them
/// (see [`crate::WriteBehindStats`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteBehindError {
    /// Taking the batch would exceed the memory bound; the batch was dropped and counted.
    #[error("write-behind queue full: {queued_rows} rows waiting, limit {limit}")]
    Full {
        /// Rows waiting in memory when the batch came.
        queued_rows: usize,
        /// The configured bound (`max_queued_rows`).
        limit: usize,
    },
    /// The queue was shut down; the batch was dropped and counted.
    #[error("write-behind queue is shut down")]
    Closed,
    /// The outbox file could not be opened, read or written.
    #[error("outbox file {path} could not be used")]
    Outbox {
        /// The outbox file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The outbox holds an intact frame of a format or `WriteBatch` layout this build can't
    /// read (written by another version). Nothing was skipped or cut: start the version that
    /// wrote it to drain it, or move the file away.
    #[error(
        "outbox file {path}: frame at offset {offset} has format version {version}, batch layout {layout}, which this build can't read"
    )]
    OutboxUnreadable {
        /// The outbox file.
        path: PathBuf,
        /// Where the frame starts.
        offset: u64,
        /// Its format version.
        version: u32,
        /// Its `WriteBatch` layout.
        layout: u32,
    },
    /// The runtime for the write-behind task could not be started.
    #[error("could not start the write-behind runtime")]
    Runtime(#[source] std::io::Error),
    /// `flush` or `shutdown` ran out of time with batches still waiting (the store is slow or
    /// failing). Nothing is lost: they stay queued, or in the outbox after `shutdown`.
    #[error("write-behind not drained after {timeout:?}: {pending_batches} batches still pending")]
    Timeout {
        /// How long the call waited.
        timeout: Duration,
        /// Batches not yet in the store (in memory or in the outbox).
        pending_batches: u64,
    },
    /// A setting is out of range (the key is dotted, for example
    /// `write_behind.max_queued_rows`).
    #[error("invalid write-behind setting: {0}")]
    OutOfRange(#[from] terrarium_codec::OutOfRange),
}
