//! Overload: the tick's p99 over its budget for a sustained while makes the server unallocatable
//! (it keeps running and keeps its players; no new ones are sent to it), and the same while back
//! within budget makes it allocatable again. Liveness is not involved: `/healthz` and Agones
//! health stay tied to the tick advancing at all.
//!
//! Pure: the caller feeds one measurement per window with the window's length; no clock, no IO.

use std::time::Duration;

/// When a server counts as overloaded.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OverloadConfig {
    /// Tick duration p99 above which a window counts as over budget, microseconds.
    pub budget_us: u32,
    /// Over budget this long without a break: unallocatable.
    pub after: Duration,
    /// Within budget this long without a break (once unallocatable): allocatable again.
    pub recover_after: Duration,
}

impl Default for OverloadConfig {
    /// The 60 Hz tick period as budget; 10 s either way.
    fn default() -> Self {
        OverloadConfig {
            budget_us: 16_667,
            after: Duration::from_secs(10),
            recover_after: Duration::from_secs(10),
        }
    }
}

/// The allocatable state and the streak that may change it.
#[derive(Clone, Debug)]
pub struct OverloadGuard {
    cfg: OverloadConfig,
    allocatable: bool,
    /// How long the measurements have disagreed with the current state, without a break.
    streak: Duration,
}

impl OverloadGuard {
    pub fn new(cfg: OverloadConfig) -> OverloadGuard {
        OverloadGuard {
            cfg,
            allocatable: true,
            streak: Duration::ZERO,
        }
    }

    pub fn allocatable(&self) -> bool {
        self.allocatable
    }

    /// One window's tick p99 (`p99_us`) over `window`. Returns the new state when it changed.
    pub fn observe(&mut self, p99_us: u32, window: Duration) -> Option<bool> {
        let over = p99_us > self.cfg.budget_us;
        // Allocatable and over budget, or unallocatable and within it: the streak grows.
        if over == self.allocatable {
            self.streak += window;
        } else {
            self.streak = Duration::ZERO;
        }
        let needed = if self.allocatable { self.cfg.after } else { self.cfg.recover_after };
        if !self.streak.is_zero() && self.streak >= needed {
            self.allocatable = !self.allocatable;
            self.streak = Duration::ZERO;
            return Some(self.allocatable);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sustained_overload_flips_and_sustained_recovery_flips_back() {
        let s = Duration::from_secs(1);
        let mut g = OverloadGuard::new(OverloadConfig {
            budget_us: 10_000,
            after: Duration::from_secs(3),
            recover_after: Duration::from_secs(2),
        });
        // Spikes shorter than `after` change nothing.
        assert_eq!(g.observe(20_000, s), None);
        assert_eq!(g.observe(20_000, s), None);
        assert_eq!(g.observe(5_000, s), None);
        assert_eq!(g.observe(20_000, s), None);
        assert_eq!(g.observe(20_000, s), None);
        assert!(g.allocatable());
        assert_eq!(g.observe(20_000, s), Some(false));
        assert!(!g.allocatable());
        // Staying over budget keeps it unallocatable; one good second is not a recovery.
        assert_eq!(g.observe(20_000, s), None);
        assert_eq!(g.observe(9_000, s), None);
        assert_eq!(g.observe(20_000, s), None);
        assert_eq!(g.observe(9_000, s), None);
        assert_eq!(g.observe(9_000, s), Some(true));
        assert!(g.allocatable());
        // Exactly at the budget is within it.
        for _ in 0..10 {
            assert_eq!(g.observe(10_000, s), None);
        }
    }
}
