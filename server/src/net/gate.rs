//! The stateless gate: the `DatagramSocket` laminar reads from and writes to. It owns the UDP
//! socket (with a large receive buffer), counts every datagram and byte both ways, and lets a
//! datagram through to laminar only if its source address has been admitted, or if it is a
//! well-formed `Hello` whose join token verifies (which admits the address).
//!
//! A Hello whose token verifies must also carry the cookie of the gate's `Challenge` (a stateless
//! hash of the source address and the time), which proves the client receives at that address:
//! a spoofed source can neither join nor take over a player's session.
//! Everything else is dropped and counted by reason; a Hello that fails gets a `Reject` (never
//! larger than the Hello, so the gate cannot be used to amplify traffic). laminar therefore never
//! allocates a connection for a stranger. Never blocks (the socket is non-blocking), never
//! panics on bytes from the network, and never sends more than one datagram per datagram
//! received from an address that has not joined.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use laminar::DatagramSocket;
use sha2::{Digest, Sha256};
use zone_net::envelope::{EnvelopeError, Stamp, decode_client, encode_server, reject};
use zone_net::proto::{Challenge, Channel, RejectReason, client_envelope, server_envelope};
use zone_net::wire;

use super::counters::{NetCounters, Rejection};

/// Largest datagram accepted from a client: a Hello with the largest token fits in it.
pub const CLIENT_DATAGRAM_BYTES_MAX: usize = 2_400;
/// The receive buffer asked of the kernel (loopback at 1,000 clients loses datagrams with the
/// default of about 200 KB).
pub const SOCKET_RECV_BUFFER_BYTES: usize = 4 << 20;
/// Datagrams passed to laminar per poll at most (about 4 ms of 1,000 clients' traffic).
pub const DATAGRAMS_PER_POLL_MAX: usize = 4_096;

/// Seconds per cookie period; a cookie is accepted in its period and the next.
const COOKIE_PERIOD_S: u64 = 10;

/// 32 random bytes from the OS (`/dev/urandom`); if that fails, a hash of the time and process
/// id, which still differs per process.
fn random_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut key))
        .is_ok();
    if !ok {
        let mut h = Sha256::new();
        h.update(format!("{:?} {}", SystemTime::now(), std::process::id()).as_bytes());
        key.copy_from_slice(&h.finalize());
    }
    key
}

