//! The mining round: every miner that wants a task scores the deposits near it, and each
//! deposit goes to at most one miner so that the total score is as high as possible.
//!
//! Miners that compete for a deposit (directly or through a chain of shared candidates) form a
//! group; groups are independent and solved in parallel. A group of at most
//! [`AssignParams::exact_group`] miners is solved exactly with Kuhn–Munkres (the `pathfinding`
//! crate); a larger one with Bertsekas' auction algorithm, whose total is within
//! `miners × ε` of the best. Groups, miners and deposits are ordered by id and position, so the
//! outcome does not depend on the thread count or on the index's bucket order.

use pathfinding::kuhn_munkres::kuhn_munkres;
use pathfinding::matrix::Matrix;
use terrarium_engine::voxel::{Block, BlockPos, Ore};
use terrarium_engine::{NpcId, OreProfile, ParPool};

use super::index::{Deposit, DepositIndex, Nearby};
use crate::par;

/// A miner that wants a task.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Miner {
    /// Who.
    pub id: NpcId,
    /// Where it stands.
    pub cell: BlockPos,
    /// Tool power, 1 ..= 8.
    pub tool: u8,
    /// Items of each ore ([`Ore::index`]) that still fit in its inventory.
    pub room: [u32; Ore::COUNT],
    /// What it learned.
    pub profile: OreProfile,
    /// A deposit it must not pick now.
    pub avoid: Option<BlockPos>,
}

/// Parameters of a round.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AssignParams {
    /// Deposits each miner scores (its nearest unclaimed ones).
    pub candidates: usize,
    /// Farthest deposit a miner considers, blocks on the ground.
    pub radius: i32,
    /// Farthest deposit a miner considers, levels up or down.
    pub reach_y: i32,
    /// Largest group solved exactly with Kuhn–Munkres.
    pub exact_group: usize,
    /// Walking speed, blocks per second.
    pub walk_speed: f32,
}

impl Default for AssignParams {
    fn default() -> Self {
        Self { candidates: 6, radius: 16, reach_y: 10, exact_group: 12, walk_speed: 4.0 }
    }
}

/// The outcome of a round.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Assignment {
    /// Per miner (same order as the input): its deposit, or `None`.
    pub choice: Vec<Option<BlockPos>>,
    /// Per miner: whether it had any candidate at all.
    pub had_candidates: Vec<bool>,
    /// Groups solved with Kuhn–Munkres.
    pub exact_groups: usize,
    /// Groups solved with the auction.
    pub auction_groups: usize,
    /// Sum of the chosen scores.
    pub total_score: i64,
}

/// A miner's estimate of a deposit's worth per second:
/// `value × min(expected yield, room) × success rate / (travel + mining time)`, with travel
/// estimated from the distance and the digging its depth suggests. Scaled to an integer
/// (thousandths), at least 1 for anything worth having.
#[must_use]
pub fn score(miner: &Miner, n: &Nearby, walk_speed: f32) -> i64 {
    let ore = n.deposit.ore;
    let room = miner.room[ore.index()] as f32;
    if room < 1.0 {
        return 0;
    }
    let tool = f32::from(miner.tool.max(1));
    let stone = Block::Stone.hardness().expect("stone breaks");
    let hardness = ore.block().hardness().expect("ores break");
    // Digging down to a buried deposit takes about two blocks per level of depth (counted from
    // the miner's level when it is underground already).
    let depth = f32::from(n.deposit.depth).min((miner.cell.y - n.deposit.pos.y).max(0) as f32);
    let travel = n.distance / walk_speed + 2.0 * depth * stone / tool;
    let mine = hardness / tool;
    let items = miner.profile.expected_yield(ore).min(room);
    let worth = ore.value() as f32 * items * miner.profile.success_rate(ore) / (travel + mine + 0.5);
    ((worth * 1000.0) as i64).max(1)
}

