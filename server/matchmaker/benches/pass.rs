//! One matching pass over 10,000 waiting tickets (and 1,000 for comparison).
//!
//! The pools: ratings spread like a real population (roughly normal, mean 1500, sd 350, on the
//! Glicko-2 scale), three regions, tickets that have waited 0..30 s (so windows from 100 to 400),
//! in the modes of `assets/match/modes.toml`. `duel`: one-player tickets; `team3`: 60% solos, 25%
//! pairs, 15% trios; `sparse`: one-player tickets 150 rating points apart, alternately new (window
//! 100) and 10 s old (window 200), so that no pair's windows both reach and every anchor goes
//! through the complete search after the fast path fails (the cost of a pool that cannot move).
//! Each sample runs `Pool::pass` on a fresh copy of the pool; the copy and freeing it are not timed. The share of
//! tickets matched by the pass is printed first.
//!
//! Run: `cargo bench -p zone-matchmaker --bench pass`

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use zone_matchmaker::{Member, Modes, Pool, Ticket};

/// SplitMix64: a seeded generator so the pools are the same on every run.
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
    /// Roughly normal (the sum of 12 uniforms).
    fn normal(&mut self, mean: f64, sd: f64) -> f64 {
        mean + sd * ((0..12).map(|_| self.unit()).sum::<f64>() - 6.0)
    }
}

fn modes() -> Modes {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets/match/modes.toml");
    Modes::from_toml(path, include_str!("../../../assets/match/modes.toml")).expect("assets/match/modes.toml is valid")
}

const NOW_MS: u64 = 1_000_000;

/// `n` waiting tickets of `mode` (see the module doc).
fn pool(mode: &str, n: usize, seed: u64) -> Pool {
    let mut rng = Rng(seed);
    let mut pool = Pool::new(modes());
    let regions = ["eu", "us", "asia"];
    let mut player = 0;
    for id in 0..n as i64 {
        let size = match mode {
            "team3" => match rng.next() % 100 {
                0..60 => 1,
                60..85 => 2,
                _ => 3,
            },
            _ => 1,
        };
        let (rating, waited, region) = if mode == "sparse" {
            (150.0 * id as f64, if id % 2 == 0 { 0 } else { 10_000 }, "eu")
        } else {
            (rng.normal(1500.0, 350.0), rng.next() % 30_000, regions[(rng.next() % 3) as usize])
        };
        let members = (0..size)
            .map(|_| {
                player += 1;
                Member {
                    player_id: player,
                    rating: rating + rng.normal(0.0, 30.0),
                }
            })
            .collect();
        pool.insert(Ticket {
            id,
            mode: if mode == "sparse" { "duel" } else { mode }.into(),
            region: Some(region.into()),
            members,
            enqueued_ms: NOW_MS - waited,
        })
        .expect("valid ticket");
    }
    pool
}

fn pass(c: &mut Criterion) {
    let mut g = c.benchmark_group("pass");
    g.sample_size(30);
    for mode in ["duel", "team3", "sparse"] {
        for n in [1_000usize, 10_000] {
            let p = pool(mode, n, 7);
            let mut probe = p.clone();
            let matches = probe.pass(NOW_MS);
            eprintln!(
                "{mode}/{n}: {} tickets waiting, {} matched in {} matches ({:.0}%), {} left",
                p.len(),
                p.len() - probe.len(),
                matches.len(),
                100.0 * (p.len() - probe.len()) as f64 / p.len() as f64,
                probe.len()
            );
            g.bench_function(format!("{mode}/{n}"), |b| {
                // The pool and the matches are returned so that freeing them is not timed.
                b.iter_batched(
                    || p.clone(),
                    |mut p| {
                        let m = p.pass(NOW_MS);
                        black_box((p, m))
                    },
                    BatchSize::LargeInput,
                )
            });
        }
    }
    g.finish();
}

criterion_group!(benches, pass);
criterion_main!(benches);
