//! bpf(2): the commands the lab uses, each with the part of `union bpf_attr` it reads as a
//! `#[repr(C)]` type (padding spelled out, so that every byte the kernel reads is written).
//!
//! The kernel reads `min(size, its own)` bytes of the attributes and takes the rest as zero, so
//! each type ends with the last member the lab sets or names.
//!
//! # References
//! bpf(2); include/uapi/linux/bpf.h (`union bpf_attr`, `enum bpf_cmd`, the map, program and
//! attach types).

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::asm::Insn;

/// A command of bpf(2) (`enum bpf_cmd`).
#[derive(Debug, Clone, Copy)]
enum Cmd {
    MapCreate = 0,
    MapLookupElem = 1,
    ProgLoad = 5,
    RawTracepointOpen = 17,
    LinkCreate = 28,
    IterCreate = 33,
}

/// A kind of map (`enum bpf_map_type`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum MapType {
    /// Values by index.
    Array = 2,
    /// A ring buffer that programs write and a process reads.
    Ringbuf = 27,
}

/// Where a tracing program attaches (`enum bpf_attach_type`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum AttachType {
    /// A BTF tracepoint (`tp_btf`).
    TraceRawTp = 23,
    /// A BPF iterator.
    TraceIter = 28,
}

/// `BPF_PROG_TYPE_TRACING` (`enum bpf_prog_type`): iterators, BTF tracepoints, fentry, fexit.
const PROG_TYPE_TRACING: u32 = 26;

/// `BPF_MAP_CREATE`'s attributes.
#[repr(C)]
#[derive(Debug, Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
    map_ifindex: u32,
}

/// `BPF_MAP_LOOKUP_ELEM`'s attributes.
#[repr(C)]
#[derive(Debug, Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `BPF_PROG_LOAD`'s attributes, up to `fd_array`.
#[repr(C)]
#[derive(Debug, Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    attach_btf_id: u32,
    attach_prog_fd: u32,
    core_relo_cnt: u32,
    fd_array: u64,
}

/// `BPF_RAW_TRACEPOINT_OPEN`'s attributes.
#[repr(C)]
#[derive(Debug, Default)]
struct RawTracepointAttr {
    name: u64,
    prog_fd: u32,
    _pad: u32,
}

/// `BPF_LINK_CREATE`'s attributes, an iterator's.
#[repr(C)]
#[derive(Debug, Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    iter_info: u64,
    iter_info_len: u32,
    _pad: u32,
}

/// `BPF_ITER_CREATE`'s attributes.
#[repr(C)]
#[derive(Debug, Default)]
struct IterCreateAttr {
    link_fd: u32,
    flags: u32,
}

/// bpf(2) with `attr` as the command's attributes.
///
/// # Safety
/// `attr` must be `cmd`'s attributes, and every pointer in it valid for the call.
///
/// # References
/// bpf(2).
unsafe fn bpf<A>(cmd: Cmd, attr: &mut A) -> io::Result<RawFd> {
    // SAFETY: the caller vouches for the layout and the pointers; the kernel reads (and for some
    // commands writes) at most `size_of::<A>()` bytes of `attr`. Raw libc: neither rustix nor
    // nix has bpf(2).
    let rc = unsafe {
        libc::syscall(libc::SYS_bpf, cmd as libc::c_long, attr as *mut A, size_of::<A>())
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as RawFd)
    }
}

/// bpf(2) for a command that answers with a new descriptor.
///
/// # Safety
/// As [`bpf`].
unsafe fn bpf_fd<A>(cmd: Cmd, attr: &mut A) -> io::Result<OwnedFd> {
    // SAFETY: as the caller vouches.
    let fd = unsafe { bpf(cmd, attr) }?;
    // SAFETY: a new descriptor the kernel just made, which nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fd(of: &OwnedFd) -> u32 {
    of.as_raw_fd() as u32
}

/// `BPF_MAP_CREATE`: a map of `kind` with `max_entries` entries of `key_size` and `value_size`
/// bytes (a ring buffer's size in `max_entries`, no key nor value).
///
/// # References
/// bpf(2) (`BPF_MAP_CREATE`).
pub(crate) fn map_create(
    kind: MapType,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
) -> io::Result<OwnedFd> {
    let mut attr = MapCreateAttr {
        map_type: kind as u32,
        key_size,
        value_size,
        max_entries,
        ..MapCreateAttr::default()
    };
    // SAFETY: BPF_MAP_CREATE's attributes, with no pointers.
    unsafe { bpf_fd(Cmd::MapCreate, &mut attr) }
}

/// An array map of `u64` counters, its key a `u32` index: made here, so its sizes are known to
/// every lookup.
pub(crate) struct Counters(OwnedFd);

