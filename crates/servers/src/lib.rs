//! The forking servers of closewait-lab: an acceptor that forks a handler per connection and ends
//! each connection the way its [`Behaviour`] says.
//!
//! These run in a process of their own (`cwlab serve`), which never starts a thread or a runtime:
//! fork() in a threaded process copies one thread and whatever locks the others held. The runner
//! talks to the server through its standard streams:
//! - stdin is the lifeline: the server exits when it reads end-of-file, so it dies with the runner
//!   even where PR_SET_PDEATHSIG could not be armed in time;
//! - stdout carries one [`ServerMessage`](cwlab_model::protocol::ServerMessage) a line: the
//!   acceptor's pid (when a PID namespace put the acceptor one fork further), that it listens and
//!   on which port, then each accept and each failed accept.
//!
//! Processes name themselves (`comm`) for `ps` and for the runner's roles: `cwlab-acceptor`,
//! `cwlab-handler`, `cwlab-worker`; a helper is `cwlab helper`, exec'd.
#![warn(missing_docs)]

mod acceptor;
mod container;
mod handler;
mod process;

use std::io;

pub use cwlab_model::scenario::Behaviour;

/// How to start a server: the options the runner hands over, typed once in the model.
pub type Config = cwlab_model::protocol::ServeOptions;

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

/// A helper: started by fork+exec from a handler, it holds whatever it inherited until its stdin
/// (the runner's lifeline) reaches end-of-file.
pub fn helper() -> i32 {
    let mut buf = [0u8; 64];
    while matches!(nix::unistd::read(0, &mut buf), Ok(n) if n > 0) {}
    0
}

/// Runs a server of the user's own, contained (see `container.rs`), until the lifeline (stdin)
/// closes or nothing of it is left. Returns the process's exit status.
pub fn contain(o: &cwlab_model::protocol::ContainOptions) -> Result<i32, Error> {
    // SAFETY: close_range(2) on descriptors nothing in this process owns yet: the user's server
    // starts with stdin, stdout and stderr only, whatever the runner's parent left open.
    unsafe { libc::close_range(3, u32::MAX, 0) };
    container::contain(o)
}

/// Runs a server until the lifeline (stdin) closes. Returns the process's exit status.
pub fn serve(cfg: &Config) -> Result<i32, Error> {
    // Start from a clean descriptor table: whatever the runner's own parent left open without
    // CLOEXEC would otherwise sit in every process here and blur the acceptor's fd count.
    // SAFETY: close_range(2) on descriptors nothing in this process owns: `cwlab serve` has
    // opened nothing of its own yet, and whatever it inherited is not wrapped in an owner.
    unsafe { libc::close_range(3, u32::MAX, 0) };
    // SIGUSR1 releases waiting handlers; every other process of the server must survive it, the
    // supervisor included: block it before anything forks, and the mask is inherited.
    let mut usr1 = nix::sys::signal::SigSet::empty();
    usr1.add(nix::sys::signal::Signal::SIGUSR1);
    nix::sys::signal::sigprocmask(nix::sys::signal::SigmaskHow::SIG_BLOCK, Some(&usr1), None)
        .map_err(errno("block SIGUSR1"))?;
    if let Some(n) = cfg.limits.nofile {
        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, n, n)
            .map_err(errno(format!("set RLIMIT_NOFILE to {n}")))?;
    }
    if cfg.net_namespace {
        // Before the PID namespace's fork: the supervisor and the acceptor both live there, and
        // the runner finds the namespace through the supervisor, its own child.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(errno("unshare a network namespace"))?;
    }
    if cfg.pid_namespace {
        if let Some(status) = process::enter_pid_namespace()? {
            // The supervisor: the acceptor ran in the namespace and has exited.
            return Ok(status);
        }
    }
    acceptor::run(cfg)
}
