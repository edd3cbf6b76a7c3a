//! One look at the watched namespaces: a kernel dump each (with `tcp_info`, for the ages), the
//! service ports, and one walk of /proc for the holders of server CLOSE-WAIT sockets.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cwlab_model::watch::{Holding, NamespaceView, PortView, Snapshot};
use cwlab_model::TcpState;
use cwlab_sampler::holders::{FastMap, InodeSet};
use cwlab_sampler::stream::{self, Ledger, Stream};
use cwlab_sampler::{holders, netns, Backend, Query, SocketRecord, States, Table};

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
        Ok(Watcher {
            which,
            targets,
            ports,
            top,
            last: HashMap::new(),
            born: FastMap::default(),
            cache: HolderCache::default(),
            stream: open_stream(),
            dropped: 0,
            dumps: 0,
        })
    }

    /// The same watcher with every look a dump, even where the kernel would stream (to compare
    /// the two ways).
    pub fn dumping_only(mut self) -> Watcher {
        self.stream = None;
        self
    }

    /// Whether the looks keep the server's half from the kernel's reports.
    pub fn streaming(&self) -> bool {
        self.stream.is_some()
    }

    /// Takes one look.
    pub fn look(&mut self) -> Snapshot {
        let started = Instant::now();
        if let Namespaces::All = self.which {
            self.find_all();
        }
        self.dumps += 1;
        let mut views = Vec::new();
        let mut stuck: Vec<(usize, u16, u64)> = Vec::new();
        let now = Instant::now();
        let generation = self.dumps;
        if let Some(stream) = self.stream.as_mut() {
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
        let streaming = self.stream.is_some();
        let now_ns = stream::now_ns();
        for (i, t) in self.targets.iter_mut().enumerate() {
            let mut view =
                NamespaceView { inode: t.inode, label: t.label.clone(), ..Default::default() };
            // tcp_info only where some CLOSE-WAIT socket's age is not known yet.
            let info = !t.aged;
            let looked = if streaming { dump_beside(t, now_ns) } else { dump(t, info) };
            match looked {
                Ok(records) => {
                    let born = &mut self.born;
                    let ns = t.inode;
                    let kept = t.ledger.iter().flat_map(|l| l.entries.values());
                    let rows = records.iter().map(Row::Dumped).chain(kept.map(Row::Kept));
                    classify(rows, &self.ports, &mut view, |port, row| match row {
                        Row::Dumped(r) => {
                            stuck.push((i, port, r.inode));
                            let e = born.entry((ns, socket_id(r))).or_insert_with(|| {
                                let since = match r.idle_ms {
                                    Some(ms) => now
                                        .checked_sub(Duration::from_millis(u64::from(ms)))
                                        .unwrap_or(now),
                                    None => now,
                                };
                                (since, generation)
                            });
                            e.1 = generation;
                            now.duration_since(e.0).as_secs_f64()
                        }
                        Row::Kept(e) => {
                            stuck.push((i, port, e.inode));
                            now_ns.saturating_sub(e.since_ns) as f64 / 1e9
                        }
                    });
                    t.aged = true;
                }
                Err(e) => {
                    view.error = Some(e);
                    t.table = None;
                    t.aged = false;
                    t.ledger = None;
                }
            }
            views.push(view);
        }
        self.born.retain(|_, v| v.1 == generation);
        let inodes: InodeSet = stuck.iter().map(|s| s.2).filter(|i| *i != 0).collect();
        let found = self.cache.holders(&inodes);
        // Each (namespace, port)'s stuck sockets together, in one pass.
        stuck.sort_unstable();
        for (i, view) in views.iter_mut().enumerate() {
            for p in &mut view.ports {
                let from = stuck.partition_point(|s| (s.0, s.1) < (i, p.port));
                let to = stuck.partition_point(|s| (s.0, s.1) <= (i, p.port));
                let mine = stuck[from..to].iter().map(|s| s.2);
                p.holders = top_holders(mine, &found, self.top);
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
fn open_stream() -> Option<Stream> {
    if std::env::var("CWLAB_STREAM").as_deref() == Ok("0") {
        return None;
    }
    Stream::open().ok()
}

/// With the stream: the sockets in the states it does not keep (dumped), after seeding the
/// ledger with a dump of the states it keeps when it has none, and giving a file's inode to any
/// CLOSE-WAIT socket the ledger has without one (accepted after the FIN: no event says so).
fn dump_beside(t: &mut Target, now_ns: u64) -> Result<Vec<SocketRecord>, String> {
    open_again(t)?;
    let table = t.table.as_mut().expect("opened above");
    let rest = Query { states: stream::dumped(), ..Query::default() };
    let kept = Query { states: States::of(&stream::STREAMED), ..Query::default() };
    let fail = |e: cwlab_sampler::Error| e.to_string();
    let Some(ledger) = t.ledger.as_mut() else {
        let all = table.two(&Query { info: true, ..kept }, &rest).map_err(fail)?;
        let (streamed, rest): (Vec<SocketRecord>, Vec<SocketRecord>) =
            all.into_iter().partition(|r| stream::STREAMED.contains(&r.state));
        t.ledger = Some(Ledger::seed(&streamed, now_ns));
        return Ok(rest);
    };
    if ledger.unfiled(TcpState::CloseWait).next().is_none() {
        return table.first.list(&rest).map_err(fail);
    }
    let cw = Query { states: States::of(&[TcpState::CloseWait]), ..Query::default() };
    let all = table.two(&rest, &cw).map_err(fail)?;
    let (cw, rest): (Vec<SocketRecord>, Vec<SocketRecord>) =
        all.into_iter().partition(|r| r.state == TcpState::CloseWait);
    ledger.file(&cw);
    Ok(rest)
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

/// One socket of a look: as a dump found it, or as the stream keeps it.
#[derive(Clone, Copy)]
enum Row<'a> {
    Dumped(&'a SocketRecord),
    Kept(&'a stream::Entry),
}

impl Row<'_> {
    fn state(&self) -> TcpState {
        match self {
            Row::Dumped(r) => r.state,
            Row::Kept(e) => e.state,
        }
    }

    fn ports(&self) -> (u16, u16) {
        match self {
            Row::Dumped(r) => (r.local.port(), r.remote.port()),
            Row::Kept(e) => (e.local_port, e.remote_port),
        }
    }
}

/// Sorts sockets into service ports (server and client side) and `other`; calls `stuck` for
/// each server CLOSE-WAIT socket, which answers how long it has been in CLOSE-WAIT, in seconds.
/// Counted in arrays indexed by port and state: this runs once per socket of the namespace.
fn classify<'a>(
    rows: impl Iterator<Item = Row<'a>> + Clone,
    only: &[u16],
    view: &mut NamespaceView,
    mut stuck: impl FnMut(u16, Row<'a>) -> f64,
) {
    let listening: BTreeSet<u16> =
        rows.clone().filter(|r| r.state() == TcpState::Listen).map(|r| r.ports().0).collect();
    let service: Vec<u16> =
        if only.is_empty() { listening.iter().copied().collect() } else { only.to_vec() };
    let mut index = vec![u16::MAX; 65_536];
    let mut ports: Vec<(StateCounts, StateCounts, Option<f64>)> = Vec::new();
    for p in &service {
        if index[usize::from(*p)] == u16::MAX {
            index[usize::from(*p)] = ports.len() as u16;
            ports.push(([0; 12], [0; 12], None));
        }
    }
    let mut other: StateCounts = [0; 12];
    for r in rows {
        let (lp, rp) = r.ports();
        let state = r.state();
        let st = state as usize;
        match (index[usize::from(lp)], index[usize::from(rp)]) {
            (i, _) if i != u16::MAX => {
                let p = &mut ports[usize::from(i)];
                p.0[st] += 1;
                if state == TcpState::CloseWait {
                    let s = stuck(lp, r);
                    p.2 = Some(p.2.map_or(s, |o: f64| o.max(s)));
                }
            }
            (_, i) if i != u16::MAX => ports[usize::from(i)].1[st] += 1,
            _ => other[st] += 1,
        }
    }
    let mut views: Vec<PortView> = service
        .iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(|p| {
            let (server, client, oldest) = &ports[usize::from(index[usize::from(*p)])];
            PortView {
                port: *p,
                listening: listening.contains(p),
                server: counts_map(server),
                client: counts_map(client),
                close_wait_oldest_s: *oldest,
                ..Default::default()
            }
        })
        .collect();
    views.sort_by_key(|p| p.port);
    view.ports = views;
    view.other = counts_map(&other);
}

/// The processes holding the most of `inodes`, with their descriptor counts and limits.
fn top_holders(
    inodes: impl Iterator<Item = u64>,
    found: &holders::Holders,
    top: usize,
) -> Vec<Holding> {
    let mut per_pid: FastMap<u32, Vec<u64>> = FastMap::default();
    for inode in inodes {
        for h in found.of(inode) {
            per_pid.entry(h.pid).or_default().push(inode);
        }
    }
    for v in per_pid.values_mut() {
        v.sort_unstable();
        v.dedup();
    }
    let mut v: Vec<Holding> = per_pid
        .into_iter()
        .filter_map(|(pid, socks)| {
            let p = found.processes.get(&pid)?;
            Some(Holding {
                pid,
                name: p.comm.clone(),
                sockets: socks.len() as u32,
                open_fds: cwlab_sampler::fds::count(pid).unwrap_or(0),
                max_fds: max_fds(pid),
            })
        })
        .collect();
    v.sort_by(|a, b| b.sockets.cmp(&a.sockets).then(a.pid.cmp(&b.pid)));
    v.truncate(top);
    v
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

/// How often the holders are found by a whole walk of /proc, whatever the cache says.
const REWALK: Duration = Duration::from_secs(30);

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
}

impl HolderCache {
    fn holders(&mut self, inodes: &InodeSet) -> holders::Holders {
        if self.walked.is_some_and(|t| t.elapsed() < REWALK) {
            if let Some(h) = self.of_known(inodes) {
                return h;
            }
        }
        self.walk(inodes)
    }

    fn walk(&mut self, inodes: &InodeSet) -> holders::Holders {
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
