//! Seals and opens N datagrams of each protocol size, for counting instructions with callgrind
//! (the difference between two N, divided, is the cost per datagram, independent of machine
//! load):
//!
//! ```text
//! cargo build --release -p zone-net --example seal_count
//! for n in 1000 11000; do valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.$n \
//!   target/release/examples/seal_count $n; done
//! ```

use std::hint::black_box;

use zone_net::seal::{Direction, Opener, Sealer};

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1_000);
    let size: usize = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(1_170);
    let key = [7u8; 32];
    let envelope = vec![0x42u8; size];
    let mut s = Sealer::new(&key, Direction::ClientToServer);
    let mut o = Opener::new(&key, Direction::ClientToServer);
    let mut ok = 0usize;
    for _ in 0..n {
        let d = s.seal(black_box(&envelope));
        ok += usize::from(o.open(black_box(&d)).is_ok());
    }
    println!("{ok} of {n} datagrams of {size} bytes sealed and opened");
}
