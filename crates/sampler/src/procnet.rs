//! TCP sockets through `/proc/thread-self/net/tcp` and `tcp6`: the cross-check and fallback for
//! sock_diag. It reads the whole table and filters here, so it is slower; it needs no netlink.
//! `thread-self`, not `self`: a thread that entered its own network namespace reads its own table.
//!
//! # References
//! proc(5) (`/proc/net/tcp`); `net/ipv4/tcp_ipv4.c` (`get_tcp4_sock`, `get_timewait4_sock`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::{Error, Query, SocketRecord, TcpState};

/// Calls `f` for every TCP socket, IPv4 then IPv6, that passes the query.
pub fn for_each(q: &Query, mut f: impl FnMut(&SocketRecord)) -> Result<(), Error> {
    for file in ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"] {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            // A kernel without IPv6 has no tcp6.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && file.ends_with('6') => continue,
            Err(e) => return Err(Error::io("read /proc/net/tcp")(e)),
        };
        for line in text.lines().skip(1) {
            let r = parse_line(line).ok_or_else(|| Error::Protocol(format!("{file}: `{line}`")))?;
            if q.matches(&r) {
                f(&r);
            }
        }
    }
    Ok(())
}

/// Parses one line: `sl local rem st tx:rx tr:when retrnsmt uid timeout inode …`.
pub fn parse_line(line: &str) -> Option<SocketRecord> {
    let mut w = line.split_whitespace();
    let _sl = w.next()?;
    let local = addr(w.next()?)?;
    let remote = addr(w.next()?)?;
    let state = TcpState::from_kernel(u8::from_str_radix(w.next()?, 16).ok()?)?;
    let (tx, rx) = w.next()?.split_once(':')?;
    let timer = w.next()?;
    let _retrnsmt = w.next()?;
    let uid = w.next()?.parse().ok()?;
    let _timeout = w.next()?;
    let inode = w.next()?.parse().ok()?;
    Some(SocketRecord {
        idle_ms: None,
        state,
        local,
        remote,
        inode,
        uid,
        recv_q: u32::from_str_radix(rx, 16).ok()?,
        send_q: u32::from_str_radix(tx, 16).ok()?,
        cookie: 0,
        timewait: timer.starts_with("03:"),
    })
}

/// `0100007F:1F90`: the address as the kernel's 32-bit words in memory order, printed `%08X`;
/// the port in host order.
fn addr(s: &str) -> Option<SocketAddr> {
    let (a, p) = s.split_once(':')?;
    let port = u16::from_str_radix(p, 16).ok()?;
    let word =
        |i: usize| u32::from_str_radix(a.get(i * 8..i * 8 + 8)?, 16).ok().map(u32::to_ne_bytes);
    let ip = match a.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;

    #[test]
    fn parses_v4_and_v6_lines() {
        let v4 = "   0: 0100007F:1F90 0100007F:C350 08 00000000:00000002 00:00000000 00000000     0        0 12345 1 0000000000000000 20 4 30 10 -1";
        let r = parse_line(v4).unwrap();
        assert_eq!(r.state, TcpState::CloseWait);
        assert_eq!(r.local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(r.remote, "127.0.0.1:50000".parse().unwrap());
        assert_eq!((r.inode, r.recv_q, r.send_q), (12345, 2, 0));
        let v6 = "   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 999 1 0000000000000000 100 0 0 10 0";
        let r = parse_line(v6).unwrap();
        assert_eq!(r.state, TcpState::Listen);
        assert_eq!(r.local, "[::1]:8080".parse().unwrap());
    }
}
