//! TCP sockets through NETLINK_SOCK_DIAG, with the states and the port filtered by the kernel: the
//! states through the request's `idiag_states` mask, the port through an inet_diag bytecode
//! program (`INET_DIAG_REQ_BYTECODE`), as `ss` does. Messages are built and walked by hand, so a
//! dump costs one request and a few large reads per address family.
//!
//! # References
//! - sock_diag(7); `include/uapi/linux/inet_diag.h`; `net/ipv4/inet_diag.c` (`inet_diag_bc_run`,
//!   `inet_diag_bc_audit`); iproute2 `misc/ss.c` (`ssfilter_bytecompile`).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::OwnedFd;

use crate::{Error, PortSide, Ports, Query, SocketRecord, TcpState};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// The original inet_diag request (`struct inet_diag_req`, message type 18): the kernel answers it
/// with `sdiag_family = AF_UNSPEC`, so one walk of the socket hash covers IPv4 and IPv6 both.
const TCPDIAG_GETSOCK: u16 = 18;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const INET_DIAG_REQ_BYTECODE: u16 = 1;
const INET_DIAG_BC_JMP: u8 = 1;
const INET_DIAG_BC_S_EQ: u8 = 11;
const INET_DIAG_BC_D_EQ: u8 = 12;
const NLMSG_HDRLEN: usize = 16;
const REQ_LEN: usize = 56;
const REQ_V1_LEN: usize = 60;
const MSG_LEN: usize = 72;
/// The kernel caps a dump's skb near 32 KiB; a larger buffer never truncates one.
const RECV_BUF: usize = 64 * 1024;

/// An open NETLINK_SOCK_DIAG socket, bound to the network namespace it was opened in.
pub struct SockDiag {
    fd: OwnedFd,
    buf: Vec<u8>,
    seq: u32,
    /// Whether the one-walk request works here; cleared the first time the kernel refuses it.
    one_walk: bool,
}

impl SockDiag {
    /// Opens a sock_diag socket in the calling thread's network namespace.
    ///
    /// # References
    /// socket(2), netlink(7), sock_diag(7).
    pub fn open() -> Result<SockDiag, Error> {
        use rustix::net::{netlink, AddressFamily, SocketFlags, SocketType};
        let fd = rustix::net::socket_with(
            AddressFamily::NETLINK,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC,
            Some(netlink::SOCK_DIAG),
        )
        .map_err(|e| Error::io("open a NETLINK_SOCK_DIAG socket")(e.into()))?;
        Ok(SockDiag { fd, buf: vec![0; RECV_BUF], seq: 0, one_walk: true })
    }

    /// Uses one `SOCK_DIAG_BY_FAMILY` request per family from now on, as on kernels that refuse
    /// the one-walk request (tests hold the two paths against each other).
    pub fn per_family(&mut self) {
        self.one_walk = false;
    }

    /// Calls `f` for every TCP socket, IPv4 and IPv6, that passes the query.
    ///
    /// One request walks the kernel's socket hash once for both families (the hash walk is most
    /// of the cost of a dump that matches little); where the kernel refuses that request, one
    /// `SOCK_DIAG_BY_FAMILY` request per family.
    pub fn for_each(&mut self, q: &Query, mut f: impl FnMut(&SocketRecord)) -> Result<(), Error> {
        if self.one_walk {
            self.seq = self.seq.wrapping_add(1);
            send(&self.fd, &request_both(q, self.seq))?;
            match self.read_replies(&mut f) {
                Err(Error::Io { source, .. }) if refused(&source) => self.one_walk = false,
                other => return other,
            }
        }
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            self.seq = self.seq.wrapping_add(1);
            let req = request(family, q, self.seq);
            send(&self.fd, &req)?;
            self.read_replies(&mut f)?;
        }
        Ok(())
    }

    fn read_replies(&mut self, f: &mut impl FnMut(&SocketRecord)) -> Result<(), Error> {
        loop {
            let n =
                match rustix::net::recv(&self.fd, &mut self.buf, rustix::net::RecvFlags::empty()) {
                    Ok(n) => n,
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => return Err(Error::io("read a sock_diag reply")(e.into())),
                };
            if walk(&self.buf[..n], f)? {
                return Ok(());
            }
        }
    }
}

fn send(fd: &OwnedFd, req: &[u8]) -> Result<(), Error> {
    // An unconnected netlink socket sends to the kernel.
    loop {
        match rustix::net::send(fd, req, rustix::net::SendFlags::empty()) {
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(Error::io("send a sock_diag request")(e.into())),
        }
    }
}

