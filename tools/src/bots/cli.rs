//! `zone-bots`' command line: the flags, their units and defaults, and the parsers for durations
//! (`30s`, `2m`, `500ms`, `1h`, or plain seconds), server addresses and rates.
//!
//! Parsing only: never opens a socket (a server name is resolved once, here, through the system
//! resolver) and never starts the swarm.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::behavior::Behavior;

/// Runs N bot clients against a zone server over UDP, from one process, and reports what they
/// measured (join failures, snapshot and byte rates per bot, round-trip times, decode errors, and
/// this process's own CPU and memory).
///
/// Every bot mints its own join token with the shared secret (or, with --lobby, logs in to a
/// zone-lobby with a device id and asks it to join the zone, then connects where the lobby sends
/// it with the token it got), joins, sends inputs as often as the server's Welcome asks (see --input-batch-ticks),
/// decodes and acknowledges snapshots, and leaves with a Goodbye at the end. Progress is printed
/// on stderr once a second. Exit status: 0 when every bot joined and no snapshot failed to
/// decode, 1 otherwise (the reason is printed), 2 for a bad command line.
#[derive(Parser, Debug, Clone)]
#[command(name = "zone-bots", version, about, long_about)]
pub struct Cli {
    /// The zone server's UDP address, HOST:PORT (e.g. 127.0.0.1:7777). Not used with --lobby
    /// (the lobby says where to connect).
    #[arg(long, value_parser = parse_server, required_unless_present = "lobby")]
    pub server: Option<SocketAddr>,

    /// A zone-lobby's URL (http://HOST:PORT): each bot logs in with the device id
    /// DEVICE_PREFIX + its number, asks to join --zone-id, and connects with the join token it
    /// is given. The report adds login and join-request latency quantiles.
    #[arg(long, value_name = "URL", conflicts_with = "server")]
    pub lobby: Option<String>,

    /// With --lobby: instead of joining --zone-id, every bot asks for a match in this mode
    /// (`POST /v1/match/request`, then long polls on its ticket), joins the zone server its match
    /// is placed on with the join token it is given, plays until --duration is over, and, with
    /// --service-key, one bot of each match reports the result (`POST /v1/match/{id}/result`).
    /// The report adds the bots matched, their waiting time p50/p99 and the results reported.
    #[arg(long = "match", value_name = "MODE", requires = "lobby", conflicts_with = "server")]
    pub match_mode: Option<String>,

    /// With --match: the region to queue in (none by default: the lobby's "no region").
    #[arg(long, requires = "match_mode", conflicts_with = "server")]
    pub region: Option<String>,

    /// With --match: how long a bot waits for its match before giving up (then it cancels its
    /// ticket and counts as `match_timeout`). Same formats as --duration.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub match_wait: Duration,

    /// With --match: the lobby's service key (its --service-key). When given, the bot of each
    /// match with the smallest account id reports a result once it has played (the winning team
    /// chosen from the match id and --seed), so that ratings move; without it, none is reported.
    #[arg(long, env = "ZONE_LOBBY_SERVICE_KEY", hide_env_values = true, requires = "match_mode")]
    pub service_key: Option<String>,

    /// With --lobby: the bots' device ids are this plus the bot's number (from --first-player-id).
    #[arg(long, default_value = "bot-")]
    pub device_prefix: String,

    /// Number of bots to run.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub count: u32,

    /// How long the run lasts, from the start of the first join: `30s`, `2m`, `500ms`, `1h`, or
    /// plain seconds. At the end every bot sends Goodbye and the report is written.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,

    /// The HS256 secret join tokens are signed with (the server's token secret). Not used with --lobby.
    #[arg(long, env = "ZONE_TOKEN_SECRET", hide_env_values = true, required_unless_present = "lobby")]
    pub token_secret: Option<String>,

    /// The zone id written into the tokens; must equal the server's zone id.
    #[arg(long, default_value = "demo")]
    pub zone_id: String,

    /// What the bots do once joined.
    #[arg(long, value_enum, default_value_t = Behavior::Wander)]
    pub behavior: Behavior,

