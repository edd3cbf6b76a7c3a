//! Every segment of one port, from an AF_PACKET socket on the loopback of the caller's network
//! namespace: counted by flag and direction, and written as a pcap file that tcpdump and
//! Wireshark open, with no libpcap. Loopback shows each packet twice to a packet socket (out and
//! in); the outgoing copy is skipped, as libpcap does.
//!
//! # References
//! packet(7), netdevice(7); the pcap file format (tcpdump.org `pcap-savefile(5)`).

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use rustix::time::ClockId;

/// Bytes of each packet kept in the pcap file: the Ethernet, IP and TCP headers.
pub const SNAPLEN: usize = 128;
const LINKTYPE_ETHERNET: u32 = 1;

/// What the capture counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Segments the server sent, by flag name, and `all`.
    pub server_segments: BTreeMap<String, u64>,
    /// Segments the clients sent.
    pub client_segments: BTreeMap<String, u64>,
    /// For each connection (the client's port), the flags each side sent.
    pub connections: HashMap<u16, Sent>,
    /// Every segment in the order read, with the kernel's time of it, up to [`KEEP_SEGMENTS`]:
    /// what a connection's ladder is drawn from.
    pub segments: Vec<Segment>,
    /// Packets the kernel dropped before we read them.
    pub dropped: u64,
}

/// The TCP flags each side of one connection sent, or-ed together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    /// The flags the server sent.
    pub server: u8,
    /// The flags the client sent.
    pub client: u8,
}

/// Segments kept one by one (about 1.5 MB); past it only the counts go on.
pub const KEEP_SEGMENTS: usize = 100_000;

/// One segment of the run's port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// When the kernel received it, CLOCK_MONOTONIC microseconds.
    pub t_us: i64,
    /// The client's port: it names the connection.
    pub client_port: u16,
    /// True when the server sent it.
    pub from_server: bool,
    /// TCP flags.
    pub flags: u8,
    /// Payload bytes.
    pub len: u32,
}

pub use cwlab_model::evidence::FLAGS;

impl Tally {
    /// Connections in which the server (or the client) sent a segment with `bit`.
    pub fn connections_with(&self, server: bool, bit: u8) -> u64 {
        self.connections
            .values()
            .filter(|c| (if server { c.server } else { c.client }) & bit != 0)
            .count() as u64
    }

    fn count(&mut self, server: bool, client_port: u16, flags: u8, t_us: i64, len: u32) {
        if self.segments.len() < KEEP_SEGMENTS {
            self.segments.push(Segment { t_us, client_port, from_server: server, flags, len });
        }
        let m = if server { &mut self.server_segments } else { &mut self.client_segments };
        *m.entry("all".into()).or_insert(0) += 1;
        for (name, bit) in FLAGS {
            if flags & bit != 0 {
                *m.entry(name.into()).or_insert(0) += 1;
            }
        }
        let c = self.connections.entry(client_port).or_default();
        if server {
            c.server |= flags;
        } else {
            c.client |= flags;
        }
    }
}

/// A packet socket on one interface (`lo`, or the clients' end of the two-hosts veth pair),
/// counting one port's segments and writing them to `W` as pcap.
pub struct Capture<W: Write> {
    fd: OwnedFd,
    port: u16,
    out: Option<W>,
    tally: Tally,
    buf: Vec<u8>,
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC, µs: the kernel stamps packets on the first.
    realtime_ahead_us: i64,
}

