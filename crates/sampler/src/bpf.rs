//! Who holds which socket, from the kernel in one pass: a BPF iterator over every open file of
//! every process (`bpf_iter_task_file`) runs a program of the lab's (about 30 instructions,
//! assembled here: no compiler, no object file) that writes, for each descriptor, the process,
//! the descriptor number and, for a socket, its inode: 16 bytes, where the `/proc` walk formats
//! and reads back a `socket:[N]` link per descriptor (about 6 µs each here).
//!
//! The offsets of the fields it reads are the running kernel's, from its BTF
//! (`/sys/kernel/btf/vmlinux`), so one binary fits every kernel that has BTF and BPF iterators
//! (5.8 and later, with `CONFIG_DEBUG_INFO_BTF`). The pids are the kernel's own, which are
//! `/proc`'s only in the first PID namespace: elsewhere, or where the kernel refuses, [`open`]
//! fails and the caller walks `/proc`.
//!
//! # References
//! bpf(2); Documentation/bpf/bpf_iterators.rst; Documentation/bpf/btf.rst (the BTF format);
//! include/uapi/linux/bpf.h (the instruction encoding, `union bpf_attr`);
//! tools/testing/selftests/bpf/progs/bpf_iter_task_file.c (what such a program reads).

use std::io::{self, Read};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// One record as the program writes it: pid u32, fd u32, inode u64 (0: not a socket).
const RECORD: usize = 16;

/// One descriptor of one process: its pid, its number, and the socket's inode (0 when the
/// descriptor is not a socket).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Descriptor {
    /// The process (its thread group id, as `/proc` names it in the first PID namespace).
    pub pid: u32,
    /// The descriptor number.
    pub fd: i32,
    /// The socket's inode, or 0.
    pub inode: u64,
}

/// The loaded program and its link.
pub struct Files {
    _prog: OwnedFd,
    link: OwnedFd,
}

/// Loads and links the program; fails outside the first PID namespace, where the kernel has no
/// BTF or no task-file iterator, or refuses the program.
pub fn open() -> io::Result<Files> {
    // The first PID namespace's inode (PROC_PID_INIT_INO): the kernel's pids are /proc's there.
    const INIT_PID_NS: u64 = 0xEFFF_FFFC;
    let ns = std::fs::metadata("/proc/self/ns/pid")?;
    if std::os::unix::fs::MetadataExt::ino(&ns) != INIT_PID_NS {
        return Err(io::Error::other("not in the first PID namespace"));
    }
    let (off, target) = with_kernel_btf(|btf| {
        let off = Offsets::of(btf)
            .ok_or_else(|| io::Error::other("the kernel's BTF lacks a field the program reads"))?;
        let target = btf
            .func("bpf_iter_task_file")
            .ok_or_else(|| io::Error::other("this kernel has no task-file BPF iterator"))?;
        Ok((off, target))
    })?;
    let prog = prog_load(&program(&off), BPF_TRACE_ITER, target, b"cwlab_files")?;
    let link = link_create(&prog)?;
    Ok(Files { _prog: prog, link })
}

impl Files {
    /// Every open descriptor of every process, as the kernel walks them now.
    pub fn all(&self) -> io::Result<Vec<Descriptor>> {
        let mut attr = [0u8; 16];
        attr[0..4].copy_from_slice(&(fd_of(&self.link) as u32).to_ne_bytes());
        // SAFETY: BPF_ITER_CREATE's layout: the link's descriptor, no flags.
        let fd = unsafe { bpf(BPF_ITER_CREATE, &mut attr) }?;
        // SAFETY: the kernel returned a new descriptor that nothing else owns.
        let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let mut bytes = Vec::with_capacity(1 << 20);
        file.read_to_end(&mut bytes)?;
        Ok(bytes
            .chunks_exact(RECORD)
            .map(|r| Descriptor {
                pid: u32::from_ne_bytes([r[0], r[1], r[2], r[3]]),
                fd: i32::from_ne_bytes([r[4], r[5], r[6], r[7]]),
                inode: u64::from_ne_bytes(r[8..16].try_into().expect("16-byte records")),
            })
            .collect())
    }
}

