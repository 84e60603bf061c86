//! Versioned migrations, recorded in `schema_migrations` inside the store's schema.
//!
//! Hand-rolled rather than refinery (see ARCHITECTURE.md): one transaction under an advisory lock
//! (so processes starting together do not race), everything scoped to one schema (tests run in
//! parallel, each in its own), checksums that catch an edited migration, and a refusal to run
//! against a schema newer than this build.

use deadpool_postgres::Object;

use super::{BACKEND, PgStore};
use crate::StorageError;

/// One migration: applied once, in version order, never edited after release.
struct Migration {
    version: i32,
    name: &'static str,
    sql: &'static str,
}

const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "initial", sql: include_str!("migrations/V1__initial.sql") },
    Migration { version: 2, name: "checkpoints", sql: include_str!("migrations/V2__checkpoints.sql") },
    Migration {
        version: 3,
        name: "position_blocks",
        sql: include_str!("migrations/V3__position_blocks.sql"),
    },
    Migration { version: 4, name: "regions", sql: include_str!("migrations/V4__regions.sql") },
    Migration {
        version: 5,
        name: "registry_fillfactor",
        sql: include_str!("migrations/V5__registry_fillfactor.sql"),
    },
    Migration { version: 6, name: "region_state", sql: include_str!("migrations/V6__region_state.sql") },
];

/// What [`PgStore::migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// Versions applied by this run, in order (empty when the schema was up to date).
    pub applied: Vec<i32>,
    /// The schema's version now.
    pub version: i32,
}

pub(super) async fn run(store: &PgStore, client: &mut Object) -> Result<MigrationReport, StorageError> {
    let err = |e| store.pg_error(e);
    let schema = store.schema();
    let tx = client.transaction().await.map_err(err)?;
    // Serializes migrations of this schema across processes, until commit.
    let lock_key = super::bits(terrarium_codec::checksum(format!("terrarium-migrate:{schema}").as_bytes()));
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock_key]).await.map_err(err)?;
    // `schema` is a checked identifier; this is the only place it is spliced into SQL text.
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         SET LOCAL search_path TO {schema};
         CREATE TABLE IF NOT EXISTS schema_migrations (
             version    integer     PRIMARY KEY,
             name       text        NOT NULL,
             checksum   bigint      NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         );"
    ))
    .await
    .map_err(err)?;
    let done: Vec<(i32, i64)> = tx
        .query("SELECT version, checksum FROM schema_migrations ORDER BY version", &[])
        .await
        .map_err(err)?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let newest = MIGRATIONS.last().map_or(0, |m| m.version);
    if let Some(reason) = refusal(schema, &done, newest) {
        // Roll back now rather than on drop, so the lock is gone when the error arrives.
        tx.rollback().await.map_err(err)?;
        return Err(StorageError::Rejected { backend: BACKEND, reason });
    }
    let mut applied = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| done.iter().all(|&(v, _)| v != m.version)) {
        tracing::info!(schema, version = m.version, name = m.name, "applying migration");
        tx.batch_execute(m.sql).await.map_err(err)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&m.version, &m.name, &checksum(m.sql)],
        )
        .await
        .map_err(err)?;
        applied.push(m.version);
    }
    tx.commit().await.map_err(err)?;
    Ok(MigrationReport { applied, version: newest })
}

fn checksum(sql: &str) -> i64 {
    super::bits(terrarium_codec::checksum(sql.as_bytes()))
}

/// Why the recorded migrations can't be brought up to date by this build, if they can't.
fn refusal(schema: &str, done: &[(i32, i64)], newest: i32) -> Option<String> {
    done.iter().find_map(|&(version, sum)| match MIGRATIONS.iter().find(|m| m.version == version) {
        None => {
            Some(format!("schema {schema} is at version {version}, newer than this build knows ({newest})"))
        }
        Some(m) if sum != checksum(m.sql) => {
            Some(format!("migration V{version} ({}) was changed after it was applied", m.name))
        }
        Some(_) => None,
    })
}
