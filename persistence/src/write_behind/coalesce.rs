//! Latest-wins coalescing of position rows across batches that wait together.

use rustc_hash::FxHashSet;

use crate::WriteBatch;

/// Drops every position row that a later batch of `batches` overwrites (same NPC); returns how
/// many rows were dropped. Other rows, and the order of what is kept, do not change.
///
/// Safe for any batches of one sequence: the store applies them in order, so the dropped row
/// would have been overwritten anyway. Only the position *history* between flushes is lost,
/// which is what coalescing means.
pub(crate) fn coalesce_positions(batches: &mut [WriteBatch], seen: &mut IdSet) -> u64 {
    // Nothing to overwrite unless two batches carry positions (the usual case for a group that
    // follows a batch covering every NPC, whose predecessors were emptied at submit).
    if batches.iter().filter(|b| !b.positions.is_empty()).count() < 2 {
        return 0;
    }
    let mut dropped = 0u64;
    for b in batches.iter_mut().rev() {
        let before = b.positions.len();
        // Rows of this batch are marked after filtering, so duplicates inside one batch stay.
        b.positions.retain(|r| !seen.contains(r.npc_id));
        dropped += (before - b.positions.len()) as u64;
        for r in &b.positions {
            seen.insert(r.npc_id);
        }
    }
    for b in batches.iter() {
        for r in &b.positions {
            seen.remove(r.npc_id);
        }
    }
    debug_assert!(seen.is_empty());
    dropped
}

/// A set of NPC ids: a bitmap for the dense low ids the engine hands out, a hash set above it.
#[derive(Debug, Default)]
pub(crate) struct IdSet {
    bits: Vec<u64>,
    sparse: FxHashSet<u64>,
    len: usize,
}

impl IdSet {
    /// Ids below this live in the bitmap (at most 8 MiB of it).
    const DENSE_LIMIT: u64 = 1 << 26;

    pub fn contains(&self, id: u64) -> bool {
        if id < Self::DENSE_LIMIT {
            let (w, b) = ((id / 64) as usize, id % 64);
            self.bits.get(w).is_some_and(|word| word & (1 << b) != 0)
        } else {
            self.sparse.contains(&id)
        }
    }

    pub fn insert(&mut self, id: u64) {
        if id < Self::DENSE_LIMIT {
            let (w, b) = ((id / 64) as usize, id % 64);
            if w >= self.bits.len() {
                self.bits.resize(w + 1, 0);
            }
            if self.bits[w] & (1 << b) == 0 {
                self.bits[w] |= 1 << b;
                self.len += 1;
            }
        } else if self.sparse.insert(id) {
            self.len += 1;
        }
    }

    pub fn remove(&mut self, id: u64) {
        if id < Self::DENSE_LIMIT {
            let (w, b) = ((id / 64) as usize, id % 64);
            if let Some(word) = self.bits.get_mut(w)
                && *word & (1 << b) != 0
            {
                *word &= !(1 << b);
                self.len -= 1;
            }
        } else if self.sparse.remove(&id) {
            self.len -= 1;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Empties the set, keeping its memory.
    pub fn clear(&mut self) {
        self.bits.fill(0);
        self.sparse.clear();
        self.len = 0;
    }
}

/// The rows a store call of the batches counted so far writes once coalesced: one position per
/// distinct NPC, and every other row. Groups are sized with it, so a run of batches that each
/// cover the same NPCs (the outbox after an outage: one full population per frame) still goes
/// in one call and coalesces, instead of one call per frame.
#[derive(Debug, Default)]
pub(crate) struct CallRows {
    ids: IdSet,
    rows: usize,
    /// A first batch filled the call on its own (its ids were not counted).
    full: bool,
}

impl CallRows {
    /// Counts `batch` in when the call stays within `max` rows with it (or nothing is counted
    /// yet); returns whether it did.
    pub fn take(&mut self, batch: &WriteBatch, positions: &[u64], max: usize) -> bool {
        // A full call takes nothing more (the rows are at most `max` already, never less).
        if self.full {
            return false;
        }
        // A first batch of `max` rows or more fills the call alone: taken without counting its
        // ids. This runs under the write-behind's queue lock, which the tick takes to hand its
        // batch over: counting a million ids there made the tick wait milliseconds for it.
        if self.rows == 0 && batch.len() + positions.len() >= max {
            self.rows = batch.len() + positions.len();
            self.full = true;
            return true;
        }
        let new = batch.positions.iter().map(|r| r.npc_id).chain(positions.iter().copied());
        let added =
            new.clone().filter(|&id| !self.ids.contains(id)).count() + (batch.len() - batch.positions.len());
        if self.rows > 0 && self.rows + added > max {
            return false;
        }
        for id in new {
            self.ids.insert(id);
        }
        self.rows += added;
        true
    }

    /// Starts counting a new call.
    pub fn reset(&mut self) {
        self.ids.clear();
        self.rows = 0;
        self.full = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PositionRow;

    fn b(rows: &[(u64, f32)]) -> WriteBatch {
        WriteBatch {
            positions: rows
                .iter()
                .map(|&(id, x)| PositionRow { npc_id: id, tick: 0, x, y: 0.0, z: 0.0 })
                .collect(),
            ..WriteBatch::default()
        }
    }

    #[test]
    fn later_rows_win_and_others_stay_in_order() {
        let big = IdSet::DENSE_LIMIT + 5;
        let mut batches =
            vec![b(&[(1, 1.0), (2, 1.0), (big, 1.0)]), b(&[(2, 2.0), (3, 2.0)]), b(&[(big, 3.0)])];
        let mut seen = IdSet::default();
        assert_eq!(coalesce_positions(&mut batches, &mut seen), 2);
        let ids = |b: &WriteBatch| b.positions.iter().map(|r| (r.npc_id, r.x)).collect::<Vec<_>>();
        assert_eq!(ids(&batches[0]), [(1, 1.0)]);
        assert_eq!(ids(&batches[1]), [(2, 2.0), (3, 2.0)]);
        assert_eq!(ids(&batches[2]), [(big, 3.0)]);
        assert!(seen.is_empty(), "the scratch set is left empty for the next call");
    }

    #[test]
    fn a_call_counts_distinct_ids_and_a_first_batch_of_max_rows_fills_it() {
        let mut call = CallRows::default();
        assert!(call.take(&b(&[(1, 0.0), (2, 0.0)]), &[3], 4));
        assert!(call.take(&b(&[(1, 1.0)]), &[2, 3], 4), "the same NPCs again add no row");
        assert!(call.take(&WriteBatch::default(), &[4], 4));
        assert!(!call.take(&WriteBatch::default(), &[5], 4), "a fifth NPC passes the limit");
        call.reset();
        assert!(call.take(&WriteBatch::default(), &[1, 2, 3, 4], 4), "a first batch is always taken");
        assert!(!call.take(&WriteBatch::default(), &[1], 4), "and fills the call alone");
        call.reset();
        assert!(call.take(&WriteBatch::default(), &[1], 4), "reset starts a new call");
    }
}
