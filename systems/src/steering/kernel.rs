//! The neighbour sums of one boid over one run of grid slots, four candidates per step.
//!
//! The kernel is written once ([`run_kernel!`]) over a small set of lane operations, and built
//! twice: on `wide::f64x4` (SSE2 on the baseline x86-64 target) and on AVX intrinsics (256-bit
//! registers), which `Flock` uses when the CPU has AVX (checked once, [`Isa::detect`]). Both do
//! the same IEEE operations, lane by lane, in the same order, so every machine and every thread
//! count gets the same bits.

use std::ops::Range;

/// Candidates per step.
pub(super) const LANES: usize = 4;

/// The instruction set the kernel runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Isa {
    /// The build's own target (SSE2 on baseline x86-64).
    Base,
    /// x86-64 with AVX, which this CPU has.
    #[cfg(target_arch = "x86_64")]
    Avx,
}

impl Isa {
    /// The best instruction set this CPU supports.
    pub(super) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx") {
            return Isa::Avx;
        }
        Isa::Base
    }
}

/// The columns a query reads, in grid order, each followed by at least `LANES − 1` padding
/// slots (positions at `grid::FAR`, never in reach).
#[derive(Clone, Copy)]
pub(super) struct Columns<'a> {
    pub xs: &'a [f64],
    pub ys: &'a [f64],
    pub vx: &'a [f64],
    pub vy: &'a [f64],
    /// Group of each slot as an `f64`; empty when all boids are one flock.
    pub group: &'a [f64],
    /// Side lengths of the periodic space (for folded offsets).
    pub size: [f64; 2],
}

/// The querying boid.
#[derive(Clone, Copy)]
pub(super) struct Probe {
    pub p: [f64; 2],
    pub vision2: f64,
    pub separation2: f64,
    pub group: f64,
}

/// How a run's offsets are formed (see `grid::Run`).
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Offsets {
    /// `x − p`: most runs.
    Plain,
    /// `(x − p) + shift`: runs across a periodic edge.
    Shifted([f64; 2]),
    /// Folded one by one to the nearest image: queries wider than half the space.
    Folded,
}

/// Lane-wise running sums over the neighbours.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Sums {
    count: [f64; LANES],
    ox: [f64; LANES],
    oy: [f64; LANES],
    cx: [f64; LANES],
    cy: [f64; LANES],
    vx: [f64; LANES],
    vy: [f64; LANES],
}

impl Sums {
    /// The totals: `(count, Σ offsets, Σ offsets of close ones, Σ velocities)`.
    pub(super) fn totals(&self) -> (f64, [f64; 2], [f64; 2], [f64; 2]) {
        let sum = |l: &[f64; LANES]| (l[0] + l[1]) + (l[2] + l[3]);
        let (ox, oy, cx, cy) = (sum(&self.ox), sum(&self.oy), sum(&self.cx), sum(&self.cy));
        (sum(&self.count), [ox, oy], [cx, cy], [sum(&self.vx), sum(&self.vy)])
    }
}

/// Picks the instance of a run kernel for the run's offsets and the columns' groups.
macro_rules! dispatch {
    ($run:ident, $sums:ident, $cols:ident, $probe:ident, $slots:ident, $offsets:ident) => {
        if $slots.is_empty() {
            return;
        }
        match ($offsets, $cols.group.is_empty()) {
            (Offsets::Plain, true) => $run::<PLAIN, false>($sums, $cols, $probe, $slots, [0.0; 2]),
            (Offsets::Shifted(s), true) => $run::<SHIFTED, false>($sums, $cols, $probe, $slots, s),
            (Offsets::Folded, true) => $run::<FOLDED, false>($sums, $cols, $probe, $slots, [0.0; 2]),
            (Offsets::Plain, false) => $run::<PLAIN, true>($sums, $cols, $probe, $slots, [0.0; 2]),
            (Offsets::Shifted(s), false) => $run::<SHIFTED, true>($sums, $cols, $probe, $slots, s),
            (Offsets::Folded, false) => $run::<FOLDED, true>($sums, $cols, $probe, $slots, [0.0; 2]),
        }
    };
}

/// Adds to `sums` the neighbours of `probe` among `slots`: candidates within the vision (and in
/// its group, when the columns have groups). Others are masked out, which adds +0.0.
#[inline(always)]
pub(super) fn add_base(
    sums: &mut Sums,
    cols: &Columns<'_>,
    probe: &Probe,
    slots: Range<usize>,
    offsets: Offsets,
) {
    dispatch!(run_base, sums, cols, probe, slots, offsets);
}

/// [`add_base`] on AVX. Safe to call only from code compiled for AVX (the compiler checks).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx")]
pub(super) fn add_avx(
    sums: &mut Sums,
    cols: &Columns<'_>,
    probe: &Probe,
    slots: Range<usize>,
    offsets: Offsets,
) {
    dispatch!(run_avx, sums, cols, probe, slots, offsets);
}

