//! What a swarm run measured: each bot's [`BotOutcome`], the live counters the bots feed while
//! running ([`Live`]), a log-linear [`Histogram`] for round-trip times, this process's own CPU
//! and peak memory, and the JSON [`Report`] built from all of them.
//!
//! Aggregation only: never talks to the network, and never holds a lock across anything slower
//! than a histogram update.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::behavior::Behavior;

/// Values below this are their own bucket; above, each power of two has this many buckets
/// (so a percentile is within 1/64 ≈ 1.6% of the exact value).
const SUB_BUCKETS: u64 = 64;
const SUB_BITS: u32 = SUB_BUCKETS.trailing_zeros();
const BUCKETS: usize = ((64 - SUB_BITS as usize) + 1) * SUB_BUCKETS as usize;

/// A log-linear histogram of `u64` values (microseconds here), mergeable, O(1) to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
        }
    }
}

fn bucket_of(v: u64) -> usize {
    if v < SUB_BUCKETS {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros(); // >= SUB_BITS
    let shift = exp - SUB_BITS;
    let mantissa = (v >> shift) - SUB_BUCKETS; // 0..SUB_BUCKETS
    ((shift as u64 + 1) * SUB_BUCKETS + mantissa) as usize
}

/// The smallest and largest value of bucket `i`.
fn bucket_range(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < SUB_BUCKETS {
        return (i, i);
    }
    let shift = i / SUB_BUCKETS - 1;
    let lo = (SUB_BUCKETS + i % SUB_BUCKETS) << shift;
    (lo, lo + ((1u64 << shift) - 1))
}

impl Histogram {
    pub fn record(&mut self, v: u64) {
        self.counts[bucket_of(v)] += 1;
        self.total += 1;
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
    }

    pub fn len(&self) -> u64 {
        self.total
    }

    /// The nearest-rank `p`-th percentile (`p` in 0..=100), as the middle of its bucket; `None`
    /// when empty.
    pub fn percentile(&self, p: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((p / 100.0 * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (lo, hi) = bucket_range(i);
                return Some(lo + (hi - lo) / 2);
            }
        }
        None
    }
}

/// Microseconds as milliseconds, for reports.
pub fn us_to_ms(us: Option<u64>) -> Option<f64> {
    us.map(|v| v as f64 / 1_000.0)
}

/// Counters every bot adds to while running, read once a second for the progress line.
#[derive(Debug, Default)]
pub struct Live {
    /// Bots joined and not yet ended.
    pub connected: AtomicU64,
    pub failed_joins: AtomicU64,
    pub snapshots: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub decode_errors: AtomicU64,
    /// RTT samples (µs) since the progress line last took them.
    pub rtt_window: Mutex<Histogram>,
    /// With a lobby: login and join-request latencies (µs).
    pub lobby_login_us: Mutex<Histogram>,
    pub lobby_join_us: Mutex<Histogram>,
    /// With a lobby and --join-wait: join requests asked again because the lobby had no room yet.
    pub lobby_join_retries: AtomicU64,
    /// ... and the bots that asked again at least once.
    pub lobby_join_retried_bots: AtomicU64,
    /// When the last bot joined, µs after the run started.
    pub last_join_us: AtomicU64,
    /// With --match: time from the match request until the bot was matched (µs), and counters.
    pub match_wait_us: Mutex<Histogram>,
    pub matched: AtomicU64,
    pub results_reported: AtomicU64,
    pub result_errors: AtomicU64,
    /// Moves to another server after a drain, and how long each took (drain notice to Welcome).
    pub moves: AtomicU64,
    pub move_us: Mutex<Histogram>,
}

impl Live {
    pub fn add(counter: &AtomicU64, n: u64) {
        if n != 0 {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn record_rtts(&self, samples_us: &[u64]) {
        if samples_us.is_empty() {
            return;
        }
        let mut h = self.rtt_window.lock().unwrap_or_else(|e| e.into_inner());
        for &s in samples_us {
            h.record(s);
        }
    }

    /// Records one lobby call's latency.
    pub fn record_lobby(h: &Mutex<Histogram>, us: u64) {
        h.lock().unwrap_or_else(|e| e.into_inner()).record(us);
    }

    /// Records one completed move (drain notice to the new server's Welcome).
    pub fn record_move(&self, took: std::time::Duration) {
        self.moves.fetch_add(1, Ordering::Relaxed);
        Self::record_lobby(&self.move_us, took.as_micros() as u64);
    }

    /// The RTT samples since the last call.
    pub fn take_rtts(&self) -> Histogram {
        std::mem::take(&mut *self.rtt_window.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// A copy of the cumulative counters.
    pub fn totals(&self) -> LiveTotals {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        LiveTotals {
            connected: get(&self.connected),
            failed_joins: get(&self.failed_joins),
            snapshots: get(&self.snapshots),
            bytes_in: get(&self.bytes_in),
            bytes_out: get(&self.bytes_out),
            decode_errors: get(&self.decode_errors),
            moves: get(&self.moves),
            join_retries: get(&self.lobby_join_retries),
            join_retried_bots: get(&self.lobby_join_retried_bots),
        }
    }
}

/// One reading of [`Live`]'s counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LiveTotals {
    pub connected: u64,
    pub failed_joins: u64,
    pub snapshots: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub decode_errors: u64,
    pub moves: u64,
    /// First join requests asked again (--join-wait), and by how many bots.
    pub join_retries: u64,
    pub join_retried_bots: u64,
}

/// The once-a-second progress line: rates over the interval between two readings, per bot
/// connected at the first reading or the second, whichever is more. (Divided by the bots still
/// connected at the second, the last line of a run, when they have just left, divided every
/// bot's snapshots by one.)
pub fn progress_line(elapsed_s: f64, count: u32, prev: &LiveTotals, now: &LiveTotals, interval_s: f64, rtt: &Histogram) -> String {
    let bots = prev.connected.max(now.connected).max(1) as f64;
    let per_bot_per_s = |a: u64, b: u64| b.saturating_sub(a) as f64 / bots / interval_s.max(1e-9);
    let ms = |p: f64| us_to_ms(rtt.percentile(p)).map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
    let retries = if now.join_retries > 0 {
        format!(" | join retries {} by {} bots", now.join_retries, now.join_retried_bots)
    } else {
        String::new()
    };
    format!(
        "zone-bots: {elapsed_s:>5.0}s connected {}/{count} failed {} moved {} | {:.1} snapshots/s/bot | down {:.1} up {:.1} kbit/s/bot | rtt p50 {} p99 {} ms | decode errors {}{retries}",
        now.connected,
        now.failed_joins,
        now.moves,
        per_bot_per_s(prev.snapshots, now.snapshots),
        per_bot_per_s(prev.bytes_in, now.bytes_in) * 8.0 / 1_000.0,
        per_bot_per_s(prev.bytes_out, now.bytes_out) * 8.0 / 1_000.0,
        ms(50.0),
        ms(99.0),
        now.decode_errors,
    )
}

/// How one bot's run went. Counts are over the time it was joined.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BotOutcome {
    /// Seconds from Welcome to the end (0 if it never joined).
    pub joined_s: f64,
    pub joined: bool,
    /// Why it never joined (a reject label, `join_timeout`, `socket_error`, ..).
    pub join_failure: Option<String>,
    /// Why it stopped before the end of the run after joining (`replaced`, `draining_notice`, ..).
    pub ended_early: Option<String>,
    pub snapshots: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub decode_errors: u64,
    pub missing_baselines: u64,
    pub events_received: u64,
    pub duplicate_events: u64,
    /// Moves to another server after a drain.
    pub moves: u64,
    /// Why a move did not complete in time (`rejoin_failed_<step>`), ending the bot.
    pub move_failure: Option<String>,
    /// Ticks per input datagram its last joined session sent (0 if it never joined).
    pub input_batch_ticks: u32,
}

/// This process's CPU time and peak resident memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct ProcessUsage {
    pub cpu_s: Option<f64>,
    pub peak_rss_mib: Option<f64>,
}

/// Linux clock ticks per second for `/proc/self/stat` (100 on every mainstream architecture).
const CLOCK_TICKS_PER_S: f64 = 100.0;

impl ProcessUsage {
    /// Reads `/proc/self/stat` (utime + stime) and `/proc/self/status` (VmHWM); `None`s elsewhere.
    pub fn read() -> ProcessUsage {
        ProcessUsage {
            cpu_s: std::fs::read_to_string("/proc/self/stat").ok().as_deref().and_then(cpu_s_from_stat),
            peak_rss_mib: std::fs::read_to_string("/proc/self/status")
                .ok()
                .as_deref()
                .and_then(peak_rss_kib_from_status)
                .map(|kib| kib as f64 / 1_024.0),
        }
    }
}

/// utime + stime in seconds from the text of `/proc/<pid>/stat`.
pub fn cpu_s_from_stat(stat: &str) -> Option<f64> {
    // The command name (field 2) may hold spaces and parentheses; the fields after the last `)`
    // are fixed: state is field 3, utime 14 and stime 15.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / CLOCK_TICKS_PER_S)
}

/// VmHWM in KiB from the text of `/proc/<pid>/status`.
pub fn peak_rss_kib_from_status(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The JSON report of a run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub server: String,
    pub zone_id: String,
    pub behavior: Behavior,
    /// Ticks of input per input datagram that most joined bots sent (`--input-batch-ticks`, or
    /// the server's Welcome without it); 0 if none joined.
    pub input_batch_ticks: u32,
    pub count: u32,
    pub duration_s: f64,
    pub wall_s: f64,
    pub joined: u64,
    pub failed_joins: u64,
    pub failed_reasons: BTreeMap<String, u64>,
    /// Per-bot rates: totals over joined bots divided by their summed joined time.
    pub snapshots_per_bot_per_s: f64,
    /// Downstream, whole datagrams (laminar frame + envelope; no IP/UDP headers).
    pub kbit_per_bot_per_s: f64,
    pub kbit_up_per_bot_per_s: f64,
    pub rtt_samples: u64,
    pub rtt_ms_p50: Option<f64>,
    pub rtt_ms_p99: Option<f64>,
    pub decode_errors: u64,
    pub missing_baselines: u64,
    pub events_received: u64,
    pub duplicate_events: u64,
    pub ended_early: BTreeMap<String, u64>,
    pub cpu_s: Option<f64>,
    pub peak_rss_mib: Option<f64>,
    /// Seconds from the start until the last bot joined, when every bot joined.
    pub all_joined_s: Option<f64>,
    /// With --lobby: `POST /v1/auth/device` latency.
    pub lobby_login_ms_p50: Option<f64>,
    pub lobby_login_ms_p99: Option<f64>,
    /// With --lobby: `POST /v1/zones/{zone_id}/join` latency.
    pub lobby_join_ms_p50: Option<f64>,
    pub lobby_join_ms_p99: Option<f64>,
    /// With --lobby and --join-wait: first join requests asked again because the lobby could not
    /// place the bot yet (`no_room`, `unknown_zone`, rate limited, unavailable).
    pub lobby_join_retries: u64,
    /// ... and the bots that asked again at least once.
    pub lobby_join_retried_bots: u64,
    /// With --lobby: bots moved to another server after a drain, and the time from the drain
    /// notice to the new server's Welcome.
    pub moves: u64,
    pub move_ms_p50: Option<f64>,
    pub move_ms_p99: Option<f64>,
    pub move_ms_max: Option<f64>,
    /// Moves that did not complete within --rejoin-within, by reason.
    pub move_failures: u64,
    pub move_failed_reasons: BTreeMap<String, u64>,
    /// With --match: what the matchmaking part of the run did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matching: Option<MatchReport>,
}

/// With --match: bots matched, their waiting time (request to match), results reported. Joins
/// are the report's `joined`; failures (`match_timeout`, `match_refused`, lobby errors) are in
/// `failed_reasons`.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct MatchReport {
    pub mode: String,
    pub matched: u64,
    pub match_wait_ms_p50: Option<f64>,
    pub match_wait_ms_p99: Option<f64>,
    pub match_wait_ms_max: Option<f64>,
    pub results_reported: u64,
    pub result_errors: u64,
}

/// What the report says about the run besides the bots' outcomes.
#[derive(Clone, Debug)]
pub struct RunFacts {
    pub server: String,
    pub zone_id: String,
    pub behavior: Behavior,
    pub count: u32,
    pub duration_s: f64,
    pub wall_s: f64,
    pub last_join_us: u64,
    pub lobby_login_us: Histogram,
    pub lobby_join_us: Histogram,
    pub lobby_join_retries: u64,
    pub lobby_join_retried_bots: u64,
    /// With --match: the mode, the waiting times (µs) and the counters.
    pub matching: Option<(String, Histogram, u64, u64, u64)>,
    pub move_us: Histogram,
}

/// The value seen most often (the smallest of those tied), `None` for none.
fn most_common(values: impl Iterator<Item = u32>) -> Option<u32> {
    let mut counts = BTreeMap::new();
    for v in values {
        *counts.entry(v).or_insert(0u64) += 1;
    }
    let most = counts.values().copied().max()?;
    counts.into_iter().find(|&(_, n)| n == most).map(|(v, _)| v)
}

/// Aggregates the bots' outcomes and the run's RTT histogram into the report.
pub fn build_report(facts: RunFacts, outcomes: &[BotOutcome], rtt: &Histogram, usage: ProcessUsage) -> Report {
    let mut failed_reasons = BTreeMap::new();
    let mut ended_early = BTreeMap::new();
    let mut move_failed_reasons = BTreeMap::new();
    for o in outcomes {
        if let Some(r) = &o.move_failure {
            *move_failed_reasons.entry(r.clone()).or_insert(0) += 1;
        }
        if let Some(r) = &o.join_failure {
            *failed_reasons.entry(r.clone()).or_insert(0) += 1;
        }
        if let Some(r) = &o.ended_early {
            *ended_early.entry(r.clone()).or_insert(0) += 1;
        }
    }
    let joined: Vec<&BotOutcome> = outcomes.iter().filter(|o| o.joined).collect();
    let joined_s: f64 = joined.iter().map(|o| o.joined_s).sum();
    let rate = |f: fn(&BotOutcome) -> u64| {
        if joined_s > 0.0 {
            joined.iter().map(|o| f(o)).sum::<u64>() as f64 / joined_s
        } else {
            0.0
        }
    };
    let sum = |f: fn(&BotOutcome) -> u64| outcomes.iter().map(f).sum::<u64>();
    Report {
        server: facts.server,
        zone_id: facts.zone_id,
        behavior: facts.behavior,
        input_batch_ticks: most_common(joined.iter().map(|o| o.input_batch_ticks)).unwrap_or(0),
        count: facts.count,
        duration_s: facts.duration_s,
        wall_s: facts.wall_s,
        joined: joined.len() as u64,
        failed_joins: outcomes.iter().filter(|o| !o.joined).count() as u64 + u64::from(facts.count).saturating_sub(outcomes.len() as u64),
        failed_reasons,
        snapshots_per_bot_per_s: rate(|o| o.snapshots),
        kbit_per_bot_per_s: rate(|o| o.bytes_in) * 8.0 / 1_000.0,
        kbit_up_per_bot_per_s: rate(|o| o.bytes_out) * 8.0 / 1_000.0,
        rtt_samples: rtt.len(),
        rtt_ms_p50: us_to_ms(rtt.percentile(50.0)),
        rtt_ms_p99: us_to_ms(rtt.percentile(99.0)),
        decode_errors: sum(|o| o.decode_errors),
        missing_baselines: sum(|o| o.missing_baselines),
        events_received: sum(|o| o.events_received),
        duplicate_events: sum(|o| o.duplicate_events),
        ended_early,
        cpu_s: usage.cpu_s,
        peak_rss_mib: usage.peak_rss_mib,
        all_joined_s: (joined.len() as u64 == u64::from(facts.count)).then(|| facts.last_join_us as f64 / 1e6),
        lobby_login_ms_p50: us_to_ms(facts.lobby_login_us.percentile(50.0)),
        lobby_login_ms_p99: us_to_ms(facts.lobby_login_us.percentile(99.0)),
        lobby_join_ms_p50: us_to_ms(facts.lobby_join_us.percentile(50.0)),
        lobby_join_ms_p99: us_to_ms(facts.lobby_join_us.percentile(99.0)),
        lobby_join_retries: facts.lobby_join_retries,
        lobby_join_retried_bots: facts.lobby_join_retried_bots,
        matching: facts
            .matching
            .map(|(mode, wait, matched, results_reported, result_errors)| MatchReport {
                mode,
                matched,
                match_wait_ms_p50: us_to_ms(wait.percentile(50.0)),
                match_wait_ms_p99: us_to_ms(wait.percentile(99.0)),
                match_wait_ms_max: us_to_ms(wait.percentile(100.0)),
                results_reported,
                result_errors,
            }),
        moves: sum(|o| o.moves),
        move_ms_p50: us_to_ms(facts.move_us.percentile(50.0)),
        move_ms_p99: us_to_ms(facts.move_us.percentile(99.0)),
        move_ms_max: us_to_ms(facts.move_us.percentile(100.0)),
        move_failures: outcomes.iter().filter(|o| o.move_failure.is_some()).count() as u64,
        move_failed_reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact_percentile(sorted: &[u64], p: f64) -> u64 {
        let rank = ((p / 100.0 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }

    #[test]
    fn histogram_percentiles_are_within_two_percent() {
        let mut values: Vec<u64> = (0..10_000u64).map(|i| (i * 7_919) % 250_000 + i % 13).collect();
        values.extend([0, 1, 63, 64, 65, u64::MAX]);
        let mut h = Histogram::default();
        let mut half = Histogram::default();
        for (k, &v) in values.iter().enumerate() {
            if k % 2 == 0 { h.record(v) } else { half.record(v) }
        }
        h.merge(&half);
        values.sort_unstable();
        assert_eq!(h.len(), values.len() as u64);
        for p in [0.0, 1.0, 50.0, 90.0, 99.0, 99.9, 100.0] {
            let exact = exact_percentile(&values, p) as f64;
            let got = h.percentile(p).unwrap() as f64;
            assert!((got - exact).abs() <= exact / 50.0 + 0.5, "p{p}: {got} vs {exact}");
        }
        assert_eq!(Histogram::default().percentile(50.0), None);
        for v in [0u64, 5, 63, 64, 127, 128, 1 << 40, u64::MAX] {
            let (lo, hi) = bucket_range(bucket_of(v));
            assert!(lo <= v && v <= hi, "{v} in [{lo}, {hi}]");
        }
    }

    #[test]
    fn report_rates_are_over_joined_time() {
        let bot = |joined_s: f64, snapshots: u64, bytes_in: u64| BotOutcome {
            joined: true,
            joined_s,
            snapshots,
            bytes_in,
            bytes_out: bytes_in / 10,
            events_received: 2,
            input_batch_ticks: if joined_s == 10.0 { 1 } else { 3 },
            ..BotOutcome::default()
        };
        let outcomes = vec![
            bot(10.0, 200, 100_000),
            bot(30.0, 600, 300_000),
            BotOutcome {
                join_failure: Some("zone_full".into()),
                ..BotOutcome::default()
            },
            BotOutcome {
                ended_early: Some("replaced".into()),
                ..bot(0.0, 0, 0)
            },
        ];
        let mut rtt = Histogram::default();
        rtt.record(40);
        let facts = RunFacts {
            server: "127.0.0.1:7777".into(),
            zone_id: "demo".into(),
            behavior: Behavior::Idle,
            count: 5,
            duration_s: 40.0,
            wall_s: 41.0,
            last_join_us: 0,
            lobby_login_us: Histogram::default(),
            lobby_join_us: Histogram::default(),
            lobby_join_retries: 0,
            lobby_join_retried_bots: 0,
            matching: None,
            move_us: Histogram::default(),
        };
        let r = build_report(facts, &outcomes, &rtt, ProcessUsage::default());
        assert_eq!((r.joined, r.failed_joins), (3, 2), "one outcome missing counts as failed");
        assert_eq!(r.failed_reasons, BTreeMap::from([("zone_full".to_owned(), 1)]));
        assert_eq!(r.ended_early, BTreeMap::from([("replaced".to_owned(), 1)]));
        assert!((r.snapshots_per_bot_per_s - 20.0).abs() < 1e-9);
        assert!((r.kbit_per_bot_per_s - 80.0).abs() < 1e-9);
        assert!((r.kbit_up_per_bot_per_s - 8.0).abs() < 1e-9);
        assert_eq!(r.rtt_ms_p50, Some(0.04));
        assert_eq!(r.events_received, 6);
        assert_eq!(r.input_batch_ticks, 3, "the value most joined bots used");
        let json = serde_json::to_value(&r).unwrap();
        for key in [
            "count",
            "duration_s",
            "joined",
            "failed_joins",
            "rtt_ms_p99",
            "ended_early",
            "cpu_s",
            "peak_rss_mib",
        ] {
            assert!(json.get(key).is_some(), "{key}");
        }
    }

    #[test]
    fn progress_rates_count_the_bots_that_just_left() {
        let prev = LiveTotals {
            connected: 12,
            snapshots: 1_000,
            ..LiveTotals::default()
        };
        let now = LiveTotals {
            connected: 0,
            snapshots: 1_240,
            ..LiveTotals::default()
        };
        let line = progress_line(4.0, 12, &prev, &now, 1.0, &Histogram::default());
        assert!(line.contains("connected 0/12") && line.contains("| 20.0 snapshots/s/bot"), "{line}");
    }

    #[test]
    fn proc_parsers() {
        let stat = "1234 (zone bots (x)) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0";
        assert_eq!(cpu_s_from_stat(stat), Some(3.0));
        assert_eq!(cpu_s_from_stat("garbage"), None);
        assert_eq!(cpu_s_from_stat("1 (x)"), None);
        let status = "Name:\tzone-bots\nVmPeak:\t 9000 kB\nVmHWM:\t    5120 kB\nVmRSS:\t 4000 kB\n";
        assert_eq!(peak_rss_kib_from_status(status), Some(5_120));
        assert_eq!(peak_rss_kib_from_status(""), None);
    }
}