impl Counters {
    /// `n` counters, all 0.
    pub(crate) fn new(n: u32) -> io::Result<Counters> {
        let (key, value) = (size_of::<u32>() as u32, size_of::<u64>() as u32);
        map_create(MapType::Array, key, value, n).map(Counters)
    }

    /// The map, to name in a program.
    pub(crate) fn map(&self) -> &OwnedFd {
        &self.0
    }

    /// `BPF_MAP_LOOKUP_ELEM`: the counter at `index`.
    ///
    /// # References
    /// bpf(2) (`BPF_MAP_LOOKUP_ELEM`).
    pub(crate) fn get(&self, index: u32) -> io::Result<u64> {
        let mut value = 0u64;
        let mut attr = MapElemAttr {
            map_fd: fd(&self.0),
            key: &index as *const u32 as u64,
            value: &mut value as *mut u64 as u64,
            ..MapElemAttr::default()
        };
        // SAFETY: BPF_MAP_LOOKUP_ELEM's attributes: the map, made by `new` with 4-byte keys and
        // 8-byte values, a pointer to a 4-byte key and one to an 8-byte value, both live for the
        // call.
        unsafe { bpf(Cmd::MapLookupElem, &mut attr) }?;
        Ok(value)
    }
}

/// `BPF_PROG_LOAD`: a tracing program (`BPF_PROG_TYPE_TRACING`) of attach type `attach` (an
/// iterator, a BTF tracepoint, an fentry or fexit) on the kernel's BTF type `attach_btf_id`,
/// named `name` (its first 15 bytes); a refusal says the verifier's last words.
///
/// # References
/// bpf(2) (`BPF_PROG_LOAD`); include/uapi/linux/bpf.h (`expected_attach_type`,
/// `attach_btf_id`); Documentation/bpf/verifier.rst.
pub(crate) fn prog_load(
    insns: &[Insn],
    attach: AttachType,
    attach_btf_id: u32,
    name: &[u8],
) -> io::Result<OwnedFd> {
    let raw: Vec<u64> = insns.iter().map(|i| i.raw()).collect();
    let license = c"GPL";
    let mut log = vec![0u8; 1 << 16];
    let name = &name[..name.len().min(15)];
    let mut prog_name = [0u8; 16];
    prog_name[..name.len()].copy_from_slice(name);
    let mut attr = ProgLoadAttr {
        prog_type: PROG_TYPE_TRACING,
        insn_cnt: raw.len() as u32,
        insns: raw.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        prog_name,
        expected_attach_type: attach as u32,
        attach_btf_id,
        ..ProgLoadAttr::default()
    };
    // SAFETY: BPF_PROG_LOAD's attributes; the instructions, the license and the log buffer they
    // point to live until the call returns.
    unsafe { bpf_fd(Cmd::ProgLoad, &mut attr) }.map_err(|e| {
        let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
        let said = String::from_utf8_lossy(&log[..end]);
        let last = said.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
        let name = String::from_utf8_lossy(name);
        io::Error::new(e.kind(), format!("the kernel refused the program {name} ({e}): {last}"))
    })
}

/// `BPF_RAW_TRACEPOINT_OPEN`: attaches a BTF tracepoint, fentry or fexit program to the target
/// it was loaded for; it stays attached while the returned link is open.
///
/// # References
/// include/uapi/linux/bpf.h (`BPF_RAW_TRACEPOINT_OPEN`; bpf(2) predates it).
pub(crate) fn raw_tracepoint_open(prog: &OwnedFd) -> io::Result<OwnedFd> {
    let mut attr = RawTracepointAttr { prog_fd: fd(prog), ..RawTracepointAttr::default() };
    // SAFETY: BPF_RAW_TRACEPOINT_OPEN's attributes: no name (the program's BTF target), the
    // program.
    unsafe { bpf_fd(Cmd::RawTracepointOpen, &mut attr) }
}

/// `BPF_LINK_CREATE` for an iterator program: the link that [`iter_create`] opens iterators of.
///
/// # References
/// include/uapi/linux/bpf.h (`BPF_LINK_CREATE`; bpf(2) predates it);
/// Documentation/bpf/bpf_iterators.rst.
pub(crate) fn link_create_iter(prog: &OwnedFd) -> io::Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: fd(prog),
        attach_type: AttachType::TraceIter as u32,
        ..LinkCreateAttr::default()
    };
    // SAFETY: BPF_LINK_CREATE's attributes: the program, no target, the iterator attach type, no
    // iterator information.
    unsafe { bpf_fd(Cmd::LinkCreate, &mut attr) }
}

