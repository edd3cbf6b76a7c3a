//! The consumer's side of a BPF ring buffer: a page with the consumer's position (ours to
//! write), then the producer's page and the data, mapped twice in a row so that a record that
//! wraps reads as one.
//!
//! # References
//! Documentation/bpf/ringbuf.rst; include/uapi/linux/bpf.h (`BPF_RINGBUF_BUSY_BIT`,
//! `BPF_RINGBUF_DISCARD_BIT`, `BPF_RINGBUF_HDR_SZ`); mmap(2).

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::sys::{self, MapType};

/// A record's header: its length, and these two bits.
const HEADER: usize = 8;
/// The producer has reserved the record and not yet committed it.
const BUSY: u32 = 1 << 31;
/// The producer discarded the record: skip it.
const DISCARD: u32 = 1 << 30;

/// A ring buffer map, mapped for reading.
pub(crate) struct Ring {
    map: OwnedFd,
    consumer: *mut u64,
    producer: *const u8,
    page: usize,
    size: usize,
}

// SAFETY: the mappings belong to the ring alone and are only touched through `&mut self`.
unsafe impl Send for Ring {}

impl Ring {
    /// A ring of `size` bytes (a power of two, at least a page), mapped.
    pub(crate) fn new(size: usize) -> io::Result<Ring> {
        let map = sys::map_create(MapType::Ringbuf, 0, 0, size as u32)?;
        let page = rustix::param::page_size();
        use rustix::mm::{mmap, munmap, MapFlags, ProtFlags};
        let null = std::ptr::null_mut();
        // SAFETY: the kernel's layout for a ring buffer map: one writable page at offset 0, then
        // the producer's page and twice the data, read-only; both unmapped in Drop.
        let (consumer, producer) = unsafe {
            let c =
                mmap(null, page, ProtFlags::READ | ProtFlags::WRITE, MapFlags::SHARED, &map, 0)?;
            let p =
                mmap(null, page + 2 * size, ProtFlags::READ, MapFlags::SHARED, &map, page as u64);
            let p = match p {
                Ok(p) => p,
                Err(e) => {
                    let _ = munmap(c, page);
                    return Err(e.into());
                }
            };
            (c.cast::<u64>(), p.cast::<u8>().cast_const())
        };
        Ok(Ring { map, consumer, producer, page, size })
    }

    /// The map, to name in a program.
    pub(crate) fn map(&self) -> &OwnedFd {
        &self.map
    }

    /// Every record committed since the last call, in order, to `f`.
    pub(crate) fn consume(&mut self, mut f: impl FnMut(&[u8])) {
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
            // SAFETY: `offset` lies in the first copy of the data; a record's header and its
            // body follow it within the doubled mapping.
            let header =
                unsafe { AtomicU32::from_ptr(self.producer.add(offset).cast::<u32>().cast_mut()) }
                    .load(Ordering::Acquire);
            if header & BUSY != 0 {
                break;
            }
            let len = (header & !(BUSY | DISCARD)) as usize;
            if header & DISCARD == 0 {
                // SAFETY: the committed record's `len` bytes after its header, in the mapping.
                f(unsafe { std::slice::from_raw_parts(self.producer.add(offset + HEADER), len) });
            }
            at += ((len + HEADER + 7) & !7) as u64;
            cons.store(at, Ordering::Release);
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the two mappings made in `new`.
        unsafe {
            let _ = rustix::mm::munmap(self.consumer.cast(), self.page);
            let _ = rustix::mm::munmap(self.producer.cast_mut().cast(), self.page + 2 * self.size);
        }
    }
}
