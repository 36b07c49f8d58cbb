//! A failure detector and circuit breaker for one backend (a snapshot store, the event sink).
//!
//! Pure logic: the caller passes `now` into every call, so it is tested without a clock and never
//! reads one. It never sleeps, never retries and never calls the backend itself; it only says
//! whether a call may go ahead ([`Breaker::admit`]) and learns from the outcome
//! ([`Breaker::record_success`], [`Breaker::record_failure`]). Every call that changes the state
//! returns the [`Transition`], so the caller can log and count each one.
//!
//! ```text
//! Closed --failure_threshold consecutive failures--> Open
//! Open   --open_for elapsed, next admit-------------> HalfOpen (one trial call admitted)
//! HalfOpen --trial succeeds--> Closed      HalfOpen --trial fails--> Open (for open_for again)
//! ```

use std::time::{Duration, Instant};

/// The breaker's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open a closed breaker (at least 1).
    pub failure_threshold: u32,
    /// How long an open breaker refuses calls before it lets one trial through.
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            open_for: Duration::from_secs(30),
        }
    }
}

/// Where the breaker is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls go ahead.
    Closed,
    /// Calls are refused until the open period ends.
    Open,
    /// One trial call is admitted; its outcome closes or re-opens the breaker.
    HalfOpen,
}

impl BreakerState {
    /// `"closed"`, `"open"` or `"half_open"`: for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// A change of state, reported by the call that caused it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: BreakerState,
    pub to: BreakerState,
    /// Consecutive failures after the change (0 once closed).
    pub consecutive_failures: u32,
}

/// What [`Breaker::admit`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admission {
    /// Whether the call may go ahead. If it does, report its outcome.
    pub allowed: bool,
    /// Set when this admission moved the breaker from open to half-open.
    pub transition: Option<Transition>,
}

