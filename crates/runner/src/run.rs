//! One run of one scenario, from isolation to verdict.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cwlab_model::expect::{evaluate, Evidence};
use cwlab_model::report::{
    Acceptor, ClientOutcome, Isolation, Phase, PhaseMark, Report, Sample, ScenarioRef, Verdict,
    SCHEMA_VERSION,
};
use cwlab_model::Scenario;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::clients;
use crate::isolation::{self, IsolationMode};
use crate::sampling::{PhaseCell, Probe, Sampler};
use crate::server::{Launch, Server};
use crate::{io, stuck, RunError};

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
}

struct Timeline<'e> {
    t0: Instant,
    phase: PhaseCell,
    marks: Vec<PhaseMark>,
    samples: Vec<Sample>,
    on_event: &'e mut dyn FnMut(Event<'_>),
}

impl Timeline<'_> {
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

    /// Runs `fut` while filing every sample that arrives.
    async fn sampling<F: Future>(
        &mut self,
        rx: &mut UnboundedReceiver<Sample>,
        fut: F,
    ) -> F::Output {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                biased;
                Some(s) = rx.recv() => self.push(s),
                out = &mut fut => return out,
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
    let deadline = started + timeout;
    let (isolation, note) = isolation::enter(opts.isolation)?;
    let addr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut server = Server::start(&Launch {
        exe: &opts.exe,
        behaviour: scenario.behaviour,
        addr,
        port: scenario.port,
        pid_namespace: isolation == Isolation::Netns,
        mark: &opts.run_id,
        deadline,
    })?;
    let port = server.port;
    let mut tl = Timeline {
        t0: Instant::now(),
        phase: PhaseCell::default(),
        marks: vec![PhaseMark { phase: Phase::Listen, t_ms: 0 }],
        samples: Vec::new(),
        on_event,
    };
    (tl.on_event)(Event::Started { scenario, isolation, note: note.as_deref(), port });
    let mut probe = Probe::open(port, server.acceptor)?;
    let (first, _) = probe.sample(0, Phase::Listen)?;
    let fds_baseline = first.acceptor_fds;
    tl.push(first);

    let (tx, mut rx) = unbounded_channel();
    let mut sampler = Sampler::spawn(
        Probe::open(port, server.acceptor)?,
        scenario.sample_interval,
        tl.t0,
        tl.phase.clone(),
        tx,
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io("start the client runtime"))?;
    let target = SocketAddr::new(addr, port);
    let mut timed_out = None;
    let outcome = rt.block_on(async {
        let tokio_deadline = tokio::time::Instant::from_std(deadline);
        tl.enter(Phase::Connect);
        let connect = tl.sampling(&mut rx, clients::connect_all(target, &scenario.clients));
        let Ok((streams, mut outcome)) = tokio::time::timeout_at(tokio_deadline, connect).await
        else {
            timed_out = Some(Phase::Connect);
            return ClientOutcome::default();
        };
        tl.enter(Phase::Close);
        outcome.completed = clients::close_all(streams, scenario.clients.close);
        tl.enter(Phase::Hold);
        let hold_end = (tokio::time::Instant::now() + scenario.hold).min(tokio_deadline);
        tl.sampling(&mut rx, tokio::time::sleep_until(hold_end)).await;
        outcome
    });
    sampler.stop()?;
    while let Ok(s) = rx.try_recv() {
        tl.push(s);
    }
    tl.enter(Phase::End);
    let (last, records) = probe.sample(tl.now_ms(), Phase::End)?;
    let fds_end = last.acceptor_fds;
    let final_counts = last.counts();
    tl.push(last);
    let holders = stuck::find(&records, port, server.acceptor);
    let acceptor = server.acceptor;
    server.stop();

    let hold_from_ms =
        tl.marks.iter().find(|m| m.phase == Phase::Hold).map_or(u64::MAX, |m| m.t_ms);
    let evidence = Evidence {
        samples: &tl.samples,
        hold_from_ms,
        fds_baseline,
        holders: &holders,
        clients: scenario.clients.count,
    };
    let expectations: Vec<_> =
        scenario.expectations.iter().map(|e| evaluate(e, &evidence)).collect();
    let error = timed_out.map(|p| {
        format!(
            "timeout: the {p} phase did not finish within the run's {}",
            cwlab_model::duration::format(timeout)
        )
    });
    let verdict = if error.is_some() {
        Verdict::Error
    } else if expectations.iter().all(|e| e.passed) {
        Verdict::Pass
    } else {
        Verdict::Fail
    };
    Ok(Report {
        schema_version: SCHEMA_VERSION,
        scenario: ScenarioRef {
            name: scenario.name.clone(),
            file: scenario.file.display().to_string(),
            behaviour: scenario.behaviour.name().to_string(),
            story: scenario.story.clone(),
        },
        isolation,
        isolation_note: note,
        port,
        clients: scenario.clients.count,
        acceptor: Acceptor { pid: acceptor, fds_baseline, fds_end },
        phases: tl.marks,
        samples: tl.samples,
        final_counts,
        holders,
        client_outcome: outcome,
        expectations,
        verdict,
        error,
        interrupted: false,
        duration_ms: started.elapsed().as_millis() as u64,
    })
}
