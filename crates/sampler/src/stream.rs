//! The server's half of the socket table kept by the kernel's own reports: a look that does not
//! visit every ESTAB, CLOSE-WAIT or LISTEN socket.
//!
//! A dump walks every socket of the host's hash and writes a message for each one it keeps
//! (about 1 µs each here): at 200,000 sockets, 200 ms of CPU a look. [`Stream`] instead attaches
//! a small BPF program of the lab's (assembled in Rust, `bpf/set_state.rs`) to the tracepoint
//! `sock:inet_sock_set_state`, which the kernel fires for every state change of a full TCP
//! socket, and the program writes a 40-byte [`Event`] into a ring buffer shared with this
//! process: the socket's cookie (the number sock_diag reports as `idiag_cookie`), its network
//! namespace, its ports, its new state and its inode.
//!
//! Only full sockets have that tracepoint: a timewait socket (TIME-WAIT, an orphan's
//! FIN-WAIT-2) and a request socket (SYN-RECV) enter and leave the table without it. So the
//! stream keeps the states only full sockets are in, [`STREAMED`] (ESTAB, SYN-SENT, CLOSE-WAIT,
//! LAST-ACK, LISTEN: the server's half of a leak), and a look dumps the others, filtered by
//! state in the kernel. (Hooks on the timewait and request sockets' births and deaths,
//! `inet_twsk_hashdance_schedule`, `inet_twsk_kill`, `inet_csk_reqsk_queue_hash_add` and
//! `__inet_csk_reqsk_queue_drop`, are fentry programs, which the kernel this lab was built on
//! refuses to load, EPERM even for two instructions; it has no kprobes either.)
//!
//! A [`Ledger`] is one namespace's streamed sockets: seeded once by a dump of those states, then
//! kept by the events. Events are applied in the ring's order (per socket the order the kernel
//! made the changes, each under the socket's lock), each setting what it says rather than
//! adding to a count, so an event that happened before the seed's walk reached its socket and is
//! applied after the seed sets what the seed already said: the last event of a socket is its
//! state now. When the ring overflows (a drop counter the program keeps), the ledgers are seeded
//! again. One thing no event reports: a socket accepted after it entered its state gets its
//! file (its inode) silently; [`Ledger::unfiled`] names such sockets for a look to ask about.
//!
//! Needs BTF, BTF tracepoints (5.5 and later), the ring buffer (5.8) and root.

use std::io;

pub use crate::bpf::Event;
use crate::bpf::{ring::Ring, set_state, sys::Counters};
use crate::hash::FastMap;
use crate::{SocketRecord, States, TcpState};

/// The ring's size: 4 MiB, about 87,000 events (48 bytes each with the ring's header).
pub const RING: usize = 4 << 20;

/// The states only full sockets are in, which the stream keeps.
pub const STREAMED: [TcpState; 5] = [
    TcpState::Established,
    TcpState::SynSent,
    TcpState::CloseWait,
    TcpState::LastAck,
    TcpState::Listen,
];

/// The states a look still dumps (timewait and request sockets are in these, and full sockets
/// in passing).
pub fn dumped() -> States {
    let rest: Vec<TcpState> =
        TcpState::ALL.iter().copied().filter(|s| !STREAMED.contains(s)).collect();
    States::of(&rest)
}

// ---- the ledger -----------------------------------------------------------------------------

/// One socket of a [`Ledger`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Its state, one of [`STREAMED`].
    pub state: TcpState,
    /// Its local port.
    pub local_port: u16,
    /// Its remote port.
    pub remote_port: u16,
    /// Its inode (0: no file refers to it yet, or none will).
    pub inode: u64,
    /// Since when it has been in its state (CLOCK_MONOTONIC, ns).
    pub since_ns: u64,
}

/// One network namespace's sockets in the [`STREAMED`] states, by cookie, as a dump found them
/// and the events since changed them.
#[derive(Debug, Default, Clone)]
pub struct Ledger {
    /// Every such socket, by cookie.
    pub entries: FastMap<u64, Entry>,
}

impl Ledger {
    /// A ledger from a dump of the [`STREAMED`] states made at `now_ns` (with `tcp_info`, a
    /// CLOSE-WAIT socket's age).
    pub fn seed(records: &[SocketRecord], now_ns: u64) -> Ledger {
        let mut entries = FastMap::default();
        entries.reserve(records.len());
        for r in records.iter().filter(|r| STREAMED.contains(&r.state)) {
            let idle = r.idle_ms.map_or(0, |ms| u64::from(ms) * 1_000_000);
            let e = Entry {
                state: r.state,
                local_port: r.local.port(),
                remote_port: r.remote.port(),
                inode: r.inode,
                since_ns: now_ns.saturating_sub(idle),
            };
            entries.insert(r.cookie, e);
        }
        Ledger { entries }
    }

