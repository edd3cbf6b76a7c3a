//! The acceptor: listen, then accept and fork a handler per connection, keeping or closing its own
//! copy of the accepted socket as the behaviour says, until the lifeline closes. Two behaviours
//! differ: `no-accept` never accepts, and `fork-worker` serves connections itself and forks a
//! long-lived worker per connection.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, IntoRawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use socket2::{Domain, Socket, Type};

use cwlab_model::protocol::ServerMessage;

use crate::{errno, handler, process, sys, Behaviour, Config, Error};

/// Set when a child exits: waitpid(-1) walks every child, so with thousands of handlers alive the
/// acceptor must not call it after every accept (that walk was 11% of a 10,000-client run).
static CHILD_EXITED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigchld(_: libc::c_int) {
    CHILD_EXITED.store(true, Ordering::SeqCst);
}

/// Listens and serves until stdin reaches end-of-file. Returns the exit status.
pub fn run(cfg: &Config) -> Result<i32, Error> {
    process::set_name(c"cwlab-acceptor");
    // A handler that notes the exit and wakes poll(2): children are reaped in the loop.
    let wake = SigAction::new(SigHandler::Handler(on_sigchld), SaFlags::empty(), SigSet::empty());
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe, and replaces no
    // handler that anything else in this single-threaded process relies on.
    unsafe { sigaction(Signal::SIGCHLD, &wake) }.map_err(errno("install a SIGCHLD handler"))?;
    // SIGUSR1 is the runner's release for handlers that wait for it (sigwait): blocked here, the
    // mask is inherited by every fork, so it waits pending until a handler asks for it.
    let mut usr1 = SigSet::empty();
    usr1.add(Signal::SIGUSR1);
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&usr1), None)
        .map_err(errno("block SIGUSR1"))?;
    // Orphaned helpers come back to the acceptor, which reaps them (a namespace's init does anyway).
    nix::sys::prctl::set_child_subreaper(true).map_err(errno("become a child subreaper"))?;

    let listener = listen(cfg)?;
    let port = listener.local_addr().ok().and_then(|a| a.as_socket()).map_or(0, |a| a.port());
    event(ServerMessage::Listening { port })?;
    match cfg.behaviour {
        Behaviour::ForkWorker => serve_in_process(&listener),
        behaviour => serve_by_fork(behaviour, cfg.limits.idle(), &listener),
    }
}

/// Accept, fork a handler, keep or close the parent's copy.
fn serve_by_fork(
    behaviour: Behaviour,
    idle: std::time::Duration,
    listener: &Socket,
) -> Result<i32, Error> {
    let stdin = std::io::stdin();
    let mut accepted: u64 = 0;
    // After a failed accept, the listener is left alone until a child exits and frees something,
    // instead of spinning on a connection it cannot take.
    let mut stalled = false;
    loop {
        let watch_listener = behaviour != Behaviour::NoAccept && !stalled;
        let mut fds = vec![PollFd::new(stdin.as_fd(), PollFlags::POLLIN)];
        if watch_listener {
            fds.push(PollFd::new(listener.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::Error::EINTR) => {
                if reap() {
                    stalled = false;
                }
                continue;
            }
            Err(e) => return Err(errno("poll")(e)),
        }
        let lifeline = fds[0].revents().unwrap_or(PollFlags::empty());
        let incoming = fds.get(1).and_then(|f| f.revents()).unwrap_or(PollFlags::empty());
        if !lifeline.is_empty() && lifeline_closed() {
            return Ok(0);
        }
        if incoming.contains(PollFlags::POLLIN) {
            match listener.accept() {
                Ok((conn, _)) => {
                    accepted += 1;
                    spawn_handler(behaviour, idle, listener, conn)?;
                    event(ServerMessage::Accepted { count: accepted })?;
                }
                Err(e) => {
                    stalled = true;
                    event(ServerMessage::AcceptError { errno: e.raw_os_error().unwrap_or(0) })?;
                }
            }
        }
        if reap() {
            stalled = false;
        }
    }
}

/// fork-worker: the acceptor echoes on every connection itself and closes each at its EOF, but
/// forks a long-lived worker per connection that inherits every connection open at that moment.
fn serve_in_process(listener: &Socket) -> Result<i32, Error> {
    let stdin = std::io::stdin();
    let mut conns: Vec<Socket> = Vec::new();
    let mut accepted: u64 = 0;
    loop {
        let mut fds = vec![
            PollFd::new(stdin.as_fd(), PollFlags::POLLIN),
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
        ];
        fds.extend(conns.iter().map(|c| PollFd::new(c.as_fd(), PollFlags::POLLIN)));
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::Error::EINTR) => {
                reap();
                continue;
            }
            Err(e) => return Err(errno("poll")(e)),
        }
        let ready: Vec<PollFlags> =
            fds.iter().map(|f| f.revents().unwrap_or(PollFlags::empty())).collect();
        drop(fds);
        if !ready[0].is_empty() && lifeline_closed() {
            return Ok(0);
        }
        let mut closed = Vec::new();
        for (i, r) in ready[2..].iter().enumerate() {
            if !r.is_empty() && !echo_once(&conns[i]) {
                closed.push(i);
            }
        }
        for i in closed.into_iter().rev() {
            drop(conns.remove(i));
        }
        if ready[1].contains(PollFlags::POLLIN) {
            match listener.accept() {
                Ok((conn, _)) => {
                    accepted += 1;
                    conns.push(conn);
                    spawn_worker(listener)?;
                    event(ServerMessage::Accepted { count: accepted })?;
                }
                Err(e) => {
                    event(ServerMessage::AcceptError { errno: e.raw_os_error().unwrap_or(0) })?
                }
            }
        }
        reap();
    }
}

