//! Flocking (boids): the rule that turns each boid towards its neighbours' centre (cohesion),
//! away from those too close (separation) and along their mean heading (alignment), and
//! [`Flock`], which applies it to a whole flock on a [`Grid`].
//!
//! Two ways to step a flock, both exact for the rule:
//! - [`Flock::step_faithful`]: one thread, boids one at a time in a new random order each step,
//!   each seeing the others' current state: the form other agent-based simulators implement;
//! - [`Flock::step_parallel`]: double-buffered (every boid sees the previous step), in parallel
//!   chunks on the engine's pool, the same bits for any thread count.
//!
//! The engine's swarm system ([`super::swarms`]) uses [`Flock::steer`], the parallel form
//! without the move (the movement system moves NPCs).

use std::ops::Range;

use terrarium_codec::in_range;
use terrarium_engine::ParPool;
use terrarium_engine::rng::{StreamRng, hash3};

use super::SteeringError;
use super::grid::{Grid, PAD, Space};
use super::kernel::{self, Columns, Isa, Offsets, Probe, Sums};
use crate::par;

/// The parameters of the flocking rule. Distances in world units (blocks in the engine).
///
/// The defaults are those of the standard agent-based-modelling "Flocking" benchmark.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FlockParams {
    /// Boids at distance ≤ `vision` are neighbours. Finite, > 0.
    pub vision: f64,
    /// Neighbours closer than this push the boid away. Finite, ≥ 0.
    pub separation: f64,
    /// Distance a boid moves per step ([`Flock`]); in the engine, blocks per second. Finite, > 0.
    pub speed: f64,
    /// Weight of cohesion. Finite.
    pub cohere: f64,
    /// Weight of separation. Finite.
    pub separate: f64,
    /// Weight of alignment (the benchmark's `match`). Finite.
    pub align: f64,
}

impl Default for FlockParams {
    fn default() -> Self {
        Self { vision: 5.0, separation: 1.0, speed: 1.0, cohere: 0.03, separate: 0.015, align: 0.05 }
    }
}

impl FlockParams {
    /// Checks every value against its documented range.
    ///
    /// # Errors
    /// [`SteeringError::InvalidParam`] naming the first value out of range.
    pub fn validate(&self) -> Result<(), SteeringError> {
        // Wide finite ranges: what matters is no NaN, no infinity and no non-positive radius.
        in_range("flocking.vision", self.vision, &(1e-9..=1e9))?;
        in_range("flocking.separation", self.separation, &(0.0..=1e9))?;
        in_range("flocking.speed", self.speed, &(1e-9..=1e9))?;
        in_range("flocking.cohere", self.cohere, &(-1e9..=1e9))?;
        in_range("flocking.separate", self.separate, &(-1e9..=1e9))?;
        in_range("flocking.align", self.align, &(-1e9..=1e9))?;
        Ok(())
    }
}

/// What a boid sees of its `count` neighbours: the sums the rule needs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Neighbourhood {
    /// Number of neighbours.
    pub count: f64,
    /// Sum of the offsets from the boid to each neighbour.
    pub offsets: [f64; 2],
    /// Sum of the offsets to the neighbours closer than `separation`.
    pub close_offsets: [f64; 2],
    /// Sum of the neighbours' velocities.
    pub velocities: [f64; 2],
}

/// The flocking rule: a boid's new velocity from its current one and its neighbourhood.
///
/// With `N` neighbours: cohesion = Σd / N · cohere; separation = −Σd(closer than `separation`)
/// / N · separate; alignment = Σv / N · align; the new velocity is
/// normalise((velocity + cohesion + separation + alignment) / 2). A boid without neighbours, or
/// whose sum has no direction, keeps its velocity.
///
/// # Examples
/// ```
/// use terrarium_systems::steering::{FlockParams, Neighbourhood, rule};
/// let lonely = rule(&FlockParams::default(), [0.6, 0.8], &Neighbourhood::default());
/// assert_eq!(lonely, [0.6, 0.8]);
/// ```
#[must_use]
pub fn rule(p: &FlockParams, velocity: [f64; 2], nb: &Neighbourhood) -> [f64; 2] {
    if nb.count == 0.0 {
        return velocity;
    }
    // One division for the mean, one for the length.
    let inv_n = 1.0 / nb.count;
    let w = [0, 1].map(|k| {
        let cohesion = nb.offsets[k] * inv_n * p.cohere;
        let separation = -nb.close_offsets[k] * inv_n * p.separate;
        let alignment = nb.velocities[k] * inv_n * p.align;
        (velocity[k] + cohesion + separation + alignment) * 0.5
    });
    let len = (w[0] * w[0] + w[1] * w[1]).sqrt();
    if len > 0.0 && len.is_finite() {
        let inv = 1.0 / len;
        [w[0] * inv, w[1] * inv]
    } else {
        velocity
    }
}

/// One boid: position and velocity.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Boid {
    /// Position.
    pub position: [f64; 2],
    /// Velocity: a unit heading in [`Flock`] steps.
    pub velocity: [f64; 2],
}

