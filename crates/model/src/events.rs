//! `cwlab run --events`: a run as JSON Lines on stdout, one `{"type": …, "data": …}` object per
//! line, for a live view in another process (`cwlab demo`) or any tool.
//!
//! # Format
//!
//! ```text
//! {"type":"started","data":{"scenario":"leak","headline":"…","port":40123,"isolation":"netns"}}
//! {"type":"phase","data":{"phase":"connect","t_ms":0}}
//! {"type":"sample","data":{"t_ms":50,"phase":"connect","server":{…},"client":{…},"acceptor_fds":54}}
//! {"type":"waiting","data":{"next":"close"}}      // with --step: send a line on stdin to go on
//! {"type":"report","data":{…the whole report…}}   // last
//! ```

use serde::{Deserialize, Serialize};

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
