//! The two witnesses beyond sampling, on a thread of their own: the kernel's state transitions
//! (a tracefs instance) and the segments on the wire (a packet socket on loopback), both filtered
//! to the run's port. Each is set up before the first client connects; either may be missing, and
//! the report says why.

use std::io::BufWriter;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use cwlab_model::events::Witnessed;
use cwlab_model::evidence::{
    self, ConnectionTrace, Packets, Segment, Step, Transition, TransitionCount, Transitions, FLAGS,
};
use cwlab_model::report::Side;
use cwlab_sampler::capture::{Capture, Tally};
use cwlab_sampler::tracefs::{RawTransition, Tracer};
use rustix::event::{poll, PollFd, PollFlags};

use cwlab_os::AtomicFile;

type Pcap = BufWriter<std::fs::File>;

/// `cwlab janitor DIR`: waits for stdin to close (the runner ended, however it ended), then
/// removes the tracefs instance `DIR`, retrying while the runner's last open file in it closes.
pub fn janitor(dir: &std::path::Path) -> i32 {
    let mut buf = [0u8; 64];
    while matches!(rustix::io::read(rustix::stdio::stdin(), &mut buf), Ok(n) if n > 0) {}
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match std::fs::remove_dir(dir) {
            Err(e)
                if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error())
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::yield_now()
            }
            _ => return 0,
        }
    }
}

/// A `cwlab janitor` for the tracefs instance: its stdin is a pipe only the runner writes to.
struct Janitor {
    child: std::process::Child,
}

impl Janitor {
    fn start(exe: &std::path::Path, dir: &std::path::Path, mark: &str) -> Option<Janitor> {
        let child = std::process::Command::new(exe)
            .arg(cwlab_model::protocol::entry::JANITOR)
            .arg(dir)
            .env(crate::RUN_MARK, mark)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .ok()?;
        Some(Janitor { child })
    }
}

impl Drop for Janitor {
    fn drop(&mut self) {
        self.child.stdin.take();
        let _ = self.child.wait();
    }
}

/// Keeps the kernel stamping packets as they arrive for as long as it lives. The kernel turns
/// stamping on for everyone when the first socket asks, but from a work queue, a moment later:
/// asked for at the start of a run, it is on before the capture's first packet (otherwise the
/// first packets would be stamped when read).
pub fn keep_stamping() -> Option<OwnedFd> {
    use rustix::net::{socket_with, AddressFamily, SocketFlags, SocketType};
    let fd =
        socket_with(AddressFamily::INET, SocketType::DGRAM, SocketFlags::CLOEXEC, None).ok()?;
    // nix: rustix has no SO_TIMESTAMPNS.
    nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::ReceiveTimestampns, &true).ok()?;
    Some(fd)
}

/// The witnesses at work.
pub struct Witness {
    _janitor: Option<Janitor>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Gathered>>,
    trace_note: Option<String>,
    capture_note: Option<String>,
    pcap: Option<(AtomicFile, String)>,
    live: Live,
}

/// What the witnesses have seen so far, for a live view: updated by the witness thread as it
/// reads, taken by the run with each sample.
#[derive(Clone, Default)]
pub struct Live(Arc<Mutex<LiveState>>);

#[derive(Default)]
struct LiveState {
    counts: std::collections::BTreeMap<(Side, cwlab_model::TcpState, cwlab_model::TcpState), u64>,
    first: Option<ConnectionTrace>,
    changed: bool,
}

impl Live {
    /// What changed since the last call, if anything did.
    pub fn take(&self) -> Option<Witnessed> {
        let mut s = self.0.lock().ok()?;
        if !std::mem::take(&mut s.changed) {
            return None;
        }
        Some(Witnessed {
            counts: s
                .counts
                .iter()
                .map(|(&(side, from, to), &connections)| TransitionCount {
                    side,
                    from,
                    to,
                    connections,
                })
                .collect(),
            connection: s.first.clone(),
        })
    }

    fn add(&self, transitions: &[Transition], segments: &[Segment]) {
        if transitions.is_empty() && segments.is_empty() {
            return;
        }
        let Ok(mut s) = self.0.lock() else { return };
        s.changed = true;
        for t in transitions {
            *s.counts.entry((t.side, t.from, t.to)).or_insert(0) += 1;
        }
        let port = s.first.as_ref().map(|c| c.client_port).or_else(|| {
            let t = transitions.iter().map(|t| (t.t_us, t.client_port));
            t.chain(segments.iter().map(|s| (s.t_us, s.client_port))).min().map(|(_, p)| p)
        });
        let Some(port) = port else { return };
        let first = s.first.get_or_insert(ConnectionTrace {
            client_port: port,
            like_it: 0,
            steps: Vec::new(),
        });
        first.steps.extend(transitions.iter().filter(|t| t.client_port == port).map(Step::from));
        first.steps.extend(segments.iter().filter(|s| s.client_port == port).map(Step::from));
        first.steps.sort_by_key(Step::t_us);
    }
}

