//! The region hand-off protocol as a pure state machine (no I/O): what one region process
//! knows about the NPCs it holds and hands off, and how it reacts to what PostgreSQL answers.
//!
//! The region process (`terrarium::region`) drives it with the answers of [`super::RegionStore`];
//! the model test (`persistence/tests/region_model.rs`) drives the same code with an in-memory
//! table through every interleaving of steps and crashes. The protocol and its crash table are
//! in `persistence/DESIGN.md` ("Regions").

use std::collections::BTreeMap;

/// One region of the grid, numbered row by row from 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegionId(pub u32);

impl std::fmt::Display for RegionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "region {}", self.0)
    }
}

/// A lease's fencing token: bumped by every take, never reused.
pub type Epoch = i64;

/// An NPC's ownership row as read from the table.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OwnerRow<S> {
    /// The NPC.
    pub npc: u64,
    /// Its owner.
    pub region: RegionId,
    /// Hand-offs of this NPC so far.
    pub seq: i64,
    /// True once its owner has it in its world.
    pub adopted: bool,
    /// Its state as of the last hand-off or sync.
    pub state: S,
}

/// One hand-off to send: move `npc`'s row from `from` to `to` if it still is `(from, seq)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Move<S> {
    /// The NPC.
    pub npc: u64,
    /// The source region (the sender).
    pub from: RegionId,
    /// The destination region.
    pub to: RegionId,
    /// The row's hand-off count the source knows; the move makes it `seq + 1`.
    pub seq: i64,
    /// The NPC's state when it left the source world.
    pub state: S,
}

/// What a committed hand-off transaction did to one move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MoveResult {
    /// The row was `(from, seq)` and now is `(to, seq + 1)`.
    Moved,
    /// The row was not `(from, seq)`: nothing changed (the NPC is read back to learn why).
    Stale,
}

/// What reading an NPC's row says about a move whose commit outcome was unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resolution {
    /// The row is past `seq` (`(to, seq + 1)`, or later if the NPC moved on): the move committed.
    Committed,
    /// The row is still `(from, seq)`: it did not; send it again (same seq: it can't apply twice).
    NotCommitted,
    /// Anything else: impossible while the source holds its lease (counted, never guessed over).
    Anomaly,
}

/// Decides what happened to `mv` from its row, read after an unknown outcome.
#[must_use]
pub fn resolve<S>(mv: &Move<S>, row: Option<(RegionId, i64)>) -> Resolution {
    match row {
        // Only a move from `(from, seq)` takes the row past `seq`, and only the lease holder
        // of `from` sends those: this move committed (the NPC may have moved on since).
        Some((_, seq)) if seq > mv.seq => Resolution::Committed,
        Some((region, seq)) if region == mv.from && seq == mv.seq => Resolution::NotCommitted,
        _ => Resolution::Anomaly,
    }
}

/// Where an outgoing hand-off stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outgoing {
    /// Left the world, not sent yet (or to be sent again).
    Queued,
    /// In a transaction whose answer has not come.
    InFlight,
    /// Its transaction's commit outcome is unknown: read the row before anything else.
    Unresolved,
}

/// Counters of a [`RegionCore`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct CoreStats {
    /// NPCs loaded at start-up.
    pub loaded: u64,
    /// NPCs adopted from other regions' hand-offs.
    pub adopted: u64,
    /// Arrivals offered again that were already in the world (no effect).
    pub adopt_duplicates: u64,
    /// Hand-offs committed (known at once or resolved).
    pub handed_off: u64,
    /// Commits whose outcome was unknown.
    pub unknown_commits: u64,
    /// Rows that matched neither side of a move when read back (should stay 0).
    pub anomalies: u64,
}

/// What a region process knows: its lease, the NPCs in its world (with their rows' hand-off
/// count) and its outgoing hand-offs. `S` is the NPC state carried by a move.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RegionCore<S> {
    region: RegionId,
    epoch: Option<Epoch>,
    world: BTreeMap<u64, i64>,
    outgoing: BTreeMap<u64, (Move<S>, Outgoing)>,
    stopped: bool,
    stats: CoreStats,
}

impl<S: Clone> RegionCore<S> {
    /// A process for `region` that holds no lease yet.
    #[must_use]
    pub fn new(region: RegionId) -> Self {
        Self {
            region,
            epoch: None,
            world: BTreeMap::new(),
            outgoing: BTreeMap::new(),
            stopped: false,
            stats: CoreStats::default(),
        }
    }

