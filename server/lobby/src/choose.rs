//! Which instance of a zone a player is offered: pure, from the directory's records.
//!
//! An instance is offered when it is `ready`, allocatable (the server itself says it is not while
//! overloaded), has room by its last announcement, and its tick p99 is within the budget. The
//! p99 is the server's over its last ten seconds, so one slow tick does not count (but in its
//! first second, when one second is all there is). An instance
//! over budget stays listed in `GET /v1/zones` but is not offered. Candidates are ordered least
//! full first, then by instance id, so load spreads and the order is stable. The seat itself is
//! reserved atomically in Redis afterwards; a full answer there moves on to the next candidate.
//!
//! No IO, no clock.

use zone_directory::{InstanceState, ZoneRecord};

/// Why an instance is not offered (shown in `GET /v1/zones`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotOffered {
    Starting,
    Draining,
    Full,
    OverBudget,
    /// The server says it is overloaded (its tick p99 over budget for a while).
    Overloaded,
}

impl NotOffered {
    pub fn as_str(self) -> &'static str {
        match self {
            NotOffered::Starting => "starting",
            NotOffered::Draining => "draining",
            NotOffered::Full => "full",
            NotOffered::OverBudget => "tick_over_budget",
            NotOffered::Overloaded => "overloaded",
        }
    }
}

/// Whether one instance is offered, and why not.
pub fn offer(r: &ZoneRecord, tick_budget_us: u32) -> Result<(), NotOffered> {
    match r.state {
        InstanceState::Starting => Err(NotOffered::Starting),
        InstanceState::Draining => Err(NotOffered::Draining),
        InstanceState::Ready if !r.allocatable => Err(NotOffered::Overloaded),
        InstanceState::Ready if r.players >= r.capacity => Err(NotOffered::Full),
        InstanceState::Ready if r.tick_p99_us > tick_budget_us => Err(NotOffered::OverBudget),
        InstanceState::Ready => Ok(()),
    }
}

/// The instances of `zone_id` to try, best first.
pub fn candidates<'a>(records: &'a [ZoneRecord], zone_id: &str, tick_budget_us: u32) -> Vec<&'a ZoneRecord> {
    let mut c: Vec<&ZoneRecord> = records
        .iter()
        .filter(|r| r.zone_id == zone_id && offer(r, tick_budget_us).is_ok())
        .collect();
    c.sort_by(|a, b| {
        // players / capacity, compared without division.
        let fa = u64::from(a.players) * u64::from(b.capacity.max(1));
        let fb = u64::from(b.players) * u64::from(a.capacity.max(1));
        fa.cmp(&fb).then_with(|| a.instance_id.cmp(&b.instance_id))
    });
    c
}

/// The instances a match of `players` may be placed on, best first: offered, of `zone_id` when
/// given (any zone otherwise), with room for all of them by their last announcement.
pub fn candidates_for<'a>(records: &'a [ZoneRecord], zone_id: Option<&str>, tick_budget_us: u32, players: u32) -> Vec<&'a ZoneRecord> {
    let mut c: Vec<&ZoneRecord> = records
        .iter()
        .filter(|r| {
            zone_id.is_none_or(|z| r.zone_id == z) && offer(r, tick_budget_us).is_ok() && r.capacity.saturating_sub(r.players) >= players
        })
        .collect();
    c.sort_by(|a, b| {
        let fa = u64::from(a.players) * u64::from(b.capacity.max(1));
        let fb = u64::from(b.players) * u64::from(a.capacity.max(1));
        fa.cmp(&fb)
            .then_with(|| a.zone_id.cmp(&b.zone_id))
            .then_with(|| a.instance_id.cmp(&b.instance_id))
    });
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, players: u32, cap: u32, p99: u32, state: InstanceState) -> ZoneRecord {
        ZoneRecord {
            zone_id: "demo".into(),
            instance_id: id.into(),
            addr: "127.0.0.1:1".into(),
            capacity: cap,
            players,
            tick_p99_us: p99,
            state,
            allocatable: true,
            updated_ms: 0,
        }
    }

    #[test]
    fn offers_ready_with_room_within_budget_least_full_first() {
        let rs = vec![
            rec("a", 5, 10, 1000, InstanceState::Ready),
            rec("b", 1, 10, 1000, InstanceState::Ready),
            rec("c", 0, 10, 1000, InstanceState::Starting),
            rec("d", 0, 10, 1000, InstanceState::Draining),
            rec("e", 10, 10, 1000, InstanceState::Ready),
            rec("f", 0, 10, 40_000, InstanceState::Ready),
            rec("g", 1, 10, 1000, InstanceState::Ready),
        ];
        let ids: Vec<&str> = candidates(&rs, "demo", 16_667).iter().map(|r| r.instance_id.as_str()).collect();
        assert_eq!(ids, ["b", "g", "a"]);
        assert!(candidates(&rs, "other", 16_667).is_empty());
        assert_eq!(offer(&rs[5], 16_667), Err(NotOffered::OverBudget));
        assert_eq!(offer(&rs[4], 16_667), Err(NotOffered::Full));
        let mut overloaded = rs[1].clone();
        overloaded.allocatable = false;
        assert_eq!(offer(&overloaded, 16_667), Err(NotOffered::Overloaded));
        // Fractions, not counts: 50 of 1000 is emptier than 1 of 10.
        let rs = vec![
            rec("small", 1, 10, 0, InstanceState::Ready),
            rec("big", 50, 1000, 0, InstanceState::Ready),
        ];
        assert_eq!(candidates(&rs, "demo", 1)[0].instance_id, "big");
        // A match needs room for all its players.
        assert_eq!(candidates_for(&rs, None, 1, 10).len(), 1);
        assert_eq!(candidates_for(&rs, Some("demo"), 1, 9).len(), 2);
        assert!(candidates_for(&rs, Some("other"), 1, 1).is_empty());
    }
}
