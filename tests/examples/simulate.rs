//! Runs the whole-system simulation (`zone_tests::simulation`) for many seeds and prints failing
//! seeds and seeds per second. `cargo run --release -p zone-tests --example simulate -- FIRST COUNT`
//! (see `benchmarks/simulate.sh`). Exits non-zero if any seed failed; each failure prints the seed,
//! which `SEED=n cargo test -p zone-tests --test simulation` reproduces exactly.

use std::time::Instant;

use zone_tests::simulation::{SimConfig, run};

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<u64>().expect("FIRST and COUNT are numbers"));
    let first = args.next().unwrap_or(1);
    let count = args.next().unwrap_or(100);
    let t0 = Instant::now();
    let mut failed = 0;
    for seed in first..first + count {
        if let Err(e) = run(&SimConfig::rough(seed)) {
            failed += 1;
            eprintln!("FAILED {e}");
        }
    }
    let s = t0.elapsed().as_secs_f64();
    println!(
        "seeds={count} first={first} failed={failed} seconds={s:.1} seeds_per_s={:.2}",
        count as f64 / s
    );
    if failed > 0 {
        std::process::exit(1);
    }
}
