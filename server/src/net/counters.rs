//! The transport's counters: plain atomics bumped by the gate and the network thread, published
//! to the metrics recorder once a second by the network thread and readable by tests and
//! `/status`. Never touches the tick thread.
//!
//! Exact: datagrams and bytes both ways (counted at the socket, laminar's 5-byte header
//! included), every rejection by reason, duplicates (by our envelope sequence numbers), event
//! resends and give-ups (our own reliable layer), RTT (our Ping/Pong, measured on the network
//! thread, so it includes up to one poll interval of ours, about 1 ms).

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a datagram, join or input was refused (the label is the `reason` of
/// `zone_net_rejected_total`). Defined in `zone-net` beside the gate's screening and the endpoint
/// that count by it.
pub use zone_net::gate::Rejection;

#[derive(Debug, Default)]
pub struct NetCounters {
    pub datagrams_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub datagrams_out: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Indexed by `Rejection as usize`.
    pub rejected: [AtomicU64; Rejection::ALL.len()],
    pub duplicates: AtomicU64,
    pub event_resends: AtomicU64,
    pub event_give_ups: AtomicU64,
    /// Other players' events not queued for a client (per-frame and queue caps).
    pub events_dropped: AtomicU64,
    /// Hellos with a valid token answered with a cookie challenge.
    pub challenges: AtomicU64,
    pub joins: AtomicU64,
    pub leaves: AtomicU64,
    pub replaced: AtomicU64,
    pub snapshot_bytes: AtomicU64,
    /// Snapshots sent with no baseline (full) rather than as a delta.
    pub snapshots_full: AtomicU64,
    pub snapshots_delta: AtomicU64,
    pub frames_dropped: AtomicU64,
    /// Datagrams the kernel refused to send (a full socket buffer, an unreachable address).
    pub send_failures: AtomicU64,
    pub clients: AtomicU64,
}

impl NetCounters {
    pub fn received(&self, bytes: usize) {
        self.datagrams_in.fetch_add(1, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn sent(&self, bytes: usize) {
        self.datagrams_out.fetch_add(1, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// `datagrams` sent, `bytes` in all (one batch).
    pub fn sent_many(&self, datagrams: usize, bytes: usize) {
        self.datagrams_out.fetch_add(datagrams as u64, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn reject(&self, r: Rejection) {
        self.rejected[r as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn rejected(&self, r: Rejection) -> u64 {
        self.rejected[r as usize].load(Ordering::Relaxed)
    }

    /// Adds what the endpoint counted since the last call.
    pub fn add(&self, c: &zone_net::endpoint::Counts) {
        let add = |a: &AtomicU64, n: u64| {
            if n != 0 {
                a.fetch_add(n, Ordering::Relaxed);
            }
        };
        for (slot, n) in self.rejected.iter().zip(c.rejected) {
            add(slot, n);
        }
        add(&self.duplicates, c.duplicates);
        add(&self.event_resends, c.event_resends);
        add(&self.event_give_ups, c.event_give_ups);
        add(&self.events_dropped, c.events_dropped);
        add(&self.joins, c.joins);
        add(&self.leaves, c.leaves);
        add(&self.replaced, c.replaced);
        add(&self.snapshot_bytes, c.snapshot_bytes);
        add(&self.snapshots_full, c.snapshots_full);
        add(&self.snapshots_delta, c.snapshots_delta);
    }

    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().map(|a| a.load(Ordering::Relaxed)).sum()
    }

    /// Publishes the totals to the metrics recorder (a no-op without one).
    pub fn publish(&self) {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        metrics::counter!("zone_net_datagrams_total", "direction" => "in").absolute(g(&self.datagrams_in));
        metrics::counter!("zone_net_datagrams_total", "direction" => "out").absolute(g(&self.datagrams_out));
        metrics::counter!("zone_net_bytes_total", "direction" => "in").absolute(g(&self.bytes_in));
        metrics::counter!("zone_net_bytes_total", "direction" => "out").absolute(g(&self.bytes_out));
        for (i, r) in Rejection::ALL.iter().enumerate() {
            metrics::counter!("zone_net_rejected_total", "reason" => r.label()).absolute(g(&self.rejected[i]));
        }
        metrics::counter!("zone_dropped_duplicates_total").absolute(g(&self.duplicates));
        metrics::counter!("zone_reliable_retries_total").absolute(g(&self.event_resends));
        metrics::counter!("zone_reliable_timeouts_total").absolute(g(&self.event_give_ups));
        metrics::counter!("zone_net_events_dropped_total").absolute(g(&self.events_dropped));
        metrics::counter!("zone_net_challenges_total").absolute(g(&self.challenges));
        metrics::counter!("zone_net_sessions_total", "event" => "joined").absolute(g(&self.joins));
        metrics::counter!("zone_net_sessions_total", "event" => "left").absolute(g(&self.leaves));
        metrics::counter!("zone_net_sessions_total", "event" => "replaced").absolute(g(&self.replaced));
        metrics::counter!("zone_net_snapshot_bytes_total").absolute(g(&self.snapshot_bytes));
        metrics::counter!("zone_net_snapshots_total", "kind" => "full").absolute(g(&self.snapshots_full));
        metrics::counter!("zone_net_snapshots_total", "kind" => "delta").absolute(g(&self.snapshots_delta));
        metrics::counter!("zone_net_frames_dropped_total").absolute(g(&self.frames_dropped));
        metrics::counter!("zone_net_send_failures_total").absolute(g(&self.send_failures));
        metrics::gauge!("zone_net_clients").set(g(&self.clients) as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_indexes_its_own_slot() {
        for (i, r) in Rejection::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{}", r.label());
        }
    }
}