/// A token bucket: `rate` per second, up to `burst`.
#[derive(Clone, Copy, Debug)]
pub struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub fn full(burst: f64, now: Instant) -> Bucket {
        Bucket { tokens: burst, at: now }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, rate: f64, burst: f64, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * rate).min(burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What the gate checks a stranger's Hello against.
#[derive(Clone, Debug)]
pub struct GatePolicy {
    pub token_secret: Option<Vec<u8>>,
    pub zone_id: String,
    pub handshake_rate_per_ip: f64,
    /// Datagrams per second accepted from one admitted address (twice this is the burst).
    pub peer_packet_rate: f64,
    /// Admitted addresses at most (joined plus joining); further Hellos get ZONE_FULL.
    pub admitted_max: usize,
}

/// The gate in front of laminar.
#[derive(Debug)]
pub struct GateSocket {
    socket: UdpSocket,
    policy: GatePolicy,
    /// Admitted addresses: the player id their token named, and their packet budget.
    admitted: HashMap<SocketAddr, (u64, Bucket)>,
    /// Datagrams passed to laminar in the current poll (see [`GateSocket::begin_poll`]).
    passed_this_poll: usize,
    per_ip: HashMap<IpAddr, Bucket>,
    last_sweep: Instant,
    buf: Vec<u8>,
    counters: Arc<NetCounters>,
    /// Random per process: cookies from another process (or an earlier run) are not valid.
    cookie_key: [u8; 32],
    started: Instant,
}

impl GateSocket {
    /// Binds `addr` (non-blocking, 4 MiB receive buffer where the kernel allows it).
    pub fn bind(addr: SocketAddr, policy: GatePolicy, counters: Arc<NetCounters>) -> io::Result<GateSocket> {
        let domain = if addr.is_ipv4() {
            socket2::Domain::IPV4
        } else {
            socket2::Domain::IPV6
        };
        let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
        // Best effort: the kernel caps it at net.core.rmem_max.
        let _ = s.set_recv_buffer_size(SOCKET_RECV_BUFFER_BYTES);
        let _ = s.set_send_buffer_size(SOCKET_RECV_BUFFER_BYTES);
        s.bind(&addr.into())?;
        s.set_nonblocking(true)?;
        Ok(GateSocket {
            socket: s.into(),
            policy,
            admitted: HashMap::new(),
            passed_this_poll: 0,
            per_ip: HashMap::new(),
            last_sweep: Instant::now(),
            buf: vec![0; 65_536],
            counters,
            cookie_key: random_key(),
            started: Instant::now(),
        })
    }

    /// The player an admitted address's token named.
    pub fn admitted_player(&self, addr: &SocketAddr) -> Option<u64> {
        self.admitted.get(addr).map(|(p, _)| *p)
    }

    /// Starts a poll: at most [`DATAGRAMS_PER_POLL_MAX`] datagrams reach laminar in one poll, so
    /// a flood cannot keep the network thread in its receive loop (the rest wait in the kernel's
    /// buffer, which drops what does not fit).
    pub fn begin_poll(&mut self) {
        self.passed_this_poll = 0;
    }

    /// Forgets an address: its datagrams are a stranger's again.
    pub fn revoke(&mut self, addr: &SocketAddr) {
        self.admitted.remove(addr);
    }

    /// Sends a datagram outside laminar (refusals to strangers, notices at shutdown).
    pub fn send_raw(&mut self, addr: &SocketAddr, datagram: &[u8]) {
        if self.socket.send_to(datagram, addr).is_ok() {
            self.counters.sent(datagram.len());
        }
    }

    /// Answers a stranger's datagram of `received` bytes with a Reject, only if the reply is no
    /// larger (no amplification).
    fn reject(&mut self, addr: &SocketAddr, received: usize, reason: RejectReason, detail: &str) {
        let stamp = Stamp {
            channel: Channel::Reliable,
            sequence: 0,
        };
        for detail in [detail, ""] {
            let d = wire::frame(&encode_server(stamp, reject(reason, detail)));
            if d.len() <= received {
                self.send_raw(addr, &d);
                return;
            }
        }
    }

    /// Decides about one datagram from an address not admitted. Returns true to pass it on.
    fn screen(&mut self, addr: SocketAddr, len: usize) -> bool {
        let now = Instant::now();
        let Some(payload) = wire::unframe(&self.buf[..len]) else {
            self.counters.reject(Rejection::NotOurProtocol);
            return false;
        };
        let hello = match decode_client(payload) {
            Ok((_, client_envelope::Body::Hello(h))) => h,
            Ok(_) => {
                self.counters.reject(Rejection::NotJoined);
                return false;
            }
            Err(EnvelopeError::BadVersion { found }) => {
                self.counters.reject(Rejection::BadVersion);
                self.reject(
                    &addr,
                    len,
                    RejectReason::BadVersion,
                    &format!("protocol {found} is not supported; this server speaks 1"),
                );
                return false;
            }
            Err(_) => {
                self.counters.reject(Rejection::Malformed);
                return false;
            }
        };
        let rate = self.policy.handshake_rate_per_ip;
        let bucket = self.per_ip.entry(addr.ip()).or_insert_with(|| Bucket::full(rate * 2.0, now));
        if !bucket.take(rate, rate * 2.0, now) {
            self.counters.reject(Rejection::HandshakeRate);
            self.reject(&addr, len, RejectReason::RateLimited, "too many join attempts; retry shortly");
            return false;
        }
        if self.admitted.len() >= self.policy.admitted_max {
            self.counters.reject(Rejection::ZoneFull);
            self.reject(&addr, len, RejectReason::ZoneFull, "the zone is full");
            return false;
        }
        let Some(secret) = self.policy.token_secret.as_deref() else {
            self.counters.reject(Rejection::NoSecret);
            self.reject(&addr, len, RejectReason::BadSignature, "this server has no token secret");
            return false;
        };
        let now_unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        match zone_net::token::verify(secret, &hello.join_token, &self.policy.zone_id, now_unix) {
            Ok(_) if !self.cookie_ok(&addr, &hello.cookie, now) => {
                // Prove the source address first: a spoofed one never sees the cookie.
                self.counters.challenges.fetch_add(1, Ordering::Relaxed);
                let body = server_envelope::Body::Challenge(Challenge {
                    cookie: self.cookie(&addr, self.bucket(now)).to_vec(),
                });
                let d = wire::frame(&encode_server(
                    Stamp {
                        channel: Channel::Reliable,
                        sequence: 0,
                    },
                    body,
                ));
                if d.len() <= len {
                    self.send_raw(&addr, &d);
                }
                false
            }
            Ok(claims) => {
                let burst = self.policy.peer_packet_rate * 2.0;
                self.admitted.insert(addr, (claims.player_id, Bucket::full(burst, now)));
                true
            }
            Err(e) => {
                let reason = e.reject_reason();
                self.counters.reject(Rejection::from_reject_reason(reason));
                self.reject(&addr, len, reason, &e.to_string());
                false
            }
        }
    }

    /// The cookie period an instant falls in.
    fn bucket(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.started).as_secs() / COOKIE_PERIOD_S
    }

    /// A stateless cookie for `addr` in period `bucket`: the first 16 bytes of
    /// SHA-256(process key ‖ address ‖ period). Only this process can make it, and only someone
    /// who receives at `addr` can learn it.
    fn cookie(&self, addr: &SocketAddr, bucket: u64) -> [u8; 16] {
        let mut h = Sha256::new();
        h.update(self.cookie_key);
        match addr.ip() {
            IpAddr::V4(ip) => h.update(ip.octets()),
            IpAddr::V6(ip) => h.update(ip.octets()),
        }
        h.update(addr.port().to_le_bytes());
        h.update(bucket.to_le_bytes());
        let mut out = [0u8; 16];
        out.copy_from_slice(&h.finalize()[..16]);
        out
    }

    /// A cookie made for `addr` in this period or the previous one.
    fn cookie_ok(&self, addr: &SocketAddr, cookie: &[u8], now: Instant) -> bool {
        let b = self.bucket(now);
        cookie.len() == 16 && (cookie == self.cookie(addr, b) || (b > 0 && cookie == self.cookie(addr, b - 1)))
    }

    /// Drops per-IP buckets that have refilled (bounded memory under scattered sources).
    fn sweep(&mut self, now: Instant) {
        if now.saturating_duration_since(self.last_sweep).as_secs() < 10 {
            return;
        }
        self.last_sweep = now;
        let burst = self.policy.handshake_rate_per_ip * 2.0;
        let rate = self.policy.handshake_rate_per_ip;
        self.per_ip
            .retain(|_, b| b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst);
    }
}

