//! Load generator for the lobby's figures: C concurrent clients, each on its own keep-alive
//! connection, hammer one endpoint for D seconds; prints requests/s and latency p50/p99.
//!
//! `load URL logins C SECS`: `POST /v1/auth/device`, a fresh device id per request (each creates
//! an account and a session). `load URL joins C SECS ZONE`: C accounts log in first, then each
//! repeats `POST /v1/zones/ZONE/join` (the zone must be in the directory with room for C).
//! Run by benchmarks/lobby.sh against a release build.

use std::time::{Duration, Instant};

use zone_lobby::client::LobbyClient;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        eprintln!("usage: load URL logins|joins CONCURRENCY SECS [ZONE]");
        std::process::exit(2);
    }
    let (url, what) = (args[1].clone(), args[2].clone());
    let c: usize = args[3].parse().expect("CONCURRENCY");
    let secs: f64 = args[4].parse().expect("SECS");
    let zone = args.get(5).cloned().unwrap_or_else(|| "demo".into());
    let run_id = std::process::id();
    let mut tasks = Vec::new();
    let start_at = Instant::now() + Duration::from_millis(500) + Duration::from_millis(if what == "joins" { 3000 } else { 0 });
    for k in 0..c {
        let (url, what, zone) = (url.clone(), what.clone(), zone.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = LobbyClient::new(&url).expect("URL");
            let token = if what == "joins" {
                Some(
                    client
                        .device_login(&format!("load-{run_id}-j{k}"))
                        .await
                        .expect("login")
                        .session_token,
                )
            } else {
                None
            };
            tokio::time::sleep_until(start_at.into()).await;
            let end = Instant::now() + Duration::from_secs_f64(secs);
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut n = 0u64;
            while Instant::now() < end {
                let t0 = Instant::now();
                let ok = match &token {
                    None => client.device_login(&format!("load-{run_id}-{k}-{n}")).await.is_ok(),
                    Some(t) => client.join(t, &zone).await.is_ok(),
                };
                lat.push(t0.elapsed().as_micros() as u64);
                if !ok {
                    errors += 1;
                }
                n += 1;
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.expect("task");
        all.extend(l);
        errors += e;
    }
    all.sort_unstable();
    let q = |p: f64| {
        all.get(
            ((all.len() as f64 * p).ceil() as usize)
                .saturating_sub(1)
                .min(all.len().saturating_sub(1)),
        )
        .copied()
        .unwrap_or(0) as f64
            / 1000.0
    };
    println!(
        "{what}: concurrency={c} secs={secs} requests={} errors={errors} rate_per_s={:.0} p50_ms={:.2} p99_ms={:.2} max_ms={:.2}",
        all.len(),
        all.len() as f64 / secs,
        q(0.50),
        q(0.99),
        q(1.0)
    );
}
