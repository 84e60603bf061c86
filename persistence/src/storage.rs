//! The `Storage` trait: the boundary between the simulation and everything that outlives it.

use std::future::Future;

use crate::{NpcFilter, NpcPage, NpcRecord, Page, StorageError, WriteBatch};

/// Where world state goes to outlive the process.
///
/// # Contract
/// - `write` is all-or-nothing for the whole slice: after `Ok`, every batch is stored; after an
///   error, none or all of them may be stored, so the caller may send the same batches again.
/// - Writing is idempotent by [`crate::BatchId`]: a batch already applied (same `run`, a `seq`
///   not above the highest applied for that run) is skipped, so a retry or an outbox replay
///   never duplicates a row.
/// - Within a run, batches are written in `seq` order. Consecutive batches may be handed over
///   together (group commit); they are applied in slice order.
/// - Reads see every write that returned `Ok` before them.
/// - Implementations are cheap to share (`&self`), and never block the calling thread: slow work
///   is `await`ed.
pub trait Storage: Send + Sync + 'static {
    /// Short name for logs and metrics (`"memory"`, `"postgres"`, …).
    fn name(&self) -> &'static str;

    /// Stores `batches`, in order, all or nothing (see the contract above).
    fn write(&self, batches: &[WriteBatch]) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// The current state of one NPC.
    fn get_npc(&self, id: u64) -> impl Future<Output = Result<Option<NpcRecord>, StorageError>> + Send;

    /// NPCs that pass `filter`, by ascending id, one page at a time.
    fn list_npcs(
        &self,
        filter: &NpcFilter,
        page: Page,
    ) -> impl Future<Output = Result<NpcPage, StorageError>> + Send;

    /// Every NPC's current state, by ascending id (to rebuild a world after a restart).
    fn load_npcs(&self) -> impl Future<Output = Result<Vec<NpcRecord>, StorageError>> + Send;
}
