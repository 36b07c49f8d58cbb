//! The system calls: `recvmmsg` and `sendmmsg` on Linux, and the conversions between
//! `SocketAddr` and the kernel's socket addresses around them; one `recv_from` / `send_to` per
//! datagram elsewhere. The only unsafe code of the crate is here.
//!
//! Must never: hand the kernel a pointer that outlives the call, or read an address the kernel
//! did not write (a length or family it did not set gives no address, not garbage).

use std::io;
use std::net::{SocketAddr, UdpSocket};

/// Reads up to `data.len() / slot_bytes` datagrams, one per slot of `data` (cut at the slot),
/// appending each one's whole length (`MSG_TRUNC`: even when cut) and source to `got`. Returns
/// how many; `Err` when none could be read.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn recv_batch(socket: &UdpSocket, data: &mut [u8], slot_bytes: usize, got: &mut Vec<(usize, SocketAddr)>) -> io::Result<usize> {
    use std::os::fd::AsRawFd;

    let mut iovs: Vec<libc::iovec> = data
        .chunks_exact_mut(slot_bytes)
        .map(|slot| libc::iovec {
            iov_base: slot.as_mut_ptr().cast(),
            iov_len: slot.len(),
        })
        .collect();
    // SAFETY: `sockaddr_storage` is plain old data; all zeroes is a valid value.
    let mut names: Vec<libc::sockaddr_storage> = vec![unsafe { std::mem::zeroed() }; iovs.len()];
    let mut hdrs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .zip(names.iter_mut())
        .map(|(iov, name)| {
            // SAFETY: `mmsghdr` is plain old data (pointers and integers); all zeroes is valid.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = (name as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            h
        })
        .collect();
    let count = libc::c_uint::try_from(hdrs.len()).unwrap_or(libc::c_uint::MAX);
    // SAFETY: every header points into `iovs`, `names` and `data`, which outlive the call and
    // are not otherwise touched during it; the kernel writes at most `iov_len` bytes per slot
    // (`MSG_TRUNC` only makes it report a longer datagram's whole length) and `msg_namelen`
    // bytes per name, and `count` is at most the number of headers.
    let n = unsafe {
        libc::recvmmsg(
            socket.as_raw_fd(),
            hdrs.as_mut_ptr(),
            count,
            libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            std::ptr::null_mut(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = usize::try_from(n).unwrap_or(0).min(hdrs.len());
    for (h, name) in hdrs.iter().zip(&names).take(n) {
        let len = h.msg_len as usize;
        // A datagram whose source the kernel did not give (not on a UDP socket) is skipped.
        if let Some(addr) = from_sockaddr(name, h.msg_hdr.msg_namelen) {
            got.push((len, addr));
        }
    }
    // Datagrams were read but none had a source: nothing to hand out, so nothing was read.
    if got.is_empty() {
        return Err(io::ErrorKind::WouldBlock.into());
    }
    Ok(got.len())
}

/// Sends `items` in order with one call. Returns how many the kernel took from the front; `Err`
/// when it took none (the error is the first datagram's).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn send_batch(socket: &UdpSocket, items: &[(SocketAddr, &[u8])]) -> io::Result<usize> {
    use std::os::fd::AsRawFd;

    // SAFETY: as above, all zeroes is a valid `sockaddr_storage`.
    let mut names: Vec<libc::sockaddr_storage> = vec![unsafe { std::mem::zeroed() }; items.len()];
    let mut lens = Vec::with_capacity(items.len());
    for ((addr, _), name) in items.iter().zip(names.iter_mut()) {
        lens.push(to_sockaddr(addr, name));
    }
    let mut iovs: Vec<libc::iovec> = items
        .iter()
        .map(|(_, payload)| libc::iovec {
            // The kernel only reads through it (sendmmsg does not write the payload).
            iov_base: payload.as_ptr().cast_mut().cast(),
            iov_len: payload.len(),
        })
        .collect();
    let mut hdrs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .zip(names.iter_mut().zip(&lens))
        .map(|(iov, (name, &len))| {
            // SAFETY: as above, all zeroes is a valid `mmsghdr`.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = (name as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = len;
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            h
        })
        .collect();
    let count = libc::c_uint::try_from(hdrs.len()).unwrap_or(libc::c_uint::MAX);
    // SAFETY: every header points into `iovs`, `names` and the caller's payloads, all alive for
    // the call; the kernel reads them and writes only each header's `msg_len`.
    let n = unsafe { libc::sendmmsg(socket.as_raw_fd(), hdrs.as_mut_ptr(), count, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(n).unwrap_or(0))
}

/// `IP_MTU_DISCOVER` = `IP_PMTUDISC_PROBE` on an IPv4 socket.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn set_dont_fragment(socket: &UdpSocket) -> io::Result<()> {
    use std::os::fd::AsRawFd;

    let value: libc::c_int = libc::IP_PMTUDISC_PROBE;
    // SAFETY: the option value is a live `c_int` of the length given; the kernel only reads it.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Elsewhere: nothing to set.
#[cfg(not(target_os = "linux"))]
pub fn set_dont_fragment(_socket: &UdpSocket) -> io::Result<()> {
    Ok(())
}

/// Writes `addr` into `out` as the kernel takes it; returns its length.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn to_sockaddr(addr: &SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: `sockaddr_storage` is larger than and aligned for every socket address.
            unsafe { std::ptr::write((out as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>(), sin) };
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above.
            unsafe { std::ptr::write((out as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// The address the kernel wrote into `name` (`len` bytes of it), if it is IPv4 or IPv6 and
/// whole.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn from_sockaddr(name: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

    let len = len as usize;
    match i32::from(name.ss_family) {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a `sockaddr_in`, of the length checked.
            let sin = unsafe { std::ptr::read((name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>()) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for a `sockaddr_in6`.
            let sin6 = unsafe { std::ptr::read((name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Elsewhere: one datagram per call.
#[cfg(not(target_os = "linux"))]
pub fn recv_batch(socket: &UdpSocket, data: &mut [u8], slot_bytes: usize, got: &mut Vec<(usize, SocketAddr)>) -> io::Result<usize> {
    let (len, addr) = socket.recv_from(&mut data[..slot_bytes])?;
    got.push((len, addr));
    Ok(1)
}

#[cfg(not(target_os = "linux"))]
pub fn send_batch(socket: &UdpSocket, items: &[(SocketAddr, &[u8])]) -> io::Result<usize> {
    match items.first() {
        Some((addr, payload)) => socket.send_to(payload, addr).map(|_| 1),
        None => Ok(0),
    }
}
