//! The embedded read path: current state by id, by filter with cursor pagination, all of it;
//! checkpoints and what a resume needs; history for tools and tests.

use std::ops::Range;

use rusqlite::types::Value;
use rusqlite::{Connection, Row, params};

use super::blocks::{self, Block};
use super::write::none_if_no_rows;
use super::{DbError, DbResult, corrupt, unbits};
use crate::{Checkpoint, NpcFilter, NpcPage, NpcRecord, Page, PositionRow, ResumePoint, SmolStr};

/// Largest inventory accepted when decoding a stored row.
const INVENTORY_LIMIT: usize = 64 * 1024;

const NPC_COLUMNS: &str = "id, role, status, swarm, agent, x, y, z, health, inventory, updated_tick";

pub(super) fn npc(conn: &Connection, id: u64) -> DbResult<Option<NpcRecord>> {
    let Ok(id) = i64::try_from(id) else { return Ok(None) };
    let mut stmt = conn.prepare_cached(&format!("SELECT {NPC_COLUMNS} FROM npcs WHERE id = ?1"))?;
    let mut rows = stmt.query([id])?;
    let Some(r) = rows.next()? else { return Ok(None) };
    let mut rec = npc_from_row(r)?;
    if let Some(b) = Block::load(conn, blocks::block_of(id))? {
        overlay(&mut rec, &b)?;
    }
    Ok(Some(rec))
}

/// Lays the NPC's block position over its registry row when it is not older (what
/// `MemoryStore` does with its last positions).
fn overlay(rec: &mut NpcRecord, block: &Block) -> DbResult<()> {
    let id = i64::try_from(rec.id).map_err(|_| corrupt("npcs.id"))?;
    if let Some((tick, [x, y, z])) = block.find(id) {
        let tick = nonneg(tick, "position_blocks.ticks")?;
        if tick >= rec.updated_tick {
            (rec.x, rec.y, rec.z, rec.updated_tick) = (x, y, z, tick);
        }
    }
    Ok(())
}

/// Lays block positions over `recs` (ascending by id), reading each block once.
fn overlay_all(conn: &Connection, recs: &mut [NpcRecord]) -> DbResult<()> {
    let mut held: Option<(i64, Option<Block>)> = None;
    for rec in recs {
        let block = blocks::block_of(i64::try_from(rec.id).map_err(|_| corrupt("npcs.id"))?);
        if held.as_ref().is_none_or(|(b, _)| *b != block) {
            held = Some((block, Block::load(conn, block)?));
        }
        if let Some((_, Some(b))) = &held {
            overlay(rec, b)?;
        }
    }
    Ok(())
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
    overlay_all(conn, &mut npcs)?;
    Ok(NpcPage { npcs, next })
}

/// Every registry row with its block position laid over it: both tables in id order, walked
/// together.
pub(super) fn all(conn: &Connection) -> DbResult<Vec<NpcRecord>> {
    let mut out = Vec::new();
    {
        let mut stmt = conn.prepare_cached(&format!("SELECT {NPC_COLUMNS} FROM npcs ORDER BY id"))?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            out.push(npc_from_row(r)?);
        }
    }
    let mut stmt = conn.prepare_cached("SELECT ids, ticks, xyz FROM position_blocks ORDER BY block")?;
    let mut rows = stmt.query([])?;
    let mut at = 0usize;
    while let Some(r) = rows.next()? {
        let b = Block::decode(blob(r, 0)?, blob(r, 1)?, blob(r, 2)?)?;
        for &id in &b.ids {
            let id = nonneg(id, "position_blocks.ids")?;
            while at < out.len() && out[at].id < id {
                at += 1;
            }
            if at < out.len() && out[at].id == id {
                let i = i64::try_from(id).unwrap_or(i64::MAX);
                if let Some((tick, [x, y, z])) = b.find(i) {
                    let tick = nonneg(tick, "position_blocks.ticks")?;
                    let rec = &mut out[at];
                    if tick >= rec.updated_tick {
                        (rec.x, rec.y, rec.z, rec.updated_tick) = (x, y, z, tick);
                    }
                }
            }
        }
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
    let Some(checkpoint) = latest_checkpoint(&tx)? else {
        // Rows without a checkpoint are a world that can't be resumed, not an empty store.
        let (npcs, batches): (i64, i64) = tx.query_row(
            "SELECT (SELECT count(*) FROM npcs), (SELECT count(*) FROM applied_batches)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        if npcs > 0 || batches > 0 {
            return Err(DbError::NoCheckpoint {
                npcs: u64::try_from(npcs).unwrap_or(0),
                batches: u64::try_from(batches).unwrap_or(0),
            });
        }
        return Ok(None);
    };
    let mark = applied_seq(&tx, checkpoint.run)?;
    let tick = i64::try_from(checkpoint.tick).unwrap_or(i64::MAX);
    // Every id, and which registry rows changed after the checkpoint (one scan of `npcs`).
    let (mut ids, mut changed) = (Vec::new(), Vec::new());
    {
        let mut stmt = tx.prepare_cached("SELECT id, updated_tick FROM npcs ORDER BY id")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let id = nonneg(r.get(0)?, "npcs.id")?;
            ids.push(id);
            if r.get::<_, i64>(1)? > tick {
                changed.push(id);
            }
        }
    }
    // Positions written after the checkpoint: only blocks whose newest tick is newer are read.
    let mut moved: Vec<(u64, u64, [f32; 3])> = Vec::new();
    {
        let mut stmt =
            tx.prepare_cached("SELECT ids, ticks, xyz FROM position_blocks WHERE tick > ?1 ORDER BY block")?;
        let mut rows = stmt.query([tick])?;
        while let Some(r) = rows.next()? {
            let b = Block::decode(blob(r, 0)?, blob(r, 1)?, blob(r, 2)?)?;
            for ((&id, &t), &xyz) in b.ids.iter().zip(&b.ticks).zip(&b.xyz) {
                if t > tick {
                    moved.push((
                        nonneg(id, "position_blocks.ids")?,
                        nonneg(t, "position_blocks.ticks")?,
                        xyz,
                    ));
                }
            }
        }
    }
    // The NPCs that changed either way and are still registered, ascending.
    let mut wanted: Vec<u64> = changed;
    wanted.extend(moved.iter().map(|m| m.0).filter(|id| ids.binary_search(id).is_ok()));
    wanted.sort_unstable();
    wanted.dedup();
    let mut newer = Vec::with_capacity(wanted.len());
    if wanted.len() > ids.len() / 8 {
        // Most of them: one scan beats a lookup each.
        let mut stmt = tx.prepare_cached(&format!("SELECT {NPC_COLUMNS} FROM npcs ORDER BY id"))?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let id = nonneg(r.get(0)?, "npcs.id")?;
            if wanted.binary_search(&id).is_ok() {
                newer.push(npc_from_row(r)?);
            }
        }
    } else {
        let mut stmt = tx.prepare_cached(&format!("SELECT {NPC_COLUMNS} FROM npcs WHERE id = ?1"))?;
        for &id in &wanted {
            let mut rows = stmt.query([i64::try_from(id).unwrap_or(i64::MAX)])?;
            if let Some(r) = rows.next()? {
                newer.push(npc_from_row(r)?);
            }
        }
    }
    tx.commit()?;
    // Lay the newer positions over (both ascending by id).
    let mut at = 0usize;
    for (id, t, [x, y, z]) in moved {
        while at < newer.len() && newer[at].id < id {
            at += 1;
        }
        if at < newer.len() && newer[at].id == id && t >= newer[at].updated_tick {
            let rec = &mut newer[at];
            (rec.x, rec.y, rec.z, rec.updated_tick) = (x, y, z, t);
        }
    }
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

