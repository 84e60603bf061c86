//! The embedded read path: current state by id, by filter with cursor pagination, all of it;
//! checkpoints and what a resume needs; history for tools and tests.

use std::ops::Range;

use rusqlite::types::Value;
use rusqlite::{Connection, Row, params};

use super::write::none_if_no_rows;
use super::{DbResult, corrupt, unbits};
use crate::{Checkpoint, NpcFilter, NpcPage, NpcRecord, Page, PositionRow, ResumePoint};

/// Largest inventory accepted when decoding a stored row.
const INVENTORY_LIMIT: usize = 64 * 1024;

const NPC_COLUMNS: &str = "id, role, status, swarm, agent, x, y, z, health, inventory, updated_tick";

pub(super) fn npc(conn: &Connection, id: u64) -> DbResult<Option<NpcRecord>> {
    let Ok(id) = i64::try_from(id) else { return Ok(None) };
    let mut stmt = conn.prepare_cached(&format!("SELECT {NPC_COLUMNS} FROM npcs WHERE id = ?1"))?;
    let mut rows = stmt.query([id])?;
    match rows.next()? {
        Some(r) => Ok(Some(npc_from_row(r)?)),
        None => Ok(None),
    }
}

/// One page by ascending id; every value is a parameter, each filter has an index ending in id.
pub(super) fn page(conn: &Connection, filter: &NpcFilter, page: Page) -> DbResult<NpcPage> {
    let limit = page.limit.clamp(1, Page::MAX_LIMIT);
    let after = match page.after {
        None => -1,
        Some(after) => match i64::try_from(after) {
            Ok(a) => a,
            Err(_) => return Ok(NpcPage::default()),
        },
    };
    let mut params: Vec<Value> = vec![Value::Integer(after)];
    let mut sql = format!("SELECT {NPC_COLUMNS} FROM npcs WHERE id > ?1");
    if let Some(status) = &filter.status {
        params.push(Value::Text(status.clone()));
        sql += &format!(" AND status = ?{}", params.len());
    }
    if let Some(role) = &filter.role {
        params.push(Value::Text(role.clone()));
        sql += &format!(" AND role = ?{}", params.len());
    }
    if let Some(swarm) = filter.swarm {
        params.push(Value::Integer(i64::from(swarm)));
        sql += &format!(" AND swarm = ?{}", params.len());
    }
    params.push(Value::Integer(i64::from(limit) + 1));
    sql += &format!(" ORDER BY id LIMIT ?{}", params.len());
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
    let mut npcs = Vec::new();
    while let Some(r) = rows.next()? {
        npcs.push(npc_from_row(r)?);
    }
    let next = if npcs.len() > limit as usize {
        npcs.truncate(limit as usize);
        npcs.last().map(|r| r.id)
    } else {
        None
    };
    Ok(NpcPage { npcs, next })
}

pub(super) fn all(conn: &Connection) -> DbResult<Vec<NpcRecord>> {
    newer_than(conn, -1)
}

fn newer_than(conn: &Connection, tick: i64) -> DbResult<Vec<NpcRecord>> {
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {NPC_COLUMNS} FROM npcs WHERE updated_tick > ?1 ORDER BY id"))?;
    let mut rows = stmt.query([tick])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(npc_from_row(r)?);
    }
    Ok(out)
}

pub(super) fn latest_checkpoint(conn: &Connection) -> DbResult<Option<Checkpoint>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, run, seq, tick, checksum, size, bytes, clean FROM checkpoints ORDER BY tick DESC, id DESC LIMIT 1",
    )?;
    let mut rows = stmt.query([])?;
    let Some(r) = rows.next()? else { return Ok(None) };
    let id: i64 = r.get(0)?;
    let (run, seq, tick): (i64, i64, i64) = (r.get(1)?, r.get(2)?, r.get(3)?);
    let (sum, size): (i64, i64) = (r.get(4)?, r.get(5)?);
    let bytes: Vec<u8> = r.get(6)?;
    let clean: bool = r.get(7)?;
    let what = format!("checkpoint {id} (tick {tick})");
    if i64::try_from(bytes.len()).ok() != Some(size) {
        return Err(corrupt(format!("{what}: {} bytes stored, {size} recorded", bytes.len())));
    }
    if unbits(sum) != terrarium_codec::checksum(&bytes) {
        return Err(corrupt(format!("{what}: checksum mismatch")));
    }
    Ok(Some(Checkpoint {
        run: unbits(run),
        seq: u64::try_from(seq).map_err(|_| corrupt(format!("{what}: seq {seq}")))?,
        tick: u64::try_from(tick).map_err(|_| corrupt(format!("{what}: tick {tick}")))?,
        clean,
        bytes,
    }))
}