impl Boid {
    /// The Flocking benchmark's start (`examples/flocking.rs`): `boids` boids at uniformly
    /// random positions in the `extent` square, each with a uniformly random unit heading. Boid
    /// `i` draws from a stream of its own (`seed`, `i`), so a boid's start does not depend on
    /// how many there are.
    #[must_use]
    pub fn scattered(boids: u32, extent: f64, seed: u64) -> Vec<Boid> {
        (0..u64::from(boids))
            .map(|i| {
                let mut r = StreamRng::new(hash3(seed, i, 0x424F_4944)); // "BOID"
                let mut unit = || (r.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                let position = [extent * unit(), extent * unit()];
                // Rejection sampling in the unit disc: a uniform direction.
                let velocity = loop {
                    let (x, y) = (2.0 * unit() - 1.0, 2.0 * unit() - 1.0);
                    let n2 = x * x + y * y;
                    if n2 > 1e-6 && n2 <= 1.0 {
                        let n = n2.sqrt();
                        break [x / n, y / n];
                    }
                };
                Boid { position, velocity }
            })
            .collect()
    }
}

/// The stream [`Flock::step_faithful`] draws its update orders from in the Flocking benchmark
/// (`examples/flocking.rs`) with `seed`.
#[must_use]
pub fn benchmark_order(seed: u64) -> StreamRng {
    StreamRng::new(hash3(seed, 0, 0x004F_5244_4552)) // "ORDER"
}

/// Boids per parallel chunk: small enough to balance two to sixteen threads over a clustered
/// flock, big enough to amortise scheduling. Chunks are cut by grid slot, never by thread.
const CHUNK: usize = 1024;

/// The grid's cell side for queries of `radius` over `n` boids in `area`.
///
/// Cells a little wider than the radius let a query scan the 3 × 3 cells around the boid with
/// almost no arithmetic: best while those cells hold few boids. In dense flocks (more than
/// about ten boids per radius-sized cell on average), cells of half the radius, cut to the disc
/// row by row, scan about 40 % fewer candidates, which pays for the extra rows. Measured on
/// the benchmark cases (instructions per boid update): 200 boids in 100² with vision 5, 1171
/// against 1607; 10 000 boids in 100², 3814 against 3423.
fn cell_side(radius: f64, n: usize, area: f64) -> f64 {
    let per_cell = n as f64 / area * radius * radius;
    // The margin keeps the cell wider than the query radius plus the grid's rounding slack.
    let side = radius * (1.0 + 1e-6);
    if per_cell > 10.0 { side / 2.0 } else { side }
}

/// A flock of boids in a [`Space`] and everything needed to step it, with buffers kept between
/// steps (no allocation per step once warm).
///
/// # Examples
/// ```
/// use terrarium_systems::steering::{Boid, Flock, FlockParams, Space};
/// use terrarium_engine::rng::StreamRng;
/// let mut flock = Flock::new(FlockParams::default(), Space::periodic([100.0, 100.0]).unwrap()).unwrap();
/// flock.load((0..50).map(|i| Boid { position: [i as f64 * 2.0, 50.0], velocity: [0.0, 1.0] }));
/// let mut rng = StreamRng::new(7);
/// flock.step_faithful(&mut rng);
/// assert_eq!(flock.boids().len(), 50);
/// ```
#[derive(Debug, Clone)]
pub struct Flock {
    params: FlockParams,
    grid: Grid,
    /// The state, in one order: the last grid order (load order before the first step).
    /// Velocities and groups are followed by [`PAD`] slots, like the grid's positions.
    px: Vec<f64>,
    py: Vec<f64>,
    vx: Vec<f64>,
    vy: Vec<f64>,
    id: Vec<u32>,
    /// Group of each boid as an `f64` (exact for `u32`), so the SIMD kernel can compare it; empty
    /// when all boids are one flock.
    group: Vec<f64>,
    nvx: Vec<f64>,
    nvy: Vec<f64>,
    scratch_f: Vec<f64>,
    scratch_u: Vec<u32>,
    isa: Isa,
}

impl Flock {
    /// An empty flock.
    ///
    /// # Errors
    /// [`SteeringError::InvalidParam`] when `params` is out of range.
    pub fn new(params: FlockParams, space: Space) -> Result<Self, SteeringError> {
        params.validate()?;
        Ok(Self {
            params,
            grid: Grid::new(space),
            px: Vec::new(),
            py: Vec::new(),
            vx: vec![0.0; PAD],
            vy: vec![0.0; PAD],
            id: Vec::new(),
            group: Vec::new(),
            nvx: Vec::new(),
            nvy: Vec::new(),
            scratch_f: Vec::new(),
            scratch_u: Vec::new(),
            isa: Isa::detect(),
        })
    }

    /// The parameters.
    #[must_use]
    pub fn params(&self) -> &FlockParams {
        &self.params
    }

    /// The same flock on the portable kernel, to check that it agrees with the AVX one.
    #[cfg(test)]
    fn on_base_isa(mut self) -> Self {
        self.isa = Isa::Base;
        self
    }

