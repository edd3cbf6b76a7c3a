//! Who holds a socket: the processes whose descriptors refer to its inode, found in one pass per
//! question, never one per socket: the kernel's task-file iterator where it can be used
//! ([`crate::bpf`]: every descriptor of every process in one read), else a walk of `/proc/*/fd`
//! as `ss -p` does. Both give the same holders (a test holds them equal).
//!
//! # References
//! proc(5) (`/proc/PID/fd`, `/proc/PID/stat`, `/proc/PID/cmdline`).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::hash::BuildHasher;
use std::os::fd::OwnedFd;

use crate::bpf::Descriptor;
// Their home is `crate::hash`; the watch names them here.
pub use crate::hash::{FastHasher, FastMap, InodeMap, InodeSet};

/// One descriptor of one process that refers to a socket.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Holding {
    /// The process.
    pub pid: u32,
    /// The descriptor number.
    pub fd: i32,
}

/// What is known of a process that holds a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    /// Its pid.
    pub pid: u32,
    /// Its parent's pid.
    pub ppid: u32,
    /// Its name (`comm`).
    pub comm: String,
    /// Its command line, arguments joined by spaces.
    pub cmdline: String,
}

/// The holders of a set of sockets.
#[derive(Debug, Clone, Default)]
pub struct Holders {
    /// For each inode asked about that some process holds, every (pid, fd) that refers to it,
    /// sorted. Inodes no process holds are absent.
    pub by_inode: InodeMap<Vec<Holding>>,
    /// Each process that holds at least one of the sockets.
    pub processes: HashMap<u32, Process>,
}

impl Holders {
    /// The holdings of one socket; empty when nobody holds it (inode 0 is never held).
    pub fn of(&self, inode: u64) -> &[Holding] {
        self.by_inode.get(&inode).map_or(&[], Vec::as_slice)
    }

    /// Whether `pid` is `root` or one of its descendants, by the parents of the processes
    /// found, else read from `/proc` (a parent that holds none of the sockets).
    pub fn descends(&self, mut pid: u32, root: u32) -> bool {
        for _ in 0..64 {
            if pid == root {
                return true;
            }
            let parent = match self.processes.get(&pid) {
                Some(p) => p.ppid,
                None => match process(pid) {
                    Some(p) => p.ppid,
                    None => return false,
                },
            };
            if parent == 0 || parent == pid {
                return false;
            }
            pid = parent;
        }
        false
    }
}

/// What one walk of `/proc` learns of every process, for the descriptor counts per role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Brief {
    /// Its parent's pid.
    pub ppid: u32,
    /// Its name (`comm`).
    pub comm: String,
    /// How many descriptors it had open when its `fd` folder was read.
    pub fds: u32,
}

/// What [`survey`] learns: the holders, and every process.
#[derive(Debug, Clone, Default)]
pub struct Survey {
    /// Who holds each socket asked about, as [`find`] answers.
    pub holders: Holders,
    /// The parent, name and descriptor count of every process, by pid.
    pub everyone: HashMap<u32, Brief>,
}

/// Finds who holds each of `inodes` in one read of every process's descriptors (the kernel's
/// iterator, else a walk of `/proc`). Processes that vanish meanwhile, or whose descriptors
/// cannot be read, are passed over.
pub fn find<S: BuildHasher + Sync>(inodes: &HashSet<u64, S>) -> Holders {
    if inodes.is_empty() {
        return Holders::default();
    }
    walk(inodes, false).holders
}

/// One read of every process's descriptors for two questions: who holds each of `inodes` (as
/// [`find`] answers), and the parent, name and descriptor count of every process.
pub fn survey<S: BuildHasher + Sync>(inodes: &HashSet<u64, S>) -> Survey {
    walk(inodes, true)
}

fn walk<S: BuildHasher + Sync>(inodes: &HashSet<u64, S>, briefs: bool) -> Survey {
    match from_kernel(inodes) {
        Some(found) => assemble(found, briefs),
        None => walk_proc(inodes, briefs),
    }
}