/// Runs a round: candidates and scores for every miner, then the assignment.
#[must_use]
pub fn assign(pool: &ParPool, index: &DepositIndex, miners: &[Miner], params: &AssignParams) -> Assignment {
    // 1. Candidates, scored (parallel; each miner's list is sorted by position).
    let edges: Vec<Vec<Edge>> = par::map_with(pool, miners, Vec::new, |near, m| {
        let keep = |d: &Deposit| Some(d.pos) != m.avoid && (d.pos.y - m.cell.y).abs() <= params.reach_y;
        index.nearest(m.cell, params.candidates, params.radius, keep, near);
        let mut list: Vec<Edge> = near
            .iter()
            .map(|n| Edge { slot: n.slot, pos: n.deposit.pos, score: score(m, n, params.walk_speed) })
            .filter(|e| e.score > 0)
            .collect();
        list.sort_unstable_by_key(|e| e.pos);
        list
    });
    // 2. Groups: miners joined through shared deposits (union-find; roots are the lowest index).
    let mut parent: Vec<usize> = (0..miners.len()).collect();
    let mut first_miner = vec![usize::MAX; index.slots()];
    for (m, list) in edges.iter().enumerate() {
        for e in list {
            let first = &mut first_miner[e.slot as usize];
            if *first == usize::MAX {
                *first = m;
            } else {
                union(&mut parent, m, *first);
            }
        }
    }
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut group_of_root = vec![usize::MAX; miners.len()];
    for (m, list) in edges.iter().enumerate() {
        if list.is_empty() {
            continue;
        }
        let r = find(&mut parent, m);
        if group_of_root[r] == usize::MAX {
            group_of_root[r] = groups.len();
            groups.push(Vec::new());
        }
        groups[group_of_root[r]].push(m);
    }
    // 3. Solve the groups in parallel.
    let solved = par::map(pool, groups, |g| {
        if g.len() == 1 {
            // One miner alone: its best candidate (ties to the lower position) is optimal.
            let best = edges[g[0]].iter().max_by(|a, b| a.score.cmp(&b.score).then(b.pos.cmp(&a.pos)));
            (true, best.map(|e| (g[0], e.pos, e.score)).into_iter().collect())
        } else if g.len() <= params.exact_group {
            (true, solve_exact(&g, &edges))
        } else {
            (false, solve_auction(&g, &edges))
        }
    });
    let mut out = Assignment {
        choice: vec![None; miners.len()],
        had_candidates: edges.iter().map(|e| !e.is_empty()).collect(),
        ..Assignment::default()
    };
    for (exact, pairs) in solved {
        if exact {
            out.exact_groups += 1;
        } else {
            out.auction_groups += 1;
        }
        for (m, pos, s) in pairs {
            out.choice[m] = Some(pos);
            out.total_score += s;
        }
    }
    out
}

/// A scored candidate.
#[derive(Debug, Clone, Copy)]
struct Edge {
    slot: u32,
    pos: BlockPos,
    score: i64,
}

/// The deposits of a group, by position.
fn group_deposits(group: &[usize], edges: &[Vec<Edge>]) -> Vec<BlockPos> {
    let mut cols: Vec<BlockPos> = group.iter().flat_map(|&m| edges[m].iter().map(|e| e.pos)).collect();
    cols.sort_unstable();
    cols.dedup();
    cols
}

fn find(parent: &mut [usize], mut x: usize) -> usize {
    while parent[x] != x {
        parent[x] = parent[parent[x]];
        x = parent[x];
    }
    x
}

fn union(parent: &mut [usize], a: usize, b: usize) {
    let (ra, rb) = (find(parent, a), find(parent, b));
    // The smaller index is the root, so roots do not depend on the order of unions.
    if ra != rb {
        let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
        parent[hi] = lo;
    }
}

/// Kuhn–Munkres on the group's miners × its deposits, padded with "nothing" columns when there
/// are fewer deposits than miners (a miner matched to a zero weight gets nothing).
fn solve_exact(group: &[usize], edges: &[Vec<Edge>]) -> Vec<(usize, BlockPos, i64)> {
    let cols = group_deposits(group, edges);
    let mut w = Matrix::new(group.len(), cols.len().max(group.len()), 0i64);
    for (r, &m) in group.iter().enumerate() {
        for e in &edges[m] {
            w[(r, cols.binary_search(&e.pos).expect("a column per deposit"))] = e.score;
        }
    }
    let (_, col_of_row) = kuhn_munkres(&w);
    group
        .iter()
        .enumerate()
        .zip(col_of_row)
        .filter(|&(_, c)| c < cols.len())
        .map(|((r, &m), c)| (m, cols[c], w[(r, c)]))
        .filter(|&(_, _, s)| s > 0)
        .collect()
}

