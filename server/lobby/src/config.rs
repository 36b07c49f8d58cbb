//! The lobby's configuration: command-line flags, `ZONE_LOBBY_*` environment variables and a TOML
//! file, merged in that order of precedence over built-in defaults, like `zone-server`'s (the
//! shared parts are in `zone-config`).
//!
//! Every option exists in all three places under the same name (`--session-ttl`,
//! `ZONE_LOBBY_SESSION_TTL`, `session_ttl = …`); the zone servers' join secret is
//! `ZONE_TOKEN_SECRET`, the same variable `zone-server` reads. `--print-config` shows the
//! effective result with secrets masked. Never logs a secret.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::{Deserialize, Serialize};
use zone_matchmaker::Modes;

/// The front door of the zone servers: accounts (PostgreSQL), sessions (Redis), the directory of
/// running zone servers, join tokens minted for the zone a player is sent to, and matchmaking.
///
/// It needs PostgreSQL (--postgres) and Redis (--redis) and refuses to start without them. Zone
/// servers announce themselves with `zone-server --lobby-redis URL --public-addr HOST:PORT`
/// (same Redis, same prefix). HTTP API on --listen: POST /v1/auth/device, /v1/auth/platform,
/// /v1/auth/link, /v1/auth/refresh, /v1/auth/logout; GET /v1/session; GET /v1/zones;
/// POST /v1/zones/{zone_id}/join; matchmaking: POST /v1/match/request, GET and DELETE
/// /v1/match/tickets/{id}, GET /v1/match/rating, and for trusted backends (--service-key)
/// POST /match/request and POST /v1/match/{match_id}/result; GET /openapi.json, /metrics,
/// /healthz, /readyz.
///
/// Matchmaking: every lobby sharing the PostgreSQL schema accepts tickets; one of them (the holder
/// of a PostgreSQL advisory lock) matches, by the modes in --modes, and places each match on a
/// ready zone server from the directory (--match-zone to restrict the zone).
///
/// Every option can also be set in a TOML file (--config, same names with underscores) or in an
/// environment variable (ZONE_LOBBY_ plus the name in capitals). Precedence: command line, then
/// environment, then file, then the default shown.
#[derive(Parser, Debug, Default, Clone)]
#[command(name = "zone-lobby", version, about, long_about)]
pub struct Cli {
    /// TOML file with any of the options below (e.g. `listen = "0.0.0.0:8080"`).
    #[arg(long, value_name = "PATH", env = "ZONE_LOBBY_CONFIG")]
    pub config: Option<PathBuf>,

    /// Print the effective configuration (secrets masked) and exit.
    #[arg(long)]
    pub print_config: bool,

    /// HTTP listener. [default: 127.0.0.1:8080]
    #[arg(long, value_name = "ADDR", env = "ZONE_LOBBY_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// PostgreSQL URL for accounts and refresh tokens, e.g. postgres://postgres@127.0.0.1:5432/test. Required.
    #[arg(long, value_name = "URL", env = "ZONE_LOBBY_POSTGRES")]
    pub postgres: Option<String>,

    /// PostgreSQL schema for the lobby's tables (created if missing). [default: lobby]
    #[arg(long, value_name = "NAME", env = "ZONE_LOBBY_POSTGRES_SCHEMA")]
    pub postgres_schema: Option<String>,

    /// PostgreSQL connections (queries are pipelined on each). [default: 4]
    #[arg(long, value_name = "N", env = "ZONE_LOBBY_POSTGRES_CONNECTIONS")]
    pub postgres_connections: Option<usize>,

    /// Redis URL for sessions and the zone directory, e.g. redis://127.0.0.1:6379/. Required.
    #[arg(long, value_name = "URL", env = "ZONE_LOBBY_REDIS")]
    pub redis: Option<String>,

    /// Prefix of every Redis key; zone servers must announce with the same one (--lobby-prefix). [default: lobby:]
    #[arg(long, value_name = "P", env = "ZONE_LOBBY_REDIS_PREFIX")]
    pub redis_prefix: Option<String>,

    /// Secret that signs session tokens (16 bytes or more). Prefer the environment variable. Required.
    #[arg(long, value_name = "SECRET", env = "ZONE_LOBBY_SESSION_SECRET", hide_env_values = true)]
    pub session_secret: Option<String>,

    /// The zone servers' join-token secret (their --token-secret). Prefer the environment variable. Required.
    #[arg(long, value_name = "SECRET", env = "ZONE_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<String>,

