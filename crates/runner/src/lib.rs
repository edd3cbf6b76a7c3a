//! Runs a scenario: a private network namespace, the forking server, the clients, a sampler
//! watching the socket table, the holders of what is stuck at the end, and the verdict.
//!
//! The runner never prints. It reports each [`RunEvent`](cwlab_model::events::RunEvent) to a
//! [`Reporter`](cwlab_model::events::Reporter) as the run goes, and returns the
//! [`Report`](cwlab_model::Report); human output, JSON and charts are the caller's. See `docs/runner.md` for the event
//! lifecycle and the checklist for adding a scenario.
#![warn(missing_docs)]

mod client_check;
mod clients;
mod hosts;
mod isolation;
mod pool;
mod run;
mod sampling;
mod server;
mod stuck;
mod witness;

/// Moved to `cwlab-os`; re-exported while `cwlab watch`'s command still names them here.
pub use cwlab_os::{signals, write_atomically, AtomicFile};
pub use isolation::IsolationMode;
pub use run::{run, GoAhead, Options, Pace, GRACE};
pub use server::RUN_MARK;
pub use witness::janitor;

/// Why a run could not produce a verdict.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The environment cannot run the scenario (exit 2).
    #[error("{0}")]
    Environment(String),
    /// The scenario asks for what this machine cannot give (exit 2).
    #[error("{0}")]
    BadInput(String),
    /// A signal arrived before the server listened (exit 128 + the signal).
    #[error("interrupted by {} before the server listened", signals::name(*.0))]
    Interrupted(i32),
    /// A system call failed (exit 2).
    #[error("failed to {what}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The socket table could not be read (exit 2).
    #[error(transparent)]
    Sampler(#[from] cwlab_sampler::Error),
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RunError {
    let what = what.into();
    move |source| RunError::Io { what, source }
}
