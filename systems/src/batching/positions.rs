//! Position and registry collection from change detection: one pass over contiguous table
//! columns, in fixed-size chunks on the worker pool, straight into a reused buffer.
//!
//! Nothing is recorded per tick: the `Position` change ticks *are* the pending set. A flush
//! compares them with the change tick of the previous flush, so an NPC that moved ten times
//! costs one row (its latest position), and a tick without a flush only counts.

use bevy_ecs::change_detection::{MAX_CHANGE_AGE, Tick};
use bevy_ecs::prelude::*;
use terrarium_engine::{Agent, Health, Inventory, NpcId, NpcIndex, ParPool, Position, Role, Status, Swarm};
use terrarium_persistence::{NpcRecord, PositionColumns, SmolStr};

use crate::par;

/// What the collection reads of every NPC.
pub(crate) type NpcData = (
    Ref<'static, NpcId>,
    Ref<'static, Position>,
    Ref<'static, Role>,
    Ref<'static, Status>,
    Ref<'static, Swarm>,
    Ref<'static, Health>,
    Ref<'static, Inventory>,
    Has<Agent>,
);

/// Change ticks to compare with, all relative to the running system's `this_run`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Marks {
    /// `this_run` of the last position flush: newer position ticks are pending rows, newer
    /// `NpcId` added ticks are spawns not yet written.
    pub flush: Tick,
    /// `this_run` of the previous batching run: newer position ticks moved this tick.
    pub run: Tick,
    /// `this_run` of the last registry scan: newer state ticks are changes not yet written.
    pub state: Tick,
    /// `this_run` now.
    pub now: Tick,
}

/// Result of the cheap per-tick count.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Count {
    /// NPCs with a position change since the last flush, counted up to `cap + 1`.
    pub pending: usize,
    /// Of those, moved this tick; only exact when `!capped`.
    pub moved_now: u64,
    /// The count stopped at `cap + 1`.
    pub capped: bool,
}

/// Counts pending position rows, stopping as soon as there are more than `cap`: deciding
/// whether a flush is due costs a few hundred ticks' reads when many NPCs move, one column
/// scan when few do.
pub(crate) fn count_pending(q: &Query<NpcData>, m: Marks, cap: usize) -> Count {
    let mut c = Count::default();
    for (_, pos, ..) in q.contiguous_iter().expect("NPC components are stored in tables") {
        for t in pos.changed_ticks_slice() {
            if t.is_newer_than(m.flush, m.now) {
                c.pending += 1;
                if t.is_newer_than(m.run, m.now) {
                    c.moved_now += 1;
                }
                if c.pending > cap {
                    c.capped = true;
                    return c;
                }
            }
        }
    }
    c
}

/// What one collection pass produced.
#[derive(Debug, Default)]
pub(crate) struct Collected {
    /// Position rows written to the front of the buffer.
    pub rows: usize,
    /// Rows whose NPC moved this tick.
    pub moved_now: u64,
    /// NPCs matched by the query (the buffer covers all of them when `rows == entities`).
    pub entities: usize,
    /// Registry rows: spawns (full records) and state changes.
    pub records: Vec<NpcRecord>,
    /// Spawns and status changes, for events.
    pub notes: Vec<Note>,
}

/// A lifecycle fact found by the pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Note {
    /// The NPC appeared since the last flush.
    Spawned { id: NpcId, role: Role, position: Position, agent: bool },
    /// The NPC's status changed since the last registry scan.
    Status { id: NpcId, status: Status },
}

/// Which parts a pass collects.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Want {
    /// Position rows.
    pub positions: bool,
    /// Spawns (only looked for with positions, and only when an NPC may have appeared).
    pub spawns: bool,
    /// State changes (role, status, swarm, health, inventory).
    pub state: bool,
}

