//! The process allocator of `zone-server`: mimalloc ([`Allocator`]), plus the one setting the
//! server changes, [`keep_freed_memory`]. (`zone-bots` uses mimalloc as it comes.)
//!
//! Why keep freed memory: mimalloc hands pages freed for a while back to the OS (its
//! `purge_delay`, 1 s by default), and the next allocation that reuses them faults on every page
//! again. In the zone server that lands on the tick thread: a snapshot capture of the large zone
//! every second took 300–400 page faults, and 1–2.5 ms instead of 0.2–0.5 ms, whenever its lists
//! outgrew the spare ones (`benchmarks/2026-11-30-allocator.md`). With purging off, the process
//! keeps the memory it has freed (its RSS stays at its high-water mark) and reuses it without
//! faults.
//!
//! The operator's word wins: with `MIMALLOC_PURGE_DELAY` set in the environment (milliseconds,
//! or -1 for never), mimalloc reads it at start-up and this crate leaves it alone.
//!
//! Must never: allocate, or call into mimalloc for anything but its option setter. Call
//! [`keep_freed_memory`] first thing in `main`, before any thread starts (mimalloc's option
//! setter is not thread-safe).

use std::ffi::c_long;

/// The global allocator type: `#[global_allocator] static A: zone_alloc::Allocator = zone_alloc::Allocator;`.
pub use mimalloc::MiMalloc as Allocator;

/// The environment variable mimalloc reads its purge delay from.
pub const PURGE_DELAY_ENV: &str = "MIMALLOC_PURGE_DELAY";

/// mimalloc's `mi_option_purge_delay` (its place in `mi_option_e`, `mimalloc.h` of the v3 sources
/// that `libmimalloc-sys` 0.1.49 builds by default).
const MI_OPTION_PURGE_DELAY: i32 = 15;

// Linked from `libmimalloc-sys`'s static mimalloc (the allocator itself).
#[allow(unsafe_code)]
unsafe extern "C" {
    fn mi_option_set(option: i32, value: c_long);
    fn mi_option_get(option: i32) -> c_long;
}

/// What [`keep_freed_memory`] found or did, for the start-up log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FreedMemory {
    /// Purging is off: freed memory stays with the process.
    Kept,
    /// The environment set the purge delay (milliseconds; -1 is never), so it was left as is.
    OperatorSet { purge_delay_ms: i64 },
}

/// Turns mimalloc's purging off (freed memory stays with the process, see the module doc)
/// unless [`PURGE_DELAY_ENV`] is set. Call it first thing in `main`, before any thread starts.
pub fn keep_freed_memory() -> FreedMemory {
    if std::env::var_os(PURGE_DELAY_ENV).is_some() {
        return FreedMemory::OperatorSet {
            purge_delay_ms: purge_delay_ms(),
        };
    }
    // SAFETY: a plain setter of mimalloc's option table, with a valid option index and a value
    // mimalloc documents (-1: never purge). It is not thread-safe, which is why it runs first
    // thing in `main`, before any other thread exists.
    #[allow(unsafe_code)]
    unsafe {
        mi_option_set(MI_OPTION_PURGE_DELAY, -1)
    };
    FreedMemory::Kept
}

/// mimalloc's purge delay in force (milliseconds; -1 is never).
pub fn purge_delay_ms() -> i64 {
    // SAFETY: a plain getter of mimalloc's option table, with a valid option index.
    #[allow(unsafe_code)]
    let v = unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) };
    // c_long is i64 here but i32 on some targets.
    #[allow(clippy::useless_conversion)]
    i64::from(v)
}

impl std::fmt::Display for FreedMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FreedMemory::Kept => write!(
                f,
                "freed memory is kept for reuse (set {PURGE_DELAY_ENV}=<ms> to return it to the OS)"
            ),
            FreedMemory::OperatorSet { purge_delay_ms: -1 } => write!(f, "freed memory is kept for reuse ({PURGE_DELAY_ENV}=-1)"),
            FreedMemory::OperatorSet { purge_delay_ms } => {
                write!(f, "freed memory goes back to the OS after {purge_delay_ms} ms ({PURGE_DELAY_ENV})")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[global_allocator]
    static A: Allocator = Allocator;

    /// The option index is mimalloc's purge delay: it reads mimalloc's documented default for
    /// that option (1,000 ms in v3, the only option of the table with that default) until
    /// `keep_freed_memory` sets it to -1. One test, since the option table is process-wide and
    /// its setter is not thread-safe.
    #[test]
    fn keep_freed_memory_turns_off_mimallocs_purge_delay_unless_the_environment_sets_it() {
        if std::env::var_os(PURGE_DELAY_ENV).is_some() {
            let set = purge_delay_ms();
            assert_eq!(keep_freed_memory(), FreedMemory::OperatorSet { purge_delay_ms: set });
            assert_eq!(purge_delay_ms(), set);
            eprintln!("{PURGE_DELAY_ENV} is set: checked only that it is left alone");
            return;
        }
        assert_eq!(
            purge_delay_ms(),
            1_000,
            "mimalloc's default purge delay (is the option index right?)"
        );
        assert_eq!(keep_freed_memory(), FreedMemory::Kept);
        assert_eq!(purge_delay_ms(), -1);
        assert!(FreedMemory::Kept.to_string().contains(PURGE_DELAY_ENV));
    }
}
