//! The generated protobuf types of `proto/zone.proto` (package `zone.v1`), built by `build.rs`
//! with `protox` and `prost-build`. Edit the `.proto`, never this output.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

include!(concat!(env!("OUT_DIR"), "/zone.v1.rs"));