/// Collects position rows (NPCs whose position changed since `m.flush`) into `out`, and
/// registry rows, in table order and chunk order: the same rows for any thread count.
///
/// The columns of `out` are resized to the number of NPCs (growing only; reused columns keep
/// their pages), every chunk writes its rows at its own offset, then the gaps are closed and
/// the columns are cut to the rows written.
pub(crate) fn collect(
    pool: &ParPool,
    q: &Query<NpcData>,
    m: Marks,
    tick: u64,
    want: Want,
    out: &mut PositionColumns,
) -> Collected {
    out.tick = tick;
    let (jobs, entities) = jobs(q, want, out);
    let parts = par::map(pool, jobs, |job| job.run(m, tick, want, false));
    finish(parts, entities, want, out)
}

/// The NPC tables' lengths, in query order: while they, the NPC count and the ids added are
/// unchanged, a row index names the same table slot from one tick to the next.
pub(crate) fn table_lens(q: &Query<NpcData>) -> Vec<usize> {
    q.contiguous_iter().expect("NPC components are stored in tables").map(|t| t.0.len()).collect()
}

/// Whether any NPC table's role, status, swarm, health or inventory column changed (a value
/// written, or a row moved in or inserted with a newer change) since the system last ran, from
/// the columns' summary ticks: one load per table and column, no scan.
pub(crate) fn state_changed(q: &Query<NpcData>) -> bool {
    use bevy_ecs::change_detection::ContiguousRef;
    fn changed<T: Clone>(c: &ContiguousRef<'_, T>) -> bool {
        // No summary tick (a component registered without it): assume a change.
        ContiguousRef::split(c.clone()).1.summary_tick_is_changed().unwrap_or(true)
    }
    q.contiguous_iter().expect("NPC components are stored in tables").any(
        |(_, _, role, status, swarm, health, inv, _)| {
            changed(&role) || changed(&status) || changed(&swarm) || changed(&health) || changed(&inv)
        },
    )
}

/// Chunks a slice of a spread cut reads at least (65 536 NPCs): a smaller cut is cheap in one
/// tick, and spreading it would only add to the storage lag.
pub(crate) const CHUNKS_PER_SLICE: usize = 4;

/// A collection pass done a slice of chunks per tick, on the tick's thread: see "Big worlds cut
/// over several ticks" in the module docs.
#[derive(Debug)]
pub(crate) struct Spread {
    /// The marks of the tick it began: `flush` and `state` say what is pending, `now` becomes
    /// the next flush (and scan) mark.
    pub marks: Marks,
    /// Simulated tick it began: the batch's tick.
    pub tick: u64,
    /// What it collects.
    pub want: Want,
    /// The buffer the rows go to, sized at the start.
    pub columns: PositionColumns,
    /// Table lengths, NPC count and ids added at the start (while they hold, the index's id
    /// fingerprint sum is the start's too).
    pub lens: Vec<usize>,
    pub npcs: usize,
    pub added: u64,
    /// Slices in all, and done.
    pub slices: usize,
    pub done: usize,
    /// Parts collected so far, in chunk order.
    pub parts: Vec<Part>,
}

impl Spread {
    /// Starts a pass over `slices` ticks, fewer when the world has fewer than
    /// [`CHUNKS_PER_SLICE`] chunks for each (the first slice runs now); the buffer back when that
    /// leaves fewer than two, or when the query holds NPCs the index does not (the ids could not
    /// be checked at the end).
    pub fn start(
        q: &Query<NpcData>,
        index: &NpcIndex,
        marks: Marks,
        tick: u64,
        want: Want,
        slices: usize,
        mut columns: PositionColumns,
    ) -> Result<Self, PositionColumns> {
        let lens = table_lens(q);
        let chunks: usize = lens.iter().map(|l| l.div_ceil(par::CHUNK)).sum();
        let npcs: usize = lens.iter().sum();
        let slices = slices.min(chunks / CHUNKS_PER_SLICE);
        if slices < 2 || npcs != index.len() {
            return Err(columns);
        }
        columns.tick = tick;
        let mut s = Self {
            marks,
            tick,
            want,
            columns,
            lens,
            npcs,
            added: index.added_total(),
            slices,
            done: 0,
            parts: Vec::new(),
        };
        s.step(q, marks);
        Ok(s)
    }

