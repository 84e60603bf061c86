//! `FileStore`: the embedded on-disk store (feature `file-store`). SQLite in one file (WAL mode,
//! `synchronous = FULL`), the same tables, contract and reads as `PgStore`: a `write` is one
//! transaction that applies each batch exactly once by `(run, seq)`; versioned migrations;
//! retention; checkpoints.
//!
//! SQLite calls block, so none runs on the async runtime: the store owns two threads, a writer
//! and a reader, each with its own connection (WAL lets reads run while a write commits). An
//! async call sends a job to one of them and awaits the answer. A call whose future is dropped
//! (a timeout) still runs to its end on the thread; its outcome is unknown to the caller, as
//! with any store, and a retry is skipped by its batch ids.

mod blocks;
mod migrate;
mod read;
mod write;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, ErrorCode};

use crate::{
    Checkpoint, EmbeddedConfig, NpcFilter, NpcPage, NpcRecord, Page, PositionRow, ResumePoint, Storage,
    StorageError, WriteBatch,
};

const BACKEND: &str = "embedded";

/// Counters of a [`FileStore`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileMetrics {
    /// Batches committed.
    pub batches_applied: u64,
    /// Batches skipped because they had been applied before (replays).
    pub batches_skipped: u64,
    /// Positions inserted into the history (one per NPC per flush).
    pub position_rows: u64,
    /// Metric rows inserted.
    pub metric_rows: u64,
    /// Event rows offered (an event id already stored is not stored again).
    pub event_rows: u64,
    /// Rows inserted or replaced in `npcs`.
    pub npc_upserts: u64,
    /// Current positions written into `position_blocks`.
    pub npc_position_updates: u64,
    /// Rows deleted from `npcs`.
    pub npc_removals: u64,
    /// Rows deleted by the retention job, all tables.
    pub retention_deleted: u64,
    /// Retention runs that failed.
    pub retention_failures: u64,
    /// Checkpoints stored.
    pub checkpoints_written: u64,
    /// Write calls, and their total time in microseconds.
    pub write_calls: u64,
    /// Total time of the write calls, µs (on the writer thread).
    pub write_us: u64,
}

#[derive(Default)]
struct Counters {
    batches_applied: AtomicU64,
    batches_skipped: AtomicU64,
    position_rows: AtomicU64,
    metric_rows: AtomicU64,
    event_rows: AtomicU64,
    npc_upserts: AtomicU64,
    npc_position_updates: AtomicU64,
    npc_removals: AtomicU64,
    retention_deleted: AtomicU64,
    retention_failures: AtomicU64,
    checkpoints_written: AtomicU64,
    write_calls: AtomicU64,
    write_us: AtomicU64,
}

/// The embedded store: one SQLite database file on local disk, no server.
///
/// Tables (versioned migrations, see `file/migrations/`): `npcs` (the registry: role, status,
/// swarm, health, inventory; a position never rewrites it), `position_blocks` (current
/// positions, one row per block of 64 ids), `position_history_d<day>` (position history, one
/// row per block per flush, a table per day so retention drops whole tables), `metrics`
/// (history), `events` (unique by event id), `applied_batches` (the exactly-once mark per
/// producer run), `checkpoints`, `schema_migrations`. A user can open the file with the
/// `sqlite3` shell (while the store runs too: WAL mode); block columns are BLOBs of
/// little-endian values (see `file/migrations/V2__position_blocks.sql`), decoded in SQL alone
/// by the views `npc_current_positions` (npc_id, tick, x, y, z) and `npcs_now` (the registry
/// with the current position, what `get_npc` returns), as PgStore's views of the same names
/// (`file/migrations/V3__position_views.sql`).
///
/// Durability: a `write` that returned `Ok` is committed with `synchronous = FULL` (the WAL is
/// fsynced at commit), so it survives a crash of the process and of the machine.
///
/// Cheap to clone (the threads are shared); they stop when the last clone is dropped.
///
/// # Examples
/// ```
/// use terrarium_persistence::{BatchId, EmbeddedConfig, FileStore, Storage, WriteBatch};
/// use terrarium_persistence::testing::npc;
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let dir = tempfile::tempdir().unwrap();
/// let cfg = EmbeddedConfig { path: dir.path().join("world.db"), ..Default::default() };
/// let store = FileStore::open(&cfg).await?;
/// let batch = WriteBatch { id: BatchId { run: 1, seq: 1 }, npcs: vec![npc(3, 0)], ..Default::default() };
/// store.write(std::slice::from_ref(&batch)).await?;
/// store.write(std::slice::from_ref(&batch)).await?; // a replay changes nothing
/// assert_eq!(store.get_npc(3).await?.map(|r| r.id), Some(3));
/// assert_eq!(store.metrics().batches_applied, 1);
/// # Ok::<(), terrarium_persistence::StorageError>(()) }).unwrap();
/// ```
#[derive(Clone)]
pub struct FileStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Lane,
    reader: Lane,
    counters: Counters,
}

