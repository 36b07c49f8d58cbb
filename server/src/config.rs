//! The server's configuration: command-line flags, `ZONE_*` environment variables and a TOML file,
//! merged in that order of precedence over built-in defaults.
//!
//! Every option exists in all three places under the same name (`--hash-interval`,
//! `ZONE_HASH_INTERVAL`, `hash_interval = …`). A bad file is reported with the file, the field and
//! the fix. `--print-config` shows the effective result with secrets masked.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::{Deserialize, Serialize};

/// Runs one game zone: a deterministic, sharded simulation ticked at a fixed 60 ticks per second.
///
/// With no flags it runs assets/zones/demo.toml until Ctrl-C or SIGTERM (which drain the zone
/// first; a second signal exits at once), logging per-shard statistics every few seconds to
/// stderr, serving metrics and health on 127.0.0.1:9100, and keeping snapshots and the input
/// journal in ./data (no other service needed). With --ticks N it runs N ticks as
/// fast as it can and prints `final_tick=<N> zone_hash=<16 hex digits>` as the last line of
/// stdout.
///
/// Every option can also be set in a TOML file (--config, same names with underscores) or in an
/// environment variable (ZONE_ plus the name in capitals, e.g. ZONE_HASH_INTERVAL). Precedence:
/// command line, then environment, then file, then the default shown.
#[derive(Parser, Debug, Default, Clone)]
#[command(name = "zone-server", version, about, long_about)]
pub struct Cli {
    /// TOML file with any of the options below (e.g. `seed = 7`, `admin = "0.0.0.0:9100"`).
    #[arg(long, value_name = "PATH", env = "ZONE_CONFIG")]
    pub config: Option<PathBuf>,

    /// Print the effective configuration (secrets masked) and exit.
    #[arg(long)]
    pub print_config: bool,

    /// Zone file to run (TOML; see assets/zones/demo.toml for the format). [default: assets/zones/demo.toml]
    #[arg(long, value_name = "PATH", env = "ZONE_ZONE")]
    pub zone: Option<PathBuf>,

    /// World seed: with the same zone file and inputs, the same seed gives the same zone, bit for bit. [default: 1]
    #[arg(long, env = "ZONE_SEED")]
    pub seed: Option<u64>,

    /// Threads that tick shards in parallel. Results do not depend on it. In real time a small
    /// tick (its shards' work adds up to under 4 ms) runs on the tick thread alone, since
    /// handing it to other threads costs more than it saves when the cores are busy; it spreads
    /// over the threads once half a second of ticks all took 4 ms or more, and comes back when
    /// one takes under 2 ms. Headless runs (`--ticks` without `--realtime`) always spread.
    /// [default: one per CPU]
    #[arg(long, env = "ZONE_THREADS")]
    pub threads: Option<usize>,

    /// In-process scripted players driven by a seeded generator (exercises the player path
    /// without a network). [default: 0]
    #[arg(long, value_name = "K", env = "ZONE_SIM_PLAYERS")]
    pub sim_players: Option<u32>,

    /// Record the input journal in the directory PATH, as segments (seg-<tick>.zjnl) that start at
    /// snapshot ticks; replay it with `zone-replay PATH`. [default: DATA_DIR/journal when persistence is on, else none]
    #[arg(long, value_name = "PATH", env = "ZONE_JOURNAL")]
    pub journal: Option<PathBuf>,

    /// Run N ticks as fast as possible (headless benchmark/test mode), print the final line and exit.
    #[arg(long, value_name = "N", env = "ZONE_TICKS")]
    pub ticks: Option<u64>,

    /// With --ticks: pace the run at 60 ticks/s instead of running flat out. [default: false]
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL", env = "ZONE_REALTIME")]
    pub realtime: Option<bool>,

    /// Compute the zone hash (and record it in the journal) every N ticks; 1 pinpoints
    /// divergences exactly but costs time on large zones. [default: 60]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), env = "ZONE_HASH_INTERVAL")]
    pub hash_interval: Option<u32>,

    /// Seconds between statistics log lines. [default: 5]
    #[arg(long, value_name = "SECS", env = "ZONE_STATS_INTERVAL")]
    pub stats_interval: Option<f64>,

    /// Log format: text (for people) or json (for machines). [default: text]
    #[arg(long, value_parser = ["text", "json"], env = "ZONE_LOG_FORMAT")]
    pub log_format: Option<String>,

    /// Log filter, RUST_LOG syntax (e.g. `info,zone_server=debug`); RUST_LOG wins when set. [default: info]
    #[arg(long, value_name = "FILTER", env = "ZONE_LOG_FILTER")]
    pub log_filter: Option<String>,

    /// Admin HTTP listener: /metrics, /healthz, /readyz, /status, POST /drain. [default: 127.0.0.1:9100]
    #[arg(long, value_name = "ADDR", env = "ZONE_ADMIN")]
    pub admin: Option<SocketAddr>,

    /// Metrics and stage timing: on, or off (no recorder, no admin listener; for measuring their cost). [default: on]
    #[arg(long, value_parser = ["on", "off"], env = "ZONE_TELEMETRY")]
    pub telemetry: Option<String>,

    /// Seconds a drain waits for players to leave before shutting down anyway. [default: 30]
    #[arg(long, value_name = "SECS", env = "ZONE_DRAIN_TIMEOUT")]
    pub drain_timeout: Option<f64>,