/// Forward auction (Gauss–Seidel, miners in order): an unassigned miner bids for its best
/// deposit at the current prices, raising the price by its margin over the second best (or over
/// taking nothing) plus ε; an outbid miner bids again. Prices only rise, so it ends; the total
/// is within `miners × ε` of the best.
fn solve_auction(group: &[usize], edges: &[Vec<Edge>]) -> Vec<(usize, BlockPos, i64)> {
    let deposits = group_deposits(group, edges);
    // Each miner's candidates as (deposit column, score).
    let bids: Vec<Vec<(usize, i64)>> = group
        .iter()
        .map(|&m| {
            edges[m].iter().map(|e| (deposits.binary_search(&e.pos).expect("listed"), e.score)).collect()
        })
        .collect();
    let max_score = bids.iter().flatten().map(|&(_, s)| s).max().unwrap_or(1);
    let eps = (max_score / 1000).max(1);
    let mut price = vec![0i64; deposits.len()];
    let mut owner: Vec<Option<usize>> = vec![None; deposits.len()];
    let mut queue: std::collections::VecDeque<usize> = (0..group.len()).collect();
    // A safety net: a hostile input can't keep the auction going forever.
    let mut bids_left = 64 * bids.iter().map(Vec::len).sum::<usize>().max(1);
    while let Some(r) = queue.pop_front() {
        if bids_left == 0 {
            break;
        }
        bids_left -= 1;
        let (mut best, mut best_v, mut second_v) = (usize::MAX, 0i64, 0i64);
        for &(d, s) in &bids[r] {
            let v = s - price[d];
            if v > best_v {
                (second_v, best_v, best) = (best_v, v, d);
            } else if v > second_v {
                second_v = v;
            }
        }
        if best == usize::MAX {
            continue; // nothing is worth its price: this miner takes nothing
        }
        price[best] += best_v - second_v + eps;
        if let Some(prev) = owner[best].replace(r) {
            queue.push_back(prev);
        }
    }
    owner
        .iter()
        .enumerate()
        .filter_map(|(d, o)| o.map(|r| (r, d)))
        .map(|(r, d)| {
            let s = bids[r].iter().find(|&&(c, _)| c == d).map_or(0, |&(_, s)| s);
            (group[r], deposits[d], s)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn miner(i: u64, x: i32, z: i32) -> Miner {
        Miner {
            id: NpcId(i),
            cell: BlockPos::new(x, 20, z),
            tool: 2,
            room: [256; Ore::COUNT],
            profile: OreProfile::default(),
            avoid: None,
        }
    }

    fn field(n: i32, spacing: i32) -> DepositIndex {
        let ores = Ore::ALL;
        DepositIndex::from_deposits(
            [n * spacing + 8, n * spacing + 8],
            (0..n * n).map(|i| Deposit {
                pos: BlockPos::new((i % n) * spacing, 10 + i % 5, (i / n) * spacing),
                ore: ores[(i % 4) as usize],
                depth: (i % 7) as u8,
                claimed: false,
            }),
        )
    }

    fn check_unique(a: &Assignment) {
        let mut taken: Vec<BlockPos> = a.choice.iter().flatten().copied().collect();
        let n = taken.len();
        taken.sort_unstable();
        taken.dedup();
        assert_eq!(taken.len(), n, "two miners share a deposit");
    }

    #[test]
    fn no_two_miners_share_a_deposit_and_threads_do_not_matter() {
        let index = field(30, 3);
        let miners: Vec<Miner> =
            (0..400).map(|i| miner(i, (i as i32 * 17) % 90, (i as i32 * 29) % 90)).collect();
        for exact_group in [1000, 24, 1] {
            let params = AssignParams { exact_group, ..AssignParams::default() };
            let one = assign(&ParPool::new(1).unwrap(), &index, &miners, &params);
            let two = assign(&ParPool::new(2).unwrap(), &index, &miners, &params);
            assert_eq!(one, two);
            check_unique(&one);
            assert!(one.choice.iter().flatten().count() > 300);
        }
    }

    /// The round a greedy scheduler would run: miners in id order, each taking its best
    /// candidate that nobody took yet (the same candidates and scores as [`assign`]).
    fn greedy(index: &DepositIndex, miners: &[Miner], params: &AssignParams) -> i64 {
        let (mut taken, mut near, mut total) = (Vec::new(), Vec::new(), 0);
        for m in miners {
            let keep = |d: &Deposit| Some(d.pos) != m.avoid && (d.pos.y - m.cell.y).abs() <= params.reach_y;
            index.nearest(m.cell, params.candidates, params.radius, keep, &mut near);
            let best = near
                .iter()
                .map(|n| (score(m, n, params.walk_speed), n.deposit.pos))
                .filter(|&(s, p)| s > 0 && !taken.contains(&p))
                .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
            if let Some((s, p)) = best {
                taken.push(p);
                total += s;
            }
        }
        total
    }

    #[test]
    fn kuhn_munkres_beats_greedy_and_the_auction_comes_close() {
        // 60 miners crowded over a field of deposits: taking the best deposit for each miner in
        // turn leaves later miners worse off than an assignment of the whole group.
        let index = field(12, 4);
        let crowd: Vec<Miner> = (0..60).map(|i| miner(i, 20 + (i as i32 % 5), 20 + (i as i32 / 5))).collect();
        let exact_params = AssignParams { exact_group: 1000, ..AssignParams::default() };
        let exact = assign(&ParPool::new(2).unwrap(), &index, &crowd, &exact_params);
        let auction = assign(
            &ParPool::new(2).unwrap(),
            &index,
            &crowd,
            &AssignParams { exact_group: 0, ..AssignParams::default() },
        );
        check_unique(&exact);
        check_unique(&auction);
        assert_eq!((exact.exact_groups, exact.auction_groups), (1, 0));
        assert_eq!((auction.exact_groups, auction.auction_groups), (0, 1));
        let greedy = greedy(&index, &crowd, &exact_params);
        assert!(exact.total_score > greedy, "exact {} vs greedy {greedy}", exact.total_score);
        assert!(auction.total_score > greedy, "auction {} vs greedy {greedy}", auction.total_score);
        assert!(exact.total_score >= auction.total_score);
        let slack = crowd.len() as i64 * (exact.total_score / 1000).max(1);
        assert!(
            auction.total_score + slack >= exact.total_score,
            "{} vs {}",
            auction.total_score,
            exact.total_score
        );
    }

    #[test]
    fn exact_assignment_is_optimal_on_a_small_case() {
        // Brute force over all injective assignments of 4 miners to their candidates.
        let index = field(3, 5);
        let miners: Vec<Miner> = (0..4).map(|i| miner(i, 4 + i as i32, 5)).collect();
        let params = AssignParams { candidates: 4, ..AssignParams::default() };
        let got = assign(&ParPool::new(1).unwrap(), &index, &miners, &params);
        let mut lists = Vec::new();
        let mut near = Vec::new();
        for m in &miners {
            index.nearest(m.cell, 4, params.radius, |_| true, &mut near);
            lists.push(
                near.iter().map(|n| (n.deposit.pos, score(m, n, params.walk_speed))).collect::<Vec<_>>(),
            );
        }
        fn best(lists: &[Vec<(BlockPos, i64)>], i: usize, used: &mut Vec<BlockPos>) -> i64 {
            if i == lists.len() {
                return 0;
            }
            let mut b = best(lists, i + 1, used);
            for &(p, s) in &lists[i] {
                if !used.contains(&p) {
                    used.push(p);
                    b = b.max(s + best(lists, i + 1, used));
                    used.pop();
                }
            }
            b
        }
        assert_eq!(got.total_score, best(&lists, 0, &mut Vec::new()));
        check_unique(&got);
    }

    #[test]
    fn the_learning_profile_steers_the_choice() {
        let at = |x: i32, ore: Ore| Deposit { pos: BlockPos::new(x, 20, 0), ore, depth: 0, claimed: false };
        let index = DepositIndex::from_deposits([32, 8], [at(5, Ore::Gold), at(15, Ore::Iron)]);
        let fresh = miner(1, 10, 0);
        let pick =
            |m: Miner| assign(&ParPool::new(1).unwrap(), &index, &[m], &AssignParams::default()).choice[0];
        assert_eq!(pick(fresh), Some(BlockPos::new(5, 20, 0)), "gold is worth more");
        let mut burnt = fresh;
        for _ in 0..10 {
            burnt.profile.record_failure(Ore::Gold);
        }
        assert_eq!(pick(burnt), Some(BlockPos::new(15, 20, 0)), "after ten failed gold tasks, iron");
    }

    #[test]
    fn full_inventories_and_avoided_deposits_are_skipped() {
        let index = field(4, 3);
        let mut m = miner(1, 3, 3);
        m.room = [0; Ore::COUNT];
        let a = assign(&ParPool::new(1).unwrap(), &index, &[m], &AssignParams::default());
        assert_eq!(a.choice, [None]);
        assert_eq!(a.had_candidates, [false]);
        let mut m = miner(1, 0, 0);
        m.avoid = Some(BlockPos::new(0, 10, 0));
        let a = assign(&ParPool::new(1).unwrap(), &index, &[m], &AssignParams::default());
        assert!(a.choice[0].is_some() && a.choice[0] != m.avoid);
    }
}
