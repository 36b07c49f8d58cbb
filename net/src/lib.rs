//! `zone-net`: the player protocol, as pure code.
//!
//! What it does today:
//! - [`proto`]: the wire messages of `proto/zone.proto` (package `zone.v1`), generated at build
//!   time with `protox` + `prost-build` (no `protoc`, no download);
//! - [`envelope`]: one message ↔ one datagram payload, with the protocol version, channel and
//!   per-channel sequence number, and the size limits checked first;
//! - [`quantize`] and [`view`]: object state as the small integers the wire carries, and the
//!   [`view::View`] one client sees;
//! - [`delta`]: the per-client snapshot codec (baseline → next view as datagrams within an MTU
//!   budget, nearest objects first; exact reconstruction on the client);
//! - [`order`]: a frame's objects in id order (a radix sort, once per snapshot frame);
//! - [`interest`]: which objects a client sees (own shard cell, neighbours within a radius,
//!   capped at the nearest N);
//! - [`token`]: HS256 JWT join tokens, minted and verified with the time passed in;
//! - [`client`]: a client's session as a pure state machine (join, input batches at the
//!   server's rate, snapshot reassembly and acks, RTT, the ordered event stream), driven by the
//!   caller's socket and clock;
//! - [`endpoint`]: the server's half, also a pure state machine (sessions in a deterministic
//!   order, handshake, inputs, per-client snapshots, reliable events, timers), which the server's
//!   network thread drives over laminar;
//! - [`seal`]: sealed datagrams (ChaCha20-Poly1305 under the session key the join token
//!   carries, nonce from a counter, replay window);
//! - [`gate`]: the screening of a stranger's first datagram (token, cookie, version), as a pure
//!   function, and the refusal reasons everything is counted under.
//!
//! **Invariant:** this crate owns no socket, no thread and no clock, and never panics on bytes from
//! the network. Every function is a pure transformation the server drives: it passes in `now`,
//! the views and the received bytes, and sends what comes out. Time-dependent checks take the time
//! as an argument. It does not depend on `zone-sim` or `bevy_ecs`: the server converts sim objects
//! to [`view::QObject`]s and [`interest::Located`]s at the boundary. `tests/guard.rs` fails the build
//! if sockets, threads, clocks or async runtimes appear in `src/`.
//!
//! The protocol as a client developer needs it, with worked examples checked by
//! `tests/protocol_doc.rs`, is `docs/PROTOCOL.md`.

pub mod client;
pub mod delta;
pub mod endpoint;
pub mod envelope;
pub mod gate;
mod input_decode;
pub mod interest;
pub mod order;
pub mod proto;
pub mod quantize;
pub mod seal;
pub mod token;
pub mod view;
pub mod wire;
