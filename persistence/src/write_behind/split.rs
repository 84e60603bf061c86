//! Cutting a batch into parts that fit one store call (`max_call_rows`), so that no call's size
//! grows with the world: the first write of a million NPCs (a registry row and a position
//! each) becomes parts of at most `max_call_rows` rows, each a batch of its own, written in
//! order.
//!
//! A handoff of `n` rows gets [`parts`]`(n, max)` consecutive seqs when it is submitted; the
//! worker cuts it into exactly that many batches (fewer rows by then, when later positions
//! superseded some of its own, just make smaller parts). Rows keep the order the stores apply
//! them in: registry upserts, positions, removals, metrics, events, so the parts applied one
//! after the other leave the store as the whole batch would.

use crate::{BatchId, WriteBatch};

/// Parts (and batch ids) a handoff of `rows` rows is written as, with at most `max` rows a part.
pub(super) fn parts(rows: usize, max: usize) -> u64 {
    rows.div_ceil(max.max(1)).max(1) as u64
}

/// Cuts `batch` (id = the first of its `parts` seqs) into `parts` batches of at most
/// `ceil(len / parts)` rows, seqs ascending. Registry rows and positions are put in id order
/// first (stable: a later row of the same NPC stays later), so a part holds whole runs of ids:
/// the store's position blocks and the registry's id index are touched once per part.
pub(super) fn split(mut batch: WriteBatch, parts: u64) -> Vec<WriteBatch> {
    if parts <= 1 {
        return vec![batch];
    }
    if !batch.npcs.is_sorted_by_key(|r| r.id) {
        batch.npcs.sort_by_key(|r| r.id);
    }
    if !batch.positions.is_sorted_by_key(|p| p.npc_id) {
        batch.positions.sort_by_key(|p| p.npc_id);
    }
    let per = batch.len().div_ceil(usize::try_from(parts).unwrap_or(usize::MAX)).max(1);
    let parts = usize::try_from(parts).unwrap_or(1);
    let WriteBatch { id, tick, mut positions, mut metrics, mut events, mut npcs, mut removed } = batch;
    // Rows of each kind per part, filled in store order (registry, positions, removals,
    // metrics, events), `per` rows a part.
    let lens = [npcs.len(), positions.len(), removed.len(), metrics.len(), events.len()];
    let mut used = [0usize; 5];
    let counts: Vec<[usize; 5]> = (0..parts)
        .map(|_| {
            let mut left = per;
            let mut c = [0usize; 5];
            for k in 0..5 {
                c[k] = left.min(lens[k] - used[k]);
                left -= c[k];
                used[k] += c[k];
            }
            c
        })
        .collect();
    // Cut from the back, giving memory back after each cut: a million-row batch is never held
    // twice (the parts are moved out of it, not copied beside it).
    let mut out = Vec::with_capacity(parts);
    for (i, c) in counts.iter().enumerate().rev() {
        let mut part =
            WriteBatch { id: BatchId { run: id.run, seq: id.seq + i as u64 }, tick, ..WriteBatch::default() };
        part.npcs = cut_tail(&mut npcs, c[0]);
        part.positions = cut_tail(&mut positions, c[1]);
        part.removed = cut_tail(&mut removed, c[2]);
        part.metrics = cut_tail(&mut metrics, c[3]);
        part.events = cut_tail(&mut events, c[4]);
        out.push(part);
    }
    // A part that a shrunken batch has no rows left for is still written, empty: its seq was
    // reserved at submit.
    out.reverse();
    out
}

/// The last `n` elements of `v`, moved out; `v` gives back the room they took.
fn cut_tail<T>(v: &mut Vec<T>, n: usize) -> Vec<T> {
    if n >= v.len() {
        return std::mem::take(v);
    }
    let tail = v.split_off(v.len() - n.min(v.len()));
    v.shrink_to_fit();
    tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PositionRow;

    fn record(id: u64) -> crate::NpcRecord {
        crate::testing::npc(id, 0)
    }

    #[test]
    fn a_batch_is_cut_into_parts_of_bounded_size_in_store_order() {
        let batch = WriteBatch {
            id: BatchId { run: 9, seq: 4 },
            tick: 7,
            npcs: (1..=10).rev().map(record).collect(),
            positions: (1..=10)
                .map(|npc_id| PositionRow { npc_id, tick: 7, x: 0.0, y: 0.0, z: 0.0 })
                .collect(),
            removed: vec![11, 12],
            ..WriteBatch::default()
        };
        assert_eq!(parts(batch.len(), 5), 5);
        let cut = split(batch, parts(22, 5));
        assert_eq!(cut.len(), 5);
        assert!(cut.iter().all(|p| p.len() <= 5 && p.tick == 7 && p.id.run == 9));
        assert_eq!(cut.iter().map(|p| p.id.seq).collect::<Vec<_>>(), [4, 5, 6, 7, 8]);
        let ids: Vec<u64> = cut.iter().flat_map(|p| p.npcs.iter().map(|r| r.id)).collect();
        assert_eq!(ids, (1..=10).collect::<Vec<_>>(), "registry rows first, in id order");
        assert_eq!(cut[4].removed, [11, 12], "removals after every upsert and position");
        assert_eq!(cut.iter().map(WriteBatch::len).sum::<usize>(), 22);
    }

    #[test]
    fn a_batch_that_shrank_still_fills_every_id_it_was_given() {
        let batch =
            WriteBatch { id: BatchId { run: 1, seq: 1 }, npcs: vec![record(1)], ..WriteBatch::default() };
        let cut = split(batch, 3);
        assert_eq!(cut.iter().map(|p| (p.id.seq, p.len())).collect::<Vec<_>>(), [(1, 1), (2, 0), (3, 0)]);
        assert_eq!(parts(0, 10), 1);
        assert_eq!(parts(10, 10), 1);
        assert_eq!(parts(11, 10), 2);
    }
}
