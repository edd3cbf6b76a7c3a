//! The run as it is being recorded: the report so far and the reporter that hears of each
//! step; the phases as data; and the guard every phase runs under (the deadline, a signal, the
//! samples to file meanwhile).

use std::future::Future;
use std::os::fd::OwnedFd;
use std::time::Instant;

use cwlab_model::events::{PhaseStart, Reporter, RunEvent};
use cwlab_model::report::{Phase, PhaseMark, Report, Sample};
use cwlab_os::signals;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::sampling::PhaseCell;
use crate::witness::Live;

/// Why a run stopped before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    Interrupted(i32),
    Timeout,
}

/// One phase of a run, as data: its name, what it does, and by when it must be done.
pub(super) struct Step {
    pub(super) phase: Phase,
    pub(super) act: Act,
    pub(super) deadline: tokio::time::Instant,
}

/// What a phase does.
#[derive(Debug, Clone, Copy)]
pub(super) enum Act {
    /// Every client connects, sends its request and reads what the scenario says.
    Connect,
    /// Every client closes (or half-closes) its connection.
    Close,
    /// Handlers waiting for a release get it; then nobody does anything for the hold.
    Hold,
}

/// The phases of a run, in order; each must end by the run's deadline.
pub(super) fn plan(deadline: tokio::time::Instant) -> [Step; 3] {
    [
        Step { phase: Phase::Connect, act: Act::Connect, deadline },
        Step { phase: Phase::Close, act: Act::Close, deadline },
        Step { phase: Phase::Hold, act: Act::Hold, deadline },
    ]
}

/// The report as it is being made, and the reporter that hears of each step.
pub(super) struct Record<'r> {
    pub(super) report: Report,
    pub(super) started: Instant,
    /// When the server listened (until then, when the run began): sample times count from it.
    pub(super) t0: Instant,
    pub(super) phase: PhaseCell,
    pub(super) reporter: &'r mut dyn Reporter,
    pub(super) stop: Option<(Stop, Phase)>,
    pub(super) live: Option<Live>,
}

impl<'r> Record<'r> {
    /// The record of a run that began at `started`, telling `reporter`.
    pub(super) fn new(report: Report, started: Instant, reporter: &'r mut dyn Reporter) -> Self {
        Record {
            report,
            started,
            t0: Instant::now(),
            phase: PhaseCell::default(),
            reporter,
            stop: None,
            live: None,
        }
    }

    pub(super) fn now_ms(&self) -> u64 {
        self.t0.elapsed().as_millis() as u64
    }

    pub(super) fn enter(&mut self, phase: Phase) {
        let t_ms = self.now_ms();
        self.phase.set(phase);
        self.report.phases.push(PhaseMark { phase, t_ms });
        self.reporter.event(&RunEvent::Phase(PhaseStart { phase, t_ms }));
    }

    pub(super) fn push(&mut self, s: Sample) {
        let event = RunEvent::Sample(s);
        self.reporter.event(&event);
        let RunEvent::Sample(s) = event else { unreachable!("made above") };
        self.report.samples.push(s);
        if let Some(w) = self.live.as_ref().and_then(Live::take) {
            self.reporter.event(&RunEvent::Witnessed(w));
        }
    }

    pub(super) fn stopped(&mut self, why: Stop) {
        if self.stop.is_none() {
            self.stop = Some((why, self.phase.get()));
        }
    }

    /// Runs `fut` while filing every sample that arrives, until it ends, the deadline passes or a
    /// signal arrives.
    pub(super) async fn guard<F: Future>(
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