/// Echoes what one read returns; false at EOF or on error.
fn echo_once(mut conn: &Socket) -> bool {
    let mut buf = [0u8; 16 * 1024];
    match conn.read(&mut buf) {
        Ok(0) | Err(_) => false,
        Ok(n) => conn.write_all(&buf[..n]).is_ok(),
    }
}

/// A worker: a fork that never execs and lives on, holding every descriptor it inherited.
fn spawn_worker(listener: &Socket) -> Result<(), Error> {
    let me = Pid::this();
    // SAFETY: this process never started a thread.
    match unsafe { fork() }.map_err(errno("fork a worker"))? {
        ForkResult::Child => {
            if process::die_with_parent(me).is_err() {
                process::exit_now(1);
            }
            process::set_name(c"cwlab-worker");
            // A worker has no use for the listener; the connections it inherited are the bug.
            let _ = nix::unistd::close(listener.as_raw_fd());
            process::detach_stdio(false);
            process::wait_forever()
        }
        ForkResult::Parent { .. } => Ok(()),
    }
}

fn listen(cfg: &Config) -> Result<Socket, Error> {
    let addr = SocketAddr::new(cfg.addr, cfg.port);
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)
        .map_err(sys("create the listening socket"))?;
    s.set_reuse_address(true).map_err(sys("set SO_REUSEADDR"))?;
    if let Some(n) = cfg.limits.rcvbuf {
        s.set_recv_buffer_size(n as usize).map_err(sys("set SO_RCVBUF"))?;
    }
    if let Some(n) = cfg.limits.sndbuf {
        s.set_send_buffer_size(n as usize).map_err(sys("set SO_SNDBUF"))?;
    }
    s.bind(&addr.into()).map_err(sys(format!("bind {addr}")))?;
    s.listen(cfg.backlog).map_err(sys(format!("listen on {addr}")))?;
    Ok(s)
}

/// Forks the handler. The child never returns; the parent keeps its copy of the connection
/// unless the behaviour closes it.
fn spawn_handler(
    behaviour: Behaviour,
    idle: std::time::Duration,
    listener: &Socket,
    conn: Socket,
) -> Result<(), Error> {
    let me = Pid::this();
    // SAFETY: this process never started a thread.
    match unsafe { fork() }.map_err(errno("fork a handler"))? {
        ForkResult::Child => {
            let code = match process::die_with_parent(me) {
                Ok(()) => {
                    process::set_name(c"cwlab-handler");
                    // The child's copy of the listener, closed once, here; the `Socket` is never
                    // dropped in this process (the child leaves by `exit_now`).
                    let _ = nix::unistd::close(listener.as_raw_fd());
                    handler::handle(behaviour, idle, conn)
                }
                Err(_) => 1,
            };
            process::exit_now(code)
        }
        ForkResult::Parent { .. } => {
            if behaviour.acceptor_keeps() {
                // The leak, on purpose: the acceptor's copy of the socket lives on.
                let _ = conn.into_raw_fd();
            } else {
                drop(conn);
            }
            Ok(())
        }
    }
}

/// True when stdin reads end-of-file (or fails): the runner is gone.
fn lifeline_closed() -> bool {
    let mut buf = [0u8; 64];
    !matches!(nix::unistd::read(0, &mut buf), Ok(n) if n > 0)
}

/// Reaps every exited child, if any exited since the last time; true if there was one.
fn reap() -> bool {
    if !CHILD_EXITED.swap(false, Ordering::SeqCst) {
        return false;
    }
    let mut any = false;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return any,
            Ok(_) => any = true,
        }
    }
}

/// Tells the runner, on stdout.
pub(crate) fn event(m: ServerMessage) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    out.write_all(m.line().as_bytes()).and_then(|()| out.flush()).map_err(sys("report an event"))
}
