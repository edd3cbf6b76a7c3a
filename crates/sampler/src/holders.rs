//! Who holds a socket: the processes whose descriptors refer to its inode, found by one walk of
//! `/proc/*/fd` per question (as `ss -p` does), never one walk per socket.
//!
//! # References
//! proc(5) (`/proc/PID/fd`, `/proc/PID/stat`, `/proc/PID/cmdline`).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::Path;

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
    pub by_inode: HashMap<u64, Vec<Holding>>,
    /// Each process that holds at least one of the sockets.
    pub processes: HashMap<u32, Process>,
}

impl Holders {
    /// The holdings of one socket; empty when nobody holds it (inode 0 is never held).
    pub fn of(&self, inode: u64) -> &[Holding] {
        self.by_inode.get(&inode).map_or(&[], Vec::as_slice)
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

/// Finds who holds each of `inodes` with one walk of `/proc`. Processes that vanish during the
/// walk, or whose descriptors cannot be read, are passed over.
pub fn find(inodes: &HashSet<u64>) -> Holders {
    if inodes.is_empty() {
        return Holders::default();
    }
    walk(inodes, false).0
}

/// One walk of `/proc` for two questions: who holds each of `inodes` (as [`find`] answers), and
/// the parent, name and descriptor count of every process.
pub fn survey(inodes: &HashSet<u64>) -> (Holders, HashMap<u32, Brief>) {
    walk(inodes, true)
}

fn walk(inodes: &HashSet<u64>, briefs: bool) -> (Holders, HashMap<u32, Brief>) {
    let mut h = Holders::default();
    let mut all = HashMap::new();
    let Ok(procs) = fs::read_dir("/proc") else { return (h, all) };
    for entry in procs.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Some((fds, sockets)) = socket_fds(&entry.path()) else { continue };
        let mut held = false;
        for (fd, inode) in sockets {
            if inodes.contains(&inode) {
                h.by_inode.entry(inode).or_default().push(Holding { pid, fd });
                held = true;
            }
        }
        if held {
            if let Some(p) = process(pid) {
                if briefs {
                    all.insert(pid, Brief { ppid: p.ppid, comm: p.comm.clone(), fds });
                }
                h.processes.insert(pid, p);
            }
        } else if briefs {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok();
            if let Some((comm, ppid)) = stat.as_deref().and_then(parse_stat) {
                all.insert(pid, Brief { ppid, comm, fds });
            }
        }
    }
    for v in h.by_inode.values_mut() {
        v.sort();
    }
    (h, all)
}

/// How many descriptors one process has, and every (fd, socket inode) among them; `None` when
/// its `fd` folder cannot be read (it exited, or it is not ours to read).
fn socket_fds(proc_dir: &Path) -> Option<(u32, Vec<(i32, u64)>)> {
    let fds = fs::read_dir(proc_dir.join("fd")).ok()?;
    let mut count = 0;
    let mut v = Vec::new();
    for fd in fds.flatten() {
        let Some(n) = fd.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        count += 1;
        let Ok(target) = fs::read_link(fd.path()) else { continue };
        if let Some(inode) = socket_inode(target.as_os_str().to_str().unwrap_or("")) {
            v.push((n, inode));
        }
    }
    Some((count, v))
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
}