pub(super) fn resume_point(conn: &mut Connection) -> DbResult<Option<ResumePoint>> {
    // One read transaction: the checkpoint and the rows are one consistent state.
    let tx = conn.transaction()?;
    let Some(checkpoint) = latest_checkpoint(&tx)? else { return Ok(None) };
    let mark = applied_seq(&tx, checkpoint.run)?;
    let ids = {
        let mut stmt = tx.prepare_cached("SELECT id FROM npcs ORDER BY id")?;
        let rows = stmt.query_map([], |r| r.get::<_, i64>(0))?;
        let mut ids = Vec::new();
        for id in rows {
            let id = id?;
            ids.push(u64::try_from(id).map_err(|_| corrupt(format!("npcs.id {id}")))?);
        }
        ids
    };
    let tick = i64::try_from(checkpoint.tick).unwrap_or(i64::MAX);
    let newer = newer_than(&tx, tick)?;
    tx.commit()?;
    let batches_committed = checkpoint.seq == 0 || mark.is_some_and(|m| m >= checkpoint.seq);
    Ok(Some(ResumePoint { checkpoint, ids, newer, batches_committed }))
}

pub(super) fn applied_seq(conn: &Connection, run: u64) -> DbResult<Option<u64>> {
    let seq: Option<i64> = conn
        .query_row("SELECT seq FROM applied_batches WHERE run = ?1", [super::bits(run)], |r| r.get(0))
        .map(Some)
        .or_else(none_if_no_rows)?;
    Ok(seq.and_then(|s| u64::try_from(s).ok()))
}

pub(super) fn position_history(
    conn: &Connection,
    npc_id: u64,
    ticks: Range<u64>,
) -> DbResult<Vec<PositionRow>> {
    let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let Ok(id) = i64::try_from(npc_id) else { return Ok(Vec::new()) };
    let mut stmt = conn.prepare_cached(
        "SELECT npc_id, tick, x, y, z FROM npc_positions WHERE npc_id = ?1 AND tick >= ?2 AND tick < ?3 ORDER BY tick",
    )?;
    let mut rows = stmt.query(params![id, clamp(ticks.start), clamp(ticks.end)])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(PositionRow {
            npc_id: nonneg(r.get(0)?, "npc_positions.npc_id")?,
            tick: nonneg(r.get(1)?, "npc_positions.tick")?,
            x: f32_of(r.get(2)?),
            y: f32_of(r.get(3)?),
            z: f32_of(r.get(4)?),
        });
    }
    Ok(out)
}

pub(super) fn row_counts(conn: &Connection) -> DbResult<[u64; 4]> {
    Ok(conn.query_row(
        "SELECT (SELECT count(*) FROM npcs), (SELECT count(*) FROM npc_positions), \
         (SELECT count(*) FROM metrics), (SELECT count(*) FROM events)",
        [],
        |r| {
            let n = |i| r.get::<_, i64>(i).map(|v| u64::try_from(v).unwrap_or(0));
            Ok([n(0)?, n(1)?, n(2)?, n(3)?])
        },
    )?)
}

fn npc_from_row(r: &Row<'_>) -> DbResult<NpcRecord> {
    let inventory: Vec<u8> = r.get(9)?;
    Ok(NpcRecord {
        id: nonneg(r.get(0)?, "npcs.id")?,
        role: r.get(1)?,
        status: r.get(2)?,
        swarm: u32::try_from(r.get::<_, i64>(3)?).map_err(|_| corrupt("npcs.swarm"))?,
        agent: r.get(4)?,
        x: f32_of(r.get(5)?),
        y: f32_of(r.get(6)?),
        z: f32_of(r.get(7)?),
        health: u16::try_from(r.get::<_, i64>(8)?).map_err(|_| corrupt("npcs.health"))?,
        inventory: terrarium_codec::decode(&inventory, INVENTORY_LIMIT)
            .map_err(|_| corrupt("npcs.inventory"))?,
        updated_tick: nonneg(r.get(10)?, "npcs.updated_tick")?,
    })
}

fn nonneg(v: i64, what: &str) -> DbResult<u64> {
    u64::try_from(v).map_err(|_| corrupt(format!("{what} {v}")))
}

/// Values were stored from `f32`, so the conversion back is exact.
#[expect(clippy::cast_possible_truncation, reason = "stored from f32")]
fn f32_of(v: f64) -> f32 {
    v as f32
}
