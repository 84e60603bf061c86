//! What the storage asks of the operating system directly: giving memory the allocator keeps
//! back to the system (glibc only), and marking its threads as background work (Linux only);
//! elsewhere these do nothing and say so.

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

/// Glibc's `M_MMAP_THRESHOLD` as [`map_big_blocks`] sets it: 128 KiB, glibc's own starting value.
pub const BIG_BLOCK_BYTES: usize = 128 * 1024;

/// Makes glibc's allocator serve every allocation of [`BIG_BLOCK_BYTES`] or more with its own
/// mapping, unmapped when it is freed (`mallopt(M_MMAP_THRESHOLD, 128 KiB)`), for a process
/// that holds a big world: call it first thing in `main`, before any thread starts.
///
/// Glibc starts at that threshold but raises it to the size of each mapped block freed (up to
/// 32 MiB), so after the first few buffers of a big world were freed, later ones of up to
/// 32 MiB (a million positions as columns or rows, a million records) come from the heap, and
/// the heap keeps the pages of freed ones until a trim, often for good (fragmentation). With the
/// threshold fixed, those buffers give their memory back when they are freed: at 1M NPCs
/// 30–40 bytes per NPC less at the end of a run (BENCHMARKS.md, issue 14, "Sixth pass"). The
/// cost is a page fault per 4 KiB when such a buffer is allocated again; the buffers that
/// recur on the hot path (the write-behind's position columns and rows) are kept and reused,
/// so it is paid rarely.
///
/// Leaves the allocator alone when `MALLOC_MMAP_THRESHOLD_` is set (glibc's own setting wins).
/// Returns whether the threshold was set; always false outside glibc.
pub fn map_big_blocks() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some() {
            return false;
        }
        let bytes = libc::c_int::try_from(BIG_BLOCK_BYTES).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only changes the allocator's parameters (under its own lock); it
        // takes no pointer and is safe to call at any time.
        #[expect(unsafe_code, reason = "a libc call with no Rust-level invariants to uphold (see SAFETY)")]
        let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, bytes) };
        ok == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Marks the calling thread as background work for the scheduler (Linux `SCHED_BATCH`): it
/// keeps its fair share of the CPU (same weight, same nice value), but waking it never
/// preempts the thread that woke it. Call it first thing on every thread of a runtime that
/// runs storage work (`on_thread_start`). The runtimes `WriteBehind::start` and the facade's
/// `StoragePipeline::start` build do, and so do SQLite's threads and the checkpoint writer; a
/// host that runs the pipeline on its own runtime (`StoragePipeline::start_on`, as the game
/// server does on its HTTP runtime) decides for that runtime's threads.
///
/// Why: on 2 cores at 1M NPCs, handing a batch to the write-behind woke a storage thread that
/// took the tick's CPU on the spot, converting and writing the previous million positions, and
/// the tick's `Flush` stage, a lock and a notify, waited 1.5–6 ms for it (p99 6.2 ms; BENCHMARKS.md,
/// issue 14, "Ninth pass"). Marked, the storage thread runs when the tick sleeps or at the
/// end of the tick thread's time slice; it is never starved (unlike `SCHED_IDLE`, which a busy
/// game server could starve until the write-behind spilled).
///
/// Returns whether the thread is now marked; always false outside Linux.
pub fn mark_background_thread() -> bool {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` is a valid `sched_param` that outlives the call; pid 0 is the calling
        // thread; the call reads nothing else and changes only this thread's policy.
        #[expect(unsafe_code, reason = "a libc call with no Rust-level invariants to uphold (see SAFETY)")]
        let done = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &raw const param) };
        done == 0
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// Whether the calling thread is marked by [`mark_background_thread`]; always false outside
/// Linux.
#[must_use]
pub fn is_background_thread() -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: no pointer; pid 0 is the calling thread.
        #[expect(unsafe_code, reason = "a libc call with no Rust-level invariants to uphold (see SAFETY)")]
        let policy = unsafe { libc::sched_getscheduler(0) };
        policy == libc::SCHED_BATCH
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_marked_thread_is_background_work_and_others_are_not() {
        let marked = std::thread::spawn(|| (super::mark_background_thread(), super::is_background_thread()))
            .join()
            .unwrap();
        if cfg!(target_os = "linux") {
            assert_eq!(marked, (true, true));
            assert!(!super::is_background_thread(), "only the thread that asked is marked");
        } else {
            assert_eq!(marked, (false, false));
        }
    }
}
