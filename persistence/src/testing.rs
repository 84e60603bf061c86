//! Test helpers (feature `testing`): [`FaultyStore`], a store wrapper that fails, refuses,
//! slows down or stalls on command, [`RecordingSink`], a [`BatchSink`] that keeps what it
//! is given, [`npc`], a plain record, and [`service_url`], [`unique_name`] and [`OwnServers`]
//! for tests against real servers ([`OwnServers::with_tls`] and [`test_certificates`] for TLS).

mod outbox;

pub use outbox::{OutboxReplay, outbox_batch_ids, outbox_frame, replay_outbox, write_outbox};

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::{
    BatchId, BatchSink, Handoff, NpcFilter, NpcPage, NpcRecord, Page, Storage, StorageError, WriteBatch,
    WriteBehindError,
};

/// Wraps a store and injects faults.
///
/// Into `write`, checked in this order on every call: a stall (the call waits until
/// [`FaultyStore::release`]), a delay, the next `n` calls refused as non-transient
/// ([`StorageError::Rejected`]), the next `n` calls failing as transient
/// ([`StorageError::Unavailable`]), and a standing failure ([`FaultyStore::set_failing`]).
/// Into calls of every kind, reads included: a planned [`Fault`] for the next `n` calls
/// ([`FaultyStore::inject`]) or all of them ([`FaultyStore::inject_always`]). Reads are counted
/// ([`FaultyStore::reads`]).
///
/// # Examples
/// ```
/// use terrarium_persistence::testing::FaultyStore;
/// use terrarium_persistence::{MemoryStore, Storage, WriteBatch};
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let store = FaultyStore::new(MemoryStore::default());
/// store.fail_next(1);
/// assert!(store.write(&[WriteBatch::default()]).await.unwrap_err().is_transient());
/// assert!(store.write(&[WriteBatch::default()]).await.is_ok());
/// assert_eq!((store.calls(), store.failures()), (2, 1));
/// # });
/// ```
#[derive(Debug)]
pub struct FaultyStore<S> {
    inner: S,
    fail_next: AtomicU32,
    reject_next: AtomicU32,
    failing: std::sync::atomic::AtomicBool,
    delay_us: AtomicU64,
    stalled: tokio::sync::watch::Sender<bool>,
    calls: AtomicU64,
    failures: AtomicU64,
    log: Mutex<Vec<Call>>,
    plan: Mutex<(u64, Option<Fault>)>,
    gets: AtomicU64,
    lists: AtomicU64,
    loads: AtomicU64,
}

/// A fault [`FaultyStore::inject`] plans for calls of any kind.
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
    SlowReply(Duration),
}

/// Read calls that reached a [`FaultyStore`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadCalls {
    /// `get_npc` calls.
    pub gets: u64,
    /// `list_npcs` calls.
    pub lists: u64,
    /// `load_npcs` calls.
    pub loads: u64,
}

/// One `write` call as a [`FaultyStore`] saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// Ids of the batches in the call, in order.
    pub ids: Vec<BatchId>,
    /// True when the call was passed on to the inner store and succeeded.
    pub ok: bool,
    /// Rows of every kind in the call.
    pub rows: usize,
}

