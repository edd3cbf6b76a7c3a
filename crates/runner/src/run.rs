//! One run of one scenario, from isolation to verdict.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cwlab_model::evidence::{Packets, Transitions};
use cwlab_model::expect::{evaluate, Evidence};
use cwlab_model::report::{
    Acceptor, ClientOutcome, Holder, Isolation, Phase, PhaseMark, Report, Sample, ScenarioRef,
    ServerOutcome, Verdict, SCHEMA_VERSION,
};
use cwlab_model::scenario::Topology;
use cwlab_model::{duration, Scenario};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::isolation::{self, IsolationMode};
use crate::sampling::{PhaseCell, Probe, Sampler};
use crate::server::{Launch, Server};
use crate::witness::Witness;
use crate::{clients, hosts, io, signals, stuck, RunError};

/// How to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `cwlab` binary, re-executed as `cwlab serve` for the server.
    pub exe: PathBuf,
    /// How to keep the run apart from the machine.
    pub isolation: IsolationMode,
    /// Overrides the scenario's deadline.
    pub timeout: Option<Duration>,
    /// The mark put on every process the run starts (the `CWLAB_RUN` variable).
    pub run_id: String,
    /// Where to write the run's packets as a pcap file, if anywhere.
    pub pcap: Option<PathBuf>,
    /// Stop before each phase until a line arrives on stdin (a presenter's pace); the deadline
    /// then grows to an hour.
    pub step: bool,
}

/// What a run reports as it goes.
#[derive(Debug)]
pub enum Event<'a> {
    /// The server listens; sampling starts.
    Started {
        /// The scenario.
        scenario: &'a Scenario,
        /// The isolation in force.
        isolation: Isolation,
        /// Why it fell back, if it did.
        note: Option<&'a str>,
        /// The server's port.
        port: u16,
    },
    /// A phase began.
    Phase(Phase, u64),
    /// A sample was taken.
    Sample(&'a Sample),
    /// With `step`, the run waits for a line on stdin before this phase.
    Waiting(Phase),
}

/// Why a run stopped before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Interrupted(i32),
    Timeout,
}

/// Everything a run has gathered so far; a report can be made of it at any point.
struct Draft<'e> {
    started: Instant,
    t0: Instant,
    phase: PhaseCell,
    marks: Vec<PhaseMark>,
    samples: Vec<Sample>,
    on_event: &'e mut dyn FnMut(Event<'_>),
    isolation: Isolation,
    note: Option<String>,
    port: u16,
    acceptor: u32,
    fds_baseline: Option<u32>,
    fds_end: Option<u32>,
    holders: Vec<Holder>,
    outcome: ClientOutcome,
    server: ServerOutcome,
    fds_by_role: std::collections::BTreeMap<cwlab_model::report::Role, u64>,
    transitions: Transitions,
    packets: Packets,
    /// Sockets the clients keep until the end (a half-close).
    kept: Vec<std::net::TcpStream>,
    stop: Option<(Stop, Phase)>,
}

