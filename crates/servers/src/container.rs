//! `cwlab contain`: a server of the user's own (any language), contained. With a PID namespace,
//! the supervisor forks an init of the lab's; the init forks and execs the command and stays: it
//! reaps whatever the server leaves behind (a daemon that double-forks is reparented to it), says
//! when the command's first process ended and when nothing of the server is left, and when the
//! lifeline (stdin) closes it stops everything: SIGTERM to every process of the namespace, the
//! grace, then its own exit, on which the kernel kills what is left. Without a PID namespace
//! the same init runs in the supervisor's place and signals its process group instead.
//!
//! The command's stdout and stderr both go to our stderr, which the runner drains; our stdout
//! carries [`ServerMessage`]s.
//!
//! # References
//! pid_namespaces(7) (the init of a namespace; `kill(-1, …)` inside it), execvp(3), waitpid(2).

use std::ffi::CString;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cwlab_model::protocol::{ContainOptions, ServerMessage};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use crate::acceptor::event;
use crate::{errno, process, Error};

static CHILD_EXITED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigchld(_: libc::c_int) {
    CHILD_EXITED.store(true, Ordering::SeqCst);
}

/// Runs the command contained until the lifeline closes or nothing of it is left.
pub fn contain(o: &ContainOptions) -> Result<i32, Error> {
    if o.pid_namespace {
        if let Some(status) = process::enter_pid_namespace()? {
            return Ok(status);
        }
    }
    init(o)
}

/// The init: start the command, reap, report, stop everything when told.
fn init(o: &ContainOptions) -> Result<i32, Error> {
    process::set_name(c"cwlab-init");
    let wake = SigAction::new(SigHandler::Handler(on_sigchld), SaFlags::empty(), SigSet::empty());
    // SAFETY: the handler only stores to an atomic (async-signal-safe); this process has one
    // thread and nothing else relies on SIGCHLD's disposition.
    unsafe { sigaction(Signal::SIGCHLD, &wake) }.map_err(errno("install a SIGCHLD handler"))?;
    // SIGTERM is for the server, not for its init.
    // SAFETY: ignoring a signal installs no code.
    unsafe { nix::sys::signal::signal(Signal::SIGTERM, SigHandler::SigIgn) }
        .map_err(errno("ignore SIGTERM"))?;
    // Orphans come back here without a PID namespace too.
    nix::sys::prctl::set_child_subreaper(true).map_err(errno("become a child subreaper"))?;
    let argv: Vec<CString> = o
        .command
        .argv
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|_| Error::Sys {
            what: "pass the command's arguments".into(),
            source: std::io::Error::other("an argument holds a NUL byte"),
        })?;
    let me = Pid::this();
    // SAFETY: this process never started a thread.
    let command = match unsafe { fork() }.map_err(errno("fork the server's command"))? {
        ForkResult::Child => exec(o, &argv, me),
        ForkResult::Parent { child } => child,
    };
    watch(command, o.pid_namespace, Duration::from_millis(o.grace_ms))
}

/// In the child: the environment, the folder, the streams, then exec. Never returns.
fn exec(o: &ContainOptions, argv: &[CString], parent: Pid) -> ! {
    if process::die_with_parent(parent).is_err() {
        process::exit_now(1);
    }
    // SAFETY: restoring default dispositions installs no code.
    unsafe {
        let _ = nix::sys::signal::signal(Signal::SIGTERM, SigHandler::SigDfl);
        let _ = nix::sys::signal::signal(Signal::SIGCHLD, SigHandler::SigDfl);
    }
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&SigSet::empty()),
        None,
    );
    std::env::set_var("PORT", o.port.to_string());
    for (k, v) in &o.command.env {
        std::env::set_var(k, v);
    }
    // The runner's message pipe, kept to say why exec failed; close-on-exec, so the server
    // never sees it.
    let messages = std::io::stdout().as_fd().try_clone_to_owned().ok();
    // Its stdout joins its stderr, which the runner drains; stdin reads nothing.
    let _ = nix::unistd::dup2(2, 1);
    if let Ok(null) = std::fs::File::open("/dev/null") {
        let _ = nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 0);
    }
    let program = argv[0].to_string_lossy().into_owned();
    if let Some(dir) = &o.command.cwd {
        if let Err(e) = std::env::set_current_dir(dir) {
            let reason = format!("cannot enter {}: {e}", dir.display());
            cannot_run(messages, program, reason);
        }
    }
    let e = nix::unistd::execvp(&argv[0], argv).unwrap_err();
    let reason = why_not(&program, e);
    cannot_run(messages, program, reason)
}