/// `f` with the running kernel's BTF (`/sys/kernel/btf/vmlinux`).
pub(crate) fn with_kernel_btf<T>(f: impl FnOnce(&Btf) -> io::Result<T>) -> io::Result<T> {
    let blob = Blob::of("/sys/kernel/btf/vmlinux")?;
    let btf =
        Btf::parse(blob.bytes()).ok_or_else(|| io::Error::other("cannot read the kernel's BTF"))?;
    f(&btf)
}

/// Where members lie in a few of the kernel's structs, the structs found in one pass over its
/// BTF.
pub(crate) struct Fields<'b, 'a> {
    btf: &'b Btf<'a>,
    names: &'b [&'b str],
    ids: Vec<Option<u32>>,
}

impl<'b, 'a> Fields<'b, 'a> {
    pub(crate) fn of(btf: &'b Btf<'a>, names: &'b [&'b str]) -> Fields<'b, 'a> {
        Fields { btf, names, ids: btf.all_named(KIND_STRUCT, names) }
    }

    /// The byte offset of a path of members (`"ns.inum"`) in the struct `name`, one of those
    /// asked for, where an instruction's 16-bit offset can reach it.
    pub(crate) fn at(&self, name: &str, path: &str) -> Option<i16> {
        let id = self.ids[self.names.iter().position(|n| *n == name)?]?;
        i16::try_from(self.btf.offset(id, path)?).ok()
    }
}

/// The kernel's BTF: mapped where the kernel lets it be (6.16 and later), else read.
enum Blob {
    Mapped(*mut std::ffi::c_void, usize),
    Read(Vec<u8>),
}

impl Blob {
    fn of(path: &str) -> io::Result<Blob> {
        let mut f = std::fs::File::open(path)?;
        let size = f.metadata()?.len() as usize;
        // SAFETY: a private read-only mapping of `size` bytes of an open file; it is unmapped in
        // Drop and only read through `bytes` while it lives.
        let mapped = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                std::os::fd::AsRawFd::as_raw_fd(&f),
                0,
            )
        };
        if mapped != libc::MAP_FAILED && size > 0 {
            return Ok(Blob::Mapped(mapped, size));
        }
        let mut v = Vec::with_capacity(size + 1);
        f.read_to_end(&mut v)?;
        Ok(Blob::Read(v))
    }

    fn bytes(&self) -> &[u8] {
        match self {
            // SAFETY: the mapping is `len` readable bytes for as long as `self` lives.
            Blob::Mapped(p, len) => unsafe { std::slice::from_raw_parts(p.cast::<u8>(), *len) },
            Blob::Read(v) => v,
        }
    }
}

impl Drop for Blob {
    fn drop(&mut self) {
        if let Blob::Mapped(p, len) = self {
            // SAFETY: unmaps exactly the mapping made in `of`, which nothing refers to any more.
            unsafe { libc::munmap(*p, *len) };
        }
    }
}

pub(crate) fn fd_of(fd: &OwnedFd) -> RawFd {
    std::os::fd::AsRawFd::as_raw_fd(fd)
}

// ---- the program ----------------------------------------------------------------------------

/// Where the program reads, in bytes, from the kernel's BTF.
#[derive(Debug, Clone, Copy)]
struct Offsets {
    /// `struct bpf_iter__task_file`: `meta`, `task`, `fd`, `file`.
    ctx_meta: i16,
    ctx_task: i16,
    ctx_fd: i16,
    ctx_file: i16,
    /// `struct bpf_iter_meta`: `seq`.
    meta_seq: i16,
    /// `struct task_struct`: `tgid`.
    tgid: i16,
    /// `struct file`: `f_inode`; `struct inode`: `i_mode`, `i_ino`.
    f_inode: i16,
    i_mode: i16,
    i_ino: i16,
}

impl Offsets {
    fn of(btf: &Btf) -> Option<Offsets> {
        let fields = Fields::of(
            btf,
            &["bpf_iter__task_file", "bpf_iter_meta", "task_struct", "file", "inode"],
        );
        let at = |s: &str, m: &str| fields.at(s, m);
        Some(Offsets {
            ctx_meta: at("bpf_iter__task_file", "meta")?,
            ctx_task: at("bpf_iter__task_file", "task")?,
            ctx_fd: at("bpf_iter__task_file", "fd")?,
            ctx_file: at("bpf_iter__task_file", "file")?,
            meta_seq: at("bpf_iter_meta", "seq")?,
            tgid: at("task_struct", "tgid")?,
            f_inode: at("file", "f_inode")?,
            i_mode: at("inode", "i_mode")?,
            i_ino: at("inode", "i_ino")?,
        })
    }
}

