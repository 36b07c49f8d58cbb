//! CPU time per datagram sent on loopback, one `send_to` per datagram against [`Sender`]'s
//! batches: 200-byte datagrams to `ADDRS` receiving sockets, as the server sends a frame's
//! snapshots. The thread's own CPU time is read from `/proc/thread-self/schedstat` (Linux), and
//! draining the receivers is not counted. On loopback each send also delivers the datagram into
//! the receiver's socket, inside the sender's system call, so both ways carry that cost.
//!
//! ```text
//! cargo run --release -p zone-udp-batch --example send_cost            # 400 rounds of 500
//! cargo run --release -p zone-udp-batch --example send_cost -- 200 64  # rounds, batch
//! ```

use std::net::{SocketAddr, UdpSocket};

use zone_udp_batch::Sender;

const ADDRS: usize = 500;
const PAYLOAD: usize = 200;

/// This thread's time on a CPU so far, in ns.
fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .expect("/proc/thread-self/schedstat (Linux only)")
}

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>().expect("a number"));
    let rounds = args.next().unwrap_or(400);
    let batch = args.next().unwrap_or(64);
    let receivers: Vec<UdpSocket> = (0..ADDRS)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
            s.set_nonblocking(true).expect("non-blocking");
            s
        })
        .collect();
    let addrs: Vec<SocketAddr> = receivers.iter().map(|s| s.local_addr().expect("address")).collect();
    let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
    tx.set_nonblocking(true).expect("non-blocking");
    let payload = [1u8; PAYLOAD];
    let mut sink = [0u8; 2048];
    let mut drain = || {
        for r in &receivers {
            while r.recv_from(&mut sink).is_ok() {}
        }
    };
    for (name, batched) in [("send_to", false), ("sendmmsg", true), ("send_to", false), ("sendmmsg", true)] {
        let mut sender = Sender::new(batch);
        let (mut spent, mut sent) = (0u64, 0usize);
        for _ in 0..rounds {
            let t0 = cpu_ns();
            if batched {
                for a in &addrs {
                    if sender.queue(*a, &payload) {
                        sent += sender.flush(&tx).sent;
                    }
                }
                sent += sender.flush(&tx).sent;
            } else {
                for a in &addrs {
                    sent += usize::from(tx.send_to(&payload, a).is_ok());
                }
            }
            spent += cpu_ns() - t0;
            drain();
        }
        println!(
            "{name:<8} batch={} datagrams={sent} cpu_us_per_datagram={:.3}",
            if batched { batch } else { 1 },
            spent as f64 / 1e3 / sent.max(1) as f64
        );
    }
}
