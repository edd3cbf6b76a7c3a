//! One look at the watched namespaces: each namespace's sockets counted per port
//! ([`crate::tally`]), who holds the stuck ones ([`crate::holders`]), what the looks before
//! add ([`crate::history`]), and the model's reading of each side of each service
//! ([`cwlab_model::diagnosis::of_watch`]): the watch writes no verdict of its own.
//!
//! Where the kernel takes the lab's tracepoint program ([`cwlab_sampler::stream`]), the states
//! only full sockets are in (the server's half of a leak) come from a ledger the kernel's reports
//! keep, seeded by one dump, and a look dumps only the other states (timewait and request
//! sockets change without a report). Elsewhere each look dumps every state (with `tcp_info` on
//! the first, for the ages).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cwlab_model::diagnosis::{of_watch, Service, Watched};
use cwlab_model::watch::{Holding, NamespaceView, RemoteView, Snapshot};
use cwlab_model::{FindingKind, TcpState};
use cwlab_sampler::holders::FastMap;
use cwlab_sampler::stream::{self, Stream};

use crate::history::{History, Key};
use crate::holders::{Group, Held, HolderCache};
use crate::tally::{self, Ages, PortStuck};
use crate::targets::{self, Namespaces, Target};
use crate::Error;

/// How long a CLOSE-WAIT socket may wait unclosed before the reading takes it for stuck, unless
/// told ([`Watcher::with_stuck`]): a server's handler closes what it was given within its
/// requests' time, and a pool that checks its connections on their next use finds the FIN
/// within its requests' pace.
pub const STUCK: Duration = Duration::from_secs(60);

/// Looks at socket tables and remembers enough for rates.
pub struct Watcher {
    which: Namespaces,
    targets: Vec<Target>,
    ports: Vec<u16>,
    top: usize,
    stuck: Duration,
    /// Each service's counts, closings and bound over the looks.
    history: History,
    /// When each CLOSE-WAIT socket (namespace, socket id) entered CLOSE-WAIT, as far as the
    /// watcher knows: from `tcp_info` on the first look that saw it in a namespace, then kept,
    /// so that later looks need no `tcp_info` (it quadruples what a dump carries).
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
    /// listener, and the ports of the services stuck sockets are on), `top` is how many holders
    /// to name per port and remote service.
    pub fn new(which: Namespaces, ports: Vec<u16>, top: usize) -> Result<Watcher, Error> {
        let targets = targets::named(&which)?;
        let (stream, stream_error) = match open_stream() {
            Ok(s) => (Some(s), None),
            Err(e) => (None, Some(e)),
        };
        Ok(Watcher {
            which,
            targets,
            ports,
            top,
            stuck: STUCK,
            history: History::default(),
            born: FastMap::default(),
            cache: HolderCache::default(),
            stream,
            stream_error,
            dropped: 0,
            dumps: 0,
        })
    }

