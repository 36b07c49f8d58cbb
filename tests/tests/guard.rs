//! Guards for the architecture invariants of `zone-sim` (see `sim/src/lib.rs`):
//! no wall clock, no OS randomness, no hash-ordered collections, no threads, no tokio, no IO;
//! and a schedule in which two unordered systems touching the same data are an error.

use std::path::{Path, PathBuf};

/// Patterns that must never appear in `sim/src` (outside this list's own reasons).
const FORBIDDEN: &[(&str, &str)] = &[
    ("Instant", "wall clock: time is the tick number passed in"),
    ("SystemTime", "wall clock: time is the tick number passed in"),
    ("std::time", "wall clock: time is the tick number passed in"),
    ("thread_rng", "OS randomness: use rng::DetRng seeded from the zone seed"),
    ("OsRng", "OS randomness: use rng::DetRng seeded from the zone seed"),
    ("getrandom", "OS randomness: use rng::DetRng seeded from the zone seed"),
    ("rand::", "OS-seeded randomness: use rng::DetRng"),
    ("RandomState", "random hashing: use BTreeMap or sorted Vecs"),
    ("HashMap", "iteration order is random: use BTreeMap or a sorted Vec"),
    ("HashSet", "iteration order is random: use BTreeSet or a sorted Vec"),
    ("std::thread", "sim owns no threads: the caller passes a ShardExecutor"),
    ("thread::spawn", "sim owns no threads"),
    ("rayon", "sim owns no threads"),
    ("tokio", "sim does no IO"),
    ("std::fs", "sim does no IO"),
    ("std::net", "sim does no IO"),
    ("std::env", "sim must not depend on the environment"),
    ("std::process", "sim does no IO"),
    ("static mut", "global mutable state breaks determinism"),
    ("par_iter", "bevy's parallel iteration would make order depend on threads"),
];

/// The only dependencies `zone-sim` may have.
const ALLOWED_DEPS: &[&str] = &["bevy_ecs", "serde", "toml", "thiserror", "sha2"];

fn sim_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../sim")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn sim_source_has_no_clock_randomness_threads_io_or_hash_iteration() {
    let mut files = Vec::new();
    rust_files(&sim_dir().join("src"), &mut files);
    assert!(files.len() >= 5, "sim/src not found");
    let mut found = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for (pat, why) in FORBIDDEN {
                if code.contains(pat) {
                    found.push(format!("{}:{}: `{pat}`: {why}\n    {}", f.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "zone-sim must stay IO-free and deterministic:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_guard_itself_catches_a_violation() {
    // If the pattern matching broke, the test above would pass vacuously.
    let line = "let t = std::time::Instant::now();";
    assert!(FORBIDDEN.iter().any(|(p, _)| line.contains(p)));
    assert!(FORBIDDEN.iter().any(|(p, _)| "let m: HashMap<u64, u64>".contains(p)));
}

#[test]
fn sim_depends_only_on_allowed_crates() {
    let toml = std::fs::read_to_string(sim_dir().join("Cargo.toml")).unwrap();
    let mut section = "";
    for line in toml.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            section = l;
            continue;
        }
        if section == "[dependencies]" && !l.is_empty() && !l.starts_with('#') {
            let name = l.split(['=', '.', ' ']).next().unwrap();
            assert!(
                ALLOWED_DEPS.contains(&name),
                "zone-sim must not depend on `{name}` (allowed: {ALLOWED_DEPS:?})"
            );
        }
    }
}

mod schedule {
    use bevy_ecs::prelude::*;
    use zone_sim::Stage;
    use zone_sim::shard::checked_schedule;

    #[derive(Component)]
    struct Hp(i32);

    fn heal(mut q: Query<&mut Hp>) {
        for mut h in &mut q {
            h.0 += 1;
        }
    }

    fn hurt(mut q: Query<&mut Hp>) {
        for mut h in &mut q {
            h.0 -= 1;
        }
    }

    #[test]
    fn unordered_systems_on_the_same_data_are_an_error() {
        let mut world = World::new();
        let mut s = checked_schedule();
        s.add_systems((heal, hurt).in_set(Stage::Simulate));
        let Err(err) = s.initialize(&mut world) else {
            panic!("an ambiguous pair must not build")
        };
        let text = format!("{err:?}");
        assert!(text.contains("Ambigu"), "{text}");
    }

    #[test]
    fn ordered_systems_on_the_same_data_build() {
        let mut world = World::new();
        let mut s = checked_schedule();
        s.add_systems((heal, hurt).chain().in_set(Stage::Simulate));
        assert!(s.initialize(&mut world).is_ok());
    }

    #[test]
    fn the_stages_run_in_order() {
        #[derive(Resource, Default)]
        struct Log(Vec<Stage>);
        let mut world = World::new();
        world.init_resource::<Log>();
        let mut s = checked_schedule();
        // Added in reverse on purpose.
        s.add_systems((|mut l: ResMut<Log>| l.0.push(Stage::Telemetry)).in_set(Stage::Telemetry));
        s.add_systems((|mut l: ResMut<Log>| l.0.push(Stage::Persist)).in_set(Stage::Persist));
        s.add_systems((|mut l: ResMut<Log>| l.0.push(Stage::Replicate)).in_set(Stage::Replicate));
        s.add_systems((|mut l: ResMut<Log>| l.0.push(Stage::Simulate)).in_set(Stage::Simulate));
        s.add_systems((|mut l: ResMut<Log>| l.0.push(Stage::Input)).in_set(Stage::Input));
        s.run(&mut world);
        assert_eq!(
            world.resource::<Log>().0,
            [Stage::Input, Stage::Simulate, Stage::Replicate, Stage::Persist, Stage::Telemetry]
        );
    }
}
