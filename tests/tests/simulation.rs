//! A few seeds of the whole-system simulation (`zone_tests::simulation`): a zone, the server
//! endpoint and six clients on a virtual clock, over a network that drops, duplicates, delays,
//! reorders and corrupts, with a failing snapshot store and a crash, with the clients sending an
//! input datagram every third tick (the server's default) and every tick. Seconds, not minutes;
//! `benchmarks/simulate.sh` runs thousands of seeds. `SEED=n` reruns one seed exactly.

use zone_tests::simulation::{SimConfig, run};

fn seeds() -> Vec<u64> {
    match std::env::var("SEED").ok().and_then(|s| s.parse().ok()) {
        Some(s) => vec![s],
        None => vec![1, 2, 3],
    }
}

#[test]
fn clients_converge_events_arrive_once_counters_balance_and_restores_reproduce() {
    // The server's default input interval (a datagram every third tick) and every tick.
    for (seed, input_batch_ticks) in seeds().into_iter().flat_map(|s| [(s, 3), (s, 1)]) {
        let cfg = SimConfig {
            input_batch_ticks,
            ..SimConfig::rough(seed)
        };
        let r = run(&cfg).unwrap_or_else(|e| panic!("k={input_batch_ticks}: {e}"));
        assert!(
            r.dropped > 0 && r.duplicated > 0 && r.corrupted > 0,
            "the network was hostile: {r:?}"
        );
        assert_eq!(r.stores_failed, 3, "{r:?}");
        assert_eq!(r.restored_from_tick, 120, "restored past the failed store: {r:?}");
        assert!(r.batches_replayed > 0);
        assert!(r.events_delivered >= 6, "{r:?}");
    }
}

#[test]
fn a_seed_reproduces_exactly() {
    let seed = seeds()[0];
    let a = run(&SimConfig::rough(seed)).unwrap_or_else(|e| panic!("{e}"));
    let b = run(&SimConfig::rough(seed)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(a, b);
    let other = run(&SimConfig::rough(seed + 1000)).unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(a.hash, other.hash, "another seed, another run");
}
