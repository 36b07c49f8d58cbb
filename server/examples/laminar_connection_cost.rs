//! What one laminar connection costs with the zone server's patched laminar and its settings:
//! creates N `VirtualConnection`s and prints the time and resident memory per connection.
//!
//!   cargo run --release -p zone-server --example laminar_connection_cost -- 1000
//!
//! (Upstream laminar 0.5.0 measured about 1.5 MB and 0.8–1.2 ms per connection on this machine;
//! see net/vendor/laminar/PATCHES.md.)

use std::time::Instant;

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(1000);
    // As the server's network thread configures laminar (server/src/net/worker.rs).
    let cfg = laminar::Config {
        max_packets_in_flight: 64,
        fragment_reassembly_buffer_size: 2,
        ..laminar::Config::default()
    };
    let before = rss_kb();
    let t = Instant::now();
    let conns: Vec<_> = (0..n)
        .map(|i| {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 10_000 + (i % 50_000) as u16));
            laminar::VirtualConnection::new(addr, &cfg, Instant::now())
        })
        .collect();
    let took = t.elapsed();
    println!(
        "connections={n} create_total_ms={:.1} per_connection_us={:.1} rss_growth_kb_per_connection={:.1}",
        took.as_secs_f64() * 1e3,
        took.as_secs_f64() * 1e6 / n as f64,
        rss_kb().saturating_sub(before) as f64 / n as f64
    );
    drop(conns);
}
