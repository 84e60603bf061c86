//! The embedded write path: one transaction per `write` call, exactly once per batch id;
//! checkpoints; retention; wiping.

use std::collections::BTreeMap;

use rusqlite::{Connection, Transaction, TransactionBehavior, params};

use super::{DbResult, bits, to_i64};
use crate::fold::fold;
use crate::{Checkpoint, PositionRow, WriteBatch};

/// History tables the retention job trims (the only table names spliced into SQL text).
pub(super) const HISTORY_TABLES: [&str; 3] = ["npc_positions", "metrics", "events"];

/// What one call stored.
#[derive(Debug, Default)]
pub(super) struct Written {
    pub applied: u64,
    pub skipped: u64,
    pub positions: u64,
    pub metrics: u64,
    pub events: u64,
    pub upserts: u64,
    pub moves: u64,
    pub removals: u64,
}

pub(super) fn write_batches(conn: &mut Connection, batches: &[WriteBatch], now: i64) -> DbResult<Written> {
    // IMMEDIATE: the write lock is taken at BEGIN, so the marks read below can't change under us.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let fresh = claim(&tx, batches)?;
    let mut out = Written { skipped: (batches.len() - fresh.len()) as u64, ..Written::default() };
    if fresh.is_empty() {
        tx.commit()?;
        return Ok(out);
    }
    let mut rows: Vec<&PositionRow> = fresh.iter().flat_map(|b| &b.positions).collect();
    // In index order: an NPC's rows land next to each other in the (npc_id, tick) index.
    rows.sort_unstable_by_key(|p| (p.npc_id, p.tick));
    out.positions = insert_positions(&tx, &rows, now)?;
    out.metrics = insert_metrics(&tx, &fresh, now)?;
    out.events = insert_events(&tx, &fresh, now)?;
    let folded = fold(&fresh);
    {
        let mut del = tx.prepare_cached("DELETE FROM npcs WHERE id = ?1")?;
        for &id in &folded.removed {
            out.removals += del.execute([to_i64("npc id", id)?])? as u64;
        }
        let mut up = tx.prepare_cached(
            "INSERT INTO npcs (id, role, status, swarm, agent, x, y, z, health, inventory, updated_tick) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
             ON CONFLICT (id) DO UPDATE SET role = excluded.role, status = excluded.status, \
             swarm = excluded.swarm, agent = excluded.agent, x = excluded.x, y = excluded.y, z = excluded.z, \
             health = excluded.health, inventory = excluded.inventory, updated_tick = excluded.updated_tick",
        )?;
        for r in &folded.upserts {
            let inventory = terrarium_codec::encode(&r.inventory)
                .map_err(|e| crate::StorageError::failed(super::BACKEND, e))?;
            out.upserts += up.execute(params![
                to_i64("npc id", r.id)?,
                r.role,
                r.status,
                i64::from(r.swarm),
                r.agent,
                f64::from(r.x),
                f64::from(r.y),
                f64::from(r.z),
                i64::from(r.health),
                inventory,
                to_i64("tick", r.updated_tick)?,
            ])? as u64;
        }
        let mut mv = tx.prepare_cached(
            "UPDATE npcs SET x = ?2, y = ?3, z = ?4, updated_tick = ?5 WHERE id = ?1 AND updated_tick <= ?5",
        )?;
        for p in &folded.moves {
            out.moves += mv.execute(params![
                to_i64("npc id", p.npc_id)?,
                f64::from(p.x),
                f64::from(p.y),
                f64::from(p.z),
                to_i64("tick", p.tick)?,
            ])? as u64;
        }
    }
    raise_marks(&tx, &fresh, now)?;
    tx.commit()?;
    out.applied = fresh.len() as u64;
    Ok(out)
}

/// The batches not applied yet, in order (the marks are read under the write lock).
fn claim<'b>(tx: &Transaction<'_>, batches: &'b [WriteBatch]) -> DbResult<Vec<&'b WriteBatch>> {
    let mut marks: BTreeMap<i64, i64> = BTreeMap::new();
    let mut get = tx.prepare_cached("SELECT seq FROM applied_batches WHERE run = ?1")?;
    let mut fresh = Vec::with_capacity(batches.len());
    for b in batches {
        let run = bits(b.id.run);
        let seq = to_i64("batch seq", b.id.seq)?;
        let high = match marks.get_mut(&run) {
            Some(h) => h,
            None => {
                let stored: Option<i64> =
                    get.query_row([run], |r| r.get(0)).map(Some).or_else(none_if_no_rows)?;
                marks.entry(run).or_insert(stored.unwrap_or(-1))
            }
        };
        if seq > *high {
            *high = seq;
            fresh.push(b);
        }
    }
    Ok(fresh)
}

