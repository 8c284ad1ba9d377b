//! Path MTU from DF probes: ICMP echo requests that may not be fragmented (like `ping -M do`),
//! bisected between the protocol minimum and the route MTU. A black hole drops big probes
//! silently, so this measures exactly what PMTU discovery fails to learn.
//!
//! Needs a ping socket (`net.ipv4.ping_group_range`) or a raw one (root / CAP_NET_RAW). When
//! neither opens, or the host does not answer pings at all, the report says "not measured".

use std::io::{ErrorKind, Read as _};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd as _;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

/// Per-probe wait for the echo reply.
const REPLY_WAIT: Duration = Duration::from_millis(700);
/// A whole measurement never takes longer than this.
const BUDGET: Duration = Duration::from_secs(25);
/// Jumbo paths exist, but probing beyond this would only measure the local interface.
const MAX_PROBE_MTU: u32 = 9000;

/// The largest packet (IP header included) that crossed the path to `addr` and back.
pub fn measure(addr: IpAddr, route_mtu: u32) -> Result<u32, String> {
    let (v6, header, min) = match addr {
        IpAddr::V4(_) => (false, 28u32, 576u32),
        IpAddr::V6(_) => (true, 48u32, 1280u32),
    };
    let upper = route_mtu.clamp(min, MAX_PROBE_MTU);
    let socket = open(v6)?;
    let raw = socket.1;
    let socket = socket.0;
    socket
        .connect(&SocketAddr::new(addr, 0).into())
        .map_err(|e| format!("connect: {e}"))?;
    let token: u64 = rand::random();
    let mut seq: u16 = rand::random();
    let deadline = Instant::now() + BUDGET;
    let mut probe = |size: u32, tries: u32| -> Result<bool, String> {
        for _ in 0..tries {
            if Instant::now() > deadline {
                return Err(format!("took longer than {BUDGET:?}"));
            }
            seq = seq.wrapping_add(1);
            if echo(&socket, v6, raw, (size - header) as usize, seq, token)? {
                return Ok(true);
            }
        }
        Ok(false)
    };
    if !probe(min, 3)? {
        return Err(format!(
            "no echo reply even at {min} bytes (ICMP echo filtered on the path or by {addr})"
        ));
    }
    if probe(upper, 2)? {
        return Ok(upper);
    }
    let (mut ok, mut bad) = (min, upper);
    while bad - ok > 1 {
        let mid = ok + (bad - ok) / 2;
        if probe(mid, 2)? {
            ok = mid;
        } else {
            bad = mid;
        }
    }
    Ok(ok)
}

/// A ping socket if allowed, else a raw one; `true` when raw (replies carry the IPv4 header).
fn open(v6: bool) -> Result<(Socket, bool), String> {
    let (domain, proto) = if v6 {
        (Domain::IPV6, Protocol::ICMPV6)
    } else {
        (Domain::IPV4, Protocol::ICMPV4)
    };
    let (socket, raw) = match Socket::new(domain, Type::DGRAM, Some(proto)) {
        Ok(s) => (s, false),
        Err(_) => match Socket::new(domain, Type::RAW, Some(proto)) {
            Ok(s) => (s, true),
            Err(e) => {
                return Err(format!(
                    "cannot open an ICMP socket ({e}); run as root or allow ping sockets \
                     (sysctl net.ipv4.ping_group_range)"
                ));
            }
        },
    };
    // PROBE: set DF and ignore any PMTU the kernel learned, so every size is really tried.
    let (level, name, value) = if v6 {
        (
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_PROBE,
        )
    } else {
        (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_PROBE,
        )
    };
    // SAFETY: a valid fd, an int option and its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(format!(
            "cannot set DF on the probe socket: {}",
            std::io::Error::last_os_error()
        ));
    }
    socket
        .set_read_timeout(Some(REPLY_WAIT))
        .map_err(|e| e.to_string())?;
    Ok((socket, raw))
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in data.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends one echo request with `payload` bytes; `true` if its reply came back in time.
fn echo(
    socket: &Socket,
    v6: bool,
    raw: bool,
    payload: usize,
    seq: u16,
    token: u64,
) -> Result<bool, String> {
    let mut packet = vec![0u8; 8 + payload];
    packet[0] = if v6 { 128 } else { 8 };
    packet[4..6].copy_from_slice(&(std::process::id() as u16).to_be_bytes());
    packet[6..8].copy_from_slice(&seq.to_be_bytes());
    let stamp = token.to_be_bytes();
    for (i, b) in packet[8..].iter_mut().enumerate() {
        *b = stamp[i % 8];
    }
    if !v6 {
        let sum = checksum(&packet);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    match socket.send(&packet) {
        Ok(_) => {}
        // Larger than the local interface allows: certainly not on the path either.
        Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => return Ok(false),
        Err(e) => return Err(format!("send: {e}")),
    }
    let until = Instant::now() + REPLY_WAIT;
    let mut buf = vec![0u8; 65536];
    while Instant::now() < until {
        let n = match (&*socket).read(&mut buf) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Ok(false);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            // An ICMP error queued for the socket (e.g. frag needed that did get through).
            Err(_) => return Ok(false),
        };
        let mut reply = &buf[..n];
        if raw && !v6 && !reply.is_empty() {
            let ihl = usize::from(reply[0] & 0x0f) * 4;
            reply = reply.get(ihl..).unwrap_or_default();
        }
        let want_type = if v6 { 129 } else { 0 };
        if reply.len() >= 16
            && reply[0] == want_type
            && reply[6..8] == seq.to_be_bytes()
            && reply[8..16] == stamp
        {
            return Ok(reply.len() == packet.len());
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internet_checksum() {
        // RFC 1071's example words.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&data), !0xddf2u16);
        let mut packet = vec![8u8, 0, 0, 0, 0, 1, 0, 1, 0xab];
        let sum = checksum(&packet);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(checksum(&packet), 0);
    }
}