impl<W: Write> Capture<W> {
    /// Opens the capture on interface `iface` of the calling thread's network namespace.
    pub fn open(iface: &str, port: u16, mut out: Option<W>) -> io::Result<Capture<W>> {
        if iface.contains('\0') {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "bad interface name"));
        }
        let proto = (libc::ETH_P_ALL as u16).to_be();
        use rustix::net::{AddressFamily, SocketFlags, SocketType};
        let fd = rustix::net::socket_with(
            AddressFamily::PACKET,
            SocketType::RAW,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            Some(rustix::net::eth::ALL),
        )?;
        let ifindex = rustix::net::netdevice::name_to_index(&fd, iface)?;
        // SAFETY: sockaddr_ll is plain data; zeroed is valid.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: bind(2) reads a sockaddr_ll of exactly the size given, from a live local; neither
        // nix nor rustix builds a sockaddr_ll with a protocol and an ifindex.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // Each packet stamped by the kernel as it arrives, read with it (SO_TIMESTAMPNS). nix:
        // rustix has neither the option nor its control message.
        nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::ReceiveTimestampns, &true)?;
        // A bigger queue only lowers the chance of drops: a refusal is no failure.
        let _ = rustix::net::sockopt::set_socket_recv_buffer_size_force(&fd, 8 << 20);
        if let Some(w) = out.as_mut() {
            write_header(w)?;
        }
        let realtime_ahead_us = micros(ClockId::Realtime) - micros(ClockId::Monotonic);
        Ok(Capture {
            fd,
            port,
            out,
            tally: Tally::default(),
            buf: vec![0; 65536],
            realtime_ahead_us,
        })
    }

    /// What has been counted so far.
    pub fn tally(&self) -> &Tally {
        &self.tally
    }

    /// The socket to poll for readability.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Reads every packet ready, without blocking. With nix's recvmsg: rustix's does not decode
    /// the SO_TIMESTAMPNS control message.
    pub fn read_ready(&mut self) -> io::Result<()> {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, LinkAddr, MsgFlags};
        let mut space = nix::cmsg_space!(nix::sys::time::TimeSpec);
        loop {
            let mut iov = [io::IoSliceMut::new(&mut self.buf)];
            let got = recvmsg::<LinkAddr>(
                self.fd.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_TRUNC,
            );
            let msg = match got {
                Ok(m) => m,
                Err(nix::errno::Errno::EAGAIN) => return Ok(()),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            };
            // On a loopback device every segment passes twice, out and back in: the outgoing
            // copy is skipped. On a veth end each passes once, outgoing (the clients') or
            // incoming (the server's), and both are kept.
            let outgoing_loopback = msg.address.is_some_and(|a| {
                a.pkttype() == libc::PACKET_OUTGOING && a.hatype() == libc::ARPHRD_LOOPBACK
            });
            // The kernel's receive time (SO_TIMESTAMPNS), CLOCK_REALTIME.
            let stamp = msg
                .cmsgs()
                .ok()
                .and_then(|mut c| {
                    c.find_map(|m| match m {
                        ControlMessageOwned::ScmTimestampns(t) => {
                            Some(t.tv_sec() * 1_000_000 + t.tv_nsec() / 1000)
                        }
                        _ => None,
                    })
                })
                .unwrap_or_else(|| micros(ClockId::Realtime));
            let n = msg.bytes;
            if outgoing_loopback {
                continue;
            }
            let wire = n as usize;
            let kept = wire.min(self.buf.len());
            let Some(seg) = tcp_segment(&self.buf[..kept]) else { continue };
            let server = seg.sport == self.port;
            if !server && seg.dport != self.port {
                continue;
            }
            let mono = stamp - self.realtime_ahead_us;
            let client_port = if server { seg.dport } else { seg.sport };
            self.tally.count(server, client_port, seg.flags, mono, seg.len);
            if let Some(w) = self.out.as_mut() {
                write_record(w, &self.buf[..kept.min(SNAPLEN)], wire, stamp)?;
            }
        }
    }

    /// Reads what is left and returns the tally and the pcap writer, flushed.
    pub fn finish(mut self) -> io::Result<(Tally, Option<W>)> {
        self.read_ready()?;
        self.tally.dropped = dropped(&self.fd);
        if let Some(w) = self.out.as_mut() {
            w.flush()?;
        }
        Ok((self.tally, self.out))
    }
}

/// PACKET_STATISTICS: packets the kernel dropped for this socket.
fn dropped(fd: &OwnedFd) -> u64 {
    let mut st = libc::tpacket_stats { tp_packets: 0, tp_drops: 0 };
    let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
    // SAFETY: getsockopt(2) writes at most `len` bytes into `st`, a live local of that size;
    // PACKET_STATISTICS is in neither nix nor rustix.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&mut st as *mut libc::tpacket_stats).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        u64::from(st.tp_drops)
    } else {
        0
    }
}

