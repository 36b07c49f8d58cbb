//! # zone-lobby: the front door
//!
//! A second service beside the zone servers: accounts bound to platform identities (PostgreSQL),
//! one session per account (Redis, with indexes by account and by zone that reads repair), the
//! directory of running zone servers (announced by them into Redis, see `zone-directory`), and
//! join tokens minted for the instance a player is sent to, with a seat reserved atomically.
//!
//! Pure rules, with time passed in and no IO, tested without sockets: [`session_token`],
//! [`refresh`], [`choose`], [`ratelimit`], [`verifier`], [`join`], [`ratings`]. IO: [`accounts`]
//! (PostgreSQL), [`sessions`] (Redis), [`app`] (the flows), [`http`] (axum), [`server`] (start
//! and stop), [`client`] (a small HTTP client for bots, tests and benchmarks).
//!
//! Matchmaking (the algorithm is the pure `zone-matchmaker` crate): [`queue`] (the durable queue,
//! matches and ratings in PostgreSQL), [`matching`] (leader, waiters, seats, rooms in Redis),
//! [`match_http`] (the API).
//!
//! Never log a token, a proof or a secret; never use `KEYS` or `SCAN`.

pub mod accounts;
pub mod app;
pub mod autoscale;
pub mod choose;
pub mod client;
pub mod config;
pub mod error;
pub mod http;
pub mod join;
pub mod match_http;
pub mod matching;
mod pg_pool;
pub mod queue;
pub mod ratelimit;
pub mod ratings;
pub mod refresh;
pub mod server;
pub mod session_token;
pub mod sessions;
pub mod verifier;

#[cfg(test)]
mod guard {
    /// The pure modules: no IO, no clock, no randomness of their own (time and random bytes are
    /// passed in). A test module's own use of a runtime is allowed below its `#[cfg(test)]`.
    const PURE: [(&str, &str); 7] = [
        ("ratings.rs", include_str!("ratings.rs")),
        ("session_token.rs", include_str!("session_token.rs")),
        ("refresh.rs", include_str!("refresh.rs")),
        ("choose.rs", include_str!("choose.rs")),
        ("ratelimit.rs", include_str!("ratelimit.rs")),
        ("verifier.rs", include_str!("verifier.rs")),
        ("join.rs", include_str!("join.rs")),
    ];
    const FORBIDDEN: [&str; 10] = [
        "SystemTime",
        "Instant",
        "tokio::",
        "redis::",
        "tokio_postgres",
        "std::net",
        "std::fs",
        "getrandom",
        "thread::",
        "axum",
    ];

    #[test]
    fn pure_modules_do_no_io() {
        for (name, text) in PURE {
            let code = text.split("#[cfg(test)]").next().unwrap_or(text);
            for f in FORBIDDEN {
                assert!(
                    !code.contains(f),
                    "{name} uses {f}: the lobby's rules take time and randomness as arguments and do no IO"
                );
            }
        }
    }
}