    /// Ticks of input per input datagram, 1 to 4: 1 sends a batch every tick (60 Hz), 3 every
    /// third tick (20 Hz) with an input for each of its three ticks. Fewer datagrams for the bots
    /// and the server; the bot's intent is sampled less often. The report names what the bots
    /// sent. [default: what the server's Welcome asks for (zone-server --input-batch-ticks)]
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..=4))]
    pub input_batch_ticks: Option<u32>,

    /// Player id of the first bot; bot k uses this plus k, so processes with disjoint ranges can
    /// run side by side (a player id joining twice replaces the first session).
    #[arg(long, default_value_t = 1_000_000)]
    pub first_player_id: u64,

    /// Joins started per second (the bots' start times are spread evenly at this rate).
    #[arg(long, default_value_t = 200.0, value_parser = parse_rate)]
    pub ramp_per_s: f64,

    /// Lifetime of the minted tokens (same formats as --duration).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub token_ttl: Duration,

    /// Seed for the behaviours' randomness (each bot mixes in its player id).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Write the pretty-printed JSON report to this file (without it, the report goes to stdout).
    #[arg(long)]
    pub report: Option<PathBuf>,

    /// With --lobby: a bot whose server drains (a DRAINING notice, a `draining` reject, or a
    /// server gone silent) asks the lobby again and must be playing on another server within
    /// this long, or it counts as a failed move (exit status 1). The report counts moves, their
    /// times and failures. 0 turns moving off (the bot ends, as without a lobby).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub rejoin_within: Duration,

    /// With --lobby (not --match): how long a bot keeps asking to join when the lobby cannot
    /// place it yet: `no_room` (every server of the zone full, starting, draining or overloaded),
    /// `unknown_zone` (no server of the zone announced yet), rate limited (429) or unavailable
    /// (5xx). A lobby that cannot be reached, or a failed login, still fails the bot at once. It
    /// asks again after 100 ms, doubling to 1 s, until this has passed (and never past
    /// --duration); the progress line and the report count the retries (`lobby_join_retries`).
    /// Without it the first such answer is a failed join, which is what a capacity measurement
    /// wants; a soak run started while its fleet warms up wants some seconds.
    // (`requires` alone lets `--server` through: clap does not require an argument that
    // conflicts with one given.)
    #[arg(long, value_parser = parse_duration, requires = "lobby", conflicts_with_all = ["match_mode", "server"])]
    pub join_wait: Option<Duration>,
}

/// `30s`, `2m`, `500ms`, `1h`, `1.5s` or plain (possibly fractional) seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration: use e.g. 30s, 2m, 500ms, 1h or plain seconds"))?;
    let seconds_per_unit = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" | "min" => 60.0,
        "h" => 3_600.0,
        other => return Err(format!("unknown unit {other:?} in {text:?}: use ms, s, m or h")),
    };
    Duration::try_from_secs_f64(value * seconds_per_unit).map_err(|e| format!("{text:?}: {e}"))
}

/// HOST:PORT, resolved once; the first address wins.
pub fn parse_server(text: &str) -> Result<SocketAddr, String> {
    text.to_socket_addrs()
        .map_err(|e| format!("{text:?} is not a HOST:PORT address: {e}"))?
        .next()
        .ok_or_else(|| format!("{text:?} resolves to no address"))
}

/// A strictly positive, finite rate.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("{text:?} is not a positive number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3_600)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1_500)));
        for bad in ["", "s", "10x", "-3s", "1..2s", "ms5"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn command_line() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "zone-bots",
            "--server",
            "127.0.0.1:7777",
            "--count",
            "3",
            "--token-secret",
            "s",
            "--behavior",
            "chase",
        ])
        .unwrap();
        assert_eq!(cli.count, 3);
        assert_eq!(cli.behavior, Behavior::Chase);
        assert_eq!(cli.duration, Duration::from_secs(30));
        assert!(Cli::try_parse_from(["zone-bots", "--server", "127.0.0.1:7777", "--count", "0", "--token-secret", "s"]).is_err());
        let lobby = Cli::try_parse_from(["zone-bots", "--lobby", "http://127.0.0.1:8080", "--count", "2"]).unwrap();
        assert_eq!(
            (lobby.lobby.as_deref(), lobby.server, lobby.token_secret.as_deref()),
            (Some("http://127.0.0.1:8080"), None, None)
        );
        assert!(Cli::try_parse_from(["zone-bots", "--count", "2"]).is_err());
        assert_eq!(lobby.join_wait, None, "a first no_room is a failed join unless asked");
        let waiting = Cli::try_parse_from(["zone-bots", "--lobby", "http://127.0.0.1:8080", "--join-wait", "30s"]).unwrap();
        assert_eq!(waiting.join_wait, Some(Duration::from_secs(30)));
        for without_lobby_join in [
            &[
                "zone-bots",
                "--server",
                "127.0.0.1:7777",
                "--token-secret",
                "s",
                "--join-wait",
                "5s",
            ][..],
            &[
                "zone-bots",
                "--lobby",
                "http://127.0.0.1:8080",
                "--match",
                "duel",
                "--join-wait",
                "5s",
            ][..],
        ] {
            assert!(Cli::try_parse_from(without_lobby_join).is_err(), "{without_lobby_join:?}");
        }
        let m = Cli::try_parse_from([
            "zone-bots",
            "--lobby",
            "http://127.0.0.1:8080",
            "--match",
            "duel",
            "--service-key",
            "k",
        ])
        .unwrap();
        assert_eq!((m.match_mode.as_deref(), m.service_key.as_deref()), (Some("duel"), Some("k")));
        assert_eq!(m.match_wait, Duration::from_secs(60));
        assert!(Cli::try_parse_from(["zone-bots", "--server", "127.0.0.1:7777", "--token-secret", "s", "--match", "duel"]).is_err());
        assert!(Cli::try_parse_from(["zone-bots", "--server", "127.0.0.1:7777", "--token-secret", "s", "--region", "eu"]).is_err());
        assert!(parse_rate("0").is_err() && parse_rate("nan").is_err() && parse_rate("2.5") == Ok(2.5));
    }
}
