//! The tick thread's cost of the world visualizer, with 0, 1 and 5 viewers: the zone is stepped
//! on the caller's thread (the `Serial` executor, so every instruction of the tick is on this
//! thread) exactly as `runner.rs` does it (ask the visualizer whether it wants a copy, switch the
//! Replicate stage, step, take the copies, offer them), while the visualizer thread encodes and
//! broadcasts to viewers that other threads drain. Rounds alternate between viewer counts so
//! that drift on a loaded machine hits every count alike.
//!
//! `cargo bench -p zone-server --bench viz_tick -- [ZONE_FILE] [TICKS_PER_ROUND] [ROUNDS]
//! [VIEWER_COUNTS]` (defaults: assets/zones/demo.toml, 600, 3, 0,1,5; `VIZ_RATE=N` for another
//! rate than the live default; ticks are paced at 60 per
//! second, so a round of 600 ticks takes 10 s). Prints, per viewer count, the tick thread's CPU
//! time per tick (from the scheduler: robust to a loaded machine) and its wall time per tick, and
//! their difference from the first count. One count per process under
//! `valgrind --tool=callgrind --toggle-collect='*tick_once*' --separate-threads=yes` gives the
//! instructions of `tick_once` (thread 1), the steadiest comparison (benchmarks/2026-11-29-viz.md).

use std::time::{Duration, Instant};

use zone_server::replica::Replicas;
use zone_server::viz::{Mode, Viz, VizConfig, VizTap};
use zone_sim::{Serial, Zone};

#[inline(never)]
fn tick_once(zone: &mut Zone, replicas: &mut Replicas, tap: &VizTap) {
    let wants = tap.wants_copy(zone.tick() + 1, false);
    replicas.request(zone, wants);
    let _batch = zone.step(&Serial);
    let copies = replicas.take(zone);
    if let (true, Some(c)) = (wants, copies) {
        tap.offer(zone.tick(), c);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let zone_file = args
        .first()
        .cloned()
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/zones/demo.toml").to_string());
    let ticks: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(600);
    let rounds: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3);
    // Viewer counts to run (e.g. "0" alone, one process per count, under callgrind).
    let counts: Vec<usize> = args
        .get(3)
        .map_or_else(|| vec![0, 1, 5], |s| s.split(',').filter_map(|c| c.parse().ok()).collect());
    let loaded = zone_server::zone_load::load_zone(zone_file.as_ref()).expect("zone file");
    let mut zone = Zone::new(loaded.spec.clone(), 1).unwrap();
    // VIZ_RATE=N measures another --viz-rate than the default.
    let mut cfg = VizConfig::default();
    if let Some(r) = std::env::var("VIZ_RATE").ok().and_then(|r| r.parse().ok()) {
        cfg.rate_hz = r;
    }
    println!("viz rate: {} frames/s", cfg.rate_hz);
    let viz = Viz::start(Mode::Live, cfg, loaded.spec.clone(), None).unwrap();
    let tap = viz.tap();
    let mut replicas = Replicas::default();
    // Warm up: fault in memory, settle the population.
    for _ in 0..300 {
        tick_once(&mut zone, &mut replicas, &tap);
    }
    let mut cpu_ns: Vec<u64> = vec![0; counts.len()];
    let mut totals: Vec<Duration> = vec![Duration::ZERO; counts.len()];
    let mut frames: Vec<u64> = vec![0; counts.len()];
    for round in 0..rounds {
        for (k, &n) in counts.iter().enumerate() {
            // n viewers, each drained by its own thread as a fast page would.
            let mut drains = Vec::new();
            let mut ids = Vec::new();
            for _ in 0..n {
                let (id, mut rx) = viz.shared.hub.join(serde_json::json!({})).unwrap();
                ids.push(id);
                drains.push(std::thread::spawn(move || {
                    let mut got = 0u64;
                    while let Some(m) = rx.blocking_recv() {
                        got += u64::from(m.event == "key" || m.event == "diff");
                    }
                    got
                }));
            }
            // Paced at 60 ticks/s, as in production: the viz thread gets the frames it would get.
            let start = Instant::now();
            let cpu0 = thread_cpu_ns();
            for i in 0..ticks {
                let due = start + Duration::from_secs_f64(i as f64 / 60.0);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let t0 = Instant::now();
                tick_once(&mut zone, &mut replicas, &tap);
                totals[k] += t0.elapsed();
            }
            cpu_ns[k] += thread_cpu_ns() - cpu0;
            // Let the viz thread finish what it holds, then hang up.
            std::thread::sleep(Duration::from_millis(300));
            for id in ids {
                viz.shared.hub.leave(id);
            }
            frames[k] += drains.into_iter().map(|d| d.join().unwrap()).sum::<u64>();
            eprintln!(
                "round {round}: {n} viewers: {:.1} µs/tick",
                totals[k].as_secs_f64() * 1e6 / ((round + 1) as f64 * ticks as f64)
            );
        }
    }
    let per_tick = |k: usize| totals[k].as_secs_f64() * 1e6 / (rounds as f64 * ticks as f64);
    println!(
        "zone={} objects={} ticks_per_round={ticks} rounds={rounds}",
        loaded.spec.id,
        zone.object_count()
    );
    let cpu_per_tick = |k: usize| cpu_ns[k] as f64 / 1000.0 / (rounds as f64 * ticks as f64);
    for (k, &n) in counts.iter().enumerate() {
        println!(
            "viewers={n} tick_cpu_us={:.1} vs_first={:+.2}% tick_wall_us={:.1} vs_first={:+.2}% frames_received={}",
            cpu_per_tick(k),
            (cpu_per_tick(k) / cpu_per_tick(0) - 1.0) * 100.0,
            per_tick(k),
            (per_tick(k) / per_tick(0) - 1.0) * 100.0,
            frames[k]
        );
    }
    let dropped = viz.shared.frames_dropped.load(std::sync::atomic::Ordering::Relaxed);
    println!("copies dropped (viz thread behind): {dropped}");
    drop(tap);
    viz.shutdown();
}

/// CPU time this thread has run, from the scheduler (sleeping and waiting for a core do not
/// count, so the figure holds on a loaded machine).
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}
