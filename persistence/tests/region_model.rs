//! The region hand-off protocol checked without a server: every interleaving of two regions'
//! steps (crossings, hand-off transactions with known and unknown outcomes, read-backs,
//! adoptions, renewals), process crashes, lease expiries and restarts that leave a zombie,
//! for a few NPCs, over an in-memory ownership table whose transactions do what the SQL of
//! `region::RegionStore` does. The processes are the library's own `RegionCore`.
//!
//! Invariants (persistence/DESIGN.md, "Regions"), at every reachable state:
//! 1. every NPC has exactly one row;
//! 2. a live process's world holds only NPCs its region's rows name, so live worlds are disjoint;
//! 3. nothing is lost: from the state, restarting what is down and draining every queue leaves
//!    every NPC in exactly the world of its row's region, and a second adoption changes nothing;
//! 4. a hand-off applies at most once (a row's seq counts the moves applied to it);
//! 5. a write with a stale epoch is refused and changes no row.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use terrarium_persistence::region::{MoveResult, OwnerRow, RegionCore, RegionId};

const REGIONS: usize = 2;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Row {
    region: u32,
    seq: i64,
    adopted: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Lease {
    epoch: i64,
    expired: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Budget {
    crosses: u8,
    crashes: u8,
    unknowns: u8,
    expiries: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct State {
    rows: BTreeMap<u64, Row>,
    moves_applied: BTreeMap<u64, i64>,
    leases: [Lease; REGIONS],
    /// The process that took the region's newest lease (None: down).
    current: [Option<RegionCore<()>>; REGIONS],
    /// An older process of the region that lost its lease without knowing (frozen, then thawed).
    zombie: [Option<RegionCore<()>>; REGIONS],
    budget: Budget,
}

/// How a transaction ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Commit {
    Known,
    /// Connection lost at COMMIT; the server did commit.
    UnknownCommitted,
    /// Connection lost at COMMIT; the server rolled back.
    UnknownRolledBack,
}

/// Which process of a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Current,
    Zombie,
}

impl State {
    fn start(npcs: &[u32], budget: Budget) -> Self {
        let rows = npcs
            .iter()
            .enumerate()
            .map(|(i, &r)| (i as u64, Row { region: r, seq: 0, adopted: true }))
            .collect();
        let mut s = State {
            rows,
            moves_applied: BTreeMap::new(),
            leases: [Lease { epoch: 0, expired: true }; REGIONS],
            current: [None, None],
            zombie: [None, None],
            budget,
        };
        for r in 0..REGIONS {
            s.start_process(r);
        }
        s
    }

    fn proc_mut(&mut self, r: usize, who: Who) -> &mut RegionCore<()> {
        match who {
            Who::Current => self.current[r].as_mut(),
            Who::Zombie => self.zombie[r].as_mut(),
        }
        .expect("the process exists")
    }

    /// A new process takes the (expired) lease and loads what the region owns. A live holder
    /// left behind becomes the zombie.
    fn start_process(&mut self, r: usize) {
        assert!(self.leases[r].expired, "a lease is taken only once expired");
        if let Some(old) = self.current[r].take()
            && !old.stopped()
        {
            self.zombie[r] = Some(old);
        }
        self.leases[r] = Lease { epoch: self.leases[r].epoch + 1, expired: false };
        let mut core = RegionCore::new(RegionId(r as u32));
        core.on_lease(self.leases[r].epoch);
        let rows: Vec<OwnerRow<()>> = self
            .rows
            .iter()
            .filter(|(_, row)| row.region == r as u32)
            .map(|(&npc, row)| OwnerRow {
                npc,
                region: RegionId(row.region),
                seq: row.seq,
                adopted: row.adopted,
                state: (),
            })
            .collect();
        core.on_loaded(rows);
        for row in self.rows.values_mut().filter(|row| row.region == r as u32) {
            row.adopted = true;
        }
        self.current[r] = Some(core);
    }

    /// The fence every region transaction starts with. A refusal stops the process.
    fn fence(&mut self, r: usize, who: Who) -> bool {
        let lease = self.leases[r];
        let core = self.proc_mut(r, who);
        if core.epoch() == Some(lease.epoch) {
            return true;
        }
        core.on_fenced();
        false
    }

    fn send(&mut self, r: usize, who: Who, commit: Commit) {
        let before = self.rows.clone();
        let moves = self.proc_mut(r, who).take_sendable(usize::MAX);
        if !self.fence(r, who) {
            assert_eq!(self.rows, before, "a fenced write changed a row");
            return;
        }
        let mut results = Vec::new();
        let mut rows = self.rows.clone();
        let mut applied = self.moves_applied.clone();
        for mv in &moves {
            let row = rows.get_mut(&mv.npc).expect("every NPC has a row");
            if row.region == mv.from.0 && row.seq == mv.seq {
                *row = Row { region: mv.to.0, seq: mv.seq + 1, adopted: false };
                *applied.entry(mv.npc).or_default() += 1;
                results.push((mv.npc, MoveResult::Moved));
            } else {
                results.push((mv.npc, MoveResult::Stale));
            }
        }
        if commit != Commit::UnknownRolledBack {
            self.rows = rows;
            self.moves_applied = applied;
        }
        let core = self.proc_mut(r, who);
        match commit {
            Commit::Known => core.on_committed(&results),
            Commit::UnknownCommitted | Commit::UnknownRolledBack => core.on_commit_unknown(),
        }
    }

    fn resolve(&mut self, r: usize, who: Who) {
        let unresolved = self.proc_mut(r, who).unresolved();
        let read: Vec<(u64, Option<(RegionId, i64)>)> = unresolved
            .iter()
            .map(|npc| (*npc, self.rows.get(npc).map(|row| (RegionId(row.region), row.seq))))
            .collect();
        self.proc_mut(r, who).on_rows_read(&read);
    }

    /// Returns how many NPCs the adoption spawned.
    fn adopt(&mut self, r: usize, who: Who, commit: Commit) -> usize {
        let before = self.rows.clone();
        if !self.fence(r, who) {
            assert_eq!(self.rows, before, "a fenced write changed a row");
            return 0;
        }
        let arrivals: Vec<OwnerRow<()>> = self
            .rows
            .iter()
            .filter(|(_, row)| row.region == r as u32 && !row.adopted)
            .map(|(&npc, row)| OwnerRow {
                npc,
                region: RegionId(row.region),
                seq: row.seq,
                adopted: false,
                state: (),
            })
            .collect();
        let spawned = self.proc_mut(r, who).on_arrivals(arrivals.clone()).len();
        if commit != Commit::UnknownRolledBack {
            for a in &arrivals {
                self.rows.get_mut(&a.npc).expect("read above").adopted = true;
            }
        }
        spawned
    }

    fn renew(&mut self, r: usize, who: Who) {
        if self.fence(r, who) {
            self.leases[r].expired = false;
        }
    }

    fn live(&self, r: usize) -> Option<&RegionCore<()>> {
        self.current[r].as_ref().filter(|c| !c.stopped() && c.epoch() == Some(self.leases[r].epoch))
    }

    fn check(&self) {
        // 1 and 4.
        assert_eq!(self.rows.len(), NPCS.len());
        for (npc, row) in &self.rows {
            assert_eq!(
                row.seq,
                self.moves_applied.get(npc).copied().unwrap_or(0),
                "seq counts the moves of {npc}"
            );
        }
        // 2.
        let mut seen = BTreeSet::new();
        for r in 0..REGIONS {
            let Some(core) = self.live(r) else { continue };
            for npc in core.world() {
                assert_eq!(
                    self.rows[&npc].region, r as u32,
                    "{npc} is in region {r}'s world but not its row: {self:#?}"
                );
                assert!(seen.insert(npc), "{npc} is in two live worlds: {self:#?}");
            }
        }
    }

    /// Every process down is restarted, zombies try to write (and stop), then every queue is
    /// drained; each NPC must end in exactly the world its row names.
    fn drain(mut self) {
        for r in 0..REGIONS {
            if self.zombie[r].is_some() {
                self.adopt(r, Who::Zombie, Commit::Known);
                assert!(self.zombie[r].as_ref().expect("present").stopped(), "a zombie's write got through");
                self.zombie[r] = None;
            }
            if self.current[r].as_ref().is_none_or(RegionCore::stopped) {
                self.leases[r].expired = true;
                self.start_process(r);
            }
        }
        for _ in 0..4 {
            for r in 0..REGIONS {
                self.resolve(r, Who::Current);
                self.send(r, Who::Current, Commit::Known);
                self.adopt(r, Who::Current, Commit::Known);
            }
        }
        for r in 0..REGIONS {
            // 3: a second adoption (a duplicate notification) changes nothing.
            let world: Vec<u64> = self.current[r].as_ref().expect("up").world().collect();
            let again: Vec<OwnerRow<()>> = self
                .rows
                .iter()
                .filter(|(_, row)| row.region == r as u32)
                .map(|(&npc, row)| OwnerRow {
                    npc,
                    region: RegionId(row.region),
                    seq: row.seq,
                    adopted: false,
                    state: (),
                })
                .collect();
            assert_eq!(self.proc_mut(r, Who::Current).on_arrivals(again).len(), 0, "adopting twice spawned");
            assert_eq!(self.current[r].as_ref().expect("up").world().collect::<Vec<_>>(), world);
            assert_eq!(self.current[r].as_ref().expect("up").outgoing_len(), 0, "a hand-off was left undone");
        }
        for (npc, row) in &self.rows {
            let holders: Vec<usize> =
                (0..REGIONS).filter(|&r| self.current[r].as_ref().expect("up").holds(*npc)).collect();
            assert_eq!(
                holders,
                vec![row.region as usize],
                "{npc} lost or duplicated after the drain: {self:#?}"
            );
        }
    }

    fn successors(&self) -> Vec<State> {
        let mut next = Vec::new();
        for r in 0..REGIONS {
            for who in [Who::Current, Who::Zombie] {
                let core = match who {
                    Who::Current => self.current[r].as_ref(),
                    Who::Zombie => self.zombie[r].as_ref(),
                };
                let Some(core) = core.filter(|c| !c.stopped()) else { continue };
                if self.budget.crosses > 0 {
                    for npc in core.world().collect::<Vec<_>>() {
                        let mut s = self.clone();
                        s.budget.crosses -= 1;
                        let to = RegionId(((r + 1) % REGIONS) as u32);
                        assert!(s.proc_mut(r, who).crossed(npc, to, ()));
                        next.push(s);
                    }
                }
                if !core.unresolved().is_empty() {
                    let mut s = self.clone();
                    s.resolve(r, who);
                    next.push(s);
                }
                let has_queued = core.clone().take_sendable(1).len() == 1;
                let commits: &[Commit] = if self.budget.unknowns > 0 {
                    &[Commit::Known, Commit::UnknownCommitted, Commit::UnknownRolledBack]
                } else {
                    &[Commit::Known]
                };
                for &commit in commits {
                    let mut s = self.clone();
                    if commit != Commit::Known {
                        s.budget.unknowns -= 1;
                    }
                    if has_queued {
                        let mut t = s.clone();
                        t.send(r, who, commit);
                        next.push(t);
                    }
                    let arrivals = self.rows.values().any(|row| row.region == r as u32 && !row.adopted);
                    if arrivals || who == Who::Zombie {
                        s.adopt(r, who, commit);
                        next.push(s);
                    }
                }
                let mut s = self.clone();
                s.renew(r, who);
                if s != *self {
                    next.push(s);
                }
                if self.budget.crashes > 0 {
                    let mut s = self.clone();
                    s.budget.crashes -= 1;
                    match who {
                        Who::Current => s.current[r] = None,
                        Who::Zombie => s.zombie[r] = None,
                    }
                    next.push(s);
                }
            }
            // The lease runs out: freely once its holder is gone, within the budget otherwise
            // (a holder frozen past its lease).
            if !self.leases[r].expired {
                let holder_up = self.current[r].as_ref().is_some_and(|c| !c.stopped());
                if !holder_up || self.budget.expiries > 0 {
                    let mut s = self.clone();
                    if holder_up {
                        s.budget.expiries -= 1;
                    }
                    s.leases[r].expired = true;
                    next.push(s);
                }
            } else if self.zombie[r].is_none() {
                let mut s = self.clone();
                s.start_process(r);
                next.push(s);
            }
        }
        next
    }
}

const NPCS: [u32; 2] = [0, 1];

fn explore(start: State) -> usize {
    let mut seen: HashSet<State> = HashSet::new();
    let mut stack = vec![start];
    while let Some(s) = stack.pop() {
        if !seen.insert(s.clone()) {
            continue;
        }
        s.check();
        s.clone().drain();
        stack.extend(s.successors());
    }
    seen.len()
}

/// The bounds of the search: CI's (a few seconds), or with `TERRARIUM_MODEL_FULL=1` a wider
/// one (about a million states per case, minutes).
fn budget() -> Budget {
    if std::env::var_os("TERRARIUM_MODEL_FULL").is_some() {
        Budget { crosses: 3, crashes: 2, unknowns: 2, expiries: 1 }
    } else {
        Budget { crosses: 3, crashes: 1, unknowns: 1, expiries: 1 }
    }
}

#[test]
fn every_interleaving_keeps_the_invariants() {
    let states = explore(State::start(&NPCS, budget()));
    eprintln!("{states} states explored");
    assert!(states > 10_000, "the model explored only {states} states");
}

#[test]
fn both_npcs_starting_in_one_region() {
    let states = explore(State::start(&[0, 0], budget()));
    eprintln!("{states} states explored");
    assert!(states > 10_000);
}
