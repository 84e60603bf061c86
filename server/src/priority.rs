//! Scheduling priority of the tick thread against the HTTP workers (and everything else).
//!
//! On a machine with few cores, a burst of requests keeps every HTTP worker runnable, and the
//! kernel then shares the cores evenly between them and the tick thread: a 3 ms tick can take
//! 60 ms of wall time. The tick thread therefore asks for a niceness above normal
//! ([`TICK_NICENESS`]) when it starts. Raising a priority needs a privilege; a host that runs
//! without it can put its HTTP workers below normal instead ([`yield_to_the_tick`]), at the
//! price of losing the cores to every other process on the machine too.

use std::sync::atomic::{AtomicBool, Ordering};

use thread_priority::{ThreadPriority, ThreadPriorityValue};

/// Niceness that [`yield_to_the_tick`] gives a thread: at 5, the kernel's CFS weights give a
/// normal thread (the tick) about three times the share of each such worker.
pub const HTTP_WORKER_NICENESS: i32 = 5;

/// Lowers the calling thread's scheduling priority to niceness [`HTTP_WORKER_NICENESS`]
/// (lowering needs no privilege). Meant for the worker threads of the runtime that serves
/// HTTP, so that the tick thread wins the cores when both want them:
///
/// ```
/// let runtime = tokio::runtime::Builder::new_multi_thread()
///     .enable_all()
///     .on_thread_start(terrarium_server::yield_to_the_tick)
///     .build()?;
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// Only worth it where the tick thread cannot raise its own priority (see [`TICK_NICENESS`];
/// it logs so at start): the workers then also yield to every other process on the machine.
/// Where the operating system refuses, it logs one warning per process and leaves the
/// priority as it was: serving goes on either way.
pub fn yield_to_the_tick() {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !set_niceness(HTTP_WORKER_NICENESS) && !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            niceness = HTTP_WORKER_NICENESS,
            "cannot lower the HTTP workers' priority; the tick thread competes with them as an equal"
        );
    }
}

/// Niceness the tick thread asks for: above normal, so that neither the HTTP workers nor other
/// processes on the machine delay a tick. Raising a priority needs the privilege to
/// (`CAP_SYS_NICE`, or an `RLIMIT_NICE` that allows it); without it the tick stays normal.
pub const TICK_NICENESS: i32 = -5;

/// Called by the tick thread when it starts: niceness [`TICK_NICENESS`] where permitted.
/// Returns whether it got it. (The engine's rayon workers, which share parallel stages, keep
/// the normal priority.)
pub(crate) fn favour_the_tick() -> bool {
    let raised = set_niceness(TICK_NICENESS);
    if raised {
        tracing::debug!(niceness = TICK_NICENESS, "tick thread runs above normal priority");
    } else {
        tracing::info!(
            niceness = TICK_NICENESS,
            "tick thread stays at normal priority (raising it needs CAP_SYS_NICE); \
             build the HTTP runtime with on_thread_start(terrarium_server::yield_to_the_tick) instead"
        );
    }
    raised
}

/// Sets the calling thread's niceness; false when the value has no mapping or the OS refuses.
fn set_niceness(niceness: i32) -> bool {
    crossplatform_value(niceness)
        .and_then(|value| {
            thread_priority::set_current_thread_priority(ThreadPriority::Crossplatform(value)).ok()
        })
        .is_some()
}

/// The `thread_priority` value (0 ..= 99, higher runs first) that it maps to `niceness` under
/// Linux's normal scheduling policy, found by search rather than by copying its formula.
fn crossplatform_value(niceness: i32) -> Option<ThreadPriorityValue> {
    (0..=99u8).find_map(|p| {
        let value = ThreadPriorityValue::try_from(p).ok()?;
        let policy = thread_priority::unix::ThreadSchedulePolicy::Normal(
            thread_priority::unix::NormalThreadSchedulePolicy::Other,
        );
        let posix = ThreadPriority::Crossplatform(value).to_posix(policy).ok()?;
        (posix == niceness).then_some(value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calling thread's niceness, from `/proc` (field 19 of its `stat`).
    fn niceness_now() -> i32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("Linux /proc");
        // The command name (field 2) may hold spaces: count fields after its closing ')'.
        let rest = &stat[stat.rfind(')').expect("stat has a command name") + 2..];
        rest.split(' ').nth(16).expect("field 19").parse().expect("a number")
    }

    /// Whether this process may raise a thread to `niceness`, read from the kernel rather
    /// than by trying: `CAP_SYS_NICE` (bit 23 of `CapEff`), or an `RLIMIT_NICE` soft limit of at
    /// least `20 - niceness`.
    fn may_raise_to(niceness: i32) -> bool {
        let status = std::fs::read_to_string("/proc/self/status").expect("Linux /proc");
        let cap_eff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .expect("CapEff in /proc/self/status");
        let limits = std::fs::read_to_string("/proc/self/limits").expect("Linux /proc");
        let rlimit_nice = limits
            .lines()
            .find(|l| l.starts_with("Max nice priority"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|soft| soft.parse::<i64>().ok())
            .unwrap_or(0);
        cap_eff & (1 << 23) != 0 || rlimit_nice >= i64::from(20 - niceness)
    }

    /// Where the kernel permits it (CI runs as root), the tick thread must end up at
    /// TICK_NICENESS: a favour_the_tick that does nothing fails here. Elsewhere it must say it
    /// could not and leave the thread alone.
    #[test]
    #[cfg(target_os = "linux")]
    fn the_tick_thread_is_raised_where_permitted_and_left_alone_elsewhere() {
        let permitted = may_raise_to(TICK_NICENESS);
        let (before, raised, after) = std::thread::spawn(|| {
            let before = niceness_now();
            (before, favour_the_tick(), niceness_now())
        })
        .join()
        .unwrap();
        assert_eq!(raised, permitted, "favour_the_tick says {raised}, the kernel permits: {permitted}");
        assert_eq!(after, if permitted { TICK_NICENESS } else { before });
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_worker_thread_ends_up_below_the_tick() {
        let mine = niceness_now();
        let (before, after) = std::thread::spawn(|| {
            let before = niceness_now();
            yield_to_the_tick();
            (before, niceness_now())
        })
        .join()
        .unwrap();
        if before <= HTTP_WORKER_NICENESS {
            assert_eq!(after, HTTP_WORKER_NICENESS, "lowering needs no privilege");
        } else {
            // Already below (the suite runs under `nice`): going to 5 would be a raise.
            assert!(after == before || after == HTTP_WORKER_NICENESS);
        }
        assert_eq!(niceness_now(), mine, "only the calling thread moved");
    }
}
