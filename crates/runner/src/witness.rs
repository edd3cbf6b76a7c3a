//! The two witnesses beyond sampling, on a thread of their own: the kernel's state transitions
//! (a tracefs instance) and the segments on the wire (a packet socket on loopback), both filtered
//! to the run's port. Each is set up before the first client connects; either may be missing, and
//! the report says why.

use std::io::BufWriter;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use cwlab_model::evidence::{self, Packets, Transition, Transitions, FLAGS};
use cwlab_model::report::Side;
use cwlab_sampler::capture::{Capture, Tally};
use cwlab_sampler::tracefs::{RawTransition, Tracer};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::output::AtomicFile;

type Pcap = BufWriter<std::fs::File>;

/// `cwlab janitor DIR`: waits for stdin to close (the runner ended, however it ended), then
/// removes the tracefs instance `DIR`, retrying while the runner's last open file in it closes.
pub fn janitor(dir: &std::path::Path) -> i32 {
    let mut buf = [0u8; 64];
    while matches!(nix::unistd::read(0, &mut buf), Ok(n) if n > 0) {}
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match std::fs::remove_dir(dir) {
            Err(e)
                if e.raw_os_error() == Some(libc::EBUSY)
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
            .arg("janitor")
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

/// The witnesses at work.
pub struct Witness {
    _janitor: Option<Janitor>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Gathered>>,
    trace_note: Option<String>,
    capture_note: Option<String>,
    pcap: Option<(AtomicFile, String)>,
}

struct Gathered {
    raw: Vec<RawTransition>,
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
        let handle = std::thread::spawn(move || watch(tracer, capture, &flag));
        Witness { _janitor: janitor, stop, handle: Some(handle), trace_note, capture_note, pcap }
    }

    /// Stops both and makes their report sections; `t0_us` is the run's LISTEN on the monotonic
    /// clock, `first` how many connections to keep step by step. Also returns the forks the
    /// kernel traced, where it could.
    pub fn finish(
        mut self,
        port: u16,
        t0_us: i64,
        first: usize,
    ) -> (Transitions, Packets, Option<Vec<cwlab_sampler::tracefs::Fork>>) {
        self.stop.store(true, Ordering::SeqCst);
        let mut g = self.handle.take().and_then(|h| h.join().ok());
        let forks = g.as_mut().and_then(|g| g.forks.take());
        self._janitor.take();
        let transitions = match (&self.trace_note, &g) {
            (None, Some(g)) => {
                let events = g.raw.iter().filter_map(|r| attribute(r, port, t0_us)).collect();
                evidence::analyse(events, g.lost, first)
            }
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
        (transitions, packets, forks)
    }
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
) -> Gathered {
    let mut raw = Vec::new();
    let mut error = None;
    while !stop.load(Ordering::SeqCst) {
        let mut fds = Vec::new();
        if let Some(fd) = tracer.as_ref().and_then(Tracer::fd) {
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
        }
        if let Some(c) = capture.as_ref() {
            fds.push(PollFd::new(c.fd(), PollFlags::POLLIN));
        }
        let _ = poll(&mut fds, PollTimeout::from(20u16));
        drop(fds);
        if let Some(t) = tracer.as_mut() {
            t.read_ready(&mut raw);
        }
        if let Some(c) = capture.as_mut() {
            if let Err(e) = c.read_ready() {
                error.get_or_insert(format!("the capture stopped early: {e}"));
            }
        }
    }
    let lost = tracer.as_ref().map_or(0, Tracer::lost);
    let forks = tracer.and_then(|t| t.stop(&mut raw));
    let (tally, pcap) = match capture.map(Capture::finish) {
        Some(Ok((t, w))) => (Some(t), w),
        Some(Err(e)) => {
            error.get_or_insert(format!("the capture failed: {e}"));
            (None, None)
        }
        None => (None, None),
    };
    Gathered { raw, forks, lost, tally, pcap, error }
}

/// Names the side and the connection of a transition; drops the listener's own and a client's
/// first (it has no port yet).
fn attribute(r: &RawTransition, port: u16, t0_us: i64) -> Option<Transition> {
    let (side, client_port) = if r.sport == port {
        (Side::Server, r.dport)
    } else if r.dport == port {
        (Side::Client, r.sport)
    } else {
        return None;
    };
    if client_port == 0 {
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