// Instruction classes, sizes, modes and operations (include/uapi/linux/bpf.h, bpf_common.h).
pub(crate) const LDX: u8 = 0x01;
pub(crate) const STX: u8 = 0x03;
pub(crate) const ST: u8 = 0x02;
pub(crate) const ALU64: u8 = 0x07;
pub(crate) const JMP: u8 = 0x05;
pub(crate) const MEM: u8 = 0x60;
pub(crate) const H: u8 = 0x08;
pub(crate) const W: u8 = 0x00;
pub(crate) const DW: u8 = 0x18;
pub(crate) const MOV: u8 = 0xb0;
pub(crate) const ADD: u8 = 0x00;
pub(crate) const AND: u8 = 0x50;
pub(crate) const K: u8 = 0x00;
pub(crate) const X: u8 = 0x08;
pub(crate) const JEQ: u8 = 0x10;
pub(crate) const JNE: u8 = 0x50;
pub(crate) const CALL: u8 = 0x80;
pub(crate) const EXIT: u8 = 0x90;
pub(crate) const FP: u8 = 10;

const SEQ_WRITE: i32 = 127;

#[derive(Clone, Copy)]
pub(crate) struct Insn {
    code: u8,
    regs: u8,
    pub(crate) off: i16,
    imm: i32,
}

pub(crate) fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, regs: (src << 4) | dst, off, imm }
}

pub(crate) fn ldx(size: u8, dst: u8, src: u8, off: i16) -> Insn {
    insn(LDX | MEM | size, dst, src, off, 0)
}

pub(crate) fn stx(size: u8, dst: u8, off: i16, src: u8) -> Insn {
    insn(STX | MEM | size, dst, src, off, 0)
}

/// The program: for the descriptor in the context, `{tgid, fd, inode if a socket}` onto the
/// stack, then `bpf_seq_write(ctx->meta->seq, record, 16)`.
fn program(o: &Offsets) -> Vec<Insn> {
    const REC: i16 = -(RECORD as i16);
    /// S_IFMT and S_IFSOCK (stat(2)).
    const S_IFMT: i32 = 0o170_000;
    const S_IFSOCK: i32 = 0o140_000;
    let mut p = vec![
        insn(ALU64 | MOV | X, 9, 1, 0, 0), // r9 = ctx
        ldx(DW, 6, 9, o.ctx_file),         // r6 = ctx->file
        insn(JMP | JEQ | K, 6, 0, 0, 0),   // if !r6 goto out (patched)
        ldx(DW, 7, 9, o.ctx_task),         // r7 = ctx->task
        insn(JMP | JEQ | K, 7, 0, 0, 0),   // if !r7 goto out (patched)
        insn(ST | MEM | DW, FP, 0, REC, 0),
        insn(ST | MEM | DW, FP, 0, REC + 8, 0),
        ldx(W, 2, 7, o.tgid),
        stx(W, FP, REC, 2),
        ldx(W, 2, 9, o.ctx_fd),
        stx(W, FP, REC + 4, 2),
        ldx(DW, 1, 6, o.f_inode), // r1 = file->f_inode
        insn(JMP | JEQ | K, 1, 0, 5, 0),
        ldx(H, 2, 1, o.i_mode),
        insn(ALU64 | AND | K, 2, 0, 0, S_IFMT),
        insn(JMP | JNE | K, 2, 0, 2, S_IFSOCK),
        ldx(DW, 2, 1, o.i_ino),
        stx(DW, FP, REC + 8, 2),
        ldx(DW, 1, 9, o.ctx_meta),
        ldx(DW, 1, 1, o.meta_seq),
        insn(ALU64 | MOV | X, 2, FP, 0, 0),
        insn(ALU64 | ADD | K, 2, 0, 0, i32::from(REC)),
        insn(ALU64 | MOV | K, 3, 0, 0, RECORD as i32),
        insn(JMP | CALL, 0, 0, 0, SEQ_WRITE),
    ];
    let out = p.len();
    p.push(insn(ALU64 | MOV | K, 0, 0, 0, 0));
    p.push(insn(JMP | EXIT, 0, 0, 0, 0));
    for at in [2, 4] {
        p[at].off = (out - at - 1) as i16;
    }
    p
}

