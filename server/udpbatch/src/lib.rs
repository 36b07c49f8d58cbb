//! Batched UDP for the game socket: [`Receiver`] reads up to a batch of datagrams with one
//! `recvmmsg` call and hands them out one at a time, as `UdpSocket::recv_from` would; [`Sender`]
//! queues datagrams and sends them with one `sendmmsg` call per batch. Linux is the target; on
//! other systems both fall back to one `recv_from` / `send_to` per datagram (the length of a
//! datagram cut at its slot is then the cut length, and on Windows such a datagram is an error).
//!
//! Why: at 500 bots the zone server's network thread made about 80 system calls a second per
//! client (60 inputs in, 20 snapshots out), and about 30% of the server's CPU was in the kernel. A batch
//! saves each datagram the system call's own cost (entry and exit, the file lookup, the address
//! copy); the UDP work per datagram stays. On this project's 2-core VM, loopback, 200-byte
//! datagrams to 500 addresses cost 2.8–3.3 µs of CPU each with `send_to` and 2.5–2.9 µs with
//! `sendmmsg` in batches of 64 (`examples/send_cost.rs`, two runs; the server's own figures are
//! in `benchmarks/2026-11-30-udp-batch.md`).
//!
//! Must never: block (on Linux every call passes `MSG_DONTWAIT`; elsewhere the socket must be
//! non-blocking), panic on what the kernel returns, or
//! hold a datagram back past [`Sender::flush`]. The caller decides when to flush: a queued
//! datagram is not on the wire until then.

#![deny(unsafe_code)]

use std::io;
use std::net::{SocketAddr, UdpSocket};

mod sys;

/// Reads datagrams in batches and hands them out one at a time.
#[derive(Debug)]
pub struct Receiver {
    slot_bytes: usize,
    /// `slots` buffers of `slot_bytes`, one after another.
    data: Vec<u8>,
    /// The length and source of each datagram of the last batch.
    got: Vec<(usize, SocketAddr)>,
    next: usize,
    calls: u64,
}

impl Receiver {
    /// A receiver reading up to `slots` datagrams per call, each cut at `slot_bytes` (the rest of
    /// a longer datagram is lost, as `recv_from` loses what does not fit its buffer).
    pub fn new(slots: usize, slot_bytes: usize) -> Receiver {
        let (slots, slot_bytes) = (slots.max(1), slot_bytes.max(1));
        Receiver {
            slot_bytes,
            data: vec![0; slots * slot_bytes],
            got: Vec::with_capacity(slots),
            next: 0,
            calls: 0,
        }
    }

    /// The next datagram, copied into `buf` as far as it and the slot hold: its whole length
    /// (on Linux even when it was cut, so a caller can tell a datagram too long for it; elsewhere
    /// the length read, as [`UdpSocket::recv_from`] gives it) and its source. Only
    /// `min(length, slot_bytes, buf.len())` bytes of `buf` are written. When none of the last
    /// batch is left it reads a new batch; with nothing to read it returns the socket's error
    /// (`WouldBlock` on a non-blocking socket, which `socket` must be).
    pub fn recv_from(&mut self, socket: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        if self.next == self.got.len() {
            self.got.clear();
            self.next = 0;
            self.calls += 1;
            sys::recv_batch(socket, &mut self.data, self.slot_bytes, &mut self.got)?;
        }
        let (len, addr) = self.got[self.next];
        let from = self.next * self.slot_bytes;
        self.next += 1;
        let n = len.min(self.slot_bytes).min(buf.len());
        buf[..n].copy_from_slice(&self.data[from..from + n]);
        Ok((len, addr))
    }

    /// Datagrams read from the socket and not yet handed out.
    pub fn pending(&self) -> usize {
        self.got.len() - self.next
    }

    /// System calls made to read (including those that found nothing).
    pub fn calls(&self) -> u64 {
        self.calls
    }
}

/// What one [`Sender::flush`] did.
#[derive(Debug, Default)]
pub struct Flushed {
    /// Datagrams the kernel took, and their bytes.
    pub sent: usize,
    pub bytes: usize,
    /// Datagrams it refused (each skipped; the rest are still sent), and the last refusal.
    pub failed: usize,
    pub last_error: Option<io::Error>,
}