/// What one read of every process's descriptors found.
struct Found {
    /// The descriptors that refer to a socket asked about.
    held: Vec<Descriptor>,
    /// How many descriptors each process had open.
    counts: Vec<Count>,
}

/// How many descriptors a process had open.
#[derive(Debug, Clone, Copy)]
struct Count {
    pid: u32,
    fds: u32,
}

/// Every (pid, fd, inode) of `inodes`, and every process's descriptor count, from the kernel's
/// task-file iterator ([`crate::bpf`]) in one pass; `None` where it cannot be used.
fn from_kernel<S: BuildHasher + Sync>(inodes: &HashSet<u64, S>) -> Option<Found> {
    Some(pick(&crate::bpf::open().ok()?.all().ok()?, inodes))
}

/// The descriptors of `inodes` among `all`, and each process's descriptor count.
fn pick<S: BuildHasher + Sync>(all: &[Descriptor], inodes: &HashSet<u64, S>) -> Found {
    let mut counts: HashMap<u32, u32> = HashMap::new();
    let mut held = Vec::new();
    for d in all {
        *counts.entry(d.pid).or_insert(0) += 1;
        if d.inode != 0 && inodes.contains(&d.inode) {
            held.push(*d);
        }
    }
    Found { held, counts: counts.into_iter().map(|(pid, fds)| Count { pid, fds }).collect() }
}

/// Every descriptor of every process, being read from the kernel on a thread of its own while
/// the caller dumps the sockets it will ask about: [`Early::find`] then answers from it (from a
/// walk of `/proc` where the kernel's iterator cannot be used). The two reads overlap, as a dump
/// then a walk would follow each other: a socket closed in between is held by nobody.
pub struct Early(Option<std::thread::JoinHandle<Option<Vec<Descriptor>>>>);

/// Starts reading every descriptor (see [`Early`]).
pub fn early() -> Early {
    Early(Some(std::thread::spawn(|| crate::bpf::open().ok()?.all().ok())))
}

impl Early {
    /// Who holds each of `inodes`, as [`find`] answers.
    pub fn find<S: BuildHasher + Sync>(mut self, inodes: &HashSet<u64, S>) -> Holders {
        let read = self.0.take().and_then(|h| h.join().ok()).flatten();
        if inodes.is_empty() {
            return Holders::default();
        }
        match read {
            Some(all) => assemble(pick(&all, inodes), false).holders,
            None => walk_proc(inodes, false).holders,
        }
    }
}

/// The same by a walk of `/proc`: each process's `fd` folder listed, then a readlink of each
/// descriptor.
fn walk_proc<S: BuildHasher + Sync>(inodes: &HashSet<u64, S>, briefs: bool) -> Survey {
    let Ok(procs) = fs::read_dir("/proc") else { return Default::default() };
    // First every process's descriptor numbers (one getdents walk each), then the readlinks,
    // which are most of the cost (about 6 µs each here), shared among threads by chunks: one
    // process holding 10,000 sockets is split like many small ones.
    let mut listed: Vec<(u32, OwnedFd, Vec<i32>)> = Vec::new();
    for entry in procs.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Some((dir, fds)) = fd_numbers(pid) {
            listed.push((pid, dir, fds));
        }
    }
    let held = readlinks(&listed, inodes);
    let counts =
        listed.iter().map(|(pid, _, fds)| Count { pid: *pid, fds: fds.len() as u32 }).collect();
    assemble(Found { held, counts }, briefs)
}

/// The holders from the descriptors found, with what `/proc` says of each process that holds
/// one (and, with `briefs`, of every process).
fn assemble(found: Found, briefs: bool) -> Survey {
    let mut h = Holders::default();
    let mut all = HashMap::new();
    let mut held_by: HashSet<u32> = HashSet::new();
    for Descriptor { pid, fd, inode } in found.held {
        h.by_inode.entry(inode).or_default().push(Holding { pid, fd });
        held_by.insert(pid);
    }
    for Count { pid, fds: count } in found.counts {
        if held_by.contains(&pid) {
            match process(pid) {
                Some(p) => {
                    if briefs {
                        all.insert(pid, Brief { ppid: p.ppid, comm: p.comm.clone(), fds: count });
                    }
                    h.processes.insert(pid, p);
                }
                // It exited since its descriptors were read: it holds nothing any more.
                None => h.by_inode.values_mut().for_each(|v| v.retain(|x| x.pid != pid)),
            }
        } else if briefs {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok();
            if let Some((comm, ppid)) = stat.as_deref().and_then(parse_stat) {
                all.insert(pid, Brief { ppid, comm, fds: count });
            }
        }
    }
    h.by_inode.retain(|_, v| !v.is_empty());
    for v in h.by_inode.values_mut() {
        v.sort();
    }
    Survey { holders: h, everyone: all }
}

