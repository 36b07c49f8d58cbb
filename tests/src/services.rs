//! Tests that need an outside service (PostgreSQL, Redis, a program such as `redis-server`), run
//! so that a missing service shows as **ignored, with the reason**, in the test runner's summary,
//! never as a pass.
//!
//! Such a test file sets `harness = false` for its `[[test]]` target and ends in
//! [`ServiceTests::run`] (a `libtest-mimic` harness, which takes the usual `cargo test` arguments:
//! filters, `--list`, `--nocapture`, `--test-threads`). Each test names what it needs; before it
//! runs, each need is probed once per process (a TCP connect to the URL's host and port, or the
//! program's `--version`), and a test whose need is missing is reported as
//! `ignored, needs Redis at 127.0.0.1:6379: connection refused (...)`.
//!
//! URLs come from `REDIS_URL` and `DATABASE_URL`, and default to the standard local addresses
//! ([`REDIS_URL_DEFAULT`], [`DATABASE_URL_DEFAULT`]) when those are unset, so a plain
//! `cargo test` on a machine with the services runs everything.
//!
//! This module never starts or changes a service; it only looks.

use std::net::{TcpStream, ToSocketAddrs};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use libtest_mimic::{Arguments, Completion, Failed, Trial};

/// Used when `REDIS_URL` is unset.
pub const REDIS_URL_DEFAULT: &str = "redis://127.0.0.1:6379/";
/// Used when `DATABASE_URL` is unset.
pub const DATABASE_URL_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/test";
/// How long a probe's TCP connect may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Something a test needs from outside the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// A Redis server at [`redis_url`].
    Redis,
    /// A PostgreSQL server at [`database_url`].
    Postgres,
    /// A program on `PATH` that answers `--version` (e.g. `redis-server`, `psql`).
    Program(&'static str),
}

/// `REDIS_URL`, or [`REDIS_URL_DEFAULT`].
pub fn redis_url() -> String {
    env_or("REDIS_URL", REDIS_URL_DEFAULT)
}

/// `DATABASE_URL`, or [`DATABASE_URL_DEFAULT`].
pub fn database_url() -> String {
    env_or("DATABASE_URL", DATABASE_URL_DEFAULT)
}

fn env_or(var: &str, default: &str) -> String {
    std::env::var(var)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_string())
}

/// `host:port` of a `scheme://[user[:password]@]host[:port][/...]` URL, with `default_port`.
pub fn host_port(url: &str, default_port: u16) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    if host_port.is_empty() {
        return None;
    }
    // A bracketed IPv6 literal keeps its colons.
    let has_port = match host_port.rfind(']') {
        Some(end) => host_port[end..].contains(':'),
        None => host_port.contains(':'),
    };
    Some(if has_port {
        host_port.to_string()
    } else {
        format!("{host_port}:{default_port}")
    })
}

/// Each service probed so far, and why it is missing (`None`: it is there).
type Probed = Mutex<Vec<(Need, Option<String>)>>;

/// Why `need` is missing, or `None` when it is there. Probed once per process.
pub fn missing(need: Need) -> Option<String> {
    static CACHE: OnceLock<Probed> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(Vec::new()));
    if let Some((_, why)) = cache.lock().unwrap().iter().find(|(n, _)| *n == need) {
        return why.clone();
    }
    let why = probe(need);
    cache.lock().unwrap().push((need, why.clone()));
    why
}

fn probe(need: Need) -> Option<String> {
    match need {
        Need::Redis => probe_tcp("Redis", "REDIS_URL", &redis_url(), 6379),
        Need::Postgres => probe_tcp("PostgreSQL", "DATABASE_URL", &database_url(), 5432),
        Need::Program(program) => {
            let ok = Command::new(program)
                .arg("--version")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            (!ok).then(|| format!("needs the program `{program}` on PATH (CI installs it)"))
        }
    }
}

