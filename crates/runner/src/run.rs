//! One run of one scenario, from isolation to verdict, in steps: [`run`] takes each in turn.
//! The report as it is made and the phases as data are in `run/record.rs`, what the phases act
//! on in `run/work.rs`, the verdict in `run/verdict.rs`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cwlab_model::events::{Reporter, RunEvent, Started, Waiting};
use cwlab_model::protocol::{ContainOptions, ServeOptions};
use cwlab_model::report::{Isolation, Phase, Report, Sample, ScenarioRef};
use cwlab_model::scenario::{ServerCommand, ServerProgram, Topology};
use cwlab_model::Scenario;
use cwlab_os::signals;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::isolation::{self, IsolationMode};
use crate::sampling::{Probe, Sampler};
use crate::server::{Launch, Program, Server};
use crate::witness::Witness;
use crate::{hosts, io, stuck, RunError};

mod record;
mod verdict;
mod work;

use record::{plan, Record, Stop};
use work::{ClientLaunch, Work};

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
    /// Where a command's clients connect, instead of the address its LISTEN socket has.
    pub dial: Option<IpAddr>,
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
///
/// The steps, in order: `prepare` (the deadline, the isolation, the server's program), `start`
/// (the server, until it listens), `Watch::start` (the witnesses, the probes, the sampler),
/// `drive` (the phases, one loop), `collect` (the last sample, what the witnesses saw, the
/// holders), the server stopped, then the verdict.
pub fn run(
    scenario: &Scenario,
    opts: &Options,
    reporter: &mut dyn Reporter,
) -> Result<Report, RunError> {
    let _stamping = crate::witness::keep_stamping();
    let setting = prepare(scenario, opts)?;
    let report = Report::begin(
        scenario_ref(scenario),
        setting.isolation,
        setting.note.clone(),
        scenario.topology,
        scenario.clients.total(),
    );
    let mut rec = Record::new(report, setting.started, reporter);
    let program = program(scenario, opts, &setting, &mut rec.report)?;
    let Some(mut server) = start(scenario, opts, &setting, program, &mut rec)? else {
        return Ok(verdict::finish(rec, scenario, setting.timeout));
    };
    let mut watch = Watch::start(scenario, opts, &setting, &server, &mut rec)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io("start the client runtime"))?;
    // On an error from here on, the server is stopped without a grace as it is dropped.
    let mut work = drive(scenario, opts, &setting, &server, &mut watch, &mut rec, &rt)?;
    collect(scenario, opts, &server, watch, &mut work, &mut rec)?;
    drop(work);
    server.stop(opts.grace);
    rec.report.server = server.outcome();
    if rec.report.server.gone || rec.stop.is_some() || rec.report.server.exited.is_some() {
        rec.report.server_output = server.output.lines();
    }
    Ok(verdict::finish(rec, scenario, setting.timeout))
}

/// What a run is, worked out before anything starts.
struct Setting {
    started: Instant,
    /// The whole run's, grown for a presenter's pace and a room's spread.
    timeout: Duration,
    deadline: Instant,
    isolation: Isolation,
    /// Why the isolation is not what was asked for, when it is not.
    note: Option<String>,
    two_hosts: bool,
    /// Where the server listens.
    addr: IpAddr,
    /// Where the clients connect, unless the server says or the caller asks otherwise.
    server_host: IpAddr,
    pid_namespace: bool,
}

/// The deadline, the descriptors the clients need and the isolation (the calling thread enters
/// a private network namespace here).
fn prepare(scenario: &Scenario, opts: &Options) -> Result<Setting, RunError> {
    let started = Instant::now();
    let timeout = opts.timeout.unwrap_or(scenario.timeout);
    let timeout =
        if opts.pace.is_some() { timeout.max(Duration::from_secs(3600)) } else { timeout };
    let timeout = timeout + 2 * opts.spread;
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
    let (addr, server_host) = if two_hosts {
        (IpAddr::V4(Ipv4Addr::UNSPECIFIED), IpAddr::V4(hosts::SERVER_HOST))
    } else {
        (IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V4(Ipv4Addr::LOCALHOST))
    };
    Ok(Setting {
        started,
        timeout,
        deadline: started + timeout,
        isolation,
        note,
        two_hosts,
        addr,
        server_host,
        pid_namespace: isolation == Isolation::Netns,
    })
}