    /// Applies one event of this namespace.
    pub fn apply(&mut self, e: &Event) {
        let state = TcpState::from_kernel(e.state).filter(|s| STREAMED.contains(s));
        let Some(state) = state else {
            self.entries.remove(&e.cookie);
            return;
        };
        let new = Entry {
            state,
            local_port: e.local_port,
            remote_port: e.remote_port,
            inode: e.inode,
            since_ns: e.at_ns,
        };
        let slot = self.entries.entry(e.cookie).or_insert(new);
        let inode = if e.inode != 0 { e.inode } else { slot.inode };
        let since = if slot.state == state { slot.since_ns } else { e.at_ns };
        *slot = Entry { inode, since_ns: since, ..new };
    }

    /// Gives the sockets of `records` (a dump) that the ledger has with no inode their inode.
    pub fn file(&mut self, records: &[SocketRecord]) {
        for r in records.iter().filter(|r| r.inode != 0) {
            if let Some(e) = self.entries.get_mut(&r.cookie) {
                if e.inode == 0 {
                    e.inode = r.inode;
                }
            }
        }
    }

    /// Sockets in `state` with no inode known: accepted, maybe, since their last event.
    pub fn unfiled(&self, state: TcpState) -> impl Iterator<Item = u64> + '_ {
        self.entries.iter().filter(move |(_, e)| e.state == state && e.inode == 0).map(|(c, _)| *c)
    }
}

/// CLOCK_MONOTONIC now, in nanoseconds: the clock of [`Event::at_ns`].
pub fn now_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

// ---- the stream -----------------------------------------------------------------------------

/// The program, attached, and the ring it writes to.
pub struct Stream {
    _attached: set_state::Attached,
    ring: Ring,
    drops: Counters,
}

impl Stream {
    /// Loads and attaches the program; fails where the kernel lacks something it needs.
    pub fn open() -> io::Result<Stream> {
        Stream::with_ring(RING)
    }

    /// The same with a ring of `bytes` (a power of two, at least a page).
    pub fn with_ring(bytes: usize) -> io::Result<Stream> {
        let ring = Ring::new(bytes)?;
        let drops = Counters::new(1)?;
        let attached = set_state::attach(ring.map(), &drops)?;
        Ok(Stream { _attached: attached, ring, drops })
    }

    /// Every event written since the last call, in order, to `f`; then how many events the
    /// programs could not write since the stream opened (the ring was full).
    pub fn drain(&mut self, mut f: impl FnMut(Event)) -> u64 {
        self.ring.consume(|r| {
            if let Some(e) = Event::decode(r) {
                f(e)
            }
        });
        self.drops.get(0).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(cookie: u64, state: u8, at_ns: u64) -> Event {
        Event {
            cookie,
            at_ns,
            inode: 0,
            netns: 1,
            local_port: 8080,
            remote_port: 40000,
            state,
            old: 0,
        }
    }

    #[test]
    fn the_last_event_of_a_socket_wins_whatever_the_seed_said() {
        // The seed saw CLOSE-WAIT; an earlier event (ESTAB) replayed after it is set right by
        // the later one; a socket that leaves the streamed states leaves the ledger.
        let mut l = Ledger::default();
        let seen = Entry {
            state: TcpState::CloseWait,
            local_port: 8080,
            remote_port: 40000,
            inode: 55,
            since_ns: 10,
        };
        l.entries.insert(9, seen);
        l.apply(&event(9, 1, 5));
        l.apply(&event(9, 8, 6));
        assert_eq!(l.entries[&9], Entry { since_ns: 6, ..seen }, "the inode kept");
        l.apply(&event(9, 8, 7));
        assert_eq!(l.entries[&9].since_ns, 6, "the same state: the same since");
        assert_eq!(l.unfiled(TcpState::CloseWait).count(), 0);
        l.apply(&event(9, 9, 8)); // LAST-ACK
        assert_eq!(l.entries[&9].state, TcpState::LastAck);
        l.apply(&event(9, 7, 9)); // CLOSE
        assert!(l.entries.is_empty());
        // FIN-WAIT-1 is dumped, not streamed; a socket with no file yet is unfiled.
        l.apply(&event(3, 4, 10));
        assert!(l.entries.is_empty());
        l.apply(&event(4, 8, 11));
        assert_eq!(l.unfiled(TcpState::CloseWait).collect::<Vec<_>>(), [4]);
    }

    #[test]
    fn a_look_dumps_the_states_timewait_and_request_sockets_are_in() {
        // A timewait socket is TIME-WAIT or (an orphan's) FIN-WAIT-2, a request socket SYN-RECV
        // (TCP_NEW_SYN_RECV, bit 12, with it); full sockets pass through the others.
        let d = dumped();
        let states: Vec<TcpState> = TcpState::ALL.into_iter().filter(|s| d.contains(*s)).collect();
        use TcpState::*;
        assert_eq!(states, [SynRecv, FinWait1, FinWait2, TimeWait, Close, Closing]);
        assert_eq!(d.mask(), 1 << 3 | 1 << 4 | 1 << 5 | 1 << 6 | 1 << 7 | 1 << 11 | 1 << 12);
        assert!(STREAMED.iter().all(|s| !d.contains(*s)), "a streamed state is not dumped");
    }
}
