//! Who keeps each stuck socket open, and what that process is to the run.

use std::collections::{BTreeMap, HashMap, HashSet};

use cwlab_model::report::{Holder, Role, Side};
use cwlab_model::TcpState;
use cwlab_sampler::{holders, SocketRecord};

/// Sockets in these states are where they belong: nobody is asked who holds them.
fn settled(s: TcpState) -> bool {
    matches!(s, TcpState::Established | TcpState::TimeWait | TcpState::Listen)
}

/// What the end of a run learns from one walk of /proc.
pub struct End {
    /// One row per (stuck socket, holding fd), or one `nobody` row for a socket no process holds.
    pub holders: Vec<Holder>,
    /// Open descriptors of the acceptor and every descendant, summed per role.
    pub fds_by_role: BTreeMap<Role, u64>,
}

/// Whose processes a run's server is made of.
#[derive(Debug, Clone, Copy)]
pub enum Tree {
    /// The lab's: the acceptor names its children (`cwlab-handler`, `cwlab-worker`).
    Lab {
        /// The acceptor.
        acceptor: u32,
    },
    /// A user's command under `cwlab contain`: roles come from the process tree and what each
    /// process runs. A descendant running the listening process's command line is a fork of it
    /// (a handler; a worker when it holds more than one stuck connection, which it cannot have
    /// been handed to serve); one running anything else exec'd it (a helper).
    Command {
        /// The listening process.
        acceptor: u32,
        /// `cwlab contain`, the root of everything the server started.
        root: u32,
        /// When the first client came, in clock ticks since boot ([`now_ticks`]): a fork of
        /// the server older than that was started before any connection existed (a prefork
        /// pool's worker), so it cannot have inherited one.
        clients_from: u64,
    },
}

impl Tree {
    fn acceptor(self) -> u32 {
        match self {
            Tree::Lab { acceptor } | Tree::Command { acceptor, .. } => acceptor,
        }
    }
}

/// Who holds each stuck socket of `records`, and the descriptors per role: one walk of /proc.
pub fn survey(records: &[SocketRecord], port: u16, tree: Tree) -> End {
    let stuck: Vec<&SocketRecord> = records.iter().filter(|r| !settled(r.state)).collect();
    let inodes: HashSet<u64> = stuck.iter().map(|r| r.inode).filter(|i| *i != 0).collect();
    let holders::Survey { holders: found, everyone } = holders::survey(&inodes);
    let mut holders = rows(&stuck, &found, port, tree);
    if let Tree::Command { clients_from, .. } = tree {
        workers(&mut holders, clients_from);
    }
    End { holders, fds_by_role: fds_by_role(tree, &everyone, &found) }
}

/// A fork of a user's server born during the run that holds more than one stuck connection
/// holds what it inherited, not what it was handed to serve: when one does, the run's forks
/// that hold connections are workers (the first of them may have been born with only one to
/// inherit). A fork born before the first client (a prefork pool's worker, which accepts for
/// itself) holds what it served: it stays a handler.
fn workers(rows: &mut [Holder], clients_from: u64) {
    let born_late =
        |pid: Option<u32>| pid.and_then(started_ticks).is_some_and(|t| t >= clients_from);
    let mut late: HashMap<u32, bool> = HashMap::new();
    let mut held: HashMap<u32, HashSet<u64>> = HashMap::new();
    for h in rows.iter().filter(|h| h.role == Role::Handler && h.side == Side::Server) {
        let pid = h.pid.unwrap_or(0);
        if *late.entry(pid).or_insert_with(|| born_late(h.pid)) {
            held.entry(pid).or_default().insert(h.inode);
        }
    }
    if held.values().any(|s| s.len() > 1) {
        for h in rows.iter_mut().filter(|h| h.role == Role::Handler) {
            if late.get(&h.pid.unwrap_or(0)).copied().unwrap_or(true) {
                h.role = Role::Worker;
            }
        }
    }
}

/// The clock ticks since boot now: what a process's start time (`/proc/PID/stat`) is read
/// against.
pub fn now_ticks() -> u64 {
    let up = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
    let secs: f64 = up.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
    (secs * ticks_per_second() as f64) as u64
}

fn ticks_per_second() -> u64 {
    // sysconf(_SC_CLK_TCK): 100 on every Linux that runs this.
    rustix::param::clock_ticks_per_second()
}

/// When a process started, in clock ticks since boot (proc(5): `starttime`, the 22nd field).
fn started_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    // `after` starts at the 3rd field (state): starttime is its 20th word.
    after.split_whitespace().nth(19)?.parse().ok()
}

/// A process's command line, word by word.
pub fn argv(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let words: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|w| !w.is_empty())
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect();
    (!words.is_empty()).then_some(words)
}

/// The page faults of the children a process has reaped (`cminflt`, proc(5)): they grow when it
/// reaps a child it forked, and never for a thread. Kept across exec, so only its growth counts
/// (a wrapper such as a pyenv shim reaps children of its own before it execs the server).
pub fn reaped_faults(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0 };
    // The fields after the command name, which may hold spaces: state is the 3rd field of stat,
    // cminflt the 11th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    after.split_whitespace().nth(8).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Whether thread `tid` is (or was, for the main thread) a thread of process `pid`.
pub fn thread_of(tid: u32, pid: u32) -> bool {
    tid == pid || std::path::Path::new(&format!("/proc/{pid}/task/{tid}")).exists()
}

/// Whether a user's listening process forked during the run: a child of it alive or unreaped
/// now, or children it reaped since it began to listen (`faults_before`, [`reaped_faults`]).
pub fn forked(listener: u32, faults_before: u64) -> bool {
    if reaped_faults(listener) > faults_before {
        return true;
    }
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{listener}/task")) else { return false };
    tasks.flatten().any(|t| {
        std::fs::read_to_string(t.path().join("children")).is_ok_and(|c| !c.trim().is_empty())
    })
}