/// Sets the don't-fragment bit on every IPv4 datagram `socket` sends, without path MTU
/// discovery (Linux `IP_PMTUDISC_PROBE`, as QUIC stacks do): for a sender whose datagrams are
/// sized for the smallest path MTU anyway. Besides never fragmenting, it saves the kernel the
/// shared IP-id generator on every datagram of an unconnected socket (`__ip_select_ident`,
/// an atomic on a hashed table: about 1% of the zone server's samples at 1,000 bots). On other
/// systems, and for IPv6 sockets (IPv6 routers never fragment), it does nothing.
pub fn set_dont_fragment(socket: &UdpSocket) -> io::Result<()> {
    if socket.local_addr()?.is_ipv6() {
        return Ok(());
    }
    sys::set_dont_fragment(socket)
}

/// Queues datagrams and sends them in batches.
#[derive(Debug)]
pub struct Sender {
    batch: usize,
    /// The queued payloads, one after another.
    data: Vec<u8>,
    /// Each queued datagram's destination and end in `data`.
    queued: Vec<(SocketAddr, usize)>,
}

impl Sender {
    /// A sender that sends up to `batch` datagrams per call.
    pub fn new(batch: usize) -> Sender {
        let batch = batch.max(1);
        Sender {
            batch,
            data: Vec::with_capacity(batch * 256),
            queued: Vec::with_capacity(batch),
        }
    }

    /// Queues a copy of `payload` for `addr`. Returns true once a whole batch is queued: flush
    /// then (queuing more is allowed; the next flush sends them all, a batch per call).
    pub fn queue(&mut self, addr: SocketAddr, payload: &[u8]) -> bool {
        self.data.extend_from_slice(payload);
        self.queued.push((addr, self.data.len()));
        self.queued.len() >= self.batch
    }

    /// [`Sender::queue`] for a datagram that is `header` followed by `payload`, copied in place
    /// (no datagram is built first).
    pub fn queue_with_header(&mut self, addr: SocketAddr, header: &[u8], payload: &[u8]) -> bool {
        self.data.extend_from_slice(header);
        self.queue(addr, payload)
    }

