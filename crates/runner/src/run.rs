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
    ClientOutcome, ClientRun, Holder, Isolation, Measure, Phase, PhaseMark, Report, Sample,
    ScenarioRef, Side, Verdict, Wave, Waves,
};
use cwlab_model::scenario::{
    self, Behaviour, Closing, Pool, ServerCommand, ServerProgram, Topology, WavePlan,
};
use cwlab_model::{duration, Scenario, TcpState};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::client_check;
use crate::clients::Exchange;
use crate::isolation::{self, IsolationMode};
use crate::sampling::{PhaseCell, Probe, Sampler};
use crate::server::{Launch, Program, Server};
use crate::witness::{Live, Witness};
use crate::{clients, hosts, io, pool, signals, stuck, RunError};

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
    /// The ports of the clients that waited for a reply or an EOF that never came: the end
    /// tells which were served (hung) and which were never accepted.
    waited: Vec<u16>,
    /// The longest a client waited for what came.
    slowest: Option<Duration>,
    /// `cwlab check`'s measurements between waves (none for a scenario).
    waves: Option<Waves>,
    /// A probe of its own for those measurements.
    probe: Probe,
    /// How long the connect and the close each take at the least ([`Options::spread`]).
    spread: Duration,
    /// A client-side pool's connections, kept to the end of the run.
    pool: Option<pool::Pool>,
    t0: Instant,
    /// How to start a client of the user's own (`cwlab check --client`).
    launch: ClientLaunch<'a>,
    /// What that client did.
    client: Option<ClientSeen>,
}

/// What starting a client of the user's own takes.
struct ClientLaunch<'a> {
    exe: &'a std::path::Path,
    mark: &'a str,
    pid_namespace: bool,
    grace: Duration,
}

/// What `cwlab check --client` saw of the client.
struct ClientSeen {
    run: ClientRun,
    holders: Vec<Holder>,
    rounds: Waves,
    /// Why it could not run, when it could not.
    error: Option<String>,
}

