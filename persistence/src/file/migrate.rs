//! Versioned migrations of the embedded store, recorded in `schema_migrations` with a checksum,
//! applied in one `BEGIN IMMEDIATE` transaction (which also keeps two processes opening the
//! same file from migrating at once). A schema newer than this build, or an edited migration,
//! is refused.

use rusqlite::{Connection, TransactionBehavior};

use super::{BACKEND, DbResult, bits, now_ms};
use crate::StorageError;

struct Migration {
    version: i64,
    name: &'static str,
    sql: &'static str,
}

const MIGRATIONS: &[Migration] =
    &[Migration { version: 1, name: "initial", sql: include_str!("migrations/V1__initial.sql") }];

/// The schema version this build brings a database to.
pub(super) const MIGRATION_VERSION: i64 = 1;

pub(super) fn run(conn: &mut Connection) -> DbResult<Vec<i64>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    INTEGER PRIMARY KEY,
             name       TEXT    NOT NULL,
             checksum   INTEGER NOT NULL,
             applied_at INTEGER NOT NULL
         );",
    )?;
    let done: Vec<(i64, i64)> = {
        let mut stmt = tx.prepare("SELECT version, checksum FROM schema_migrations ORDER BY version")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    for &(version, sum) in &done {
        let reason = match MIGRATIONS.iter().find(|m| m.version == version) {
            None => format!(
                "database is at schema version {version}, newer than this build knows ({MIGRATION_VERSION})"
            ),
            Some(m) if sum != checksum(m.sql) => {
                format!("migration V{version} ({}) was changed after it was applied", m.name)
            }
            Some(_) => continue,
        };
        return Err(StorageError::Rejected { backend: BACKEND, reason }.into());
    }
    let mut applied = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| done.iter().all(|&(v, _)| v != m.version)) {
        tracing::info!(version = m.version, name = m.name, "applying embedded migration");
        tx.execute_batch(m.sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![m.version, m.name, checksum(m.sql), now_ms()],
        )?;
        applied.push(m.version);
    }
    tx.commit()?;
    Ok(applied)
}

fn checksum(sql: &str) -> i64 {
    bits(terrarium_codec::checksum(sql.as_bytes()))
}