impl DatagramSocket for GateSocket {
    fn send_packet(&mut self, addr: &SocketAddr, payload: &[u8]) -> io::Result<usize> {
        let n = self.socket.send_to(payload, addr)?;
        self.counters.sent(n);
        Ok(n)
    }

    fn receive_packet<'a>(&mut self, buffer: &'a mut [u8]) -> io::Result<(&'a [u8], SocketAddr)> {
        loop {
            if self.passed_this_poll >= DATAGRAMS_PER_POLL_MAX {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let (len, addr) = self.socket.recv_from(&mut self.buf)?;
            self.counters.received(len);
            if len > CLIENT_DATAGRAM_BYTES_MAX || len > buffer.len() {
                self.counters.reject(Rejection::Oversized);
                continue;
            }
            let rate = self.policy.peer_packet_rate;
            match self.admitted.get_mut(&addr) {
                Some((_, bucket)) => {
                    // Admitted peers get laminar's unreliable packets only (its reliable and
                    // fragment paths buffer data per connection) and a packet budget.
                    if wire::unframe(&self.buf[..len]).is_none() {
                        self.counters.reject(Rejection::Malformed);
                        continue;
                    }
                    if !bucket.take(rate, rate * 2.0, Instant::now()) {
                        self.counters.reject(Rejection::PeerRate);
                        continue;
                    }
                }
                None => {
                    if !self.screen(addr, len) {
                        self.sweep(Instant::now());
                        continue;
                    }
                }
            }
            self.passed_this_poll += 1;
            buffer[..len].copy_from_slice(&self.buf[..len]);
            return Ok((&buffer[..len], addr));
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    fn is_blocking_mode(&self) -> bool {
        false
    }
}