    /// Directory for file snapshots (DIR/snapshots) and the default journal (DIR/journal). [default: ./data]
    #[arg(long, value_name = "DIR", env = "ZONE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Snapshots and the journal: on, or off. [default: on in real time, off with --ticks]
    #[arg(long, value_parser = ["on", "off"], env = "ZONE_PERSISTENCE")]
    pub persistence: Option<String>,

    /// Redis URL for hot snapshots (newest full plus diffs, with a TTL), e.g. redis://127.0.0.1:6379/. [default: none: files are the hot store]
    #[arg(long, value_name = "URL", env = "ZONE_REDIS")]
    pub redis: Option<String>,

    /// PostgreSQL URL for cold snapshots and game events, e.g. postgres://user@127.0.0.1:5432/db. [default: none]
    #[arg(long, value_name = "URL", env = "ZONE_POSTGRES")]
    pub postgres: Option<String>,

    /// Name of this server's data in Redis and PostgreSQL (several servers of one zone need different names). [default: the zone id]
    #[arg(long, value_name = "NAME", env = "ZONE_INSTANCE")]
    pub instance: Option<String>,

    /// Recovery at start: off (start fresh), auto (restore the newest snapshot that verifies, then
    /// replay the journal; start fresh if there is nothing), or required (refuse to start without
    /// something to restore). [default: off]
    #[arg(long, value_parser = ["off", "auto", "required"], env = "ZONE_RESTORE")]
    pub restore: Option<String>,

    /// Seconds between full snapshots to the hot store. [default: 10]
    #[arg(long, value_name = "SECS", env = "ZONE_SNAPSHOT_FULL_INTERVAL")]
    pub snapshot_full_interval: Option<f64>,

    /// Seconds between diff snapshots (against the last full) to the hot store. [default: 1]
    #[arg(long, value_name = "SECS", env = "ZONE_SNAPSHOT_DIFF_INTERVAL")]
    pub snapshot_diff_interval: Option<f64>,

    /// Seconds between full snapshots to the cold store (PostgreSQL). [default: 60]
    #[arg(long, value_name = "SECS", env = "ZONE_COLD_SNAPSHOT_INTERVAL")]
    pub cold_snapshot_interval: Option<f64>,

    /// Full snapshots kept in the file and PostgreSQL stores. [default: 5]
    #[arg(long, value_name = "N", env = "ZONE_KEEP_SNAPSHOTS")]
    pub keep_snapshots: Option<usize>,

    /// Seconds of zone time between journal segments, besides the new segment at every full
    /// snapshot. [default: 600]
    #[arg(long, value_name = "SECS", env = "ZONE_JOURNAL_SEGMENT")]
    pub journal_segment: Option<f64>,

    /// How much journal to keep: a duration of zone time (e.g. 24h, 90m, 7d), a size (e.g. 10GB,
    /// 500MiB), both (24h,10GB: whichever keeps less), or off (keep all). The newest verified
    /// snapshot and every segment after it are always kept; runs a fresh start moved aside are
    /// deleted by the same rules. [default: 24h]
    #[arg(long, value_name = "DURATION|SIZE|off", env = "ZONE_JOURNAL_RETENTION")]
    pub journal_retention: Option<String>,

    /// Seconds Redis keeps hot snapshots. [default: 600]
    #[arg(long, value_name = "SECS", env = "ZONE_REDIS_TTL")]
    pub redis_ttl: Option<f64>,

    /// Milliseconds one Redis or PostgreSQL operation may take before it counts as failed. [default: 2000]
    #[arg(long, value_name = "MS", env = "ZONE_BACKEND_TIMEOUT_MS")]
    pub backend_timeout_ms: Option<u64>,

    /// Consecutive failures that open a backend's circuit breaker. [default: 5]
    #[arg(long, value_name = "N", env = "ZONE_BREAKER_FAILURES")]
    pub breaker_failures: Option<u32>,

    /// Seconds an open breaker waits before letting one trial call through. [default: 30]
    #[arg(long, value_name = "SECS", env = "ZONE_BREAKER_OPEN")]
    pub breaker_open: Option<f64>,

    /// Player events held in memory while PostgreSQL is unreachable (the oldest are dropped past it). [default: 10000]
    #[arg(long, value_name = "N", env = "ZONE_EVENT_QUEUE")]
    pub event_queue: Option<usize>,

    /// UDP address of the game socket (players), or `off` for no socket. [default: 0.0.0.0:7777]
    #[arg(long, value_name = "ADDR|off", env = "ZONE_BIND")]
    pub bind: Option<String>,

    /// Secret that signs join tokens (HS256 JWTs with claims player id, zone id, expiry). Prefer the
    /// ZONE_TOKEN_SECRET environment variable: command lines are visible to other users. Without
    /// a secret every join is refused (a warning says so at start). [default: none]
    #[arg(long, value_name = "SECRET", env = "ZONE_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<String>,

    /// Snapshots sent to each client per second; must divide 60 (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60). [default: 20]
    #[arg(long, value_name = "HZ", env = "ZONE_SNAPSHOT_RATE")]
    pub snapshot_rate: Option<u32>,

    /// Metres around a player within which objects are sent to it (besides its own shard cell). [default: 150]
    #[arg(long, value_name = "M", env = "ZONE_INTEREST_RADIUS_M")]
    pub interest_radius_m: Option<f64>,

    /// Most objects one client is told about (the nearest). [default: 128]
    #[arg(long, value_name = "N", env = "ZONE_INTEREST_MAX")]
    pub interest_max: Option<usize>,

