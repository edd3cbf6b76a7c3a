//! Network namespaces: a private one for the calling thread, with loopback up (a socket table
//! nothing else on the machine shares, so counts are exact); and, for the two-hosts topology, a
//! veth pair into another process's namespace, addresses, and work done inside that namespace.
//!
//! # References
//! unshare(2) (`CLONE_NEWNET` moves only the calling thread: do it before any thread starts if
//! the whole process is to live there), setns(2), network_namespaces(7), netdevice(7)
//! (`SIOCSIFFLAGS`, `SIOCSIFADDR`, `SIOCSIFNETMASK`), rtnetlink(7) (`RTM_NEWLINK`), veth(4).

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};

/// Moves the calling thread into a new network namespace and brings its loopback up.
pub fn enter_private() -> io::Result<()> {
    rustix::thread::unshare(rustix::thread::UnshareFlags::NEWNET)?;
    loopback_up()
}

/// Brings `lo` up with SIOCSIFFLAGS, as `ip link set lo up` does, without the `ip` binary.
pub fn loopback_up() -> io::Result<()> {
    set_up("lo")
}

/// Brings an interface of the calling thread's namespace up (`ip link set NAME up`).
pub fn set_up(name: &str) -> io::Result<()> {
    let fd = inet_socket()?;
    let mut ifr = ifreq(name)?;
    // SAFETY: fd is open and ifr is a valid ifreq for these requests. Raw libc: rustix's
    // netdevice calls only turn names into indexes and back, and nix has no interface calls.
    unsafe {
        if libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) != 0 {
            return Err(io::Error::last_os_error());
        }
        ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(fd.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Gives an interface of the calling thread's namespace an IPv4 address and prefix length
/// (`ip addr add ADDR/PREFIX dev NAME`).
pub fn set_ipv4(name: &str, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
    let fd = inet_socket()?;
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix.min(32))).unwrap_or(0);
    for (request, value) in [(libc::SIOCSIFADDR, addr), (libc::SIOCSIFNETMASK, mask.into())] {
        let mut ifr = ifreq(name)?;
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from(value).to_be() },
            sin_zero: [0; 8],
        };
        // SAFETY: sockaddr_in fits in the ifreq's sockaddr union member (both 16 bytes). Raw
        // libc, as in `set_up`: neither rustix nor nix sets an interface's address.
        unsafe {
            std::ptr::write(std::ptr::addr_of_mut!(ifr.ifr_ifru.ifru_addr).cast(), sin);
            if libc::ioctl(fd.as_raw_fd(), request, &ifr) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Runs `f` on a thread that has joined the network namespace at `path` (`/proc/PID/ns/net`, a
/// bind mount under `/run/netns`), as [`in_namespace_of`] does for a process's.
pub fn in_namespace_at<T: Send>(
    path: &std::path::Path,
    f: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    let ns = std::fs::File::open(path)?;
    std::thread::scope(|s| {
        s.spawn(move || {
            use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};
            use std::os::fd::AsFd;
            move_into_link_name_space(ns.as_fd(), Some(LinkNameSpaceType::Network))?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("a thread in another namespace panicked")))
    })
}

/// Runs `f` on a thread that has joined the network namespace of process `pid`, and returns what
/// it returns. Sockets `f` opens belong to that namespace for good, whichever thread uses them
/// later; the calling thread stays where it is.
pub fn in_namespace_of<T: Send>(
    pid: u32,
    f: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    in_namespace_at(std::path::Path::new(&format!("/proc/{pid}/ns/net")), f)
}

/// Creates a veth pair: `name` in the calling thread's namespace, `peer` in the network
/// namespace of process `pid` (`ip link add NAME type veth peer name PEER netns PID`). Both ends
/// start down and without addresses. When the peer's namespace goes, the pair goes with it.
pub fn veth_to(name: &str, peer: &str, pid: u32) -> io::Result<()> {
    const RTM_NEWLINK: u16 = 16;
    const NLM_F_REQUEST: u16 = 1;
    const NLM_F_ACK: u16 = 4;
    const NLM_F_EXCL: u16 = 0x200;
    const NLM_F_CREATE: u16 = 0x400;
    const IFLA_IFNAME: u16 = 3;
    const IFLA_LINKINFO: u16 = 18;
    const IFLA_NET_NS_PID: u16 = 19;
    const IFLA_INFO_KIND: u16 = 1;
    const IFLA_INFO_DATA: u16 = 2;
    const VETH_INFO_PEER: u16 = 1;
    const IFINFOMSG: [u8; 16] = [0; 16]; // AF_UNSPEC, no index, no flags

    let mut m = Message::new(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE);
    m.bytes(&IFINFOMSG);
    m.attr(IFLA_IFNAME, &c_name(name)?);
    let info = m.open(IFLA_LINKINFO);
    m.attr(IFLA_INFO_KIND, b"veth\0");
    let data = m.open(IFLA_INFO_DATA);
    let peer_info = m.open(VETH_INFO_PEER);
    m.bytes(&IFINFOMSG);
    m.attr(IFLA_IFNAME, &c_name(peer)?);
    m.attr(IFLA_NET_NS_PID, &pid.to_ne_bytes());
    m.close(peer_info);
    m.close(data);
    m.close(info);
    m.send_and_ack()
}

/// A netlink request built in place: header, payload, attributes (nested ones closed by offset).
struct Message(Vec<u8>);

impl Message {
    fn new(ty: u16, flags: u16) -> Message {
        let mut b = vec![0u8; 16];
        b[4..6].copy_from_slice(&ty.to_ne_bytes());
        b[6..8].copy_from_slice(&flags.to_ne_bytes());
        b[8..12].copy_from_slice(&1u32.to_ne_bytes());
        Message(b)
    }

    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
        self.0.resize(self.0.len().next_multiple_of(4), 0);
    }

    fn attr(&mut self, ty: u16, payload: &[u8]) {
        self.0.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        self.0.extend_from_slice(&ty.to_ne_bytes());
        self.bytes(payload);
    }

    /// Starts a nested attribute; returns where it starts, for [`Message::close`].
    fn open(&mut self, ty: u16) -> usize {
        let at = self.0.len();
        self.attr(ty, &[]);
        at
    }

    fn close(&mut self, at: usize) {
        let len = (self.0.len() - at) as u16;
        self.0[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    /// Sends the request to the kernel on a new NETLINK_ROUTE socket and reads its answer.
    fn send_and_ack(mut self) -> io::Result<()> {
        let len = self.0.len() as u32;
        self.0[0..4].copy_from_slice(&len.to_ne_bytes());
        use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};
        let fd = rustix::net::socket_with(
            AddressFamily::NETLINK,
            SocketType::RAW,
            SocketFlags::CLOEXEC,
            None, // protocol 0: NETLINK_ROUTE
        )?;
        // An unbound netlink socket sends to the kernel.
        rustix::net::send(&fd, &self.0, SendFlags::empty())?;
        let mut buf = [0u8; 1024];
        let n = rustix::net::recv(&fd, &mut buf, RecvFlags::empty())?;
        let reply = &buf[..n];
        // NLMSG_ERROR: the header, then the error (0 for success), then the request echoed.
        if reply.len() >= 20 && u16::from_ne_bytes([reply[4], reply[5]]) == 2 {
            let errno = i32::from_ne_bytes(reply[16..20].try_into().unwrap());
            return if errno == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(-errno)) };
        }
        Err(io::Error::other("rtnetlink answered with something other than an acknowledgement"))
    }
}

fn c_name(name: &str) -> io::Result<Vec<u8>> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?}"),
        ));
    }
    let mut v = name.as_bytes().to_vec();
    v.push(0);
    Ok(v)
}

/// A datagram socket used only for the interface ioctls.
fn inet_socket() -> io::Result<OwnedFd> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    Ok(rustix::net::socket_with(
        AddressFamily::INET,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    let bytes = c_name(name)?;
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(&bytes) {
        *dst = *src as libc::c_char;
    }
    Ok(ifr)
}
