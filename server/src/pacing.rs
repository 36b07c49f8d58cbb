//! Fixed-timestep pacing: how many ticks to run now, given how much wall time has passed.
//!
//! An accumulator collects elapsed time and releases one tick per 1/60 s. After a stall it runs a
//! bounded number of catch-up ticks and drops the rest of the backlog (counted as overruns), so a
//! slow tick can never start a spiral. Pure logic: the caller passes the elapsed time in, which is
//! what makes it testable.

use std::time::Duration;

/// The pacing decision for one wake-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Ticks to run now.
    pub ticks: u32,
    /// Ticks of backlog given up on (the zone fell behind by that much, for good).
    pub dropped: u64,
}

#[derive(Clone, Debug)]
pub struct FixedStep {
    dt: Duration,
    acc: Duration,
    catch_up_max: u32,
}

impl FixedStep {
    /// `rate_hz` ticks per second; at most `catch_up_max` ticks run back to back after a stall.
    pub fn new(rate_hz: u32, catch_up_max: u32) -> Self {
        FixedStep {
            dt: Duration::from_secs(1) / rate_hz.max(1),
            acc: Duration::ZERO,
            catch_up_max: catch_up_max.max(1),
        }
    }

    /// Adds `elapsed` wall time and says how many ticks are due.
    pub fn advance(&mut self, elapsed: Duration) -> Plan {
        self.acc += elapsed;
        let due = (self.acc.as_nanos() / self.dt.as_nanos()) as u64;
        let ticks = due.min(u64::from(self.catch_up_max));
        let dropped = due - ticks;
        // Keep the fraction of a tick; forget the dropped backlog.
        self.acc -= self.dt * due as u32;
        Plan {
            ticks: ticks as u32,
            dropped,
        }
    }

    /// Time until the next tick is due.
    pub fn until_next(&self) -> Duration {
        self.dt.saturating_sub(self.acc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_time_gives_one_tick_per_period() {
        let mut p = FixedStep::new(60, 4);
        let mut ticks = 0;
        for _ in 0..600 {
            ticks += p.advance(Duration::from_micros(16_667)).ticks;
        }
        assert!((599..=601).contains(&ticks), "{ticks}");
    }

    #[test]
    fn a_stall_is_bounded_and_counted() {
        let mut p = FixedStep::new(60, 4);
        let plan = p.advance(Duration::from_secs(1));
        assert_eq!(plan, Plan { ticks: 4, dropped: 56 });
        // No spiral: the next wake-up is back to normal.
        assert_eq!(p.advance(Duration::from_micros(16_667)).ticks, 1);
    }
}