    /// Search each client's nearest objects at one snapshot in N; in between its snapshot keeps
    /// the same objects (new arrivals show up at most N snapshots late). 1 searches every
    /// snapshot. [default: 4]
    #[arg(long, value_name = "N", env = "ZONE_INTEREST_REFRESH")]
    pub interest_refresh: Option<u32>,

    /// Most connected clients; further joins are refused with ZONE_FULL. [default: the zone's max_players]
    #[arg(long, value_name = "N", env = "ZONE_MAX_CLIENTS")]
    pub max_clients: Option<usize>,

    /// Join attempts (Hellos from addresses not yet admitted) accepted per second from one IP address; twice this is the burst. [default: 100]
    #[arg(long, value_name = "PER_S", env = "ZONE_HANDSHAKE_RATE_PER_IP")]
    pub handshake_rate_per_ip: Option<f64>,

    /// Datagrams per second accepted from one connected client (about 24 at --input-batch-ticks 3, 64 at 1); twice this is the burst. [default: 240]
    #[arg(long, value_name = "PER_S", env = "ZONE_PEER_PACKET_RATE")]
    pub peer_packet_rate: Option<f64>,

    /// After a restore (--restore): seconds the restored players have to join again (same player id:
    /// the same character, where it was). Those that have not by then leave the zone, freeing
    /// their seats; a drain makes them leave at once. [default: 60]
    #[arg(long, value_name = "SECS", env = "ZONE_RESTORED_PLAYER_GRACE")]
    pub restored_player_grace: Option<f64>,

    /// Ticks between a client's input datagrams that the server asks clients for, 1 to 4 (the
    /// Welcome tells them). Each datagram carries an input for each of those ticks, planned when
    /// it is sent: 3 sends one every third tick (20 Hz, as often as snapshots); 1 sends one every
    /// tick (60 Hz), for games where a change of intent must not wait up to two ticks more. At 1
    /// the input datagrams cost the server about two-thirds of what encoding and sending the
    /// snapshots does. [default: 3]
    #[arg(long, value_name = "TICKS", env = "ZONE_INPUT_BATCH_TICKS")]
    pub input_batch_ticks: Option<u32>,

    /// The world visualizer, a page at http://ADMIN/ (needs telemetry on): on or off. It costs
    /// the tick nothing while nobody watches. [default: on]
    #[arg(long, value_parser = ["on", "off"], env = "ZONE_VIZ")]
    pub viz: Option<String>,

    /// Frames per second sent to each visualizer page; must divide 60. Each costs the tick a copy
    /// of every object; with players connected the page also gets up to 10/s from their
    /// snapshots' copies, at no cost. [default: 2]
    #[arg(long, value_name = "HZ", env = "ZONE_VIZ_RATE")]
    pub viz_rate: Option<u32>,

    /// Most visualizer pages open at once; the next is refused (503). [default: 8]
    #[arg(long, value_name = "N", env = "ZONE_VIZ_MAX_VIEWERS")]
    pub viz_max_viewers: Option<usize>,

    /// Seconds after which a visualizer page that stopped pinging (a hidden tab, a dead client) is dropped. [default: 30]
    #[arg(long, value_name = "SECS", env = "ZONE_VIZ_IDLE_TIMEOUT")]
    pub viz_idle_timeout: Option<f64>,

    /// Seconds of history the visualizer keeps for its scrub bar (one frame per second, diff-coded;
    /// filled from the snapshots persistence takes, so it needs persistence on). [default: 600]
    #[arg(long, value_name = "SECS", env = "ZONE_VIZ_HISTORY")]
    pub viz_history: Option<u64>,

    /// Memory for the visualizer's history, MiB; the oldest frames go first. [default: 256]
    #[arg(long, value_name = "MIB", env = "ZONE_VIZ_RING_MB")]
    pub viz_ring_mb: Option<usize>,

    /// Redis of a zone-lobby (its --redis): announce this server in the lobby's zone directory
    /// every second (off the tick thread; a Redis outage stops the announcements, never the
    /// zone), report joins and leaves, and take the lobby's kicks. Needs --public-addr. [default: none]
    #[arg(long, value_name = "URL", env = "ZONE_ANNOUNCE_REDIS")]
    pub lobby_redis: Option<String>,

    /// The game socket's address as players reach it, HOST:PORT (announced to the lobby). [default: none]
    #[arg(long, value_name = "HOST:PORT", env = "ZONE_PUBLIC_ADDR")]
    pub public_addr: Option<String>,

    /// Prefix of the lobby's Redis keys (its --redis-prefix). [default: lobby:]
    #[arg(long, value_name = "P", env = "ZONE_ANNOUNCE_PREFIX")]
    pub lobby_prefix: Option<String>,

    /// Who runs this server's lifecycle: `local` (the lobby's zone directory, with --lobby-redis)
    /// or `agones` (the Agones SDK's REST gateway on 127.0.0.1:AGONES_SDK_HTTP_PORT: Ready once
    /// loaded and bound, Health every 2 s while the tick advances, the label
    /// agones.dev/sdk-allocatable, player tracking, Shutdown after the drain's final snapshot;
    /// with --lobby-redis it also announces to the lobby). See docs/AGONES.md. [default: local]
    #[arg(long, value_parser = ["local", "agones"], env = "ZONE_LIFECYCLE")]
    pub lifecycle: Option<String>,