    /// Its region.
    #[must_use]
    pub fn region(&self) -> RegionId {
        self.region
    }

    /// The epoch of the lease it took, if any.
    #[must_use]
    pub fn epoch(&self) -> Option<Epoch> {
        self.epoch
    }

    /// True once a fence refused one of its writes: it must not tick or write again.
    #[must_use]
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> CoreStats {
        self.stats
    }

    /// True when `npc` is in its world.
    #[must_use]
    pub fn holds(&self, npc: u64) -> bool {
        self.world.contains_key(&npc)
    }

    /// The NPCs in its world, ascending.
    pub fn world(&self) -> impl Iterator<Item = u64> + '_ {
        self.world.keys().copied()
    }

    /// How many NPCs are in its world.
    #[must_use]
    pub fn world_len(&self) -> usize {
        self.world.len()
    }

    /// Outgoing hand-offs not yet known to be committed.
    #[must_use]
    pub fn outgoing_len(&self) -> usize {
        self.outgoing.len()
    }

    /// Where `npc`'s outgoing hand-off stands, if it has one.
    #[must_use]
    pub fn outgoing(&self, npc: u64) -> Option<Outgoing> {
        self.outgoing.get(&npc).map(|(_, s)| *s)
    }

    /// The lease was taken with `epoch`.
    pub fn on_lease(&mut self, epoch: Epoch) {
        self.epoch = Some(epoch);
    }

    /// A fence refused a write: the lease belongs to a newer process. Stops for good.
    pub fn on_fenced(&mut self) {
        self.stopped = true;
    }

    /// Start-up: the rows the region owns (adopted or not) become its world. Returns the rows
    /// to spawn (all of them, once each).
    pub fn on_loaded(&mut self, rows: Vec<OwnerRow<S>>) -> Vec<OwnerRow<S>> {
        let mut spawn = Vec::with_capacity(rows.len());
        for row in rows {
            if row.region == self.region && self.world.insert(row.npc, row.seq).is_none() {
                self.stats.loaded += 1;
                spawn.push(row);
            }
        }
        spawn
    }

    /// Rows handed to this region and not yet adopted (a notification or a poll). Returns the
    /// rows to spawn: an NPC already in the world, or one this process is still handing away
    /// (the row not past its move), is left alone, so adopting twice has no effect.
    pub fn on_arrivals(&mut self, rows: Vec<OwnerRow<S>>) -> Vec<OwnerRow<S>> {
        let mut spawn = Vec::new();
        for row in rows {
            if row.region != self.region {
                continue;
            }
            if let Some((mv, _)) = self.outgoing.get(&row.npc) {
                // Handed away and back again before this process learnt how its move ended:
                // a row past the move's seq says the move committed.
                if resolve(mv, Some((row.region, row.seq))) != Resolution::Committed {
                    continue;
                }
                self.outgoing.remove(&row.npc);
                self.stats.handed_off += 1;
            }
            if self.world.contains_key(&row.npc) {
                self.stats.adopt_duplicates += 1;
                continue;
            }
            self.world.insert(row.npc, row.seq);
            self.stats.adopted += 1;
            spawn.push(row);
        }
        spawn
    }

    /// `npc` left the region's cell for `to`: out of the world at once, queued for hand-off.
    /// False (and nothing done) when it is not in the world or `to` is this region.
    pub fn crossed(&mut self, npc: u64, to: RegionId, state: S) -> bool {
        if to == self.region {
            return false;
        }
        let Some(seq) = self.world.remove(&npc) else {
            return false;
        };
        let mv = Move { npc, from: self.region, to, seq, state };
        self.outgoing.insert(npc, (mv, Outgoing::Queued));
        true
    }

    /// NPCs whose move must be read back before anything else is sent.
    #[must_use]
    pub fn unresolved(&self) -> Vec<u64> {
        self.outgoing.iter().filter(|(_, (_, s))| *s == Outgoing::Unresolved).map(|(&n, _)| n).collect()
    }

    /// Takes up to `max` queued moves to send in one transaction (they become in flight).
    pub fn take_sendable(&mut self, max: usize) -> Vec<Move<S>> {
        let mut out = Vec::new();
        for (mv, state) in self.outgoing.values_mut() {
            if out.len() == max {
                break;
            }
            if *state == Outgoing::Queued {
                *state = Outgoing::InFlight;
                out.push(mv.clone());
            }
        }
        out
    }

    /// The hand-off transaction committed: `Moved` ones are done; `Stale` ones are read back.
    pub fn on_committed(&mut self, results: &[(u64, MoveResult)]) {
        for &(npc, result) in results {
            match result {
                MoveResult::Moved => {
                    if self.outgoing.remove(&npc).is_some() {
                        self.stats.handed_off += 1;
                    }
                }
                MoveResult::Stale => {
                    if let Some((_, s)) = self.outgoing.get_mut(&npc) {
                        *s = Outgoing::Unresolved;
                    }
                }
            }
        }
        // Anything in flight the answer did not name is read back too.
        self.mark_in_flight(Outgoing::Unresolved);
    }

    /// The transaction failed before its commit (rolled back): its moves are queued again.
    pub fn on_not_committed(&mut self) {
        self.mark_in_flight(Outgoing::Queued);
    }

    /// The connection was lost at commit: whether the moves happened is unknown until read.
    pub fn on_commit_unknown(&mut self) {
        let n = self.outgoing.values().filter(|(_, s)| *s == Outgoing::InFlight).count();
        self.stats.unknown_commits += n as u64;
        self.mark_in_flight(Outgoing::Unresolved);
    }

    /// Rows read back for unresolved moves (`None`: no row). Committed moves are done, the
    /// others are queued again.
    pub fn on_rows_read(&mut self, rows: &[(u64, Option<(RegionId, i64)>)]) {
        for &(npc, row) in rows {
            let Some((mv, state)) = self.outgoing.get_mut(&npc) else { continue };
            if *state != Outgoing::Unresolved {
                continue;
            }
            match resolve(mv, row) {
                Resolution::Committed => {
                    self.outgoing.remove(&npc);
                    self.stats.handed_off += 1;
                }
                Resolution::NotCommitted => *state = Outgoing::Queued,
                Resolution::Anomaly => {
                    // Not ours any more and not where we sent it: someone else owns it (a
                    // newer process of this region would have fenced us first). Dropping it
                    // here loses nothing durable: the row is the truth.
                    self.stats.anomalies += 1;
                    self.outgoing.remove(&npc);
                }
            }
        }
    }

    fn mark_in_flight(&mut self, to: Outgoing) {
        for (_, s) in self.outgoing.values_mut() {
            if *s == Outgoing::InFlight {
                *s = to;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(npc: u64, region: u32, seq: i64) -> OwnerRow<()> {
        OwnerRow { npc, region: RegionId(region), seq, adopted: false, state: () }
    }

    #[test]
    fn adopting_twice_spawns_once() {
        let mut core = RegionCore::new(RegionId(1));
        assert_eq!(core.on_arrivals(vec![row(7, 1, 1)]).len(), 1);
        assert!(core.on_arrivals(vec![row(7, 1, 1)]).is_empty());
        assert_eq!(core.stats().adopt_duplicates, 1);
        assert!(core.holds(7));
    }

    #[test]
    fn unknown_commit_is_resolved_by_the_row() {
        let mut core = RegionCore::new(RegionId(0));
        core.on_loaded(vec![row(1, 0, 3), row(2, 0, 0)]);
        assert!(core.crossed(1, RegionId(1), ()));
        assert!(core.crossed(2, RegionId(1), ()));
        assert!(!core.holds(1), "an NPC leaves at once");
        assert_eq!(core.take_sendable(10).len(), 2);
        core.on_commit_unknown();
        assert_eq!(core.unresolved(), vec![1, 2]);
        assert!(core.take_sendable(10).is_empty(), "nothing is sent before it is resolved");
        core.on_rows_read(&[(1, Some((RegionId(1), 4))), (2, Some((RegionId(0), 0)))]);
        assert_eq!(core.outgoing_len(), 1);
        let again = core.take_sendable(10);
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].npc, again[0].seq), (2, 0), "sent again with the same seq");
    }

    #[test]
    fn resolution_never_guesses() {
        let mv = Move { npc: 1, from: RegionId(0), to: RegionId(1), seq: 5, state: () };
        assert_eq!(resolve(&mv, Some((RegionId(1), 6))), Resolution::Committed);
        assert_eq!(resolve(&mv, Some((RegionId(0), 7))), Resolution::Committed, "moved on and back");
        assert_eq!(resolve(&mv, Some((RegionId(0), 5))), Resolution::NotCommitted);
        assert_eq!(resolve(&mv, Some((RegionId(1), 5))), Resolution::Anomaly);
        assert_eq!(resolve(&mv, Some((RegionId(0), 4))), Resolution::Anomaly);
        assert_eq!(resolve(&mv, None), Resolution::Anomaly);
    }
}
