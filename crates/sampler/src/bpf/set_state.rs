//! The stream's program: on the tracepoint `sock:inet_sock_set_state`, which the kernel fires
//! for every state change of a full TCP socket, it writes an [`Event`] into a ring buffer (and
//! counts the events it could not write). 55 instructions, assembled here; the offsets of the
//! fields it reads are the running kernel's, from its BTF.
//!
//! Needs BTF, BTF tracepoints (5.5 and later), the ring buffer (5.8) and root.
//!
//! # References
//! include/trace/events/sock.h (the tracepoint); Documentation/bpf/ringbuf.rst;
//! include/net/sock.h (`struct sock`, `struct sock_common`).

use std::io;
use std::mem::{offset_of, size_of};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::asm::{Asm, AsmError, Helper, Insn, Size, FP, R0, R1, R2, R3, R4, R6, R7};
use super::btf::{self, Btf, Fields};
use super::sys::{self, AttachType, Counters};
use crate::stream::STREAMED;

/// One state change of a full socket, as the kernel reported it: the record the program writes,
/// 40 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// The socket's cookie (the number sock_diag reports as `idiag_cookie`).
    pub cookie: u64,
    /// When, on CLOCK_MONOTONIC, in nanoseconds.
    pub at_ns: u64,
    /// The socket's inode, where it has a file (0 otherwise).
    pub inode: u64,
    /// Its network namespace's inode.
    pub netns: u32,
    /// Its local port.
    pub local_port: u16,
    /// Its remote port (in network order in the record, as the kernel keeps it; decoded).
    pub remote_port: u16,
    /// The state it is in now (the kernel's number: 7 is CLOSE, out of the table).
    pub state: u8,
    /// The state it was in.
    pub old: u8,
}

impl Event {
    /// A record as the program wrote it, or `None` for one too short.
    pub(crate) fn decode(r: &[u8]) -> Option<Event> {
        fn at<const N: usize>(r: &[u8], offset: usize) -> [u8; N] {
            r[offset..offset + N].try_into().expect("a whole record")
        }
        let r = r.get(..size_of::<Event>())?;
        Some(Event {
            cookie: u64::from_ne_bytes(at(r, offset_of!(Event, cookie))),
            at_ns: u64::from_ne_bytes(at(r, offset_of!(Event, at_ns))),
            inode: u64::from_ne_bytes(at(r, offset_of!(Event, inode))),
            netns: u32::from_ne_bytes(at(r, offset_of!(Event, netns))),
            local_port: u16::from_ne_bytes(at(r, offset_of!(Event, local_port))),
            remote_port: u16::from_be_bytes(at(r, offset_of!(Event, remote_port))),
            state: r[offset_of!(Event, state)],
            old: r[offset_of!(Event, old)],
        })
    }
}

/// The program, attached: it writes while both are open.
pub(crate) struct Attached {
    _prog: OwnedFd,
    _link: OwnedFd,
}

/// Loads the program, writing to `ring` and counting what it could not write in `drops[0]`, and
/// attaches it to the tracepoint; fails where the kernel lacks something it needs.
pub(crate) fn attach(ring: &OwnedFd, drops: &Counters) -> io::Result<Attached> {
    let (off, target) = btf::with_kernel_btf(|btf| {
        let off = Offsets::of(btf)
            .ok_or_else(|| io::Error::other("the kernel's BTF lacks a field the program reads"))?;
        let target = btf
            .typedef("btf_trace_inet_sock_set_state")
            .ok_or_else(|| io::Error::other("this kernel has no inet_sock_set_state tracepoint"))?;
        Ok((off, target))
    })?;
    let code = program(&off, ring.as_raw_fd(), drops.map().as_raw_fd());
    let code = code.map_err(io::Error::other)?;
    let prog = sys::prog_load(&code, AttachType::TraceRawTp, target, b"cwlab_states")?;
    let link = sys::raw_tracepoint_open(&prog)?;
    Ok(Attached { _prog: prog, _link: link })
}

/// Field offsets, from the kernel's BTF.
#[derive(Debug, Clone, Copy)]
struct Offsets {
    /// `struct sock_common`: `skc_num`, `skc_dport`, `skc_net`.
    num: i16,
    dport: i16,
    net: i16,
    /// `struct net`: `ns.inum`.
    net_inum: i16,
    /// `struct sock`: `sk_socket`; `struct socket`: `file`.
    sk_socket: i16,
    socket_file: i16,
    /// `struct file`: `f_inode`; `struct inode`: `i_ino`.
    f_inode: i16,
    i_ino: i16,
}

