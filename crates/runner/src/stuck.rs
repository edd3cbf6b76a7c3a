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

/// Who holds each stuck socket of `records`, and the descriptors per role: one walk of /proc.
pub fn survey(records: &[SocketRecord], port: u16, acceptor: u32) -> End {
    let stuck: Vec<&SocketRecord> = records.iter().filter(|r| !settled(r.state)).collect();
    let inodes: HashSet<u64> = stuck.iter().map(|r| r.inode).filter(|i| *i != 0).collect();
    let (found, everyone) = holders::survey(&inodes);
    End {
        holders: rows(&stuck, &found, port, acceptor),
        fds_by_role: fds_by_role(acceptor, &everyone),
    }
}

fn rows(
    stuck: &[&SocketRecord],
    found: &holders::Holders,
    port: u16,
    acceptor: u32,
) -> Vec<Holder> {
    let roles = Roles::new(acceptor);
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

/// Open descriptors of the acceptor and every descendant, summed per role.
fn fds_by_role(acceptor: u32, procs: &HashMap<u32, holders::Brief>) -> BTreeMap<Role, u64> {
    let descends = |mut pid: u32| {
        for _ in 0..64 {
            if pid == acceptor {
                return true;
            }
            match procs.get(&pid) {
                Some(p) if p.ppid != 0 && p.ppid != pid => pid = p.ppid,
                _ => return false,
            }
        }
        false
    };
    let mut sums = BTreeMap::new();
    for (&pid, p) in procs {
        if !descends(pid) {
            continue;
        }
        let role = if pid == acceptor { Role::Acceptor } else { role_by_name(&p.comm) };
        *sums.entry(role).or_insert(0) += u64::from(p.fds);
    }
    sums
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
    acceptor: u32,
    me: u32,
}

impl Roles {
    fn new(acceptor: u32) -> Roles {
        Roles { acceptor, me: std::process::id() }
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
}
