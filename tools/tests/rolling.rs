//! The rolling-update drill, small: a zone-lobby, 4 zone servers announcing themselves to it
//! (the `local` lifecycle), and 40 `zone-bots --lobby` bots. The servers are replaced in 25%
//! batches (one at a time): a replacement starts and shows up in the directory, then the old one
//! is drained (the stop flag SIGTERM sets in `zone-server`). Its players are told, ask the lobby
//! again and join another server; the drained server's run ends without error after its final
//! snapshot (the binary then exits 0: `server/tests/agones.rs` checks that path with SIGTERM).
//! Every bot must join, every move must complete within --rejoin-within, no bot may end with an
//! error. The full drill (400 bots, real processes, figures) is `benchmarks/rolling.sh`.
//!
//! The lobby and the zone servers run in this process, the bots are the real binary. Needs
//! PostgreSQL and Redis: a missing one shows as ignored, with the reason. About 30 s.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use zone_lobby::client::LobbyClient;
use zone_lobby::config::LobbyConfig;
use zone_persistence::breaker::BreakerConfig;
use zone_server::announce::{AnnounceConfig, Announcer};
use zone_server::lifecycle::{Lifecycle, LocalLifecycle};
use zone_server::net::NetConfig;
use zone_server::persist::PersistConfig;
use zone_server::runner::{Hooks, RunConfig, run};
use zone_tests::services::{Need, ServiceTests, database_url, redis_url};

const DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/zones/demo.toml");
const SERVERS: usize = 4;
const BOTS: u32 = 40;
/// Seats per server: 4 × 12 ≥ 40 bots, and small enough that the bots spread over all four (the
/// lobby fills the least full first, by its last announcement) so that every batch moves players.
const CAPACITY: usize = 12;

fn free_udp() -> std::net::SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

struct Zone {
    instance: String,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<anyhow::Result<u64>>,
    data: PathBuf,
}

fn start_zone(instance: &str, prefix: &str, secret: &str, data: &Path) -> Zone {
    let bind = free_udp();
    let mut net = NetConfig::new(bind, Some(secret.as_bytes().to_vec()), CAPACITY);
    net.handshake_rate_per_ip = 10_000.0;
    let data = data.join(instance);
    let cfg = RunConfig {
        threads: 1,
        ticks: None,
        drain_timeout: Duration::from_secs(15),
        net: Some(net),
        persist: Some(PersistConfig {
            data_dir: data.clone(),
            keep_full: 2,
            redis: None,
            postgres: None,
            instance: instance.into(),
            redis_ttl: Duration::from_secs(60),
            op_timeout: Duration::from_secs(2),
            breaker: BreakerConfig {
                failure_threshold: 5,
                open_for: Duration::from_secs(30),
            },
            event_queue: 1000,
            observer: None,
            journal_notes: None,
        }),
        // A debug build on a shared machine must not look overloaded: this drill is about drains.
        overload: zone_server::lifecycle::overload::OverloadConfig {
            budget_us: 1_000_000,
            ..Default::default()
        },
        ..RunConfig::headless(0)
    };
    let zone = zone_server::zone_load::load_zone(Path::new(DEMO)).unwrap();
    let announcer = Announcer::start(AnnounceConfig {
        redis_url: redis_url(),
        prefix: prefix.into(),
        zone_id: zone.spec.id.clone(),
        instance_id: instance.into(),
        public_addr: bind.to_string(),
        capacity: CAPACITY as u32,
        ttl: Duration::from_secs(3),
        op_timeout: Duration::from_secs(1),
    })
    .unwrap();
    let lifecycle: Arc<dyn Lifecycle> = Arc::new(LocalLifecycle::new(announcer));
    let stop = Arc::new(AtomicBool::new(false));
    let hooks = Hooks {
        stop_signal: Arc::clone(&stop),
        lifecycle: Some(Arc::clone(&lifecycle)),
        ..Default::default()
    };
    // What `zone-server` does: run (drain, final snapshot), then leave the directory.
    let thread = std::thread::spawn(move || {
        let outcome = run(&cfg, &zone, hooks, None);
        lifecycle.shutdown(Duration::from_secs(2));
        outcome.map(|o| o.final_hash.tick)
    });
    Zone {
        instance: instance.into(),
        stop,
        thread,
        data,
    }
}

/// (instance id, players, offered, tick p99 µs) of every listed instance.
fn instances(rt: &tokio::runtime::Runtime, c: &mut LobbyClient) -> Vec<(String, u64, bool, u64)> {
    let v: Value = rt.block_on(c.call("GET", "/v1/zones", None, None)).unwrap();
    v["zones"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|z| z["instances"].as_array().cloned().unwrap_or_default())
        .map(|i| {
            (
                i["instance_id"].as_str().unwrap_or("").to_string(),
                i["players"].as_u64().unwrap_or(0),
                i["offered"] == Value::Bool(true),
                (i["tick_p99_ms"].as_f64().unwrap_or(0.0) * 1000.0) as u64,
            )
        })
        .collect()
}

fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < until, "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn rolling_update_moves_every_player_and_every_drained_server_ends_cleanly() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let name = format!("t_roll_{}_{}", std::process::id(), zone_lobby::app::now_ms() % 1_000_000);
    let prefix = format!("{name}:");
    let mut cfg = LobbyConfig::for_tests(&database_url(), &name, &redis_url(), &prefix);
    cfg.log_filter = "warn".into();
    // Debug builds on a shared machine: the drill is about drains, not the tick budget.
    cfg.tick_budget_ms = 1_000.0;
    let secret = cfg.token_secret.clone();
    let lobby = rt.block_on(zone_lobby::server::start(cfg, None)).unwrap();
    let url = format!("http://{}", lobby.addr);
    let data = tempfile::tempdir().unwrap();
    let mut zones: Vec<Zone> = (0..SERVERS)
        .map(|k| start_zone(&format!("old-{k}"), &prefix, &secret, data.path()))
        .collect();
    let mut c = LobbyClient::new(&url).unwrap();
    wait_until(30, "4 servers offered", || {
        instances(&rt, &mut c).iter().filter(|i| i.2).count() == SERVERS
    });

    let report = std::env::temp_dir().join(format!("{name}.json"));
    let mut bots = Command::new(env!("CARGO_BIN_EXE_zone-bots"))
        .args(["--lobby", &url, "--zone-id", "demo", "--count", &BOTS.to_string()])
        // Longer than the drill: the bots are stopped with SIGINT once it is over.
        .args(["--duration", "600s", "--ramp-per-s", "100", "--rejoin-within", "20s"])
        .arg("--report")
        .arg(&report)
        .stderr(Stdio::from(std::fs::File::create(data.path().join("bots.log")).unwrap()))
        .spawn()
        .unwrap();
    let total = |v: &[(String, u64, bool, u64)]| v.iter().map(|i| i.1).sum::<u64>();
    wait_until(60, "every bot on a server", || total(&instances(&rt, &mut c)) >= u64::from(BOTS));

    let mut moved_expected = 0;
    for batch in 0..SERVERS {
        // A replacement first (a surge of one), then the drain of the oldest.
        let fresh = start_zone(&format!("new-{batch}"), &prefix, &secret, data.path());
        let id = fresh.instance.clone();
        wait_until(30, "the replacement offered", || {
            instances(&rt, &mut c).iter().any(|i| i.0 == id && i.2)
        });
        let old = zones.remove(0);
        let had = instances(&rt, &mut c).iter().find(|i| i.0 == old.instance).map_or(0, |i| i.1);
        moved_expected += had;
        let t0 = Instant::now();
        old.stop.store(true, Ordering::Relaxed);
        let mut p99_max = 0;
        let until = Instant::now() + Duration::from_secs(60);
        while !old.thread.is_finished() {
            assert!(Instant::now() < until, "{} did not finish its drain", old.instance);
            p99_max = instances(&rt, &mut c)
                .iter()
                .filter(|i| i.0 != old.instance)
                .map(|i| i.3)
                .max()
                .unwrap_or(0)
                .max(p99_max);
            std::thread::sleep(Duration::from_millis(100));
        }
        let drained = t0.elapsed();
        let final_tick = old.thread.join().unwrap().expect("the drained server's run failed");
        // The final snapshot is on disk.
        let snaps = std::fs::read_dir(old.data.join("snapshots")).map(|d| d.count()).unwrap_or(0);
        assert!(snaps > 0, "{}: no snapshot in {}", old.instance, old.data.display());
        wait_until(60, "every bot back on a server", || {
            let v = instances(&rt, &mut c);
            !v.iter().any(|i| i.0 == old.instance) && total(&v) >= u64::from(BOTS)
        });
        eprintln!(
            "rolling: batch {batch}: {} drained with {had} players in {:.2} s (final tick {final_tick}), all back after {:.2} s, surviving tick p99 max {:.2} ms",
            old.instance,
            drained.as_secs_f64(),
            t0.elapsed().as_secs_f64(),
            p99_max as f64 / 1000.0
        );
        zones.push(fresh);
    }

    // The drill is over: stop the bots (each says Goodbye and reports).
    assert!(
        Command::new("kill")
            .args(["-INT", &bots.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let status = bots.wait().unwrap();
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let _ = std::fs::remove_file(&report);
    for z in &zones {
        z.stop.store(true, Ordering::Relaxed);
    }
    for z in zones {
        z.thread.join().unwrap().unwrap();
    }
    rt.block_on(async {
        let _ = lobby.app.accounts.drop_schema().await;
        lobby.stop().await;
    });
    let log = std::fs::read_to_string(data.path().join("bots.log")).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(5).collect();
    assert!(status.success(), "zone-bots failed: {r}\n{tail:?}");
    assert_eq!(r["joined"], BOTS, "{r}");
    assert_eq!(r["move_failures"], 0, "{r}");
    assert!(
        r["moves"].as_u64().unwrap() >= moved_expected,
        "moves {} < players on drained servers {moved_expected}: {r}",
        r["moves"]
    );
    // Only the final SIGINT ends bots: no errors, no drain notices left unanswered.
    let ended: Vec<String> = r["ended_early"]
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    assert!(ended.iter().all(|k| k == "interrupted"), "bots ended with errors: {r}");
    eprintln!(
        "rolling: {} moves, move p50 {} p99 {} max {} ms",
        r["moves"], r["move_ms_p50"], r["move_ms_p99"], r["move_ms_max"]
    );
}

fn main() {
    ServiceTests::new()
        .needs(
            "rolling_update_moves_every_player_and_every_drained_server_ends_cleanly",
            &[Need::Redis, Need::Postgres],
            rolling_update_moves_every_player_and_every_drained_server_ends_cleanly,
        )
        .run()
}