/// Walks one datagram of replies; returns true at NLMSG_DONE.
fn walk(mut data: &[u8], f: &mut impl FnMut(&SocketRecord)) -> Result<bool, Error> {
    while data.len() >= NLMSG_HDRLEN {
        let len = u32_at(data, 0) as usize;
        let ty = u16::from_ne_bytes([data[4], data[5]]);
        if len < NLMSG_HDRLEN || len > data.len() {
            return Err(Error::Protocol(format!("netlink message of length {len}")));
        }
        let payload = &data[NLMSG_HDRLEN..len];
        match ty {
            NLMSG_DONE => {
                let code =
                    payload.get(..4).map_or(0, |b| i32::from_ne_bytes(b.try_into().unwrap()));
                if code < 0 {
                    return Err(Error::io("dump sockets")(io::Error::from_raw_os_error(-code)));
                }
                return Ok(true);
            }
            NLMSG_ERROR => {
                let code =
                    payload.get(..4).map_or(0, |b| i32::from_ne_bytes(b.try_into().unwrap()));
                return Err(Error::io("dump sockets")(io::Error::from_raw_os_error(-code)));
            }
            SOCK_DIAG_BY_FAMILY | TCPDIAG_GETSOCK => {
                if let Some(r) = record(payload) {
                    f(&r);
                }
            }
            _ => {}
        }
        data = &data[align4(len).min(data.len())..];
    }
    Ok(false)
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
}

/// Decodes a `struct inet_diag_msg`.
fn record(m: &[u8]) -> Option<SocketRecord> {
    if m.len() < MSG_LEN {
        return None;
    }
    let state = TcpState::from_kernel(m[1])?;
    let sport = u16::from_be_bytes([m[4], m[5]]);
    let dport = u16::from_be_bytes([m[6], m[7]]);
    let (src, dst) = match i32::from(m[0]) {
        libc::AF_INET => (ip4(&m[8..12]), ip4(&m[24..28])),
        libc::AF_INET6 => (ip6(&m[8..24]), ip6(&m[24..40])),
        _ => return None,
    };
    Some(SocketRecord {
        idle_ms: tcp_info(&m[MSG_LEN..]),
        state,
        local: SocketAddr::new(src, sport),
        remote: SocketAddr::new(dst, dport),
        recv_q: u32_at(m, 56),
        send_q: u32_at(m, 60),
        uid: u32_at(m, 64),
        inode: u64::from(u32_at(m, 68)),
        cookie: u64::from(u32_at(m, 44)) | u64::from(u32_at(m, 48)) << 32,
        timewait: m[2] == 3,
    })
}

/// `tcpi_last_ack_recv` from an `INET_DIAG_INFO` attribute, if the reply carries one.
fn tcp_info(mut attrs: &[u8]) -> Option<u32> {
    const INET_DIAG_INFO: u16 = 2;
    // struct tcp_info: eight u8 fields, then u32s: rto, ato, snd_mss, rcv_mss, unacked, sacked,
    // lost, retrans, fackets, last_data_sent, last_ack_sent, last_data_recv, last_ack_recv.
    const LAST_ACK_RECV: usize = 8 + 12 * 4;
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let ty = u16::from_ne_bytes([attrs[2], attrs[3]]);
        if len < 4 || len > attrs.len() {
            return None;
        }
        if ty == INET_DIAG_INFO && len >= 4 + LAST_ACK_RECV + 4 {
            return Some(u32_at(attrs, 4 + LAST_ACK_RECV));
        }
        attrs = &attrs[align4(len).min(attrs.len())..];
    }
    None
}

fn ip4(b: &[u8]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
}

fn ip6(b: &[u8]) -> IpAddr {
    let a: [u8; 16] = b.try_into().unwrap();
    IpAddr::V6(Ipv6Addr::from(a))
}

/// Errors that mean "this kernel does not take that request".
fn refused(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT | libc::EOPNOTSUPP))
}

fn header(b: &mut Vec<u8>, total: usize, ty: u16, seq: u32) {
    b.extend_from_slice(&(total as u32).to_ne_bytes());
    b.extend_from_slice(&ty.to_ne_bytes());
    b.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
}

fn bytecode_attr(b: &mut Vec<u8>, bc: &[u8]) {
    if !bc.is_empty() {
        b.extend_from_slice(&((4 + bc.len()) as u16).to_ne_bytes());
        b.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
        b.extend_from_slice(bc);
    }
}