impl std::fmt::Debug for FileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStore").field("path", &self.inner.path).finish_non_exhaustive()
    }
}

/// What a job on a store thread can fail with: SQLite's error (mapped by the store, which
/// knows the file) or one of ours.
enum DbError {
    Sql(rusqlite::Error),
    Storage(StorageError),
    /// Stored data that does not decode or check out: reported as [`StorageError::Corrupt`]
    /// naming the file.
    Corrupt(String),
    /// Rows (`npcs`, `applied_batches`) and no checkpoint: reported as
    /// [`StorageError::NoCheckpoint`] naming the file.
    NoCheckpoint {
        npcs: u64,
        batches: u64,
    },
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sql(e)
    }
}

impl From<StorageError> for DbError {
    fn from(e: StorageError) -> Self {
        Self::Storage(e)
    }
}

type DbResult<T> = Result<T, DbError>;
type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// A thread that owns one connection and runs jobs on it in order.
struct Lane {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Lane {
    fn start(name: &str, mut conn: Connection) -> Result<Self, std::io::Error> {
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new().name(name.into()).spawn(move || {
            // SQLite's work is storage work: it never preempts the tick.
            crate::os::mark_background_thread();
            while let Ok(job) = rx.recv() {
                job(&mut conn);
            }
        })?;
        Ok(Self { jobs: Some(tx), thread: Some(thread) })
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        // Closing the channel ends the thread after the job it runs; joining it closes the
        // connection before the store is gone (so the file can be reopened or removed at once).
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl FileStore {
    /// Opens (creating when missing) the database file and its directory, checks that it is
    /// a whole SQLite database, switches it to WAL and brings the schema up to date. Runs the
    /// blocking part on a blocking thread of the runtime.
    ///
    /// # Errors
    /// [`StorageError::Corrupt`] naming the file when it is not a SQLite database, is truncated
    /// or damaged; [`StorageError::Rejected`] for a schema newer than this build or an edited
    /// migration; [`StorageError::Unavailable`] when the file can't be opened.
    pub async fn open(cfg: &EmbeddedConfig) -> Result<Self, StorageError> {
        let cfg = cfg.clone();
        match tokio::task::spawn_blocking(move || Self::open_blocking(&cfg)).await {
            Ok(r) => r,
            Err(e) => Err(StorageError::unavailable(BACKEND, e)),
        }
    }

    /// [`FileStore::open`] on the calling thread (it blocks: file I/O and migrations).
    ///
    /// # Errors
    /// As [`FileStore::open`].
    pub fn open_blocking(cfg: &EmbeddedConfig) -> Result<Self, StorageError> {
        let path = cfg.path.clone();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| io_error(&path, "cannot create the directory of", e))?;
        }
        check_file(&path)?;
        let mapped = |e: DbError| map_error(&path, e);
        let mut writer = connect(&path, cfg).map_err(mapped)?;
        migrate::run(&mut writer).map_err(mapped)?;
        let reader = connect(&path, cfg).map_err(mapped)?;
        let writer =
            Lane::start("terrarium-sqlite-w", writer).map_err(|e| io_error(&path, "thread for", e))?;
        let reader =
            Lane::start("terrarium-sqlite-r", reader).map_err(|e| io_error(&path, "thread for", e))?;
        Ok(Self { inner: Arc::new(Inner { path, writer, reader, counters: Counters::default() }) })
    }

    /// The database file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Every counter.
    #[must_use]
    pub fn metrics(&self) -> FileMetrics {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FileMetrics {
            batches_applied: get(&c.batches_applied),
            batches_skipped: get(&c.batches_skipped),
            position_rows: get(&c.position_rows),
            metric_rows: get(&c.metric_rows),
            event_rows: get(&c.event_rows),
            npc_upserts: get(&c.npc_upserts),
            npc_position_updates: get(&c.npc_position_updates),
            npc_removals: get(&c.npc_removals),
            retention_deleted: get(&c.retention_deleted),
            retention_failures: get(&c.retention_failures),
            checkpoints_written: get(&c.checkpoints_written),
            write_calls: get(&c.write_calls),
            write_us: get(&c.write_us),
        }
    }