impl Draft<'_> {
    fn now_ms(&self) -> u64 {
        self.t0.elapsed().as_millis() as u64
    }

    fn enter(&mut self, p: Phase) {
        let t = self.now_ms();
        self.phase.set(p);
        self.marks.push(PhaseMark { phase: p, t_ms: t });
        (self.on_event)(Event::Phase(p, t));
    }

    fn push(&mut self, s: Sample) {
        (self.on_event)(Event::Sample(&s));
        self.samples.push(s);
    }

    fn stopped(&mut self, why: Stop) {
        if self.stop.is_none() {
            self.stop = Some((why, self.phase.get()));
        }
    }

    /// Runs `fut` while filing every sample that arrives, until it ends, the deadline passes or a
    /// signal arrives.
    async fn guard<F: Future>(
        &mut self,
        rx: &mut UnboundedReceiver<Sample>,
        wake: Option<&AsyncFd<OwnedFd>>,
        deadline: tokio::time::Instant,
        fut: F,
    ) -> Result<F::Output, Stop> {
        let interrupted = async {
            match wake {
                Some(w) => {
                    let _ = w.readable().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::pin!(fut, interrupted);
        loop {
            tokio::select! {
                biased;
                () = &mut interrupted => {
                    return Err(Stop::Interrupted(signals::received().unwrap_or(libc::SIGINT)))
                }
                () = tokio::time::sleep_until(deadline) => return Err(Stop::Timeout),
                Some(s) = rx.recv() => self.push(s),
                out = &mut fut => return Ok(out),
            }
        }
    }
}

/// Runs one scenario. Call it on a thread that has started no other thread in this run: the
/// isolation moves the calling thread into a private network namespace.
pub fn run(
    scenario: &Scenario,
    opts: &Options,
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<Report, RunError> {
    let started = Instant::now();
    let timeout = opts.timeout.unwrap_or(scenario.timeout);
    let timeout = if opts.step { timeout.max(Duration::from_secs(3600)) } else { timeout };
    let deadline = started + timeout;
    descriptors(scenario)?;
    let (isolation, note) = isolation::enter(opts.isolation)?;
    let two_hosts = scenario.topology == Topology::TwoHosts;
    if two_hosts && isolation != Isolation::Netns {
        return Err(RunError::Environment(format!(
            "{}: topology two-hosts needs network namespaces, and this run has none ({}); run as root",
            scenario.file.display(),
            note.as_deref().unwrap_or("asked for the host's loopback")
        )));
    }
    // Where the server listens, and where the clients connect.
    let (addr, server_host) = if two_hosts {
        (IpAddr::V4(Ipv4Addr::UNSPECIFIED), IpAddr::V4(hosts::SERVER_HOST))
    } else {
        (IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V4(Ipv4Addr::LOCALHOST))
    };
    let mut d = Draft {
        started,
        t0: Instant::now(),
        phase: PhaseCell::default(),
        marks: vec![PhaseMark { phase: Phase::Listen, t_ms: 0 }],
        samples: Vec::new(),
        on_event,
        isolation,
        note,
        port: 0,
        acceptor: 0,
        fds_baseline: None,
        fds_end: None,
        holders: Vec::new(),
        outcome: ClientOutcome::default(),
        server: ServerOutcome::default(),
        fds_by_role: Default::default(),
        transitions: Transitions {
            note: Some("the run stopped before the clients came".into()),
            ..Transitions::default()
        },
        packets: Packets {
            note: Some("the run stopped before the clients came".into()),
            ..Packets::default()
        },
        kept: Vec::new(),
        stop: None,
    };
    let launch = Launch {
        exe: &opts.exe,
        behaviour: scenario.behaviour,
        limits: &scenario.server,
        addr,
        port: scenario.port,
        pid_namespace: isolation == Isolation::Netns,
        net_namespace: two_hosts,
        mark: &opts.run_id,
        deadline,
    };
    let mut server = match Server::start(&launch) {
        Ok(s) => s,
        Err(RunError::Interrupted(sig)) => {
            d.stopped(Stop::Interrupted(sig));
            return Ok(finish(d, scenario, timeout));
        }
        Err(e) => return Err(e),
    };
    let server_ns = two_hosts.then(|| server.pid());
    if let Some(pid) = server_ns {
        hosts::join(pid)?;
    }
    d.t0 = Instant::now();
    d.port = server.port;
    d.acceptor = server.acceptor;
    (d.on_event)(Event::Started { scenario, isolation, note: d.note.as_deref(), port: d.port });
    let t0_us = monotonic_us();
    let pcap = match &opts.pcap {
        Some(path) => Some((
            crate::AtomicFile::create(path).map_err(io(format!("create {}", path.display())))?,
            path.display().to_string(),
        )),
        None => None,
    };
    let instance = format!("cwlab-{}", opts.run_id);
    let iface = if two_hosts { hosts::CLIENT_IFACE } else { "lo" };
    let witness = Witness::start(&opts.exe, &opts.run_id, &instance, iface, d.port, pcap);
    let mut probe = Probe::open(d.port, d.acceptor, server_ns)?;
    let (first, _) = probe.sample(0, Phase::Listen)?;
    d.fds_baseline = first.acceptor_fds;
    d.push(first);

    let (tx, mut rx) = unbounded_channel();
    let mut sampler = Sampler::spawn(
        Probe::open(d.port, d.acceptor, server_ns)?,
        scenario.sample_interval,
        d.t0,
        d.phase.clone(),
        tx,
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io("start the client runtime"))?;
    let target = SocketAddr::new(server_host, d.port);
    rt.block_on(async {
        let wake = match signals::wake() {
            Some(fd) => Some(watch(fd.try_clone_to_owned().map_err(io("watch for signals"))?)?),
            None => None,
        };
        let wake = wake.as_ref();
        let deadline = tokio::time::Instant::from_std(deadline);
        let mut lines = opts.step.then(stdin_lines);
        macro_rules! step {
            ($next:expr) => {
                if let Some(lines) = lines.as_mut() {
                    (d.on_event)(Event::Waiting($next));
                    if let Err(stop) = d.guard(&mut rx, wake, deadline, lines.recv()).await {
                        d.stopped(stop);
                        return Ok(());
                    }
                }
            };
        }
        step!(Phase::Connect);
        d.enter(Phase::Connect);
        let connect = clients::connect_all(target, &scenario.clients);
        let (streams, outcome) = match d.guard(&mut rx, wake, deadline, connect).await {
            Ok(v) => v,
            Err(stop) => {
                d.stopped(stop);
                return Ok(());
            }
        };
        d.outcome = outcome;
        step!(Phase::Close);
        d.enter(Phase::Close);
        let (closed, kept) = clients::close_all(streams, scenario.clients.close);
        d.outcome.completed = closed;
        d.kept = kept;
        step!(Phase::Hold);
        d.enter(Phase::Hold);
        if scenario.behaviour.needs_release() {
            // A client's connect completes before the acceptor has forked its handler: release
            // only once every handler exists (each inherits SIGUSR1 blocked, so none misses it).
            let mut accepted = server.accepted.clone();
            let want = u64::from(scenario.clients.count);
            let all_forked = accepted.wait_for(|n| *n >= want);
            if let Err(stop) = d.guard(&mut rx, wake, deadline, all_forked).await {
                d.stopped(stop);
                return Ok(());
            }
            server.release();
        }
        let hold = tokio::time::sleep(scenario.hold);
        if let Err(stop) = d.guard(&mut rx, wake, deadline, hold).await {
            d.stopped(stop);
        }
        Ok::<(), RunError>(())
    })?;
    sampler.stop()?;
    while let Ok(s) = rx.try_recv() {
        d.push(s);
    }
    if let Some(sig) = signals::received() {
        d.stopped(Stop::Interrupted(sig));
    }
    d.enter(Phase::End);
    let (last, records) = probe.sample(d.now_ms(), Phase::End)?;
    d.fds_end = last.acceptor_fds;
    d.push(last);
    (d.transitions, d.packets) = witness.finish(d.port, t0_us, 3);
    let end = stuck::survey(&records, d.port, d.acceptor);
    (d.holders, d.fds_by_role) = (end.holders, end.fds_by_role);
    server.stop();
    d.server = server.outcome();
    d.kept.clear();
    Ok(finish(d, scenario, timeout))
}

/// Lines from stdin, read on a thread of their own (a blocking read must not hold the runtime).
fn stdin_lines() -> tokio::sync::mpsc::UnboundedReceiver<()> {
    let (tx, rx) = unbounded_channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
            line.clear();
            if tx.send(()).is_err() {
                return;
            }
        }
    });
    rx
}