    /// The space the boids live in.
    #[must_use]
    pub fn space(&self) -> &Space {
        self.grid.space()
    }

    /// Number of boids.
    #[must_use]
    pub fn len(&self) -> usize {
        self.id.len()
    }

    /// True when the flock has no boids.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.id.is_empty()
    }

    /// Replaces the boids; all of them flock together. Their index in `boids` is their id.
    ///
    /// # Panics
    /// With 2³² boids or more.
    pub fn load(&mut self, boids: impl IntoIterator<Item = Boid>) {
        self.load_grouped(boids.into_iter().map(|b| (b, None)));
    }

    /// Replaces the boids; a boid with group `Some(g)` sees only boids of group `g`, and the
    /// boids without a group see only each other. Their index in `boids` is their id.
    ///
    /// # Panics
    /// With 2³² boids or more.
    pub fn load_grouped(&mut self, boids: impl IntoIterator<Item = (Boid, Option<u32>)>) {
        for v in [&mut self.px, &mut self.py, &mut self.vx, &mut self.vy, &mut self.group] {
            v.clear();
        }
        self.id.clear();
        let mut grouped = false;
        for (i, (b, g)) in boids.into_iter().enumerate() {
            self.px.push(b.position[0]);
            self.py.push(b.position[1]);
            self.vx.push(b.velocity[0]);
            self.vy.push(b.velocity[1]);
            self.id.push(u32::try_from(i).expect("a flock holds fewer than 2^32 boids"));
            // Ungrouped boids form their own group, −1, which no u32 group equals.
            self.group.push(g.map_or(-1.0, f64::from));
            grouped |= g.is_some();
        }
        if grouped {
            self.group.extend([-1.0; PAD]);
        } else {
            self.group.clear();
        }
        self.vx.extend([0.0; PAD]);
        self.vy.extend([0.0; PAD]);
    }

    /// The boids, in id order.
    #[must_use]
    pub fn boids(&self) -> Vec<Boid> {
        let mut out = vec![Boid::default(); self.len()];
        for (s, &id) in self.id.iter().enumerate() {
            out[id as usize] =
                Boid { position: [self.px[s], self.py[s]], velocity: [self.vx[s], self.vy[s]] };
        }
        out
    }

    /// A hash of every boid's position bits, in id order: equal checksums mean (almost surely)
    /// bit-identical positions.
    #[must_use]
    pub fn checksum(&self) -> u64 {
        self.boids()
            .iter()
            .fold(0x464C_4F43_4B00, |h, b| hash3(h, b.position[0].to_bits(), b.position[1].to_bits())) // "FLOCK"
    }

    /// One step in the manner of other agent-based simulators: on one thread, boids in a new
    /// random order (drawn from `rng`), each applying the rule to the current state of the
    /// others (some already moved this step) and then moving `speed` along its new velocity.
    pub fn step_faithful(&mut self, rng: &mut StreamRng) {
        let n = self.len();
        let reach = self.faithful_reach();
        self.sort(reach);
        let mut order = std::mem::take(&mut self.scratch_u);
        order.clear();
        order.extend(0..n as u32);
        for i in (1..n).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
        self.faithful_moves(&order, reach);
        self.scratch_u = order;
    }

    /// Moved boids keep their cell until the next rebuild, so a faithful step queries a little
    /// wider than the vision (by one move) and lets the exact distance test decide.
    fn faithful_reach(&self) -> f64 {
        self.params.vision + self.params.speed * (1.0 + 1e-9)
    }

    /// Moves the boids in the grid slots of `order`, one at a time, then wraps the positions.
    fn faithful_moves(&mut self, order: &[u32], reach: f64) {
        match self.isa {
            Isa::Base => self.faithful_pass(order, reach),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx => {
                #[expect(unsafe_code, reason = "a call into an AVX clone, after feature detection")]
                // SAFETY: `Isa::Avx` is only made by `Isa::detect`, after the CPU reported AVX.
                unsafe {
                    self.faithful_pass_avx(order, reach);
                }
            }
        }
        let space = *self.grid.space();
        for s in 0..self.len() {
            let p = space.wrap([self.grid.xs()[s], self.grid.ys()[s]]);
            self.px[s] = p[0];
            self.py[s] = p[1];
        }
    }

    /// A faithful step with the boids taken in the order of `ids`, for tests.
    #[cfg(test)]
    fn step_faithful_in_order(&mut self, ids: &[u32]) {
        let reach = self.faithful_reach();
        self.sort(reach);
        let mut slot_of = vec![0u32; self.len()];
        for (s, &id) in self.id.iter().enumerate() {
            slot_of[id as usize] = s as u32;
        }
        let order: Vec<u32> = ids.iter().map(|&id| slot_of[id as usize]).collect();
        self.faithful_moves(&order, reach);
    }

    /// Moves every boid once, in `order` (slots), each seeing the current state.
    fn faithful_pass(&mut self, order: &[u32], reach: f64) {
        self.faithful_pass_with(order, reach, kernel::add_base);
    }