fn raise_marks(tx: &Transaction<'_>, fresh: &[&WriteBatch], now: i64) -> DbResult<()> {
    let mut high: BTreeMap<i64, i64> = BTreeMap::new();
    for b in fresh {
        let seq = to_i64("batch seq", b.id.seq)?;
        let e = high.entry(bits(b.id.run)).or_insert(seq);
        *e = (*e).max(seq);
    }
    let mut up = tx.prepare_cached(
        "INSERT INTO applied_batches (run, seq, applied_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT (run) DO UPDATE SET seq = excluded.seq, applied_at = excluded.applied_at",
    )?;
    for (run, seq) in high {
        up.execute(params![run, seq, now])?;
    }
    Ok(())
}

fn insert_positions(tx: &Transaction<'_>, rows: &[&PositionRow], now: i64) -> DbResult<u64> {
    let mut ins = tx.prepare_cached(
        "INSERT INTO npc_positions (npc_id, tick, x, y, z, recorded_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for p in rows {
        ins.execute(params![
            to_i64("npc id", p.npc_id)?,
            to_i64("tick", p.tick)?,
            f64::from(p.x),
            f64::from(p.y),
            f64::from(p.z),
            now
        ])?;
    }
    Ok(rows.len() as u64)
}

fn insert_metrics(tx: &Transaction<'_>, fresh: &[&WriteBatch], now: i64) -> DbResult<u64> {
    let mut ins = tx.prepare_cached(
        "INSERT INTO metrics (entity_kind, entity_id, name, tick, value, samples, recorded_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    let mut n = 0;
    for m in fresh.iter().flat_map(|b| &b.metrics) {
        ins.execute(params![
            m.entity_kind.name(),
            bits(m.entity_id),
            m.name,
            to_i64("tick", m.tick)?,
            m.value,
            i64::from(m.samples),
            now
        ])?;
        n += 1;
    }
    Ok(n)
}

fn insert_events(tx: &Transaction<'_>, fresh: &[&WriteBatch], now: i64) -> DbResult<u64> {
    let mut ins = tx.prepare_cached(
        "INSERT INTO events (event_id, event_type, entity_kind, entity_id, correlation_id, tick, sim_time_ms, \
         recorded_at, payload, compressed, count) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
         ON CONFLICT (event_id) DO NOTHING",
    )?;
    let mut n = 0;
    for e in fresh.iter().flat_map(|b| &b.events) {
        ins.execute(params![
            bits(e.event_id),
            e.event_type,
            e.entity_kind.name(),
            bits(e.entity_id),
            bits(e.correlation_id),
            to_i64("tick", e.tick)?,
            to_i64("time_ms", e.time_ms)?,
            now,
            e.payload,
            e.compressed,
            i64::from(e.count),
        ])?;
        n += 1;
    }
    Ok(n)
}

pub(super) fn save_checkpoint(conn: &mut Connection, cp: &Checkpoint, keep: u32, now: i64) -> DbResult<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute(
        "INSERT INTO checkpoints (run, seq, tick, clean, checksum, size, bytes, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            bits(cp.run),
            to_i64("batch seq", cp.seq)?,
            to_i64("tick", cp.tick)?,
            cp.clean,
            bits(terrarium_codec::checksum(&cp.bytes)),
            i64::try_from(cp.bytes.len()).unwrap_or(i64::MAX),
            cp.bytes,
            now
        ],
    )?;
    tx.execute(
        "DELETE FROM checkpoints WHERE id NOT IN (SELECT id FROM checkpoints ORDER BY tick DESC, id DESC LIMIT ?1)",
        [i64::from(keep.max(1))],
    )?;
    tx.commit()?;
    Ok(())
}

pub(super) fn wipe(conn: &mut Connection) -> DbResult<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(
        "DELETE FROM npcs; DELETE FROM npc_positions; DELETE FROM metrics; DELETE FROM events; \
         DELETE FROM applied_batches; DELETE FROM checkpoints;",
    )?;
    tx.commit()?;
    Ok(())
}

/// Deletes at most `chunk` rows of `table` recorded before `cutoff` (ms); returns how many.
pub(super) fn purge_chunk(conn: &mut Connection, table: &str, cutoff: i64, chunk: u32) -> DbResult<u64> {
    debug_assert!(HISTORY_TABLES.contains(&table));
    // `table` is one of HISTORY_TABLES (constants); the values are parameters.
    let sql = format!(
        "DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE recorded_at < ?1 LIMIT ?2)"
    );
    Ok(conn.execute(&sql, params![cutoff, i64::from(chunk)])? as u64)
}

/// `Ok(None)` for "no row", the error otherwise.
pub(super) fn none_if_no_rows<T>(e: rusqlite::Error) -> Result<Option<T>, rusqlite::Error> {
    match e {
        rusqlite::Error::QueryReturnedNoRows => Ok(None),
        e => Err(e),
    }
}
