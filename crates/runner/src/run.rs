//! One run of one scenario, from isolation to verdict.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use std::sync::Arc;

use cwlab_model::diagnosis::Diagnosis;
use cwlab_model::events::{PhaseStart, Reporter, RunEvent, Started, Waiting};
use cwlab_model::expect::{evaluate, Evidence};
use cwlab_model::protocol::{ContainOptions, ServeOptions};
use cwlab_model::report::{
    ClientOutcome, Isolation, Phase, PhaseMark, Report, Sample, ScenarioRef, Verdict,
};
use cwlab_model::scenario::{self, ServerCommand, ServerProgram, Topology};
use cwlab_model::{duration, Scenario};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::isolation::{self, IsolationMode};
use crate::sampling::{PhaseCell, Probe, Sampler};
use crate::server::{Launch, Program, Server};
use crate::witness::{Live, Witness};
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
    /// How long a server gets between SIGTERM and SIGKILL when the run ends ([`GRACE`]).
    pub grace: Duration,
    /// How long a command may take to listen (the whole run's deadline when absent).
    pub ready_timeout: Option<Duration>,
    /// A presenter's pace: before each phase the run reports [`RunEvent::Waiting`] and waits for
    /// the next go-ahead (the deadline then grows to an hour). The caller decides where go-aheads
    /// come from (Enter on a terminal, a line on stdin).
    pub pace: Option<Pace>,
    /// A connection (the client's port) to keep step by step besides the representatives.
    pub conn: Option<u16>,
    /// A room's pace: the connect phase starts its clients evenly over this long, and the close
    /// phase closes them evenly over as long (zero: all at once, the lab's own pace). The
    /// deadline grows by twice as much.
    pub spread: Duration,
}

/// Go-aheads for a paced run, shared by every run of one invocation.
#[derive(Debug, Clone)]
pub struct Pace(Arc<tokio::sync::Mutex<UnboundedReceiver<()>>>);

/// The sending end of a [`Pace`]: each call of [`GoAhead::go`] lets one phase begin.
#[derive(Debug, Clone)]
pub struct GoAhead(tokio::sync::mpsc::UnboundedSender<()>);

impl GoAhead {
    /// Lets the next phase begin; false once no run listens any more.
    pub fn go(&self) -> bool {
        self.0.send(()).is_ok()
    }
}

impl Pace {
    /// A pace and the handle that moves it on.
    pub fn new() -> (GoAhead, Pace) {
        let (tx, rx) = unbounded_channel();
        (GoAhead(tx), Pace(Arc::new(tokio::sync::Mutex::new(rx))))
    }

    async fn next(&self) {
        if self.0.lock().await.recv().await.is_none() {
            // Nobody will say go any more (stdin closed): go on without waiting.
        }
    }
}

/// Why a run stopped before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Interrupted(i32),
    Timeout,
}

/// One phase of a run, as data: its name, what it does, and by when it must be done.
struct Step {
    phase: Phase,
    act: Act,
    deadline: tokio::time::Instant,
}

/// What a phase does.
#[derive(Debug, Clone, Copy)]
enum Act {
    /// Every client connects, sends its request and reads what the scenario says.
    Connect,
    /// Every client closes (or half-closes) its connection.
    Close,
    /// Handlers waiting for a release get it; then nobody does anything for the hold.
    Hold,
}

/// The phases of a run, in order; each must end by the run's deadline.
fn plan(deadline: tokio::time::Instant) -> [Step; 3] {
    [
        Step { phase: Phase::Connect, act: Act::Connect, deadline },
        Step { phase: Phase::Close, act: Act::Close, deadline },
        Step { phase: Phase::Hold, act: Act::Hold, deadline },
    ]
}

/// The report as it is being made, and the reporter that hears of each step.
struct Record<'r> {
    report: Report,
    started: Instant,
    t0: Instant,
    phase: PhaseCell,
    reporter: &'r mut dyn Reporter,
    stop: Option<(Stop, Phase)>,
    live: Option<Live>,
}

