//! The hash of the sampler's maps and sets, and of their users' (the stream, the holders, the
//! watch): their keys are the kernel's (inodes, pids, socket cookies, addresses), never an
//! attacker's, so a fast hash is safe where SipHash was a tenth of a watch's look.

use std::collections::{HashMap, HashSet};

/// A fast hash for keys the kernel made (inodes, pids, addresses): a rotation and one
/// multiplication per word, where SipHash was a tenth of a watch's look at 10,000 sockets and
/// more at 100,000 (perf). The keys are the kernel's, not an attacker's.
#[derive(Default, Clone, Copy)]
pub struct FastHasher(u64);

impl std::hash::Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

/// A map on [`FastHasher`].
pub type FastMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<FastHasher>>;
/// A set on [`FastHasher`].
pub type FastSet<T> = HashSet<T, std::hash::BuildHasherDefault<FastHasher>>;
/// A map keyed by inode.
pub type InodeMap<V> = FastMap<u64, V>;
/// A set of inodes.
pub type InodeSet = FastSet<u64>;
