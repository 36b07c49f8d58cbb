//! One client's session as the network thread sees it: where it is in the join, its duplicate
//! window, its input position, the views it was sent (to delta against whichever it
//! acknowledges), its unacknowledged reliable events, its packet budget and its RTT.
//!
//! Plain data and small pure methods; no socket, no sending (the worker sends).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use zone_net::proto::Event;
use zone_net::view::View;
use zone_sim::PlayerId;

/// Views kept per client for delta baselines: half a second of sends (at least 8, at most 30),
/// far more than a LAN round trip. An acknowledgement older than that is not used (the client's
/// decoder keeps 32 views): sends are full snapshots until a newer one arrives.
pub fn history_len(snapshot_rate_hz: u32) -> usize {
    (snapshot_rate_hz as usize / 2).clamp(8, 30)
}
/// Unacknowledged events a client may have before the server gives up on it.
pub const EVENTS_UNACKED_MAX: usize = 256;
/// How long an event may stay unacknowledged before the server gives up on the client.
pub const EVENT_GIVE_UP: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Admitted by the gate; waiting for the tick thread to accept the join.
    Joining,
    Joined,
}

#[derive(Debug)]
pub struct Session {
    pub player: PlayerId,
    pub phase: Phase,
    pub last_heard: Instant,
    newest_seq: Option<u32>,
    seen_mask: u64,
    /// The newest input tick seen (later copies of it and older ones are redundant).
    pub newest_input_tick: u64,
    /// The newest input tick forwarded to the zone (what snapshots acknowledge).
    pub last_input_tick: u64,
    /// When the join was last asked of the tick thread (asked again if no answer comes).
    pub join_asked: Instant,
    /// The last event batch could not hold every unacknowledged event.
    pub events_truncated: bool,
    /// Next sequence number on the unreliable channel (snapshots, events, pings).
    pub unreliable_seq: u32,
    /// Next sequence number on the reliable channel (Welcome, Reject).
    pub reliable_seq: u32,
    /// What the client holds after each recent snapshot send, oldest first.
    sent: VecDeque<View>,
    /// The newest view the client acknowledged.
    pub baseline: Option<View>,
    /// Unacknowledged events; the first has sequence `events_first_seq`.
    pub events: VecDeque<(Event, Instant)>,
    pub events_first_seq: u64,
    /// Events sent at least once (sequence numbers below this were sent before).
    pub events_sent: u64,
    pub events_last_send: Option<Instant>,
    pub last_ping: Instant,
    pub rtt: Option<Duration>,
}

impl Session {
    pub fn new(player: PlayerId, now: Instant) -> Session {
        Session {
            player,
            phase: Phase::Joining,
            last_heard: now,
            newest_seq: None,
            seen_mask: 0,
            newest_input_tick: 0,
            last_input_tick: 0,
            join_asked: now,
            events_truncated: false,
            unreliable_seq: 0,
            reliable_seq: 0,
            sent: VecDeque::new(),
            baseline: None,
            events: VecDeque::new(),
            events_first_seq: 0,
            events_sent: 0,
            events_last_send: None,
            last_ping: now,
            rtt: None,
        }
    }

    /// Records an unreliable-channel sequence number; false if it was seen before (or is too old
    /// to tell, more than 64 behind the newest).
    pub fn first_sight(&mut self, seq: u32) -> bool {
        let Some(newest) = self.newest_seq else {
            self.newest_seq = Some(seq);
            self.seen_mask = 1;
            return true;
        };
        let ahead = seq.wrapping_sub(newest);
        if ahead != 0 && ahead < (1 << 31) {
            self.seen_mask = if ahead >= 64 { 0 } else { self.seen_mask << ahead };
            self.seen_mask |= 1;
            self.newest_seq = Some(seq);
            return true;
        }
        let behind = newest.wrapping_sub(seq);
        if behind >= 64 || self.seen_mask & (1 << behind) != 0 {
            return false;
        }
        self.seen_mask |= 1 << behind;
        true
    }

    /// The client holds the view of `tick` completely: it becomes the baseline.
    pub fn acknowledge(&mut self, tick: u64) {
        if tick == 0 || self.baseline.as_ref().is_some_and(|b| b.tick() >= tick) {
            return;
        }
        while let Some(v) = self.sent.front() {
            if v.tick() < tick {
                self.sent.pop_front();
            } else {
                break;
            }
        }
        if self.sent.front().is_some_and(|v| v.tick() == tick) {
            self.baseline = self.sent.pop_front();
        }
    }

    /// The baseline to delta against at `tick`: the acknowledged view, if it is at most
    /// `max_age_ticks` old. The age limit is the sent history's span, so at most that many views
    /// were completed after it and the client (which keeps 32) still holds it.
    pub fn baseline_for(&self, tick: u64, max_age_ticks: u64) -> Option<&View> {
        self.baseline
            .as_ref()
            .filter(|b| b.tick() < tick && b.tick() + max_age_ticks >= tick)
    }

    /// Records what the client holds after this send, keeping the last `history` sends.
    pub fn record_sent(&mut self, held: View, history: usize) {
        while self.sent.len() >= history.max(1) {
            self.sent.pop_front();
        }
        self.sent.push_back(held);
    }

    /// The client has received `received` events in order.
    pub fn events_acked(&mut self, received: u64) {
        while self.events_first_seq < received && self.events.pop_front().is_some() {
            self.events_first_seq += 1;
        }
    }

    pub fn push_event(&mut self, e: Event, now: Instant) {
        self.events.push_back((e, now));
    }

    /// True when the client stopped acknowledging events: too many or too old.
    pub fn events_stalled(&self, now: Instant) -> bool {
        self.events.len() > EVENTS_UNACKED_MAX
            || self
                .events
                .front()
                .is_some_and(|(_, at)| now.saturating_duration_since(*at) > EVENT_GIVE_UP)
    }

    pub fn next_unreliable(&mut self) -> u32 {
        let s = self.unreliable_seq;
        self.unreliable_seq = s.wrapping_add(1);
        s
    }

    pub fn next_reliable(&mut self) -> u32 {
        let s = self.reliable_seq;
        self.reliable_seq = s.wrapping_add(1);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_window() {
        let now = Instant::now();
        let mut s = Session::new(1, now);
        assert!(s.first_sight(5));
        assert!(!s.first_sight(5));
        assert!(s.first_sight(7));
        assert!(s.first_sight(6), "late but new");
        assert!(!s.first_sight(6));
        assert!(s.first_sight(200));
        assert!(!s.first_sight(100), "too old to tell");
    }
}