impl<S> FaultyStore<S> {
    /// A wrapper that injects nothing until told to.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            fail_next: AtomicU32::new(0),
            reject_next: AtomicU32::new(0),
            failing: std::sync::atomic::AtomicBool::new(false),
            delay_us: AtomicU64::new(0),
            stalled: tokio::sync::watch::Sender::new(false),
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
            plan: Mutex::new((0, None)),
            gets: AtomicU64::new(0),
            lists: AtomicU64::new(0),
            loads: AtomicU64::new(0),
        }
    }

    /// The next `n` calls of any kind get `fault`.
    pub fn inject(&self, n: u64, fault: Fault) {
        *self.plan.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = (n, Some(fault));
    }

    /// Every call gets `fault` until [`FaultyStore::heal`].
    pub fn inject_always(&self, fault: Fault) {
        self.inject(u64::MAX, fault);
    }

    /// Ends what [`FaultyStore::inject`] planned.
    pub fn heal(&self) {
        self.inject(0, Fault::Unavailable);
    }

    /// Read calls so far.
    pub fn reads(&self) -> ReadCalls {
        ReadCalls {
            gets: self.gets.load(Ordering::SeqCst),
            lists: self.lists.load(Ordering::SeqCst),
            loads: self.loads.load(Ordering::SeqCst),
        }
    }

    /// Makes one call according to the plan of [`FaultyStore::inject`].
    async fn planned<T>(
        &self,
        call: impl Future<Output = Result<T, StorageError>>,
    ) -> Result<T, StorageError> {
        let fault = {
            let mut plan = self.plan.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if plan.0 == 0 {
                None
            } else {
                plan.0 -= 1;
                plan.1
            }
        };
        let err = match fault {
            None => return call.await,
            Some(Fault::SlowReply(d)) => {
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
        self.failures.fetch_add(1, Ordering::SeqCst);
        Err(err)
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The next `n` writes fail with a transient error.
    pub fn fail_next(&self, n: u32) {
        self.fail_next.store(n, Ordering::SeqCst);
    }

    /// The next `n` writes are refused with a non-transient error.
    pub fn reject_next(&self, n: u32) {
        self.reject_next.store(n, Ordering::SeqCst);
    }

    /// Every write fails (transient) while `on`.
    pub fn set_failing(&self, on: bool) {
        self.failing.store(on, Ordering::SeqCst);
    }

    /// Every write waits `delay` (asynchronously) before it runs.
    pub fn set_delay(&self, delay: Duration) {
        self.delay_us.store(u64::try_from(delay.as_micros()).unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    /// Writes wait, without finishing, until [`FaultyStore::release`].
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    /// Lets stalled writes go on.
    pub fn release(&self) {
        self.stalled.send_replace(false);
    }

    /// `write` calls so far (stalled ones included).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// `write` calls that failed because of an injected fault.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::SeqCst)
    }

    /// Every finished `write` call, in order.
    pub fn log(&self) -> Vec<Call> {
        self.log.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Ids of the batches in successful calls, in the order the inner store got them.
    pub fn written_ids(&self) -> Vec<BatchId> {
        self.log().into_iter().filter(|c| c.ok).flat_map(|c| c.ids).collect()
    }

    fn record(&self, batches: &[WriteBatch], ok: bool) {
        let ids = batches.iter().map(|b| b.id).collect();
        let rows = batches.iter().map(WriteBatch::len).sum();
        self.log.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(Call { ids, ok, rows });
    }

    fn injected(&self) -> Option<StorageError> {
        let take =
            |n: &AtomicU32| n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1)).is_ok();
        if take(&self.reject_next) {
            return Some(StorageError::Rejected { backend: "faulty", reason: "injected rejection".into() });
        }
        if take(&self.fail_next) || self.failing.load(Ordering::SeqCst) {
            let cause = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "injected failure");
            return Some(StorageError::unavailable("faulty", cause));
        }
        None
    }
}

impl<S: Storage> Storage for FaultyStore<S> {
    fn name(&self) -> &'static str {
        "faulty"
    }

    async fn write(&self, batches: &[WriteBatch]) -> Result<(), StorageError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut stalled = self.stalled.subscribe();
        // Only fails when the sender is gone, which `self` keeps alive.
        let _ = stalled.wait_for(|s| !*s).await;
        let delay = Duration::from_micros(self.delay_us.load(Ordering::SeqCst));
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if let Some(e) = self.injected() {
            self.failures.fetch_add(1, Ordering::SeqCst);
            self.record(batches, false);
            return Err(e);
        }
        let result = self.planned(self.inner.write(batches)).await;
        self.record(batches, result.is_ok());
        result
    }

    async fn get_npc(&self, id: u64) -> Result<Option<NpcRecord>, StorageError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.planned(self.inner.get_npc(id)).await
    }

    async fn list_npcs(&self, filter: &NpcFilter, page: Page) -> Result<NpcPage, StorageError> {
        self.lists.fetch_add(1, Ordering::SeqCst);
        self.planned(self.inner.list_npcs(filter, page)).await
    }

    async fn load_npcs(&self) -> Result<Vec<NpcRecord>, StorageError> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        self.planned(self.inner.load_npcs()).await
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