    /// The same watcher, taking CLOSE-WAIT for stuck once it has waited `stuck`
    /// (default [`STUCK`]).
    pub fn with_stuck(mut self, stuck: Duration) -> Watcher {
        self.stuck = stuck;
        self
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
            targets::find_all(&mut self.targets);
        }
        self.dumps += 1;
        self.catch_up();
        let now = Instant::now();
        self.history.begin();
        let (mut views, stuck) = self.tally(now);
        let groups = groups(&views, &stuck);
        let held = self.cache.top(&groups, self.top);
        self.read(&mut views, stuck, held, now);
        self.history.end(now);
        Snapshot {
            t_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            took_ms: started.elapsed().as_secs_f64() * 1000.0,
            namespaces: views,
        }
    }

    /// Each namespace counted, and each of its ports' stuck sockets.
    fn tally(&mut self, now: Instant) -> (Vec<NamespaceView>, Vec<Vec<PortStuck>>) {
        let mut views = Vec::new();
        let mut stuck = Vec::new();
        let generation = self.dumps;
        let streaming = self.stream.is_some();
        let now_ns = stream::now_ns();
        for t in &mut self.targets {
            let mut view =
                NamespaceView { inode: t.inode, label: t.label.clone(), ..Default::default() };
            let counted = if streaming {
                tally::streamed(t, &self.ports, now_ns)
            } else {
                let ages = Ages { born: &mut self.born, now, generation };
                tally::dumped(t, &self.ports, ages)
            };
            match counted {
                Ok(tally) => {
                    stuck.push(tally.into_view(&mut view));
                    t.aged = true;
                }
                Err(e) => {
                    view.error = Some(e);
                    self.history.failed(t.inode);
                    t.failed();
                    stuck.push(Vec::new());
                }
            }
            views.push(view);
        }
        self.born.retain(|_, v| v.1 == generation);
        (views, stuck)
    }

    /// Each port's holders, remote services and readings into `views`, the holders in the
    /// order of [`groups`].
    fn read(
        &mut self,
        views: &mut [NamespaceView],
        stuck: Vec<Vec<PortStuck>>,
        held: Vec<Vec<Held>>,
        now: Instant,
    ) {
        let mut held = held.into_iter();
        for (view, stuck) in views.iter_mut().zip(stuck) {
            for (p, s) in view.ports.iter_mut().zip(stuck) {
                p.holders = held.next().unwrap_or_default().into_iter().map(|h| h.0).collect();
                let cw = p.server.get(&TcpState::CloseWait).copied().unwrap_or(0);
                let r = self.history.server(view.inode, p.port, cw, now);
                p.close_wait_per_min = r.per_min;
                let unfiled = s.server.iter().filter(|i| **i == 0).count() as u32;
                let w = Watched {
                    service: Service::Port(p.port),
                    close_wait: cw,
                    unfiled,
                    oldest_s: p.close_wait_oldest_s,
                    per_min: r.per_min,
                    cleared: 0,
                    bound: None,
                    watched_s: r.watched_s,
                    stuck_s: self.stuck.as_secs_f64(),
                    holders: &p.holders,
                };
                p.finding = of_watch(&w);
                for (addr, remote) in s.remotes {
                    let holders = held.next().unwrap_or_default();
                    p.remotes.push(self.remote(view.inode, addr, remote, holders, now));
                }
            }
        }
    }

    /// One remote service's client-side CLOSE-WAIT, read: each holder's pool on its own (one
    /// process's closings say nothing of another's), every holder's, not only the top ones
    /// shown; the finding the first leak among them (they come most sockets first), else the
    /// first bounded pool; all together where no holder could be named.
    fn remote(
        &mut self,
        ns: u64,
        addr: std::net::SocketAddr,
        r: tally::Remote,
        held: Vec<Held>,
        now: Instant,
    ) -> RemoteView {
        let n = r.stuck.len() as u32;
        let mut inodes = r.stuck.clone();
        inodes.sort_unstable();
        let all = self.history.client(ns, addr, &inodes, now);
        let age: FastMap<u64, f64> = r.stuck.iter().copied().zip(r.ages.iter().copied()).collect();
        let mut findings = Vec::new();
        for (h, mut inodes) in held.iter().cloned() {
            inodes.sort_unstable();
            let oldest = inodes.iter().filter_map(|i| age.get(i)).copied().reduce(f64::max);
            let p = self.history.pool(ns, addr, h.pid, inodes, now);
            let holders = [h];
            let w = Watched { oldest_s: oldest, unfiled: 0, ..self.watched(addr, &p, &holders) };
            findings.extend(of_watch(&Watched { close_wait: holders[0].sockets, ..w }));
        }
        let named = !held.is_empty();
        let holders: Vec<Holding> = held.into_iter().take(self.top).map(|h| h.0).collect();
        if !named {
            let unfiled = r.stuck.iter().filter(|i| **i == 0).count() as u32;
            let w = Watched {
                close_wait: n,
                unfiled,
                oldest_s: r.oldest,
                ..self.watched(addr, &all, &[])
            };
            findings.extend(of_watch(&w));
        }
        let first = |k| findings.iter().position(|f: &cwlab_model::Finding| f.kind == k);
        let pick = first(FindingKind::PoolLeak).or_else(|| first(FindingKind::PoolBounded));
        RemoteView {
            remote: addr,
            close_wait: n,
            close_wait_oldest_s: r.oldest,
            close_wait_per_min: all.per_min,
            cleared: self.history.cleared(ns, addr),
            holders,
            finding: pick.map(|i| findings.swap_remove(i)),
        }
    }

    /// The numbers of a client-side reading from the history's, the counts left to fill.
    fn watched<'a>(
        &self,
        addr: std::net::SocketAddr,
        h: &crate::history::Reading,
        holders: &'a [Holding],
    ) -> Watched<'a> {
        Watched {
            service: Service::Remote(addr),
            close_wait: 0,
            unfiled: 0,
            oldest_s: None,
            per_min: h.per_min,
            cleared: h.cleared,
            bound: h.bound,
            watched_s: h.watched_s,
            stuck_s: self.stuck.as_secs_f64(),
            holders,
        }
    }
}

/// The holder cache's groups: for each namespace's port, its server CLOSE-WAIT, then its client
/// CLOSE-WAIT to each remote service.
fn groups<'a>(views: &[NamespaceView], stuck: &'a [Vec<PortStuck>]) -> Vec<Group<'a>> {
    let mut groups = Vec::new();
    for (v, stuck) in views.iter().zip(stuck) {
        for (p, s) in v.ports.iter().zip(stuck) {
            let id = Key::Server(p.port).id();
            groups.push(Group { ns: v.inode, id, inodes: &s.server[..], each: false });
            for (addr, r) in &s.remotes {
                let id = Key::Client(*addr).id();
                groups.push(Group { ns: v.inode, id, inodes: &r.stuck[..], each: true });
            }
        }
    }
    groups
}

/// Whether to keep the server's half of each table from the kernel's reports: where the
/// kernel takes the program, unless `CWLAB_STREAM=0` (for comparing the two ways).
fn open_stream() -> Result<Stream, String> {
    if std::env::var("CWLAB_STREAM").as_deref() == Ok("0") {
        return Err("turned off by CWLAB_STREAM=0".into());
    }
    Stream::open().map_err(|e| e.to_string())
}