    /// Stores a checkpoint and keeps the newest `keep` (at least 1).
    ///
    /// # Errors
    /// When the file can't be written.
    pub async fn save_checkpoint(&self, checkpoint: Checkpoint, keep: u32) -> Result<(), StorageError> {
        let now = now_ms();
        self.on_writer(move |c| write::save_checkpoint(c, &checkpoint, keep, now)).await?;
        self.inner.counters.checkpoints_written.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The newest checkpoint, its checksum verified.
    ///
    /// # Errors
    /// [`StorageError::Corrupt`] naming the file when its checksum does not match.
    pub async fn latest_checkpoint(&self) -> Result<Option<Checkpoint>, StorageError> {
        self.on_reader(|c| read::latest_checkpoint(c)).await
    }

    /// The newest checkpoint and the current state committed after it (see [`ResumePoint`]);
    /// `None` when the store holds nothing (no checkpoint, no NPC row, no applied batch).
    ///
    /// # Errors
    /// As [`FileStore::latest_checkpoint`]; [`StorageError::NoCheckpoint`] naming the file when
    /// it holds rows or applied batches but no checkpoint.
    pub async fn resume_point(&self) -> Result<Option<ResumePoint>, StorageError> {
        self.on_reader(read::resume_point).await
    }

    /// Highest batch `seq` applied for `run`.
    ///
    /// # Errors
    /// When the file can't be read.
    pub async fn applied_seq(&self, run: u64) -> Result<Option<u64>, StorageError> {
        self.on_reader(move |c| read::applied_seq(c, run)).await
    }

    /// Deletes every row of every table (the schema stays): a new world starts here.
    ///
    /// # Errors
    /// When the file can't be written.
    pub async fn wipe(&self) -> Result<(), StorageError> {
        self.on_writer(write::wipe).await
    }

    /// An NPC's positions with `tick` in `ticks`, by tick.
    ///
    /// # Errors
    /// When the file can't be read.
    pub async fn position_history(
        &self,
        npc_id: u64,
        ticks: std::ops::Range<u64>,
    ) -> Result<Vec<PositionRow>, StorageError> {
        self.on_reader(move |c| read::position_history(c, npc_id, ticks)).await
    }

    /// Rows in `npcs`, positions in the history (one per NPC per flush), rows in `metrics`
    /// and `events`.
    ///
    /// # Errors
    /// When the file can't be read.
    pub async fn row_counts(&self) -> Result<[u64; 4], StorageError> {
        self.on_reader(|c| read::row_counts(c)).await
    }

    /// Drops the position history tables of days that ended more than `max_age` ago, then
    /// deletes the rows stored before that from the day table it falls in, `metrics` and
    /// `events`, at most `chunk_rows` per transaction; returns the rows (positions) deleted.
    ///
    /// # Errors
    /// When the file can't be written; what was deleted before stays deleted.
    pub async fn purge_older_than(&self, max_age: Duration, chunk_rows: u32) -> Result<u64, StorageError> {
        let cutoff = now_ms().saturating_sub(i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX));
        let mut total = self.on_writer(move |c| write::drop_history_days(c, cutoff)).await?;
        self.inner.counters.retention_deleted.fetch_add(total, Ordering::Relaxed);
        let day_table = self.on_writer(move |c| write::history_table_at(c, cutoff)).await?;
        let tables: Vec<std::borrow::Cow<'static, str>> = day_table
            .into_iter()
            .map(std::borrow::Cow::Owned)
            .chain(write::HISTORY_TABLES.into_iter().map(std::borrow::Cow::Borrowed))
            .collect();
        for table in tables {
            loop {
                let t = table.clone();
                let n = self.on_writer(move |c| write::purge_chunk(c, &t, cutoff, chunk_rows.max(1))).await?;
                total += n;
                self.inner.counters.retention_deleted.fetch_add(n, Ordering::Relaxed);
                if n < u64::from(chunk_rows.max(1)) {
                    break;
                }
            }
        }
        Ok(total)
    }

