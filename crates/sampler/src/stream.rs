//! The server's half of the socket table kept by the kernel's own reports: a look that does not
//! visit every ESTAB, CLOSE-WAIT or LISTEN socket.
//!
//! A dump walks every socket of the host's hash and writes a message for each one it keeps
//! (about 1 µs each here): at 200,000 sockets, 200 ms of CPU a look. [`Stream`] instead attaches
//! a small BPF program of the lab's (assembled here, like [`crate::bpf`]'s) to the tracepoint
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
use std::os::fd::{FromRawFd, OwnedFd};

use crate::bpf::{self, fd_of, insn, ldx, stx, Insn};
use crate::bpf::{ALU64, CALL, DW, EXIT, FP, H, JEQ, JMP, K, MEM, MOV, ST, STX, W, X};
use crate::holders::FastMap;
use crate::{SocketRecord, States, TcpState};

/// One event as the program writes it.
const EVENT: usize = 40;
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

/// One state change of a full socket, as the kernel reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// The socket's cookie.
    pub cookie: u64,
    /// When, on CLOCK_MONOTONIC, in nanoseconds.
    pub at_ns: u64,
    /// The socket's inode, where it has a file (0 otherwise).
    pub inode: u64,
    /// Its network namespace's inode.
    pub netns: u32,
    /// Its local port.
    pub local_port: u16,
    /// Its remote port.
    pub remote_port: u16,
    /// The state it is in now (the kernel's number: 7 is CLOSE, out of the table).
    pub state: u8,
    /// The state it was in.
    pub old: u8,
}

impl Event {
    fn decode(r: &[u8]) -> Option<Event> {
        if r.len() < EVENT {
            return None;
        }
        let u64_at = |at: usize| u64::from_ne_bytes(r[at..at + 8].try_into().expect("8 bytes"));
        Some(Event {
            cookie: u64_at(0),
            at_ns: u64_at(8),
            inode: u64_at(16),
            netns: u32::from_ne_bytes(r[24..28].try_into().expect("4 bytes")),
            local_port: u16::from_ne_bytes([r[28], r[29]]),
            remote_port: u16::from_be_bytes([r[30], r[31]]),
            state: r[32],
            old: r[33],
        })
    }
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
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

// ---- the stream -----------------------------------------------------------------------------

/// The program, attached, and the ring it writes to.
pub struct Stream {
    _prog: OwnedFd,
    _link: OwnedFd,
    ring: Ring,
    drops: OwnedFd,
}

impl Stream {
    /// Loads and attaches the program; fails where the kernel lacks something it needs.
    pub fn open() -> io::Result<Stream> {
        Stream::with_ring(RING)
    }

    /// The same with a ring of `bytes` (a power of two, at least a page).
    pub fn with_ring(bytes: usize) -> io::Result<Stream> {
        let (off, target) = bpf::with_kernel_btf(|btf| {
            let off = Offsets::of(btf).ok_or_else(|| {
                io::Error::other("the kernel's BTF lacks a field the program reads")
            })?;
            let target = btf.typedef("btf_trace_inet_sock_set_state").ok_or_else(|| {
                io::Error::other("this kernel has no inet_sock_set_state tracepoint")
            })?;
            Ok((off, target))
        })?;
        let ring_map = map_create(MAP_RINGBUF, 0, 0, bytes as u32)?;
        let drops = map_create(MAP_ARRAY, 4, 8, 1)?;
        let ring = Ring::map(ring_map, bytes)?;
        let code = program(&off, fd_of(&ring.map), fd_of(&drops));
        let prog = bpf::prog_load(&code, bpf::BPF_TRACE_RAW_TP, target, b"cwlab_states")?;
        let link = bpf::attach(&prog)?;
        Ok(Stream { _prog: prog, _link: link, ring, drops })
    }

    /// Every event written since the last call, in order, to `f`; then how many events the
    /// programs could not write since the stream opened (the ring was full).
    pub fn drain(&mut self, mut f: impl FnMut(Event)) -> u64 {
        self.ring.consume(|r| {
            if let Some(e) = Event::decode(r) {
                f(e)
            }
        });
        self.dropped()
    }

    fn dropped(&self) -> u64 {
        const BPF_MAP_LOOKUP_ELEM: i64 = 1;
        let key = 0u32;
        let mut value = 0u64;
        let mut attr = [0u8; 32];
        attr[0..4].copy_from_slice(&(fd_of(&self.drops) as u32).to_ne_bytes());
        attr[8..16].copy_from_slice(&(&key as *const u32 as u64).to_ne_bytes());
        attr[16..24].copy_from_slice(&(&mut value as *mut u64 as u64).to_ne_bytes());
        // SAFETY: BPF_MAP_LOOKUP_ELEM's layout: the map, a pointer to the 4-byte key and one to
        // the 8-byte value, both live for the call.
        match unsafe { bpf::bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) } {
            Ok(_) => value,
            Err(_) => u64::MAX,
        }
    }
}

