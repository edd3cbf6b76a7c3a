//! A handler: the forked child that serves one connection and ends it the way the behaviour says.

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use socket2::Socket;

use crate::{process, Behaviour};

/// Serves one connection (`idle` is `keep-alive`'s timeout); returns the exit status for the
/// child.
pub fn handle(behaviour: Behaviour, idle: Duration, conn: Socket) -> i32 {
    match behaviour {
        Behaviour::ExecInherit | Behaviour::ExecCloexec => {
            // The helper gets the lifeline (stdin), so it dies with the runner even on the host.
            spawn_helper(&conn, behaviour == Behaviour::ExecInherit);
            process::detach_stdio(false);
            let code = status(echo_until_eof(&conn));
            drop(conn);
            code
        }
        Behaviour::KeepAlive => {
            process::detach_stdio(false);
            let code = status(echo_while_busy(&conn, idle));
            drop(conn);
            code
        }
        _ => {
            process::detach_stdio(false);
            end(behaviour, conn)
        }
    }
}

fn end(behaviour: Behaviour, conn: Socket) -> i32 {
    match behaviour {
        // close() drops this process's reference; the FIN waits for the last one.
        Behaviour::CloseOnly | Behaviour::ParentCloses => {
            let code = status(echo_until_eof(&conn));
            drop(conn);
            code
        }
        // shutdown() acts on the socket itself: the FIN goes now, whoever else holds it.
        Behaviour::ShutdownClose => {
            let code = status(echo_until_eof(&conn));
            let _ = conn.shutdown(Shutdown::Both);
            code
        }
        // The server speaks and closes first.
        Behaviour::ReplyClose | Behaviour::ServerFirst => status(echo_once(&conn)),
        Behaviour::ReplyShutdown => {
            let code = status(echo_once(&conn));
            let _ = conn.shutdown(Shutdown::Both);
            code
        }
        Behaviour::NoRead => process::wait_forever(),
        // The client's FIN is in; the server has work left (a log to write, a cache to flush).
        Behaviour::SlowClose => {
            let code = status(echo_until_eof(&conn));
            std::thread::sleep(SLOW_CLOSE_WORK);
            drop(conn);
            code
        }
        Behaviour::FillClose => {
            let code = status(drain(&conn).and_then(|()| fill(&conn)));
            drop(conn);
            code
        }
        Behaviour::Simultaneous => {
            let _ = fill(&conn);
            let _ = conn.shutdown(Shutdown::Write);
            release();
            let _ = conn.set_nonblocking(false);
            let _ = drain(&conn);
            // Keep the socket: it stays CLOSING until the peer reads and acknowledges our FIN.
            process::wait_forever()
        }
        Behaviour::ExecInherit
        | Behaviour::ExecCloexec
        | Behaviour::ForkWorker
        | Behaviour::NoAccept
        | Behaviour::KeepAlive => {
            unreachable!("{behaviour} has no handler of this kind")
        }
    }
}

/// How long a `slow-close` handler works between the client's FIN and its close().
const SLOW_CLOSE_WORK: Duration = Duration::from_millis(500);

fn status(r: std::io::Result<()>) -> i32 {
    if r.is_ok() {
        0
    } else {
        3
    }
}

/// Starts `cwlab helper` by fork+exec; with `inherit`, the connection's CLOEXEC is cleared first,
/// as in servers that spawn subprocesses with `close_fds=False` or from a runtime that does not
/// set CLOEXEC.
fn spawn_helper(conn: &Socket, inherit: bool) {
    if inherit {
        let _ = conn.set_cloexec(false);
    }
    let _ = std::process::Command::new("/proc/self/exe")
        .arg("helper")
        .stdin(std::process::Stdio::inherit())
        .stdout(std::process::Stdio::null())
        .spawn();
    if inherit {
        let _ = conn.set_cloexec(true);
    }
}

/// Waits for the runner's release: SIGUSR1, blocked since the acceptor started.
fn release() {
    let mut set = SigSet::empty();
    set.add(Signal::SIGUSR1);
    let _ = set.wait();
}

fn echo_until_eof(mut conn: &Socket) -> std::io::Result<()> {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match conn.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        conn.write_all(&buf[..n])?;
    }
}

/// Echoes request after request until the peer's EOF, or until nothing came for `idle` (a
/// keep-alive timeout).
fn echo_while_busy(mut conn: &Socket, idle: Duration) -> std::io::Result<()> {
    let mut buf = [0u8; 16 * 1024];
    let ms = PollTimeout::try_from(idle.as_millis().min(60_000) as i32).unwrap_or(PollTimeout::MAX);
    loop {
        let mut fds = [PollFd::new(conn.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, ms) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        let n = match conn.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        conn.write_all(&buf[..n])?;
    }
}

/// Reads the request (what one read returns) and echoes it.
fn echo_once(mut conn: &Socket) -> std::io::Result<()> {
    let mut buf = [0u8; 16 * 1024];
    let n = conn.read(&mut buf)?;
    conn.write_all(&buf[..n])
}

/// Reads and discards until EOF.
fn drain(mut conn: &Socket) -> std::io::Result<()> {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Writes until the send buffer is full: the peer's window is zero and nothing more can go.
fn fill(mut conn: &Socket) -> std::io::Result<()> {
    conn.set_nonblocking(true)?;
    let buf = [b'y'; 16 * 1024];
    loop {
        match conn.write(&buf) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