    /// Port of the Agones SDK's REST gateway on 127.0.0.1 (Agones sets AGONES_SDK_HTTP_PORT). [default: 9358]
    #[arg(long, value_name = "PORT", env = "AGONES_SDK_HTTP_PORT")]
    pub agones_sdk_port: Option<u16>,

    /// Tick duration p99 (milliseconds) above which a second counts as overloaded. [default: 16.7, the 60 Hz tick period]
    #[arg(long, value_name = "MS", env = "ZONE_OVERLOAD_BUDGET_MS")]
    pub overload_budget_ms: Option<f64>,

    /// Seconds of tick p99 over budget, without a break, after which the server stops being
    /// allocatable: it keeps running and keeps its players, /readyz answers 503, the lobby stops
    /// offering it, Agones' label agones.dev/sdk-allocatable turns false. [default: 10]
    #[arg(long, value_name = "SECS", env = "ZONE_OVERLOAD_AFTER")]
    pub overload_after: Option<f64>,

    /// Seconds back within budget, without a break, after which an overloaded server is allocatable again. [default: 10]
    #[arg(long, value_name = "SECS", env = "ZONE_OVERLOAD_RECOVER_AFTER")]
    pub overload_recover_after: Option<f64>,
}

/// The same options as a TOML file. Unknown keys are errors (a typo must not be silently ignored).
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    zone: Option<PathBuf>,
    seed: Option<u64>,
    threads: Option<usize>,
    sim_players: Option<u32>,
    journal: Option<PathBuf>,
    ticks: Option<u64>,
    realtime: Option<bool>,
    hash_interval: Option<u32>,
    stats_interval: Option<f64>,
    log_format: Option<String>,
    log_filter: Option<String>,
    admin: Option<SocketAddr>,
    telemetry: Option<String>,
    drain_timeout: Option<f64>,
    data_dir: Option<PathBuf>,
    persistence: Option<String>,
    redis: Option<String>,
    postgres: Option<String>,
    instance: Option<String>,
    restore: Option<String>,
    snapshot_full_interval: Option<f64>,
    snapshot_diff_interval: Option<f64>,
    cold_snapshot_interval: Option<f64>,
    keep_snapshots: Option<usize>,
    journal_segment: Option<f64>,
    journal_retention: Option<String>,
    redis_ttl: Option<f64>,
    backend_timeout_ms: Option<u64>,
    breaker_failures: Option<u32>,
    breaker_open: Option<f64>,
    event_queue: Option<usize>,
    bind: Option<String>,
    token_secret: Option<String>,
    snapshot_rate: Option<u32>,
    interest_radius_m: Option<f64>,
    interest_max: Option<usize>,
    interest_refresh: Option<u32>,
    max_clients: Option<usize>,
    handshake_rate_per_ip: Option<f64>,
    peer_packet_rate: Option<f64>,
    restored_player_grace: Option<f64>,
    input_batch_ticks: Option<u32>,
    viz: Option<String>,
    viz_rate: Option<u32>,
    viz_max_viewers: Option<usize>,
    viz_idle_timeout: Option<f64>,
    viz_history: Option<u64>,
    viz_ring_mb: Option<usize>,
    lobby_redis: Option<String>,
    public_addr: Option<String>,
    lobby_prefix: Option<String>,
    lifecycle: Option<String>,
    agones_sdk_port: Option<u16>,
    overload_budget_ms: Option<f64>,
    overload_after: Option<f64>,
    overload_recover_after: Option<f64>,
}

/// The effective configuration.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub zone: PathBuf,
    pub seed: u64,
    pub threads: usize,
    pub sim_players: u32,
    pub journal: Option<PathBuf>,
    pub ticks: Option<u64>,
    pub realtime: bool,
    pub hash_interval: u32,
    pub stats_interval: f64,
    pub log_format: String,
    pub log_filter: String,
    pub admin: SocketAddr,
    pub telemetry: String,
    pub drain_timeout: f64,
    pub data_dir: PathBuf,
    pub persistence: String,
    pub redis: Option<String>,
    pub postgres: Option<String>,
    pub instance: Option<String>,
    pub restore: String,
    pub snapshot_full_interval: f64,
    pub snapshot_diff_interval: f64,
    pub cold_snapshot_interval: f64,
    pub keep_snapshots: usize,
    pub journal_segment: f64,
    pub journal_retention: String,
    pub redis_ttl: f64,
    pub backend_timeout_ms: u64,
    pub breaker_failures: u32,
    pub breaker_open: f64,
    pub event_queue: usize,
    pub bind: String,
    /// Never printed: `to_masked_toml` masks it.
    pub token_secret: Option<String>,
    pub snapshot_rate: u32,
    pub interest_radius_m: f64,
    pub interest_max: usize,
    pub interest_refresh: u32,
    /// None: the zone's max_players.
    pub max_clients: Option<usize>,
    pub handshake_rate_per_ip: f64,
    pub peer_packet_rate: f64,
    pub restored_player_grace: f64,
    pub input_batch_ticks: u32,
    pub viz: String,
    pub viz_rate: u32,
    pub viz_max_viewers: usize,
    pub viz_idle_timeout: f64,
    pub viz_history: u64,
    pub viz_ring_mb: usize,
    pub lobby_redis: Option<String>,
    pub public_addr: Option<String>,
    pub lobby_prefix: String,
    pub lifecycle: String,
    pub agones_sdk_port: u16,
    pub overload_budget_ms: f64,
    pub overload_after: f64,
    pub overload_recover_after: f64,
}

