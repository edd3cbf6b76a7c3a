//! The namespaces a watch looks at: which ones ([`Namespaces`]), each one's socket tables
//! ([`Target`]), opened again when they fail, and how each is labelled for people (the host's
//! namespace as `host`, any other after a process in it).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use cwlab_model::TcpState;
use cwlab_sampler::stream::Ledger;
use cwlab_sampler::{netns, Backend, Query, SocketRecord, States, Table};

use crate::Error;

/// Which network namespaces to watch.
#[derive(Debug, Clone)]
pub enum Namespaces {
    /// The watcher's own.
    Own,
    /// These: namespace files (`/run/netns/NAME`, `/proc/PID/ns/net`) and processes' namespaces.
    These {
        /// Namespace files.
        paths: Vec<PathBuf>,
        /// Processes whose namespace to watch.
        pids: Vec<u32>,
    },
    /// Every namespace a process on the host is in, found anew at each look.
    All,
}

/// One namespace's table.
pub(crate) struct Target {
    pub inode: u64,
    pub label: String,
    /// How to open it again: a namespace file, or none for the watcher's own.
    pub path: Option<PathBuf>,
    pub table: Option<Tables>,
    /// The first port of the namespace's ephemeral range (`net.ipv4.ip_local_port_range`):
    /// what a client's port is.
    pub ephemeral: u16,
    /// Whether a look with `tcp_info` has been made since the table was opened: after it, every
    /// CLOSE-WAIT socket's age is known or is younger than a look.
    pub aged: bool,
    /// With the stream: the sockets in the streamed states, kept by its events (None until a
    /// look seeds it).
    pub ledger: Option<Ledger>,
    /// With the stream: the remote address of each client-side CLOSE-WAIT socket of the
    /// ledger, by cookie (the kernel's reports carry ports, not addresses).
    pub addresses: cwlab_sampler::holders::FastMap<u64, std::net::SocketAddr>,
}

impl Target {
    fn new(inode: u64, label: String, path: Option<PathBuf>, opened: Option<Opened>) -> Target {
        let (table, ephemeral) = match opened {
            Some(o) => (Some(o.tables), o.ephemeral),
            None => (None, DEFAULT_EPHEMERAL),
        };
        Target {
            inode,
            label,
            path,
            table,
            ephemeral,
            aged: false,
            ledger: None,
            addresses: Default::default(),
        }
    }

    /// Forgets what it knew of its table, which failed.
    pub fn failed(&mut self) {
        self.table = None;
        self.aged = false;
        self.ledger = None;
        self.addresses.clear();
    }

    /// Opens its table again after it failed.
    pub fn open_again(&mut self) -> Result<(), String> {
        if self.table.is_none() {
            let opened = match &self.path {
                Some(p) => {
                    open_at(p).map_err(|e| format!("the namespace is gone or closed: {e}"))?
                }
                None => Opened::here().map_err(|e| e.to_string())?,
            };
            self.ephemeral = opened.ephemeral;
            self.table = Some(opened.tables);
        }
        Ok(())
    }

    /// Every TCP socket of the namespace (with `tcp_info` when `info`). A table that failed is
    /// opened again once.
    pub fn dump(&mut self, info: bool) -> Result<Vec<SocketRecord>, String> {
        self.open_again()?;
        self.table.as_mut().expect("opened above").dump(info).map_err(|e| e.to_string())
    }
}

/// The targets `which` names at the start (none for [`Namespaces::All`], found at each look).
pub(crate) fn named(which: &Namespaces) -> Result<Vec<Target>, Error> {
    let mut targets = Vec::new();
    match which {
        Namespaces::Own => {
            let inode = own_inode();
            let opened = Opened::here()?;
            targets.push(Target::new(inode, own_label(inode), None, Some(opened)));
        }
        Namespaces::These { paths, pids } => {
            let named = paths
                .iter()
                .cloned()
                .chain(pids.iter().map(|p| PathBuf::from(format!("/proc/{p}/ns/net"))));
            for path in named {
                let shown = path.display().to_string();
                let err = |source| Error::Namespace { what: shown.clone(), source };
                let inode = std::fs::metadata(&path).map_err(err)?.ino();
                let opened = open_at(&path).map_err(err)?;
                let label = label(inode, pid_in(&path).unwrap_or(0));
                targets.push(Target::new(inode, label, Some(path), Some(opened)));
            }
        }
        Namespaces::All => {}
    }
    Ok(targets)
}

/// Every namespace some thread is in, by inode, into `targets`; tables kept for those still
/// there.
pub(crate) fn find_all(targets: &mut Vec<Target>) {
    let mut seen: BTreeMap<u64, (u32, PathBuf)> = BTreeMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        // A thread may have a namespace of its own (unshare moves only the caller).
        for t in std::fs::read_dir(e.path().join("task")).into_iter().flatten().flatten() {
            let path = t.path().join("ns/net");
            if let Ok(m) = std::fs::metadata(&path) {
                seen.entry(m.ino()).or_insert((pid, path));
            }
        }
    }
    targets.retain(|t| seen.contains_key(&t.inode));
    for (inode, (pid, path)) in seen {
        if targets.iter().all(|t| t.inode != inode) {
            let opened = open_at(&path).ok();
            targets.push(Target::new(inode, label(inode, pid), Some(path), opened));
        }
    }
    targets.sort_by_key(|t| t.inode);
}