// ---- the bpf(2) calls -----------------------------------------------------------------------

const BPF_PROG_LOAD: i64 = 5;
const BPF_LINK_CREATE: i64 = 28;
const BPF_ITER_CREATE: i64 = 33;
const BPF_PROG_TYPE_TRACING: u32 = 26;
const BPF_TRACE_ITER: u32 = 28;
pub(crate) const BPF_TRACE_RAW_TP: u32 = 23;

/// bpf(2) with `attr` as its `union bpf_attr`.
///
/// # Safety
/// `attr` must be the command's attribute layout, and every pointer in it live for the call.
pub(crate) unsafe fn bpf(cmd: i64, attr: &mut [u8]) -> io::Result<RawFd> {
    // SAFETY: the caller vouches for the layout and the pointers; the kernel reads (and for some
    // commands writes) at most `attr.len()` bytes.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as RawFd)
    }
}

/// Loads a tracing program (`BPF_PROG_TYPE_TRACING`) of attach type `attach` (an iterator, a
/// BTF tracepoint, an fentry or fexit) on the kernel's BTF type `attach_btf_id`.
pub(crate) fn prog_load(
    insns: &[Insn],
    attach: u32,
    attach_btf_id: u32,
    name: &[u8],
) -> io::Result<OwnedFd> {
    let raw: Vec<u64> = insns
        .iter()
        .map(|i| {
            u64::from(i.code)
                | u64::from(i.regs) << 8
                | u64::from(i.off as u16) << 16
                | u64::from(i.imm as u32) << 32
        })
        .collect();
    let license = c"GPL";
    let mut log = vec![0u8; 1 << 16];
    let mut attr = [0u8; 128];
    let put32 =
        |a: &mut [u8; 128], at: usize, v: u32| a[at..at + 4].copy_from_slice(&v.to_ne_bytes());
    let put64 =
        |a: &mut [u8; 128], at: usize, v: u64| a[at..at + 8].copy_from_slice(&v.to_ne_bytes());
    put32(&mut attr, 0, BPF_PROG_TYPE_TRACING);
    put32(&mut attr, 4, raw.len() as u32);
    put64(&mut attr, 8, raw.as_ptr() as u64);
    put64(&mut attr, 16, license.as_ptr() as u64);
    put32(&mut attr, 24, 1);
    put32(&mut attr, 28, log.len() as u32);
    put64(&mut attr, 32, log.as_mut_ptr() as u64);
    let name = &name[..name.len().min(15)];
    attr[48..48 + name.len()].copy_from_slice(name);
    put32(&mut attr, 68, attach);
    put32(&mut attr, 108, attach_btf_id);
    // SAFETY: `attr` is BPF_PROG_LOAD's layout; the instructions, the license and the log buffer
    // it points to live until the call returns.
    match unsafe { bpf(BPF_PROG_LOAD, &mut attr) } {
        // SAFETY: a new descriptor nothing else owns.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
        Err(e) => {
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            let said = String::from_utf8_lossy(&log[..end]);
            let last = said.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
            let name = String::from_utf8_lossy(name);
            Err(io::Error::new(
                e.kind(),
                format!("the kernel refused the program {name} ({e}): {last}"),
            ))
        }
    }
}

/// Attaches a BTF tracepoint, fentry or fexit program; it stays attached while the returned
/// link is open.
pub(crate) fn attach(prog: &OwnedFd) -> io::Result<OwnedFd> {
    const BPF_RAW_TRACEPOINT_OPEN: i64 = 17;
    let mut attr = [0u8; 16];
    attr[8..12].copy_from_slice(&(fd_of(prog) as u32).to_ne_bytes());
    // SAFETY: BPF_RAW_TRACEPOINT_OPEN's layout: no name (the program's BTF target), the program.
    let fd = unsafe { bpf(BPF_RAW_TRACEPOINT_OPEN, &mut attr) }?;
    // SAFETY: a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn link_create(prog: &OwnedFd) -> io::Result<OwnedFd> {
    let mut attr = [0u8; 64];
    attr[0..4].copy_from_slice(&(fd_of(prog) as u32).to_ne_bytes());
    attr[8..12].copy_from_slice(&BPF_TRACE_ITER.to_ne_bytes());
    // SAFETY: BPF_LINK_CREATE's layout: the program, no target, the iterator attach type, no
    // iterator information.
    let fd = unsafe { bpf(BPF_LINK_CREATE, &mut attr) }?;
    // SAFETY: a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

// ---- BTF ------------------------------------------------------------------------------------

/// A BTF blob, read on demand: where each type's record starts, and the strings.
pub(crate) struct Btf<'a> {
    blob: &'a [u8],
    strings: &'a [u8],
    /// The byte offset of each type's record, by type id (id 0, void, has none).
    starts: Vec<u32>,
}

