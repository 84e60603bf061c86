//! `FaultyStore<S>`: a test double that fails, stalls and counts calls on demand, so every wrapper
//! can be tested over [`crate::MemoryStore`] without stopping a server.

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::{NpcFilter, NpcPage, NpcRecord, Page, Storage, StorageError, WriteBatch};

/// What a failing call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Fails with [`StorageError::Unavailable`] (transient).
    Unavailable,
    /// Fails with [`StorageError::Timeout`] (transient).
    Timeout,
    /// Fails with [`StorageError::Rejected`] (not transient).
    Rejected,
    /// Makes the call normally, then holds the answer back this long (tokio time): a slow
    /// server, or a reply that arrives after the caller gave up.
    Stall(Duration),
}

/// How many calls of each kind reached a [`FaultyStore`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultyCalls {
    /// `write` calls.
    pub writes: u64,
    /// `get_npc` calls.
    pub gets: u64,
    /// `list_npcs` calls.
    pub lists: u64,
    /// `load_npcs` calls.
    pub loads: u64,
    /// Calls that were failed on purpose.
    pub failed: u64,
}

/// Wraps a store; the next `n` calls (or all, until [`FaultyStore::heal`]) get a [`Fault`].
///
/// # Examples
/// ```
/// use terrarium_persistence::testing::{Fault, FaultyStore};
/// use terrarium_persistence::{MemoryStore, Storage};
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let store = FaultyStore::new(MemoryStore::default());
/// store.fail_next(1, Fault::Unavailable);
/// assert!(store.get_npc(1).await.unwrap_err().is_transient());
/// assert_eq!(store.get_npc(1).await.unwrap(), None);
/// assert_eq!(store.calls().gets, 2);
/// # });
/// ```
#[derive(Debug)]
pub struct FaultyStore<S> {
    inner: S,
    plan: Mutex<(u64, Option<Fault>)>,
    writes: AtomicU64,
    gets: AtomicU64,
    lists: AtomicU64,
    loads: AtomicU64,
    failed: AtomicU64,
}

impl<S: Storage> FaultyStore<S> {
    /// A store that passes every call through until told otherwise.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            plan: Mutex::new((0, None)),
            writes: AtomicU64::new(0),
            gets: AtomicU64::new(0),
            lists: AtomicU64::new(0),
            loads: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The next `n` calls get `fault`.
    pub fn fail_next(&self, n: u64, fault: Fault) {
        *self.lock() = (n, Some(fault));
    }

    /// Every call gets `fault` until [`FaultyStore::heal`].
    pub fn fail_always(&self, fault: Fault) {
        self.fail_next(u64::MAX, fault);
    }

    /// Calls pass through again.
    pub fn heal(&self) {
        *self.lock() = (0, None);
    }

    /// Calls so far.
    pub fn calls(&self) -> FaultyCalls {
        FaultyCalls {
            writes: self.writes.load(Ordering::Relaxed),
            gets: self.gets.load(Ordering::Relaxed),
            lists: self.lists.load(Ordering::Relaxed),
            loads: self.loads.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, Option<Fault>)> {
        self.plan.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes one call according to the plan.
    async fn call<T>(&self, call: impl Future<Output = Result<T, StorageError>>) -> Result<T, StorageError> {
        let fault = {
            let mut plan = self.lock();
            if plan.0 == 0 {
                None
            } else {
                plan.0 -= 1;
                plan.1
            }
        };
        let err = match fault {
            None => return call.await,
            Some(Fault::Stall(d)) => {
                let answer = call.await;
                tokio::time::sleep(d).await;
                return answer;
            }
            Some(Fault::Unavailable) => StorageError::unavailable(
                "faulty",
                std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
            ),
            Some(Fault::Timeout) => StorageError::Timeout(Duration::from_secs(1)),
            Some(Fault::Rejected) => StorageError::Rejected { backend: "faulty", reason: "injected".into() },
        };
        self.failed.fetch_add(1, Ordering::Relaxed);
        Err(err)
    }
}

impl<S: Storage> Storage for FaultyStore<S> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn write(&self, batches: &[WriteBatch]) -> Result<(), StorageError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.call(self.inner.write(batches)).await
    }

    async fn get_npc(&self, id: u64) -> Result<Option<NpcRecord>, StorageError> {
        self.gets.fetch_add(1, Ordering::Relaxed);
        self.call(self.inner.get_npc(id)).await
    }

    async fn list_npcs(&self, filter: &NpcFilter, page: Page) -> Result<NpcPage, StorageError> {
        self.lists.fetch_add(1, Ordering::Relaxed);
        self.call(self.inner.list_npcs(filter, page)).await
    }

    async fn load_npcs(&self) -> Result<Vec<NpcRecord>, StorageError> {
        self.loads.fetch_add(1, Ordering::Relaxed);
        self.call(self.inner.load_npcs()).await
    }
}

/// A plain NPC record for tests: role `miner`, status `idle`, at the origin, tick 0.
#[must_use]
pub fn npc(id: u64, swarm: u32) -> NpcRecord {
    NpcRecord {
        id,
        role: "miner".into(),
        status: "idle".into(),
        swarm,
        agent: false,
        x: 0.0,
        y: 0.0,
        z: 0.0,
        health: 100,
        inventory: vec![(1, 3)],
        updated_tick: 0,
    }
}