impl ServerConfig {
    /// The game socket's address, or None when it is off.
    pub fn bind_addr(&self) -> Option<SocketAddr> {
        (self.bind != "off").then(|| self.bind.parse().ok()).flatten()
    }

    pub fn persistence_on(&self) -> bool {
        self.persistence == "on"
    }
    pub fn stats_interval(&self) -> Duration {
        Duration::from_secs_f64(self.stats_interval)
    }
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.drain_timeout)
    }
    /// The journal directory: the explicit one, or DATA_DIR/journal when persistence is on.
    pub fn journal_path(&self) -> Option<PathBuf> {
        self.journal
            .clone()
            .or_else(|| self.persistence_on().then(|| self.data_dir.join("journal")))
    }

    /// `--journal-retention` as zone ticks and bytes (validated by [`resolve`]).
    pub fn retention(&self) -> zone_persistence::Retention {
        let (dur, size) = crate::housekeeping::parse_retention(&self.journal_retention).unwrap_or_default();
        zone_persistence::Retention {
            keep_ticks: dur.map(|d| (d.as_secs_f64() * f64::from(zone_sim::units::TICK_RATE_HZ)).round() as u64),
            keep_bytes: size,
        }
    }

    /// How long moved-aside runs are kept: the retention's duration (None: by size only, or all).
    pub fn keep_aside_for(&self) -> Option<Duration> {
        crate::housekeeping::parse_retention(&self.journal_retention).ok().and_then(|r| r.0)
    }

    pub fn telemetry_on(&self) -> bool {
        self.telemetry == "on"
    }

    /// The visualizer runs when asked for and the admin listener that serves it runs.
    pub fn viz_on(&self) -> bool {
        self.viz == "on" && self.telemetry_on()
    }

    /// The visualizer's settings.
    pub fn viz_config(&self) -> crate::viz::VizConfig {
        crate::viz::VizConfig {
            rate_hz: self.viz_rate,
            max_viewers: self.viz_max_viewers,
            idle_timeout: Duration::from_secs_f64(self.viz_idle_timeout),
            history_s: self.viz_history,
            ring_bytes_max: self.viz_ring_mb.saturating_mul(1 << 20),
            ..Default::default()
        }
    }

    /// The overload guard's settings.
    pub fn overload(&self) -> crate::lifecycle::overload::OverloadConfig {
        crate::lifecycle::overload::OverloadConfig {
            budget_us: (self.overload_budget_ms * 1000.0).round() as u32,
            after: Duration::from_secs_f64(self.overload_after),
            recover_after: Duration::from_secs_f64(self.overload_recover_after),
        }
    }

    /// The effective configuration as TOML, with secrets masked.
    pub fn to_masked_toml(&self) -> String {
        let text = toml::to_string(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"));
        zone_config::mask_keys(&text, &["token_secret"])
    }
}

pub use zone_config::mask_url_passwords;

fn load_file(path: &Path) -> anyhow::Result<FileConfig> {
    Ok(zone_config::load_toml(
        path,
        "every option of `zone-server --help` can be set here, with underscores, e.g. `hash_interval = 60`",
    )?)
}