    /// Runs [`FileStore::purge_older_than`] every `cfg.interval_s` in a tokio task, first after
    /// one interval. A failed run is logged and counted; the next one tries again.
    #[must_use = "dropping the handle does not stop the job; abort it to stop"]
    pub fn spawn_retention(&self, cfg: &crate::RetentionConfig) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        let max_age = Duration::from_secs(cfg.max_age_s);
        let chunk = cfg.chunk_rows;
        let every = Duration::from_secs(cfg.interval_s.max(1));
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                match store.purge_older_than(max_age, chunk).await {
                    Ok(n) => tracing::info!(deleted = n, "embedded retention run finished"),
                    Err(e) => {
                        store.inner.counters.retention_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "embedded retention run failed; trying again next interval");
                    }
                }
            }
        })
    }

    async fn on_writer<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Connection) -> DbResult<T> + Send + 'static,
    ) -> Result<T, StorageError> {
        self.run(&self.inner.writer, job).await
    }

    async fn on_reader<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Connection) -> DbResult<T> + Send + 'static,
    ) -> Result<T, StorageError> {
        self.run(&self.inner.reader, job).await
    }

    async fn run<T: Send + 'static>(
        &self,
        lane: &Lane,
        job: impl FnOnce(&mut Connection) -> DbResult<T> + Send + 'static,
    ) -> Result<T, StorageError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = lane.jobs.as_ref().is_some_and(|jobs| {
            jobs.send(Box::new(move |c: &mut Connection| {
                // The caller may have stopped waiting (a timeout); the outcome is then unknown
                // to it, which the storage contract allows.
                let _ = tx.send(job(c));
            }))
            .is_ok()
        });
        if !sent {
            return Err(closed(&self.inner.path));
        }
        match rx.await {
            Ok(r) => r.map_err(|e| map_error(&self.inner.path, e)),
            Err(_) => Err(closed(&self.inner.path)),
        }
    }
}

impl Storage for FileStore {
    fn name(&self) -> &'static str {
        BACKEND
    }

    async fn write(&self, batches: &[WriteBatch]) -> Result<(), StorageError> {
        if batches.is_empty() {
            return Ok(());
        }
        // The thread needs owned data: a call may be abandoned (timeout) while it runs.
        let batches = batches.to_vec();
        let now = now_ms();
        let started = std::time::Instant::now();
        let done = self.on_writer(move |c| write::write_batches(c, &batches, now)).await?;
        let c = &self.inner.counters;
        c.write_calls.fetch_add(1, Ordering::Relaxed);
        c.write_us
            .fetch_add(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
        c.batches_applied.fetch_add(done.applied, Ordering::Relaxed);
        c.batches_skipped.fetch_add(done.skipped, Ordering::Relaxed);
        c.position_rows.fetch_add(done.positions, Ordering::Relaxed);
        c.metric_rows.fetch_add(done.metrics, Ordering::Relaxed);
        c.event_rows.fetch_add(done.events, Ordering::Relaxed);
        c.npc_upserts.fetch_add(done.upserts, Ordering::Relaxed);
        c.npc_position_updates.fetch_add(done.moves, Ordering::Relaxed);
        c.npc_removals.fetch_add(done.removals, Ordering::Relaxed);
        Ok(())
    }

    async fn get_npc(&self, id: u64) -> Result<Option<NpcRecord>, StorageError> {
        self.on_reader(move |c| read::npc(c, id)).await
    }

    async fn list_npcs(&self, filter: &NpcFilter, page: Page) -> Result<NpcPage, StorageError> {
        let filter = filter.clone();
        self.on_reader(move |c| read::page(c, &filter, page)).await
    }

    async fn load_npcs(&self) -> Result<Vec<NpcRecord>, StorageError> {
        self.on_reader(|c| read::all(c)).await
    }
}

/// Opens one connection with the store's settings (WAL, full sync, cache, busy timeout).
fn connect(path: &Path, cfg: &EmbeddedConfig) -> DbResult<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_millis(cfg.busy_timeout_ms))?;
    // The first statement reads the header: a file that is not a database fails here.
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(DbError::Storage(StorageError::Failed {
            backend: BACKEND,
            source: format!("{}: journal_mode is {mode}, WAL is needed", path.display()).into(),
        }));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    let kib = i64::try_from(cfg.cache_mib.saturating_mul(1024)).unwrap_or(i64::MAX);
    conn.pragma_update(None, "cache_size", -kib)?;
    Ok(conn)
}

