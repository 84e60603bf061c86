//! Block copies into buffers the tick will not read again: a position cut copies a million
//! positions into the write-behind's columns, which only the storage thread reads, later.
//!
//! Plain stores first read every destination cache line (to own it), then write it back: for a
//! cut of 20 MB at 1M NPCs, 20 MB of reads the tick pays for nothing. Streaming stores
//! (`movnt`) write the lines without reading them and without pushing the world's own
//! columns out of the caches. Where the CPU has no AVX2 (or this is not x86_64), the copy is a
//! plain `copy_from_slice`.
//!
//! The id fingerprint sum a spread position cut checks its slices with lives here too: the
//! same runtime AVX2 check, for a fold that reads the ids the cut copies.

/// Copies `src` into `dst` (same length) with streaming stores where the CPU has them. Call
/// [`fence`] before another thread may read `dst`.
///
/// # Panics
/// When the lengths differ (as `copy_from_slice` does).
pub(crate) fn copy<T: bytemuck::Pod>(dst: &mut [T], src: &[T]) {
    assert_eq!(dst.len(), src.len(), "stream::copy needs slices of one length");
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        let (d, s): (&mut [u8], &[u8]) = (bytemuck::cast_slice_mut(dst), bytemuck::cast_slice(src));
        // SAFETY: AVX2 is present (checked above); both slices are valid for their whole
        // length, of equal length, and cannot overlap (one is borrowed mutably).
        #[expect(unsafe_code, reason = "SIMD intrinsics (see SAFETY)")]
        unsafe {
            x86::copy_avx2(d, s);
        }
        return;
    }
    dst.copy_from_slice(src);
}

/// Orders the streaming stores of this thread before whatever it does next (they are weakly
/// ordered: without this, a thread that learns the copy is done could still read old bytes).
pub(crate) fn fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `sfence` is part of SSE, which every x86_64 CPU has; it only orders stores.
    #[expect(unsafe_code, reason = "a store fence (see SAFETY)")]
    unsafe {
        std::arch::x86_64::_mm_sfence();
    }
}

/// The wrapping sum of [`NpcIndex::fingerprint`](terrarium_engine::NpcIndex::fingerprint) over
/// `ids`, compiled for AVX2 where the CPU has it.
pub(crate) fn fingerprint_sum(ids: &[u64]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present (checked above).
        #[expect(unsafe_code, reason = "a function compiled for AVX2 (see SAFETY)")]
        unsafe {
            return x86::fingerprint_sum_avx2(ids);
        }
    }
    fingerprint_fold(ids)
}

#[inline(always)]
fn fingerprint_fold(ids: &[u64]) -> u64 {
    ids.iter().fold(0u64, |a, &id| a.wrapping_add(terrarium_engine::NpcIndex::fingerprint(id)))
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{__m256i, _mm256_loadu_si256, _mm256_stream_si256};

    /// [`super::fingerprint_sum`] compiled for AVX2 (so the compiler may use 256-bit
    /// multiplies for the fold); call it only where the CPU has AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) fn fingerprint_sum_avx2(ids: &[u64]) -> u64 {
        super::fingerprint_fold(ids)
    }

    /// Copies with 32-byte streaming stores; the unaligned head and the tail with plain ones.
    ///
    /// # Safety
    /// The CPU has AVX2; `d` and `s` have the same length.
    #[target_feature(enable = "avx2")]
    #[expect(unsafe_code, reason = "SIMD intrinsics on raw pointers")]
    pub(super) unsafe fn copy_avx2(d: &mut [u8], s: &[u8]) {
        let n = d.len();
        let head = d.as_ptr().align_offset(32).min(n);
        d[..head].copy_from_slice(&s[..head]);
        let body = (n - head) / 32 * 32;
        let (dp, sp) = (d.as_mut_ptr(), s.as_ptr());
        let mut i = head;
        while i < head + body {
            // SAFETY: `i + 32 <= n` for both slices; the store address is 32-byte aligned
            // (`head` aligned it and every step is 32 bytes); loads may be unaligned.
            unsafe {
                let v = _mm256_loadu_si256(sp.add(i).cast::<__m256i>());
                _mm256_stream_si256(dp.add(i).cast::<__m256i>(), v);
            }
            i += 32;
        }
        d[i..].copy_from_slice(&s[i..]);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn copies_every_byte_whatever_the_alignment_and_length() {
        let src: Vec<u64> = (0..10_000u64).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).collect();
        // Source and destination offsets of 0..4 words: every alignment a 32-byte store can
        // meet in a buffer of `u64`s.
        for (start, at) in (0..4).flat_map(|s| (0..4).map(move |d| (s, d))) {
            for len in [0, 1, 3, 4, 5, 31, 32, 33, 1000, 9_990] {
                let mut buf = vec![0u64; len + 4];
                let dst = &mut buf[at..at + len];
                super::copy(dst, &src[start..start + len]);
                super::fence();
                assert_eq!(dst, &src[start..start + len]);
            }
        }
        let xyz: Vec<[f32; 3]> = (0..777).map(|i| [i as f32, 1.0, -(i as f32)]).collect();
        let mut out = vec![[0.0f32; 3]; 777];
        super::copy(&mut out[..], &xyz[..]);
        assert_eq!(out, xyz);
    }
}
