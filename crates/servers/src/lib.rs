//! The forking servers of closewait-lab: an acceptor that forks a handler per connection and ends
//! each connection the way its [`Behaviour`] says.
//!
//! These run in a process of their own (`cwlab serve`), which never starts a thread or a runtime:
//! fork() in a threaded process copies one thread and whatever locks the others held. The runner
//! talks to the server through its standard streams:
//! - stdin is the lifeline: the server exits when it reads end-of-file, so it dies with the runner
//!   even where PR_SET_PDEATHSIG could not be armed in time;
//! - stdout carries one event a line: `acceptor PID` (when a PID namespace put the acceptor one
//!   fork further), `listening PORT`, then `accepted N` after each accept and `accept-error ERRNO`
//!   when accept fails.
#![warn(missing_docs)]

mod acceptor;
mod handler;
mod process;

use std::io;
use std::net::IpAddr;

pub use cwlab_model::scenario::Behaviour;

/// How to start a server.
#[derive(Debug, Clone)]
pub struct Config {
    /// How connections end.
    pub behaviour: Behaviour,
    /// The address to listen on.
    pub addr: IpAddr,
    /// The port; 0 picks a free one.
    pub port: u16,
    /// The listen(2) backlog.
    pub backlog: i32,
    /// Put the acceptor in a new PID namespace as its init: when it dies, the kernel kills every
    /// process the server started, helpers included.
    pub pid_namespace: bool,
}

/// A server that could not start or went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call failed.
    #[error("failed to {what}")]
    Sys {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

pub(crate) fn sys(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |source| Error::Sys { what, source }
}

pub(crate) fn errno(what: impl Into<String>) -> impl FnOnce(nix::Error) -> Error {
    let what = what.into();
    move |e| Error::Sys { what, source: io::Error::from(e) }
}

/// Runs a server until the lifeline (stdin) closes. Returns the process's exit status.
pub fn serve(cfg: &Config) -> Result<i32, Error> {
    // Start from a clean descriptor table: whatever the runner's own parent left open without
    // CLOEXEC would otherwise sit in every process here and blur the acceptor's fd count.
    // SAFETY: close_range(2) on descriptors this process has not taken ownership of yet.
    unsafe { libc::close_range(3, u32::MAX, 0) };
    if cfg.pid_namespace {
        if let Some(status) = process::enter_pid_namespace()? {
            // The supervisor: the acceptor ran in the namespace and has exited.
            return Ok(status);
        }
    }
    acceptor::run(cfg)
}
