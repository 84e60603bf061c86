//! Versioned migrations of the embedded store, recorded in `schema_migrations` with a checksum,
//! applied in one `BEGIN IMMEDIATE` transaction (which also keeps two processes opening the
//! same file from migrating at once). A schema newer than this build, or an edited migration,
//! is refused.

use rusqlite::{Connection, Transaction, TransactionBehavior, params};

use super::blocks::{self, Block};
use super::{BACKEND, DbResult, bits, now_ms};
use crate::StorageError;

struct Migration {
    version: i64,
    name: &'static str,
    sql: &'static str,
    /// Moves rows the SQL can't (SQLite has no arrays), in the same transaction, after it.
    convert: Option<fn(&Transaction<'_>) -> DbResult<()>>,
}

const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "initial", sql: include_str!("migrations/V1__initial.sql"), convert: None },
    Migration {
        version: 2,
        name: "position_blocks",
        sql: include_str!("migrations/V2__position_blocks.sql"),
        convert: Some(v1_rows_into_blocks),
    },
    Migration {
        version: 3,
        name: "position_views",
        sql: include_str!("migrations/V3__position_views.sql"),
        convert: None,
    },
];

/// The schema version this build brings a database to.
pub(super) const MIGRATION_VERSION: i64 = 3;

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
        if let Some(convert) = m.convert {
            convert(&tx)?;
        }
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

/// A history row being built: (block, tick, recorded_at, ids, positions).
type Group = (i64, i64, i64, Vec<i64>, Vec<[f32; 3]>);

/// V2: current positions from `npcs` into `position_blocks`, `npc_positions` into day tables
/// of blocks (one row per block and tick, in the day of its first row), then `npc_positions`
/// goes.
fn v1_rows_into_blocks(tx: &Transaction<'_>) -> DbResult<()> {
    {
        let mut stmt = tx.prepare("SELECT id, updated_tick, x, y, z FROM npcs ORDER BY id")?;
        let mut rows = stmt.query([])?;
        let mut cur: Option<(i64, Block)> = None;
        while let Some(r) = rows.next()? {
            let id: i64 = r.get(0)?;
            let block = blocks::block_of(id);
            if cur.as_ref().is_some_and(|(b, _)| *b != block)
                && let Some((b, blk)) = cur.take()
            {
                blk.store(tx, b)?;
            }
            let (_, blk) = cur.get_or_insert_with(|| (block, Block::default()));
            blk.ids.push(id);
            blk.ticks.push(r.get(1)?);
            blk.xyz.push([f32_of(r.get(2)?), f32_of(r.get(3)?), f32_of(r.get(4)?)]);
        }
        if let Some((b, blk)) = cur {
            blk.store(tx, b)?;
        }
    }
    {
        let mut stmt = tx.prepare(
            "SELECT npc_id, tick, x, y, z, recorded_at FROM npc_positions \
             ORDER BY npc_id / 64, tick, npc_id, rowid",
        )?;
        let mut rows = stmt.query([])?;
        // (block, tick, recorded_at, ids, xyz) of the group being built.
        let mut group: Option<Group> = None;
        let flush = |g: Group| -> DbResult<()> {
            let (block, tick, at, ids, xyz) = g;
            let table = blocks::ensure_history_table(tx, blocks::day_of(at))?;
            tx.execute(
                &format!(
                    "INSERT INTO {table} (block, tick, ids, xyz, recorded_at) VALUES (?1, ?2, ?3, ?4, ?5)"
                ),
                params![block, tick, blocks::encode_i64(&ids), blocks::encode_xyz(&xyz), at],
            )?;
            Ok(())
        };
        while let Some(r) = rows.next()? {
            let (id, tick, at): (i64, i64, i64) = (r.get(0)?, r.get(1)?, r.get(5)?);
            let xyz = [f32_of(r.get(2)?), f32_of(r.get(3)?), f32_of(r.get(4)?)];
            let block = blocks::block_of(id);
            if group.as_ref().is_some_and(|g| g.0 != block || g.1 != tick)
                && let Some(g) = group.take()
            {
                flush(g)?;
            }
            let g = group.get_or_insert_with(|| (block, tick, at, Vec::new(), Vec::new()));
            // One element per NPC and tick (V1 may hold a row twice): the first stays.
            if g.3.last() != Some(&id) {
                g.3.push(id);
                g.4.push(xyz);
            }
        }
        if let Some(g) = group {
            flush(g)?;
        }
    }
    tx.execute_batch("DROP TABLE npc_positions;")?;
    Ok(())
}

/// Values were stored from `f32`, so the conversion back is exact.
#[expect(clippy::cast_possible_truncation, reason = "stored from f32")]
fn f32_of(v: f64) -> f32 {
    v as f32
}
