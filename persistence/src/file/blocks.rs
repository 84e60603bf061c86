//! Positions in blocks (schema V2), as `PgStore` keeps them: the NPCs with ids
//! `64·b ..= 64·b + 63` are block `b`. Current positions are one `position_blocks` row per
//! block; history is one row per block per flush tick, in a table per day of the writer's clock
//! (`position_history_d<days since the epoch>`), so retention drops whole tables instead of
//! deleting rows. `npcs` is the registry only: a position never touches it.
//!
//! SQLite has no arrays: a block's columns are BLOBs of little-endian values, one element per
//! NPC, ascending by id: `ids` and `ticks` `i64`, `xyz` three `f32` (x, y, z). A block of 64
//! NPCs is about 1.8 kB, one row on a 4 kB page, no overflow pages.

use rusqlite::{Connection, OptionalExtension, params};

use super::{DbResult, corrupt};

/// Ids per block.
pub(super) const BLOCK: i64 = 64;
/// A history table holds the rows written during one day (UTC) of the writer's clock.
pub(super) const DAY_MS: i64 = 86_400_000;
/// History tables are this prefix and the day number; nothing else is spliced into SQL text.
const HISTORY_PREFIX: &str = "position_history_d";

/// One block's current positions, ascending by id.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct Block {
    pub ids: Vec<i64>,
    pub ticks: Vec<i64>,
    pub xyz: Vec<[f32; 3]>,
}

impl Block {
    /// Decodes a stored row; columns of disagreeing lengths are damage.
    pub fn decode(ids: &[u8], ticks: &[u8], xyz: &[u8]) -> DbResult<Self> {
        let n = ids.len() / 8;
        if !ids.len().is_multiple_of(8) || ticks.len() != n * 8 || xyz.len() != n * 12 || n > BLOCK as usize {
            return Err(corrupt(format!(
                "position block of {} id bytes, {} tick bytes, {} position bytes",
                ids.len(),
                ticks.len(),
                xyz.len()
            )));
        }
        Ok(Self { ids: decode_i64(ids), ticks: decode_i64(ticks), xyz: decode_xyz(xyz) })
    }

    /// Newest tick of the block (0 when empty).
    pub fn tick(&self) -> i64 {
        self.ticks.iter().copied().max().unwrap_or(0)
    }

    /// The NPC's (tick, position), when the block holds it.
    pub fn find(&self, id: i64) -> Option<(i64, [f32; 3])> {
        self.ids.binary_search(&id).ok().map(|k| (self.ticks[k], self.xyz[k]))
    }

    /// Lays `new` (ascending by id, one entry per id) over the block: per NPC the newer tick
    /// wins, `new` on a tie; the ids in `removed` (ascending) are taken out.
    pub fn merge(&mut self, new: &[(i64, i64, [f32; 3])], removed: &[i64]) {
        if removed.is_empty()
            && new.len() == self.ids.len()
            && new.iter().zip(&self.ids).all(|(n, &id)| n.0 == id)
        {
            // The steady state: the same NPCs moved.
            for (k, &(_, tick, xyz)) in new.iter().enumerate() {
                if tick >= self.ticks[k] {
                    (self.ticks[k], self.xyz[k]) = (tick, xyz);
                }
            }
            return;
        }
        let old = std::mem::take(self);
        let (mut i, mut j) = (0, 0);
        while i < old.ids.len() || j < new.len() {
            let take_new = j < new.len() && (i >= old.ids.len() || new[j].0 <= old.ids[i]);
            let (id, tick, xyz) = if take_new {
                let n = new[j];
                j += 1;
                if i < old.ids.len() && old.ids[i] == n.0 {
                    let o = (old.ids[i], old.ticks[i], old.xyz[i]);
                    i += 1;
                    if o.1 > n.1 { o } else { n }
                } else {
                    n
                }
            } else {
                let o = (old.ids[i], old.ticks[i], old.xyz[i]);
                i += 1;
                o
            };
            if removed.binary_search(&id).is_err() {
                self.ids.push(id);
                self.ticks.push(tick);
                self.xyz.push(xyz);
            }
        }
    }

    /// Reads block `block`, or `None`.
    pub fn load(conn: &Connection, block: i64) -> DbResult<Option<Self>> {
        let mut stmt = conn.prepare_cached("SELECT ids, ticks, xyz FROM position_blocks WHERE block = ?1")?;
        let row = stmt
            .query_row([block], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?, r.get::<_, Vec<u8>>(2)?))
            })
            .optional()?;
        row.map(|(ids, ticks, xyz)| Self::decode(&ids, &ticks, &xyz)).transpose()
    }

    /// Writes the block as `block` (deletes the row when the block is empty).
    pub fn store(&self, conn: &Connection, block: i64) -> DbResult<()> {
        if self.ids.is_empty() {
            conn.prepare_cached("DELETE FROM position_blocks WHERE block = ?1")?.execute([block])?;
            return Ok(());
        }
        conn.prepare_cached(
            "INSERT INTO position_blocks (block, tick, ids, ticks, xyz) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (block) DO UPDATE SET tick = excluded.tick, ids = excluded.ids, \
             ticks = excluded.ticks, xyz = excluded.xyz",
        )?
        .execute(params![
            block,
            self.tick(),
            encode_i64(&self.ids),
            encode_i64(&self.ticks),
            encode_xyz(&self.xyz)
        ])?;
        Ok(())
    }
}

