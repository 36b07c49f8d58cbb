//! The process allocator of `zone-server`: mimalloc ([`Allocator`]), plus the one setting the
//! server changes, [`keep_freed_memory`]. (`zone-bots` uses mimalloc as it comes.)
//!
//! Why keep freed memory a while: mimalloc hands pages that stayed free for its `purge_delay`
//! (1 s by default) back to the OS, and the next allocation that reuses them faults on every page
//! again (and the purge itself is system calls, made by whichever thread allocates or frees).
//! The zone server frees and allocates the same large buffers about once a second (snapshot
//! captures, their lists and their encoding), just past that delay. On the large zone, in 240 s
//! (`benchmarks/2026-11-30-allocator.md`):
//! - with mimalloc's 1 s, the process took about 470,000 page faults, and 5 of 476 captures of
//!   changes took 1.9–7.2 ms (on the tick thread, or on the pool threads when fanned out);
//! - with [`KEEP_FREED_MS`] (10 s), about 100,000, and in each of three runs at most one capture
//!   of changes over 1 ms (4.9 ms once, the first capture of changes, fanned out; 1.2 ms once);
//! - never purging, about 500, but the server's RSS at 500 and 2,000 bots was about 10–40%
//!   higher, run for run, since nothing it ever freed went back.
//!
//! So memory freed and not reused within 10 s still goes back to the OS, and the capture's
//! buffers, reused every second, stay. (Full snapshots are encoded every 10 s by default, on the
//! persistence thread, right at that delay: their buffers may still fault there.)
//!
//! The operator's word wins: with `MIMALLOC_PURGE_DELAY` (or its legacy name
//! `MIMALLOC_RESET_DELAY`, in any case, as mimalloc reads them) set in the environment
//! (milliseconds; negative: never), mimalloc reads it at start-up and this crate leaves it alone.
//!
//! Must never: call into mimalloc for anything but its option table. Call [`keep_freed_memory`]
//! first thing in `main`, before any thread starts (mimalloc's option setter is not thread-safe).

use std::ffi::c_long;

/// The global allocator type: `#[global_allocator] static A: zone_alloc::Allocator = zone_alloc::Allocator;`.
pub use mimalloc::MiMalloc as Allocator;

/// The environment variable mimalloc reads its purge delay from.
pub const PURGE_DELAY_ENV: &str = "MIMALLOC_PURGE_DELAY";
/// Its legacy name, which mimalloc reads when the first is not set.
const PURGE_DELAY_ENV_LEGACY: &str = "MIMALLOC_RESET_DELAY";

/// mimalloc's `mi_option_purge_delay` (its place in `mi_option_e`, `mimalloc.h` of the v3 sources
/// that `libmimalloc-sys` 0.1.49 builds by default).
const MI_OPTION_PURGE_DELAY: i32 = 15;

// Linked from `libmimalloc-sys`'s static mimalloc (the allocator itself).
#[allow(unsafe_code)]
unsafe extern "C" {
    fn mi_option_set(option: i32, value: c_long);
    fn mi_option_get(option: i32) -> c_long;
}

/// How long freed memory stays with the process before mimalloc hands it back to the OS, unless
/// [`PURGE_DELAY_ENV`] says otherwise: ten times the longest period at which the tick thread
/// reuses large buffers (captures, once a second).
pub const KEEP_FREED_MS: i64 = 10_000;

/// What [`keep_freed_memory`] found or did, for the start-up log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FreedMemory {
    /// Freed memory goes back to the OS after [`KEEP_FREED_MS`].
    KeptAWhile,
    /// The environment set the purge delay, so it was left as is: the variable as set, and the
    /// delay mimalloc took from it (milliseconds; negative is never).
    OperatorSet {
        variable: String,
        value: String,
        purge_delay_ms: i64,
    },
}

/// The purge-delay variable mimalloc reads, if set: its name as set, and its value. mimalloc
/// matches the names without regard to case.
fn operator_setting() -> Option<(String, String)> {
    std::env::vars_os().find_map(|(k, v)| {
        let k = k.into_string().ok()?;
        (k.eq_ignore_ascii_case(PURGE_DELAY_ENV) || k.eq_ignore_ascii_case(PURGE_DELAY_ENV_LEGACY))
            .then(|| (k, v.to_string_lossy().into_owned()))
    })
}

/// Sets mimalloc's purge delay to [`KEEP_FREED_MS`] (see the module doc) unless
/// [`PURGE_DELAY_ENV`] is set. Call it first thing in `main`, before any thread starts.
pub fn keep_freed_memory() -> FreedMemory {
    if let Some((variable, value)) = operator_setting() {
        return FreedMemory::OperatorSet {
            variable,
            value,
            purge_delay_ms: purge_delay_ms(),
        };
    }
    // SAFETY: a plain setter of mimalloc's option table, with a valid option index and a value
    // in milliseconds (which fits any `c_long`). It is not thread-safe, which is why it runs
    // first thing in `main`, before any other thread exists.
    #[allow(unsafe_code)]
    unsafe {
        mi_option_set(MI_OPTION_PURGE_DELAY, KEEP_FREED_MS as c_long)
    };
    FreedMemory::KeptAWhile
}

/// mimalloc's purge delay in force (milliseconds; negative is never).
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
            FreedMemory::KeptAWhile => write!(
                f,
                "freed memory goes back to the OS after {KEEP_FREED_MS} ms unused (set {PURGE_DELAY_ENV}=<ms> to change it, -1 never)"
            ),
            // mimalloc's reading of the value is the delay in force (it ignores one it cannot read).
            FreedMemory::OperatorSet {
                variable,
                value,
                purge_delay_ms,
            } if *purge_delay_ms < 0 => write!(f, "freed memory is never given back to the OS ({variable}={value})"),
            FreedMemory::OperatorSet {
                variable,
                value,
                purge_delay_ms,
            } => write!(
                f,
                "freed memory goes back to the OS after {purge_delay_ms} ms unused ({variable}={value})"
            ),
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
    /// `keep_freed_memory` sets it. One test, since the option table is process-wide and
    /// its setter is not thread-safe.
    #[test]
    fn keep_freed_memory_sets_mimallocs_purge_delay_unless_the_environment_does() {
        if let Some((variable, value)) = operator_setting() {
            let set = purge_delay_ms();
            let found = keep_freed_memory();
            assert_eq!(
                found,
                FreedMemory::OperatorSet {
                    variable: variable.clone(),
                    value: value.clone(),
                    purge_delay_ms: set
                }
            );
            assert_eq!(purge_delay_ms(), set);
            assert!(found.to_string().contains(&format!("{variable}={value}")));
            eprintln!("{variable} is set: checked only that it is left alone");
            return;
        }
        assert_eq!(
            purge_delay_ms(),
            1_000,
            "mimalloc's default purge delay (is the option index right?)"
        );
        assert_eq!(keep_freed_memory(), FreedMemory::KeptAWhile);
        assert_eq!(purge_delay_ms(), KEEP_FREED_MS);
        assert!(FreedMemory::KeptAWhile.to_string().contains(PURGE_DELAY_ENV));
    }
}