/// A process's `fd` folder, open, and the descriptor numbers in it; `None` when it cannot be read
/// (it exited, or it is not ours to read).
fn fd_numbers(pid: u32) -> Option<(OwnedFd, Vec<i32>)> {
    use rustix::fs::{Mode, OFlags};
    let dir = rustix::fs::openat(
        rustix::fs::CWD,
        format!("/proc/{pid}/fd"),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let mut fds = Vec::new();
    for e in rustix::fs::Dir::read_from(&dir).ok()?.flatten() {
        if let Some(n) = e.file_name().to_str().ok().and_then(|s| s.parse::<i32>().ok()) {
            fds.push(n);
        }
    }
    Some((dir, fds))
}

/// Descriptors per chunk of work.
const CHUNK: usize = 2048;

/// Every descriptor that is a socket in `inodes`, by readlinkat on the open `fd` folders, on up
/// to as many threads as CPUs when there is enough to share.
fn readlinks<S: BuildHasher + Sync>(
    listed: &[(u32, OwnedFd, Vec<i32>)],
    inodes: &HashSet<u64, S>,
) -> Vec<Descriptor> {
    let chunks: Vec<(u32, &OwnedFd, &[i32])> = listed
        .iter()
        .flat_map(|(pid, dir, fds)| fds.chunks(CHUNK).map(move |c| (*pid, dir, c)))
        .collect();
    let total: usize = listed.iter().map(|l| l.2.len()).sum();
    let threads = if total < 2 * CHUNK {
        1
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get()).min(4)
    };
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = || {
        let mut out = Vec::new();
        let mut buf = Vec::with_capacity(64);
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some((pid, dir, fds)) = chunks.get(i) else { return out };
            for &fd in *fds {
                let Ok(target) =
                    rustix::fs::readlinkat(*dir, fd.to_string(), std::mem::take(&mut buf))
                else {
                    continue;
                };
                if let Some(inode) = target.to_str().ok().and_then(socket_inode) {
                    if inodes.contains(&inode) {
                        out.push(Descriptor { pid: *pid, fd, inode });
                    }
                }
                buf = target.into_bytes();
                buf.clear();
            }
        }
    };
    if threads == 1 {
        return work();
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|_| s.spawn(work)).collect();
        handles.into_iter().flat_map(|h| h.join().expect("a walk thread panicked")).collect()
    })
}

/// `socket:[12345]` → 12345.
pub fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// Reads a process's parent, name and command line.
pub fn process(pid: u32) -> Option<Process> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (comm, ppid) = parse_stat(&stat)?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline)
        .split('\0')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    Some(Process { pid, ppid, comm, cmdline })
}

/// `PID (comm) S PPID …`: the name may hold spaces and parentheses, so split at the last `)`.
fn parse_stat(stat: &str) -> Option<(String, u32)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    let mut rest = stat.get(close + 1..)?.split_whitespace();
    let _state = rest.next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((comm, ppid))
}