/// Two sockets on one namespace's table: each dump is split between them by state, the
/// server's half of a leak (CLOSE-WAIT, with ESTAB and LISTEN) on one core and the client's
/// (FIN-WAIT-2, TIME-WAIT, …) on the other, so a look takes the time of the larger half.
pub(crate) struct Tables {
    pub first: Table,
    /// None with one CPU, or when a second socket could not be had.
    second: Option<Table>,
}

/// The states the first table dumps; the second dumps the rest.
const FIRST_HALF: [TcpState; 6] = [
    TcpState::Established,
    TcpState::SynSent,
    TcpState::SynRecv,
    TcpState::CloseWait,
    TcpState::LastAck,
    TcpState::Listen,
];

impl Tables {
    /// The calling thread's namespace's table, twice where there are two CPUs.
    fn open() -> Result<Tables, cwlab_sampler::Error> {
        let two = std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2);
        let first = Table::open(Backend::SockDiag)?;
        let second = if two { Table::open(Backend::SockDiag).ok() } else { None };
        Ok(Tables { first, second })
    }

    fn dump(&mut self, info: bool) -> Result<Vec<SocketRecord>, cwlab_sampler::Error> {
        if self.second.is_none() {
            return self.first.list(&Query { info, ..Query::default() });
        }
        let rest: Vec<TcpState> =
            TcpState::ALL.iter().copied().filter(|s| !FIRST_HALF.contains(s)).collect();
        self.two(
            &Query { states: States::of(&FIRST_HALF), info, ..Query::default() },
            &Query { states: States::of(&rest), ..Query::default() },
        )
    }

    /// `mine` on the first socket and `theirs` on the second, at once where there are two.
    pub fn two(
        &mut self,
        mine: &Query,
        theirs: &Query,
    ) -> Result<Vec<SocketRecord>, cwlab_sampler::Error> {
        let Some(second) = self.second.as_mut() else {
            let mut v = self.first.list(mine)?;
            v.extend(self.first.list(theirs)?);
            return Ok(v);
        };
        let first = &mut self.first;
        std::thread::scope(|s| {
            let other = s.spawn(move || second.list(theirs));
            let mut v = first.list(mine)?;
            v.extend(other.join().expect("a dump thread panicked")?);
            Ok(v)
        })
    }
}

/// Where a namespace's ephemeral range starts when it cannot be read (the kernel's default).
const DEFAULT_EPHEMERAL: u16 = 32768;

/// A namespace's tables and the first port of its ephemeral range, read inside it.
struct Opened {
    tables: Tables,
    ephemeral: u16,
}

impl Opened {
    /// The calling thread's namespace's.
    fn here() -> Result<Opened, cwlab_sampler::Error> {
        // /proc/sys/net answers for the namespace of the thread that opens it.
        let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range");
        let first = range.ok().and_then(|r| r.split_whitespace().next()?.parse().ok());
        Ok(Opened { tables: Tables::open()?, ephemeral: first.unwrap_or(DEFAULT_EPHEMERAL) })
    }
}

fn open_at(path: &Path) -> std::io::Result<Opened> {
    netns::in_namespace_at(path, || Opened::here().map_err(std::io::Error::other))
}

fn own_inode() -> u64 {
    std::fs::metadata("/proc/thread-self/ns/net").map_or(0, |m| m.ino())
}

/// The pid of `/proc/PID/ns/net`, or of some process in the namespace a file names.
fn pid_in(path: &Path) -> Option<u32> {
    let s = path.to_str()?;
    s.strip_prefix("/proc/")?.split('/').next()?.parse().ok()
}

/// The inode the kernel gives the first network namespace (`NET_NS_INIT_INO`, fixed since
/// Linux 6.18 as the other namespaces' first inodes have been since 3.8).
const NET_NS_INIT_INO: u64 = 0xEFFF_FFF9;
/// The first PID namespace's inode (`PROC_PID_INIT_INO`, since Linux 3.8).
const PID_NS_INIT_INO: u64 = 0xEFFF_FFFC;

/// Whether `inode` is the host's network namespace: the kernel's first, known by its fixed
/// inode where the kernel fixes it, else the one of the first PID namespace's pid 1.
fn is_host(inode: u64) -> bool {
    if inode == NET_NS_INIT_INO {
        return true;
    }
    let ino = |p: &str| std::fs::metadata(p).ok().map(|m| m.ino());
    ino("/proc/self/ns/pid") == Some(PID_NS_INIT_INO) && ino("/proc/1/ns/net") == Some(inode)
}

/// "4026531833 (host)" for the host's namespace, else "4026532316 (nginx)": the inode and the
/// name of a process in it.
fn label(inode: u64, pid: u32) -> String {
    if is_host(inode) {
        return format!("{inode} (host)");
    }
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    match comm.trim() {
        "" => inode.to_string(),
        c => format!("{inode} ({c})"),
    }
}

/// The watcher's own namespace's label: `host`, or after the first other process in it (the
/// watcher names itself only when it is alone there).
fn own_label(inode: u64) -> String {
    if is_host(inode) {
        return label(inode, 0);
    }
    let me = std::process::id();
    let other = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| *p != me)
        .filter(|p| std::fs::metadata(format!("/proc/{p}/ns/net")).is_ok_and(|m| m.ino() == inode))
        .min();
    label(inode, other.unwrap_or(me))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_19_the_host_s_namespace_is_labelled_as_the_host() {
        assert_eq!(label(NET_NS_INIT_INO, std::process::id()), "4026531833 (host)");
        let own = own_inode();
        assert_eq!(own_label(own).ends_with(" (host)"), is_host(own), "{}", own_label(own));
    }
}