    /// Key of the `dev` platform verifier (proof = hex HMAC-SHA256 of the user id). Without it the `dev` platform is off. [default: none]
    #[arg(long, value_name = "KEY", env = "ZONE_LOBBY_DEV_VERIFIER_KEY", hide_env_values = true)]
    pub dev_verifier_key: Option<String>,

    /// Seconds a session token (and the session in Redis, unless refreshed) lives. [default: 900]
    #[arg(long, value_name = "SECS", env = "ZONE_LOBBY_SESSION_TTL")]
    pub session_ttl: Option<u64>,

    /// Seconds a refresh token lives. [default: 2592000 (30 days)]
    #[arg(long, value_name = "SECS", env = "ZONE_LOBBY_REFRESH_TTL")]
    pub refresh_ttl: Option<u64>,

    /// Seconds a join token (and its seat reservation) lives. [default: 30]
    #[arg(long, value_name = "SECS", env = "ZONE_LOBBY_JOIN_TOKEN_TTL")]
    pub join_token_ttl: Option<u64>,

    /// Tick p99 (over the server's last ten seconds) above which a zone server is listed but not
    /// offered, milliseconds. [default: 16.7]
    #[arg(long, value_name = "MS", env = "ZONE_LOBBY_TICK_BUDGET_MS")]
    pub tick_budget_ms: Option<f64>,

    /// Requests per second from one IP address; twice this is the burst. [default: 100]
    #[arg(long, value_name = "PER_S", env = "ZONE_LOBBY_RATE_PER_IP")]
    pub rate_per_ip: Option<f64>,

    /// Authenticated requests per second for one account; twice this is the burst. [default: 10]
    #[arg(long, value_name = "PER_S", env = "ZONE_LOBBY_RATE_PER_ACCOUNT")]
    pub rate_per_account: Option<f64>,

    /// Largest request body, bytes; larger ones get 413. [default: 16384]
    #[arg(long, value_name = "BYTES", env = "ZONE_LOBBY_BODY_LIMIT")]
    pub body_limit: Option<usize>,

    /// Milliseconds one PostgreSQL or Redis operation may take before the request gets 503. [default: 2000]
    #[arg(long, value_name = "MS", env = "ZONE_LOBBY_BACKEND_TIMEOUT_MS")]
    pub backend_timeout_ms: Option<u64>,

    /// Matchmaking modes file (TOML; docs/MATCHMAKING.md). [default: assets/match/modes.toml if it exists, else the built-in copy of it]
    #[arg(long, value_name = "FILE", env = "ZONE_LOBBY_MODES")]
    pub modes: Option<PathBuf>,

    /// Key trusted backends send as `Authorization: Bearer KEY` for POST /match/request {player_id, rating} and match results. Without it those routes are off. Prefer the environment variable. [default: none]
    #[arg(long, value_name = "KEY", env = "ZONE_LOBBY_SERVICE_KEY", hide_env_values = true)]
    pub service_key: Option<String>,

    /// Zone whose servers take matches. [default: any zone in the directory]
    #[arg(long, value_name = "ZONE_ID", env = "ZONE_LOBBY_MATCH_ZONE")]
    pub match_zone: Option<String>,

    /// Milliseconds between matching passes on the leader (new tickets are read before each pass). [default: 50]
    #[arg(long, value_name = "MS", env = "ZONE_LOBBY_MATCH_PASS_MS")]
    pub match_pass_ms: Option<u64>,

    /// Log format: json (for machines) or text (for people). [default: json]
    #[arg(long, value_parser = ["text", "json"], env = "ZONE_LOBBY_LOG_FORMAT")]
    pub log_format: Option<String>,

    /// Log filter, RUST_LOG syntax; RUST_LOG wins when set. [default: info]
    #[arg(long, value_name = "FILTER", env = "ZONE_LOBBY_LOG_FILTER")]
    pub log_filter: Option<String>,
}

/// The same options as a TOML file. Unknown keys are errors.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    postgres: Option<String>,
    postgres_schema: Option<String>,
    postgres_connections: Option<usize>,
    redis: Option<String>,
    redis_prefix: Option<String>,
    session_secret: Option<String>,
    token_secret: Option<String>,
    dev_verifier_key: Option<String>,
    session_ttl: Option<u64>,
    refresh_ttl: Option<u64>,
    join_token_ttl: Option<u64>,
    tick_budget_ms: Option<f64>,
    rate_per_ip: Option<f64>,
    rate_per_account: Option<f64>,
    body_limit: Option<usize>,
    backend_timeout_ms: Option<u64>,
    modes: Option<PathBuf>,
    service_key: Option<String>,
    match_zone: Option<String>,
    match_pass_ms: Option<u64>,
    log_format: Option<String>,
    log_filter: Option<String>,
}

