//! Who holds which socket, from the kernel in one pass: a BPF iterator over every open file of
//! every process (`bpf_iter_task_file`) runs a program of the lab's (26 instructions, assembled
//! here: no compiler, no object file) that writes, for each descriptor, a [`Descriptor`]: the
//! process, the descriptor number and, for a socket, its inode; 16 bytes, where the `/proc` walk
//! formats and reads back a `socket:[N]` link per descriptor (about 6 µs each here).
//!
//! The offsets of the fields it reads are the running kernel's, from its BTF, so one binary fits
//! every kernel that has BTF and BPF iterators (5.8 and later, with `CONFIG_DEBUG_INFO_BTF`). The
//! pids are the kernel's own, which are `/proc`'s only in the first PID namespace: elsewhere, or
//! where the kernel refuses, [`open`] fails and the caller walks `/proc`.
//!
//! # References
//! Documentation/bpf/bpf_iterators.rst; tools/testing/selftests/bpf/progs/bpf_iter_task_file.c
//! (what such a program reads); stat(2) (`S_IFMT`, `S_IFSOCK`).

use std::io::{self, Read};
use std::mem::{offset_of, size_of};
use std::os::fd::OwnedFd;

use super::asm::{Asm, AsmError, Helper, Insn, Size, FP, R0, R1, R2, R3, R6, R7, R9};
use super::btf::{self, Btf, Fields};
use super::sys::{self, AttachType};

/// One descriptor of one process, as the program writes it: its pid, its number, and the
/// socket's inode (0 when the descriptor is not a socket).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Descriptor {
    /// The process (its thread group id, as `/proc` names it in the first PID namespace).
    pub pid: u32,
    /// The descriptor number.
    pub fd: i32,
    /// The socket's inode, or 0.
    pub inode: u64,
}

impl Descriptor {
    /// A record as the program wrote it.
    fn decode(r: &[u8]) -> Descriptor {
        fn at<const N: usize>(r: &[u8], offset: usize) -> [u8; N] {
            r[offset..offset + N].try_into().expect("a whole record")
        }
        Descriptor {
            pid: u32::from_ne_bytes(at(r, offset_of!(Descriptor, pid))),
            fd: i32::from_ne_bytes(at(r, offset_of!(Descriptor, fd))),
            inode: u64::from_ne_bytes(at(r, offset_of!(Descriptor, inode))),
        }
    }
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
    let (off, target) = btf::with_kernel_btf(|btf| {
        let off = Offsets::of(btf)
            .ok_or_else(|| io::Error::other("the kernel's BTF lacks a field the program reads"))?;
        let target = btf
            .func("bpf_iter_task_file")
            .ok_or_else(|| io::Error::other("this kernel has no task-file BPF iterator"))?;
        Ok((off, target))
    })?;
    let code = program(&off).map_err(io::Error::other)?;
    let prog = sys::prog_load(&code, AttachType::TraceIter, target, b"cwlab_files")?;
    let link = sys::link_create_iter(&prog)?;
    Ok(Files { _prog: prog, link })
}

impl Files {
    /// Every open descriptor of every process, as the kernel walks them now.
    pub fn all(&self) -> io::Result<Vec<Descriptor>> {
        let mut file = std::fs::File::from(sys::iter_create(&self.link)?);
        let mut bytes = Vec::with_capacity(1 << 20);
        file.read_to_end(&mut bytes)?;
        Ok(bytes.chunks_exact(size_of::<Descriptor>()).map(Descriptor::decode).collect())
    }
}

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