    /// [`Flock::faithful_pass`] compiled for AVX, with the AVX kernel.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx")]
    fn faithful_pass_avx(&mut self, order: &[u32], reach: f64) {
        self.faithful_pass_with(
            order,
            reach,
            #[inline(always)]
            |sums, cols, probe, slots, offsets| {
                kernel::add_avx(sums, cols, probe, slots, offsets);
            },
        );
    }

    #[inline(always)]
    fn faithful_pass_with(&mut self, order: &[u32], reach: f64, k: impl Kernel) {
        let speed = self.params.speed;
        for &s in order {
            let s = s as usize;
            let h = self.view().heading(&self.grid, s, reach, k);
            self.vx[s] = h[0];
            self.vy[s] = h[1];
            let (xs, ys) = self.grid.positions_mut();
            xs[s] += speed * h[0];
            ys[s] += speed * h[1];
        }
    }

    /// One double-buffered step, in parallel on `pool`: every boid applies the rule to the
    /// state at the start of the step, then all move. Same result for any thread count.
    pub fn step_parallel(&mut self, pool: &ParPool) {
        self.steer_sorted(pool, true);
        std::mem::swap(&mut self.vx, &mut self.nvx);
        std::mem::swap(&mut self.vy, &mut self.nvy);
    }

    /// The rule applied to every boid without moving any: `out[id]` is boid `id`'s new velocity.
    /// Computed in parallel on `pool`, the same for any thread count. The flock itself is left
    /// as it was (only reordered).
    pub fn steer(&mut self, pool: &ParPool, out: &mut Vec<[f64; 2]>) {
        self.steer_sorted(pool, false);
        out.clear();
        out.resize(self.len(), [0.0; 2]);
        for (s, &id) in self.id.iter().enumerate() {
            out[id as usize] = [self.nvx[s], self.nvy[s]];
        }
    }

    /// Sorts by cell, then writes every boid's new velocity into `nvx`/`nvy` and, with
    /// `advance`, its new (wrapped) position into `px`/`py`, all in grid order.
    fn steer_sorted(&mut self, pool: &ParPool, advance: bool) {
        let vision = self.params.vision;
        self.sort(vision);
        let n = self.len();
        for v in [&mut self.nvx, &mut self.nvy] {
            v.clear();
            v.resize(n + PAD, 0.0);
        }
        let mut nvx = std::mem::take(&mut self.nvx);
        let mut nvy = std::mem::take(&mut self.nvy);
        let mut px = std::mem::take(&mut self.px);
        let mut py = std::mem::take(&mut self.py);
        let view = View::new(self);
        let (grid, speed, space) = (&self.grid, self.params.speed, *self.grid.space());
        let chunks: Vec<_> = nvx[..n]
            .chunks_mut(CHUNK)
            .zip(nvy[..n].chunks_mut(CHUNK))
            .zip(px.chunks_mut(CHUNK).zip(py.chunks_mut(CHUNK)))
            .enumerate()
            .collect();
        let isa = self.isa;
        par::for_each(pool, chunks, |(c, ((hx, hy), (px, py)))| {
            let chunk = Chunk { start: c * CHUNK, hx, hy, px, py };
            let step = Step { view, grid, vision, speed, space, advance };
            match isa {
                Isa::Base => step.run(chunk),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx => {
                    #[expect(unsafe_code, reason = "a call into an AVX clone, after feature detection")]
                    // SAFETY: `Isa::Avx` is only made by `Isa::detect`, after the CPU reported AVX.
                    unsafe {
                        step.run_avx(chunk);
                    }
                }
            }
        });
        (self.nvx, self.nvy, self.px, self.py) = (nvx, nvy, px, py);
    }

    /// Rebuilds the grid from the current positions with cells for queries of `radius`, and
    /// brings velocities, ids and groups into the new order.
    fn sort(&mut self, radius: f64) {
        let [w, h] = self.grid.space().size();
        let cell = cell_side(radius, self.px.len(), w * h);
        self.grid.rebuild(&self.px, &self.py, cell);
        let order = self.grid.order();
        let n = order.len();
        let gather_f = |v: &mut Vec<f64>, tmp: &mut Vec<f64>, pad: f64| {
            tmp.clear();
            tmp.extend(order.iter().map(|&i| v[i as usize]));
            tmp.extend(std::iter::repeat_n(pad, PAD));
            std::mem::swap(v, tmp);
        };
        gather_f(&mut self.vx, &mut self.scratch_f, 0.0);
        gather_f(&mut self.vy, &mut self.scratch_f, 0.0);
        if !self.group.is_empty() {
            gather_f(&mut self.group, &mut self.scratch_f, -1.0);
        }
        self.scratch_u.clear();
        self.scratch_u.extend(order.iter().map(|&i| self.id[i as usize]));
        std::mem::swap(&mut self.id, &mut self.scratch_u);
        // The grid holds the sorted positions; px/py keep the same order for the step to use.
        self.px.clear();
        self.px.extend_from_slice(&self.grid.xs()[..n]);
        self.py.clear();
        self.py.extend_from_slice(&self.grid.ys()[..n]);
    }