/// Merges command line (and environment, which clap has already folded in), file and defaults.
pub fn resolve(cli: &Cli) -> anyhow::Result<ServerConfig> {
    let file = match &cli.config {
        Some(p) => load_file(p)?,
        None => FileConfig::default(),
    };
    let threads = cli
        .threads
        .or(file.threads)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let cfg = ServerConfig {
        zone: cli.zone.clone().or(file.zone).unwrap_or_else(|| "assets/zones/demo.toml".into()),
        seed: cli.seed.or(file.seed).unwrap_or(1),
        threads,
        sim_players: cli.sim_players.or(file.sim_players).unwrap_or(0),
        journal: cli.journal.clone().or(file.journal),
        ticks: cli.ticks.or(file.ticks),
        realtime: cli.realtime.or(file.realtime).unwrap_or(false),
        hash_interval: cli.hash_interval.or(file.hash_interval).unwrap_or(60),
        stats_interval: cli.stats_interval.or(file.stats_interval).unwrap_or(5.0),
        log_format: cli.log_format.clone().or(file.log_format).unwrap_or_else(|| "text".into()),
        log_filter: cli.log_filter.clone().or(file.log_filter).unwrap_or_else(|| "info".into()),
        admin: cli.admin.or(file.admin).unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9100))),
        telemetry: cli.telemetry.clone().or(file.telemetry).unwrap_or_else(|| "on".into()),
        drain_timeout: cli.drain_timeout.or(file.drain_timeout).unwrap_or(30.0),
        data_dir: cli.data_dir.clone().or(file.data_dir).unwrap_or_else(|| "data".into()),
        persistence: cli.persistence.clone().or(file.persistence).unwrap_or_else(|| {
            let headless = cli.ticks.or(file.ticks).is_some();
            if headless { "off".into() } else { "on".into() }
        }),
        redis: cli.redis.clone().or(file.redis),
        postgres: cli.postgres.clone().or(file.postgres),
        instance: cli.instance.clone().or(file.instance),
        restore: cli.restore.clone().or(file.restore).unwrap_or_else(|| "off".into()),
        snapshot_full_interval: cli.snapshot_full_interval.or(file.snapshot_full_interval).unwrap_or(10.0),
        snapshot_diff_interval: cli.snapshot_diff_interval.or(file.snapshot_diff_interval).unwrap_or(1.0),
        cold_snapshot_interval: cli.cold_snapshot_interval.or(file.cold_snapshot_interval).unwrap_or(60.0),
        keep_snapshots: cli.keep_snapshots.or(file.keep_snapshots).unwrap_or(5),
        journal_segment: cli.journal_segment.or(file.journal_segment).unwrap_or(600.0),
        journal_retention: cli
            .journal_retention
            .clone()
            .or(file.journal_retention)
            .unwrap_or_else(|| "24h".into()),
        redis_ttl: cli.redis_ttl.or(file.redis_ttl).unwrap_or(600.0),
        backend_timeout_ms: cli.backend_timeout_ms.or(file.backend_timeout_ms).unwrap_or(2000),
        breaker_failures: cli.breaker_failures.or(file.breaker_failures).unwrap_or(5),
        breaker_open: cli.breaker_open.or(file.breaker_open).unwrap_or(30.0),
        event_queue: cli.event_queue.or(file.event_queue).unwrap_or(10_000),
        bind: cli.bind.clone().or(file.bind).unwrap_or_else(|| "0.0.0.0:7777".into()),
        token_secret: cli.token_secret.clone().or(file.token_secret).filter(|s| !s.is_empty()),
        snapshot_rate: cli.snapshot_rate.or(file.snapshot_rate).unwrap_or(20),
        interest_radius_m: cli.interest_radius_m.or(file.interest_radius_m).unwrap_or(150.0),
        interest_max: cli.interest_max.or(file.interest_max).unwrap_or(128),
        interest_refresh: cli.interest_refresh.or(file.interest_refresh).unwrap_or(4),
        max_clients: cli.max_clients.or(file.max_clients),
        handshake_rate_per_ip: cli.handshake_rate_per_ip.or(file.handshake_rate_per_ip).unwrap_or(100.0),
        peer_packet_rate: cli.peer_packet_rate.or(file.peer_packet_rate).unwrap_or(240.0),
        restored_player_grace: cli.restored_player_grace.or(file.restored_player_grace).unwrap_or(60.0),
        input_batch_ticks: cli
            .input_batch_ticks
            .or(file.input_batch_ticks)
            .unwrap_or(crate::net::INPUT_BATCH_TICKS_DEFAULT),
        viz: cli.viz.clone().or(file.viz).unwrap_or_else(|| "on".into()),
        viz_rate: cli.viz_rate.or(file.viz_rate).unwrap_or(crate::viz::LIVE_RATE_HZ_DEFAULT),
        viz_max_viewers: cli.viz_max_viewers.or(file.viz_max_viewers).unwrap_or(8),
        viz_idle_timeout: cli.viz_idle_timeout.or(file.viz_idle_timeout).unwrap_or(30.0),
        viz_history: cli.viz_history.or(file.viz_history).unwrap_or(600),
        viz_ring_mb: cli.viz_ring_mb.or(file.viz_ring_mb).unwrap_or(256),
        lobby_redis: cli.lobby_redis.clone().or(file.lobby_redis),
        public_addr: cli.public_addr.clone().or(file.public_addr),
        lobby_prefix: cli.lobby_prefix.clone().or(file.lobby_prefix).unwrap_or_else(|| "lobby:".into()),
        lifecycle: cli.lifecycle.clone().or(file.lifecycle).unwrap_or_else(|| "local".into()),
        agones_sdk_port: cli
            .agones_sdk_port
            .or(file.agones_sdk_port)
            .unwrap_or(crate::lifecycle::agones::SDK_HTTP_PORT_DEFAULT),
        overload_budget_ms: cli.overload_budget_ms.or(file.overload_budget_ms).unwrap_or(16.7),
        overload_after: cli.overload_after.or(file.overload_after).unwrap_or(10.0),
        overload_recover_after: cli.overload_recover_after.or(file.overload_recover_after).unwrap_or(10.0),
    };
    let src = |name: &str| match &cli.config {
        Some(p) => format!("{name} (from the command line, ZONE_{}, or {})", name.to_uppercase(), p.display()),
        None => format!("{name} (from the command line or ZONE_{})", name.to_uppercase()),
    };
    if cfg.threads == 0 || cfg.threads > 256 {
        anyhow::bail!("{}: {} is out of range: use 1 to 256", src("threads"), cfg.threads);
    }
    if cfg.hash_interval == 0 {
        anyhow::bail!("{}: must be at least 1", src("hash_interval"));
    }
    if !(cfg.stats_interval.is_finite() && cfg.stats_interval > 0.0) {
        anyhow::bail!(
            "{}: {} must be a positive number of seconds",
            src("stats_interval"),
            cfg.stats_interval
        );
    }
    if !(cfg.drain_timeout.is_finite() && cfg.drain_timeout >= 0.0) {
        anyhow::bail!(
            "{}: {} must be zero or a positive number of seconds",
            src("drain_timeout"),
            cfg.drain_timeout
        );
    }
    if !["text", "json"].contains(&cfg.log_format.as_str()) {
        anyhow::bail!(
            "{}: {:?} is not a log format: use \"text\" or \"json\"",
            src("log_format"),
            cfg.log_format
        );
    }
    if !["on", "off"].contains(&cfg.telemetry.as_str()) {
        anyhow::bail!("{}: {:?} is not allowed: use \"on\" or \"off\"", src("telemetry"), cfg.telemetry);
    }
    for (name, v) in [
        ("snapshot_full_interval", cfg.snapshot_full_interval),
        ("snapshot_diff_interval", cfg.snapshot_diff_interval),
        ("cold_snapshot_interval", cfg.cold_snapshot_interval),
        ("journal_segment", cfg.journal_segment),
        ("redis_ttl", cfg.redis_ttl),
        ("breaker_open", cfg.breaker_open),
    ] {
        if !(v.is_finite() && v > 0.0) {
            anyhow::bail!("{}: {v} must be a positive number of seconds", src(name));
        }
    }
    if let Err(e) = crate::housekeeping::parse_retention(&cfg.journal_retention) {
        anyhow::bail!("{}: {e}", src("journal_retention"));
    }
    if !["on", "off"].contains(&cfg.persistence.as_str()) {
        anyhow::bail!(
            "{}: {:?} is not allowed: use \"on\" or \"off\"",
            src("persistence"),
            cfg.persistence
        );
    }
    if !["off", "auto", "required"].contains(&cfg.restore.as_str()) {
        anyhow::bail!(
            "{}: {:?} is not allowed: use \"off\", \"auto\" or \"required\"",
            src("restore"),
            cfg.restore
        );
    }
    if cfg.keep_snapshots == 0 || cfg.breaker_failures == 0 || cfg.event_queue == 0 || cfg.backend_timeout_ms == 0 {
        anyhow::bail!(
            "{}, breaker_failures, event_queue and backend_timeout_ms must be at least 1",
            src("keep_snapshots")
        );
    }
    for (name, url, schemes) in [
        ("redis", &cfg.redis, &["redis://", "rediss://"][..]),
        ("postgres", &cfg.postgres, &["postgres://", "postgresql://"][..]),
        ("lobby_redis", &cfg.lobby_redis, &["redis://", "rediss://"][..]),
    ] {
        if let Some(u) = url {
            zone_config::check_url(&src(name), u, schemes)?;
        }
    }
    if cfg.bind != "off" && cfg.bind.parse::<SocketAddr>().is_err() {
        anyhow::bail!(
            "{}: {:?} is not an address: use IP:PORT (e.g. 0.0.0.0:7777) or off",
            src("bind"),
            cfg.bind
        );
    }
    if cfg.snapshot_rate == 0 || cfg.snapshot_rate > 60 || 60 % cfg.snapshot_rate != 0 {
        anyhow::bail!(
            "{}: {} does not divide the 60 Hz tick rate: use 1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30 or 60",
            src("snapshot_rate"),
            cfg.snapshot_rate
        );
    }
    if !(cfg.interest_radius_m.is_finite() && cfg.interest_radius_m >= 0.0 && cfg.interest_radius_m <= 100_000.0) {
        anyhow::bail!(
            "{}: {} must be between 0 and 100000 metres",
            src("interest_radius_m"),
            cfg.interest_radius_m
        );
    }
    if cfg.interest_max == 0 || cfg.interest_max > zone_net::view::VIEW_OBJECTS_MAX {
        anyhow::bail!(
            "{}: {} must be between 1 and {}",
            src("interest_max"),
            cfg.interest_max,
            zone_net::view::VIEW_OBJECTS_MAX
        );
    }
    if !(1..=60).contains(&cfg.interest_refresh) {
        anyhow::bail!(
            "{}: {} must be between 1 (search every snapshot) and 60",
            src("interest_refresh"),
            cfg.interest_refresh
        );
    }
    for (name, v) in [
        ("handshake_rate_per_ip", cfg.handshake_rate_per_ip),
        ("peer_packet_rate", cfg.peer_packet_rate),
    ] {
        if !(v.is_finite() && v > 0.0) {
            anyhow::bail!("{}: {v} must be a positive rate per second", src(name));
        }
    }
    if !(cfg.restored_player_grace.is_finite() && (0.0..=86_400.0).contains(&cfg.restored_player_grace)) {
        anyhow::bail!(
            "{}: {} must be between 0 (restored players leave at once) and 86400 seconds",
            src("restored_player_grace"),
            cfg.restored_player_grace
        );
    }
    if !(1..=zone_net::client::INPUT_BATCH_TICKS_MAX).contains(&cfg.input_batch_ticks) {
        anyhow::bail!(
            "{}: {} must be 1 (an input datagram every tick) to {} ticks",
            src("input_batch_ticks"),
            cfg.input_batch_ticks,
            zone_net::client::INPUT_BATCH_TICKS_MAX
        );
    }
    if cfg.max_clients == Some(0) {
        anyhow::bail!("{}: must be at least 1", src("max_clients"));
    }
    if !["on", "off"].contains(&cfg.viz.as_str()) {
        anyhow::bail!("{}: {:?} is not allowed: use \"on\" or \"off\"", src("viz"), cfg.viz);
    }
    if cfg.viz_rate == 0 || cfg.viz_rate > 60 || 60 % cfg.viz_rate != 0 {
        anyhow::bail!(
            "{}: {} does not divide the 60 Hz tick rate: use 1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30 or 60",
            src("viz_rate"),
            cfg.viz_rate
        );
    }
    if cfg.viz_max_viewers == 0 || cfg.viz_max_viewers > 1000 {
        anyhow::bail!("{}: {} must be between 1 and 1000", src("viz_max_viewers"), cfg.viz_max_viewers);
    }
    if !(cfg.viz_idle_timeout.is_finite() && cfg.viz_idle_timeout >= 1.0) {
        anyhow::bail!("{}: {} must be at least 1 second", src("viz_idle_timeout"), cfg.viz_idle_timeout);
    }
    if cfg.viz_ring_mb > 1 << 20 {
        anyhow::bail!(
            "{}: {} MiB is more than any machine has: use at most 1048576",
            src("viz_ring_mb"),
            cfg.viz_ring_mb
        );
    }
    if cfg.lobby_redis.is_some() {
        match cfg.public_addr.as_deref() {
            None => anyhow::bail!(
                "{}: announcing to a lobby needs the address players connect to: add --public-addr HOST:PORT",
                src("public_addr")
            ),
            Some(a) if a.rsplit_once(':').is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err()) => {
                anyhow::bail!("{}: {a:?} is not HOST:PORT (e.g. 203.0.113.5:7777)", src("public_addr"))
            }
            Some(_) => {}
        }
        if cfg.bind == "off" {
            anyhow::bail!(
                "{}: announcing to a lobby needs the game socket: drop --bind off",
                src("lobby_redis")
            );
        }
    }
    if !["local", "agones"].contains(&cfg.lifecycle.as_str()) {
        anyhow::bail!(
            "{}: {:?} is not a lifecycle: use \"local\" (the lobby's directory) or \"agones\" (the Agones SDK)",
            src("lifecycle"),
            cfg.lifecycle
        );
    }
    if cfg.lifecycle == "agones" {
        if cfg.ticks.is_some() {
            anyhow::bail!(
                "{}: agones runs a real-time server until it is drained: drop --ticks (or use --lifecycle local)",
                src("lifecycle")
            );
        }
        if cfg.bind == "off" {
            anyhow::bail!("{}: agones needs the game socket for players: drop --bind off", src("lifecycle"));
        }
    }
    if cfg.agones_sdk_port == 0 {
        anyhow::bail!(
            "{}: 0 is not a port: use the port Agones sets in AGONES_SDK_HTTP_PORT (default 9358)",
            src("agones_sdk_port")
        );
    }
    if !(cfg.overload_budget_ms.is_finite() && cfg.overload_budget_ms > 0.0 && cfg.overload_budget_ms <= 10_000.0) {
        anyhow::bail!(
            "{}: {} must be between 0 and 10000 milliseconds (16.7 is one 60 Hz tick)",
            src("overload_budget_ms"),
            cfg.overload_budget_ms
        );
    }
    for (name, v) in [
        ("overload_after", cfg.overload_after),
        ("overload_recover_after", cfg.overload_recover_after),
    ] {
        if !(v.is_finite() && v >= 1.0) {
            anyhow::bail!("{}: {v} must be at least 1 second (the tick p99 is measured per second)", src(name));
        }
    }
    if cfg.realtime && cfg.ticks.is_none() {
        anyhow::bail!(
            "{}: realtime only makes sense with ticks (without ticks the server always runs in real time)",
            src("realtime")
        );
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_is_cli_then_file_then_default() {
        let dir = std::env::temp_dir().join(format!("zone-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("server.toml");
        std::fs::write(&f, "seed = 7\nhash_interval = 5\nadmin = \"127.0.0.1:9999\"\n").unwrap();
        let cli = Cli {
            config: Some(f.clone()),
            seed: Some(3),
            ..Default::default()
        };
        let c = resolve(&cli).unwrap();
        assert_eq!(c.seed, 3, "command line beats file");
        assert_eq!(c.hash_interval, 5, "file beats default");
        assert_eq!(c.admin.port(), 9999);
        assert_eq!(c.drain_timeout, 30.0, "default");

        // A file `resolve` refuses: the error names every one of `words`.
        let refused = |toml: &str, words: &[&str]| {
            std::fs::write(&f, toml).unwrap();
            let err = resolve(&cli).unwrap_err().to_string();
            assert!(words.iter().all(|w| err.contains(w)), "{err}");
        };
        refused("lifecycle = \"agonse\"\n", &["lifecycle", "server.toml", "\"agones\""]);
        refused(
            "lifecycle = \"agones\"\noverload_after = 0.5\n",
            &["overload_after", "at least 1 second"],
        );
        std::fs::write(&f, "lifecycle = \"agones\"\n").unwrap();
        let c = resolve(&cli).unwrap();
        assert_eq!((c.lifecycle.as_str(), c.overload().budget_us), ("agones", 16_700));

        assert_eq!(c.interest_refresh, 4, "default");
        refused("interest_refresh = 0\n", &["server.toml", "interest_refresh", "between 1"]);
        assert_eq!(c.restored_player_grace, 60.0, "default");
        refused(
            "restored_player_grace = -1\n",
            &["server.toml", "restored_player_grace", "between 0"],
        );
        assert_eq!(c.input_batch_ticks, 3, "default");
        refused(
            "input_batch_ticks = 0\n",
            &["server.toml", "input_batch_ticks", "1 (an input datagram every tick) to 4"],
        );
        refused("input_batch_ticks = 5\n", &["server.toml", "input_batch_ticks", "to 4 ticks"]);
        std::fs::write(&f, "input_batch_ticks = 1\n").unwrap();
        assert_eq!(resolve(&cli).unwrap().input_batch_ticks, 1, "file");
        refused("seed = 7\nhash_intervl = 5\n", &["server.toml", "line 2", "hash_intervl"]);
        std::fs::remove_dir_all(&dir).ok();
    }
}