/// One NPC's positions with `tick` in `ticks`, by tick: its block's history rows in every day
/// table, by the `(block, tick)` index of each.
pub(super) fn position_history(
    conn: &Connection,
    npc_id: u64,
    ticks: Range<u64>,
) -> DbResult<Vec<PositionRow>> {
    let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let Ok(id) = i64::try_from(npc_id) else { return Ok(Vec::new()) };
    let block = blocks::block_of(id);
    let mut out = Vec::new();
    for (_, table) in blocks::history_tables(conn)? {
        // `table` is a name `blocks` made (a prefix and a number).
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT tick, ids, xyz FROM {table} WHERE block = ?1 AND tick >= ?2 AND tick < ?3 ORDER BY tick"
        ))?;
        let mut rows = stmt.query(params![block, clamp(ticks.start), clamp(ticks.end)])?;
        while let Some(r) = rows.next()? {
            let tick = nonneg(r.get(0)?, "position history tick")?;
            let (ids, xyz) = (blob(r, 1)?, blob(r, 2)?);
            if ids.len() % 8 != 0 || xyz.len() != ids.len() / 8 * 12 {
                return Err(corrupt(format!("{table}: column lengths disagree")));
            }
            let ids = blocks::decode_i64(ids);
            if let Ok(k) = ids.binary_search(&id) {
                let [x, y, z] = blocks::decode_xyz(&xyz[k * 12..k * 12 + 12])[0];
                out.push(PositionRow { npc_id, tick, x, y, z });
            }
        }
    }
    // Day tables are in day order; a tick range may straddle them.
    out.sort_by_key(|p| p.tick);
    Ok(out)
}

/// Rows in `npcs`, positions in the history (one per NPC per flush), rows in `metrics` and
/// `events`.
pub(super) fn row_counts(conn: &Connection) -> DbResult<[u64; 4]> {
    let mut counts = conn.query_row(
        "SELECT (SELECT count(*) FROM npcs), 0, (SELECT count(*) FROM metrics), (SELECT count(*) FROM events)",
        [],
        |r| {
            let n = |i| r.get::<_, i64>(i).map(|v| u64::try_from(v).unwrap_or(0));
            Ok([n(0)?, n(1)?, n(2)?, n(3)?])
        },
    )?;
    for (_, table) in blocks::history_tables(conn)? {
        let n: i64 =
            conn.query_row(&format!("SELECT coalesce(sum(length(ids)), 0) / 8 FROM {table}"), [], |r| {
                r.get(0)
            })?;
        counts[1] += u64::try_from(n).unwrap_or(0);
    }
    Ok(counts)
}

fn npc_from_row(r: &Row<'_>) -> DbResult<NpcRecord> {
    let inventory: Vec<u8> = r.get(9)?;
    Ok(NpcRecord {
        id: nonneg(r.get(0)?, "npcs.id")?,
        role: SmolStr::new(r.get_ref(1)?.as_str().map_err(rusqlite::Error::from)?),
        status: SmolStr::new(r.get_ref(2)?.as_str().map_err(rusqlite::Error::from)?),
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

/// Column `i` of `r` as bytes (a BLOB; anything else is an error).
fn blob<'r>(r: &'r Row<'_>, i: usize) -> DbResult<&'r [u8]> {
    let v = r.get_ref(i)?;
    Ok(v.as_blob().map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, v.data_type(), Box::new(e)))?)
}

fn nonneg(v: i64, what: &str) -> DbResult<u64> {
    u64::try_from(v).map_err(|_| corrupt(format!("{what} {v}")))
}

/// Values were stored from `f32`, so the conversion back is exact.
#[expect(clippy::cast_possible_truncation, reason = "stored from f32")]
fn f32_of(v: f64) -> f32 {
    v as f32
}
