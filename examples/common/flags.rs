//! The flags `headless` and `game_server` share: the world's configuration (`--config`,
//! `--seed`, `--threads`, `--tick-hz`, `--outbox`) and its storage (`--storage`,
//! `--database-url`, `--redis-url`, and starting the [`StoragePipeline`] they ask for).
//! Included with `#[path = "common/flags.rs"] mod flags;` by those two only.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::ValueEnum;
use serde::Serialize;
use terrarium::persistence::BackendKind;
use terrarium::{Config, StoragePipeline};

/// The configuration of a world: a file or the defaults, the environment over it, these flags
/// over both.
#[derive(clap::Args, Debug, Clone)]
pub struct WorldFlags {
    /// World seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Worker threads of parallel systems (0 = one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Pin each worker thread to a CPU of its own (`engine.pin_threads`): for a machine the
    /// world has to itself, with `--threads` at most its core count.
    #[arg(long = "pin-threads")]
    pub pin_threads: bool,
    /// Ticks per simulated second (a game server, or `--realtime`, also ticks at this rate in
    /// wall-clock time).
    #[arg(long = "tick-hz")]
    pub tick_hz: Option<u32>,
    /// Spill file of the write-behind (used when the store fails or too much waits; replayed
    /// at the next start). Overrides `write_behind.outbox_path` of the configuration.
    #[arg(long)]
    pub outbox: Option<PathBuf>,
    /// Configuration file (TOML); flags override it, the environment overrides the file.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

impl WorldFlags {
    /// The configuration these flags describe, with `[engine]` checked.
    pub fn load(&self) -> Result<Config> {
        let mut cfg = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::from_env()?,
        };
        if let Some(seed) = self.seed {
            cfg.engine.seed = seed;
        }
        if let Some(threads) = self.threads {
            cfg.engine.threads = threads;
            let cores = std::thread::available_parallelism().map_or(1, usize::from);
            if threads > cores {
                tracing::warn!(
                    threads,
                    cores,
                    "--threads is above the machine's core count: the extra threads only share cores"
                );
            }
        }
        if self.pin_threads {
            cfg.engine.pin_threads = true;
        }
        if let Some(hz) = self.tick_hz {
            cfg.engine.tick_hz = hz;
        }
        if let Some(path) = &self.outbox {
            // Creating the directories of a mistyped path would hide the mistake.
            check_parent_dir("--outbox", path)?;
            cfg.write_behind.outbox_path = Some(path.clone());
        }
        cfg.engine.validate()?;
        Ok(cfg)
    }
}

/// Where batched updates go.
#[derive(clap::Args, Debug, Clone)]
pub struct StorageFlags {
    /// Where batched updates go: `none` (no batching), `memory` (in process, nothing outlives
    /// it), `embedded` (SQLite in `--data-dir`, no server) or `postgres` (needs a build with
    /// `--features postgres` and a database URL). A durable store that holds a world resumes it.
    /// Default: `memory` for `headless`, `embedded` for `game_server`.
    #[arg(long = "storage", value_enum)]
    pub kind_flag: Option<StorageKind>,
    /// The kind when `--storage` is not given (set by the binary).
    #[arg(skip = StorageKind::Memory)]
    pub default_kind: StorageKind,
    /// Directory of the embedded store (`--storage embedded`): the database is
    /// `DIR/terrarium.db` (else `storage.embedded.path`, default `./terrarium-data/terrarium.db`).
    #[arg(long = "data-dir")]
    pub data_dir: Option<PathBuf>,
    /// Ticks between checkpoints of the whole world (0 = only a new world's first and at a
    /// clean shutdown); else `storage.checkpoint.every_ticks` (default 1200).
    #[arg(long = "checkpoint-every")]
    pub checkpoint_every: Option<u64>,
    /// Start a new world instead of resuming the stored one; only with `--wipe`, which deletes
    /// the stored world first.
    #[arg(long = "new-world", requires = "wipe")]
    pub new_world: bool,
    /// Delete everything the store holds (rows and checkpoints) before starting; only with
    /// `--new-world`.
    #[arg(long, requires = "new_world")]
    pub wipe: bool,
    /// PostgreSQL URL for `--storage postgres` (else `storage.postgres.url` of the
    /// configuration, else the `DATABASE_URL` environment variable). TLS as libpq:
    /// `?sslmode=verify-full&sslrootcert=CA.pem` (modes disable, prefer, require, verify-ca,
    /// verify-full; default prefer).
    #[arg(long = "database-url")]
    pub database_url: Option<String>,
    /// Redis URL: puts the Redis cache in front of the store (else `storage.redis.url`);
    /// `rediss://` for TLS (CA file: `storage.redis.tls_ca_file`, else Mozilla's roots).
    #[arg(long = "redis-url")]
    pub redis_url: Option<String>,
}

