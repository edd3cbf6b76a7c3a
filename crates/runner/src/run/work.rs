//! What the phases act on: the clients' connections (all at once, spread over a room's pace,
//! in `cwlab check`'s waves, or a pool's bursts), a client of the user's own, and the server;
//! and what the clients saw, every client counted once.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cwlab_model::protocol::ContainOptions;
use cwlab_model::report::{
    ClientOutcome, ClientRun, Holder, Measure, Phase, Sample, Side, Wave, Waves,
};
use cwlab_model::scenario::{Behaviour, Closing, Pool, WavePlan};
use cwlab_model::{duration, Scenario, TcpState};

use super::record::Act;
use crate::clients::{self, Exchange};
use crate::sampling::Probe;
use crate::server::{Launch, Program, Server};
use crate::{client_check, pool};

/// What the phases act on: the clients' connections and the server.
pub(super) struct Work<'a> {
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
    pub(super) waves: Option<Waves>,
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
    pub(super) client: Option<ClientSeen>,
}

/// What starting a client of the user's own takes.
pub(super) struct ClientLaunch<'a> {
    pub(super) exe: &'a std::path::Path,
    pub(super) mark: &'a str,
    pub(super) pid_namespace: bool,
    pub(super) grace: Duration,
}

/// What `cwlab check --client` saw of the client.
pub(super) struct ClientSeen {
    pub(super) run: ClientRun,
    pub(super) holders: Vec<Holder>,
    pub(super) rounds: Waves,
    /// Why it could not run, when it could not.
    pub(super) error: Option<String>,
}

impl<'a> Work<'a> {
    /// Nothing done yet: the clients of `scenario` will dial `target`, where `server` listens.
    pub(super) fn new(
        scenario: &'a Scenario,
        target: SocketAddr,
        server: &'a Server,
        probe: Probe,
        spread: Duration,
        t0: Instant,
        launch: ClientLaunch<'a>,
    ) -> Self {
        Work {
            scenario,
            target,
            server,
            streams: Vec::new(),
            kept: Vec::new(),
            outcome: ClientOutcome::default(),
            waited: Vec::new(),
            slowest: None,
            waves: None,
            probe,
            pool: None,
            spread,
            t0,
            launch,
            client: None,
        }
    }

    pub(super) async fn act(&mut self, act: Act) {
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

    /// What the clients saw, every client counted once. A client that waited in vain for its reply
    /// (or EOF) was served when the server's side of its connection is held by a process at the
    /// end (hung), and never accepted when it is not (failed); when that side is gone, the server
    /// answered after the client had given up (completed, late).
    pub(super) fn outcome(
        &mut self,
        records: &[cwlab_sampler::SocketRecord],
        port: u16,
    ) -> ClientOutcome {
        let mut o = std::mem::take(&mut self.outcome);
        o.slowest_ms = self.slowest.map(|d| d.as_millis() as u64);
        let waited: std::collections::HashSet<u16> = self.waited.iter().copied().collect();
        let mut seen = std::collections::HashSet::new();
        for r in
            records.iter().filter(|r| r.local.port() == port && waited.contains(&r.remote.port()))
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