/// The scenario as the report names it.
fn scenario_ref(scenario: &Scenario) -> ScenarioRef {
    ScenarioRef {
        name: scenario.name.clone(),
        file: scenario.file.display().to_string(),
        behaviour: scenario.program.name().to_string(),
        story: scenario.story.clone(),
        command: match &scenario.program {
            ServerProgram::Command(c) => Some(c.argv.clone()),
            ServerProgram::Lab(_) => None,
        },
    }
}

/// The server to start: the lab's, or the user's command on a port of its own (which the
/// report's command line then shows).
fn program(
    scenario: &Scenario,
    opts: &Options,
    setting: &Setting,
    report: &mut Report,
) -> Result<Program, RunError> {
    Ok(match &scenario.program {
        ServerProgram::Lab(behaviour) => Program::Lab(ServeOptions {
            behaviour: *behaviour,
            addr: setting.addr,
            port: scenario.port,
            backlog: 4096,
            pid_namespace: setting.pid_namespace,
            net_namespace: setting.two_hosts,
            limits: scenario.server.clone(),
        }),
        ServerProgram::Command(c) => {
            let port = match scenario.port {
                0 => free_port().map_err(io("find a free port"))?,
                p => p,
            };
            report.scenario.command = Some(c.argv_for(port));
            Program::Command(ContainOptions {
                command: ServerCommand { argv: c.argv_for(port), ..c.clone() },
                port,
                pid_namespace: setting.pid_namespace,
                grace_ms: opts.grace.as_millis() as u64,
            })
        }
    })
}