    /// True while the tables hold the same rows in the same slots as at the start, as far as
    /// counts tell: no spawn, no despawn, same table lengths (rows that changed places with
    /// the counts intact are caught by [`Spread::finish`]).
    pub fn intact(&self, q: &Query<NpcData>, index: &NpcIndex) -> bool {
        index.len() == self.npcs && index.added_total() == self.added && table_lens(q) == self.lens
    }

    /// Runs the next slice of chunks, on the calling thread. `now` gives the current tick's
    /// marks (ages are counted from it); what is pending still compares with the start's marks.
    pub fn step(&mut self, q: &Query<NpcData>, now: Marks) {
        let m = Marks { flush: self.marks.flush, state: self.marks.state, ..now };
        let (tick, want) = (self.tick, self.want);
        let (jobs, _) = jobs(q, want, &mut self.columns);
        let n = jobs.len();
        let (from, to) = (self.done * n / self.slices, (self.done + 1) * n / self.slices);
        let slice: Vec<_> = jobs.into_iter().skip(from).take(to - from).collect();
        // On this thread: a slice is small (a million NPCs over 8 ticks: about 5 MB read and
        // written), and waking the pool's workers for it cost more than it saved whenever the
        // store's threads held the other core (slices of 3 to 8 ms, some up to 13, at 1M NPCs
        // with the embedded store; on this thread the whole Record stage takes 0.8 to 0.9 ms at
        // p99; BENCHMARKS.md, issue 14, "Eleventh pass").
        self.parts.extend(slice.into_iter().map(|job| job.run(m, tick, want, true)));
        self.done += 1;
    }

    /// Whether every slice ran.
    pub fn is_done(&self) -> bool {
        self.done >= self.slices
    }

    /// The result when every NPC was read exactly once (count and id fingerprints match the
    /// index, which is [`Spread::intact`]); otherwise the buffer back, for a full pass.
    pub fn finish(mut self, index: &NpcIndex) -> Result<(Collected, PositionColumns), PositionColumns> {
        let seen: usize = self.parts.iter().map(|p| p.seen).sum();
        let sum = self.parts.iter().fold(0u64, |a, p| a.wrapping_add(p.fingerprints));
        if seen != self.npcs || sum != index.fingerprint_sum() {
            return Err(self.columns);
        }
        let c = finish(self.parts, self.npcs, self.want, &mut self.columns);
        Ok((c, self.columns))
    }
}