/// Says why the command could not be executed, on the message pipe and on stderr; exits 127.
fn cannot_run(messages: Option<std::os::fd::OwnedFd>, program: String, reason: String) -> ! {
    eprintln!("cwlab: {program}: {reason}");
    if let Some(fd) = messages {
        let line = ServerMessage::CannotRun { program, reason }.line();
        let _ = std::io::Write::write_all(&mut std::fs::File::from(fd), line.as_bytes());
    }
    process::exit_now(127)
}

/// Why execvp(3) failed, as a shell says it.
fn why_not(program: &str, e: nix::Error) -> String {
    let path = std::path::Path::new(program);
    match e {
        nix::Error::ENOENT if !program.contains('/') => "command not found".into(),
        nix::Error::ENOENT => "no such file or directory".into(),
        nix::Error::EACCES if path.is_dir() => "is a directory".into(),
        nix::Error::EACCES => "permission denied (not executable)".into(),
        nix::Error::ENOEXEC => "not an executable (exec format error)".into(),
        e => std::io::Error::from(e).to_string(),
    }
}

/// Reaps and reports until the lifeline closes (then stops the server) or no child is left.
fn watch(command: Pid, namespace: bool, grace: Duration) -> Result<i32, Error> {
    let stdin = std::io::stdin();
    loop {
        let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::Error::EINTR) => {}
            Err(e) => return Err(errno("poll")(e)),
        }
        if fds[0].revents().is_some_and(|r| !r.is_empty()) && lifeline_closed() {
            stop(namespace, grace);
            return Ok(0);
        }
        if CHILD_EXITED.swap(false, Ordering::SeqCst) && reap(command)? {
            event(ServerMessage::Empty)?;
            return Ok(0);
        }
    }
}

/// Reaps every exited child, reporting the command's own end. True when no child is left.
fn reap(command: Pid) -> Result<bool, Error> {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return Ok(false),
            Ok(WaitStatus::Exited(pid, code)) if pid == command => {
                event(ServerMessage::Exited { status: format!("exit status {code}") })?;
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == command => {
                event(ServerMessage::Exited { status: format!("killed by {sig}") })?;
            }
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(nix::Error::ECHILD) => return Ok(true),
            Err(e) => return Err(errno("reap the server's processes")(e)),
        }
    }
}

/// SIGTERM to every process of the server, up to `grace` for them to go, then SIGKILL.
fn stop(namespace: bool, grace: Duration) {
    // In a PID namespace, -1 is every process of the namespace but its init; outside one, the
    // process group (this process ignores SIGTERM) and every descendant, which as a subreaper
    // this process has inherited even from a daemon that left the group with setsid().
    let everyone = if namespace { Pid::from_raw(-1) } else { Pid::from_raw(0) };
    let signal_all = |sig: Signal| {
        let _ = kill(everyone, sig);
        if !namespace {
            for pid in descendants(Pid::this()) {
                let _ = kill(pid, sig);
            }
        }
    };
    signal_all(Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    loop {
        let all_gone = matches!(reap_quietly(), Err(nix::Error::ECHILD));
        let left = deadline.saturating_duration_since(Instant::now());
        if all_gone || left.is_zero() {
            break;
        }
        // A wait for a condition to a deadline: SIGCHLD ends it early (EINTR), and since one
        // may land between the reap above and the poll, it looks again every 10 ms.
        let ms =
            PollTimeout::try_from(left.as_millis().min(10) as i32 + 1).unwrap_or(PollTimeout::MAX);
        let _ = poll(&mut [], ms);
    }
    if !namespace {
        // The group's SIGKILL would take this process too before it reaped: descendants first.
        for pid in descendants(Pid::this()) {
            let _ = kill(pid, Signal::SIGKILL);
        }
    }
    let _ = reap_quietly();
    let _ = kill(everyone, Signal::SIGKILL);
}

/// Every process below `root`, by the parents /proc gives.
fn descendants(root: Pid) -> Vec<Pid> {
    let mut parent_of = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if let Some(ppid) = ppid {
            parent_of.push((pid, ppid));
        }
    }
    let mut found = vec![root.as_raw()];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(parent_of.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    found.into_iter().skip(1).map(Pid::from_raw).collect()
}

fn reap_quietly() -> nix::Result<()> {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG))? {
            WaitStatus::StillAlive => return Ok(()),
            _ => continue,
        }
    }
}

fn lifeline_closed() -> bool {
    let mut buf = [0u8; 64];
    !matches!(nix::unistd::read(0, &mut buf), Ok(n) if n > 0)
}