/// Starts the server and waits until it listens; then the run's clock starts and the reporter
/// hears `Started`. `None` when a signal came first (the record says so).
fn start(
    scenario: &Scenario,
    opts: &Options,
    setting: &Setting,
    program: Program,
    rec: &mut Record<'_>,
) -> Result<Option<Server>, RunError> {
    let ready_by =
        opts.ready_timeout.map_or(setting.deadline, |t| (Instant::now() + t).min(setting.deadline));
    let launch = Launch { exe: &opts.exe, program, mark: &opts.run_id, deadline: ready_by };
    let server = match Server::start(&launch) {
        Ok(s) => s,
        Err(RunError::Interrupted(sig)) => {
            rec.stopped(Stop::Interrupted(sig));
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    if setting.two_hosts {
        hosts::join(server.pid())?;
    }
    rec.t0 = Instant::now();
    rec.report.port = server.port;
    rec.report.acceptor.pid = server.acceptor;
    if let ServerProgram::Command(c) = &scenario.program {
        let exe = std::fs::read_link(format!("/proc/{}/exe", server.acceptor))
            .map(|p| p.display().to_string())
            .ok();
        let argv = stuck::argv(server.acceptor).unwrap_or_else(|| c.argv.clone());
        rec.report.acceptor.runtime =
            Some(cwlab_model::runtime::Runtime::identify(exe.as_deref().unwrap_or(""), &argv));
        rec.report.acceptor.exe = exe;
    }
    rec.reporter.event(&RunEvent::Started(Started {
        scenario: scenario.name.clone(),
        headline: scenario.headline().to_string(),
        port: server.port,
        isolation: setting.isolation,
    }));
    Ok(Some(server))
}

/// What watches the run once the server listens: the witnesses (transitions and packets), a
/// probe for the end, the sampler thread and its samples.
struct Watch {
    witness: Witness,
    probe: Probe,
    sampler: Sampler,
    samples: UnboundedReceiver<Sample>,
    /// The server's network namespace, when it has one of its own (two hosts).
    server_ns: Option<u32>,
    /// The page faults of the acceptor's reaped children before the clients (a fork shows in
    /// them).
    faults_before: u64,
    /// When the clients began, in clock ticks: a command's processes started since are told
    /// apart by it.
    clients_from: u64,
}

impl Watch {
    /// Starts the witnesses and the sampler, and files the first sample.
    fn start(
        scenario: &Scenario,
        opts: &Options,
        setting: &Setting,
        server: &Server,
        rec: &mut Record<'_>,
    ) -> Result<Watch, RunError> {
        let port = server.port;
        let server_ns = setting.two_hosts.then(|| server.pid());
        let t0_us = monotonic_us();
        let pcap = match &opts.pcap {
            Some(path) => Some((
                cwlab_os::AtomicFile::create(path)
                    .map_err(io(format!("create {}", path.display())))?,
                path.display().to_string(),
            )),
            None => None,
        };
        let instance = format!("cwlab-{}", opts.run_id);
        let iface = if setting.two_hosts { hosts::CLIENT_IFACE } else { "lo" };
        let witness = Witness::start(&opts.exe, &opts.run_id, &instance, iface, port, t0_us, pcap);
        rec.live = Some(witness.live());
        let mut probe = Probe::open(port, server.acceptor, server_ns)?;
        let faults_before = stuck::reaped_faults(server.acceptor);
        let (first, _) = probe.sample(0, Phase::Listen)?;
        rec.report.acceptor.fds_baseline = first.acceptor_fds;
        rec.push(first);
        let (tx, samples) = unbounded_channel();
        let sampler = Sampler::spawn(
            Probe::open(port, server.acceptor, server_ns)?,
            scenario.sample_interval,
            rec.t0,
            rec.phase.clone(),
            tx,
        );
        let clients_from = stuck::now_ticks();
        Ok(Watch { witness, probe, sampler, samples, server_ns, faults_before, clients_from })
    }
}

/// Drives the phases (connect, close, hold) through one loop that handles the pace, signals and
/// the deadline, filing every sample as it comes. Returns what the clients did.
fn drive<'a>(
    scenario: &'a Scenario,
    opts: &'a Options,
    setting: &Setting,
    server: &'a Server,
    watch: &mut Watch,
    rec: &mut Record<'_>,
    rt: &tokio::runtime::Runtime,
) -> Result<Work<'a>, RunError> {
    let port = server.port;
    let target = match (opts.dial, server.address) {
        (Some(ip), _) => SocketAddr::new(ip, port),
        (None, Some(a)) => a,
        (None, None) => SocketAddr::new(setting.server_host, port),
    };
    if matches!(scenario.program, ServerProgram::Command(_)) {
        rec.report.address = server.address.map(|a| a.to_string());
        if server.address != Some(target) {
            rec.report.dialed = Some(target.to_string());
        }
    }
    let launch = ClientLaunch {
        exe: &opts.exe,
        mark: &opts.run_id,
        pid_namespace: setting.pid_namespace,
        grace: opts.grace,
    };
    let probe = Probe::open(port, server.acceptor, watch.server_ns)?;
    let mut work = Work::new(scenario, target, server, probe, opts.spread, rec.t0, launch);
    watch.clients_from = stuck::now_ticks();
    let rx = &mut watch.samples;
    rt.block_on(async {
        let wake = match signals::wake() {
            Some(fd) => Some(wake_on(fd.try_clone_to_owned().map_err(io("watch for signals"))?)?),
            None => None,
        };
        let wake = wake.as_ref();
        for step in plan(tokio::time::Instant::from_std(setting.deadline)) {
            if let Some(pace) = &opts.pace {
                rec.reporter.event(&RunEvent::Waiting(Waiting { next: step.phase }));
                if let Err(stop) = rec.guard(rx, wake, step.deadline, pace.next()).await {
                    rec.stopped(stop);
                    break;
                }
            }
            rec.enter(step.phase);
            if let Err(stop) = rec.guard(rx, wake, step.deadline, work.act(step.act)).await {
                rec.stopped(stop);
                break;
            }
        }
        Ok::<(), RunError>(())
    })?;
    Ok(work)
}

