//! Compiles `proto/zone.proto` with `protox` (a pure-Rust .proto parser) and `prost-build`, so a
//! build needs no `protoc` binary and downloads nothing.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/zone.proto");
    let fds = protox::compile(["zone.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