/// The consumer's side of a BPF ring buffer (Documentation/bpf/ringbuf.rst): a page with the
/// consumer's position (ours to write), then the producer's page and the data, mapped twice in
/// a row so that a record that wraps reads as one.
struct Ring {
    map: OwnedFd,
    consumer: *mut u64,
    producer: *const u8,
    page: usize,
    size: usize,
}

// SAFETY: the mappings belong to the ring alone and are only touched through `&mut self`.
unsafe impl Send for Ring {}

impl Ring {
    fn map(map: OwnedFd, size: usize) -> io::Result<Ring> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let fd = fd_of(&map);
        // SAFETY: the kernel's layout for a ring buffer map: one writable page at offset 0, then
        // the producer's page and twice the data, read-only; both unmapped in Drop.
        let (consumer, producer) = unsafe {
            let c = libc::mmap(
                std::ptr::null_mut(),
                page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            );
            if c == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            let p = libc::mmap(
                std::ptr::null_mut(),
                page + 2 * size,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd,
                page as libc::off_t,
            );
            if p == libc::MAP_FAILED {
                let e = io::Error::last_os_error();
                libc::munmap(c, page);
                return Err(e);
            }
            (c.cast::<u64>(), p.cast::<u8>().cast_const())
        };
        Ok(Ring { map, consumer, producer, page, size })
    }

    fn consume(&mut self, mut f: impl FnMut(&[u8])) {
        use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
        const BUSY: u32 = 1 << 31;
        const DISCARD: u32 = 1 << 30;
        // SAFETY: both positions are 8-byte aligned words of the mappings, shared with the
        // kernel, which writes the producer's and reads ours: atomics, as libbpf reads them.
        let (cons, prod) = unsafe {
            (
                AtomicU64::from_ptr(self.consumer),
                AtomicU64::from_ptr(self.producer.cast::<u64>().cast_mut()),
            )
        };
        let mut at = cons.load(Ordering::Relaxed);
        let end = prod.load(Ordering::Acquire);
        while at < end {
            let offset = self.page + (at as usize & (self.size - 1));
            // SAFETY: `offset` lies in the first copy of the data; a record's 8-byte header and
            // its body follow it within the doubled mapping.
            let header =
                unsafe { AtomicU32::from_ptr(self.producer.add(offset).cast::<u32>().cast_mut()) }
                    .load(Ordering::Acquire);
            if header & BUSY != 0 {
                break;
            }
            let len = (header & !(BUSY | DISCARD)) as usize;
            if header & DISCARD == 0 {
                // SAFETY: the committed record's `len` bytes after its header, in the mapping.
                f(unsafe { std::slice::from_raw_parts(self.producer.add(offset + 8), len) });
            }
            at += ((len + 8 + 7) & !7) as u64;
            cons.store(at, Ordering::Release);
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the two mappings made in `map`.
        unsafe {
            libc::munmap(self.consumer.cast(), self.page);
            libc::munmap(self.producer.cast_mut().cast(), self.page + 2 * self.size);
        }
    }
}

const MAP_ARRAY: u32 = 2;
const MAP_RINGBUF: u32 = 27;