fn probe_tcp(what: &str, var: &str, url: &str, default_port: u16) -> Option<String> {
    let Some(addr) = host_port(url, default_port) else {
        return Some(format!("needs {what}, but {var}={url} names no host"));
    };
    let source = if std::env::var(var).is_ok_and(|v| !v.trim().is_empty()) {
        format!("from {var}")
    } else {
        format!("the default; set {var} to change it")
    };
    let addrs = match addr.to_socket_addrs() {
        Ok(addrs) => addrs.collect::<Vec<_>>(),
        Err(e) => return Some(format!("needs {what} at {addr} ({source}): {e}")),
    };
    let mut last = String::from("no address");
    for a in addrs {
        match TcpStream::connect_timeout(&a, PROBE_TIMEOUT) {
            // A connect to a closed local port in the ephemeral range can be given that very
            // port as its source and "succeed" by connecting to itself: nothing listens there.
            Ok(s) if matches!((s.local_addr(), s.peer_addr()), (Ok(l), Ok(p)) if l == p) => {
                last = "connection refused (the connect reached itself; nothing listens)".into()
            }
            Ok(_) => return None,
            Err(e) => last = e.to_string(),
        }
    }
    Some(format!("needs {what} at {addr} ({source}): {last}"))
}

/// A test file's tests, run by [`ServiceTests::run`].
#[derive(Default)]
pub struct ServiceTests {
    trials: Vec<Trial>,
}

impl ServiceTests {
    pub fn new() -> Self {
        Self::default()
    }

    /// A test that needs nothing from outside.
    pub fn test(self, name: &str, body: fn()) -> Self {
        self.needs(name, &[], body)
    }

    /// A test that needs `needs`; ignored, with the reason, when one of them is missing. A panic
    /// in `body` fails the test, as with `#[test]`.
    pub fn needs(mut self, name: &str, needs: &[Need], body: fn()) -> Self {
        let needs = needs.to_vec();
        self.trials.push(Trial::ignorable_test(name, move || {
            let why: Vec<String> = needs.iter().filter_map(|n| missing(*n)).collect();
            if !why.is_empty() {
                return Ok(Completion::ignored_with(why.join("; ")));
            }
            std::panic::catch_unwind(body).map(|()| Completion::Completed).map_err(|panic| {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "the test panicked".to_string());
                Failed::from(message)
            })
        }));
        self
    }

    /// Runs the tests as `cargo test` asked, prints the summary and exits (1 if any failed).
    pub fn run(self) -> ! {
        libtest_mimic::run(&Arguments::from_args(), self.trials).exit()
    }
}

/// Runs a future to completion on a fresh current-thread tokio runtime with IO and timers, as
/// `#[tokio::test]` would.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("cannot build a tokio runtime")
        .block_on(future)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_of_urls() {
        assert_eq!(host_port("redis://127.0.0.1:6379/", 1).as_deref(), Some("127.0.0.1:6379"));
        assert_eq!(host_port("redis://localhost", 6379).as_deref(), Some("localhost:6379"));
        assert_eq!(
            host_port("postgres://postgres:secret@db.example:5433/test?sslmode=disable", 5432).as_deref(),
            Some("db.example:5433")
        );
        assert_eq!(
            host_port("postgres://postgres@127.0.0.1/test", 5432).as_deref(),
            Some("127.0.0.1:5432")
        );
        assert_eq!(host_port("redis://[::1]:7000/0", 6379).as_deref(), Some("[::1]:7000"));
        assert_eq!(host_port("redis://[::1]/0", 6379).as_deref(), Some("[::1]:6379"));
        assert_eq!(host_port("not a url", 1), None);
        assert_eq!(host_port("redis:///0", 1), None);
    }

    #[test]
    fn a_closed_port_is_missing_with_its_address() {
        // A port freed here can be taken by another process's listener before the probe (CI runs
        // test binaries beside other work that binds ephemeral ports): then try another one.
        for _ in 0..20 {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            drop(listener);
            if let Some(why) = probe_tcp("Redis", "ZONE_TESTS_UNSET_VAR", &format!("redis://{addr}/"), 6379) {
                assert!(why.contains(&addr.to_string()), "{why}");
                assert!(why.starts_with("needs Redis at"), "{why}");
                return;
            }
        }
        panic!("20 freed ports in a row were taken before the probe");
    }

    #[test]
    fn an_unknown_program_is_missing() {
        assert!(
            probe(Need::Program("zone-tests-no-such-program"))
                .unwrap()
                .contains("zone-tests-no-such-program")
        );
    }
}