impl Offsets {
    fn of(btf: &Btf) -> Option<Offsets> {
        let fields = Fields::of(btf, &["sock_common", "net", "sock", "socket", "file", "inode"]);
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

/// The tracepoint's arguments, 8 bytes each: the socket, the old state, the new state.
const ARG_SOCKET: i16 = 0;
const ARG_OLD: i16 = 8;
const ARG_NEW: i16 = 16;

/// The event, at the bottom of the stack.
const EVENT: i16 = -(size_of::<Event>() as i16);

/// Where a field of the event lies on the stack.
fn field(offset: usize) -> i16 {
    EVENT + offset as i16
}

/// The kernel's numbers of the states the stream keeps ([`STREAMED`]), as bits: a change that
/// neither leaves nor enters one of them (FIN-WAIT-1 → FIN-WAIT-2 → CLOSE, the side that closes
/// first) changes no ledger, and is not written.
fn streamed_bits() -> i32 {
    STREAMED.iter().fold(0, |m, s| m | 1 << s.kernel())
}

/// The program: the event on the stack, then `bpf_ringbuf_output`; a failed output adds one to
/// the drop counter. A change between two states the stream does not keep is left out first.
fn program(o: &Offsets, ring: RawFd, drops: RawFd) -> Result<Vec<Insn>, AsmError> {
    let mut a = Asm::default();
    a.mov(R7, R1); // r7 = ctx
    streamed(&mut a, ARG_NEW);
    a.jne_imm(R3, 0, "kept");
    streamed(&mut a, ARG_OLD);
    a.jeq_imm(R3, 0, "out"); // neither state is kept: nothing to write
    a.label("kept");
    a.load(Size::DW, R6, R7, ARG_SOCKET); // r6 = the socket
    for word in (0..size_of::<Event>()).step_by(8) {
        a.store_imm(Size::DW, FP, field(word), 0);
    }
    fill(&mut a, o);
    a.load_map(R1, ring);
    a.mov(R2, FP);
    a.add_imm(R2, i32::from(EVENT));
    a.mov_imm(R3, size_of::<Event>() as i32);
    a.mov_imm(R4, 0);
    a.call(Helper::RingbufOutput);
    a.jeq_imm(R0, 0, "out"); // written
                             // The counter's key, 0, below the event.
    const KEY: i16 = EVENT - 8;
    a.store_imm(Size::W, FP, KEY, 0);
    a.load_map(R1, drops);
    a.mov(R2, FP);
    a.add_imm(R2, i32::from(KEY));
    a.call(Helper::MapLookupElem);
    a.jeq_imm(R0, 0, "out"); // no counter
    a.mov_imm(R1, 1);
    a.atomic_add(Size::DW, R0, 0, R1);
    a.label("out");
    a.mov_imm(R0, 0);
    a.exit();
    a.finish()
}

/// `r3 = (STREAMED bits >> state) & 1`, the state the tracepoint's argument `arg` of the
/// context in r7.
fn streamed(a: &mut Asm, arg: i16) {
    a.load(Size::DW, R2, R7, arg);
    a.mov_imm(R3, streamed_bits());
    a.rsh(R3, R2);
    a.and_imm(R3, 1);
}

/// The event's fields, from the socket in r6 and the context in r7.
fn fill(a: &mut Asm, o: &Offsets) {
    a.mov(R1, R6);
    a.call(Helper::GetSocketCookie);
    a.store(Size::DW, FP, field(offset_of!(Event, cookie)), R0);
    a.call(Helper::KtimeGetNs);
    a.store(Size::DW, FP, field(offset_of!(Event, at_ns)), R0);
    // Loads through kernel pointers are guarded: a NULL one reads as 0.
    a.load(Size::DW, R1, R6, o.sk_socket); // the inode: sk->sk_socket->file->f_inode->i_ino
    a.load(Size::DW, R1, R1, o.socket_file);
    a.load(Size::DW, R1, R1, o.f_inode);
    a.load(Size::DW, R1, R1, o.i_ino);
    a.store(Size::DW, FP, field(offset_of!(Event, inode)), R1);
    a.load(Size::DW, R1, R6, o.net); // the namespace: sk->skc_net->ns.inum
    a.load(Size::W, R1, R1, o.net_inum);
    a.store(Size::W, FP, field(offset_of!(Event, netns)), R1);
    a.load(Size::H, R1, R6, o.num);
    a.store(Size::H, FP, field(offset_of!(Event, local_port)), R1);
    a.load(Size::H, R1, R6, o.dport);
    a.store(Size::H, FP, field(offset_of!(Event, remote_port)), R1);
    a.load(Size::DW, R1, R7, ARG_NEW);
    a.store(Size::B, FP, field(offset_of!(Event, state)), R1);
    a.load(Size::DW, R1, R7, ARG_OLD);
    a.store(Size::B, FP, field(offset_of!(Event, old)), R1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::asm::listing;

    #[test]
    fn an_event_is_laid_out_as_the_program_writes_it() {
        let at = [
            offset_of!(Event, cookie),
            offset_of!(Event, at_ns),
            offset_of!(Event, inode),
            offset_of!(Event, netns),
            offset_of!(Event, local_port),
            offset_of!(Event, remote_port),
            offset_of!(Event, state),
            offset_of!(Event, old),
        ];
        assert_eq!((at, size_of::<Event>()), ([0, 8, 16, 24, 28, 30, 32, 33], 40));
    }

    #[test]
    fn a_record_decodes_field_by_field() {
        let mut r = [0u8; 40];
        r[0..8].copy_from_slice(&1u64.to_ne_bytes());
        r[8..16].copy_from_slice(&2u64.to_ne_bytes());
        r[16..24].copy_from_slice(&3u64.to_ne_bytes());
        r[24..28].copy_from_slice(&4u32.to_ne_bytes());
        r[28..30].copy_from_slice(&8080u16.to_ne_bytes());
        r[30..32].copy_from_slice(&40000u16.to_be_bytes());
        (r[32], r[33]) = (8, 1);
        let want = Event {
            cookie: 1,
            at_ns: 2,
            inode: 3,
            netns: 4,
            local_port: 8080,
            remote_port: 40000,
            state: 8,
            old: 1,
        };
        assert_eq!(Event::decode(&r), Some(want));
        assert_eq!(Event::decode(&r[..39]), None);
    }

    #[test]
    fn assembles_to_its_golden_listing() {
        // Offsets and maps of the test's own, each distinct, so that a field read from the wrong
        // place shows.
        let o = Offsets {
            num: 100,
            dport: 102,
            net: 200,
            net_inum: 300,
            sk_socket: 400,
            socket_file: 500,
            f_inode: 600,
            i_ino: 700,
        };
        let header = format!(
            "# the stream's program on sock:inet_sock_set_state, assembled with the ring as map 3,\n\
             # the drop counter as map 4 and\n# {o:?}"
        );
        listing::golden("set_state", &header, &program(&o, 3, 4).unwrap());
    }
}
