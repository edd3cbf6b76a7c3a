//! What to change, for the shape of the leak the witnesses saw (a fork, an exec, forked workers, a
//! thread or an event loop that never closes) and in the idiom of the runtime that runs the
//! server. Where the runtime has no idiom of its own for a shape (a JVM does not fork), or is not
//! known (the lab's own servers), the sentence is the general one.

use crate::runtime::Runtime;

/// The shape of a leak: how the last reference to a closed connection stays alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// The parent keeps its copy of each accepted socket after fork().
    ParentKeepsCopy,
    /// The parent keeps its copy, but the child's shutdown() sent the FIN: only descriptors grow.
    ParentKeepsCopyHidden,
    /// Helpers started by fork+exec inherited the connection (no close-on-exec).
    ExecInherits,
    /// Long-lived forks inherited connections they never served.
    WorkersInherit,
    /// The handler (a forked child, a pool's worker) has not closed what it served.
    HandlerHolds,
    /// A process that never forked (threads, an event loop) never closes on EOF.
    NeverClosed,
    /// A process that never forked opens something per connection and never closes it.
    DescriptorPerConnection,
    /// A client's connection pool keeps connections the server closed and never notices their
    /// FIN.
    PoolIgnoresFin,
    /// A process holds connections the peer closed, and which of the server's shapes above it is
    /// is not known (a live host's watch sees the holder, not how it came to hold them).
    HeldOpen,
}

/// A fix: the sentence, and the runtime whose idiom it is in (none for the general sentence).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fix {
    /// What to change.
    pub text: String,
    /// The runtime it is phrased for.
    pub idiom: Option<Runtime>,
}

/// The fix for `shape` on `runtime`.
pub fn for_shape(shape: Shape, runtime: Option<Runtime>) -> Fix {
    let idiom = runtime.and_then(|r| idiom(shape, r));
    match idiom {
        Some(text) => Fix { text: text.to_string(), idiom: runtime },
        None => Fix { text: general(shape).to_string(), idiom: None },
    }
}

fn general(shape: Shape) -> &'static str {
    match shape {
        Shape::ParentKeepsCopy => "close the accepted socket in the parent right after fork(); shutdown(SHUT_RDWR) in the child only hides it",
        Shape::ParentKeepsCopyHidden => "the parent still keeps its copy: close it right after fork()",
        Shape::ExecInherits => "set SOCK_CLOEXEC on the connection (accept4 with SOCK_CLOEXEC, or FD_CLOEXEC) before starting helpers",
        Shape::WorkersInherit => "close inherited connections in the worker, or fork workers before accepting",
        Shape::HandlerHolds => "the handler must close the connection once it reads EOF",
        Shape::NeverClosed => "close the connection when a read returns EOF (0 bytes), on every path, errors included",
        Shape::DescriptorPerConnection => "something opened for each connection is never closed: close it when the connection ends, on every path",
        Shape::HeldOpen => "close each connection once a read returns EOF, on every path; a forking server closes its copy in the parent right after fork() (`cwlab check -- CMD` tells which)",
        Shape::PoolIgnoresFin => "close pooled connections the server has closed: check an idle connection for EOF before reusing it, evict idle connections before the server's keep-alive timeout, and close what the pool no longer needs",
    }
}