/// A [`BatchSink`] that keeps every batch it is given, with ids assigned like the
/// write-behind assigns them (`run` as given, `seq` from 1).
#[derive(Debug)]
pub struct RecordingSink {
    run_id: u64,
    handoffs: Mutex<Vec<Handoff>>,
    refuse_positions: std::sync::atomic::AtomicBool,
}

impl RecordingSink {
    /// An empty recorder for producer `run_id`.
    #[must_use]
    pub fn new(run_id: u64) -> Self {
        Self { run_id, handoffs: Mutex::new(Vec::new()), refuse_positions: false.into() }
    }

    /// Makes [`BatchSink::wants_positions`] answer `wants` (true at start), as a write-behind
    /// with a position batch waiting answers false.
    pub fn set_wants_positions(&self, wants: bool) {
        self.refuse_positions.store(!wants, std::sync::atomic::Ordering::SeqCst);
    }

    /// Every handoff so far, exactly as given (ids assigned).
    pub fn handoffs(&self) -> Vec<Handoff> {
        self.handoffs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Every batch so far as it would be written (columns turned into rows).
    pub fn batches(&self) -> Vec<WriteBatch> {
        self.handoffs().into_iter().map(Handoff::into_batch).collect()
    }
}

impl BatchSink for RecordingSink {
    fn submit(&self, mut handoff: Handoff) -> Result<(), WriteBehindError> {
        let mut all = self.handoffs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        handoff.batch.id = BatchId { run: self.run_id, seq: all.len() as u64 + 1 };
        all.push(handoff);
        Ok(())
    }

    fn run_id(&self) -> u64 {
        self.run_id
    }

    fn wants_positions(&self) -> bool {
        !self.refuse_positions.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Everything recorded counts as committed at once.
    fn health(&self) -> crate::SinkHealth {
        let all = self.handoffs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        crate::SinkHealth { committed_tick: all.last().map(|h| h.batch.tick), ..crate::SinkHealth::default() }
    }
}

/// The URL of a test service from the environment variable `var` (`TERRARIUM_TEST_PG_URL`,
/// `TERRARIUM_TEST_REDIS_URL`, set by `eval "$(scripts/services.sh start)"`): `Some(url)`, or
/// `None` plus a note on stderr when it is unset, so a service test skips on a machine without
/// the servers.
///
/// # Panics
/// When the variable is unset and `CI` is set: in CI a missing service is a failure, never a
/// silent skip.
#[must_use]
pub fn service_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => {
            panic!("{var} must be set in CI; see README (scripts/services.sh)")
        }
        _ => {
            eprintln!("skipping: set {var} to run this test (eval \"$(scripts/services.sh start)\")");
            None
        }
    }
}

/// A name no other test (or test process) uses: `test_` and 16 random hex digits. Always a
/// plain identifier, so it is safe as a schema name or a key prefix.
#[must_use]
pub fn unique_name() -> String {
    format!("test_{:016x}", fastrand::u64(..) ^ u64::from(std::process::id()).rotate_left(32))
}

/// PostgreSQL and Redis servers of one test, for fault tests that kill them: the workspace's
/// `scripts/services.sh` run in a temporary directory on free ports, so nothing a test does to
/// them disturbs other tests or the shared services. Nothing starts until [`OwnServers::run`]
/// asks (`start-pg`, `start-redis`, `kill-pg`, `restart-pg`, `pause-redis`, …); dropping it
/// stops whatever runs. Only for tests inside this workspace (the script is found from this
/// crate's source directory).
pub struct OwnServers {
    dir: tempfile::TempDir,
    pg_port: u16,
    redis_port: u16,
    /// The CA, certificate and key files given to the script (`with_tls`).
    tls: Option<[std::path::PathBuf; 3]>,
    #[cfg(feature = "testing-tls")]
    certificates: Option<TestCertificates>,
}

/// A test CA and a server certificate it signed, as PEM files (see [`test_certificates`]).
#[cfg(feature = "testing-tls")]
#[derive(Debug, Clone)]
pub struct TestCertificates {
    /// The CA's certificate: what a client trusts.
    pub ca: std::path::PathBuf,
    /// The server's certificate.
    pub cert: std::path::PathBuf,
    /// The server's private key.
    pub key: std::path::PathBuf,
}