const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_TYPE_TAG: u32 = 18;

impl<'a> Btf<'a> {
    pub(crate) fn parse(b: &'a [u8]) -> Option<Btf<'a>> {
        let u32_at = |at: usize| -> Option<u32> {
            Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
        };
        if b.get(0..2)? != [0x9f, 0xeb] {
            return None;
        }
        let hdr = u32_at(4)? as usize;
        let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
        let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
        let strings = b.get(hdr + str_off..hdr + str_off + str_len)?;
        let mut starts = vec![0];
        let (mut at, end) = (hdr + type_off, (hdr + type_off + type_len).min(b.len()));
        while at + 12 <= end {
            starts.push(at as u32);
            let info = u32_at(at + 4)?;
            let vlen = (info & 0xffff) as usize;
            at += 12
                + match (info >> 24) & 0x1f {
                    1 | 14 | 17 => 4,
                    3 => 12,
                    4 | 5 | 15 | 19 => 12 * vlen,
                    6 | 13 => 8 * vlen,
                    _ => 0,
                };
        }
        Some(Btf { blob: b, strings, starts })
    }

    fn u32_at(&self, at: usize) -> u32 {
        self.blob.get(at..at + 4).map_or(0, |x| u32::from_le_bytes(x.try_into().expect("4 bytes")))
    }

    /// (kind, name offset, size or type, member count, kind flag) of type `id`.
    fn head(&self, id: u32) -> Option<(u32, u32, u32, usize, bool)> {
        let at = *self.starts.get(id as usize).filter(|_| id > 0)? as usize;
        let info = self.u32_at(at + 4);
        Some((
            (info >> 24) & 0x1f,
            self.u32_at(at),
            self.u32_at(at + 8),
            (info & 0xffff) as usize,
            info >> 31 == 1,
        ))
    }

    fn name(&self, off: u32) -> &[u8] {
        let s = &self.strings[(off as usize).min(self.strings.len())..];
        &s[..s.iter().position(|c| *c == 0).unwrap_or(s.len())]
    }

    /// A type id with its modifiers and typedefs peeled.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..16 {
            match self.head(id) {
                Some((
                    KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG,
                    _,
                    next,
                    _,
                    _,
                )) => id = next,
                _ => break,
            }
        }
        id
    }

    /// The first type of `kind` named `name` (with members, for a struct).
    fn named(&self, kind: u32, name: &str) -> Option<u32> {
        self.all_named(kind, &[name])[0]
    }

    /// For each of `names`, the first type of `kind` so named: one pass over the types.
    fn all_named(&self, kind: u32, names: &[&str]) -> Vec<Option<u32>> {
        let mut found = vec![None; names.len()];
        let mut left = names.len();
        for id in 1..self.starts.len() as u32 {
            let Some((k, n, _, vlen, _)) = self.head(id) else { continue };
            if k != kind || (kind == KIND_STRUCT && vlen == 0) {
                continue;
            }
            let name = self.name(n);
            for (i, want) in names.iter().enumerate() {
                if found[i].is_none() && name == want.as_bytes() {
                    found[i] = Some(id);
                    left -= 1;
                }
            }
            if left == 0 {
                break;
            }
        }
        found
    }

    /// The byte offset of a path of members (`"ns.inum"`: `inum` of the member `ns`) in the
    /// struct of type `id`.
    fn offset(&self, id: u32, path: &str) -> Option<u32> {
        let (mut id, mut bits) = (id, 0);
        for m in path.split('.') {
            let (at, ty) = self.find(id, m.as_bytes(), 0)?;
            bits += at;
            id = self.resolve(ty);
        }
        Some(bits / 8)
    }

    /// The id of the typedef `name` (a BTF tracepoint's `btf_trace_*`).
    pub(crate) fn typedef(&self, name: &str) -> Option<u32> {
        self.named(KIND_TYPEDEF, name)
    }

    /// The bit offset and the type of `member` in the struct of type `id`.
    fn find(&self, id: u32, member: &[u8], base: u32) -> Option<(u32, u32)> {
        let (_, _, _, vlen, bitfields) = self.head(id)?;
        let at = self.starts[id as usize] as usize + 12;
        for m in 0..vlen {
            let rec = at + 12 * m;
            let (name, ty, off) = (self.u32_at(rec), self.u32_at(rec + 4), self.u32_at(rec + 8));
            let bits = if bitfields { off & 0x00ff_ffff } else { off };
            if self.name(name) == member {
                return Some((base + bits, ty));
            }
            let inner = self.resolve(ty);
            let anonymous =
                name == 0 && matches!(self.head(inner), Some((KIND_STRUCT | KIND_UNION, ..)));
            if anonymous {
                if let Some(found) = self.find(inner, member, base + bits) {
                    return Some(found);
                }
            }
        }
        None
    }

    /// The type id of function `name`.
    pub(crate) fn func(&self, name: &str) -> Option<u32> {
        self.named(KIND_FUNC, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_kernel_says_of_itself() {
        let Ok(blob) = std::fs::read("/sys/kernel/btf/vmlinux") else {
            return eprintln!("no kernel BTF here");
        };
        let btf = Btf::parse(&blob).expect("the kernel's BTF parses");
        let o = Offsets::of(&btf).expect("every field found");
        // The iterator's context is its function's arguments, 8 bytes each.
        assert_eq!((o.ctx_meta, o.ctx_task, o.ctx_fd, o.ctx_file), (0, 8, 16, 24));
        assert!(btf.func("bpf_iter_task_file").is_some());
    }

    #[test]
    fn finds_a_process_and_its_socket_as_proc_does() {
        let files = match open() {
            Ok(f) => f,
            Err(e) => return eprintln!("no BPF iterator here: {e}"),
        };
        // A child holds a socket as its stdin, /dev/null as its stdout and stderr (and whatever
        // it inherits without close-on-exec): a process of its own, since this one opens and
        // closes descriptors on other test threads while the iterator runs.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&l);
        let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
        let inode = crate::holders::socket_inode(link.to_str().unwrap()).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(l)))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        // Every descriptor of the child once, each with its socket's inode or 0, as /proc says.
        let by_proc = || -> Option<Vec<Descriptor>> {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            if comm.trim() != "sleep" {
                return None; // not yet exec'd: it still holds this process's copies
            }
            let mut ds: Vec<Descriptor> = std::fs::read_dir(format!("/proc/{pid}/fd"))
                .ok()?
                .flatten()
                .filter_map(|e| {
                    let fd: i32 = e.file_name().to_str()?.parse().ok()?;
                    let link = std::fs::read_link(e.path()).ok()?;
                    let inode = crate::holders::socket_inode(link.to_str()?).unwrap_or(0);
                    Some(Descriptor { pid, fd, inode })
                })
                .collect();
            ds.sort_by_key(|d| d.fd);
            Some(ds)
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let (kernel, proc) = loop {
            let proc = by_proc();
            let mut kernel: Vec<Descriptor> =
                files.all().unwrap().into_iter().filter(|d| d.pid == pid).collect();
            kernel.sort_by_key(|d| d.fd);
            if proc.as_ref() == Some(&kernel) || std::time::Instant::now() > deadline {
                break (kernel, proc);
            }
        };
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(Some(&kernel), proc.as_ref());
        assert_eq!(kernel.first(), Some(&Descriptor { pid, fd: 0, inode }));
        assert!(kernel.iter().skip(1).take(2).all(|d| d.inode == 0), "{kernel:?}");
    }
}

#[cfg(test)]
mod timing {
    #[test]
    #[ignore]
    fn timing() {
        for _ in 0..3 {
            let a = std::time::Instant::now();
            let blob = super::Blob::of("/sys/kernel/btf/vmlinux").unwrap();
            let b = a.elapsed();
            let btf = super::Btf::parse(blob.bytes()).unwrap();
            let c = a.elapsed();
            let _ = super::Offsets::of(&btf).unwrap();
            let d = a.elapsed();
            let f = super::open().unwrap();
            let e = a.elapsed();
            let n = f.all().unwrap().len();
            eprintln!("read {b:?} parse {c:?} offsets {d:?} open {e:?} all({n}) {:?}", a.elapsed());
        }
    }
}