struct Gathered {
    events: Vec<Transition>,
    segments: Vec<Segment>,
    forks: Option<Vec<cwlab_sampler::tracefs::Fork>>,
    lost: u64,
    tally: Option<Tally>,
    pcap: Option<Pcap>,
    error: Option<String>,
}

impl Witness {
    /// Starts both witnesses for `port`: the tracefs instance is named `instance`; segments are
    /// captured on interface `iface` and go to `pcap` when given.
    pub fn start(
        exe: &std::path::Path,
        mark: &str,
        instance: &str,
        iface: &str,
        port: u16,
        t0_us: i64,
        pcap: Option<(AtomicFile, String)>,
    ) -> Witness {
        let janitor = cwlab_sampler::tracefs::instance_dir(instance)
            .and_then(|dir| Janitor::start(exe, &dir, mark));
        let (tracer, trace_note) = match Tracer::start(instance, port) {
            Ok(t) => (Some(t), None),
            Err(e) => (None, Some(e)),
        };
        let mut pcap = pcap;
        let writer = match pcap.as_mut() {
            Some((f, _)) => f.file().try_clone().ok().map(BufWriter::new),
            None => None,
        };
        let (capture, capture_note) = match Capture::open(iface, port, writer) {
            Ok(c) => (Some(c), None),
            Err(e) => {
                pcap = None;
                (None, Some(format!("no packet capture ({e})")))
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let live = Live::default();
        let seen = live.clone();
        let at = Attribution { port, t0_us };
        let handle = std::thread::spawn(move || watch(tracer, capture, &flag, &seen, at));
        Witness {
            _janitor: janitor,
            stop,
            handle: Some(handle),
            trace_note,
            capture_note,
            pcap,
            live,
        }
    }

    /// What the witnesses have seen so far.
    pub fn live(&self) -> Live {
        self.live.clone()
    }

    /// Stops both and makes their report sections, with the connections kept step by step (one
    /// of each way connections went, `wanted` if it was one of them, the earliest). Also returns
    /// the forks the kernel traced, where it could.
    pub fn finish(mut self, wanted: Option<u16>) -> Finished {
        self.stop.store(true, Ordering::SeqCst);
        let mut g = self.handle.take().and_then(|h| h.join().ok());
        let forks = g.as_mut().and_then(|g| g.forks.take());
        self._janitor.take();
        let mut events: Vec<Transition> = match (&self.trace_note, &g) {
            (None, Some(g)) => g.events.clone(),
            _ => Vec::new(),
        };
        // The tracepoint sees every namespace, filtered by port alone: a run in another
        // namespace whose client took the same ephemeral port would be counted too. The capture
        // is this namespace's own: only connections it saw are the run's.
        if let (None, Some(Some(tally))) = (&self.capture_note, g.as_ref().map(|g| &g.tally)) {
            if !tally.connections.is_empty() {
                events.retain(|e| tally.connections.contains_key(&e.client_port));
            }
        }
        let segments: &[Segment] = match (&self.capture_note, &g) {
            (None, Some(g)) => &g.segments,
            _ => &[],
        };
        let connections = evidence::traces(&events, segments, wanted);
        let transitions = match (&self.trace_note, &g) {
            (None, Some(g)) => evidence::analyse(events, g.lost),
            (note, _) => Transitions {
                available: false,
                note: note.clone().or_else(|| Some("the witness thread failed".into())),
                ..Transitions::default()
            },
        };
        let packets = match (&self.capture_note, g) {
            (None, Some(g)) if g.tally.is_some() => {
                let tally = g.tally.unwrap();
                let mut p = packets(&tally);
                if let (Some((file, shown)), Some(w)) = (self.pcap.take(), g.pcap) {
                    drop(w);
                    match file.commit() {
                        Ok(()) => p.pcap = Some(shown),
                        Err(e) => p.note = Some(format!("the pcap file could not be written: {e}")),
                    }
                }
                if let Some(e) = g.error {
                    p.note = Some(e);
                }
                p
            }
            (note, _) => Packets {
                available: false,
                note: note.clone().or_else(|| Some("the capture failed".into())),
                ..Packets::default()
            },
        };
        Finished { transitions, packets, connections, forks }
    }
}

/// What the witnesses gave.
pub struct Finished {
    /// The kernel's transitions.
    pub transitions: Transitions,
    /// The segments, counted.
    pub packets: Packets,
    /// A few connections step by step.
    pub connections: Vec<ConnectionTrace>,
    /// The forks the kernel traced, where it could.
    pub forks: Option<Vec<cwlab_sampler::tracefs::Fork>>,
}

/// Which transitions and segments are the run's, and its clock's zero.
#[derive(Clone, Copy)]
struct Attribution {
    port: u16,
    t0_us: i64,
}

impl Drop for Witness {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn watch(
    mut tracer: Option<Tracer>,
    mut capture: Option<Capture<Pcap>>,
    stop: &AtomicBool,
    live: &Live,
    at: Attribution,
) -> Gathered {
    let mut raw = Vec::new();
    let mut error = None;
    let mut events: Vec<Transition> = Vec::new();
    let mut segments: Vec<Segment> = Vec::new();
    let mut read = 0;
    while !stop.load(Ordering::SeqCst) {
        let mut fds = Vec::new();
        if let Some(fd) = tracer.as_ref().and_then(Tracer::fd) {
            fds.push(PollFd::from_borrowed_fd(fd, PollFlags::IN));
        }
        if let Some(c) = capture.as_ref() {
            fds.push(PollFd::from_borrowed_fd(c.fd(), PollFlags::IN));
        }
        let _ = poll(&mut fds, 20);
        drop(fds);
        if let Some(t) = tracer.as_mut() {
            t.read_ready(&mut raw);
        }
        if let Some(c) = capture.as_mut() {
            if let Err(e) = c.read_ready() {
                error.get_or_insert(format!("the capture stopped early: {e}"));
            }
        }
        let (e0, s0) = (events.len(), segments.len());
        events.extend(raw.drain(..).filter_map(|r| attribute(&r, at)));
        if let Some(c) = capture.as_ref() {
            let all = &c.tally().segments;
            segments.extend(all[read..].iter().map(|s| segment(s, at)));
            read = all.len();
        }
        live.add(&events[e0..], &segments[s0..]);
    }
    let lost = tracer.as_ref().map_or(0, Tracer::lost);
    let forks = tracer.and_then(|t| t.stop(&mut raw));
    events.extend(raw.drain(..).filter_map(|r| attribute(&r, at)));
    let (tally, pcap) = match capture.map(Capture::finish) {
        Some(Ok((t, w))) => {
            segments.extend(t.segments[read..].iter().map(|s| segment(s, at)));
            (Some(t), w)
        }
        Some(Err(e)) => {
            error.get_or_insert(format!("the capture failed: {e}"));
            (None, None)
        }
        None => (None, None),
    };
    Gathered { events, segments, forks, lost, tally, pcap, error }
}

/// A segment on the run's clock.
fn segment(s: &cwlab_sampler::capture::Segment, at: Attribution) -> Segment {
    Segment {
        t_us: s.t_us - at.t0_us,
        from: if s.from_server { Side::Server } else { Side::Client },
        client_port: s.client_port,
        flags: s.flags,
        len: s.len,
    }
}

/// Names the side and the connection of a transition; drops the listener's own, a client's
/// first (it has no port yet) and one that leaves the state as it was.
fn attribute(r: &RawTransition, at: Attribution) -> Option<Transition> {
    let Attribution { port, t0_us } = at;
    let (side, client_port) = if r.sport == port {
        (Side::Server, r.dport)
    } else if r.dport == port {
        (Side::Client, r.sport)
    } else {
        return None;
    };
    // The kernel reports tcp_set_state() even when the state does not change: a socket that was
    // shutdown(SHUT_WR) and is then close()d while its FIN is unacknowledged goes FIN-WAIT-1 →
    // FIN-WAIT-1 (busybox httpd does it). No state was left: nothing to tell.
    if client_port == 0 || r.from == r.to {
        return None;
    }
    Some(Transition { t_us: r.t_us - t0_us, side, client_port, from: r.from, to: r.to })
}

fn packets(t: &Tally) -> Packets {
    let by_flag = |server: bool| {
        FLAGS
            .iter()
            .map(|(name, bit)| (name.to_string(), t.connections_with(server, *bit)))
            .filter(|(_, n)| *n > 0)
            .collect()
    };
    Packets {
        available: true,
        note: None,
        pcap: None,
        server_segments: t.server_segments.clone(),
        client_segments: t.client_segments.clone(),
        connections: t.connections.len() as u64,
        server_sent: by_flag(true),
        client_sent: by_flag(false),
        dropped: t.dropped,
    }
}