/// The effective configuration.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct LobbyConfig {
    pub listen: SocketAddr,
    pub postgres: String,
    pub postgres_schema: String,
    pub postgres_connections: usize,
    pub redis: String,
    pub redis_prefix: String,
    pub session_secret: String,
    pub token_secret: String,
    pub dev_verifier_key: Option<String>,
    pub session_ttl: u64,
    pub refresh_ttl: u64,
    pub join_token_ttl: u64,
    pub tick_budget_ms: f64,
    pub rate_per_ip: f64,
    pub rate_per_account: f64,
    pub body_limit: usize,
    pub backend_timeout_ms: u64,
    /// The modes file read, or "built-in".
    pub modes: String,
    pub service_key: Option<String>,
    pub match_zone: Option<String>,
    pub match_pass_ms: u64,
    pub log_format: String,
    pub log_filter: String,
    /// The modes, parsed.
    #[serde(skip)]
    pub match_modes: Modes,
}

/// Keys whose values `--print-config` masks.
pub const SECRET_KEYS: [&str; 4] = ["session_secret", "token_secret", "dev_verifier_key", "service_key"];

/// The modes file's default path, and the copy built in for when it is not there.
pub const MODES_DEFAULT: &str = "assets/match/modes.toml";
pub const MODES_BUILT_IN: &str = include_str!("../../../assets/match/modes.toml");

/// Reads and checks a modes file; errors name the file, the field and the fix.
pub fn load_modes(path: Option<&Path>) -> anyhow::Result<(String, Modes)> {
    let (name, text) = match path {
        Some(p) => (
            p.display().to_string(),
            std::fs::read_to_string(p).map_err(|e| {
                anyhow::anyhow!(
                    "{}: cannot read the modes file: {e} (fix: pass an existing file to --modes, or leave --modes out for the built-in modes)",
                    p.display()
                )
            })?,
        ),
        None if Path::new(MODES_DEFAULT).is_file() => (
            MODES_DEFAULT.to_string(),
            std::fs::read_to_string(MODES_DEFAULT).map_err(|e| anyhow::anyhow!("{MODES_DEFAULT}: cannot read the modes file: {e}"))?,
        ),
        None => ("built-in".to_string(), MODES_BUILT_IN.to_string()),
    };
    let modes = Modes::from_toml(&name, &text)?;
    if modes.modes.is_empty() {
        anyhow::bail!("{name}: no [modes.NAME] table (fix: add at least one mode, see docs/MATCHMAKING.md)");
    }
    Ok((name, modes))
}

impl LobbyConfig {
    /// The effective configuration as TOML, with secrets masked.
    pub fn to_masked_toml(&self) -> String {
        let text = toml::to_string(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"));
        zone_config::mask_keys(&text, &SECRET_KEYS)
    }
    pub fn backend_timeout(&self) -> Duration {
        Duration::from_millis(self.backend_timeout_ms)
    }
    pub fn tick_budget_us(&self) -> u32 {
        (self.tick_budget_ms * 1000.0).round() as u32
    }

    /// A configuration for tests: the given services, fixed secrets, a free port.
    pub fn for_tests(postgres: &str, schema: &str, redis: &str, prefix: &str) -> LobbyConfig {
        LobbyConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            postgres: postgres.into(),
            postgres_schema: schema.into(),
            postgres_connections: 2,
            redis: redis.into(),
            redis_prefix: prefix.into(),
            session_secret: "test session secret, 32 bytes..".into(),
            token_secret: "test token secret".into(),
            dev_verifier_key: Some("dev key".into()),
            session_ttl: 900,
            refresh_ttl: 30 * 86_400,
            join_token_ttl: 30,
            tick_budget_ms: 16.7,
            rate_per_ip: 100_000.0,
            rate_per_account: 100_000.0,
            body_limit: 16_384,
            backend_timeout_ms: 2_000,
            modes: "built-in".into(),
            service_key: Some("test service key".into()),
            match_zone: None,
            match_pass_ms: 20,
            log_format: "text".into(),
            log_filter: "warn".into(),
            match_modes: Modes::from_toml("built-in", MODES_BUILT_IN).unwrap_or_default(),
        }
    }
}