impl Work<'_> {
    async fn act(&mut self, act: Act) {
        match act {
            Act::Connect => match (self.scenario.clients.waves, self.scenario.clients.pool) {
                _ if self.scenario.client_command().is_some() => self.watch_client().await,
                (_, Some(pool)) => self.bursts(pool).await,
                (Some(plan), None) => self.in_waves(plan).await,
                (None, None) => self.wave(self.scenario.clients.count, None).await,
            },
            Act::Close => self.close().await,
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

    /// `n` clients: each closing as its exchange ends, or all connected and kept for the close
    /// phase.
    async fn wave(&mut self, n: u32, progress: Option<&clients::Progress>) {
        let c = &self.scenario.clients;
        match (c.closing, progress) {
            (Closing::Each, Some(progress)) => {
                for x in clients::each(self.target, n, c, progress).await {
                    match x {
                        Exchange::Done { waited } => {
                            self.outcome.completed += 1;
                            self.slowest = self.slowest.max(Some(waited));
                        }
                        Exchange::GaveUp { port } => self.waited.push(port),
                        Exchange::Failed(e) => self.failed(e),
                    }
                }
            }
            _ => {
                let got = clients::connect_all(self.target, n, c, self.spread).await;
                self.outcome.completed += (got.streams.len() - got.waited.len()) as u32;
                self.streams.extend(got.streams);
                self.waited.extend(got.waited);
                self.slowest = self.slowest.max(got.slowest);
                self.outcome.failed += got.failed;
                if let Some(e) = got.first_error {
                    self.outcome.first_error.get_or_insert(e);
                }
            }
        }
    }

    fn failed(&mut self, error: String) {
        self.outcome.failed += 1;
        self.outcome.first_error.get_or_insert(error);
    }

    /// Ends the connections still open; those whose clients waited in vain are told apart at
    /// the end.
    async fn close(&mut self) {
        let streams = std::mem::take(&mut self.streams);
        let how = self.scenario.clients.close;
        for (when, batch) in spread(streams, self.spread) {
            tokio::time::sleep_until(when).await;
            let (_, kept) = clients::close_all(batch, how);
            self.kept.extend(kept);
        }
    }

    /// `cwlab check`'s clients: a warm-up, then waves, each measured once it settled.
    async fn in_waves(&mut self, plan: WavePlan) {
        let progress = clients::Progress::new();
        let mut waves = Waves { warmup: plan.warmup, ..Waves::default() };
        if plan.warmup > 0 {
            self.wave(plan.warmup, Some(&progress)).await;
            self.close().await;
        }
        waves.baseline = self.settled().await;
        for n in plan.sizes(self.scenario.clients.count) {
            let from_ms = self.t0.elapsed().as_millis() as u64;
            self.wave(n, Some(&progress)).await;
            self.close().await;
            waves.waves.push(Wave { connections: n, from_ms, after: self.settled().await });
        }
        // Every client is closed: the close phase has nothing left to do.
        self.waves = Some(waves);
    }

    /// `cwlab check --client`: runs the user's client against the server and follows its
    /// client-side CLOSE-WAIT sockets, look by look, until it exits or its timeout passes.
    async fn watch_client(&mut self) {
        let cc = self.scenario.client_command().expect("a client check").clone();
        let (host, port) = (self.target.ip().to_string(), self.target.port());
        let url = match self.scenario.behaviour() {
            Some(Behaviour::HttpKeepAlive) => format!("http://{}/", self.target),
            _ => format!("tcp://{}", self.target),
        };
        let command = cc.for_server(&url, &host, port);
        let argv = command.argv.clone();
        let program = Program::Client(ContainOptions {
            command,
            port,
            pid_namespace: self.launch.pid_namespace,
            grace_ms: self.launch.grace.as_millis() as u64,
        });
        let deadline = Instant::now() + cc.timeout;
        let l = Launch { exe: self.launch.exe, program, mark: self.launch.mark, deadline };
        let mut client = match Server::start(&l) {
            Ok(c) => c,
            Err(e) => return self.client = Some(ClientSeen::failed(e.to_string())),
        };
        let mut track = client_check::Tracker::default();
        let interval = self.scenario.sample_interval;
        let mut first = None;
        let timed_out = loop {
            if client.outcome().gone || client.cannot_run.lock().unwrap().is_some() {
                break false;
            }
            // Once its first process has exited, what goes with it is not the client's doing:
            // the looks end there.
            first = first.or_else(|| client_check::first_process(client.pid()));
            if first.is_some_and(|p| !client_check::alive(p)) {
                break false;
            }
            if Instant::now() >= deadline {
                break true;
            }
            let t_ms = self.t0.elapsed().as_millis() as u64;
            if let Ok((_, records)) = self.probe.sample(t_ms, Phase::Connect) {
                track.look(&records, port, t_ms, client.pid());
            }
            // A look every sample interval: a watch, to the client's end or its timeout.
            tokio::time::sleep(interval).await;
        };
        let ms = |t: Instant| t.saturating_duration_since(self.t0).as_millis() as u64;
        let ended_ms = (*client.ended_at.lock().unwrap()).map_or_else(|| ms(Instant::now()), ms);
        client.stop(self.launch.grace);
        let cannot_run = client.cannot_run.lock().unwrap().clone();
        let served: Vec<u64> =
            self.server.served_at.lock().unwrap().iter().map(|t| ms(*t)).collect();
        let holders = track.holders();
        let mut run = track.run(ended_ms, interval.as_millis() as u64, cc.stuck);
        run.runtime = Some(client_check::runtime(&holders, &argv));
        run.command = argv;
        run.requests = served.len() as u64;
        if served.is_empty() {
            run.output = client.output.lines();
        }
        run.exited = match (timed_out, client.outcome().exited) {
            (true, _) => Some(format!("stopped at its timeout ({})", duration::format(cc.timeout))),
            (false, e) => e,
        };
        let rounds =
            track.rounds(&served, self.scenario.server.idle(), interval.as_millis() as u64);
        self.client = Some(ClientSeen { run, holders, rounds, error: cannot_run });
    }

    /// A pool's requests, in bursts: each burst, then until the server's keep-alive timeout has
    /// closed every idle connection (no client socket left ESTAB), then a measure.
    async fn bursts(&mut self, p: Pool) {
        let pool = pool::Pool::new(self.target, p.policy, p.size);
        let mut waves = Waves { bursts: true, baseline: self.measure(), ..Waves::default() };
        let n = self.scenario.clients.count;
        for _ in 0..p.bursts {
            let from_ms = self.t0.elapsed().as_millis() as u64;
            let b = pool.burst(n, &self.scenario.clients).await;
            self.outcome.completed += b.completed;
            self.outcome.failed += b.failed;
            if let Some(e) = b.first_error {
                self.outcome.first_error.get_or_insert(e);
            }
            let after = self.idle_closed().await;
            waves.waves.push(Wave { connections: n, from_ms, after });
        }
        self.pool = Some(pool);
        self.waves = Some(waves);
    }

    /// Waits until no client socket is ESTAB (the server closed every idle connection at its
    /// keep-alive timeout) and the client's CLOSE-WAIT count is the same two looks in a row (a
    /// pool that closes on EOF has closed what it will), to the timeout and 5 s more; then
    /// measures.
    async fn idle_closed(&mut self) -> Measure {
        let deadline = Instant::now() + self.scenario.server.idle() + Duration::from_secs(5);
        let mut before = None;
        loop {
            let m = self.look();
            let open = m.1.get(Side::Client, TcpState::Established);
            let cw = m.0.client_close_wait;
            if (open == 0 && before == Some(cw)) || Instant::now() >= deadline {
                return m.0;
            }
            before = (open == 0).then_some(cw);
            // A look every 20 ms: a wait for a condition, to a deadline.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn measure(&mut self) -> Measure {
        self.look().0
    }

    /// One sample of the port, as a measure and as it is.
    fn look(&mut self) -> (Measure, Sample) {
        let t_ms = self.t0.elapsed().as_millis() as u64;
        match self.probe.sample(t_ms, Phase::Connect) {
            Ok((s, _)) => (
                Measure {
                    t_ms,
                    fds: s.acceptor_fds,
                    close_wait: s.get(Side::Server, TcpState::CloseWait),
                    client_close_wait: s.get(Side::Client, TcpState::CloseWait),
                },
                s,
            ),
            Err(_) => (
                Measure { t_ms, ..Measure::default() },
                Sample {
                    t_ms,
                    phase: Phase::Connect,
                    server: Default::default(),
                    client: Default::default(),
                    acceptor_fds: None,
                    queued: 0,
                    serving: 0,
                },
            ),
        }
    }

    /// Waits (to [`SETTLE`]) until the server's side of the port is quiet: no connection being
    /// set up, served or closed, and the listening process's descriptors unchanged across two
    /// looks; then measures.
    async fn settled(&mut self) -> Measure {
        let deadline = Instant::now() + SETTLE;
        let mut before: Option<Option<u32>> = None;
        loop {
            let (m, s) = self.look();
            let busy = [
                TcpState::SynRecv,
                TcpState::Established,
                TcpState::LastAck,
                TcpState::FinWait1,
                TcpState::Closing,
            ]
            .iter()
            .map(|st| s.get(Side::Server, *st))
            .sum::<u32>();
            let quiet = busy == 0 && before == Some(s.acceptor_fds);
            if quiet || Instant::now() >= deadline {
                return m;
            }
            before = Some(s.acceptor_fds);
            // A look every 20 ms: a wait for a condition, to a deadline.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl ClientSeen {
    fn failed(error: String) -> ClientSeen {
        ClientSeen {
            run: ClientRun::default(),
            holders: Vec::new(),
            rounds: Waves::default(),
            error: Some(error),
        }
    }
}

/// How long the check waits, after a wave, for the server's side to be quiet before it
/// measures anyway.
const SETTLE: Duration = Duration::from_secs(1);

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
            scenario.clients.total(),
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
    let target = match (opts.dial, server.address) {
        (Some(ip), _) => SocketAddr::new(ip, port),
        (None, Some(a)) => a,
        (None, None) => SocketAddr::new(server_host, port),
    };
    if matches!(scenario.program, ServerProgram::Command(_)) {
        rec.report.address = server.address.map(|a| a.to_string());
        if server.address != Some(target) {
            rec.report.dialed = Some(target.to_string());
        }
    }
    let mut work = Work {
        scenario,
        target,
        server: &server,
        streams: Vec::new(),
        kept: Vec::new(),
        outcome: ClientOutcome::default(),
        waited: Vec::new(),
        slowest: None,
        waves: None,
        probe: Probe::open(port, server.acceptor, server_ns)?,
        pool: None,
        spread: opts.spread,
        t0: rec.t0,
        launch: ClientLaunch {
            exe: &opts.exe,
            mark: &opts.run_id,
            pid_namespace,
            grace: opts.grace,
        },
        client: None,
    };
    let clients_from = stuck::now_ticks();
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
            stuck::Tree::Command { acceptor: server.acceptor, root: server.pid(), clients_from }
        }
    };
    let end = stuck::survey(&records, port, tree);
    if let stuck::Tree::Command { acceptor, .. } = tree {
        let traced = forks.is_some_and(|f| f.iter().any(|f| stuck::thread_of(f.parent, acceptor)));
        rec.report.acceptor.forked = Some(traced || stuck::forked(acceptor, faults_before));
    }
    (rec.report.holders, rec.report.fds_by_role) = (end.holders, end.fds_by_role);
    rec.report.client_outcome = outcome(&mut work, &records, port);
    rec.report.waves = work.waves.take();
    if let Some(seen) = work.client.take() {
        if let Some(e) = seen.error {
            drop(work);
            server.stop(Duration::ZERO);
            return Err(RunError::BadInput(e));
        }
        rec.report.holders.extend(seen.holders);
        rec.report.holders.sort_by_key(|h| (h.side, h.state, h.pid, h.fd));
        rec.report.clients = seen.run.requests as u32;
        rec.report.client_outcome.completed = rec.report.clients;
        rec.report.waves = Some(seen.rounds);
        rec.report.client = Some(seen.run);
    }
    drop(work);
    server.stop(opts.grace);
    rec.report.server = server.outcome();
    if rec.report.server.gone || rec.stop.is_some() || rec.report.server.exited.is_some() {
        rec.report.server_output = server.output.lines();
    }
    Ok(finish(rec, scenario, timeout))
}

/// What the clients saw, every client counted once. A client that waited in vain for its reply
/// (or EOF) was served when the server's side of its connection is held by a process at the
/// end (hung), and never accepted when it is not (failed); when that side is gone, the server
/// answered after the client had given up (completed, late).
fn outcome(
    work: &mut Work<'_>,
    records: &[cwlab_sampler::SocketRecord],
    port: u16,
) -> ClientOutcome {
    let mut o = std::mem::take(&mut work.outcome);
    o.slowest_ms = work.slowest.map(|d| d.as_millis() as u64);
    let waited: std::collections::HashSet<u16> = work.waited.iter().copied().collect();
    let mut seen = std::collections::HashSet::new();
    for r in records.iter().filter(|r| r.local.port() == port && waited.contains(&r.remote.port()))
    {
        if !seen.insert(r.remote.port()) || r.state == TcpState::Listen {
            continue;
        }
        if r.inode != 0 {
            o.hung += 1;
        } else {
            o.unaccepted += 1;
            o.failed += 1;
            o.first_error.get_or_insert_with(|| {
                "not accepted: the connection waited in the accept queue until the client gave up"
                    .into()
            });
        }
    }
    // The others' servers answered after they had given up.
    o.late = waited.len() as u32 - o.hung - o.unaccepted;
    o.completed += o.late;
    o
}

/// A user's server that fewer than half of the connections reached: no verdict stands on
/// connections that did not happen. Says how many did, the first client error and where the
/// server listens.
fn too_few(r: &Report) -> Option<String> {
    let o = &r.client_outcome;
    if r.scenario.command.is_none() || o.happened() * 2 >= r.clients {
        return None;
    }
    let first = o.first_error.as_deref().unwrap_or("none");
    let why = match (r.server.gone, &r.server.exited) {
        (true, Some(how)) => format!("the server went away during the run ({how})"),
        (true, None) => "the server went away during the run".into(),
        _ => match &r.dialed {
            Some(d) => format!(
                "the clients dialed {d}; the server listens on {}",
                r.address.as_deref().unwrap_or("?")
            ),
            None => format!("the server listens on {}", r.address.as_deref().unwrap_or("?")),
        },
    };
    Some(format!(
        "only {} of {} connections happened, too few for a verdict: {why}; the first client error: {first}",
        o.happened(),
        r.clients
    ))
}

/// A user's client (`cwlab check --client`) that never reached the lab's server: nothing to
/// judge.
fn no_requests(r: &Report) -> Option<String> {
    let c = r.client.as_ref().filter(|c| c.requests == 0)?;
    let how = c.exited.as_deref().unwrap_or("it did not end");
    let last = match c.output.as_slice() {
        [] => "; it printed nothing".to_string(),
        lines => format!("; its last lines:\n  {}", lines.join("\n  ")),
    };
    Some(format!("the client made no request to the lab's server on port {} ({how}){last}", r.port))
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
    let need = u64::from(scenario.clients.total()) + 64;
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
        .or_else(|| (!missing.is_empty()).then(|| missing.join("; ")))
        .or_else(|| too_few(&r))
        .or_else(|| no_requests(&r));
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
