//! The acceptor: listen, then accept and fork a handler per connection, keeping or closing its own
//! copy of the accepted socket as the behaviour says, until the lifeline closes.

use std::io::Write;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, IntoRawFd};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use socket2::{Domain, Socket, Type};

use crate::{errno, handler, process, sys, Behaviour, Config, Error};

extern "C" fn on_sigchld(_: libc::c_int) {}

/// Listens and serves until stdin reaches end-of-file. Returns the exit status.
pub fn run(cfg: &Config) -> Result<i32, Error> {
    // A handler that only wakes poll(2): children are reaped in the loop, not in the handler.
    let wake = SigAction::new(SigHandler::Handler(on_sigchld), SaFlags::empty(), SigSet::empty());
    // SAFETY: the handler does nothing.
    unsafe { sigaction(Signal::SIGCHLD, &wake) }.map_err(errno("install a SIGCHLD handler"))?;
    // Orphaned helpers come back to the acceptor, which reaps them (a namespace's init does anyway).
    nix::sys::prctl::set_child_subreaper(true).map_err(errno("become a child subreaper"))?;

    let listener = listen(cfg)?;
    let port = listener.local_addr().ok().and_then(|a| a.as_socket()).map_or(0, |a| a.port());
    let mut events = std::io::stdout();
    event(&mut events, &format!("listening {port}"))?;

    let stdin = std::io::stdin();
    let mut accepted: u64 = 0;
    loop {
        let mut fds = [
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(stdin.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::Error::EINTR) => {
                reap();
                continue;
            }
            Err(e) => return Err(errno("poll")(e)),
        }
        let lifeline = fds[1].revents().unwrap_or(PollFlags::empty());
        let incoming = fds[0].revents().unwrap_or(PollFlags::empty());
        if !lifeline.is_empty() && lifeline_closed() {
            return Ok(0);
        }
        if incoming.contains(PollFlags::POLLIN) {
            match listener.accept() {
                Ok((conn, _)) => {
                    accepted += 1;
                    spawn_handler(cfg.behaviour, &listener, conn)?;
                    event(&mut events, &format!("accepted {accepted}"))?;
                }
                Err(e) => {
                    event(&mut events, &format!("accept-error {}", e.raw_os_error().unwrap_or(0)))?
                }
            }
        }
        reap();
    }
}

fn listen(cfg: &Config) -> Result<Socket, Error> {
    let addr = SocketAddr::new(cfg.addr, cfg.port);
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)
        .map_err(sys("create the listening socket"))?;
    s.set_reuse_address(true).map_err(sys("set SO_REUSEADDR"))?;
    s.bind(&addr.into()).map_err(sys(format!("bind {addr}")))?;
    s.listen(cfg.backlog).map_err(sys(format!("listen on {addr}")))?;
    Ok(s)
}

/// Forks the handler. The child never returns; the parent keeps its copy of the connection
/// unless the behaviour is the real fix.
fn spawn_handler(behaviour: Behaviour, listener: &Socket, conn: Socket) -> Result<(), Error> {
    let me = Pid::this();
    // SAFETY: this process never started a thread.
    match unsafe { fork() }.map_err(errno("fork a handler"))? {
        ForkResult::Child => {
            let code = match process::die_with_parent(me) {
                Ok(()) => {
                    // SAFETY: the child's copy of the listener is closed once, here.
                    unsafe { libc::close(listener.as_raw_fd()) };
                    process::detach_stdio();
                    handler::handle(behaviour, conn)
                }
                Err(_) => 1,
            };
            // Skip the parent's atexit handlers and buffered stdout: leave at once.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { .. } => {
            match behaviour {
                Behaviour::ParentCloses => drop(conn),
                // The leak, on purpose: the acceptor's copy of the socket lives on.
                Behaviour::CloseOnly | Behaviour::ShutdownClose => {
                    let _ = conn.into_raw_fd();
                }
            }
            Ok(())
        }
    }
}

/// True when stdin reads end-of-file (or fails): the runner is gone.
fn lifeline_closed() -> bool {
    let mut buf = [MaybeUninit::<u8>::uninit(); 64];
    // SAFETY: reading into a local buffer of the given length.
    let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
    n <= 0
}

fn reap() {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => continue,
        }
    }
}

fn event(out: &mut std::io::Stdout, line: &str) -> Result<(), Error> {
    let mut out = out.lock();
    writeln!(out, "{line}").and_then(|()| out.flush()).map_err(sys("report an event"))
}
