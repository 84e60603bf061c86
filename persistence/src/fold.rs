//! What one `write` call does to the current state, per NPC, after folding its batches in order
//! (the same result as applying them one by one, as `MemoryStore` does). Used by the embedded
//! store; `PgStore` folds the same way in `postgres/write.rs`.
//!
//! The registry (`npcs`) and the current positions are folded apart: positions never touch the
//! registry (they go to position blocks), and a registry row carries the position it was
//! written with.

use std::collections::HashMap;

use crate::{NpcRecord, PositionRow, WriteBatch};

/// The folded changes of a call, each list ascending by id (rows are written in id order).
#[derive(Debug, Default)]
pub(crate) struct Folded<'a> {
    /// Registry rows to delete.
    pub removed: Vec<u64>,
    /// Whole registry rows to insert or replace (the call's last for each NPC).
    pub upserts: Vec<NpcRecord>,
    /// Per NPC with a position or a removal in the call: its latest position, or `None` when
    /// the last thing that happened to it was its removal (take it out of its block).
    pub latest: Vec<(u64, Option<&'a PositionRow>)>,
}

enum Change {
    Upsert(NpcRecord),
    Remove,
}

/// Folds `batches` (in order) into one change per NPC.
pub(crate) fn fold<'a>(batches: &[&'a WriteBatch]) -> Folded<'a> {
    let mut changes: HashMap<u64, Change> = HashMap::new();
    // (id, order in the call, the position or None for a removal); the last per id wins.
    let mut all: Vec<(u64, u32, Option<&'a PositionRow>)> = Vec::new();
    let mut order = 0u32;
    for b in batches {
        for r in &b.npcs {
            changes.insert(r.id, Change::Upsert(r.clone()));
        }
        for &id in &b.removed {
            changes.insert(id, Change::Remove);
        }
        all.extend(b.positions.iter().map(|p| (p.npc_id, order, Some(p))));
        order += 1;
        all.extend(b.removed.iter().map(|&id| (id, order, None)));
        order += 1;
    }
    let mut ids: Vec<u64> = changes.keys().copied().collect();
    ids.sort_unstable();
    let mut out = Folded::default();
    for id in ids {
        match changes.remove(&id) {
            Some(Change::Remove) => out.removed.push(id),
            Some(Change::Upsert(r)) => out.upserts.push(r),
            None => {}
        }
    }
    all.sort_unstable_by_key(|&(id, order, _)| (id, order));
    let mut i = 0;
    while i < all.len() {
        let id = all[i].0;
        let mut pick = all[i].2;
        let mut j = i;
        // A position never replaces a newer one of the call; a removal ends what came before.
        while j + 1 < all.len() && all[j + 1].0 == id {
            j += 1;
            pick = match (pick, all[j].2) {
                (Some(old), Some(new)) if new.tick < old.tick => Some(old),
                (_, next) => next,
            };
        }
        out.latest.push((id, pick));
        i = j + 1;
    }
    out
}
