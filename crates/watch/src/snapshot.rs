//! One look at the watched namespaces: each namespace's sockets counted per service port, the
//! age of the oldest CLOSE-WAIT, and who holds the server CLOSE-WAIT sockets.
//!
//! Where the kernel takes the lab's tracepoint program ([`cwlab_sampler::stream`]), the states
//! only full sockets are in (the server's half of a leak) come from a ledger the kernel's reports
//! keep, seeded by one dump, and a look dumps only the other states (timewait and request
//! sockets change without a report). Elsewhere each look dumps every state (with `tcp_info` on
//! the first, for the ages). Holders come from a cache that reads only what changed; each is
//! named by where it runs (its cgroup: the unit, container or pod), read when it is found.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cwlab_model::watch::{Holding, NamespaceView, PortView, Snapshot};
use cwlab_model::TcpState;
use cwlab_sampler::holders::{FastMap, InodeSet};
use cwlab_sampler::stream::{self, Ledger, Stream};
use cwlab_sampler::{cgroup, holders, netns, Backend, Query, SocketRecord, States, Table};

use crate::Error;

/// How far back the growth of CLOSE-WAIT is measured.
const WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

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
struct Target {
    inode: u64,
    label: String,
    /// How to open it again: a namespace file, or none for the watcher's own.
    path: Option<PathBuf>,
    table: Option<Tables>,
    /// Whether a look with `tcp_info` has been made since the table was opened: after it, every
    /// CLOSE-WAIT socket's age is known or is younger than a look.
    aged: bool,
    /// With the stream: the sockets in the streamed states, kept by its events (None until a
    /// look seeds it).
    ledger: Option<Ledger>,
}

/// Looks at socket tables and remembers enough for rates.
pub struct Watcher {
    which: Namespaces,
    targets: Vec<Target>,
    ports: Vec<u16>,
    top: usize,
    /// Server CLOSE-WAIT per (namespace, port) at each look of the last minute.
    last: HashMap<(u64, u16), std::collections::VecDeque<(Instant, u32)>>,
    /// When each server CLOSE-WAIT socket (namespace, [`socket_id`]) entered CLOSE-WAIT, as far
    /// as the watcher knows: from `tcp_info` on the first look that saw it in a namespace, then
    /// kept, so that later looks need no `tcp_info` (it quadruples what a dump carries).
    born: FastMap<(u64, u64), (Instant, u64)>,
    /// Who held what at the last looks.
    cache: HolderCache,
    /// The kernel's reports of full sockets' changes, where it takes the program (root, BTF):
    /// then a look dumps only the states the stream does not keep.
    stream: Option<Stream>,
    /// Why there is no stream, when there is none.
    stream_error: Option<String>,
    /// Events the stream's program could not write (a full ring) at the last look.
    dropped: u64,
    /// Dumps made so far (concurrent scrapes share one).
    pub dumps: u64,
}

impl Watcher {
    /// Opens the tables of `which`; `ports` narrows the service ports (default: every port with a
    /// listener), `top` is how many holders to name per port.
    pub fn new(which: Namespaces, ports: Vec<u16>, top: usize) -> Result<Watcher, Error> {
        let mut targets = Vec::new();
        match &which {
            Namespaces::Own => targets.push(Target {
                inode: own_inode(),
                label: label(own_inode(), std::process::id()),
                path: None,
                table: Some(Tables::open()?),
                aged: false,
                ledger: None,
            }),
            Namespaces::These { paths, pids } => {
                let named = paths
                    .iter()
                    .cloned()
                    .chain(pids.iter().map(|p| PathBuf::from(format!("/proc/{p}/ns/net"))));
                for path in named {
                    let shown = path.display().to_string();
                    let err = |source| Error::Namespace { what: shown.clone(), source };
                    let inode = std::fs::metadata(&path).map_err(err)?.ino();
                    let table = open_at(&path).map_err(err)?;
                    let pid = pid_in(&path).unwrap_or(0);
                    targets.push(Target {
                        inode,
                        label: label(inode, pid),
                        path: Some(path),
                        table: Some(table),
                        aged: false,
                        ledger: None,
                    });
                }
            }
            Namespaces::All => {}
        }
        let (stream, stream_error) = match open_stream() {
            Ok(s) => (Some(s), None),
            Err(e) => (None, Some(e)),
        };
        Ok(Watcher {
            which,
            targets,
            ports,
            top,
            last: HashMap::new(),
            born: FastMap::default(),
            cache: HolderCache::default(),
            stream,
            stream_error,
            dropped: 0,
            dumps: 0,
        })
    }