const PLAIN: u8 = 0;
const SHIFTED: u8 = 1;
const FOLDED: u8 = 2;

/// A run kernel over the lane operations of module `$ops`: the sums of one run, four
/// candidates per step, with the running sums in registers.
macro_rules! run_kernel {
    ($(#[$attr:meta])* $name:ident, $ops:ident) => {
        $(#[$attr])*
        fn $name<const MODE: u8, const GROUPED: bool>(
            sums: &mut Sums,
            cols: &Columns<'_>,
            probe: &Probe,
            slots: Range<usize>,
            shift: [f64; 2],
        ) {
            use $ops as v;
            // The columns are padded, so the run rounded up to whole steps is in bounds.
            let (start, len) = (slots.start, slots.len());
            let end = start + len.div_ceil(LANES) * LANES;
            let last = len.div_ceil(LANES) - 1;
            let (xs, ys) = (&cols.xs[start..end], &cols.ys[start..end]);
            let (vxs, vys) = (&cols.vx[start..end], &cols.vy[start..end]);
            // Without groups, `xs` stands in for the group column (never read).
            let gs = if GROUPED { &cols.group[start..end] } else { xs };
            let (px, py) = (v::splat(probe.p[0]), v::splat(probe.p[1]));
            let (vision2, separation2) = (v::splat(probe.vision2), v::splat(probe.separation2));
            let (group, one) = (v::splat(probe.group), v::splat(1.0));
            let (sx, sy) = (v::splat(shift[0]), v::splat(shift[1]));
            let (len_x, len_y) = (v::splat(cols.size[0]), v::splat(cols.size[1]));
            let (half_x, half_y) = (v::splat(0.5 * cols.size[0]), v::splat(0.5 * cols.size[1]));
            let (neg_half_x, neg_half_y) = (v::splat(-0.5 * cols.size[0]), v::splat(-0.5 * cols.size[1]));
            let mut count = v::from(sums.count);
            let (mut ox, mut oy) = (v::from(sums.ox), v::from(sums.oy));
            let (mut cx, mut cy) = (v::from(sums.cx), v::from(sums.cy));
            let (mut vx, mut vy) = (v::from(sums.vx), v::from(sums.vy));
            let [xs, ys, vxs, vys, gs] = [xs, ys, vxs, vys, gs].map(|c| c.chunks_exact(LANES));
            for (i, ((((x, y), cvx), cvy), g)) in xs.zip(ys).zip(vxs).zip(vys).zip(gs).enumerate()
            {
                let mut dx = v::sub(v::load(x), px);
                let mut dy = v::sub(v::load(y), py);
                if MODE == SHIFTED {
                    dx = v::add(dx, sx);
                    dy = v::add(dy, sy);
                } else if MODE == FOLDED {
                    // The nearest-image fold of `grid.rs`, lane by lane.
                    dx = v::select(v::gt(dx, half_x), v::sub(dx, len_x), v::select(v::lt(dx, neg_half_x), v::add(dx, len_x), dx));
                    dy = v::select(v::gt(dy, half_y), v::sub(dy, len_y), v::select(v::lt(dy, neg_half_y), v::add(dy, len_y), dy));
                }
                let d2 = v::add(v::mul(dx, dx), v::mul(dy, dy));
                let mut m = v::le(d2, vision2);
                if GROUPED {
                    m = v::and(m, v::eq(v::load(g), group));
                }
                if i == last {
                    m = v::and(m, v::from(TAIL[len - last * LANES]));
                }
                let close = v::and(m, v::lt(d2, separation2));
                count = v::add(count, v::and(one, m));
                ox = v::add(ox, v::and(dx, m));
                oy = v::add(oy, v::and(dy, m));
                cx = v::add(cx, v::and(dx, close));
                cy = v::add(cy, v::and(dy, close));
                vx = v::add(vx, v::and(v::load(cvx), m));
                vy = v::add(vy, v::and(v::load(cvy), m));
            }
            sums.count = v::to(count);
            (sums.ox, sums.oy) = (v::to(ox), v::to(oy));
            (sums.cx, sums.cy) = (v::to(cx), v::to(cy));
            (sums.vx, sums.vy) = (v::to(vx), v::to(vy));
        }
    };
}

run_kernel!(
    #[inline(always)]
    run_base,
    base
);
#[cfg(target_arch = "x86_64")]
run_kernel!(
    #[inline]
    #[target_feature(enable = "avx")]
    run_avx,
    avx
);

/// Lane masks keeping the first 1, 2, 3 or 4 lanes (index: lanes kept).
const TAIL: [[f64; LANES]; LANES + 1] = {
    let (on, off) = (f64::from_bits(u64::MAX), 0.0);
    [[off, off, off, off], [on, off, off, off], [on, on, off, off], [on, on, on, off], [on, on, on, on]]
};

/// Lane operations on `wide::f64x4`: SSE2 pairs on the baseline target.
mod base {
    pub(super) type V = wide::f64x4;

    #[inline(always)]
    pub(super) fn splat(x: f64) -> V {
        V::splat(x)
    }
    #[inline(always)]
    pub(super) fn from(a: [f64; 4]) -> V {
        V::new(a)
    }
    #[inline(always)]
    pub(super) fn to(v: V) -> [f64; 4] {
        v.to_array()
    }
    #[inline(always)]
    pub(super) fn load(a: &[f64]) -> V {
        V::new(a.try_into().expect("chunks of four"))
    }
    #[inline(always)]
    pub(super) fn add(a: V, b: V) -> V {
        a + b
    }
    #[inline(always)]
    pub(super) fn sub(a: V, b: V) -> V {
        a - b
    }
    #[inline(always)]
    pub(super) fn mul(a: V, b: V) -> V {
        a * b
    }
    #[inline(always)]
    pub(super) fn and(a: V, b: V) -> V {
        a & b
    }
    #[inline(always)]
    pub(super) fn le(a: V, b: V) -> V {
        a.simd_le(b)
    }
    #[inline(always)]
    pub(super) fn lt(a: V, b: V) -> V {
        a.simd_lt(b)
    }
    #[inline(always)]
    pub(super) fn gt(a: V, b: V) -> V {
        a.simd_gt(b)
    }
    #[inline(always)]
    pub(super) fn eq(a: V, b: V) -> V {
        a.simd_eq(b)
    }
    /// `a` where the mask is on, `b` elsewhere.
    #[inline(always)]
    pub(super) fn select(mask: V, a: V, b: V) -> V {
        mask.bitselect(a, b)
    }
}

/// The same lane operations on AVX registers. Comparisons are ordered and quiet, like those of
/// `wide` (false for NaN).
#[cfg(target_arch = "x86_64")]
mod avx {
    use std::arch::x86_64::{
        __m256d, _CMP_EQ_OQ, _CMP_GT_OQ, _CMP_LE_OQ, _CMP_LT_OQ, _mm256_add_pd, _mm256_and_pd,
        _mm256_blendv_pd, _mm256_cmp_pd, _mm256_mul_pd, _mm256_set1_pd, _mm256_sub_pd,
    };

    #[inline]
    #[target_feature(enable = "avx")]
    pub(super) fn splat(x: f64) -> __m256d {
        _mm256_set1_pd(x)
    }
    #[inline]
    #[target_feature(enable = "avx")]
    pub(super) fn from(a: [f64; 4]) -> __m256d {
        bytemuck::cast(a)
    }
    #[inline]
    #[target_feature(enable = "avx")]
    pub(super) fn to(v: __m256d) -> [f64; 4] {
        bytemuck::cast(v)
    }
    #[inline]
    #[target_feature(enable = "avx")]
    pub(super) fn load(a: &[f64]) -> __m256d {
        from(a.try_into().expect("chunks of four"))
    }
    #[inline]
    #[target_feature(enable = "avx")]
    pub(super) fn add(a: __m256d, b: __m256d) -> __m256d {
        _mm256_add_pd(a, b)
    }
    #[inline]
    #[target_feature(enable = "avx")]
    pub(super) fn sub(a: __m256d, b: __m256d) -> __m256d {
        _mm256_sub_pd(a, b)
    }
    #[inline]
    #[target_feature(enable = "avx")]
    pub(super) fn mul(a: __m256d, b: __m256d) -> __m256d {
        _mm256_mul_pd(a, b)
    }
    #[inline]
    #[target_feature(enable = "avx")]
    pub(super) fn and(a: __m256d, b: __m256d) -> __m256d {
        _mm256_and_pd(a, b)
    }
    #[inline]
    #[target_feature(enable = "avx")]
    pub(super) fn le(a: __m256d, b: __m256d) -> __m256d {
        _mm256_cmp_pd::<_CMP_LE_OQ>(a, b)
    }
    #[inline]
    #[target_feature(enable = "avx")]
    pub(super) fn lt(a: __m256d, b: __m256d) -> __m256d {
        _mm256_cmp_pd::<_CMP_LT_OQ>(a, b)
    }
    #[inline]
    #[target_feature(enable = "avx")]
    pub(super) fn gt(a: __m256d, b: __m256d) -> __m256d {
        _mm256_cmp_pd::<_CMP_GT_OQ>(a, b)
    }
    #[inline]
    #[target_feature(enable = "avx")]
    pub(super) fn eq(a: __m256d, b: __m256d) -> __m256d {
        _mm256_cmp_pd::<_CMP_EQ_OQ>(a, b)
    }
    /// `a` where the mask is on, `b` elsewhere.
    #[inline]
    #[target_feature(enable = "avx")]
    pub(super) fn select(mask: __m256d, a: __m256d, b: __m256d) -> __m256d {
        _mm256_blendv_pd(b, a, mask)
    }
}