/// CLOCK_MONOTONIC in microseconds: the clock the tracepoint instance stamps with.
fn monotonic_us() -> i64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(t) => t.tv_sec() * 1_000_000 + t.tv_nsec() / 1000,
        Err(_) => 0,
    }
}

/// Registers the wake pipe with the runtime.
fn watch(fd: OwnedFd) -> Result<AsyncFd<OwnedFd>, RunError> {
    // SAFETY: the AsyncFd owns `fd`, which stays open and the same until it is dropped.
    unsafe { AsyncFd::register(fd) }
        .map_err(|e| io("watch for signals")(std::io::Error::other(e.to_string())))
}

/// Refuses a client count the descriptor limit cannot hold, after raising the soft limit to the
/// hard one where that is enough. The runner holds every client's socket at once, and the
/// acceptor (which inherits the limit) may hold one per connection.
fn descriptors(scenario: &Scenario) -> Result<(), RunError> {
    let need = u64::from(scenario.clients.count) + 64;
    let (soft, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_err(|e| io("read RLIMIT_NOFILE")(e.into()))?;
    if need <= soft {
        return Ok(());
    }
    if need <= hard {
        return nix::sys::resource::setrlimit(
            nix::sys::resource::Resource::RLIMIT_NOFILE,
            hard,
            hard,
        )
        .map_err(|e| io("raise RLIMIT_NOFILE to its hard limit")(e.into()));
    }
    let (line, col) = scenario.clients.count_position;
    Err(RunError::BadInput(format!(
        "{}:{line}:{col}: {} clients need about {need} descriptors, but RLIMIT_NOFILE allows {hard} (soft {soft}, hard {hard})",
        scenario.file.display(),
        scenario.clients.count,
    )))
}

fn finish(d: Draft<'_>, scenario: &Scenario, timeout: Duration) -> Report {
    let hold_from_ms = d.marks.iter().find(|m| m.phase == Phase::Hold).map_or(u64::MAX, |m| m.t_ms);
    let evidence = Evidence {
        samples: &d.samples,
        hold_from_ms,
        fds_baseline: d.fds_baseline,
        holders: &d.holders,
        clients: scenario.clients.count,
        client_outcome: &d.outcome,
        server: &d.server,
        fds_by_role: &d.fds_by_role,
        transitions: &d.transitions,
        packets: &d.packets,
    };
    let expectations: Vec<_> =
        scenario.expectations.iter().map(|e| evaluate(e, &evidence)).collect();
    let missing: Vec<String> = scenario
        .require
        .iter()
        .filter_map(|w| match w.as_str() {
            "transitions" if !d.transitions.available => Some(format!(
                "transitions are required but cannot be observed: {}",
                d.transitions.note.as_deref().unwrap_or("no tracefs")
            )),
            "packets" if !d.packets.available => Some(format!(
                "packets are required but cannot be observed: {}",
                d.packets.note.as_deref().unwrap_or("no capture")
            )),
            _ => None,
        })
        .collect();
    let error = d.stop.map(|(why, phase)| match why {
        Stop::Interrupted(sig) => {
            format!("interrupted by {} in the {phase} phase", signals::name(sig))
        }
        Stop::Timeout => {
            format!(
                "timeout: the {phase} phase did not finish within the run's {}",
                duration::format(timeout)
            )
        }
    });
    let error = error.or_else(|| (!missing.is_empty()).then(|| missing.join("; ")));
    let verdict = if error.is_some() {
        Verdict::Error
    } else if expectations.iter().filter(|e| e.observable).all(|e| e.passed) {
        Verdict::Pass
    } else {
        Verdict::Fail
    };
    Report {
        schema_version: SCHEMA_VERSION,
        scenario: ScenarioRef {
            name: scenario.name.clone(),
            file: scenario.file.display().to_string(),
            behaviour: scenario.behaviour.name().to_string(),
            story: scenario.story.clone(),
        },
        isolation: d.isolation,
        isolation_note: d.note,
        topology: scenario.topology,
        port: d.port,
        clients: scenario.clients.count,
        acceptor: Acceptor { pid: d.acceptor, fds_baseline: d.fds_baseline, fds_end: d.fds_end },
        phases: d.marks,
        final_counts: d.samples.last().map(Sample::counts).unwrap_or_default(),
        samples: d.samples,
        holders: d.holders,
        client_outcome: d.outcome,
        server: d.server,
        fds_by_role: d.fds_by_role,
        transitions: d.transitions,
        packets: d.packets,
        expectations,
        verdict,
        error,
        interrupted: matches!(d.stop, Some((Stop::Interrupted(_), _))),
        stopped_in: d.stop.map(|(_, p)| p),
        duration_ms: d.started.elapsed().as_millis() as u64,
    }
}
