//! The socket table: TCP sockets of the current network namespace, filtered by state and port in
//! the kernel, who holds each one, and how many descriptors a process has open.
//!
//! One public face, [`Table`], over two backends: NETLINK_SOCK_DIAG ([`diag`]), which filters in
//! the kernel, and `/proc/net/tcp` ([`procnet`]), a cross-check and fallback that filters here.
#![warn(missing_docs)]

pub mod bpf;
pub mod capture;
pub mod cgroup;
pub mod diag;
pub mod fds;
pub mod hash;
pub mod holders;
pub mod netns;
pub mod procnet;
pub mod stream;
pub mod tracefs;

use std::io;
use std::net::SocketAddr;

pub use cwlab_model::TcpState;

/// A failure to read the socket table.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call failed.
    #[error("failed to {what}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The kernel answered with something this crate does not understand.
    #[error("failed to understand the kernel's reply: {0}")]
    Protocol(String),
}

impl Error {
    pub(crate) fn io(what: &'static str) -> impl FnOnce(io::Error) -> Error {
        move |source| Error::Io { what, source }
    }
}

/// A set of TCP states, as a sock_diag `idiag_states` bitmask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct States(u32);

impl States {
    /// Every state.
    pub const ALL: States = States(u32::MAX);

    /// The states listed; an empty list means every state.
    pub fn of(states: &[TcpState]) -> States {
        if states.is_empty() {
            return States::ALL;
        }
        States(states.iter().fold(0, |m, s| m | s.mask_bit()))
    }

    /// The bitmask sock_diag takes. `TCP_NEW_SYN_RECV` (bit 12) goes with SYN-RECV.
    pub fn mask(self) -> u32 {
        if self.0 & TcpState::SynRecv.mask_bit() != 0 {
            self.0 | (1 << 12)
        } else {
            self.0
        }
    }

    /// Whether a state is in the set.
    pub fn contains(self, s: TcpState) -> bool {
        self.0 & s.mask_bit() != 0
    }
}

/// Which port of a socket a filter looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PortSide {
    /// The local port (the server's sockets, when the port is the server's).
    Local,
    /// The remote port (the clients' sockets).
    Remote,
    /// Either.
    #[default]
    Any,
}

/// What to list: which states, and optionally which port on which side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Query {
    /// The states wanted.
    pub states: States,
    /// The port wanted, if any.
    pub port: Option<u16>,
    /// Which side the port is on.
    pub side: PortSide,
    /// With a port: the other end's port must lie in this range. Several threads split one
    /// dump this way.
    pub peer: Option<Ports>,
    /// Ask the kernel for `tcp_info` too (sock_diag only): fills [`SocketRecord::idle_ms`].
    pub info: bool,
}

/// A range of ports, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// The lowest port of the range.
    pub low: u16,
    /// The highest port of the range.
    pub high: u16,
}

impl Ports {
    /// Whether `port` lies in the range.
    pub fn contains(self, port: u16) -> bool {
        self.low <= port && port <= self.high
    }
}

impl Default for Query {
    fn default() -> Query {
        Query { states: States::ALL, port: None, side: PortSide::Any, peer: None, info: false }
    }
}

impl Query {
    /// Whether a record passes the query (the /proc backend filters with this; sock_diag's kernel
    /// filter is equivalent).
    pub fn matches(&self, r: &SocketRecord) -> bool {
        if !self.states.contains(r.state) {
            return false;
        }
        let peer_ok = |other: u16| self.peer.is_none_or(|p| p.contains(other));
        let local = |p| r.local.port() == p && peer_ok(r.remote.port());
        let remote = |p| r.remote.port() == p && peer_ok(r.local.port());
        match (self.port, self.side) {
            (None, _) => true,
            (Some(p), PortSide::Local) => local(p),
            (Some(p), PortSide::Remote) => remote(p),
            (Some(p), PortSide::Any) => local(p) || remote(p),
        }
    }
}

/// One TCP socket as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketRecord {
    /// Its state.
    pub state: TcpState,
    /// Local address and port.
    pub local: SocketAddr,
    /// Remote address and port.
    pub remote: SocketAddr,
    /// The socket's inode; 0 for sockets no file refers to (TIME-WAIT, orphans).
    pub inode: u64,
    /// The owner's uid.
    pub uid: u32,
    /// Bytes in the receive queue (for LISTEN: connections waiting to be accepted).
    pub recv_q: u32,
    /// Bytes in the send queue (for LISTEN: the backlog).
    pub send_q: u32,
    /// With [`Query::info`]: milliseconds since the socket last received an ACK (`tcp_info`'s
    /// `tcpi_last_ack_recv`). A socket in CLOSE-WAIT hears nothing after the peer's FIN, so this
    /// is how long it has waited there.
    pub idle_ms: Option<u32>,
    /// The kernel's cookie for the socket (sock_diag's `idiag_cookie`; 0 from `/proc/net/tcp`).
    pub cookie: u64,
    /// Whether it is a timewait socket (TIME-WAIT, or an orphan's FIN-WAIT-2 after the kernel
    /// handed it over): the table's timer field says 3.
    pub timewait: bool,
}

