//! What the storage asks of the operating system directly: giving memory the allocator keeps
//! back to the system (glibc only; elsewhere it does nothing and says so).

/// Gives the memory that glibc's allocator keeps after big frees back to the system
/// (`malloc_trim(0)`). glibc keeps the top of its heaps and the pages inside free chunks, so
/// after a new world's first write (a million records built, copied, written, freed) the
/// process kept the peak: about 150 bytes per NPC at 1M (BENCHMARKS.md, issue 14). Call it
/// after such a write, not per tick (it walks the heaps). Returns whether memory was released.
pub fn release_free_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only reorganises the allocator's own free lists (under its own
        // locks); it takes no pointer and is safe to call from any thread at any time.
        #[expect(unsafe_code, reason = "a libc call with no Rust-level invariants to uphold (see SAFETY)")]
        let released = unsafe { libc::malloc_trim(0) };
        released == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