fn map_create(kind: u32, key: u32, value: u32, entries: u32) -> io::Result<OwnedFd> {
    const BPF_MAP_CREATE: i64 = 0;
    let mut attr = [0u8; 48];
    for (at, v) in [(0, kind), (4, key), (8, value), (12, entries)] {
        attr[at..at + 4].copy_from_slice(&v.to_ne_bytes());
    }
    // SAFETY: BPF_MAP_CREATE's layout: type, key size, value size, entries, no flags.
    let fd = unsafe { bpf::bpf(BPF_MAP_CREATE, &mut attr) }?;
    // SAFETY: a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

// ---- the program ---------------------------------------------------------------------------

/// Field offsets, from the kernel's BTF.
struct Offsets {
    num: i16,
    dport: i16,
    net: i16,
    net_inum: i16,
    sk_socket: i16,
    socket_file: i16,
    f_inode: i16,
    i_ino: i16,
}

impl Offsets {
    fn of(btf: &bpf::Btf) -> Option<Offsets> {
        let fields =
            bpf::Fields::of(btf, &["sock_common", "net", "sock", "socket", "file", "inode"]);
        let at = |s: &str, path: &str| fields.at(s, path);
        // A `struct sock` begins with its `struct sock_common`.
        if at("sock", "__sk_common")? != 0 {
            return None;
        }
        Some(Offsets {
            num: at("sock_common", "skc_num")?,
            dport: at("sock_common", "skc_dport")?,
            net: at("sock_common", "skc_net")?,
            net_inum: at("net", "ns.inum")?,
            sk_socket: at("sock", "sk_socket")?,
            socket_file: at("socket", "file")?,
            f_inode: at("file", "f_inode")?,
            i_ino: at("inode", "i_ino")?,
        })
    }
}

const B: u8 = 0x10;
const LD_IMM64: u8 = 0x18;
const ATOMIC: u8 = 0xc0;
const PSEUDO_MAP_FD: u8 = 1;
const GET_SOCKET_COOKIE: i32 = 46;
const KTIME_GET_NS: i32 = 5;
const RINGBUF_OUTPUT: i32 = 130;
const MAP_LOOKUP_ELEM: i32 = 1;

/// `reg = map` (a map's descriptor, which the kernel turns into the map).
fn ld_map(reg: u8, map: i32) -> [Insn; 2] {
    [insn(LD_IMM64, reg, PSEUDO_MAP_FD, 0, map), insn(0, 0, 0, 0, 0)]
}

/// The program: the event on the stack, then `bpf_ringbuf_output`; a failed output adds one to
/// the drop counter. Its context is the tracepoint's arguments, 8 bytes each: the socket, the
/// old state, the new state.
fn program(o: &Offsets, ring: i32, drops: i32) -> Vec<Insn> {
    const E: i16 = -(EVENT as i16);
    let mut p = vec![
        insn(ALU64 | MOV | X, 7, 1, 0, 0), // r7 = ctx
        ldx(DW, 6, 7, 0),                  // r6 = the socket
    ];
    for i in 0..EVENT as i16 / 8 {
        p.push(insn(ST | MEM | DW, FP, 0, E + 8 * i, 0));
    }
    p.extend([
        insn(ALU64 | MOV | X, 1, 6, 0, 0),
        insn(JMP | CALL, 0, 0, 0, GET_SOCKET_COOKIE),
        stx(DW, FP, E, 0),
        insn(JMP | CALL, 0, 0, 0, KTIME_GET_NS),
        stx(DW, FP, E + 8, 0),
        // Loads through kernel pointers are guarded: a NULL one reads as 0.
        ldx(DW, 1, 6, o.sk_socket), // the inode: sk->sk_socket->file->f_inode->i_ino
        ldx(DW, 1, 1, o.socket_file),
        ldx(DW, 1, 1, o.f_inode),
        ldx(DW, 1, 1, o.i_ino),
        stx(DW, FP, E + 16, 1),
        ldx(DW, 1, 6, o.net), // the namespace: sk->skc_net->ns.inum
        ldx(W, 1, 1, o.net_inum),
        stx(W, FP, E + 24, 1),
        ldx(H, 1, 6, o.num),
        stx(H, FP, E + 28, 1),
        ldx(H, 1, 6, o.dport),
        stx(H, FP, E + 30, 1),
        ldx(DW, 1, 7, 16),
        stx(B, FP, E + 32, 1),
        ldx(DW, 1, 7, 8),
        stx(B, FP, E + 33, 1),
    ]);
    p.extend(ld_map(1, ring));
    p.extend([
        insn(ALU64 | MOV | X, 2, FP, 0, 0),
        insn(ALU64 | bpf::ADD | K, 2, 0, 0, i32::from(E)),
        insn(ALU64 | MOV | K, 3, 0, 0, EVENT as i32),
        insn(ALU64 | MOV | K, 4, 0, 0, 0),
        insn(JMP | CALL, 0, 0, 0, RINGBUF_OUTPUT),
    ]);
    let first_jump = p.len();
    p.push(insn(JMP | JEQ | K, 0, 0, 0, 0)); // written: goto out (patched)
    p.push(insn(ST | MEM | W, FP, 0, E - 8, 0));
    p.extend(ld_map(1, drops));
    p.extend([
        insn(ALU64 | MOV | X, 2, FP, 0, 0),
        insn(ALU64 | bpf::ADD | K, 2, 0, 0, i32::from(E - 8)),
        insn(JMP | CALL, 0, 0, 0, MAP_LOOKUP_ELEM),
    ]);
    let second_jump = p.len();
    p.push(insn(JMP | JEQ | K, 0, 0, 0, 0)); // no counter: goto out (patched)
    p.push(insn(ALU64 | MOV | K, 1, 0, 0, 1));
    p.push(insn(STX | ATOMIC | DW, 0, 1, 0, 0)); // lock *(u64 *)r0 += r1
    let out = p.len();
    p.push(insn(ALU64 | MOV | K, 0, 0, 0, 0));
    p.push(insn(JMP | EXIT, 0, 0, 0, 0));
    for at in [first_jump, second_jump] {
        p[at].off = (out - at - 1) as i16;
    }
    p
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
    fn the_streamed_and_dumped_states_are_every_state_once() {
        let d = dumped();
        for s in TcpState::ALL {
            assert_ne!(STREAMED.contains(&s), d.contains(s), "{s:?}");
        }
    }
}