/// Sizes `out` and makes one job per chunk of every table (`out`'s slices at the chunks'
/// offsets); returns them with the number of NPCs.
fn jobs<'a>(q: &'a Query<NpcData>, want: Want, out: &'a mut PositionColumns) -> (Vec<Job<'a>>, usize) {
    let tables: Vec<_> = q.contiguous_iter().expect("NPC components are stored in tables").collect();
    let entities: usize = tables.iter().map(|t| t.0.len()).sum();
    if want.positions {
        if out.ids.len() < entities {
            out.ids.resize(entities, 0);
        }
        if out.xyz.len() < entities {
            out.xyz.resize(entities, [0.0; 3]);
        }
    }
    let mut jobs = Vec::new();
    let (mut rest_ids, mut rest_xyz): (&mut [u64], &mut [[f32; 3]]) = if want.positions {
        (&mut out.ids[..entities], &mut out.xyz[..entities])
    } else {
        (&mut [], &mut [])
    };
    let mut offset = 0usize;
    for (ids, pos, role, status, swarm, health, inv, agent) in tables {
        let len = ids.len();
        let (region_ids, region_xyz): (&mut [u64], &mut [[f32; 3]]) = if want.positions {
            let (r_ids, t_ids) = std::mem::take(&mut rest_ids).split_at_mut(len);
            let (r_xyz, t_xyz) = std::mem::take(&mut rest_xyz).split_at_mut(len);
            (rest_ids, rest_xyz) = (t_ids, t_xyz);
            (r_ids, r_xyz)
        } else {
            (&mut [], &mut [])
        };
        let mut region_chunks = region_ids.chunks_mut(par::CHUNK).zip(region_xyz.chunks_mut(par::CHUNK));
        let (added_all, moved_all) = (ids.added_ticks_slice(), pos.changed_ticks_slice());
        let (ids_all, pos_all) = (ids.into_inner(), pos.into_inner());
        let state_all = [
            role.changed_ticks_slice(),
            status.changed_ticks_slice(),
            swarm.changed_ticks_slice(),
            health.changed_ticks_slice(),
            inv.changed_ticks_slice(),
        ];
        let (role, status, swarm, health, inv) = (
            role.into_inner(),
            status.into_inner(),
            swarm.into_inner(),
            health.into_inner(),
            inv.into_inner(),
        );
        for start in (0..len).step_by(par::CHUNK) {
            let r = start..(start + par::CHUNK).min(len);
            jobs.push(Job {
                offset: offset + start,
                ids: &ids_all[r.clone()],
                added: &added_all[r.clone()],
                pos: &pos_all[r.clone()],
                moved: &moved_all[r.clone()],
                state: state_all.map(|t| &t[r.clone()]),
                role: &role[r.clone()],
                status: &status[r.clone()],
                swarm: &swarm[r.clone()],
                health: &health[r.clone()],
                inv: &inv[r.clone()],
                agent,
                out: region_chunks.next().unwrap_or_default(),
            });
        }
        offset += len;
    }
    (jobs, entities)
}

/// Joins the parts (in chunk order): closes the gaps between their rows in `out`, cuts it to
/// the rows written, gathers their registry rows and notes.
fn finish(parts: Vec<Part>, entities: usize, want: Want, out: &mut PositionColumns) -> Collected {
    let mut c = Collected { entities, ..Collected::default() };
    let records: usize = parts.iter().map(|p| p.records.len()).sum();
    for part in parts {
        if want.positions {
            if part.offset != c.rows {
                out.ids.copy_within(part.offset..part.offset + part.rows, c.rows);
                out.xyz.copy_within(part.offset..part.offset + part.rows, c.rows);
            }
            c.rows += part.rows;
            c.moved_now += part.moved_now;
        }
        // The first part's rows grow in place into the whole (a spawn of a million NPCs is
        // 112 MB of records: never held twice); the others are moved in and freed one by one.
        if c.records.is_empty() {
            c.records = part.records;
            c.records.reserve_exact(records - c.records.len());
        } else {
            c.records.extend(part.records);
        }
        c.notes.extend(part.notes);
    }
    if want.positions {
        out.ids.truncate(c.rows);
        out.xyz.truncate(c.rows);
    }
    c
}

/// One chunk of one table.
struct Job<'a> {
    /// Index of the chunk's first NPC among all NPCs of the query (its place in the buffer).
    offset: usize,
    ids: &'a [NpcId],
    added: &'a [Tick],
    pos: &'a [Position],
    moved: &'a [Tick],
    /// Changed ticks of role, status, swarm, health, inventory.
    state: [&'a [Tick]; 5],
    role: &'a [Role],
    status: &'a [Status],
    swarm: &'a [Swarm],
    health: &'a [Health],
    inv: &'a [Inventory],
    agent: bool,
    /// Where this chunk's rows go (ids, positions), as long as the chunk.
    out: (&'a mut [u64], &'a mut [[f32; 3]]),
}

/// What one chunk produced.
#[derive(Debug)]
pub(crate) struct Part {
    offset: usize,
    rows: usize,
    moved_now: u64,
    records: Vec<NpcRecord>,
    notes: Vec<Note>,
    /// NPCs read, and the sum of their id fingerprints (only counted when asked).
    seen: usize,
    fingerprints: u64,
}