/// The sentence in `runtime`'s idiom, where it has one for `shape`.
fn idiom(shape: Shape, runtime: Runtime) -> Option<&'static str> {
    use Runtime::*;
    use Shape::*;
    Some(match (shape, runtime) {
        (ParentKeepsCopy, Cpython) => "close the parent's copy right after os.fork(): `conn.close()` in the parent's branch (socketserver.ForkingTCPServer does it for you); shutdown() in the child only hides it",
        (ParentKeepsCopy, Perl) => "`close $client` in the parent right after fork(); shutdown() in the child only hides it",
        (ParentKeepsCopy, Ruby) => "`client.close` in the parent right after fork; shutdown in the child only hides it",
        (ParentKeepsCopy, Native) => "close(fd) in the parent right after fork() returns; shutdown(fd, SHUT_RDWR) in the child only hides it",
        (ParentKeepsCopyHidden, Cpython) => "the parent still keeps its copy: `conn.close()` in the parent's branch right after os.fork()",
        (ParentKeepsCopyHidden, Perl) => "the parent still keeps its copy: `close $client` in the parent right after fork()",
        (ParentKeepsCopyHidden, Ruby) => "the parent still keeps its copy: `client.close` in the parent right after fork",
        (ParentKeepsCopyHidden, Native) => "the parent still keeps its copy: close(fd) in the parent right after fork() returns",
        (ExecInherits, Cpython) => "keep the connection non-inheritable (Python's default since 3.4: drop os.set_inheritable(fd, True) and pass_fds) and start helpers with subprocess's close_fds=True",
        (ExecInherits, Perl) => "keep close-on-exec on the connection (Perl sets it on every descriptor above $^F: do not clear FD_CLOEXEC), or close the socket in the child before exec",
        (ExecInherits, Native) => "accept4(..., SOCK_CLOEXEC), or fcntl(fd, F_SETFD, FD_CLOEXEC), before starting helpers",
        (ExecInherits, Nodejs) => "do not hand the socket to child processes: spawn helpers with stdio 'ignore' or 'pipe'",
        (ExecInherits, Jvm) => "start helpers with ProcessBuilder, which closes the JVM's descriptors in the child; native code that forks must set FD_CLOEXEC",
        (WorkersInherit, Cpython) => "fork workers before accepting, or close every inherited connection in the worker (multiprocessing's 'spawn' and 'forkserver' start methods inherit none)",
        (WorkersInherit, Perl) => "fork workers before accepting, or close the inherited client handles in the worker right after fork()",
        (WorkersInherit, Native) => "fork workers before accepting, or close every inherited connection fd in the worker right after fork()",
        (HandlerHolds, Cpython) => "close the connection in the handler once recv() returns b'' (`with conn:` closes it on every path)",
        (HandlerHolds, Perl) => "`close $client` in the worker once sysread returns 0, before it accepts the next",
        (HandlerHolds, Native) => "close(fd) in the handler once read() returns 0, on every path",
        (NeverClosed, Jvm) => "close the Socket when read() returns -1: try-with-resources (`try (Socket s = server.accept()) { … }`) or close() in a finally block",
        (NeverClosed, Nodejs) => "end the socket when the peer does: `socket.on('end', () => socket.end())` (or destroy()), or drop allowHalfOpen: true",
        (NeverClosed, Cpython) => "`with conn:` around the handler, so the socket is closed when recv() returns b'' and on errors",
        (NeverClosed, Perl) => "`close $client` when sysread returns 0, on every path",
        (NeverClosed, Tcl) => "`close $chan` when [eof $chan] is true in the readable handler (unregistering the fileevent leaves it open)",
        (NeverClosed, Ruby) => "`client.close` on EOF, or `ensure client.close` around the handler",
        (NeverClosed, Native) => "close(fd) when read() returns 0, on every path, errors included",
        (DescriptorPerConnection, Jvm) => "close what each connection opens (streams, files, channels) with try-with-resources",
        (DescriptorPerConnection, Nodejs) => "destroy() each socket and close each file handle when its connection ends",
        (DescriptorPerConnection, Cpython) => "close what each connection opens: `with conn:`, `with open(…)`",
        (DescriptorPerConnection, Perl) => "close each connection's handles (`close $client`, `close $fh`) when it ends",
        (DescriptorPerConnection, Tcl) => "`close` each connection's channels when it ends",
        (DescriptorPerConnection, Native) => "close() every descriptor a connection opens when it ends, on every path",
        (PoolIgnoresFin, Cpython) => "close every response and Session (`with requests.Session() as s:`, `resp.close()`); http.client: read each response to its end and close the HTTPConnection you no longer use",
        (PoolIgnoresFin, Jvm) => "evict expired and idle connections (Apache HttpClient: evictExpiredConnections() and evictIdleConnections(), or closeIdle on the pooling manager) and close every response; java.net.http: keep its keep-alive timeout (jdk.httpclient.keepalive.timeout) below the server's",
        (PoolIgnoresFin, Nodejs) => "let the http.Agent drop idle sockets before the server does (a keepAlive agent with a timeout below the server's keep-alive), and destroy() sockets you stop using",
        (PoolIgnoresFin, Native) => "poll idle pooled connections for POLLIN/POLLRDHUP and close() one whose read returns 0, before reusing it or on a timer",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lab_and_an_unknown_runtime_get_the_general_sentence() {
        let f = for_shape(Shape::ParentKeepsCopy, None);
        assert_eq!(f.idiom, None);
        assert!(f.text.starts_with("close the accepted socket in the parent right after fork()"));
    }

    #[test]
    fn a_runtime_that_cannot_fork_is_never_told_about_fork() {
        for r in [Runtime::Jvm, Runtime::Nodejs, Runtime::Tcl] {
            for shape in [Shape::NeverClosed, Shape::DescriptorPerConnection] {
                let f = for_shape(shape, Some(r));
                assert_eq!(f.idiom, Some(r), "{r:?} {shape:?}");
                assert!(!f.text.contains("fork"), "{r:?} {shape:?}: {}", f.text);
            }
        }
    }

    #[test]
    fn each_runtime_has_its_idiom_for_a_handler_that_never_closes() {
        let want = [
            (Runtime::Jvm, "try-with-resources"),
            (Runtime::Nodejs, "socket.end()"),
            (Runtime::Cpython, "with conn:"),
            (Runtime::Perl, "close $client"),
            (Runtime::Tcl, "close $chan"),
            (Runtime::Native, "close(fd)"),
        ];
        for (r, words) in want {
            let f = for_shape(Shape::NeverClosed, Some(r));
            assert!(f.text.contains(words), "{r:?}: {}", f.text);
        }
    }
}