    fn view(&self) -> View<'_> {
        View::new(self)
    }
}

/// One chunk of a parallel step's output, in grid order from slot `start`.
struct Chunk<'a> {
    start: usize,
    hx: &'a mut [f64],
    hy: &'a mut [f64],
    px: &'a mut [f64],
    py: &'a mut [f64],
}

/// What every chunk of a parallel step shares.
struct Step<'a> {
    view: View<'a>,
    grid: &'a Grid,
    vision: f64,
    speed: f64,
    space: Space,
    advance: bool,
}

impl Step<'_> {
    /// New headings (and, with `advance`, new wrapped positions) of the chunk's boids.
    fn run(&self, c: Chunk<'_>) {
        self.run_with(c, kernel::add_base);
    }

    /// [`Step::run`] compiled for AVX, with the AVX kernel.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx")]
    fn run_avx(&self, c: Chunk<'_>) {
        self.run_with(
            c,
            #[inline(always)]
            |sums, cols, probe, slots, offsets| {
                kernel::add_avx(sums, cols, probe, slots, offsets);
            },
        );
    }

    #[inline(always)]
    fn run_with(&self, c: Chunk<'_>, k: impl Kernel) {
        for i in 0..c.hx.len() {
            let s = c.start + i;
            let h = self.view.heading(self.grid, s, self.vision, k);
            (c.hx[i], c.hy[i]) = (h[0], h[1]);
            if self.advance {
                let g = self.grid;
                let p = self.space.wrap([g.xs()[s] + self.speed * h[0], g.ys()[s] + self.speed * h[1]]);
                (c.px[i], c.py[i]) = (p[0], p[1]);
            }
        }
    }
}