/// Block of an NPC id.
pub(super) fn block_of(id: i64) -> i64 {
    id.div_euclid(BLOCK)
}

/// Day number of a time in Unix milliseconds (times before 1970 count as day 0).
pub(super) fn day_of(ms: i64) -> i64 {
    ms.max(0) / DAY_MS
}

/// Name of the history table of `day`.
pub(super) fn history_table(day: i64) -> String {
    format!("{HISTORY_PREFIX}{}", day.max(0))
}

/// Creates the history table of `day` and its index when missing; returns its name.
pub(super) fn ensure_history_table(conn: &Connection, day: i64) -> DbResult<String> {
    let t = history_table(day);
    // `t` is the prefix and a number; the index serves one NPC's track over a tick range.
    conn.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {t} (block INTEGER NOT NULL, tick INTEGER NOT NULL, ids BLOB NOT NULL, \
         xyz BLOB NOT NULL, recorded_at INTEGER NOT NULL); \
         CREATE INDEX IF NOT EXISTS {t}_block_tick ON {t} (block, tick);"
    ))?;
    Ok(t)
}

/// The history tables present, `(day, name)` ascending by day.
pub(super) fn history_tables(conn: &Connection) -> DbResult<Vec<(i64, String)>> {
    let mut stmt =
        conn.prepare_cached("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE ?1")?;
    let names = stmt.query_map([format!("{HISTORY_PREFIX}%")], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for name in names {
        let name = name?;
        let digits = &name[HISTORY_PREFIX.len()..];
        // Only names this module made (digits only) are ever spliced into SQL.
        if !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && let Ok(day) = digits.parse::<i64>()
        {
            out.push((day, history_table(day)));
        }
    }
    out.sort_unstable();
    Ok(out)
}

pub(super) fn encode_i64(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(super) fn encode_xyz(v: &[[f32; 3]]) -> Vec<u8> {
    v.iter().flatten().flat_map(|x| x.to_le_bytes()).collect()
}

pub(super) fn decode_i64(b: &[u8]) -> Vec<i64> {
    b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("chunks of 8 bytes"))).collect()
}

pub(super) fn decode_xyz(b: &[u8]) -> Vec<[f32; 3]> {
    b.chunks_exact(12)
        .map(|c| {
            let f = |k: usize| f32::from_le_bytes(c[k..k + 4].try_into().expect("4 bytes"));
            [f(0), f(4), f(8)]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_the_newer_tick_and_takes_removed_out() {
        let mut b =
            Block { ids: vec![1, 3, 5], ticks: vec![10, 10, 10], xyz: vec![[1.0; 3], [3.0; 3], [5.0; 3]] };
        b.merge(&[(2, 11, [2.0; 3]), (3, 9, [9.0; 3]), (5, 12, [6.0; 3])], &[1]);
        assert_eq!(b.ids, vec![2, 3, 5]);
        assert_eq!(b.ticks, vec![11, 10, 12]);
        assert_eq!(b.xyz, vec![[2.0; 3], [3.0; 3], [6.0; 3]]);
        // Same ids: replaced in place, a tie goes to the new value.
        b.merge(&[(2, 11, [7.0; 3]), (3, 13, [8.0; 3]), (5, 1, [0.0; 3])], &[]);
        assert_eq!(b.xyz, vec![[7.0; 3], [8.0; 3], [6.0; 3]]);
        assert_eq!(b.tick(), 13);
    }

    #[test]
    fn columns_round_trip_and_bad_lengths_are_refused() {
        let b = Block {
            ids: vec![64, 127],
            ticks: vec![-1, i64::MAX],
            xyz: vec![[0.5, -2.0, 3.25], [1e9, 0.0, -0.0]],
        };
        let back =
            Block::decode(&encode_i64(&b.ids), &encode_i64(&b.ticks), &encode_xyz(&b.xyz)).ok().unwrap();
        assert_eq!(back, b);
        assert!(Block::decode(&encode_i64(&b.ids), &encode_i64(&b.ticks[..1]), &encode_xyz(&b.xyz)).is_err());
        assert!(Block::decode(&[0; 7], &[], &[]).is_err());
        assert_eq!(block_of(127), 1);
        assert_eq!(history_table(day_of(3 * DAY_MS + 5)), "position_history_d3");
    }
}
