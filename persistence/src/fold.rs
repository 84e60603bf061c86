//! What one `write` call does to the current state, per NPC, after folding its batches in order
//! (the same result as applying them one by one, as `MemoryStore` does). Used by the embedded
//! store; `PgStore` folds the same way in `postgres/write.rs`.

use std::collections::HashMap;

use crate::{NpcRecord, PositionRow, WriteBatch};

/// The folded changes of a call, each list ascending by id (rows are locked and written in id
/// order).
#[derive(Debug, Default)]
pub(crate) struct Folded<'a> {
    /// Rows to delete.
    pub removed: Vec<u64>,
    /// Whole rows to insert or replace (with the call's latest position already applied).
    pub upserts: Vec<NpcRecord>,
    /// Existing rows to move, unless a row holds a newer tick.
    pub moves: Vec<&'a PositionRow>,
}

enum Change<'a> {
    Upsert(NpcRecord),
    Move(&'a PositionRow),
    Remove,
}

/// Folds `batches` (in order) into one change per NPC.
pub(crate) fn fold<'a>(batches: &[&'a WriteBatch]) -> Folded<'a> {
    let mut changes: HashMap<u64, Change<'a>> = HashMap::new();
    for b in batches {
        for r in &b.npcs {
            changes.insert(r.id, Change::Upsert(r.clone()));
        }
        for p in &b.positions {
            match changes.get_mut(&p.npc_id) {
                Some(Change::Upsert(r)) => {
                    if p.tick >= r.updated_tick {
                        (r.x, r.y, r.z, r.updated_tick) = (p.x, p.y, p.z, p.tick);
                    }
                }
                Some(Change::Move(q)) => {
                    if p.tick >= q.tick {
                        *q = p;
                    }
                }
                Some(Change::Remove) => {}
                None => {
                    changes.insert(p.npc_id, Change::Move(p));
                }
            }
        }
        for &id in &b.removed {
            changes.insert(id, Change::Remove);
        }
    }
    let mut ids: Vec<u64> = changes.keys().copied().collect();
    ids.sort_unstable();
    let mut out = Folded::default();
    for id in ids {
        match changes.remove(&id) {
            Some(Change::Remove) => out.removed.push(id),
            Some(Change::Upsert(r)) => out.upserts.push(r),
            Some(Change::Move(p)) => out.moves.push(p),
            None => {}
        }
    }
    out
}
