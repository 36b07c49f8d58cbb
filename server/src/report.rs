//! Tick-duration samples and the periodic per-shard statistics log.
//!
//! Samples are kept per reporting window (a few seconds) and summarised as percentiles; nothing is
//! logged per entity or per tick.

use std::collections::VecDeque;
use std::time::Duration;

use zone_sim::ShardStats;

/// Durations in microseconds, summarised on demand.
#[derive(Clone, Debug, Default)]
pub struct Samples {
    us: Vec<u32>,
}

impl Samples {
    pub fn push(&mut self, d: Duration) {
        self.us.push(d.as_micros().min(u128::from(u32::MAX)) as u32);
    }

    pub fn len(&self) -> usize {
        self.us.len()
    }

    pub fn is_empty(&self) -> bool {
        self.us.is_empty()
    }

    pub fn clear(&mut self) {
        self.us.clear();
    }

    /// The `q`-quantile (0.0..=1.0) in microseconds, by nearest rank; 0 when empty.
    pub fn quantile_us(&mut self, q: f64) -> u32 {
        if self.us.is_empty() {
            return 0;
        }
        self.us.sort_unstable();
        let rank = ((q * self.us.len() as f64).ceil() as usize).clamp(1, self.us.len());
        self.us[rank - 1]
    }
}

/// A quantile of tick durations over the last `keep` windows (one second each, as the tick loop
/// closes them): the tick p99 the lifecycle reports (the lobby's directory, Agones'
/// `tick-p99-ms` annotation).
///
/// A one-second window holds 60 ticks, so its p99 is its slowest tick: one slow tick (a large
/// capture, the machine busy for a moment) would make the lobby stop offering the server for a
/// second. Over ten seconds (600 ticks) the p99 passes the budget only once more than six ticks
/// were slow: a server slow on every tick shows it when the first second closes, and the value
/// falls back at most ten seconds after the slowness ends. In the server's first seconds it
/// covers the windows there are (in the first, one: its slowest tick). The overload guard keeps
/// its own one-second windows ([`crate::lifecycle::overload`]).
#[derive(Debug)]
pub struct RecentQuantile {
    /// Closed windows, oldest first; at most `keep`.
    windows: VecDeque<Vec<u32>>,
    keep: usize,
    all: Samples,
}

impl RecentQuantile {
    pub fn new(keep: usize) -> RecentQuantile {
        RecentQuantile {
            windows: VecDeque::with_capacity(keep.max(1)),
            keep: keep.max(1),
            all: Samples::default(),
        }
    }

    /// Adds a closed window (left as it was) and returns the `q`-quantile over the last `keep`
    /// windows, by nearest rank as [`Samples::quantile_us`]; 0 when they hold no sample. The tick
    /// thread calls it once a second: it copies and sorts at most `keep` windows of samples (600
    /// at 60 ticks/s), into buffers it keeps.
    pub fn close_window(&mut self, window: &Samples, q: f64) -> u32 {
        let mut slot = if self.windows.len() == self.keep {
            self.windows.pop_front().unwrap_or_default()
        } else {
            Vec::new()
        };
        slot.clear();
        slot.extend_from_slice(&window.us);
        self.windows.push_back(slot);
        self.all.clear();
        for w in &self.windows {
            self.all.us.extend_from_slice(w);
        }
        self.all.quantile_us(q)
    }
}

/// Per-shard counters summed over a reporting window.
#[derive(Clone, Debug, Default)]
pub struct ShardWindow {
    pub step: Samples,
    pub spawns: u64,
    pub despawns: u64,
    pub migrations_in: u64,
    pub migrations_out: u64,
    pub npc_deaths: u64,
    pub player_deaths: u64,
    pub inputs_speed_capped: u64,
    pub inputs_unknown_player: u64,
    pub last: ShardStats,
}

impl ShardWindow {
    pub fn add(&mut self, s: &ShardStats, step: Duration) {
        self.step.push(step);
        self.spawns += u64::from(s.spawns);
        self.despawns += u64::from(s.despawns);
        self.migrations_in += u64::from(s.migrations_in);
        self.migrations_out += u64::from(s.migrations_out);
        self.npc_deaths += u64::from(s.npc_deaths);
        self.player_deaths += u64::from(s.player_deaths);
        self.inputs_speed_capped += u64::from(s.inputs_speed_capped);
        self.inputs_unknown_player += u64::from(s.inputs_unknown_player);
        self.last.clone_from(s);
    }

    /// Logs one line for this shard and starts a new window.
    pub fn log_and_reset(&mut self, kind_names: &[String], window_secs: f64) {
        let ticks = self.step.len();
        let by_kind: String = kind_names
            .iter()
            .zip(&self.last.objects_by_kind)
            .map(|(n, c)| format!("{n}={c}"))
            .collect::<Vec<_>>()
            .join(" ");
        tracing::info!(
            shard = self.last.shard,
            tick = self.last.tick,
            objects = self.last.objects,
            players = self.last.players,
            by_kind = %by_kind,
            spawns = self.spawns,
            despawns = self.despawns,
            npc_deaths = self.npc_deaths,
            player_deaths = self.player_deaths,
            migrations_in = self.migrations_in,
            migrations_out = self.migrations_out,
            speed_capped = self.inputs_speed_capped,
            tick_rate_hz = format!("{:.1}", ticks as f64 / window_secs.max(1e-9)),
            step_p50_us = self.step.quantile_us(0.50),
            step_p99_us = self.step.quantile_us(0.99),
            "shard stats"
        );
        *self = ShardWindow {
            last: std::mem::take(&mut self.last),
            ..Default::default()
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(ticks: usize, slow: usize) -> Samples {
        let mut w = Samples::default();
        for i in 0..ticks {
            w.push(Duration::from_micros(if i < slow { 40_000 } else { 2_000 }));
        }
        w
    }

    #[test]
    fn one_slow_tick_moves_a_second_but_not_ten() {
        // One second's p99 is its slowest tick.
        assert_eq!(window(60, 1).quantile_us(0.99), 40_000);
        let mut recent = RecentQuantile::new(10);
        for _ in 0..9 {
            assert_eq!(recent.close_window(&window(60, 0), 0.99), 2_000);
        }
        assert_eq!(recent.close_window(&window(60, 1), 0.99), 2_000, "1 slow tick in 600");
        let mut recent = RecentQuantile::new(10);
        for _ in 0..9 {
            recent.close_window(&window(60, 0), 0.99);
        }
        // 7 slow ticks of 600: more than one in a hundred.
        assert_eq!(recent.close_window(&window(60, 7), 0.99), 40_000);
    }

    #[test]
    fn slowness_passes_after_the_windows_it_was_in() {
        let mut recent = RecentQuantile::new(10);
        assert_eq!(recent.close_window(&window(60, 60), 0.99), 40_000, "a slow first second");
        for k in 1..10 {
            assert_eq!(recent.close_window(&window(60, 0), 0.99), 40_000, "still inside window {k}");
        }
        assert_eq!(recent.close_window(&window(60, 0), 0.99), 2_000, "ten seconds later");
        assert_eq!(recent.close_window(&Samples::default(), 0.99), 2_000, "an empty window");
        assert_eq!(RecentQuantile::new(10).close_window(&Samples::default(), 0.99), 0);
    }
}