impl Record<'_> {
    fn now_ms(&self) -> u64 {
        self.t0.elapsed().as_millis() as u64
    }

    fn enter(&mut self, phase: Phase) {
        let t_ms = self.now_ms();
        self.phase.set(phase);
        self.report.phases.push(PhaseMark { phase, t_ms });
        self.reporter.event(&RunEvent::Phase(PhaseStart { phase, t_ms }));
    }

    fn push(&mut self, s: Sample) {
        let event = RunEvent::Sample(s);
        self.reporter.event(&event);
        let RunEvent::Sample(s) = event else { unreachable!("made above") };
        self.report.samples.push(s);
        if let Some(w) = self.live.as_ref().and_then(Live::take) {
            self.reporter.event(&RunEvent::Witnessed(w));
        }
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

/// What the phases act on: the clients' connections and the server.
struct Work<'a> {
    scenario: &'a Scenario,
    target: SocketAddr,
    server: &'a Server,
    streams: Vec<tokio::net::TcpStream>,
    /// Sockets the clients keep until the end (a half-close).
    kept: Vec<std::net::TcpStream>,
    outcome: ClientOutcome,
    /// How long the connect and the close each take at the least ([`Options::spread`]).
    spread: Duration,
}

impl Work<'_> {
    async fn act(&mut self, act: Act) {
        match act {
            Act::Connect => {
                (self.streams, self.outcome) =
                    clients::connect_all(self.target, &self.scenario.clients, self.spread).await;
            }
            Act::Close => {
                let streams = std::mem::take(&mut self.streams);
                let how = self.scenario.clients.close;
                let (mut closed, mut kept) = (0, Vec::new());
                for (when, batch) in spread(streams, self.spread) {
                    tokio::time::sleep_until(when).await;
                    let (n, k) = clients::close_all(batch, how);
                    closed += n;
                    kept.extend(k);
                }
                self.outcome.completed = closed;
                self.kept = kept;
            }
            Act::Hold => {
                if self.scenario.behaviour().is_some_and(|b| b.needs_release()) {
                    // A client's connect completes before the acceptor has forked its handler:
                    // release only once every handler exists (each inherits SIGUSR1 blocked, so
                    // none misses it).
                    let mut accepted = self.server.accepted.clone();
                    let want = u64::from(self.scenario.clients.count);
                    let _ = accepted.wait_for(|n| *n >= want).await;
                    self.server.release();
                }
                tokio::time::sleep(self.scenario.hold).await;
            }
        }
    }
}

/// `items` in batches due evenly over `over` from now: one batch at once when `over` is zero,
/// else one per item, the last due at `over`.
fn spread<T>(items: Vec<T>, over: Duration) -> Vec<(tokio::time::Instant, Vec<T>)> {
    let now = tokio::time::Instant::now();
    if over.is_zero() || items.len() < 2 {
        return vec![(now, items)];
    }
    let gaps = items.len() as u32 - 1;
    items.into_iter().enumerate().map(|(i, x)| (now + over * i as u32 / gaps, vec![x])).collect()
}

/// How long a server gets to exit after SIGTERM before SIGKILL, by default. The lab's own
/// servers exit at once (nothing in them handles SIGTERM); the grace is there for what is not
/// the lab's.
pub const GRACE: Duration = Duration::from_secs(2);

/// A port nothing listens on, from the kernel (bind to port 0, read it, let it go): in a private
/// namespace nothing can take it before the server does.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}