/// Refuses a file that can't be a whole SQLite database before SQLite opens it: shorter than
/// a header, a header that is not SQLite's, or shorter than the page count its header records
/// (a truncated copy). While a WAL file is beside it the header may lag, so the length check
/// is skipped then (SQLite's own checks still apply).
fn check_file(path: &Path) -> Result<(), StorageError> {
    use std::io::Read;
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error(path, "cannot open", e)),
    };
    let len = file.metadata().map_err(|e| io_error(path, "cannot read", e))?.len();
    if len == 0 {
        return Ok(()); // SQLite makes a new database of an empty file.
    }
    let corrupt =
        |why: String| StorageError::Corrupt { what: format!("embedded database {}: {why}", path.display()) };
    let mut header = [0u8; 100];
    if len < 100 || file.read_exact(&mut header).is_err() {
        return Err(corrupt(format!("{len} bytes, shorter than a SQLite header (truncated?)")));
    }
    if &header[..16] != b"SQLite format 3\0" {
        return Err(corrupt("not a SQLite database (bad header)".into()));
    }
    let page_size = match u32::from(u16::from_be_bytes([header[16], header[17]])) {
        1 => 65_536,
        n => u64::from(n),
    };
    let pages = u64::from(u32::from_be_bytes([header[28], header[29], header[30], header[31]]));
    let change = &header[24..28];
    let valid_for = &header[92..96];
    let wal = path.with_file_name(format!(
        "{}-wal",
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    ));
    let wal_len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    if change == valid_for && wal_len == 0 && len < pages.saturating_mul(page_size) {
        return Err(corrupt(format!(
            "{len} bytes, but its header records {pages} pages of {page_size} bytes (truncated)"
        )));
    }
    Ok(())
}

/// Sorts a SQLite error: busy, locked, I/O or a full disk are transient (the write-behind keeps
/// the batches and tries again); a damaged file is [`StorageError::Corrupt`] naming the file.
fn map_error(path: &Path, e: DbError) -> StorageError {
    let e = match e {
        DbError::Storage(s) => return s,
        DbError::Corrupt(what) => {
            return StorageError::Corrupt { what: format!("embedded database {}: {what}", path.display()) };
        }
        DbError::NoCheckpoint { npcs, batches } => {
            return StorageError::NoCheckpoint {
                store: format!("embedded database {}", path.display()),
                npcs,
                batches,
            };
        }
        DbError::Sql(e) => e,
    };
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => {
            StorageError::Corrupt { what: format!("embedded database {}: {e}", path.display()) }
        }
        Some(
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::SystemIoFailure
            | ErrorCode::DiskFull
            | ErrorCode::CannotOpen
            | ErrorCode::OutOfMemory,
        ) => StorageError::unavailable(BACKEND, PathError { path: path.to_path_buf(), source: e }),
        _ => StorageError::failed(BACKEND, PathError { path: path.to_path_buf(), source: e }),
    }
}

/// A SQLite error and the file it happened on.
#[derive(Debug, thiserror::Error)]
#[error("{}", path.display())]
struct PathError {
    path: PathBuf,
    #[source]
    source: rusqlite::Error,
}

fn io_error(path: &Path, what: &str, e: std::io::Error) -> StorageError {
    StorageError::unavailable(
        BACKEND,
        std::io::Error::new(e.kind(), format!("{what} {}: {e}", path.display())),
    )
}

fn closed(path: &Path) -> StorageError {
    StorageError::unavailable(
        BACKEND,
        std::io::Error::new(std::io::ErrorKind::BrokenPipe, format!("{}: store is closed", path.display())),
    )
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// NPC ids and ticks are stored as INTEGER: values above `i64::MAX` are refused, not wrapped.
fn to_i64(what: &str, v: u64) -> Result<i64, StorageError> {
    i64::try_from(v).map_err(|_| StorageError::Rejected {
        backend: BACKEND,
        reason: format!("{what} {v} does not fit a signed 64-bit integer"),
    })
}

/// Opaque ids (events, correlations, producer runs) are stored bit for bit.
fn bits(v: u64) -> i64 {
    i64::from_le_bytes(v.to_le_bytes())
}

fn unbits(v: i64) -> u64 {
    u64::from_le_bytes(v.to_le_bytes())
}

fn corrupt(what: impl Into<String>) -> DbError {
    DbError::Corrupt(what.into())
}
