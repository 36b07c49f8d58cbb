//! The stateless gate: the `DatagramSocket` laminar reads from and writes to. The decision about
//! a stranger's datagram is [`zone_net::gate::screen`] (pure, tested there); this file holds the
//! state around it (admitted addresses, per-IP and per-peer token buckets, the cookie key) and the
//! socket. It owns the UDP
//! socket (with a large receive buffer), counts every datagram and byte both ways, and lets a
//! datagram through to laminar only if its source address has been admitted, or if it is a
//! well-formed `Hello` whose join token verifies (which admits the address). It reads and sends
//! in batches (`zone-udp-batch`: `recvmmsg` and `sendmmsg`): what the network thread sends
//! ([`GateSocket::queue_unreliable`], framed as laminar's unreliable packets without passing
//! through laminar) is queued and goes out when it calls [`GateSocket::flush_sends`] after a
//! poll, or as soon as a batch is full.
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
use zone_net::endpoint::Admission;
use zone_net::gate::{Bucket, ScreenContext, Verdict, cookie, cookie_ok, cookie_period, screen};
use zone_net::wire;
use zone_udp_batch::{Receiver, Sender};

use super::counters::{NetCounters, Rejection};

/// Largest datagram accepted from a client: a Hello with the largest token fits in it.
pub const CLIENT_DATAGRAM_BYTES_MAX: usize = 2_400;
/// The receive buffer asked of the kernel (loopback at 1,000 clients loses datagrams with the
/// default of about 200 KB).
pub const SOCKET_RECV_BUFFER_BYTES: usize = 4 << 20;
/// Datagrams passed to laminar per poll at most (about 4 ms of 1,000 clients' traffic).
pub const DATAGRAMS_PER_POLL_MAX: usize = 4_096;
/// Datagrams read per system call at most.
pub const RECV_BATCH: usize = 32;
/// Datagrams sent per system call at most.
pub const SEND_BATCH: usize = 64;

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
    /// Admitted addresses: the player id and session key their token carried, and their packet
    /// budget.
    admitted: HashMap<SocketAddr, (Admission, Bucket)>,
    /// Datagrams passed to laminar in the current poll (see [`GateSocket::begin_poll`]).
    passed_this_poll: usize,
    per_ip: HashMap<IpAddr, Bucket>,
    last_sweep: Instant,
    buf: Vec<u8>,
    /// Reads [`RECV_BATCH`] datagrams per call, each cut one byte past the largest accepted; a
    /// longer one still tells its whole length (counted as received, refused as oversized).
    recv: Receiver,
    /// What laminar sent since the last [`GateSocket::flush_sends`].
    send: Sender,
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
        let socket: std::net::UdpSocket = s.into();
        // Every datagram fits the MTU budget: DF, and no IP id to draw per datagram.
        if let Err(e) = zone_udp_batch::set_dont_fragment(&socket) {
            tracing::debug!(error = %e, "cannot set the don't-fragment bit on the game socket (kept as it is)");
        }
        Ok(GateSocket {
            socket,
            policy,
            admitted: HashMap::new(),
            passed_this_poll: 0,
            per_ip: HashMap::new(),
            last_sweep: Instant::now(),
            buf: vec![0; CLIENT_DATAGRAM_BYTES_MAX + 1],
            recv: Receiver::new(RECV_BATCH, CLIENT_DATAGRAM_BYTES_MAX + 1),
            send: Sender::new(SEND_BATCH),
            counters,
            cookie_key: random_key(),
            started: Instant::now(),
        })
    }

    /// The player and session key an admitted address's token carried.
    pub fn admitted(&self, addr: &SocketAddr) -> Option<Admission> {
        self.admitted.get(addr).map(|(a, _)| *a)
    }

    /// Starts a poll: at most [`DATAGRAMS_PER_POLL_MAX`] datagrams reach laminar in one poll, so
    /// a flood cannot keep the network thread in its receive loop (the rest wait for the next
    /// poll: up to [`RECV_BATCH`] already read, the others in the kernel's buffer, which drops
    /// what does not fit).
    pub fn begin_poll(&mut self) {
        self.passed_this_poll = 0;
    }

    /// Forgets an address: its datagrams are a stranger's again.
    pub fn revoke(&mut self, addr: &SocketAddr) {
        self.admitted.remove(addr);
    }

    /// Sends what laminar queued since the last call ([`SEND_BATCH`] datagrams per system call).
    /// The network thread calls it after every poll. A datagram the kernel refuses is counted
    /// (`zone_net_send_failures_total`) and dropped, as laminar dropped it after logging.
    pub fn flush_sends(&mut self) {
        if self.send.is_empty() {
            return;
        }
        let f = self.send.flush(&self.socket);
        self.counters.sent_many(f.sent, f.bytes);
        if f.failed > 0 {
            self.counters.send_failures.fetch_add(f.failed as u64, Ordering::Relaxed);
            if let Some(e) = f.last_error {
                tracing::debug!(failed = f.failed, error = %e, "datagrams refused by the kernel");
            }
        }
    }

    /// Queues an envelope (sealed or not) for `addr` as laminar would frame an unreliable
    /// packet, without going through laminar: every datagram the server sends is one, and
    /// laminar only added a channel, a connection lookup and two copies per datagram on the way
    /// (about 3% of the server's samples at 1,000 bots). It goes out with the next
    /// [`GateSocket::flush_sends`] (or now, when a batch is full).
    pub fn queue_unreliable(&mut self, addr: &SocketAddr, payload: &[u8]) {
        if self.send.queue_with_header(*addr, &wire::header(), payload) {
            self.flush_sends();
        }
    }

    /// Sends a datagram outside laminar (refusals to strangers, notices at shutdown).
    pub fn send_raw(&mut self, addr: &SocketAddr, datagram: &[u8]) {
        if self.socket.send_to(datagram, addr).is_ok() {
            self.counters.sent(datagram.len());
        } else {
            self.counters.send_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn now_us(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.started).as_micros() as u64
    }

    /// The address as the cookie hashes it: IP octets, then the port (little-endian).
    fn addr_bytes(addr: &SocketAddr) -> Vec<u8> {
        let mut b = match addr.ip() {
            IpAddr::V4(ip) => ip.octets().to_vec(),
            IpAddr::V6(ip) => ip.octets().to_vec(),
        };
        b.extend_from_slice(&addr.port().to_le_bytes());
        b
    }

    /// Decides about one datagram from an address not admitted (with [`screen`]), sends its
    /// reply, and returns true to pass it on.
    fn screen(&mut self, addr: SocketAddr, len: usize) -> bool {
        let now = Instant::now();
        let now_us = self.now_us(now);
        let now_unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let period = cookie_period(now.saturating_duration_since(self.started).as_secs());
        let addr_bytes = Self::addr_bytes(&addr);
        let key = self.cookie_key;
        let rate = self.policy.handshake_rate_per_ip;
        let per_ip = &mut self.per_ip;
        let mut take = || {
            per_ip
                .entry(addr.ip())
                .or_insert_with(|| Bucket::full(rate * 2.0, now_us))
                .take(rate, rate * 2.0, now_us)
        };
        let ok = |c: &[u8]| cookie_ok(&key, &addr_bytes, period, c);
        let mut cx = ScreenContext {
            token_secret: self.policy.token_secret.as_deref(),
            zone_id: &self.policy.zone_id,
            now_unix,
            cookie_ok: &ok,
            cookie: cookie(&key, &addr_bytes, period),
            take_handshake: &mut take,
            full: self.admitted.len() >= self.policy.admitted_max,
        };
        match screen(&self.buf[..len], &mut cx) {
            Verdict::Admit { player_id, key } => {
                let burst = self.policy.peer_packet_rate * 2.0;
                let admission = Admission { player: player_id, key };
                self.admitted.insert(addr, (admission, Bucket::full(burst, now_us)));
                true
            }
            Verdict::Challenge { reply } => {
                self.counters.challenges.fetch_add(1, Ordering::Relaxed);
                self.send_raw(&addr, &reply);
                false
            }
            Verdict::Refuse { why, reply } => {
                self.counters.reject(why);
                if let Some(r) = reply {
                    self.send_raw(&addr, &r);
                }
                false
            }
        }
    }

    /// Drops per-IP buckets that have refilled (bounded memory under scattered sources).
    fn sweep(&mut self, now: Instant) {
        if now.saturating_duration_since(self.last_sweep).as_secs() < 10 {
            return;
        }
        self.last_sweep = now;
        let now_us = self.now_us(now);
        let burst = self.policy.handshake_rate_per_ip * 2.0;
        let rate = self.policy.handshake_rate_per_ip;
        self.per_ip.retain(|_, b| !b.is_full(rate, burst, now_us));
    }
}

impl DatagramSocket for GateSocket {
    /// Queues the datagram; it is sent by [`GateSocket::flush_sends`] (or here, once a whole
    /// batch is queued).
    fn send_packet(&mut self, addr: &SocketAddr, payload: &[u8]) -> io::Result<usize> {
        if self.send.queue(*addr, payload) {
            self.flush_sends();
        }
        Ok(payload.len())
    }

    fn receive_packet<'a>(&mut self, buffer: &'a mut [u8]) -> io::Result<(&'a [u8], SocketAddr)> {
        loop {
            if self.passed_this_poll >= DATAGRAMS_PER_POLL_MAX {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let (len, addr) = self.recv.recv_from(&self.socket, &mut self.buf)?;
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
                    let now_us = Instant::now().saturating_duration_since(self.started).as_micros() as u64;
                    if !bucket.take(rate, rate * 2.0, now_us) {
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