    /// The same watcher with every look a dump, even where the kernel would stream (to compare
    /// the two ways).
    pub fn dumping_only(mut self) -> Watcher {
        self.stream = None;
        self.stream_error = Some("turned off".into());
        self
    }

    /// Why the looks do not keep the server's half from the kernel's reports, when they do not:
    /// `CWLAB_STREAM=0`, or the kernel's refusal (no BTF, no permission).
    pub fn stream_error(&self) -> Option<&str> {
        self.stream_error.as_deref()
    }

    /// Whether the looks keep the server's half from the kernel's reports.
    pub fn streaming(&self) -> bool {
        self.stream.is_some()
    }

    /// Applies the kernel's reports since the last call to the ledgers. A look does it first;
    /// between looks far apart (an exporter scraped every 15 s), calling it keeps the ring from
    /// filling (about 100,000 changes), which would cost the next look a whole dump.
    pub fn catch_up(&mut self) {
        let Some(stream) = self.stream.as_mut() else { return };
        let targets = &mut self.targets;
        let dropped = stream.drain(|e| {
            if let Some(t) = targets.iter_mut().find(|t| t.inode as u32 == e.netns) {
                if let Some(l) = t.ledger.as_mut() {
                    l.apply(&e);
                }
            }
        });
        if dropped != self.dropped {
            // The ring was full: some change is missing from every ledger.
            self.dropped = dropped;
            self.targets.iter_mut().for_each(|t| t.ledger = None);
        }
    }

    /// Takes one look.
    pub fn look(&mut self) -> Snapshot {
        let started = Instant::now();
        if let Namespaces::All = self.which {
            self.find_all();
        }
        self.dumps += 1;
        let mut views = Vec::new();
        let mut stuck: Vec<Vec<Vec<u64>>> = Vec::new();
        let now = Instant::now();
        let generation = self.dumps;
        self.catch_up();
        let streaming = self.stream.is_some();
        let now_ns = stream::now_ns();
        for t in &mut self.targets {
            let mut view =
                NamespaceView { inode: t.inode, label: t.label.clone(), ..Default::default() };
            let tally = if streaming {
                tally_streamed(t, &self.ports, now_ns)
            } else {
                let ages = Ages { born: &mut self.born, now, generation };
                tally_dumped(t, &self.ports, ages)
            };
            match tally {
                Ok(tally) => {
                    stuck.push(tally.into_view(&mut view));
                    t.aged = true;
                }
                Err(e) => {
                    view.error = Some(e);
                    t.table = None;
                    t.aged = false;
                    t.ledger = None;
                    stuck.push(Vec::new());
                }
            }
            views.push(view);
        }
        self.born.retain(|_, v| v.1 == generation);
        let groups: Vec<(u64, u16, &[u64])> = views
            .iter()
            .zip(&stuck)
            .flat_map(|(v, s)| v.ports.iter().zip(s).map(|(p, s)| (v.inode, p.port, &s[..])))
            .collect();
        let mut held = self.cache.top(&groups, self.top).into_iter();
        for view in views.iter_mut() {
            for p in &mut view.ports {
                p.holders = held.next().unwrap_or_default();
                let cw = p.server.get(&TcpState::CloseWait).copied().unwrap_or(0);
                // The growth over the last minute (or as much of it as was watched).
                let seen = self.last.entry((view.inode, p.port)).or_default();
                while seen.front().is_some_and(|(t, _)| now.duration_since(*t) > WINDOW) {
                    seen.pop_front();
                }
                if let Some((then, before)) = seen.front() {
                    let mins = now.duration_since(*then).as_secs_f64() / 60.0;
                    if mins > 0.0 {
                        p.close_wait_per_min = Some((f64::from(cw) - f64::from(*before)) / mins);
                    }
                }
                seen.push_back((now, cw));
                p.finding = finding(p, cw);
            }
        }
        Snapshot {
            t_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            took_ms: started.elapsed().as_secs_f64() * 1000.0,
            namespaces: views,
        }
    }

