//! Process plumbing: the PID namespace, the death signal, the standard streams of a handler.
//!
//! # References
//! pid_namespaces(7), prctl(2) (`PR_SET_PDEATHSIG`, `PR_SET_CHILD_SUBREAPER`), unshare(2).

use std::os::fd::AsRawFd;

use cwlab_model::protocol::ServerMessage;

use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use crate::{errno, Error};

/// Unshares a PID namespace and forks its init, which becomes the acceptor. Returns `None` in
/// the acceptor, and `Some(status)` in the supervisor once the acceptor has exited.
pub fn enter_pid_namespace() -> Result<Option<i32>, Error> {
    unshare(CloneFlags::CLONE_NEWPID).map_err(errno("unshare a PID namespace"))?;
    let parent = Pid::this();
    // SAFETY: this process never started a thread.
    match unsafe { fork() }.map_err(errno("fork the acceptor"))? {
        ForkResult::Child => {
            die_with_parent(parent)?;
            Ok(None)
        }
        ForkResult::Parent { child } => {
            crate::acceptor::event(ServerMessage::Acceptor { pid: child.as_raw() as u32 })?;
            loop {
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, code)) => return Ok(Some(code)),
                    Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(Some(128 + sig as i32)),
                    Ok(_) | Err(nix::Error::EINTR) => continue,
                    Err(e) => return Err(errno("wait for the acceptor")(e)),
                }
            }
        }
    }
}

/// Arms SIGKILL for when the parent dies, then checks the parent did not die first.
/// `parent` is the parent's pid before the fork. A namespace's init sees its parent as pid 0, so
/// there the check cannot tell, and the supervisor's lifeline covers that race instead.
pub fn die_with_parent(parent: Pid) -> Result<(), Error> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(errno("arm PR_SET_PDEATHSIG"))?;
    let now = nix::unistd::getppid();
    if now != parent && now.as_raw() != 0 {
        // The parent is already gone: no signal will come.
        std::process::exit(1);
    }
    Ok(())
}

/// Points stdout at /dev/null: a handler does not keep the event pipe. With `lifeline` false,
/// stdin too.
pub fn detach_stdio(lifeline: bool) {
    if let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
        if !lifeline {
            let _ = nix::unistd::dup2(null.as_raw_fd(), 0);
        }
        let _ = nix::unistd::dup2(null.as_raw_fd(), 1);
    }
}

/// Names the calling process (`comm`, at most 15 bytes), as `ps` and the runner's roles see it.
pub fn set_name(name: &std::ffi::CStr) {
    let _ = nix::sys::prctl::set_name(name);
}

/// Blocks until the process is killed.
pub fn wait_forever() -> ! {
    loop {
        nix::unistd::pause();
    }
}

/// Leaves a forked child at once: _exit(2) skips the atexit handlers and the buffered stdout it
/// shares with the acceptor.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit(2) is async-signal-safe and never returns; nothing here needs unwinding.
    unsafe { libc::_exit(code) }
}
