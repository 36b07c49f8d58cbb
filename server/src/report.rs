//! Tick-duration samples and the periodic per-shard statistics log.
//!
//! Samples are kept per reporting window (a few seconds) and summarised as percentiles; nothing is
//! logged per entity or per tick.

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
