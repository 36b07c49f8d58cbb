//! Wall time to seal and open one datagram ([`zone_net::seal`]) at the sizes the protocol sends:
//! 100 bytes (an input batch), 300 bytes (a typical snapshot) and 1,000 bytes (a large snapshot
//! part). Prints nanoseconds per call, the median of 5 rounds of 100,000 calls each.
//!
//! ```text
//! cargo run --release -p zone-net --example seal_cost
//! # the poly1305 AVX2 backend instead of the portable one that .cargo/config.toml selects
//! # (a set RUSTFLAGS replaces the config's flags; this rebuilds everything once):
//! RUSTFLAGS="-C debuginfo=0" cargo run --release -p zone-net --example seal_cost
//! ```
//!
//! Machines of this kind differ by 1.5× or more: compare two builds on the same machine, in the
//! same sitting.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::hint::black_box;
use std::time::Instant;

use zone_net::seal::{Direction, Opener, Sealer};

const CALLS: u32 = 100_000;
const ROUNDS: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let key = [7u8; 32];
    for size in [100usize, 300, 1_000] {
        let envelope = vec![0x5au8; size];
        let mut seal_ns = Vec::new();
        let mut open_ns = Vec::new();
        for _ in 0..ROUNDS {
            let mut sealer = Sealer::new(&key, Direction::ServerToClient);
            let mut opener = Opener::new(&key, Direction::ServerToClient);
            let mut sealed = Vec::with_capacity(CALLS as usize);
            let t = Instant::now();
            for _ in 0..CALLS {
                sealed.push(sealer.seal(black_box(&envelope)));
            }
            seal_ns.push(t.elapsed().as_nanos() as f64 / f64::from(CALLS));
            let t = Instant::now();
            for p in &sealed {
                black_box(opener.open(black_box(p)).is_ok());
            }
            open_ns.push(t.elapsed().as_nanos() as f64 / f64::from(CALLS));
        }
        println!("{size} bytes: seal {:.0} ns, open {:.0} ns", median(seal_ns), median(open_ns));
    }
}