    /// Datagrams queued and not yet sent.
    pub fn len(&self) -> usize {
        self.queued.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Sends everything queued, in order, `batch` datagrams per call. A datagram the kernel
    /// refuses (a full buffer, an unreachable address) is counted and skipped; the queue is empty
    /// afterwards either way.
    pub fn flush(&mut self, socket: &UdpSocket) -> Flushed {
        let mut out = Flushed::default();
        let mut items: Vec<(SocketAddr, &[u8])> = Vec::with_capacity(self.queued.len());
        let mut start = 0;
        for &(addr, end) in &self.queued {
            items.push((addr, &self.data[start..end]));
            start = end;
        }
        let mut at = 0;
        while at < items.len() {
            let chunk = &items[at..items.len().min(at + self.batch)];
            match sys::send_batch(socket, chunk) {
                Ok(n) if n > 0 => {
                    let n = n.min(chunk.len());
                    out.sent += n;
                    out.bytes += chunk[..n].iter().map(|(_, p)| p.len()).sum::<usize>();
                    at += n;
                }
                // Nothing taken and no error: count the first as refused rather than loop.
                Ok(_) => {
                    out.failed += 1;
                    at += 1;
                }
                Err(e) => {
                    // The first datagram of the chunk was refused: skip it, send the rest.
                    out.failed += 1;
                    out.last_error = Some(e);
                    at += 1;
                }
            }
        }
        self.queued.clear();
        self.data.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use super::*;

    fn bound(addr: &str) -> Option<UdpSocket> {
        let s = UdpSocket::bind(addr).ok()?;
        s.set_nonblocking(true).unwrap();
        Some(s)
    }

    /// Reads until `want` datagrams arrived (loopback delivers at once, but give it a moment).
    fn read_all(rx: &mut Receiver, s: &UdpSocket, want: usize) -> Vec<(Vec<u8>, SocketAddr)> {
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        for _ in 0..2_000 {
            match rx.recv_from(s, &mut buf) {
                Ok((n, a)) => got.push((buf[..n.min(buf.len())].to_vec(), a)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if got.len() >= want {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(e) => panic!("recv: {e}"),
            }
        }
        got
    }

    fn round_trip(addr: &str) {
        let (Some(a), Some(b), Some(c)) = (bound(addr), bound(addr), bound(addr)) else {
            eprintln!("skipped: cannot bind {addr} here");
            return;
        };
        let mut tx = Sender::new(7);
        // 50 datagrams to two receivers, of every length from 0 to 49, in three flushes.
        let mut full_at = Vec::new();
        for i in 0..50u8 {
            let to = if i % 2 == 0 {
                b.local_addr().unwrap()
            } else {
                c.local_addr().unwrap()
            };
            if tx.queue(to, &vec![i; usize::from(i)]) {
                full_at.push(i);
            }
            if i == 9 || i == 30 {
                let f = tx.flush(&a);
                assert_eq!((f.sent, f.failed), (tx_len_before(i), 0), "{f:?}");
            }
        }
        assert_eq!(full_at.first(), Some(&6), "the batch is full at its seventh datagram");
        let f = tx.flush(&a);
        assert_eq!((f.sent, f.failed), (19, 0));
        assert!(tx.is_empty());
        let mut rx = Receiver::new(4, 64);
        for (s, parity) in [(&b, 0u8), (&c, 1u8)] {
            let got = read_all(&mut rx, s, 25);
            assert_eq!(got.len(), 25, "every datagram arrives once");
            for (k, (bytes, from)) in got.iter().enumerate() {
                let i = k as u8 * 2 + parity;
                assert_eq!(bytes, &vec![i; usize::from(i)], "in order, whole");
                assert_eq!(*from, a.local_addr().unwrap(), "with its source");
            }
            assert_eq!(rx.pending(), 0);
        }
        assert!(rx.calls() >= 14, "batches of at most 4: {}", rx.calls());
    }

    /// Datagrams queued up to and including `i`, less those already flushed at 9.
    fn tx_len_before(i: u8) -> usize {
        if i == 9 { 10 } else { 21 }
    }

    #[test]
    fn batches_arrive_whole_in_order_with_their_sources_over_ipv4() {
        round_trip("127.0.0.1:0");
    }

    #[test]
    fn batches_arrive_whole_in_order_with_their_sources_over_ipv6() {
        round_trip("[::1]:0");
    }

    #[test]
    fn nothing_to_read_is_would_block_and_a_long_datagram_is_cut_but_tells_its_length() {
        let (a, b) = (bound("127.0.0.1:0").unwrap(), bound("127.0.0.1:0").unwrap());
        let mut rx = Receiver::new(8, 16);
        let mut buf = [0u8; 64];
        assert_eq!(rx.recv_from(&b, &mut buf).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        a.send_to(&[7u8; 40], b.local_addr().unwrap()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let (len, _) = rx.recv_from(&b, &mut buf).unwrap();
        if cfg!(target_os = "linux") {
            assert_eq!(len, 40, "the whole length");
        }
        assert_eq!(buf[..16], [7u8; 16], "the slot's bytes");
        assert_eq!(buf[16..], [0u8; 48], "nothing past the slot");
        // A caller's buffer shorter than the datagram cuts it too.
        a.send_to(&[9u8; 12], b.local_addr().unwrap()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut small = [0u8; 5];
        assert_eq!(rx.recv_from(&b, &mut small).unwrap().0, 12);
        assert_eq!(small, [9u8; 5]);
    }

    #[test]
    fn a_refused_datagram_is_counted_and_the_rest_still_go() {
        let (a, b) = (bound("127.0.0.1:0").unwrap(), bound("127.0.0.1:0").unwrap());
        let to = b.local_addr().unwrap();
        let mut tx = Sender::new(8);
        tx.queue(to, b"one");
        // An IPv6 destination from an IPv4 socket: the kernel refuses it.
        tx.queue("[::1]:9".parse().unwrap(), b"nowhere");
        // Port 0 cannot be sent to either.
        tx.queue(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)), b"zero");
        tx.queue(to, b"two");
        let f = tx.flush(&a);
        assert_eq!((f.sent, f.failed, f.bytes), (2, 2, 6), "{f:?}");
        assert!(f.last_error.is_some());
        let got = read_all(&mut Receiver::new(8, 64), &b, 2);
        let bodies: Vec<&[u8]> = got.iter().map(|(p, _)| p.as_slice()).collect();
        assert_eq!(bodies, vec![&b"one"[..], &b"two"[..]]);
    }
}
