//! Deterministic matchmaking simulation through the pure `Pool`: N bots with a spread of ratings
//! arrive at seeded times, a pass runs every 100 ms of simulated time, and every matched ticket is
//! written to a CSV (its rating, its waiting time, the match's rating gap). The lobby's own figures
//! (HTTP, PostgreSQL, leader) come from `zone-lobby`'s benchmarks; this is the matcher alone.
//!
//! Run: `cargo run --release -p zone-matchmaker --example simulate -- [--bots 10000] [--rate 20]
//!       [--seed 1] [--mode duel] [--modes assets/match/modes.toml] [--out matches.csv]`
//!
//! Same arguments, same CSV, byte for byte. It also prints the pass's wall-clock cost (the only
//! thing here that depends on the machine).

use std::fmt::Write as _;
use std::time::Instant;

use zone_matchmaker::{Member, Modes, Pool, Ticket, window};

/// SplitMix64: the seeded generator for ratings and arrivals.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self, mean: f64, sd: f64) -> f64 {
        mean + sd * ((0..12).map(|_| self.unit()).sum::<f64>() - 6.0)
    }
}

struct Args {
    bots: usize,
    rate: f64,
    seed: u64,
    mode: String,
    modes: String,
    out: String,
    interval_ms: u64,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        bots: 10_000,
        rate: 20.0,
        seed: 1,
        mode: "duel".into(),
        modes: concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets/match/modes.toml").into(),
        out: "matches.csv".into(),
        interval_ms: 100,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            return Err(String::new());
        }
        let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {v}: {e}");
        match flag.as_str() {
            "--bots" => a.bots = v.parse().map_err(|e| bad(&e))?,
            "--rate" => a.rate = v.parse().map_err(|e| bad(&e))?,
            "--seed" => a.seed = v.parse().map_err(|e| bad(&e))?,
            "--mode" => a.mode = v,
            "--modes" => a.modes = v,
            "--out" => a.out = v,
            "--interval-ms" => a.interval_ms = v.parse().map_err(|e| bad(&e))?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if a.rate <= 0.0 || a.interval_ms == 0 {
        return Err("--rate and --interval-ms must be > 0".into());
    }
    Ok(a)
}

const USAGE: &str = "usage: simulate [--bots 10000] [--rate 20 (arrivals per second)] [--seed 1] [--mode duel] \
[--modes assets/match/modes.toml] [--out matches.csv] [--interval-ms 100]";

fn main() {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("simulate: {e}");
            }
            eprintln!("{USAGE}");
            std::process::exit(if e.is_empty() { 0 } else { 2 });
        }
    };
    let text = std::fs::read_to_string(&a.modes).unwrap_or_else(|e| {
        eprintln!("simulate: cannot read {}: {e}", a.modes);
        std::process::exit(2)
    });
    let modes = Modes::from_toml(&a.modes, &text).unwrap_or_else(|e| {
        eprintln!("simulate: {e}");
        std::process::exit(2)
    });
    let Some(mode) = modes.get(&a.mode).cloned() else {
        eprintln!("simulate: unknown mode {:?}; the modes are {:?}", a.mode, modes.names());
        std::process::exit(2)
    };

    // Arrivals: a Poisson stream at `rate` per second; ratings ~ N(1500, 350); parties in team modes.
    let mut rng = Rng(a.seed);
    let mut arrivals: Vec<Ticket> = Vec::with_capacity(a.bots);
    let (mut t_ms, mut player, mut id) = (0.0f64, 0i64, 0i64);
    while (player as usize) < a.bots {
        t_ms += -(1.0 - rng.unit()).ln() / a.rate * 1000.0;
        let size = if mode.max_party >= 3 {
            match rng.next() % 100 {
                0..60 => 1,
                60..85 => 2,
                _ => 3,
            }
        } else if mode.max_party == 2 {
            1 + usize::from(rng.next().is_multiple_of(4))
        } else {
            1
        }
        .min(a.bots - player as usize);
        let base = rng.normal(1500.0, 350.0);
        let members = (0..size)
            .map(|_| {
                player += 1;
                Member {
                    player_id: player,
                    rating: if size == 1 { base } else { base + rng.normal(0.0, 50.0) },
                }
            })
            .collect();
        id += 1;
        arrivals.push(Ticket {
            id,
            mode: mode.name.clone(),
            region: None,
            members,
            enqueued_ms: t_ms as u64,
        });
    }

    let mut pool = Pool::new(modes.clone());
    let mut csv = String::from("match,made_ms,ticket,players,rating,waited_ms,window,gap\n");
    let mut next = 0;
    let mut now = 0u64;
    let (mut matches, mut matched_tickets) = (0usize, 0usize);
    let mut pass_us: Vec<(f64, usize)> = Vec::new();
    let last_arrival = arrivals.last().map_or(0, |t| t.enqueued_ms);
    // Run until every bot has arrived, then up to 2 minutes more for the last ones.
    while now <= last_arrival + 120_000 && (next < arrivals.len() || !pool.is_empty()) {
        while next < arrivals.len() && arrivals[next].enqueued_ms <= now {
            pool.insert(arrivals[next].clone()).expect("valid ticket");
            next += 1;
        }
        let waiting = pool.len();
        let snapshot: std::collections::BTreeMap<i64, Ticket> = pool.tickets().map(|t| (t.id, t.clone())).collect();
        let t0 = Instant::now();
        let made = pool.pass(now);
        pass_us.push((t0.elapsed().as_secs_f64() * 1e6, waiting));
        for m in made {
            matches += 1;
            for tid in &m.tickets {
                let t = &snapshot[tid];
                matched_tickets += 1;
                let rating = zone_matchmaker::ticket_rating(t);
                let waited = now - t.enqueued_ms;
                let _ = writeln!(
                    csv,
                    "{matches},{now},{tid},{},{rating:.1},{waited},{:.1},{:.1}",
                    t.members.len(),
                    window(&mode, waited),
                    m.spread
                );
            }
        }
        now += a.interval_ms;
    }
    std::fs::write(&a.out, &csv).unwrap_or_else(|e| {
        eprintln!("simulate: cannot write {}: {e}", a.out);
        std::process::exit(1)
    });
    pass_us.sort_by(|x, y| x.0.total_cmp(&y.0));
    let pct = |p: f64| pass_us[((pass_us.len() - 1) as f64 * p) as usize].0;
    let max_waiting = pass_us.iter().map(|p| p.1).max().unwrap_or(0);
    println!(
        "mode={} bots={} tickets={} rate={}/s seed={} matches={matches} matched_tickets={matched_tickets} unmatched_tickets={} \
         passes={} max_waiting={max_waiting} pass_us_p50={:.1} pass_us_p99={:.1} pass_us_max={:.1} csv={}",
        mode.name,
        a.bots,
        arrivals.len(),
        a.rate,
        a.seed,
        pool.len() + arrivals.len() - next,
        pass_us.len(),
        pct(0.5),
        pct(0.99),
        pass_us.last().map_or(0.0, |p| p.0),
        a.out
    );
}