/// Makes a new CA (its own key, never shared with another call) and a server certificate it
/// signed for `names` (host names, or IP addresses such as `127.0.0.1`), written as `ca.pem`,
/// `server.pem` and `server.key` in `dir`.
///
/// # Panics
/// When a key can't be generated or a file written.
#[cfg(feature = "testing-tls")]
#[must_use]
pub fn test_certificates(dir: &std::path::Path, names: &[&str]) -> TestCertificates {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, format!("Terrarium test CA {}", unique_name()));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca =
        CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("a CA key")).expect("a CA certificate");
    let names: Vec<String> = names.iter().map(|n| (*n).to_string()).collect();
    let mut server = CertificateParams::new(names).expect("server names");
    server.distinguished_name.push(DnType::CommonName, "terrarium test server");
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().expect("a server key");
    let cert = server.signed_by(&key, &ca).expect("a server certificate");
    let files = TestCertificates {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    };
    std::fs::write(&files.ca, ca.pem()).expect("writing ca.pem");
    std::fs::write(&files.cert, cert.pem()).expect("writing server.pem");
    std::fs::write(&files.key, key.serialize_pem()).expect("writing server.key");
    files
}

impl OwnServers {
    /// A temporary directory and two free ports.
    ///
    /// # Panics
    /// When no temporary directory or port can be had.
    #[must_use]
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory for the servers");
        Self {
            dir,
            pg_port: free_port(),
            redis_port: free_port(),
            tls: None,
            #[cfg(feature = "testing-tls")]
            certificates: None,
        }
    }

    /// As [`OwnServers::new`], but the servers speak TLS with a certificate for `localhost` and
    /// `127.0.0.1` signed by a CA of their own ([`OwnServers::certificates`]): PostgreSQL
    /// offers TLS (`ssl = on`; plain connections are still accepted), Redis speaks only TLS
    /// (its URL is `rediss://`).
    ///
    /// # Panics
    /// As [`OwnServers::new`] and [`test_certificates`].
    #[cfg(feature = "testing-tls")]
    #[must_use]
    pub fn with_tls() -> Self {
        let mut servers = Self::new();
        let certs = servers.dir.path().join("certs");
        std::fs::create_dir(&certs).expect("a directory for the certificates");
        let files = test_certificates(&certs, &["localhost", "127.0.0.1"]);
        servers.tls = Some([files.ca.clone(), files.cert.clone(), files.key.clone()]);
        servers.certificates = Some(files);
        servers
    }

    /// The certificates of [`OwnServers::with_tls`].
    #[cfg(feature = "testing-tls")]
    #[must_use]
    pub fn certificates(&self) -> Option<&TestCertificates> {
        self.certificates.as_ref()
    }

    /// Runs `scripts/services.sh <command>` against these servers; returns its stdout.
    ///
    /// # Panics
    /// When the script fails.
    pub fn run(&self, command: &str) -> String {
        let out = self.script(command).output().expect("scripts/services.sh runs");
        assert!(out.status.success(), "services.sh {command}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("services.sh prints UTF-8")
    }

    /// The value of `export <name>=…` that the script prints (`DATABASE_URL`, `REDIS_URL`).
    ///
    /// # Panics
    /// When the script does not print it.
    #[must_use]
    pub fn url(&self, name: &str) -> String {
        let env = self.run("env");
        let prefix = format!("export {name}=");
        let line = env.lines().find(|l| l.starts_with(&prefix)).expect("services.sh prints the variable");
        line[prefix.len()..].to_string()
    }

    fn script(&self, command: &str) -> std::process::Command {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/services.sh");
        let mut cmd = std::process::Command::new(path);
        cmd.arg(command)
            .env("TERRARIUM_SERVICES_DIR", self.dir.path())
            .env("TERRARIUM_PG_PORT", self.pg_port.to_string())
            .env("TERRARIUM_REDIS_PORT", self.redis_port.to_string());
        if let Some([ca, cert, key]) = &self.tls {
            cmd.env("TERRARIUM_TLS_CA", ca).env("TERRARIUM_TLS_CERT", cert).env("TERRARIUM_TLS_KEY", key);
        }
        cmd
    }
}

impl Default for OwnServers {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for OwnServers {
    fn drop(&mut self) {
        let _ = self.script("stop").output();
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port on loopback");
    listener.local_addr().expect("a bound socket has an address").port()
}