/// The extensions asked for: `INET_DIAG_INFO` (bit 1 << (2 - 1)) with [`Query::info`].
fn ext(q: &Query) -> u8 {
    if q.info {
        1 << 1
    } else {
        0
    }
}

/// Builds `nlmsghdr` + `inet_diag_req` (the original request, both families) + the bytecode.
fn request_both(q: &Query, seq: u32) -> Vec<u8> {
    let bc = q.port.map(|p| bytecode(p, q.side, q.peer)).unwrap_or_default();
    let attr_len = if bc.is_empty() { 0 } else { 4 + bc.len() };
    let total = NLMSG_HDRLEN + REQ_V1_LEN + attr_len;
    let mut b = Vec::with_capacity(total);
    header(&mut b, total, TCPDIAG_GETSOCK, seq);
    // inet_diag_req: family (ignored: the kernel answers for both), src_len, dst_len, ext, a zero
    // socket id with no cookie, the states, dbs.
    b.extend_from_slice(&[libc::AF_INET as u8, 0, 0, ext(q)]);
    b.extend_from_slice(&[0u8; 40]);
    b.extend_from_slice(&[0xff; 8]);
    b.extend_from_slice(&q.states.mask().to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    bytecode_attr(&mut b, &bc);
    debug_assert_eq!(b.len(), total);
    b
}

/// Builds `nlmsghdr` + `inet_diag_req_v2` + the bytecode attribute.
fn request(family: u8, q: &Query, seq: u32) -> Vec<u8> {
    let bc = q.port.map(|p| bytecode(p, q.side, q.peer)).unwrap_or_default();
    let attr_len = if bc.is_empty() { 0 } else { 4 + bc.len() };
    let total = NLMSG_HDRLEN + REQ_LEN + attr_len;
    let mut b = Vec::with_capacity(total);
    header(&mut b, total, SOCK_DIAG_BY_FAMILY, seq);
    // inet_diag_req_v2: family, protocol, ext, pad, states, then a zero socket id with no cookie.
    b.extend_from_slice(&[family, libc::IPPROTO_TCP as u8, ext(q), 0]);
    b.extend_from_slice(&q.states.mask().to_ne_bytes());
    b.extend_from_slice(&[0u8; 40]);
    b.extend_from_slice(&[0xff; 8]);
    bytecode_attr(&mut b, &bc);
    debug_assert_eq!(b.len(), total);
    b
}

/// One `struct inet_diag_bc_op`: code, then the jumps taken when the test holds (`yes`) and when
/// it fails (`no`). Running past the end of the program rejects the socket; ending exactly on it
/// accepts.
fn op(code: u8, yes: u8, no: u16) -> [u8; 4] {
    let n = no.to_ne_bytes();
    [code, yes, n[0], n[1]]
}

/// A port test: the op, then the port in a follow-on op's `no` field. On success it falls
/// through to what follows; on failure it jumps `fail` bytes.
fn port_test(code: u8, port: u16, fail: u16) -> [u8; 8] {
    let mut t = [0u8; 8];
    t[..4].copy_from_slice(&op(code, 8, fail));
    t[4..].copy_from_slice(&op(0, 0, port));
    t
}

const INET_DIAG_BC_S_GE: u8 = 2;
const INET_DIAG_BC_S_LE: u8 = 3;
const INET_DIAG_BC_D_GE: u8 = 4;
const INET_DIAG_BC_D_LE: u8 = 5;

/// Compiles an OR of ANDs of port tests, laid out as ss lays out `||`: each conjunction's tests
/// fall through on success; after a conjunction, a jump to the end accepts; a failed test jumps
/// to the next conjunction, or past the end (reject) from the last one.
fn compile(conjs: &[Vec<(u8, u16)>]) -> Vec<u8> {
    let sizes: Vec<usize> = conjs.iter().map(|c| c.len() * 8).collect();
    let total: usize = sizes.iter().sum::<usize>() + 4 * conjs.len().saturating_sub(1);
    let mut b = Vec::with_capacity(total);
    let mut next_start = 0;
    for (k, conj) in conjs.iter().enumerate() {
        let last = k + 1 == conjs.len();
        next_start += sizes[k] + if last { 0 } else { 4 };
        for (code, port) in conj {
            let at = b.len();
            let fail = if last { total - at + 4 } else { next_start - at };
            b.extend_from_slice(&port_test(*code, *port, fail as u16));
        }
        if !last {
            let at = b.len();
            b.extend_from_slice(&op(INET_DIAG_BC_JMP, 4, (total - at) as u16));
        }
    }
    debug_assert_eq!(b.len(), total);
    b
}

/// `sport == P`, `dport == P`, or `sport == P || dport == P`; with `peer` set, the other end's
/// port must also lie in that range (a slice of a dump that several threads share).
pub(crate) fn bytecode(port: u16, side: PortSide, peer: Option<Ports>) -> Vec<u8> {
    let branch = |eq: u8, ge: u8, le: u8| {
        let mut c = vec![(eq, port)];
        if let Some(Ports { low, high }) = peer {
            c.extend([(ge, low), (le, high)]);
        }
        c
    };
    let local = branch(INET_DIAG_BC_S_EQ, INET_DIAG_BC_D_GE, INET_DIAG_BC_D_LE);
    let remote = branch(INET_DIAG_BC_D_EQ, INET_DIAG_BC_S_GE, INET_DIAG_BC_S_LE);
    match side {
        PortSide::Local => compile(&[local]),
        PortSide::Remote => compile(&[remote]),
        PortSide::Any => compile(&[local, remote]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a bytecode program the way `inet_diag_bc_run` does, for a socket's two ports.
    fn run(bc: &[u8], sport: u16, dport: u16) -> bool {
        let mut at = 0usize;
        let mut len = bc.len() as isize;
        while len > 0 {
            let code = bc[at];
            let yes = bc[at + 1] as isize;
            let no = u16::from_ne_bytes([bc[at + 2], bc[at + 3]]) as isize;
            let arg = || u16::from_ne_bytes([bc[at + 6], bc[at + 7]]);
            let ok = match code {
                INET_DIAG_BC_JMP => false,
                INET_DIAG_BC_S_EQ => sport == arg(),
                INET_DIAG_BC_D_EQ => dport == arg(),
                INET_DIAG_BC_S_GE => sport >= arg(),
                INET_DIAG_BC_S_LE => sport <= arg(),
                INET_DIAG_BC_D_GE => dport >= arg(),
                INET_DIAG_BC_D_LE => dport <= arg(),
                _ => panic!("unexpected op {code}"),
            };
            let step = if ok { yes } else { no };
            at = (at as isize + step) as usize;
            len -= step;
        }
        len == 0
    }

    #[test]
    fn bytecode_slices_by_the_peer_port() {
        let any = bytecode(8080, PortSide::Any, Some(Ports { low: 40000, high: 49999 }));
        assert!(run(&any, 8080, 45000));
        assert!(run(&any, 45000, 8080));
        assert!(!run(&any, 8080, 50000));
        assert!(!run(&any, 50000, 8080));
        assert!(!run(&any, 1, 45000));
        let local = bytecode(8080, PortSide::Local, Some(Ports { low: 0, high: 100 }));
        assert!(run(&local, 8080, 100) && !run(&local, 8080, 101) && !run(&local, 100, 8080));
    }

    #[test]
    fn bytecode_selects_the_right_side() {
        let local = bytecode(8080, PortSide::Local, None);
        assert!(run(&local, 8080, 40000));
        assert!(!run(&local, 40000, 8080));
        let remote = bytecode(8080, PortSide::Remote, None);
        assert!(run(&remote, 40000, 8080));
        assert!(!run(&remote, 8080, 40000));
        let any = bytecode(8080, PortSide::Any, None);
        assert!(run(&any, 8080, 1));
        assert!(run(&any, 1, 8080));
        assert!(!run(&any, 1, 2));
        assert_eq!(any.len(), 20);
    }

    #[test]
    fn request_layout_matches_the_kernel_structs() {
        let q = Query { port: Some(80), side: PortSide::Any, ..Query::default() };
        let r = request(libc::AF_INET as u8, &q, 7);
        assert_eq!(r.len(), 16 + 56 + 4 + 20);
        assert_eq!(u32_at(&r, 0) as usize, r.len());
        assert_eq!(r[16], libc::AF_INET as u8);
        assert_eq!(r[17], libc::IPPROTO_TCP as u8);
        assert_eq!(u16::from_ne_bytes([r[72], r[73]]), 24);
        assert_eq!(u16::from_ne_bytes([r[74], r[75]]), INET_DIAG_REQ_BYTECODE);
    }
}