/// A run kernel: `kernel::add_base`, or `kernel::add_avx` inside code compiled for AVX.
trait Kernel: Fn(&mut Sums, &Columns<'_>, &Probe, Range<usize>, Offsets) + Copy {}
impl<K: Fn(&mut Sums, &Columns<'_>, &Probe, Range<usize>, Offsets) + Copy> Kernel for K {}

/// What the rule reads: columns in grid order, all padded by [`PAD`] slots.
#[derive(Clone, Copy)]
struct View<'a> {
    cols: Columns<'a>,
    params: &'a FlockParams,
    vision2: f64,
    separation2: f64,
}

impl<'a> View<'a> {
    fn new(flock: &'a Flock) -> Self {
        let params = &flock.params;
        let grid = &flock.grid;
        Self {
            cols: Columns {
                xs: grid.xs(),
                ys: grid.ys(),
                vx: &flock.vx,
                vy: &flock.vy,
                group: &flock.group,
                size: grid.space().size(),
            },
            params,
            vision2: params.vision * params.vision,
            separation2: params.separation * params.separation,
        }
    }

    /// The new velocity of the boid in slot `s`, from the boids the grid finds within `reach`
    /// (at least the vision) that are within the vision.
    #[inline(always)]
    fn heading(&self, grid: &Grid, s: usize, reach: f64, k: impl Kernel) -> [f64; 2] {
        let nb = self.neighbourhood(grid, s, reach, k);
        rule(self.params, [self.cols.vx[s], self.cols.vy[s]], &nb)
    }

    #[inline(always)]
    fn neighbourhood(&self, grid: &Grid, s: usize, reach: f64, k: impl Kernel) -> Neighbourhood {
        let p = [self.cols.xs[s], self.cols.ys[s]];
        let group = if self.cols.group.is_empty() { 0.0 } else { self.cols.group[s] };
        let probe = Probe { p, vision2: self.vision2, separation2: self.separation2, group };
        let mut sums = Sums::default();
        // Inlined, so the kernel is compiled for the caller's instruction set (see `Isa`).
        grid.for_each_run(
            p,
            reach,
            #[inline(always)]
            |run| {
                let offsets = if run.fold {
                    Offsets::Folded
                } else if run.shift[0] == 0.0 && run.shift[1] == 0.0 {
                    Offsets::Plain
                } else {
                    Offsets::Shifted(run.shift)
                };
                // The boid itself is not its own neighbour: skip its slot.
                let Range { start, end } = run.slots;
                if start <= s && s < end {
                    k(&mut sums, &self.cols, &probe, start..s, offsets);
                    k(&mut sums, &self.cols, &probe, s + 1..end, offsets);
                } else {
                    k(&mut sums, &self.cols, &probe, start..end, offsets);
                }
            },
        );
        let (count, offsets, close_offsets, velocities) = sums.totals();
        Neighbourhood { count, offsets, close_offsets, velocities }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn pool(threads: usize) -> ParPool {
        ParPool(Arc::new(rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap()))
    }

    fn close(a: [f64; 2], b: [f64; 2]) -> bool {
        (a[0] - b[0]).abs() < 1e-12 && (a[1] - b[1]).abs() < 1e-12
    }

    /// Three boids on a torus of side 100, vision 5, separation 1, speed 1, weights
    /// cohere 0.03, separate 0.015, match 0.05; worked by hand.
    ///
    /// A at (10, 10) heading (1, 0); B at (10.6, 10.8) heading (0, 1) (0.6² + 0.8² = 1: distance
    /// 1, not closer than 1); C at (97, 10) heading (0, −1): 13 from A across the edge, out of
    /// sight of everyone.
    ///
    /// A sees B only: d = (0.6, 0.8), N = 1. cohesion = (0.018, 0.024); separation = 0 (B is not
    /// closer than 1); alignment = (0, 0.05). (v + c + s + a) / 2 = (1.018, 0.074) / 2 =
    /// (0.509, 0.037); its length is √(0.259081 + 0.001369) = √0.26045 = 0.51034302…, so A's new
    /// heading is (0.99736…, 0.07250…) and A moves to (10.99736…, 10.07250…).
    ///
    /// B sees A only: d = (−0.6, −0.8): cohesion (−0.018, −0.024), alignment (0.05, 0);
    /// (0.032, 0.976) / 2 = (0.016, 0.488), length √(0.000256 + 0.238144) = √0.2384 = 0.48826…,
    /// heading (0.03276…, 0.99946…).
    ///
    /// C has no neighbour: it keeps (0, −1) and moves to (97, 9).
    fn three_boids() -> Flock {
        let mut flock = Flock::new(FlockParams::default(), Space::periodic([100.0, 100.0]).unwrap()).unwrap();
        flock.load([
            Boid { position: [10.0, 10.0], velocity: [1.0, 0.0] },
            Boid { position: [10.6, 10.8], velocity: [0.0, 1.0] },
            Boid { position: [97.0, 10.0], velocity: [0.0, -1.0] },
        ]);
        flock
    }

    #[test]
    fn one_parallel_step_matches_the_rule_worked_by_hand() {
        let mut flock = three_boids();
        flock.step_parallel(&pool(2));
        let b = flock.boids();
        let len_a = 0.26045_f64.sqrt();
        let ha = [0.509 / len_a, 0.037 / len_a];
        assert!(close(b[0].velocity, ha), "{:?}", b[0]);
        assert!(close(b[0].position, [10.0 + ha[0], 10.0 + ha[1]]), "{:?}", b[0]);
        let len_b = 0.2384_f64.sqrt();
        let hb = [0.016 / len_b, 0.488 / len_b];
        assert!(close(b[1].velocity, hb), "{:?}", b[1]);
        assert!(close(b[1].position, [10.6 + hb[0], 10.8 + hb[1]]), "{:?}", b[1]);
        assert_eq!(b[2], Boid { position: [97.0, 9.0], velocity: [0.0, -1.0] });
        // Written out: A's heading is about (0.99736, 0.07250).
        assert!((b[0].velocity[0] - 0.99736).abs() < 1e-5 && (b[0].velocity[1] - 0.07250).abs() < 1e-5);
    }

    /// Separation and the periodic offset worked by hand: A at (99.5, 50) heading (0, 1) and B at
    /// (0.1, 50) heading (0, 1), 0.6 apart across the edge, so each pushes the other away.
    /// A: d = (0.6, 0), N = 1: cohesion (0.018, 0), separation −(0.6, 0) · 0.015 = (−0.009, 0),
    /// alignment (0, 0.05); sum with v: (0.009, 1.05) / 2 = (0.0045, 0.525); length
    /// √(0.00002025 + 0.275625) = √0.27564525; A moves to (99.5 + 0.0045/len, 50 + 0.525/len).
    /// B mirrors A in x and wraps: 0.1 − 0.0045/len.
    #[test]
    fn separation_across_the_periodic_edge_matches_the_hand_computation() {
        let mut flock = Flock::new(FlockParams::default(), Space::periodic([100.0, 100.0]).unwrap()).unwrap();
        flock.load([
            Boid { position: [99.5, 50.0], velocity: [0.0, 1.0] },
            Boid { position: [0.1, 50.0], velocity: [0.0, 1.0] },
        ]);
        flock.step_parallel(&pool(1));
        let b = flock.boids();
        let len = 0.275_645_25_f64.sqrt();
        assert!(close(b[0].velocity, [0.0045 / len, 0.525 / len]), "{:?}", b[0]);
        assert!(close(b[1].velocity, [-0.0045 / len, 0.525 / len]), "{:?}", b[1]);
        assert!(close(b[0].position, [99.5 + 0.0045 / len, 50.0 + 0.525 / len]), "{:?}", b[0]);
        assert!(close(b[1].position, [0.1 - 0.0045 / len, 50.0 + 0.525 / len]), "{:?}", b[1]);
    }

    /// In the faithful step, whoever goes second sees the first one's new state. With A and B
    /// of `three_boids`, A first gives A's parallel result; B then sees A at its new position
    /// and heading, which this test works out from A's numbers (not from the implementation).
    #[test]
    fn faithful_step_updates_one_boid_at_a_time() {
        let len_a = 0.26045_f64.sqrt();
        let ha = [0.509 / len_a, 0.037 / len_a];
        let a1 = [10.0 + ha[0], 10.0 + ha[1]];
        let len_b = 0.2384_f64.sqrt();
        let hb = [0.016 / len_b, 0.488 / len_b];
        // B second: d = a1 − (10.6, 10.8) ≈ (0.397, −0.728), N = 1, and now closer than 1
        // (|d| ≈ 0.83), so separation −d · 0.015 joins cohesion d · 0.03.
        let d = [a1[0] - 10.6, a1[1] - 10.8];
        assert!((d[0] * d[0] + d[1] * d[1]).sqrt() < 1.0);
        let w = [
            (0.0 + d[0] * 0.03 - d[0] * 0.015 + ha[0] * 0.05) / 2.0,
            (1.0 + d[1] * 0.03 - d[1] * 0.015 + ha[1] * 0.05) / 2.0,
        ];
        let len = (w[0] * w[0] + w[1] * w[1]).sqrt();
        let hb_second = [w[0] / len, w[1] / len];
        // A second: sees B moved to (10.6, 10.8) + hb ≈ (10.633, 11.799), 1.9 away (no
        // separation), with heading hb.
        let b1 = [10.6 + hb[0], 10.8 + hb[1]];
        let d = [b1[0] - 10.0, b1[1] - 10.0];
        assert!((d[0] * d[0] + d[1] * d[1]).sqrt() > 1.0);
        let w = [(1.0 + d[0] * 0.03 + hb[0] * 0.05) / 2.0, (0.0 + d[1] * 0.03 + hb[1] * 0.05) / 2.0];
        let len = (w[0] * w[0] + w[1] * w[1]).sqrt();
        let ha_second = [w[0] / len, w[1] / len];

        let mut orders = [false; 2];
        for seed in 0..16 {
            let mut flock = three_boids();
            flock.step_faithful(&mut StreamRng::new(seed));
            let b = flock.boids();
            if close(b[0].velocity, ha) {
                assert!(close(b[1].velocity, hb_second), "A first, then B: {:?}", b[1]);
                assert!(close(b[1].position, [10.6 + hb_second[0], 10.8 + hb_second[1]]));
                orders[0] = true;
            } else {
                assert!(close(b[1].velocity, hb), "B first: {:?}", b[1]);
                assert!(close(b[0].velocity, ha_second), "then A: {:?}", b[0]);
                orders[1] = true;
            }
            assert_eq!(b[2], Boid { position: [97.0, 9.0], velocity: [0.0, -1.0] });
        }
        assert_eq!(orders, [true, true], "sixteen seeds give both orders");
    }

    fn random_flock(n: usize, extent: f64, seed: u64) -> Flock {
        let mut r = StreamRng::new(seed);
        let mut flock =
            Flock::new(FlockParams::default(), Space::periodic([extent, extent]).unwrap()).unwrap();
        flock.load((0..n).map(|_| {
            let p = [extent * f64::from(r.next_f32()), extent * f64::from(r.next_f32())];
            let a = [f64::from(r.next_f32()) - 0.5, f64::from(r.next_f32()) - 0.5];
            let l = (a[0] * a[0] + a[1] * a[1]).sqrt();
            Boid { position: p, velocity: [a[0] / l, a[1] / l] }
        }));
        flock
    }

    #[test]
    fn parallel_steps_give_the_same_bits_for_one_and_two_threads() {
        let (mut one, mut two) = (random_flock(5_000, 60.0, 3), random_flock(5_000, 60.0, 3));
        let (p1, p2) = (pool(1), pool(2));
        for _ in 0..10 {
            one.step_parallel(&p1);
            two.step_parallel(&p2);
        }
        assert_eq!(one.checksum(), two.checksum());
        assert_eq!(one.boids(), two.boids());
        assert_ne!(one.checksum(), random_flock(5_000, 60.0, 3).checksum(), "the boids moved");
    }

    /// The portable kernel and the AVX one (when this CPU has AVX) give the same bits, in both
    /// kinds of step and with groups.
    #[test]
    fn every_instruction_set_gives_the_same_bits() {
        let p = pool(2);
        let mut rng = (StreamRng::new(5), StreamRng::new(5));
        let (mut a, mut b) = (random_flock(3_000, 50.0, 4), random_flock(3_000, 50.0, 4).on_base_isa());
        for _ in 0..5 {
            a.step_faithful(&mut rng.0);
            b.step_faithful(&mut rng.1);
            a.step_parallel(&p);
            b.step_parallel(&p);
        }
        assert_eq!(a.boids(), b.boids());
        let boids = a.boids();
        let grouped = || boids.iter().enumerate().map(|(i, b)| (*b, Some(i as u32 % 3)));
        let space = Space::bounded([0.0, 0.0], [50.0, 50.0]).unwrap();
        let mut c = Flock::new(FlockParams::default(), space).unwrap();
        let mut d = Flock::new(FlockParams::default(), space).unwrap().on_base_isa();
        c.load_grouped(grouped());
        d.load_grouped(grouped());
        let (mut hc, mut hd) = (Vec::new(), Vec::new());
        c.steer(&p, &mut hc);
        d.steer(&p, &mut hd);
        assert_eq!(hc, hd);
    }

    /// Faithful steps against a direct O(n²) evaluation, boid by boid in the same random order,
    /// on a small torus where boids often cross the edge and their cells during a step.
    #[test]
    fn faithful_steps_equal_a_brute_force_run_in_the_same_order() {
        let (n, extent) = (400, 30.0);
        let mut flock = random_flock(n, extent, 21);
        let mut boids = flock.boids();
        let space = Space::periodic([extent, extent]).unwrap();
        let p = FlockParams::default();
        let mut r = StreamRng::new(8);
        for _ in 0..3 {
            let mut order: Vec<u32> = (0..n as u32).collect();
            for i in (1..order.len()).rev() {
                order.swap(i, r.below(i as u64 + 1) as usize);
            }
            flock.step_faithful_in_order(&order);
            for &i in &order {
                let b = boids[i as usize];
                let mut nb = Neighbourhood::default();
                for (j, o) in boids.iter().enumerate() {
                    let d = space.offset(b.position, o.position);
                    let d2 = d[0] * d[0] + d[1] * d[1];
                    if j != i as usize && d2 <= p.vision * p.vision {
                        nb.count += 1.0;
                        let close = d2 < p.separation * p.separation;
                        for (k, dk) in d.into_iter().enumerate() {
                            nb.offsets[k] += dk;
                            nb.velocities[k] += o.velocity[k];
                            nb.close_offsets[k] += if close { dk } else { 0.0 };
                        }
                    }
                }
                let v = rule(&p, b.velocity, &nb);
                let moved = [b.position[0] + p.speed * v[0], b.position[1] + p.speed * v[1]];
                boids[i as usize] = Boid { position: space.wrap(moved), velocity: v };
            }
        }
        for (i, (got, want)) in flock.boids().iter().zip(&boids).enumerate() {
            let d = space.offset(got.position, want.position);
            assert!(d[0].abs() < 1e-9 && d[1].abs() < 1e-9, "boid {i}: {got:?} vs {want:?}");
            assert!((got.velocity[0] - want.velocity[0]).abs() < 1e-9, "boid {i}");
        }
    }

    /// The grid-based kernel against a direct O(n²) evaluation of the rule.
    #[test]
    fn parallel_step_equals_a_brute_force_step() {
        let mut flock = random_flock(600, 40.0, 9);
        let before = flock.boids();
        flock.step_parallel(&pool(2));
        let after = flock.boids();
        let space = Space::periodic([40.0, 40.0]).unwrap();
        let p = FlockParams::default();
        for (i, b) in before.iter().enumerate() {
            let mut nb = Neighbourhood::default();
            for (j, o) in before.iter().enumerate() {
                let d = space.offset(b.position, o.position);
                let d2 = d[0] * d[0] + d[1] * d[1];
                if i != j && d2 <= p.vision * p.vision {
                    nb.count += 1.0;
                    let close = d2 < p.separation * p.separation;
                    for (k, dk) in d.into_iter().enumerate() {
                        nb.offsets[k] += dk;
                        nb.velocities[k] += o.velocity[k];
                        if close {
                            nb.close_offsets[k] += dk;
                        }
                    }
                }
            }
            let h = rule(&p, b.velocity, &nb);
            let (got, want) = (after[i].velocity, h);
            assert!((got[0] - want[0]).abs() < 1e-9 && (got[1] - want[1]).abs() < 1e-9, "boid {i}");
        }
    }

    #[test]
    fn groups_only_see_their_own() {
        let mut flock =
            Flock::new(FlockParams::default(), Space::bounded([0.0, 0.0], [10.0, 10.0]).unwrap()).unwrap();
        // Two boids side by side in different groups, one with a neighbour of its own group.
        flock.load_grouped([
            (Boid { position: [5.0, 5.0], velocity: [1.0, 0.0] }, Some(1)),
            (Boid { position: [5.5, 5.0], velocity: [0.0, 1.0] }, Some(2)),
            (Boid { position: [5.0, 6.0], velocity: [0.0, 1.0] }, Some(2)),
        ]);
        let mut out = Vec::new();
        flock.steer(&pool(2), &mut out);
        assert_eq!(out[0], [1.0, 0.0], "alone in group 1: keeps its heading");
        assert_ne!(out[1], [0.0, 1.0], "boids 1 and 2 see each other");
    }

    #[test]
    fn bad_params_are_refused() {
        let space = Space::periodic([1.0, 1.0]).unwrap();
        for p in [
            FlockParams { vision: 0.0, ..FlockParams::default() },
            FlockParams { speed: f64::NAN, ..FlockParams::default() },
            FlockParams { separation: -1.0, ..FlockParams::default() },
            FlockParams { align: f64::INFINITY, ..FlockParams::default() },
        ] {
            assert!(matches!(Flock::new(p, space), Err(SteeringError::InvalidParam(_))), "{p:?}");
        }
    }
}