/// `BPF_ITER_CREATE`: a new iterator of `link`, a file whose reading runs the program.
///
/// # References
/// include/uapi/linux/bpf.h (`BPF_ITER_CREATE`; bpf(2) predates it);
/// Documentation/bpf/bpf_iterators.rst.
pub(crate) fn iter_create(link: &OwnedFd) -> io::Result<OwnedFd> {
    let mut attr = IterCreateAttr { link_fd: fd(link), flags: 0 };
    // SAFETY: BPF_ITER_CREATE's attributes: the link, no flags.
    unsafe { bpf_fd(Cmd::IterCreate, &mut attr) }
}

/// Where a kernel test cannot run: under `CI=true` (root, a kernel with BPF and BTF) a failure;
/// elsewhere a skip that says why.
#[cfg(test)]
pub(crate) fn missing(what: &str, why: impl std::fmt::Display) {
    let ci = std::env::var("CI").as_deref() == Ok("true");
    assert!(!ci, "CI runs as root on a kernel with BPF and BTF, yet {what} failed: {why}");
    eprintln!("skipping: {what} failed here ({why})");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    // Every offset and size below is include/uapi/linux/bpf.h's, as gcc lays it out on x86_64
    // (`offsetof(union bpf_attr, …)`).

    #[test]
    fn map_create_is_laid_out_as_the_kernel_reads_it() {
        type A = MapCreateAttr;
        let at = [
            offset_of!(A, map_type),
            offset_of!(A, key_size),
            offset_of!(A, value_size),
            offset_of!(A, max_entries),
            offset_of!(A, map_flags),
            offset_of!(A, inner_map_fd),
            offset_of!(A, numa_node),
            offset_of!(A, map_name),
            offset_of!(A, map_ifindex),
        ];
        assert_eq!(at, [0, 4, 8, 12, 16, 20, 24, 28, 44]);
        assert_eq!(size_of::<A>(), 48);
    }

    #[test]
    fn map_elem_is_laid_out_as_the_kernel_reads_it() {
        type A = MapElemAttr;
        let at = [
            offset_of!(A, map_fd),
            offset_of!(A, _pad),
            offset_of!(A, key),
            offset_of!(A, value),
            offset_of!(A, flags),
        ];
        assert_eq!(at, [0, 4, 8, 16, 24]);
        assert_eq!(size_of::<A>(), 32);
    }

    #[test]
    fn prog_load_is_laid_out_as_the_kernel_reads_it() {
        type A = ProgLoadAttr;
        let at = [
            offset_of!(A, prog_type),
            offset_of!(A, insn_cnt),
            offset_of!(A, insns),
            offset_of!(A, license),
            offset_of!(A, log_level),
            offset_of!(A, log_size),
            offset_of!(A, log_buf),
            offset_of!(A, kern_version),
            offset_of!(A, prog_flags),
            offset_of!(A, prog_name),
            offset_of!(A, prog_ifindex),
            offset_of!(A, expected_attach_type),
            offset_of!(A, prog_btf_fd),
            offset_of!(A, func_info_rec_size),
            offset_of!(A, func_info),
            offset_of!(A, func_info_cnt),
            offset_of!(A, line_info_rec_size),
            offset_of!(A, line_info),
            offset_of!(A, line_info_cnt),
            offset_of!(A, attach_btf_id),
            offset_of!(A, attach_prog_fd),
            offset_of!(A, core_relo_cnt),
            offset_of!(A, fd_array),
        ];
        let uapi = [
            0, 4, 8, 16, 24, 28, 32, 40, 44, 48, 64, 68, 72, 76, 80, 88, 92, 96, 104, 108, 112,
            116, 120,
        ];
        assert_eq!(at, uapi);
        assert_eq!(size_of::<A>(), 128);
    }

    #[test]
    fn the_link_and_iterator_commands_are_laid_out_as_the_kernel_reads_them() {
        type R = RawTracepointAttr;
        assert_eq!([offset_of!(R, name), offset_of!(R, prog_fd), offset_of!(R, _pad)], [0, 8, 12]);
        assert_eq!(size_of::<R>(), 16);
        type L = LinkCreateAttr;
        let at = [
            offset_of!(L, prog_fd),
            offset_of!(L, target_fd),
            offset_of!(L, attach_type),
            offset_of!(L, flags),
            offset_of!(L, iter_info),
            offset_of!(L, iter_info_len),
            offset_of!(L, _pad),
        ];
        assert_eq!(at, [0, 4, 8, 12, 16, 24, 28]);
        assert_eq!(size_of::<L>(), 32);
        type I = IterCreateAttr;
        assert_eq!([offset_of!(I, link_fd), offset_of!(I, flags)], [0, 4]);
        assert_eq!(size_of::<I>(), 8);
    }
}
