//! What a run says as it goes, and the one trait every face of the lab implements.
//!
//! The runner reports each [`RunEvent`] to a [`Reporter`] as the run goes; the caller hands the
//! finished [`Report`] to the same reporter's [`Reporter::finish`], and calls
//! [`Reporter::close`] once every run has ended. The human summary, JSON, JSON Lines, the
//! progress line, the SVG chart, JUnit XML and the live view are reporters.
//!
//! `cwlab run --events` writes the events as JSON Lines on stdout, one `{"type": …, "data": …}`
//! object per line, for a live view in another process (`cwlab demo`) or any tool.
//!
//! # Format
//!
//! ```text
//! {"type":"started","data":{"scenario":"leak","headline":"…","port":40123,"isolation":"netns"}}
//! {"type":"phase","data":{"phase":"connect","t_ms":0}}
//! {"type":"sample","data":{"t_ms":50,"phase":"connect","server":{…},"client":{…},"acceptor_fds":54}}
//! {"type":"witnessed","data":{"counts":[…],"connection":{"client_port":42334,…}}}
//! {"type":"waiting","data":{"next":"close"}}      // with --step: send a line on stdin to go on
//! {"type":"report","data":{…the whole report…}}   // last
//! ```

use std::io;

use serde::{Deserialize, Serialize};

use crate::evidence::{ConnectionTrace, TransitionCount};
use crate::report::{Isolation, Phase, Report, Sample};

/// One line of `--events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "lowercase", deny_unknown_fields)]
pub enum RunEvent {
    /// The server listens.
    Started(Started),
    /// A phase began.
    Phase(PhaseStart),
    /// A sample was taken.
    Sample(Sample),
    /// The run waits for a line on stdin before the next phase (`--step`).
    Waiting(Waiting),
    /// What the kernel's transitions and the wire showed so far (sent with a sample, when
    /// something new was seen).
    Witnessed(Witnessed),
    /// The run ended; this is its report.
    Report(Box<Report>),
}

/// The server listens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Started {
    /// The scenario's name.
    pub scenario: String,
    /// The first line of its story.
    pub headline: String,
    /// The server's port.
    pub port: u16,
    /// The isolation in force.
    pub isolation: Isolation,
}

/// A phase began.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseStart {
    /// The phase.
    pub phase: Phase,
    /// When, in ms since LISTEN.
    pub t_ms: u64,
}

/// What the witnesses saw so far: the live state machine's arrows and the live ladder.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Witnessed {
    /// Transitions so far, per side.
    pub counts: Vec<TransitionCount>,
    /// The run's first connection, every step so far.
    pub connection: Option<ConnectionTrace>,
}

/// The run waits before a phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Waiting {
    /// The phase about to begin.
    pub next: Phase,
}

/// What is about to happen in a phase, and what to watch, for a presenter.
pub fn cue(next: Phase) -> &'static str {
    match next {
        Phase::Connect => "clients connect, send a request, read the echo. Watch ESTAB climb on both sides.",
        Phase::Close => "clients close their sockets. Watch the server side: does a FIN come back, or does CLOSE-WAIT pile up?",
        Phase::Hold => "nobody does anything. Watch what stays: CLOSE-WAIT held by whom, FIN-WAIT-2 or TIME-WAIT on the clients.",
        Phase::End => "the last sample, the holders and the verdict.",
        Phase::Listen => "the server listens.",
    }
}

/// A face of the lab: it is told each event of a run, then the run's report, then that every run
/// has ended. Each method does nothing unless the reporter needs it.
pub trait Reporter {
    /// An event of the run in progress (never [`RunEvent::Report`]: that is [`Reporter::finish`]).
    fn event(&mut self, _event: &RunEvent) {}

    /// A run ended with this report.
    fn finish(&mut self, _report: &Report) -> io::Result<()> {
        Ok(())
    }

    /// Every run has ended: write what covers them all.
    fn close(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Several reporters as one, each told everything in the order given.
#[derive(Default)]
pub struct Reporters(pub Vec<Box<dyn Reporter>>);

impl Reporter for Reporters {
    fn event(&mut self, event: &RunEvent) {
        for r in &mut self.0 {
            r.event(event);
        }
    }

    fn finish(&mut self, report: &Report) -> io::Result<()> {
        self.0.iter_mut().try_for_each(|r| r.finish(report))
    }

    fn close(&mut self) -> io::Result<()> {
        self.0.iter_mut().try_for_each(|r| r.close())
    }
}
