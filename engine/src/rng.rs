//! Seeded randomness: one main stream for the world and cheap independent streams per entity.
//!
//! Parallel code never shares a generator. It derives a stream from `(seed, entity id, salt)`, so
//! the numbers an NPC draws do not depend on which thread runs it or in which order.

use bevy_ecs::prelude::*;
use rand_core::{Rng, SeedableRng};
use rand_pcg::Pcg64;
use serde::{Deserialize, Serialize};

/// The world's random number generator. Saved in snapshots, so a loaded world draws the same
/// numbers as the one that was saved.
#[derive(Resource, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimRng {
    seed: u64,
    main: Pcg64,
}

impl SimRng {
    /// A generator for `seed`.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self { seed, main: Pcg64::seed_from_u64(seed) }
    }

    /// The seed the world was created with.
    #[must_use]
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Next number of the main stream. Only call this from single-threaded code.
    pub fn next_u64(&mut self) -> u64 {
        self.main.next_u64()
    }

    /// A uniform `f32` in `[0, 1)` from the main stream.
    pub fn next_f32(&mut self) -> f32 {
        unit_f32(self.next_u64())
    }

    /// An independent stream for one entity (or any other key) and purpose (`salt`).
    ///
    /// The same `(seed, key, salt)` always gives the same stream, whatever the thread.
    #[must_use]
    pub fn stream(&self, key: u64, salt: u64) -> StreamRng {
        StreamRng::new(hash3(self.seed, key, salt))
    }
}

/// A small, fast generator (SplitMix64) for per-entity streams. Not for cryptography.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamRng {
    state: u64,
}

impl StreamRng {
    /// A stream starting from `state`.
    #[must_use]
    pub const fn new(state: u64) -> Self {
        Self { state }
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.state)
    }

    /// A uniform `f32` in `[0, 1)`.
    pub fn next_f32(&mut self) -> f32 {
        unit_f32(self.next_u64())
    }

    /// A uniform `f32` in `[lo, hi)`.
    pub fn range_f32(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.next_f32()
    }

    /// A uniform integer in `0..n` (`n` > 0), without modulo bias worth caring about for n ≪ 2^32.
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// The SplitMix64 finaliser: a fast bijective mix of 64 bits.
#[must_use]
pub const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Mixes three words into one; used to derive stream seeds.
#[must_use]
pub const fn hash3(a: u64, b: u64, c: u64) -> u64 {
    mix64(mix64(mix64(a) ^ b.wrapping_mul(0xD6E8_FEB8_6659_FD93)) ^ c.wrapping_mul(0xA076_1D64_78BD_642F))
}

/// Maps 64 random bits to a uniform `f32` in `[0, 1)` (24 bits of precision).
#[must_use]
pub fn unit_f32(bits: u64) -> f32 {
    // 24 high bits fit an f32 mantissa exactly, so the conversion is exact and portable.
    #[expect(clippy::cast_precision_loss, reason = "a 24-bit integer is exact in f32")]
    let v = (bits >> 40) as f32;
    v * (1.0 / 16_777_216.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_numbers() {
        let (mut a, mut b) = (SimRng::new(7), SimRng::new(7));
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        assert_ne!(SimRng::new(7).next_u64(), SimRng::new(8).next_u64());
    }

    #[test]
    fn streams_are_independent_of_the_main_stream() {
        let mut rng = SimRng::new(1);
        let before = rng.stream(42, 0).next_u64();
        rng.next_u64();
        assert_eq!(rng.stream(42, 0).next_u64(), before, "streams depend on seed and key only");
        assert_ne!(rng.stream(42, 0).next_u64(), rng.stream(43, 0).next_u64());
        assert_ne!(rng.stream(42, 0).next_u64(), rng.stream(42, 1).next_u64());
    }

    #[test]
    fn unit_range() {
        let mut s = StreamRng::new(3);
        for _ in 0..10_000 {
            let v = s.next_f32();
            assert!((0.0..1.0).contains(&v));
            assert!(s.below(10) < 10);
        }
        assert!(unit_f32(u64::MAX) < 1.0);
    }
}