/// A circuit breaker. See the module doc.
#[derive(Clone, Debug)]
pub struct Breaker {
    config: BreakerConfig,
    state: BreakerState,
    consecutive_failures: u32,
    /// While open: when the trial may happen.
    open_until: Option<Instant>,
    /// While half-open: whether the trial call has been admitted and not yet reported.
    trial_in_flight: bool,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker::new(BreakerConfig::default())
    }
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Breaker {
        let config = BreakerConfig {
            failure_threshold: config.failure_threshold.max(1),
            ..config
        };
        Breaker {
            config,
            state: BreakerState::Closed,
            consecutive_failures: 0,
            open_until: None,
            trial_in_flight: false,
        }
    }

    pub fn config(&self) -> BreakerConfig {
        self.config
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// While open: when the next trial may happen.
    pub fn open_until(&self) -> Option<Instant> {
        self.open_until
    }

    fn go(&mut self, to: BreakerState) -> Transition {
        let from = self.state;
        self.state = to;
        Transition {
            from,
            to,
            consecutive_failures: self.consecutive_failures,
        }
    }

    /// May a call go ahead at `now`? Closed: yes. Open: no, until `open_for` has passed; then the
    /// breaker turns half-open and admits this one call as the trial. Half-open: no while the
    /// trial is out.
    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.state {
            BreakerState::Closed => Admission {
                allowed: true,
                transition: None,
            },
            BreakerState::Open if self.open_until.is_some_and(|t| now < t) => Admission {
                allowed: false,
                transition: None,
            },
            BreakerState::Open => {
                self.open_until = None;
                self.trial_in_flight = true;
                Admission {
                    allowed: true,
                    transition: Some(self.go(BreakerState::HalfOpen)),
                }
            }
            BreakerState::HalfOpen if self.trial_in_flight => Admission {
                allowed: false,
                transition: None,
            },
            BreakerState::HalfOpen => {
                self.trial_in_flight = true;
                Admission {
                    allowed: true,
                    transition: None,
                }
            }
        }
    }

    /// An admitted call succeeded. Closes a half-open breaker; resets the failure count of a
    /// closed one. A late success while open (a call admitted before the breaker opened) changes
    /// nothing: the breaker still waits out `open_for`.
    pub fn record_success(&mut self, _now: Instant) -> Option<Transition> {
        match self.state {
            BreakerState::Closed => {
                self.consecutive_failures = 0;
                None
            }
            BreakerState::Open => None,
            BreakerState::HalfOpen => {
                self.consecutive_failures = 0;
                self.trial_in_flight = false;
                Some(self.go(BreakerState::Closed))
            }
        }
    }

    /// An admitted call failed at `now`. Opens a closed breaker at the threshold, and re-opens a
    /// half-open one; either way it stays open until `now + open_for`. A late failure while open
    /// is counted but does not extend the open period.
    pub fn record_failure(&mut self, now: Instant) -> Option<Transition> {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        match self.state {
            BreakerState::Closed if self.consecutive_failures >= self.config.failure_threshold => {
                self.open_until = Some(now + self.config.open_for);
                Some(self.go(BreakerState::Open))
            }
            BreakerState::Closed | BreakerState::Open => None,
            BreakerState::HalfOpen => {
                self.trial_in_flight = false;
                self.open_until = Some(now + self.config.open_for);
                Some(self.go(BreakerState::Open))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> (Breaker, Instant) {
        (
            Breaker::new(BreakerConfig {
                failure_threshold: 3,
                open_for: Duration::from_secs(30),
            }),
            Instant::now(),
        )
    }

    fn t(from: BreakerState, to: BreakerState, consecutive_failures: u32) -> Option<Transition> {
        Some(Transition {
            from,
            to,
            consecutive_failures,
        })
    }

    #[test]
    fn defaults_are_five_failures_and_thirty_seconds() {
        assert_eq!(
            BreakerConfig::default(),
            BreakerConfig {
                failure_threshold: 5,
                open_for: Duration::from_secs(30)
            }
        );
        assert_eq!(Breaker::default().state(), BreakerState::Closed);
        assert_eq!(
            Breaker::new(BreakerConfig {
                failure_threshold: 0,
                ..Default::default()
            })
            .config()
            .failure_threshold,
            1
        );
    }

    #[test]
    fn closed_admits_and_success_resets_the_count() {
        let (mut b, now) = breaker();
        assert_eq!(
            b.admit(now),
            Admission {
                allowed: true,
                transition: None
            }
        );
        assert_eq!(b.record_failure(now), None);
        assert_eq!(b.record_failure(now), None);
        assert_eq!(b.consecutive_failures(), 2);
        assert_eq!(b.record_success(now), None);
        assert_eq!(b.consecutive_failures(), 0);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn closed_opens_at_the_threshold_and_refuses_until_open_for_has_passed() {
        let (mut b, now) = breaker();
        b.record_failure(now);
        b.record_failure(now);
        assert_eq!(b.record_failure(now), t(BreakerState::Closed, BreakerState::Open, 3));
        assert_eq!(b.open_until(), Some(now + Duration::from_secs(30)));
        assert_eq!(
            b.admit(now + Duration::from_secs(29)),
            Admission {
                allowed: false,
                transition: None
            }
        );
        // Late outcomes of calls admitted before opening change nothing.
        assert_eq!(b.record_success(now), None);
        assert_eq!(b.record_failure(now + Duration::from_secs(10)), None);
        assert_eq!(b.open_until(), Some(now + Duration::from_secs(30)));
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn open_turns_half_open_and_admits_exactly_one_trial() {
        let (mut b, now) = breaker();
        for _ in 0..3 {
            b.record_failure(now);
        }
        let later = now + Duration::from_secs(30);
        assert_eq!(
            b.admit(later),
            Admission {
                allowed: true,
                transition: t(BreakerState::Open, BreakerState::HalfOpen, 3)
            }
        );
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(
            b.admit(later),
            Admission {
                allowed: false,
                transition: None
            }
        );
    }

    #[test]
    fn half_open_success_closes() {
        let (mut b, now) = breaker();
        for _ in 0..3 {
            b.record_failure(now);
        }
        let later = now + Duration::from_secs(31);
        assert!(b.admit(later).allowed);
        assert_eq!(b.record_success(later), t(BreakerState::HalfOpen, BreakerState::Closed, 0));
        assert_eq!(b.consecutive_failures(), 0);
        assert_eq!(
            b.admit(later),
            Admission {
                allowed: true,
                transition: None
            }
        );
    }

    #[test]
    fn half_open_failure_reopens_for_open_for_again() {
        let (mut b, now) = breaker();
        for _ in 0..3 {
            b.record_failure(now);
        }
        let later = now + Duration::from_secs(31);
        assert!(b.admit(later).allowed);
        assert_eq!(b.record_failure(later), t(BreakerState::HalfOpen, BreakerState::Open, 4));
        assert_eq!(b.open_until(), Some(later + Duration::from_secs(30)));
        assert!(!b.admit(later + Duration::from_secs(29)).allowed);
        let trial = b.admit(later + Duration::from_secs(30));
        assert_eq!(
            trial,
            Admission {
                allowed: true,
                transition: t(BreakerState::Open, BreakerState::HalfOpen, 4)
            }
        );
    }

    #[test]
    fn state_names() {
        assert_eq!(
            [BreakerState::Closed, BreakerState::Open, BreakerState::HalfOpen].map(BreakerState::as_str),
            ["closed", "open", "half_open"]
        );
    }
}