    /// Every namespace some thread is in, by inode; tables kept for those still there.
    fn find_all(&mut self) {
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
        self.targets.retain(|t| seen.contains_key(&t.inode));
        for (inode, (pid, path)) in seen {
            if self.targets.iter().all(|t| t.inode != inode) {
                self.targets.push(Target {
                    inode,
                    label: label(inode, pid),
                    table: open_at(&path).ok(),
                    path: Some(path),
                    aged: false,
                    ledger: None,
                });
            }
        }
        self.targets.sort_by_key(|t| t.inode);
    }
}

/// Two sockets on one namespace's table: each dump is split between them by state, the
/// server's half of a leak (CLOSE-WAIT, with ESTAB and LISTEN) on one core and the client's
/// (FIN-WAIT-2, TIME-WAIT, …) on the other, so a look takes the time of the larger half.
struct Tables {
    first: Table,
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
    fn two(
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

/// Whether to keep the server's half of each table from the kernel's reports: where the
/// kernel takes the program, unless `CWLAB_STREAM=0` (for comparing the two ways).
fn open_stream() -> Result<Stream, String> {
    if std::env::var("CWLAB_STREAM").as_deref() == Ok("0") {
        return Err("turned off by CWLAB_STREAM=0".into());
    }
    Stream::open().map_err(|e| e.to_string())
}

/// With the stream: the ledger's sockets and a dump of the states it does not keep, counted as
/// the dump is read. A ledger is seeded first where there is none; a CLOSE-WAIT socket the
/// ledger has with no file (accepted after its FIN: no event says so) is given its inode from a
/// dump of CLOSE-WAIT.
fn tally_streamed(t: &mut Target, only: &[u16], now_ns: u64) -> Result<Tally, String> {
    open_again(t)?;
    let table = t.table.as_mut().expect("opened above");
    let rest = Query { states: stream::dumped(), ..Query::default() };
    let kept = Query { states: States::of(&stream::STREAMED), ..Query::default() };
    let fail = |e: cwlab_sampler::Error| e.to_string();
    let mut read: Option<Vec<SocketRecord>> = None;
    match t.ledger.as_mut() {
        None => {
            let all = table.two(&Query { info: true, ..kept }, &rest).map_err(fail)?;
            let (streamed, others): (Vec<SocketRecord>, Vec<SocketRecord>) =
                all.into_iter().partition(|r| stream::STREAMED.contains(&r.state));
            t.ledger = Some(Ledger::seed(&streamed, now_ns));
            read = Some(others);
        }
        Some(ledger) if ledger.unfiled(TcpState::CloseWait).next().is_some() => {
            // One walk: the dumped states and CLOSE-WAIT together.
            let mut states: Vec<TcpState> =
                TcpState::ALL.iter().copied().filter(|s| rest.states.contains(*s)).collect();
            states.push(TcpState::CloseWait);
            let both = Query { states: States::of(&states), ..Query::default() };
            let all = table.first.list(&both).map_err(fail)?;
            let (cw, others): (Vec<SocketRecord>, Vec<SocketRecord>) =
                all.into_iter().partition(|r| r.state == TcpState::CloseWait);
            ledger.file(&cw);
            read = Some(others);
        }
        Some(_) => {}
    }
    let ledger = t.ledger.as_ref().expect("seeded above");
    let listening = ledger
        .entries
        .values()
        .filter(|e| e.state == TcpState::Listen)
        .map(|e| e.local_port)
        .collect();
    let mut tally = Tally::new(only, listening);
    for e in ledger.entries.values() {
        let age = || (e.inode, now_ns.saturating_sub(e.since_ns) as f64 / 1e9);
        tally.add(e.state, (e.local_port, e.remote_port), age);
    }
    // The dumped states hold no CLOSE-WAIT: `stuck` is never asked.
    let mut add =
        |r: &SocketRecord| tally.add(r.state, (r.local.port(), r.remote.port()), || (0, 0.0));
    match read {
        Some(records) => records.iter().for_each(add),
        None => table.first.for_each(&rest, &mut add).map_err(fail)?,
    }
    Ok(tally)
}

/// What the dumping way needs for CLOSE-WAIT ages: when each socket was first seen there.
struct Ages<'a> {
    born: &'a mut FastMap<(u64, u64), (Instant, u64)>,
    now: Instant,
    generation: u64,
}

/// Without the stream: every socket of the namespace from a dump (with `tcp_info` where some
/// CLOSE-WAIT socket's age is not known yet), counted.
fn tally_dumped(t: &mut Target, only: &[u16], ages: Ages) -> Result<Tally, String> {
    let records = dump(t, !t.aged)?;
    let listening =
        records.iter().filter(|r| r.state == TcpState::Listen).map(|r| r.local.port()).collect();
    let mut tally = Tally::new(only, listening);
    let Ages { born, now, generation } = ages;
    let ns = t.inode;
    for r in &records {
        tally.add(r.state, (r.local.port(), r.remote.port()), || {
            let e = born.entry((ns, socket_id(r))).or_insert_with(|| {
                let idle = Duration::from_millis(u64::from(r.idle_ms.unwrap_or(0)));
                (now.checked_sub(idle).unwrap_or(now), generation)
            });
            e.1 = generation;
            (r.inode, now.duration_since(e.0).as_secs_f64())
        });
    }
    Ok(tally)
}

/// Opens a namespace's table again after it failed.
fn open_again(t: &mut Target) -> Result<(), String> {
    if t.table.is_none() {
        t.table = Some(match &t.path {
            Some(p) => open_at(p).map_err(|e| format!("the namespace is gone or closed: {e}"))?,
            None => Tables::open().map_err(|e| e.to_string())?,
        });
    }
    Ok(())
}

/// Every TCP socket of a namespace (with `tcp_info` when `info`). A table that failed is opened
/// again once.
fn dump(t: &mut Target, info: bool) -> Result<Vec<SocketRecord>, String> {
    open_again(t)?;
    t.table.as_mut().expect("opened above").dump(info).map_err(|e| e.to_string())
}

/// A socket's identity for its age: its inode, which no other socket has while it lives; for a
/// socket no file refers to (inode 0), its addresses folded into a number with the top bit set.
fn socket_id(r: &cwlab_sampler::SocketRecord) -> u64 {
    if r.inode != 0 {
        return r.inode;
    }
    use std::hash::{Hash, Hasher};
    let mut h = holders::FastHasher::default();
    (r.local, r.remote).hash(&mut h);
    h.finish() | 1 << 63
}

/// Counts per state, indexed by the kernel's state number (1–11).
type StateCounts = [u32; 12];

fn counts_map(c: &StateCounts) -> cwlab_model::report::Counts {
    TcpState::ALL.iter().filter(|s| c[**s as usize] > 0).map(|s| (*s, c[*s as usize])).collect()
}

/// One namespace's sockets counted per service port (server side and client side) and
/// `other`, with each port's stuck sockets (server CLOSE-WAIT) and the age of the oldest: added
/// one socket at a time, in arrays indexed by port and state, as a dump is read.
struct Tally {
    /// The service ports, sorted.
    service: Vec<u16>,
    listening: BTreeSet<u16>,
    /// Each port's place in `ports`, or `u16::MAX`.
    index: Vec<u16>,
    ports: Vec<PortTally>,
    other: StateCounts,
}

#[derive(Default)]
struct PortTally {
    server: StateCounts,
    client: StateCounts,
    oldest: Option<f64>,
    /// The inodes of the server CLOSE-WAIT sockets (0 where no file refers to one).
    stuck: Vec<u64>,
}

impl Tally {
    /// The service ports are `only`, or every port with a listener.
    fn new(only: &[u16], listening: BTreeSet<u16>) -> Tally {
        let mut service: Vec<u16> =
            if only.is_empty() { listening.iter().copied().collect() } else { only.to_vec() };
        service.sort_unstable();
        service.dedup();
        let mut index = vec![u16::MAX; 65_536];
        for (i, p) in service.iter().enumerate() {
            index[usize::from(*p)] = i as u16;
        }
        let ports = service.iter().map(|_| PortTally::default()).collect();
        Tally { service, listening, index, ports, other: [0; 12] }
    }

