//! The cost of sealing and opening one datagram (ChaCha20-Poly1305, `zone_net::seal`), at the
//! sizes the protocol sends: an input batch (about 60 bytes of envelope) and a full snapshot
//! datagram (1,170 bytes). `cargo bench -p zone-net --bench seal`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use zone_net::seal::{Direction, Opener, Sealer};

fn seal(c: &mut Criterion) {
    let key = [7u8; 32];
    for (name, len) in [("input_batch_60B", 60usize), ("snapshot_1170B", 1_170)] {
        let envelope = vec![0x42u8; len];
        let mut g = c.benchmark_group(format!("seal/{name}"));
        g.throughput(Throughput::Bytes(len as u64));
        let mut s = Sealer::new(&key, Direction::ServerToClient);
        g.bench_function("seal", |b| b.iter(|| black_box(s.seal(black_box(&envelope)))));
        // Opening needs fresh counters: seal a batch ahead, open each once.
        let mut s = Sealer::new(&key, Direction::ServerToClient);
        let sealed: Vec<Vec<u8>> = (0..200_000).map(|_| s.seal(&envelope)).collect();
        let mut o = Opener::new(&key, Direction::ServerToClient);
        let mut i = 0usize;
        g.bench_function("open", |b| {
            b.iter(|| {
                if i == sealed.len() {
                    // Start a new window so the counters are fresh again.
                    o = Opener::new(&key, Direction::ServerToClient);
                    i = 0;
                }
                let r = o.open(black_box(&sealed[i]));
                i += 1;
                black_box(r)
            })
        });
        g.finish();
    }
}

criterion_group!(benches, seal);
criterion_main!(benches);