/// The end: the samples still on their way, the last sample, what the witnesses saw, who holds
/// what is stuck and how many descriptors each role has, what the clients saw. A user's client
/// that could not run is an error.
fn collect(
    scenario: &Scenario,
    opts: &Options,
    server: &Server,
    mut watch: Watch,
    work: &mut Work<'_>,
    rec: &mut Record<'_>,
) -> Result<(), RunError> {
    watch.sampler.stop()?;
    while let Ok(s) = watch.samples.try_recv() {
        rec.push(s);
    }
    if let Some(sig) = signals::received() {
        rec.stopped(Stop::Interrupted(sig));
    }
    rec.enter(Phase::End);
    let (last, records) = watch.probe.sample(rec.now_ms(), Phase::End)?;
    rec.report.acceptor.fds_end = last.acceptor_fds;
    rec.push(last);
    let seen = watch.witness.finish(opts.conn);
    let forks = seen.forks;
    (rec.report.transitions, rec.report.packets) = (seen.transitions, seen.packets);
    rec.report.connections = seen.connections;
    let acceptor = server.acceptor;
    let tree = match scenario.program {
        ServerProgram::Lab(_) => stuck::Tree::Lab { acceptor },
        ServerProgram::Command(_) => {
            stuck::Tree::Command { acceptor, root: server.pid(), clients_from: watch.clients_from }
        }
    };
    let port = server.port;
    let end = stuck::survey(&records, port, tree);
    if let stuck::Tree::Command { acceptor, .. } = tree {
        let traced = forks.is_some_and(|f| f.iter().any(|f| stuck::thread_of(f.parent, acceptor)));
        rec.report.acceptor.forked = Some(traced || stuck::forked(acceptor, watch.faults_before));
    }
    (rec.report.holders, rec.report.fds_by_role) = (end.holders, end.fds_by_role);
    rec.report.client_outcome = work.outcome(&records, port);
    rec.report.waves = work.waves.take();
    if let Some(seen) = work.client.take() {
        if let Some(e) = seen.error {
            return Err(RunError::BadInput(e));
        }
        rec.report.holders.extend(seen.holders);
        rec.report.holders.sort_by_key(|h| (h.side, h.state, h.pid, h.fd));
        rec.report.clients = seen.run.requests as u32;
        rec.report.client_outcome.completed = rec.report.clients;
        rec.report.waves = Some(seen.rounds);
        rec.report.client = Some(seen.run);
    }
    Ok(())
}
/// CLOCK_MONOTONIC in microseconds: the clock the tracepoint instance stamps with.
fn monotonic_us() -> i64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec * 1_000_000 + t.tv_nsec / 1000
}

/// Registers the wake pipe with the runtime.
fn wake_on(fd: OwnedFd) -> Result<AsyncFd<OwnedFd>, RunError> {
    // SAFETY: the AsyncFd owns `fd`, which stays open and the same until it is dropped.
    unsafe { AsyncFd::register(fd) }
        .map_err(|e| io("watch for signals")(std::io::Error::other(e.to_string())))
}

/// Refuses a client count the descriptor limit cannot hold, after raising the soft limit to the
/// hard one where that is enough. The runner holds every client's socket at once, and the
/// acceptor (which inherits the limit) may hold one per connection.
fn descriptors(scenario: &Scenario) -> Result<(), RunError> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let need = u64::from(scenario.clients.total()) + 64;
    // No limit reads as u64::MAX, as RLIM_INFINITY is.
    let limit = getrlimit(Resource::Nofile);
    let (soft, hard) = (limit.current.unwrap_or(u64::MAX), limit.maximum.unwrap_or(u64::MAX));
    if need <= soft {
        return Ok(());
    }
    if need <= hard {
        let raised = Rlimit { current: limit.maximum, maximum: limit.maximum };
        return setrlimit(Resource::Nofile, raised)
            .map_err(|e| io("raise RLIMIT_NOFILE to its hard limit")(e.into()));
    }
    let (line, col) = scenario.clients.count_position;
    Err(RunError::BadInput(format!(
        "{}:{line}:{col}: {} clients need about {need} descriptors, but RLIMIT_NOFILE allows {hard} (soft {soft}, hard {hard})",
        scenario.file.display(),
        scenario.clients.count,
    )))
}