fn micros(clock: ClockId) -> i64 {
    let t = rustix::time::clock_gettime(clock);
    t.tv_sec * 1_000_000 + t.tv_nsec / 1000
}

/// What the lab reads of a TCP segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpHeader {
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Flags (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10).
    pub flags: u8,
    /// Payload bytes: the IP packet's length less both headers (0 when truncated away).
    pub len: u32,
}

/// Ports, flags and payload length of a TCP segment in an Ethernet frame.
pub fn tcp_segment(frame: &[u8]) -> Option<TcpHeader> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let ip = frame.get(14..)?;
    let (tcp, ip_payload) = match ethertype {
        0x0800 => {
            if *ip.get(9)? != 6 {
                return None;
            }
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
            (ip.get(ihl..)?, total.saturating_sub(ihl))
        }
        0x86dd => {
            if *ip.get(6)? != 6 {
                return None;
            }
            (ip.get(40..)?, usize::from(u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?])))
        }
        _ => return None,
    };
    let sport = u16::from_be_bytes([*tcp.first()?, *tcp.get(1)?]);
    let dport = u16::from_be_bytes([*tcp.get(2)?, *tcp.get(3)?]);
    let header = usize::from(*tcp.get(12)? >> 4) * 4;
    let len = ip_payload.saturating_sub(header) as u32;
    Some(TcpHeader { sport, dport, flags: *tcp.get(13)?, len })
}

fn write_header(w: &mut impl Write) -> io::Result<()> {
    w.write_all(&0xa1b2_c3d4u32.to_le_bytes())?;
    w.write_all(&2u16.to_le_bytes())?;
    w.write_all(&4u16.to_le_bytes())?;
    w.write_all(&0i32.to_le_bytes())?;
    w.write_all(&0u32.to_le_bytes())?;
    w.write_all(&(SNAPLEN as u32).to_le_bytes())?;
    w.write_all(&LINKTYPE_ETHERNET.to_le_bytes())
}

fn write_record(w: &mut impl Write, data: &[u8], wire: usize, t_us: i64) -> io::Result<()> {
    w.write_all(&((t_us / 1_000_000) as u32).to_le_bytes())?;
    w.write_all(&((t_us % 1_000_000) as u32).to_le_bytes())?;
    w.write_all(&(data.len() as u32).to_le_bytes())?;
    w.write_all(&(wire as u32).to_le_bytes())?;
    w.write_all(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ports_and_flags_of_v4_and_v6_segments() {
        let mut v4 = vec![0u8; 14 + 20 + 20];
        v4[12..14].copy_from_slice(&[0x08, 0x00]);
        v4[14] = 0x45;
        v4[16..18].copy_from_slice(&(20u16 + 20 + 5).to_be_bytes());
        v4[14 + 9] = 6;
        v4[34 + 12] = 5 << 4;
        v4[34..36].copy_from_slice(&8080u16.to_be_bytes());
        v4[36..38].copy_from_slice(&50000u16.to_be_bytes());
        v4[34 + 13] = 0x11;
        let h = tcp_segment(&v4).unwrap();
        assert_eq!((h.sport, h.dport, h.flags, h.len), (8080, 50000, 0x11, 5));
        let mut v6 = vec![0u8; 14 + 40 + 20];
        v6[12..14].copy_from_slice(&[0x86, 0xdd]);
        v6[14 + 6] = 6;
        v6[54..56].copy_from_slice(&1u16.to_be_bytes());
        v6[56..58].copy_from_slice(&2u16.to_be_bytes());
        v6[54 + 12] = 5 << 4;
        v6[18..20].copy_from_slice(&20u16.to_be_bytes());
        v6[54 + 13] = 0x04;
        let h = tcp_segment(&v6).unwrap();
        assert_eq!((h.sport, h.dport, h.flags, h.len), (1, 2, 0x04, 0));
        assert_eq!(tcp_segment(&v6[..20]), None);
    }
}