fn rows(stuck: &[&SocketRecord], found: &holders::Holders, port: u16, tree: Tree) -> Vec<Holder> {
    let roles = Roles::new(tree);
    // One role per process, not per row: the acceptor alone may hold 10,000 of them.
    let role_of: HashMap<u32, Role> =
        found.processes.iter().map(|(pid, p)| (*pid, roles.of(p))).collect();
    let mut rows = Vec::new();
    for r in stuck.iter().copied() {
        let side = if r.local.port() == port { Side::Server } else { Side::Client };
        let row = |pid: Option<u32>, fd: Option<i32>, role: Role| Holder {
            side,
            state: r.state,
            local: r.local.to_string(),
            remote: r.remote.to_string(),
            inode: r.inode,
            pid,
            fd,
            role,
            comm: pid.and_then(|p| found.processes.get(&p)).map(|p| p.comm.clone()),
            cmdline: match tree {
                Tree::Command { .. } => pid
                    .and_then(|p| found.processes.get(&p))
                    .map(|p| p.cmdline.replace('\0', " ").trim().to_string()),
                Tree::Lab { .. } => None,
            },
        };
        // A process that exited between the walk of its fds and the read of its stat is gone:
        // it holds nothing any more (handlers exit by the thousand at the end of `scale`).
        let held: Vec<_> =
            found.of(r.inode).iter().filter(|h| found.processes.contains_key(&h.pid)).collect();
        if held.is_empty() {
            rows.push(row(None, None, Role::Nobody));
        }
        for h in held {
            rows.push(row(Some(h.pid), Some(h.fd), role_of[&h.pid]));
        }
    }
    rows.sort_by_key(|h| (h.side, h.state, h.pid, h.fd));
    rows
}

/// Open descriptors of the acceptor and every descendant (for a command, every process of the
/// server), summed per role.
fn fds_by_role(
    tree: Tree,
    procs: &HashMap<u32, holders::Brief>,
    found: &holders::Holders,
) -> BTreeMap<Role, u64> {
    let descends = |mut pid: u32, root: u32| {
        for _ in 0..64 {
            if pid == root {
                return true;
            }
            match procs.get(&pid) {
                Some(p) if p.ppid != 0 && p.ppid != pid => pid = p.ppid,
                _ => return false,
            }
        }
        false
    };
    let acceptor = tree.acceptor();
    let mut sums = BTreeMap::new();
    for (&pid, p) in procs {
        let role = match tree {
            Tree::Lab { .. } if !descends(pid, acceptor) => continue,
            Tree::Lab { .. } if pid == acceptor => Role::Acceptor,
            Tree::Lab { .. } => role_by_name(&p.comm),
            Tree::Command { root, .. } => {
                if pid == root || p.comm == "cwlab-init" || !descends(pid, root) {
                    continue;
                }
                if pid == acceptor {
                    Role::Acceptor
                } else if same_program(pid, acceptor, found) {
                    Role::Handler
                } else {
                    Role::Helper
                }
            }
        };
        *sums.entry(role).or_insert(0) += u64::from(p.fds);
    }
    sums
}

/// Whether two processes run the same command line (a fork that did not exec).
fn same_program(a: u32, b: u32, found: &holders::Holders) -> bool {
    let cmdline = |pid: u32| {
        found.processes.get(&pid).map(|p| p.cmdline.clone()).or_else(|| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .ok()
                .map(|v| String::from_utf8_lossy(&v).into_owned())
        })
    };
    matches!((cmdline(a), cmdline(b)), (Some(x), Some(y)) if x == y)
}

fn role_by_name(comm: &str) -> Role {
    match comm {
        "cwlab-handler" => Role::Handler,
        "cwlab-worker" => Role::Worker,
        _ => Role::Helper,
    }
}

/// Tells the acceptor, its handlers, workers and helpers, and the runner's clients apart.
struct Roles {
    tree: Tree,
    acceptor: u32,
    me: u32,
}

impl Roles {
    fn new(tree: Tree) -> Roles {
        Roles { tree, acceptor: tree.acceptor(), me: std::process::id() }
    }

    /// Descendants of the acceptor are told apart by the names the server gives them
    /// (`cwlab-handler`, `cwlab-worker`); one that exec'd something else is a helper. Orphans are
    /// reparented to the acceptor (a subreaper, or the PID namespace's init), so parentage alone
    /// cannot tell them apart.
    fn of(&self, p: &holders::Process) -> Role {
        if p.pid == self.acceptor {
            return Role::Acceptor;
        }
        if p.pid == self.me {
            return Role::Client;
        }
        if let Tree::Command { root, .. } = self.tree {
            return self.of_command(p, root);
        }
        let mut up = p.ppid;
        for _ in 0..64 {
            if up == self.acceptor {
                return role_by_name(&p.comm);
            }
            match holders::process(up) {
                Some(q) if q.ppid != 0 && q.ppid != up => up = q.ppid,
                _ => break,
            }
        }
        Role::Other
    }

    /// A process of a user's server: a fork of the listening process runs its command line.
    fn of_command(&self, p: &holders::Process, root: u32) -> Role {
        let mut up = p.ppid;
        for _ in 0..64 {
            if up == root {
                let listener = holders::process(self.acceptor);
                return match listener {
                    Some(l) if l.cmdline == p.cmdline => Role::Handler,
                    _ => Role::Helper,
                };
            }
            match holders::process(up) {
                Some(q) if q.ppid != 0 && q.ppid != up => up = q.ppid,
                _ => break,
            }
        }
        Role::Other
    }
}