impl Job<'_> {
    fn run(self, m: Marks, tick: u64, want: Want, fingerprints: bool) -> Part {
        let n = self.ids.len();
        let mut p = Part {
            offset: self.offset,
            rows: 0,
            moved_now: 0,
            records: Vec::new(),
            notes: Vec::new(),
            seen: n,
            fingerprints: 0,
        };
        if fingerprints {
            p.fingerprints = crate::stream::fingerprint_sum(bytemuck::cast_slice(self.ids));
        }
        let now = m.now.get();
        // `Tick::is_newer_than`, with the parts that do not depend on the element hoisted:
        // a tick is newer than `mark` when fewer ticks have passed since it than since `mark`.
        let age = |t: &Tick| now.wrapping_sub(t.get()).min(MAX_CHANGE_AGE);
        let (flush_age, run_age, state_age) = (age(&m.flush), age(&m.run), age(&m.state));
        let count =
            |ticks: &[Tick], mark: u32| ticks.iter().map(|t| u32::from(age(t) < mark)).sum::<u32>() as usize;
        if want.positions {
            let (out_ids, out_xyz) = (&mut self.out.0[..n], &mut self.out.1[..n]);
            let xyz: &[[f32; 3]] = bytemuck::cast_slice(self.pos);
            // One pass over the chunk's position ticks counts both marks (the run mark is the
            // newer one, so a tick newer than it is newer than the flush mark too).
            let (pending, moved_now) = self.moved.iter().fold((0u32, 0u32), |(p, r), t| {
                let a = age(t);
                (p + u32::from(a < flush_age), r + u32::from(a < run_age))
            });
            p.moved_now = u64::from(moved_now);
            if pending as usize == n {
                // Every NPC of the chunk moved (the common case when many walk): two block copies.
                crate::stream::copy(out_ids, bytemuck::cast_slice(self.ids));
                crate::stream::copy(out_xyz, xyz);
                p.rows = n;
            } else {
                for ((id, pos), t) in self.ids.iter().zip(xyz).zip(self.moved) {
                    if age(t) < flush_age {
                        out_ids[p.rows] = id.0;
                        out_xyz[p.rows] = *pos;
                        p.rows += 1;
                    }
                }
            }
            // Spawns are a subset of position changes (a new NPC's position is new), so they
            // are only looked for when positions are; most chunks have none.
            if want.spawns && count(self.added, flush_age) > 0 {
                for i in (0..n).filter(|&i| age(&self.added[i]) < flush_age) {
                    p.records.push(self.record(i, tick));
                    let (id, role, position, agent) = (self.ids[i], self.role[i], self.pos[i], self.agent);
                    p.notes.push(Note::Spawned { id, role, position, agent });
                }
            }
        }
        if want.state && self.state.iter().any(|ticks| count(ticks, state_age) > 0) {
            for i in 0..n {
                let spawned = want.spawns && age(&self.added[i]) < flush_age;
                if !spawned && self.state.iter().any(|ticks| age(&ticks[i]) < state_age) {
                    p.records.push(self.record(i, tick));
                    if age(&self.state[1][i]) < state_age {
                        p.notes.push(Note::Status { id: self.ids[i], status: self.status[i] });
                    }
                }
            }
        }
        crate::stream::fence();
        p
    }

    fn record(&self, i: usize, tick: u64) -> NpcRecord {
        let Position { x, y, z } = self.pos[i];
        NpcRecord {
            id: self.ids[i].0,
            // Inline names: no heap allocation per NPC (a million at a new world's spawn).
            role: self.role[i].static_name().map_or_else(|| self.role[i].name().into(), SmolStr::new_static),
            status: SmolStr::new_static(self.status[i].name()),
            swarm: self.swarm[i].0,
            agent: self.agent,
            x,
            y,
            z,
            health: self.health[i].current,
            inventory: self.inv[i]
                .stacks
                .iter()
                .filter(|s| s.count > 0)
                .map(|s| (s.kind.0, s.count))
                .collect(),
            updated_tick: tick,
        }
    }
}
