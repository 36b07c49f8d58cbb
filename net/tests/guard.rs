//! Fails the build if `zone-net`'s library code starts to own sockets, threads or clocks, or to
//! depend on an async runtime or the ECS: the server drives this crate, never the reverse.

use std::path::Path;

const FORBIDDEN: &[&str] = &[
    "std::net",
    "UdpSocket",
    "TcpStream",
    "std::thread",
    "thread::spawn",
    "Instant::now",
    "SystemTime",
    "tokio",
    "laminar::",
    "bevy_ecs",
    "zone_sim",
    "get_current_timestamp",
    "thread_rng",
];

#[test]
fn library_code_has_no_io_threads_or_clocks() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut checked = 0;
    for entry in std::fs::read_dir(&src).expect("read src/") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read source");
        // Only code: skip line comments and doc comments.
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            for word in FORBIDDEN {
                assert!(
                    !code.contains(word),
                    "{}:{}: `{word}` is not allowed in zone-net: {line}",
                    path.display(),
                    n + 1
                );
            }
        }
        checked += 1;
    }
    assert!(checked >= 7, "only {checked} source files found");
    let manifest = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).expect("read Cargo.toml");
    for dep in ["tokio", "laminar", "bevy_ecs", "zone-sim"] {
        assert!(
            !manifest.lines().any(|l| l.trim_start().starts_with(dep)),
            "zone-net must not depend on {dep}"
        );
    }
}