/// The value of `--storage`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// No batching and no persistence.
    None,
    /// Batching and write-behind into the in-process store.
    Memory,
    /// Batching and write-behind into the embedded on-disk store (SQLite).
    Embedded,
    /// Batching and write-behind into PostgreSQL (through the storage stack).
    Postgres,
}

impl StorageFlags {
    /// The kind asked for: `--storage`, else the binary's default.
    pub fn kind(&self) -> StorageKind {
        self.kind_flag.unwrap_or(self.default_kind)
    }

    /// Points the `[storage]` configuration at what the flags ask for.
    pub fn apply(&self, cfg: &mut Config) {
        cfg.storage.backend = match self.kind() {
            StorageKind::Postgres => BackendKind::Postgres,
            StorageKind::Embedded => BackendKind::Embedded,
            StorageKind::None | StorageKind::Memory => BackendKind::Memory,
        };
        if let Some(dir) = &self.data_dir {
            cfg.storage.embedded.path = dir.join("terrarium.db");
        }
        match self.checkpoint_every {
            Some(n) => cfg.storage.checkpoint.every_ticks = n,
            // Nothing outlives the memory store: a checkpoint there would only cost time.
            None if self.kind() == StorageKind::Memory => cfg.storage.checkpoint.every_ticks = 0,
            None => {}
        }
        if let Some(url) = &self.database_url {
            cfg.storage.postgres.url.clone_from(url);
        } else if self.kind() == StorageKind::Postgres
            && cfg.storage.postgres.url.is_empty()
            && let Ok(url) = std::env::var("DATABASE_URL")
        {
            cfg.storage.postgres.url = url;
        }
        if let Some(url) = &self.redis_url {
            cfg.storage.redis.url.clone_from(url);
        }
    }

    /// Applies the flags to `cfg` and starts the pipeline they ask for (`None` for
    /// `--storage none`): on `runtime` when given, else on a runtime of its own. Call it
    /// outside any runtime (it blocks until storage is connected).
    pub fn start(
        &self,
        cfg: &mut Config,
        runtime: Option<&tokio::runtime::Handle>,
    ) -> Result<Option<StoragePipeline>> {
        if self.kind() == StorageKind::None {
            return Ok(None);
        }
        self.apply(cfg);
        let pipeline = match runtime {
            Some(handle) => StoragePipeline::start_on(handle, cfg),
            None => StoragePipeline::start(cfg),
        };
        let pipeline = pipeline.context("cannot start storage")?;
        if self.wipe {
            pipeline.wipe().context("cannot wipe the stored world")?;
            eprintln!("--new-world --wipe: the stored world was deleted; starting a new one");
        }
        Ok(Some(pipeline))
    }

    /// True when the store outlives the process (a stopped world is stored to resume).
    #[allow(dead_code, reason = "each binary including this file uses part of it")]
    pub fn durable(&self) -> bool {
        matches!(self.kind(), StorageKind::Embedded | StorageKind::Postgres)
    }
}

/// Fails (naming `flag`) unless the directory `path` would be created in exists: an output
/// path is checked before a run, not after it.
pub fn check_parent_dir(flag: &str, path: &std::path::Path) -> Result<()> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    anyhow::ensure!(
        parent.is_dir(),
        "{flag} {}: directory {} does not exist",
        path.display(),
        parent.display()
    );
    Ok(())
}
