//! A handler: the forked child that serves one connection and ends it the way the behaviour says.

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::time::Duration;

use cwlab_model::protocol::ServerMessage;
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
        Behaviour::KeepAlive | Behaviour::HttpKeepAlive => {
            // The event pipe, kept to say each request was answered (a line is one write, whole
            // however many handlers write at once).
            let events =
                std::io::stdout().as_fd().try_clone_to_owned().ok().map(std::fs::File::from);
            process::detach_stdio(false);
            let http = behaviour == Behaviour::HttpKeepAlive;
            let code = status(serve_while_busy(&conn, idle, http, events));
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
        | Behaviour::KeepAlive
        | Behaviour::HttpKeepAlive => {
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
        .arg(cwlab_model::protocol::entry::HELPER)
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

/// Answers request after request until the peer's EOF, or until nothing came for `idle` (a
/// keep-alive timeout): an echo of what came, or with `http` a `200 OK` for each request's head
/// and body. Each answer is told on `events`.
fn serve_while_busy(
    mut conn: &Socket,
    idle: Duration,
    http: bool,
    mut events: Option<std::fs::File>,
) -> std::io::Result<()> {
    let mut buf = [0u8; 16 * 1024];
    let mut pending: Vec<u8> = Vec::new();
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
        if !http {
            conn.write_all(&buf[..n])?;
            served(&mut events);
            continue;
        }
        pending.extend_from_slice(&buf[..n]);
        while let Some(req) = http_request(&pending) {
            pending.drain(..req.len);
            conn.write_all(HTTP_OK)?;
            served(&mut events);
            if req.close {
                return Ok(());
            }
        }
    }
}

/// The answer to every HTTP request.
const HTTP_OK: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nok\n";

/// One whole HTTP request at the start of a buffer.
struct HttpRequest {
    /// Its bytes: head and body.
    len: usize,
    /// It asked for `Connection: close`.
    close: bool,
}

/// The first request in `b`, once its head and its body (Content-Length) are all there.
fn http_request(b: &[u8]) -> Option<HttpRequest> {
    let head = b.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let text = String::from_utf8_lossy(&b[..head]).to_ascii_lowercase();
    let header =
        |name: &str| text.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()));
    let body: usize = header("content-length:").and_then(|v| v.parse().ok()).unwrap_or(0);
    let close = header("connection:").is_some_and(|v| v == "close")
        || text.lines().next().is_some_and(|l| l.ends_with("http/1.0"))
            && header("connection:").is_none_or(|v| v != "keep-alive");
    (b.len() >= head + body).then_some(HttpRequest { len: head + body, close })
}

fn served(events: &mut Option<std::fs::File>) {
    if let Some(f) = events {
        let _ = f.write_all(ServerMessage::Served.line().as_bytes());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_http_request_is_whole_once_its_head_and_body_are_there() {
        assert!(http_request(b"GET / HTTP/1.1\r\nHost: x\r\n").is_none());
        let r = http_request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET").unwrap();
        assert_eq!((r.len, r.close), (27, false));
        let post = b"POST / HTTP/1.1\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhel";
        assert!(http_request(post).is_none());
        let mut whole = post.to_vec();
        whole.extend_from_slice(b"lo");
        let r = http_request(&whole).unwrap();
        assert_eq!((r.len, r.close), (whole.len(), true));
        assert!(http_request(b"GET / HTTP/1.0\r\n\r\n").unwrap().close);
        assert!(!http_request(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").unwrap().close);
    }
}
