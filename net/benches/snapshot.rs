//! The cost of one client's snapshot as the server makes it at 20 Hz: the view (128 objects, the
//! server's default interest, half of them walking and turning about every 2 s) built, its delta
//! against the view sent one snapshot earlier encoded (`encode_delta_capped_into`), and every
//! datagram sealed. `cargo bench -p zone-net --bench snapshot`.
//!
//! For instruction counts, which hold still where wall time does not, run the bench binary with
//! `ZONE_BENCH_ITERS=N` under callgrind: it then encodes N snapshots without criterion and exits.
//!
//! ```sh
//! cargo bench -p zone-net --bench snapshot --no-run   # prints the binary's path
//! ZONE_BENCH_ITERS=20000 valgrind --tool=callgrind target/release/deps/snapshot-HASH
//! ```

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use zone_net::delta::{BUDGET_BYTES_DEFAULT, SnapshotFrame, encode_delta_capped_into};
use zone_net::seal::{Direction, Sealer};
use zone_net::view::{QObject, View};

const OBJECTS: usize = 128;
const TICKS_PER_SNAPSHOT: u64 = 3;
const SNAPSHOTS: usize = 200;

/// xorshift64*, so every run encodes the same views.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// The objects of `SNAPSHOTS` consecutive snapshots, in sim units walked tick by tick and
/// quantized as the server does.
fn snapshots() -> Vec<(u64, Vec<QObject>)> {
    let mut rng = Rng(0x5eed);
    // (id, pos mm, vel mm/tick, moving)
    type Body = (u64, (i32, i32), (i32, i32), bool);
    let mut bodies: Vec<Body> = (0..OBJECTS)
        .map(|i| {
            let id = if i % 20 == 0 {
                (1u64 << 63) | (1000 + i as u64)
            } else {
                (1 + (i as u64 % 4)) << 40 | i as u64
            };
            let pos = (100_000 + rng.below(60_000) as i32, 100_000 + rng.below(60_000) as i32);
            (id, pos, (0, 0), i % 2 == 0)
        })
        .collect();
    let mut out = Vec::with_capacity(SNAPSHOTS);
    for tick in 1..=SNAPSHOTS as u64 * TICKS_PER_SNAPSHOT {
        for (_, pos, vel, moving) in bodies.iter_mut() {
            if *moving {
                if *vel == (0, 0) || rng.below(120) == 0 {
                    *vel = (rng.below(101) as i32 - 50, rng.below(101) as i32 - 50);
                }
                pos.0 += vel.0;
                pos.1 += vel.1;
            }
        }
        if tick % TICKS_PER_SNAPSHOT == 0 {
            let mut objects: Vec<QObject> = bodies
                .iter()
                .map(|&(id, pos, vel, _)| QObject::quantize(id, 1 + (id % 5) as u16, pos, vel, 100, (0, 0)))
                .collect();
            // The server's interest search hands the view its objects in id order.
            objects.sort_unstable_by_key(|o| o.id);
            out.push((tick, objects));
        }
    }
    out
}

/// One client's snapshot: its view, the delta against `base`, each datagram sealed. Returns the
/// bytes sealed and the view the server would hold (the bench always deltas against the previous
/// snapshot's view instead, as a client that acked it).
fn snapshot(base: &View, tick: u64, objects: &[QObject], sealer: &mut Sealer) -> (usize, View) {
    let view = View::new(tick, objects.to_vec()).expect("unique ids");
    let frame = SnapshotFrame {
        ack_input_tick: tick - 1,
        sequence: tick as u32,
    };
    let (datagrams, _, held) = encode_delta_capped_into(Some(base), view, frame, BUDGET_BYTES_DEFAULT, (1_300, 1_300), 4).expect("encodes");
    let bytes = datagrams.into_iter().map(|d| sealer.seal_vec(d).len()).sum();
    (bytes, held)
}

fn bench(c: &mut Criterion) {
    let snaps = snapshots();
    let views: Vec<View> = snaps.iter().map(|(t, o)| View::new(*t, o.clone()).expect("unique ids")).collect();
    let mut sealer = Sealer::new(&[7u8; 32], Direction::ServerToClient);
    let mut i = 1;
    let mut next = || {
        let r = snapshot(&views[i - 1], snaps[i].0, &snaps[i].1, &mut sealer);
        i = if i + 1 == snaps.len() { 1 } else { i + 1 };
        r
    };
    if let Some(n) = std::env::var("ZONE_BENCH_ITERS").ok().and_then(|v| v.parse::<usize>().ok()) {
        let bytes: usize = (0..n).map(|_| black_box(next()).0).sum();
        println!("{n} snapshots of {OBJECTS} objects, {bytes} bytes sealed");
        std::process::exit(0);
    }
    let mut g = c.benchmark_group("snapshot");
    g.throughput(Throughput::Elements(1));
    g.bench_function("delta_128_objects_sealed", |b| b.iter(|| black_box(next())));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
