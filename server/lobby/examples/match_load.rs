//! Load generator for the matchmaking figures (run by benchmarks/match.sh, release build).
//!
//! - `match_load URL requests C SECS [K]`: C clients, each logged in as K accounts (20 by
//!   default) that it uses in turn, repeat `POST /v1/match/request {mode: duel, wait_ms: 0}`
//!   (timed: each answer means the ticket is durable in PostgreSQL). A zone server with room must
//!   be in the directory, so that the leader matches the tickets meanwhile and an account's
//!   previous ticket is matched by the time it asks again (a 409 counts as an error). Prints
//!   requests/s and latency p50/p99.
//! - `match_load URL seed C SECS KEY`: the same with the trusted backends' route,
//!   `POST /match/request {player_id, rating, wait_ms: 0}`, a fresh player id each time (no
//!   cancel: the leader matches them as they come, if a zone server has room).
//! - `match_load URL pairs N CONC`: N pairs of accounts, CONC pairs at a time: the first player
//!   queues (202) and long-polls its ticket, then the second sends the compatible request (each
//!   of the CONC workers in a region of its own, so concurrent pairs never cross); prints
//!   the time from the second request until both players have their match, p50/p99/max.

use std::time::{Duration, Instant};

use zone_lobby::client::{LobbyClient, MatchAnswer, MatchOptions};

fn quantiles(mut v: Vec<u64>) -> (usize, f64, f64, f64) {
    v.sort_unstable();
    let q = |p: f64| {
        v.get(
            ((v.len() as f64 * p).ceil() as usize)
                .saturating_sub(1)
                .min(v.len().saturating_sub(1)),
        )
        .copied()
        .unwrap_or(0) as f64
            / 1000.0
    };
    (v.len(), q(0.5), q(0.99), q(1.0))
}

fn duel(wait_ms: u64) -> MatchOptions {
    MatchOptions {
        mode: "duel".into(),
        wait_ms,
        ..MatchOptions::default()
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        eprintln!("usage: match_load URL requests C SECS [K] | match_load URL seed C SECS KEY | match_load URL pairs N CONC");
        std::process::exit(2);
    }
    let (url, what) = (args[1].clone(), args[2].clone());
    let run_id = std::process::id();
    if what == "pairs" {
        let n: usize = args[3].parse().expect("N");
        let conc: usize = args[4].parse().expect("CONC");
        let mut tasks = Vec::new();
        for w in 0..conc {
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let mut a = LobbyClient::new(&url).expect("URL");
                let mut b = LobbyClient::new(&url).expect("URL");
                let mut lat = Vec::new();
                let mut k = w;
                while k < n {
                    let ta = a.device_login(&format!("pair-{run_id}-{k}-a")).await.expect("login").session_token;
                    let tb = b.device_login(&format!("pair-{run_id}-{k}-b")).await.expect("login").session_token;
                    // Each worker has its own region (duel's region rule is strict), so pairs being
                    // measured at the same time are never matched across.
                    let region = Some(format!("bench{run_id}w{w}"));
                    let opts = |wait_ms| MatchOptions {
                        region: region.clone(),
                        ..duel(wait_ms)
                    };
                    let first = a.match_request(&ta, &opts(0)).await.expect("first request");
                    let id = first.ticket_id();
                    let wait_a = {
                        let url = url.clone();
                        let ta = ta.clone();
                        tokio::spawn(async move {
                            let mut c = LobbyClient::new(&url).expect("URL");
                            let r = c.wait_ticket(&ta, id, 30_000).await;
                            (r, Instant::now())
                        })
                    };
                    // Let the long-poll register before the second request goes out.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let t0 = Instant::now();
                    let second = b.match_request(&tb, &opts(30_000)).await.expect("second request");
                    let tb_done = Instant::now();
                    let (ra, ta_done) = wait_a.await.expect("task");
                    match (ra.expect("wait"), second) {
                        (MatchAnswer::Matched(x), MatchAnswer::Matched(y)) if x.match_id == y.match_id => {
                            lat.push(ta_done.max(tb_done).duration_since(t0).as_micros() as u64);
                        }
                        (x, y) => eprintln!("pair {k}: not matched together: {x:?} / {y:?}"),
                    }
                    k += conc;
                }
                lat
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("task"));
        }
        let (count, p50, p99, max) = quantiles(all);
        println!("pairs: n={n} concurrency={conc} matched={count} p50_ms={p50:.2} p99_ms={p99:.2} max_ms={max:.2}");
        return;
    }
    let c: usize = args[3].parse().expect("CONCURRENCY");
    let secs: f64 = args[4].parse().expect("SECS");
    let key = args.get(5).cloned().unwrap_or_default();
    let start_at = Instant::now() + Duration::from_millis(if what == "requests" { 15_000 } else { 500 });
    let mut tasks = Vec::new();
    for k in 0..c {
        let (url, what, key) = (url.clone(), what.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = LobbyClient::new(&url).expect("URL");
            let accounts: usize = if what == "requests" { key.parse().unwrap_or(20) } else { 0 };
            let mut tokens = Vec::new();
            for a in 0..accounts {
                let t = client.device_login(&format!("mload-{run_id}-{k}-{a}")).await.expect("login");
                tokens.push(t.session_token);
            }
            tokio::time::sleep_until(start_at.into()).await;
            let end = Instant::now() + Duration::from_secs_f64(secs);
            let (mut lat, mut errors, mut n) = (Vec::new(), 0u64, 0u64);
            while Instant::now() < end {
                let t0 = Instant::now();
                let ok = if what == "requests" {
                    let t = &tokens[n as usize % tokens.len().max(1)];
                    match client.match_request(t, &duel(0)).await {
                        Ok(_) => {
                            lat.push(t0.elapsed().as_micros() as u64);
                            true
                        }
                        Err(_) => false,
                    }
                } else {
                    let player = (u64::from(run_id) % 1000) * 100_000_000 + (k as u64) * 1_000_000 + n + 1;
                    let rating = 1000.0 + (player * 7919 % 1000) as f64;
                    let body = format!(r#"{{"player_id":{player},"rating":{rating},"wait_ms":0}}"#);
                    match client.request("POST", "/match/request", Some(&key), Some(&body)).await {
                        Ok(a) if a.status == 200 || a.status == 202 => {
                            lat.push(t0.elapsed().as_micros() as u64);
                            true
                        }
                        _ => false,
                    }
                };
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
    let (count, p50, p99, max) = quantiles(all);
    println!(
        "{what}: concurrency={c} secs={secs} requests={count} errors={errors} rate_per_s={:.0} p50_ms={p50:.2} p99_ms={p99:.2} max_ms={max:.2}",
        count as f64 / secs
    );
}
