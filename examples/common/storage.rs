//! The storage flags `headless` and `game_server` share (`--storage`, `--database-url`,
//! `--redis-url`) and starting the [`StoragePipeline`] they ask for. Included with
//! `#[path = "common/storage.rs"] mod storage;` by the examples that store NPCs only.

use anyhow::{Context, Result};
use clap::ValueEnum;
use serde::Serialize;
use terrarium::persistence::BackendKind;
use terrarium::{Config, StoragePipeline};

/// Where batched updates go.
#[derive(clap::Args, Debug, Clone)]
pub struct StorageFlags {
    /// Where batched updates go: `none` (no batching), `memory` (the embedded default, no
    /// server) or `postgres` (needs a build with `--features postgres` and a database URL).
    #[arg(long = "storage", value_enum, default_value_t = StorageKind::Memory)]
    pub kind: StorageKind,
    /// PostgreSQL URL for `--storage postgres` (else `storage.postgres.url` of the
    /// configuration, else the `DATABASE_URL` environment variable).
    #[arg(long = "database-url")]
    pub database_url: Option<String>,
    /// Redis URL: puts the Redis cache in front of the store (else `storage.redis.url`).
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
    /// Batching and write-behind into PostgreSQL (through the storage stack).
    Postgres,
}

impl StorageFlags {
    /// Points the `[storage]` configuration at what the flags ask for.
    pub fn apply(&self, cfg: &mut Config) {
        cfg.storage.backend = match self.kind {
            StorageKind::Postgres => BackendKind::Postgres,
            StorageKind::None | StorageKind::Memory => BackendKind::Memory,
        };
        if let Some(url) = &self.database_url {
            cfg.storage.postgres.url.clone_from(url);
        } else if self.kind == StorageKind::Postgres
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
        if self.kind == StorageKind::None {
            return Ok(None);
        }
        self.apply(cfg);
        let pipeline = match runtime {
            Some(handle) => StoragePipeline::start_on(handle, cfg),
            None => StoragePipeline::start(cfg),
        };
        pipeline.map(Some).context("cannot start storage")
    }
}