/// The sockets a process holds, as (fd, socket inode), reading the link of only those descriptor
/// numbers `known` does not answer for: a watcher that saw a descriptor before passes what it
/// knows (`Some(inode)`, used as it is) and reads the rest. `None` when the process's `fd` folder
/// cannot be read.
pub fn sockets_of(pid: u32, known: impl Fn(i32) -> Option<u64>) -> Option<Vec<(i32, u64)>> {
    let (dir, fds) = fd_numbers(pid)?;
    let mut out = Vec::new();
    let mut buf = Vec::with_capacity(64);
    for fd in fds {
        if let Some(inode) = known(fd) {
            out.push((fd, inode));
            continue;
        }
        let Ok(target) = rustix::fs::readlinkat(&dir, fd.to_string(), std::mem::take(&mut buf))
        else {
            continue;
        };
        if let Some(inode) = target.to_str().ok().and_then(socket_inode) {
            out.push((fd, inode));
        }
        buf = target.into_bytes();
        buf.clear();
    }
    Some(out)
}

/// When a process started (`starttime` in /proc/PID/stat, clock ticks since boot): with its pid,
/// it names one process, whatever pid reuse does.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_socket_links() {
        assert_eq!(socket_inode("socket:[12345]"), Some(12345));
        assert_eq!(socket_inode("pipe:[12345]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
    }

    #[test]
    fn stat_with_odd_names() {
        assert_eq!(parse_stat("42 (a (b) c) S 7 42 42 0"), Some(("a (b) c".into(), 7)));
    }

    #[test]
    fn finds_our_own_socket() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&l);
        let link = fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
        let inode = socket_inode(link.to_str().unwrap()).unwrap();
        let h = find(&HashSet::from([inode]));
        let me = std::process::id();
        assert_eq!(h.of(inode), &[Holding { pid: me, fd }]);
        assert_eq!(h.processes[&me].pid, me);
    }

    #[test]
    fn the_kernel_and_proc_name_the_same_holders() {
        // A child of its own holds three sockets as its descriptors 0, 1 and 2 (and whatever it
        // inherits without close-on-exec, such as a jobserver's pipe): this test process opens and closes descriptors on other test threads, so its own count
        // moves, and its forks hold copies of its sockets for a moment.
        let ls: Vec<std::net::TcpListener> =
            (0..3).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
        let inodes: Vec<u64> = ls
            .iter()
            .map(|l| {
                let fd = std::os::fd::AsRawFd::as_raw_fd(l);
                let link = fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
                socket_inode(link.to_str().unwrap()).unwrap()
            })
            .collect();
        let mut stdio = ls.into_iter().map(|l| std::process::Stdio::from(OwnedFd::from(l)));
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .stdin(stdio.next().unwrap())
            .stdout(stdio.next().unwrap())
            .stderr(stdio.next().unwrap())
            .spawn()
            .unwrap();
        let pid = child.id();
        let wanted: HashMap<u64, Vec<Holding>> = inodes
            .iter()
            .enumerate()
            .map(|(fd, &inode)| (inode, vec![Holding { pid, fd: fd as i32 }]))
            .collect();
        let set: HashSet<u64> = inodes.iter().copied().collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let outcome = loop {
            let Some(found) = from_kernel(&set) else { break None };
            let its = found.counts.iter().find(|c| c.pid == pid).map(|c| c.fds);
            let by_kernel = assemble(found, false).holders;
            let by_proc = walk_proc(&set, false).holders;
            let listed = fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as u32).ok();
            // Asked after the reads (spawn may return before the exec, and a read on a loaded
            // machine can outlast the deadline): before it, the child holds each socket twice.
            let exec_done =
                fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep");
            let agreed = exec_done
                && by_kernel.by_inode == by_proc.by_inode
                && by_kernel.by_inode.iter().all(|(i, h)| wanted.get(i) == Some(h))
                && by_kernel.by_inode.len() == 3
                && its.is_some()
                && its == listed;
            if agreed || std::time::Instant::now() > deadline {
                break Some((agreed, by_kernel.by_inode, by_proc.by_inode, its, listed));
            }
        };
        let _ = child.kill();
        let _ = child.wait();
        let Some((agreed, by_kernel, by_proc, its, listed)) = outcome else {
            return crate::bpf::sys::missing("the task-file BPF iterator", "/proc only");
        };
        assert!(
            agreed,
            "kernel {by_kernel:?} ({its:?} descriptors), /proc {by_proc:?} ({listed:?}), wanted {wanted:?}"
        );
    }
}