    /// Adds one socket; `stuck` answers a server CLOSE-WAIT socket's inode and how long it has
    /// been in CLOSE-WAIT, in seconds.
    fn add(&mut self, state: TcpState, (lp, rp): (u16, u16), stuck: impl FnOnce() -> (u64, f64)) {
        let st = state as usize;
        match (self.index[usize::from(lp)], self.index[usize::from(rp)]) {
            (i, _) if i != u16::MAX => {
                let p = &mut self.ports[usize::from(i)];
                p.server[st] += 1;
                if state == TcpState::CloseWait {
                    let (inode, age) = stuck();
                    p.stuck.push(inode);
                    p.oldest = Some(p.oldest.map_or(age, |o: f64| o.max(age)));
                }
            }
            (_, i) if i != u16::MAX => self.ports[usize::from(i)].client[st] += 1,
            _ => self.other[st] += 1,
        }
    }

    /// The counts into `view`; each of its ports' stuck inodes, in the same order.
    fn into_view(self, view: &mut NamespaceView) -> Vec<Vec<u64>> {
        let mut stuck = Vec::with_capacity(self.ports.len());
        view.ports = self
            .service
            .iter()
            .zip(self.ports)
            .map(|(port, t)| {
                stuck.push(t.stuck);
                PortView {
                    port: *port,
                    listening: self.listening.contains(port),
                    server: counts_map(&t.server),
                    client: counts_map(&t.client),
                    close_wait_oldest_s: t.oldest,
                    ..Default::default()
                }
            })
            .collect();
        view.other = counts_map(&self.other);
        stuck
    }
}

/// The processes holding the most of `inodes` (each counted once per process, however many
/// descriptors it holds it by), with their descriptor counts and limits.
fn top_holders(inodes: &[u64], found: &holders::Holders, top: usize) -> Vec<Holding> {
    let mut per_pid: FastMap<u32, u32> = FastMap::default();
    for inode in inodes.iter().filter(|i| **i != 0) {
        let hs = found.of(*inode);
        for (k, h) in hs.iter().enumerate() {
            if hs[..k].iter().all(|o| o.pid != h.pid) {
                *per_pid.entry(h.pid).or_insert(0) += 1;
            }
        }
    }
    let mut v: Vec<Holding> = per_pid
        .into_iter()
        .filter_map(|(pid, sockets)| {
            let p = found.processes.get(&pid)?;
            Some(Holding {
                pid,
                name: p.comm.clone(),
                sockets,
                open_fds: 0,
                max_fds: None,
                cgroup: cgroup::of(pid),
            })
        })
        .collect();
    v.sort_by(|a, b| b.sockets.cmp(&a.sockets).then(a.pid.cmp(&b.pid)));
    v.truncate(top);
    v
}

/// A holder's descriptor count and limit, as they are now.
fn refresh(h: &mut Holding) {
    h.open_fds = cwlab_sampler::fds::count(h.pid).unwrap_or(0);
    h.max_fds = max_fds(h.pid);
}

/// What a port's numbers look like, when something is wrong.
fn finding(p: &PortView, close_wait: u32) -> Option<String> {
    if close_wait == 0 {
        return None;
    }
    let growing = match p.close_wait_per_min {
        Some(r) if r > 0.0 => format!("growing {r:.0}/min"),
        _ => "steady".to_string(),
    };
    let age = p.close_wait_oldest_s.map_or(String::new(), |s| format!(", the oldest {s:.0} s"));
    Some(match p.holders.first() {
        Some(h) => format!(
            "{close_wait} CLOSE-WAIT ({growing}{age}), held by pid {} `{}`: this side got the peer's FIN and never closed; the holder keeps the last reference",
            h.pid, h.name
        ),
        None => format!(
            "{close_wait} CLOSE-WAIT ({growing}{age}) held by no process: connections waiting in the listen queue, a busy server rather than a leak"
        ),
    })
}

/// The soft RLIMIT_NOFILE of a process (`Max open files` in /proc/PID/limits).
fn max_fds(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

fn own_inode() -> u64 {
    std::fs::metadata("/proc/thread-self/ns/net").map_or(0, |m| m.ino())
}

fn open_at(path: &std::path::Path) -> std::io::Result<Tables> {
    netns::in_namespace_at(path, || Tables::open().map_err(std::io::Error::other))
}

/// The pid of `/proc/PID/ns/net`, or of some process in the namespace a file names.
fn pid_in(path: &std::path::Path) -> Option<u32> {
    let s = path.to_str()?;
    s.strip_prefix("/proc/")?.split('/').next()?.parse().ok()
}

/// "4026531840 (systemd)": the inode and the name of a process in it.
fn label(inode: u64, pid: u32) -> String {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    match comm.trim() {
        "" => inode.to_string(),
        c => format!("{inode} ({c})"),
    }
}

/// An order-free digest of each group's stuck inodes, with the group's namespace and port.
fn fingerprint(groups: &[(u64, u16, &[u64])]) -> u64 {
    // splitmix64's finalizer: every input bit moves every output bit.
    fn mix(mut z: u64) -> u64 {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    let mut sum = groups.len() as u64;
    for (ns, port, inodes) in groups {
        let key = mix(ns ^ (u64::from(*port) << 48));
        sum = sum.wrapping_add(key.wrapping_mul(inodes.len() as u64 + 1));
        for i in *inodes {
            sum = sum.wrapping_add(mix(i ^ key));
        }
    }
    sum
}

/// How often the holders are found by a whole walk of /proc, whatever the cache says: every
/// 30 s, or, where a walk takes longer than 1.5 s (a million stuck sockets: 6 s here), every
/// 20 walks' time, so that the walks take at most a twentieth of the watch's time.
const REWALK: Duration = Duration::from_secs(30);
const REWALK_SHARE: u32 = 20;

/// Who held the server CLOSE-WAIT sockets at the last looks, so that a look reads only what
/// changed: the descriptors of the known holders that it has not seen before. A socket no known
/// holder accounts for (a new holder) brings a whole walk, and so does every [`REWALK`]; a
/// descriptor closed and reused for another socket between two walks is seen at the next.
#[derive(Default)]
struct HolderCache {
    /// pid → (its start time, its descriptor count, its descriptors that hold server CLOSE-WAIT
    /// sockets).
    procs: HashMap<u32, (u64, u32, FastMap<i32, u64>)>,
    info: HashMap<u32, holders::Process>,
    /// Sockets the last walk found no process holding.
    unheld: InodeSet,
    walked: Option<Instant>,
    /// How long the last whole walk took.
    walk_took: Duration,
    /// The last look's stuck sockets (a fingerprint of each port's) and its holders per port.
    last: Option<(u64, Vec<Vec<Holding>>)>,
}

impl HolderCache {
    /// The top holders of each group's sockets (a namespace's port's stuck inodes). When the
    /// stuck sockets are the very ones of the last look and no known holder has changed (the
    /// same process, the same descriptor count), the last answer is the answer.
    fn top(&mut self, groups: &[(u64, u16, &[u64])], top: usize) -> Vec<Vec<Holding>> {
        let print = fingerprint(groups);
        let fresh = self.fresh();
        if let Some((last, answer)) = &self.last {
            if *last == print && fresh && self.unchanged() {
                let mut answer = answer.clone();
                answer.iter_mut().flatten().for_each(refresh);
                return answer;
            }
        }
        let inodes: InodeSet =
            groups.iter().flat_map(|g| g.2.iter()).filter(|i| **i != 0).copied().collect();
        let found = self.holders(&inodes);
        let mut answer: Vec<Vec<Holding>> =
            groups.iter().map(|g| top_holders(g.2, &found, top)).collect();
        answer.iter_mut().flatten().for_each(refresh);
        self.last = Some((print, answer.clone()));
        answer
    }

    /// Whether every known holder is the same process with as many descriptors as at the last
    /// look.
    fn unchanged(&self) -> bool {
        self.procs.iter().all(|(pid, (start, count, _))| {
            holders::start_time(*pid) == Some(*start)
                && cwlab_sampler::fds::count(*pid).ok() == Some(*count)
        })
    }

    fn holders(&mut self, inodes: &InodeSet) -> holders::Holders {
        if self.fresh() {
            if let Some(h) = self.of_known(inodes) {
                return h;
            }
        }
        self.walk(inodes)
    }

    /// Whether the last whole walk is recent enough to trust the cache (see [`REWALK`]).
    fn fresh(&self) -> bool {
        let every = REWALK.max(self.walk_took * REWALK_SHARE);
        self.walked.is_some_and(|t| t.elapsed() < every)
    }

    fn walk(&mut self, inodes: &InodeSet) -> holders::Holders {
        let started = Instant::now();
        let found = holders::find(inodes);
        self.procs.clear();
        for (inode, hs) in &found.by_inode {
            for h in hs {
                let e = self.procs.entry(h.pid).or_insert_with(|| {
                    let count = cwlab_sampler::fds::count(h.pid).unwrap_or(0);
                    (holders::start_time(h.pid).unwrap_or(0), count, FastMap::default())
                });
                e.2.insert(h.fd, *inode);
            }
        }
        self.info = found.processes.clone();
        self.unheld = inodes.iter().filter(|i| !found.by_inode.contains_key(i)).copied().collect();
        self.walked = Some(Instant::now());
        self.walk_took = started.elapsed();
        found
    }

    /// The holders from the known holders alone; `None` when some socket is not accounted for.
    fn of_known(&mut self, inodes: &InodeSet) -> Option<holders::Holders> {
        let mut h = holders::Holders::default();
        let mut gone = Vec::new();
        for (pid, (start, count, fds)) in &mut self.procs {
            if holders::start_time(*pid) != Some(*start) {
                gone.push(*pid);
                continue;
            }
            // The same number of descriptors and every one known still stuck: nothing to read
            // (a descriptor closed and another opened in its place is seen at the next walk).
            let now_count = cwlab_sampler::fds::count(*pid).unwrap_or(u32::MAX);
            let unchanged = now_count == *count && fds.values().all(|i| inodes.contains(i));
            if !unchanged {
                let known = |fd: i32| fds.get(&fd).copied().filter(|i| inodes.contains(i));
                let Some(now) = holders::sockets_of(*pid, known) else {
                    gone.push(*pid);
                    continue;
                };
                fds.clear();
                fds.extend(now.into_iter().filter(|(_, i)| inodes.contains(i)));
                *count = now_count;
            }
            for (&fd, &inode) in fds.iter() {
                h.by_inode.entry(inode).or_default().push(holders::Holding { pid: *pid, fd });
            }
            if let Some(p) = self.info.get(pid) {
                h.processes.insert(*pid, p.clone());
            }
        }
        for pid in gone {
            self.procs.remove(&pid);
            self.info.remove(&pid);
        }
        let accounted =
            inodes.iter().all(|i| h.by_inode.contains_key(i) || self.unheld.contains(i));
        if !accounted {
            return None;
        }
        for v in h.by_inode.values_mut() {
            v.sort();
        }
        Some(h)
    }
}