/// The program: for the descriptor in the context, a [`Descriptor`] on the stack (`tgid`, `fd`,
/// the inode if a socket), then `bpf_seq_write(ctx->meta->seq, record, 16)`.
fn program(o: &Offsets) -> Result<Vec<Insn>, AsmError> {
    const LEN: usize = size_of::<Descriptor>();
    /// The record, at the bottom of the stack.
    const REC: i16 = -(LEN as i16);
    let field = |offset: usize| REC + offset as i16;
    /// S_IFMT and S_IFSOCK (stat(2)).
    const S_IFMT: i32 = 0o170_000;
    const S_IFSOCK: i32 = 0o140_000;
    let mut a = Asm::default();
    a.mov(R9, R1); // r9 = ctx
    a.load(Size::DW, R6, R9, o.ctx_file);
    a.jeq_imm(R6, 0, "out"); // no file
    a.load(Size::DW, R7, R9, o.ctx_task);
    a.jeq_imm(R7, 0, "out"); // no task
    for word in (0..LEN).step_by(8) {
        a.store_imm(Size::DW, FP, field(word), 0);
    }
    a.load(Size::W, R2, R7, o.tgid);
    a.store(Size::W, FP, field(offset_of!(Descriptor, pid)), R2);
    a.load(Size::W, R2, R9, o.ctx_fd);
    a.store(Size::W, FP, field(offset_of!(Descriptor, fd)), R2);
    a.load(Size::DW, R1, R6, o.f_inode); // r1 = file->f_inode
    a.jeq_imm(R1, 0, "write");
    a.load(Size::H, R2, R1, o.i_mode);
    a.and_imm(R2, S_IFMT);
    a.jne_imm(R2, S_IFSOCK, "write"); // not a socket: inode 0
    a.load(Size::DW, R2, R1, o.i_ino);
    a.store(Size::DW, FP, field(offset_of!(Descriptor, inode)), R2);
    a.label("write");
    a.load(Size::DW, R1, R9, o.ctx_meta);
    a.load(Size::DW, R1, R1, o.meta_seq);
    a.mov(R2, FP);
    a.add_imm(R2, i32::from(REC));
    a.mov_imm(R3, LEN as i32);
    a.call(Helper::SeqWrite);
    a.label("out");
    a.mov_imm(R0, 0);
    a.exit();
    a.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::asm::listing;

    #[test]
    fn a_descriptor_is_laid_out_as_the_program_writes_it() {
        let at = [
            offset_of!(Descriptor, pid),
            offset_of!(Descriptor, fd),
            offset_of!(Descriptor, inode),
        ];
        assert_eq!((at, size_of::<Descriptor>()), ([0, 4, 8], 16));
        let mut r = [0u8; 16];
        r[..4].copy_from_slice(&7u32.to_ne_bytes());
        r[4..8].copy_from_slice(&(-1i32).to_ne_bytes());
        r[8..].copy_from_slice(&u64::MAX.to_ne_bytes());
        assert_eq!(Descriptor::decode(&r), Descriptor { pid: 7, fd: -1, inode: u64::MAX });
    }

    #[test]
    fn assembles_to_its_golden_listing() {
        // Offsets of the test's own, each distinct, so that a field read from the wrong place
        // shows.
        let o = Offsets {
            ctx_meta: 100,
            ctx_task: 108,
            ctx_fd: 116,
            ctx_file: 124,
            meta_seq: 200,
            tgid: 300,
            f_inode: 400,
            i_mode: 500,
            i_ino: 508,
        };
        let header = format!("# the task-file iterator's program, assembled with\n# {o:?}");
        listing::golden("task_file", &header, &program(&o).unwrap());
    }

    #[test]
    fn reads_what_the_kernel_says_of_itself() {
        let read =
            btf::with_kernel_btf(|btf| Ok((Offsets::of(btf), btf.func("bpf_iter_task_file"))));
        let (o, func) = match read {
            Ok(read) => read,
            Err(e) => return sys::missing("the kernel's BTF", e),
        };
        let o = o.expect("every field the program reads");
        // The iterator's context is its function's arguments, 8 bytes each.
        assert_eq!((o.ctx_meta, o.ctx_task, o.ctx_fd, o.ctx_file), (0, 8, 16, 24));
        assert!(func.is_some(), "the iterator's function");
    }

    #[test]
    fn finds_a_process_and_its_socket_as_proc_does() {
        let files = match open() {
            Ok(f) => f,
            Err(e) => return sys::missing("the task-file BPF iterator", e),
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
