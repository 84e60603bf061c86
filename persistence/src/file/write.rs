//! The embedded write path: one transaction per `write` call, exactly once per batch id;
//! checkpoints; retention; wiping.

use std::collections::BTreeMap;

use rusqlite::{Connection, Transaction, TransactionBehavior, params};

use super::{DbResult, bits, blocks, to_i64};
use crate::fold::fold;
use crate::{Checkpoint, PositionRow, WriteBatch};

/// Row-by-row history tables the retention job trims (constants: the only other table names
/// spliced into SQL text are the day tables of positions, see `blocks`).
pub(super) const HISTORY_TABLES: [&str; 2] = ["metrics", "events"];

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
    out.positions = insert_history(&tx, &fresh, now)?;
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
        // Most NPCs carry nothing: their inventory's bytes are encoded once.
        let empty = encode_inventory(&[])?;
        for r in &folded.upserts {
            let inventory =
                if r.inventory.is_empty() { empty.clone() } else { encode_inventory(&r.inventory)? };
            out.upserts += up.execute(params![
                to_i64("npc id", r.id)?,
                r.role.as_str(),
                r.status.as_str(),
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
    }
    out.moves = update_blocks(&tx, &folded.latest)?;
    raise_marks(&tx, &fresh, now)?;
    tx.commit()?;
    out.applied = fresh.len() as u64;
    Ok(out)
}

fn encode_inventory(stacks: &[(u16, u16)]) -> DbResult<Vec<u8>> {
    Ok(terrarium_codec::encode(stacks).map_err(|e| crate::StorageError::failed(super::BACKEND, e))?)
}

/// Brings `position_blocks` up to date with each NPC's latest position of the call (or its
/// removal): each block touched is read, merged (per NPC the newer tick wins) and written
/// once. Returns the positions written.
fn update_blocks(tx: &Transaction<'_>, latest: &[(u64, Option<&PositionRow>)]) -> DbResult<u64> {
    let mut moved = 0;
    let mut i = 0;
    let (mut new, mut removed) = (Vec::with_capacity(64), Vec::new());
    while i < latest.len() {
        let block = blocks::block_of(to_i64("npc id", latest[i].0)?);
        new.clear();
        removed.clear();
        while i < latest.len() {
            let id = to_i64("npc id", latest[i].0)?;
            if blocks::block_of(id) != block {
                break;
            }
            match latest[i].1 {
                Some(p) => new.push((id, to_i64("tick", p.tick)?, [p.x, p.y, p.z])),
                None => removed.push(id),
            }
            i += 1;
        }
        let mut b = blocks::Block::load(tx, block)?.unwrap_or_default();
        if b.ids.is_empty() && new.is_empty() {
            continue;
        }
        b.merge(&new, &removed);
        b.store(tx, block)?;
        moved += new.len() as u64;
    }
    Ok(moved)
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

/// History: the call's positions grouped by (block, tick), ids ascending, one row per group
/// in the history table of the writer's day. Returns the positions stored.
fn insert_history(tx: &Transaction<'_>, fresh: &[&WriteBatch], now: i64) -> DbResult<u64> {
    let mut rows: Vec<&PositionRow> = fresh.iter().flat_map(|b| &b.positions).collect();
    if rows.is_empty() {
        return Ok(0);
    }
    // Stable: of two rows of one NPC and tick, the later batch's stays last (and is kept).
    rows.sort_by_key(|p| (p.npc_id / blocks::BLOCK as u64, p.tick, p.npc_id));
    let table = blocks::ensure_history_table(tx, blocks::day_of(now))?;
    // `table` is a name `blocks` made (a prefix and a number).
    let mut ins = tx.prepare_cached(&format!(
        "INSERT INTO {table} (block, tick, ids, xyz, recorded_at) VALUES (?1, ?2, ?3, ?4, ?5)"
    ))?;
    let (mut ids, mut xyz) = (Vec::with_capacity(64 * 8), Vec::with_capacity(64 * 12));
    let mut i = 0;
    while i < rows.len() {
        let (block, tick) =
            (to_i64("npc id", rows[i].npc_id)? / blocks::BLOCK, to_i64("tick", rows[i].tick)?);
        ids.clear();
        xyz.clear();
        let mut last = None;
        while i < rows.len() {
            let p = rows[i];
            let id = to_i64("npc id", p.npc_id)?;
            if id / blocks::BLOCK != block || to_i64("tick", p.tick)? != tick {
                break;
            }
            i += 1;
            // An NPC appears once per tick (two rows of one tick: the later batch's is kept).
            if last == Some(id) {
                ids.truncate(ids.len() - 8);
                xyz.truncate(xyz.len() - 12);
            }
            last = Some(id);
            ids.extend_from_slice(&id.to_le_bytes());
            for v in [p.x, p.y, p.z] {
                xyz.extend_from_slice(&v.to_le_bytes());
            }
        }
        ins.execute(params![block, tick, ids, xyz, now])?;
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
        "DELETE FROM npcs; DELETE FROM position_blocks; DELETE FROM metrics; DELETE FROM events; \
         DELETE FROM applied_batches; DELETE FROM checkpoints;",
    )?;
    for (_, table) in blocks::history_tables(&tx)? {
        tx.execute_batch(&format!("DROP TABLE {table}"))?;
    }
    tx.commit()?;
    Ok(())
}

/// Drops the position history tables of days that ended at or before `cutoff` (ms); returns
/// the positions they held.
pub(super) fn drop_history_days(conn: &mut Connection, cutoff: i64) -> DbResult<u64> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut dropped = 0u64;
    for (day, table) in blocks::history_tables(&tx)? {
        if (day + 1).saturating_mul(blocks::DAY_MS) <= cutoff {
            // `table` is a name `blocks` made (a prefix and a number).
            let n: i64 =
                tx.query_row(&format!("SELECT coalesce(sum(length(ids)), 0) / 8 FROM {table}"), [], |r| {
                    r.get(0)
                })?;
            tx.execute_batch(&format!("DROP TABLE {table}"))?;
            dropped += u64::try_from(n).unwrap_or(0);
        }
    }
    tx.commit()?;
    Ok(dropped)
}

/// The history table of the day `cutoff` (ms) falls in, when it exists: the one table whose
/// rows retention deletes one by one.
pub(super) fn history_table_at(conn: &mut Connection, cutoff: i64) -> DbResult<Option<String>> {
    let day = blocks::day_of(cutoff);
    Ok(blocks::history_tables(conn)?.into_iter().find(|&(d, _)| d == day).map(|(_, t)| t))
}

/// Deletes at most `chunk` rows of `table` recorded before `cutoff` (ms); returns how many.
pub(super) fn purge_chunk(conn: &mut Connection, table: &str, cutoff: i64, chunk: u32) -> DbResult<u64> {
    // `table` is one of HISTORY_TABLES (constants) or a day table named by `blocks`; the values
    // are parameters.
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