/// Merges command line (and environment, which clap has already folded in), file and defaults.
pub fn resolve(cli: &Cli) -> anyhow::Result<LobbyConfig> {
    let file: FileConfig = match &cli.config {
        Some(p) => zone_config::load_toml(
            p,
            "every option of `zone-lobby --help` can be set here, with underscores, e.g. `session_ttl = 900`",
        )?,
        None => FileConfig::default(),
    };
    let src = |name: &str| {
        let env = if name == "token_secret" {
            "ZONE_TOKEN_SECRET".to_string()
        } else {
            format!("ZONE_LOBBY_{}", name.to_uppercase())
        };
        match &cli.config {
            Some(p) => format!("{name} (--{}, {env}, or {})", name.replace('_', "-"), p.display()),
            None => format!("{name} (--{} or {env})", name.replace('_', "-")),
        }
    };
    let required = |v: Option<String>, name: &str, example: &str| -> anyhow::Result<String> {
        match v.filter(|s| !s.trim().is_empty()) {
            Some(s) => Ok(s),
            None => anyhow::bail!("{} is required: {example}", src(name)),
        }
    };
    let mut cfg = LobbyConfig {
        listen: cli
            .listen
            .or(file.listen)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
        postgres: required(
            cli.postgres.clone().or(file.postgres),
            "postgres",
            "the lobby keeps accounts in PostgreSQL, e.g. --postgres postgres://postgres@127.0.0.1:5432/test",
        )?,
        postgres_schema: cli
            .postgres_schema
            .clone()
            .or(file.postgres_schema)
            .unwrap_or_else(|| "lobby".into()),
        postgres_connections: cli.postgres_connections.or(file.postgres_connections).unwrap_or(4),
        redis: required(
            cli.redis.clone().or(file.redis),
            "redis",
            "the lobby keeps sessions and the zone directory in Redis, e.g. --redis redis://127.0.0.1:6379/",
        )?,
        redis_prefix: cli.redis_prefix.clone().or(file.redis_prefix).unwrap_or_else(|| "lobby:".into()),
        session_secret: required(
            cli.session_secret.clone().or(file.session_secret),
            "session_secret",
            "set ZONE_LOBBY_SESSION_SECRET to 16 or more random bytes (e.g. `openssl rand -hex 32`)",
        )?,
        token_secret: required(
            cli.token_secret.clone().or(file.token_secret),
            "token_secret",
            "set ZONE_TOKEN_SECRET to the zone servers' join-token secret",
        )?,
        dev_verifier_key: cli.dev_verifier_key.clone().or(file.dev_verifier_key).filter(|s| !s.is_empty()),
        session_ttl: cli.session_ttl.or(file.session_ttl).unwrap_or(900),
        refresh_ttl: cli.refresh_ttl.or(file.refresh_ttl).unwrap_or(30 * 86_400),
        join_token_ttl: cli.join_token_ttl.or(file.join_token_ttl).unwrap_or(30),
        tick_budget_ms: cli.tick_budget_ms.or(file.tick_budget_ms).unwrap_or(16.7),
        rate_per_ip: cli.rate_per_ip.or(file.rate_per_ip).unwrap_or(100.0),
        rate_per_account: cli.rate_per_account.or(file.rate_per_account).unwrap_or(10.0),
        body_limit: cli.body_limit.or(file.body_limit).unwrap_or(16_384),
        backend_timeout_ms: cli.backend_timeout_ms.or(file.backend_timeout_ms).unwrap_or(2_000),
        modes: String::new(),
        service_key: cli.service_key.clone().or(file.service_key).filter(|s| !s.is_empty()),
        match_zone: cli.match_zone.clone().or(file.match_zone).filter(|s| !s.is_empty()),
        match_pass_ms: cli.match_pass_ms.or(file.match_pass_ms).unwrap_or(50),
        log_format: cli.log_format.clone().or(file.log_format).unwrap_or_else(|| "json".into()),
        log_filter: cli.log_filter.clone().or(file.log_filter).unwrap_or_else(|| "info".into()),
        match_modes: Modes::default(),
    };
    let (modes_name, modes) =
        load_modes(cli.modes.as_deref().or(file.modes.as_deref())).map_err(|e| anyhow::anyhow!("{} refused: {e:#}", src("modes")))?;
    cfg.modes = modes_name;
    cfg.match_modes = modes;
    if let Some(k) = &cfg.service_key
        && k.len() < 16
    {
        anyhow::bail!("{}: too short ({} bytes): use 16 or more random bytes", src("service_key"), k.len());
    }
    if !(1..=10_000).contains(&cfg.match_pass_ms) {
        anyhow::bail!("{}: {} is out of range: use 1 to 10000", src("match_pass_ms"), cfg.match_pass_ms);
    }
    zone_config::check_url(&src("postgres"), &cfg.postgres, &["postgres://", "postgresql://"])?;
    zone_config::check_url(&src("redis"), &cfg.redis, &["redis://", "rediss://"])?;
    if cfg.session_secret.len() < 16 {
        anyhow::bail!(
            "{}: too short ({} bytes): use 16 or more random bytes",
            src("session_secret"),
            cfg.session_secret.len()
        );
    }
    if cfg.postgres_schema.is_empty() || !cfg.postgres_schema.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        anyhow::bail!(
            "{}: {:?} must be letters, digits and _",
            src("postgres_schema"),
            cfg.postgres_schema
        );
    }
    if cfg.postgres_connections == 0 || cfg.postgres_connections > 64 {
        anyhow::bail!(
            "{}: {} is out of range: use 1 to 64",
            src("postgres_connections"),
            cfg.postgres_connections
        );
    }
    for (name, v) in [
        ("session_ttl", cfg.session_ttl),
        ("refresh_ttl", cfg.refresh_ttl),
        ("join_token_ttl", cfg.join_token_ttl),
        ("backend_timeout_ms", cfg.backend_timeout_ms),
    ] {
        if v == 0 {
            anyhow::bail!("{}: must be at least 1", src(name));
        }
    }
    for (name, v) in [
        ("tick_budget_ms", cfg.tick_budget_ms),
        ("rate_per_ip", cfg.rate_per_ip),
        ("rate_per_account", cfg.rate_per_account),
    ] {
        if !(v.is_finite() && v > 0.0) {
            anyhow::bail!("{}: {v} must be a positive number", src(name));
        }
    }
    if cfg.body_limit < 256 {
        anyhow::bail!(
            "{}: {} bytes is too small for any request: use 256 or more",
            src("body_limit"),
            cfg.body_limit
        );
    }
    if !["text", "json"].contains(&cfg.log_format.as_str()) {
        anyhow::bail!(
            "{}: {:?} is not a log format: use \"text\" or \"json\"",
            src("log_format"),
            cfg.log_format
        );
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Cli {
        Cli {
            postgres: Some("postgres://u:pw@127.0.0.1/test".into()),
            redis: Some("redis://127.0.0.1/".into()),
            session_secret: Some("0123456789abcdef".into()),
            token_secret: Some("zone".into()),
            ..Cli::default()
        }
    }

    #[test]
    fn required_options_are_named() {
        let e = resolve(&Cli { redis: None, ..base() }).unwrap_err().to_string();
        assert!(
            e.contains("redis") && e.contains("ZONE_LOBBY_REDIS") && e.contains("required"),
            "{e}"
        );
        let e = resolve(&Cli { postgres: None, ..base() }).unwrap_err().to_string();
        assert!(e.contains("--postgres") && e.contains("required"), "{e}");
        let e = resolve(&Cli {
            token_secret: None,
            ..base()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("ZONE_TOKEN_SECRET"), "{e}");
        let e = resolve(&Cli {
            session_secret: Some("short".into()),
            ..base()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("too short"), "{e}");
    }

    #[test]
    fn precedence_and_masking() {
        let dir = std::env::temp_dir().join(format!("zone-lobby-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("lobby.toml");
        std::fs::write(&f, "session_ttl = 60\njoin_token_ttl = 5\n").unwrap();
        let c = resolve(&Cli {
            config: Some(f.clone()),
            session_ttl: Some(120),
            ..base()
        })
        .unwrap();
        assert_eq!((c.session_ttl, c.join_token_ttl, c.refresh_ttl), (120, 5, 30 * 86_400));
        let shown = c.to_masked_toml();
        assert!(
            !shown.contains("0123456789abcdef") && !shown.contains(":pw@") && shown.contains("token_secret = \"***\""),
            "{shown}"
        );
        std::fs::write(&f, "sesion_ttl = 60\n").unwrap();
        let e = resolve(&Cli { config: Some(f), ..base() }).unwrap_err().to_string();
        assert!(e.contains("lobby.toml") && e.contains("line 1") && e.contains("sesion_ttl"), "{e}");
        // A bad modes file is refused, naming the file.
        let m = dir.join("modes.toml");
        std::fs::write(&m, "[modes.duel]\nteams = \"two\"\n").unwrap();
        let e = resolve(&Cli { modes: Some(m), ..base() }).unwrap_err().to_string();
        assert!(e.contains("modes.toml") && e.contains("teams"), "{e}");
        let e = resolve(&Cli {
            modes: Some(dir.join("missing.toml")),
            ..base()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("missing.toml") && e.contains("--modes"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