/// Where records come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// NETLINK_SOCK_DIAG, filtered in the kernel.
    #[default]
    SockDiag,
    /// `/proc/thread-self/net/tcp` and `tcp6`, filtered here.
    ProcNet,
}

/// The TCP socket table of the network namespace the calling thread was in when it was opened.
pub enum Table {
    /// Through sock_diag.
    SockDiag(diag::SockDiag),
    /// Through /proc.
    ProcNet,
}

impl Table {
    /// Opens the table with a backend.
    pub fn open(backend: Backend) -> Result<Table, Error> {
        Ok(match backend {
            Backend::SockDiag => Table::SockDiag(diag::SockDiag::open()?),
            Backend::ProcNet => Table::ProcNet,
        })
    }

    /// Calls `f` for every TCP socket (IPv4 and IPv6) that passes the query.
    pub fn for_each(&mut self, q: &Query, f: impl FnMut(&SocketRecord)) -> Result<(), Error> {
        match self {
            Table::SockDiag(d) => d.for_each(q, f),
            Table::ProcNet => procnet::for_each(q, f),
        }
    }

    /// Every TCP socket that passes the query.
    pub fn list(&mut self, q: &Query) -> Result<Vec<SocketRecord>, Error> {
        let mut v = Vec::new();
        self.for_each(q, |r| v.push(r.clone()))?;
        Ok(v)
    }

    /// How many TCP sockets pass the query.
    pub fn count(&mut self, q: &Query) -> Result<usize, Error> {
        let mut n = 0;
        self.for_each(q, |_| n += 1)?;
        Ok(n)
    }
}

/// Counts with sock_diag on two threads, each dumping the sockets whose peer port lies in one
/// half of the ephemeral range: the kernel writes half the messages for each, on each core. Both
/// threads start in the caller's network namespace. Without a port, with a peer range already, or
/// with fewer than two CPUs to run on, one dump.
///
/// Each thread is bound to a CPU of its own from its first instant: a new thread inherits its
/// creator's CPU mask, so the caller narrows its own mask for each spawn and widens it again
/// after. Left to the scheduler, the second thread was often queued behind the first on a busy
/// core while the other stayed idle, and waited for the next tick (up to 4 ms at HZ=250) to run.
pub fn count_split(q: &Query) -> Result<usize, Error> {
    let cpus = q.port.filter(|_| q.peer.is_none()).and_then(|_| CpuMask::of_this_thread());
    let Some((mine, [first, second])) = cpus.and_then(|m| m.two_cpus().map(|c| (m, c))) else {
        return Table::open(Backend::SockDiag)?.count(q);
    };
    let mid = ephemeral_middle();
    let halves =
        [(Ports { low: 0, high: mid }, first), (Ports { low: mid + 1, high: u16::MAX }, second)];
    let counts: Vec<Result<usize, Error>> = std::thread::scope(|s| {
        let handles: Vec<_> = halves
            .iter()
            .map(|&(peer, cpu)| {
                CpuMask::one(cpu).apply();
                let q = Query { peer: Some(peer), ..*q };
                s.spawn(move || Table::open(Backend::SockDiag)?.count(&q))
            })
            .collect();
        mine.apply();
        handles.into_iter().map(|h| h.join().expect("a dump thread panicked")).collect()
    });
    counts.into_iter().sum()
}

/// A set of CPUs a thread may run on (`sched_setaffinity(2)`).
struct CpuMask(rustix::process::CpuSet);

impl CpuMask {
    /// The calling thread's mask.
    fn of_this_thread() -> Option<CpuMask> {
        rustix::process::sched_getaffinity(None).ok().map(CpuMask)
    }

    fn one(cpu: usize) -> CpuMask {
        let mut set = rustix::process::CpuSet::new();
        if cpu < rustix::process::CpuSet::MAX_CPU {
            set.set(cpu);
        }
        CpuMask(set)
    }

    fn contains(&self, cpu: usize) -> bool {
        cpu < rustix::process::CpuSet::MAX_CPU && self.0.is_set(cpu)
    }

    /// Two CPUs of the mask: the one the caller runs on first (binding the first thread there
    /// moves nobody), then another.
    fn two_cpus(&self) -> Option<[usize; 2]> {
        let here = Some(rustix::process::sched_getcpu());
        let mut cpus = (0..rustix::process::CpuSet::MAX_CPU).filter(|&c| self.contains(c));
        let first = here.filter(|&c| self.contains(c)).or_else(|| cpus.next())?;
        let second = cpus.find(|&c| c != first)?;
        Some([first, second])
    }

    /// Binds the calling thread to the mask. Best effort: a refusal leaves it where it was.
    fn apply(&self) {
        let _ = rustix::process::sched_setaffinity(None, &self.0);
    }
}

/// The middle of `net.ipv4.ip_local_port_range`, where clients' ports come from.
pub fn ephemeral_middle() -> u16 {
    let text =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut w = text.split_whitespace().filter_map(|x| x.parse::<u32>().ok());
    match (w.next(), w.next()) {
        (Some(lo), Some(hi)) if lo <= hi => ((lo + hi) / 2) as u16,
        _ => 46_883,
    }
}
