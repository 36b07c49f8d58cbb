//! The matcher must stay pure: no IO, clocks, threads, OS randomness or hash-ordered iteration in
//! `server/matchmaker/src` (the same rule as `zone-sim`, checked the same way: textually).

use std::path::Path;

const FORBIDDEN: &[(&str, &str)] = &[
    ("Instant", "no clock: time is passed in as milliseconds"),
    ("SystemTime", "no clock: time is passed in as milliseconds"),
    ("std::time", "no clock: time is passed in as milliseconds"),
    ("HashMap", "iteration order is random: use BTreeMap or a sorted Vec"),
    ("HashSet", "iteration order is random: use BTreeSet or a sorted Vec"),
    ("RandomState", "random hashing"),
    ("rand::", "no randomness: the same events give the same matches"),
    ("thread_rng", "no randomness"),
    ("std::thread", "no threads"),
    ("rayon", "no threads"),
    ("tokio", "no IO"),
    ("std::fs", "no IO: the caller reads the modes file"),
    ("std::net", "no IO"),
    ("std::env", "must not depend on the environment"),
    ("std::process", "no IO"),
    ("static mut", "global mutable state breaks determinism"),
];

#[test]
fn matcher_source_has_no_clock_randomness_threads_io_or_hash_iteration() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    let mut files = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "rs") {
            continue;
        }
        files += 1;
        let text = std::fs::read_to_string(&p).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for (pat, why) in FORBIDDEN {
                if code.contains(pat) {
                    found.push(format!("{}:{}: `{pat}`: {why}\n    {}", p.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(files >= 4, "server/matchmaker/src not found");
    assert!(found.is_empty(), "zone-matchmaker must stay pure:\n{}", found.join("\n"));
}