/// Runs one scenario, telling `reporter` each event (its `finish` is the caller's, with the
/// returned report). Call it on a thread that has started no other thread in this run: the
/// isolation moves the calling thread into a private network namespace.
pub fn run(
    scenario: &Scenario,
    opts: &Options,
    reporter: &mut dyn Reporter,
) -> Result<Report, RunError> {
    let started = Instant::now();
    let timeout = opts.timeout.unwrap_or(scenario.timeout);
    let timeout =
        if opts.pace.is_some() { timeout.max(Duration::from_secs(3600)) } else { timeout };
    let timeout = timeout + 2 * opts.spread;
    let deadline = started + timeout;
    let _stamping = crate::witness::keep_stamping();
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
    let scenario_ref = ScenarioRef {
        name: scenario.name.clone(),
        file: scenario.file.display().to_string(),
        behaviour: scenario.program.name().to_string(),
        story: scenario.story.clone(),
        command: match &scenario.program {
            ServerProgram::Command(c) => Some(c.argv.clone()),
            ServerProgram::Lab(_) => None,
        },
    };
    let mut rec = Record {
        report: Report::begin(
            scenario_ref,
            isolation,
            note,
            scenario.topology,
            scenario.clients.count,
        ),
        started,
        t0: Instant::now(),
        phase: PhaseCell::default(),
        reporter,
        stop: None,
        live: None,
    };
    let pid_namespace = isolation == Isolation::Netns;
    let program = match &scenario.program {
        ServerProgram::Lab(behaviour) => Program::Lab(ServeOptions {
            behaviour: *behaviour,
            addr,
            port: scenario.port,
            backlog: 4096,
            pid_namespace,
            net_namespace: two_hosts,
            limits: scenario.server.clone(),
        }),
        ServerProgram::Command(c) => {
            let port = match scenario.port {
                0 => free_port().map_err(io("find a free port"))?,
                p => p,
            };
            rec.report.scenario.command = Some(c.argv_for(port));
            Program::Command(ContainOptions {
                command: ServerCommand { argv: c.argv_for(port), ..c.clone() },
                port,
                pid_namespace,
                grace_ms: opts.grace.as_millis() as u64,
            })
        }
    };
    let ready_by = opts.ready_timeout.map_or(deadline, |t| (Instant::now() + t).min(deadline));
    let launch = Launch { exe: &opts.exe, program, mark: &opts.run_id, deadline: ready_by };
    let mut server = match Server::start(&launch) {
        Ok(s) => s,
        Err(RunError::Interrupted(sig)) => {
            rec.stopped(Stop::Interrupted(sig));
            return Ok(finish(rec, scenario, timeout));
        }
        Err(e) => return Err(e),
    };
    let server_ns = two_hosts.then(|| server.pid());
    if let Some(pid) = server_ns {
        hosts::join(pid)?;
    }
    rec.t0 = Instant::now();
    let port = server.port;
    rec.report.port = port;
    rec.report.acceptor.pid = server.acceptor;
    rec.reporter.event(&RunEvent::Started(Started {
        scenario: scenario.name.clone(),
        headline: scenario.headline().to_string(),
        port,
        isolation,
    }));
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
    let witness = Witness::start(&opts.exe, &opts.run_id, &instance, iface, port, t0_us, pcap);
    rec.live = Some(witness.live());
    let mut probe = Probe::open(port, server.acceptor, server_ns)?;
    let faults_before = stuck::reaped_faults(server.acceptor);
    let (first, _) = probe.sample(0, Phase::Listen)?;
    rec.report.acceptor.fds_baseline = first.acceptor_fds;
    rec.push(first);

    let (tx, mut rx) = unbounded_channel();
    let mut sampler = Sampler::spawn(
        Probe::open(port, server.acceptor, server_ns)?,
        scenario.sample_interval,
        rec.t0,
        rec.phase.clone(),
        tx,
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io("start the client runtime"))?;
    let mut work = Work {
        scenario,
        target: SocketAddr::new(server_host, port),
        server: &server,
        streams: Vec::new(),
        kept: Vec::new(),
        outcome: ClientOutcome::default(),
        spread: opts.spread,
    };
    rt.block_on(async {
        let wake = match signals::wake() {
            Some(fd) => Some(watch(fd.try_clone_to_owned().map_err(io("watch for signals"))?)?),
            None => None,
        };
        let wake = wake.as_ref();
        for step in plan(tokio::time::Instant::from_std(deadline)) {
            if let Some(pace) = &opts.pace {
                rec.reporter.event(&RunEvent::Waiting(Waiting { next: step.phase }));
                if let Err(stop) = rec.guard(&mut rx, wake, step.deadline, pace.next()).await {
                    rec.stopped(stop);
                    break;
                }
            }
            rec.enter(step.phase);
            if let Err(stop) = rec.guard(&mut rx, wake, step.deadline, work.act(step.act)).await {
                rec.stopped(stop);
                break;
            }
        }
        Ok::<(), RunError>(())
    })?;
    sampler.stop()?;
    while let Ok(s) = rx.try_recv() {
        rec.push(s);
    }
    if let Some(sig) = signals::received() {
        rec.stopped(Stop::Interrupted(sig));
    }
    rec.enter(Phase::End);
    let (last, records) = probe.sample(rec.now_ms(), Phase::End)?;
    rec.report.acceptor.fds_end = last.acceptor_fds;
    rec.push(last);
    let seen = witness.finish(opts.conn);
    let forks = seen.forks;
    (rec.report.transitions, rec.report.packets) = (seen.transitions, seen.packets);
    rec.report.connections = seen.connections;
    let tree = match scenario.program {
        ServerProgram::Lab(_) => stuck::Tree::Lab { acceptor: server.acceptor },
        ServerProgram::Command(_) => {
            stuck::Tree::Command { acceptor: server.acceptor, root: server.pid() }
        }
    };
    let end = stuck::survey(&records, port, tree);
    if let stuck::Tree::Command { acceptor, .. } = tree {
        let traced = forks.is_some_and(|f| f.iter().any(|f| stuck::thread_of(f.parent, acceptor)));
        rec.report.acceptor.forked = Some(traced || stuck::forked(acceptor, faults_before));
    }
    (rec.report.holders, rec.report.fds_by_role) = (end.holders, end.fds_by_role);
    rec.report.client_outcome = std::mem::take(&mut work.outcome);
    drop(work);
    server.stop(opts.grace);
    rec.report.server = server.outcome();
    if rec.report.server.gone || rec.stop.is_some() || rec.report.server.exited.is_some() {
        rec.report.server_output = server.output.lines();
    }
    Ok(finish(rec, scenario, timeout))
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

/// Judges the run: the expectations over its report, the witnesses it could not do without,
/// what stopped it, the verdict and the diagnosis.
fn finish(rec: Record<'_>, scenario: &Scenario, timeout: Duration) -> Report {
    let mut r = rec.report;
    r.final_counts = r.samples.last().map(Sample::counts).unwrap_or_default();
    r.interrupted = matches!(rec.stop, Some((Stop::Interrupted(_), _)));
    r.stopped_in = rec.stop.map(|(_, p)| p);
    r.expectations = {
        let evidence = Evidence::of(&r);
        scenario.expectations.iter().map(|e| evaluate(e, &evidence)).collect()
    };
    let missing: Vec<String> = scenario
        .require
        .iter()
        .filter_map(|w| {
            let (available, note) = match w {
                scenario::Witness::Transitions => (r.transitions.available, &r.transitions.note),
                scenario::Witness::Packets => (r.packets.available, &r.packets.note),
            };
            (!available).then(|| {
                format!(
                    "{} are required but cannot be observed: {}",
                    w.name(),
                    note.as_deref().unwrap_or("no witness")
                )
            })
        })
        .collect();
    r.error = rec
        .stop
        .map(|(why, phase)| match why {
            Stop::Interrupted(sig) => {
                format!("interrupted by {} in the {phase} phase", signals::name(sig))
            }
            Stop::Timeout => format!(
                "timeout: the {phase} phase did not finish within the run's {}",
                duration::format(timeout)
            ),
        })
        .or_else(|| (!missing.is_empty()).then(|| missing.join("; ")));
    r.verdict = if r.error.is_some() {
        Verdict::Error
    } else if r.expectations.iter().filter(|e| e.observable).all(|e| e.passed) {
        Verdict::Pass
    } else {
        Verdict::Fail
    };
    r.diagnosis = Diagnosis::of(&r);
    r.duration_ms = rec.started.elapsed().as_millis() as u64;
    r
}
