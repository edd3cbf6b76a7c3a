//! A client-side connection pool, the other side of CLOSE-WAIT: an HTTP client keeps the
//! connections it used for the next request; the server closes them at its keep-alive timeout;
//! whether the pool notices the FIN decides whether the client's sockets sit in CLOSE-WAIT.
//!
//! - `leak` keeps every connection and opens a new one for each request: each one the server
//!   closes stays half-closed, held by the client, for good (what a client that never reuses
//!   nor closes its connections does).
//! - `bounded` keeps at most `size` idle connections and finds a dead one only when it next
//!   takes it (urllib3's pool with bursty traffic): CLOSE-WAIT up to `size`, cleared at the next
//!   burst.
//! - `checked` watches each idle connection and closes it as soon as it reads the server's EOF.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use cwlab_model::scenario::{Clients, PoolPolicy};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

/// A connection the `checked` pool keeps idle: a task watches it, and hands it back when asked.
struct Watched {
    want: oneshot::Sender<oneshot::Sender<TcpStream>>,
}

#[derive(Default)]
struct Idle {
    /// `leak`: every connection ever opened, never used again.
    kept: Vec<TcpStream>,
    /// `bounded`: the idle connections, at most `size`.
    ready: Vec<TcpStream>,
    /// `checked`: the idle connections, each under watch.
    watched: Vec<Watched>,
}

/// A pool of keep-alive connections to one server.
pub struct Pool {
    addr: SocketAddr,
    policy: PoolPolicy,
    size: usize,
    idle: Arc<Mutex<Idle>>,
}

/// What a burst of requests saw.
#[derive(Debug, Default)]
pub struct Burst {
    /// Requests answered.
    pub completed: u32,
    /// Requests that failed, and the first error.
    pub failed: u32,
    /// The first error.
    pub first_error: Option<String>,
}

impl Pool {
    /// An empty pool.
    pub fn new(addr: SocketAddr, policy: PoolPolicy, size: u32) -> Pool {
        Pool { addr, policy, size: size as usize, idle: Arc::default() }
    }

    /// `n` requests at once, as a burst of traffic makes them: each takes a connection (an idle
    /// one first, or a new one), sends its request and reads the echo; then every connection
    /// goes back to the pool. Taken all before any goes back, so that no connection serves two
    /// requests of one burst: the counts stay exact however slow the machine.
    pub async fn burst(&self, n: u32, c: &Clients) -> Burst {
        let request = Arc::new(vec![b'x'; c.request_bytes as usize]);
        let mut out = Burst::default();
        let mut set = JoinSet::new();
        for _ in 0..n {
            match self.take().await {
                Ok(s) => {
                    let request = request.clone();
                    set.spawn(async move { exchange(s, &request).await });
                }
                Err(e) => out.fail(format!("connect to {}: {e}", self.addr)),
            }
        }
        let mut back = Vec::new();
        while let Some(r) = set.join_next().await {
            match r.expect("a request task panicked") {
                Ok(s) => {
                    out.completed += 1;
                    back.push(s);
                }
                Err(e) => out.fail(e),
            }
        }
        for s in back {
            self.give(s);
        }
        out
    }

    /// A connection for a request: an idle one the pool still believes in, or a new one.
    async fn take(&self) -> std::io::Result<TcpStream> {
        match self.policy {
            PoolPolicy::Leak => {}
            PoolPolicy::Bounded => loop {
                let Some(s) = self.idle.lock().unwrap().ready.pop() else { break };
                // The only look a bounded pool takes: at the moment it takes a connection.
                if alive(&s) {
                    return Ok(s);
                }
                drop(s);
            },
            PoolPolicy::Checked => loop {
                let Some(w) = self.idle.lock().unwrap().watched.pop() else { break };
                let (tx, rx) = oneshot::channel();
                if w.want.send(tx).is_ok() {
                    if let Ok(s) = rx.await {
                        return Ok(s);
                    }
                }
            },
        }
        TcpStream::connect(self.addr).await
    }

    /// A connection back after its request.
    fn give(&self, s: TcpStream) {
        let mut idle = self.idle.lock().unwrap();
        match self.policy {
            PoolPolicy::Leak => idle.kept.push(s),
            PoolPolicy::Bounded if idle.ready.len() < self.size => idle.ready.push(s),
            // Over the bound: closed now, by the client, first.
            PoolPolicy::Bounded => drop(s),
            PoolPolicy::Checked => idle.watched.push(watch(s)),
        }
    }
}

/// One request on `s`: send, read the echo; the connection back.
async fn exchange(mut s: TcpStream, request: &[u8]) -> Result<TcpStream, String> {
    s.write_all(request).await.map_err(|e| format!("send the request: {e}"))?;
    let mut reply = vec![0u8; request.len()];
    s.read_exact(&mut reply).await.map_err(|e| format!("read the reply: {e}"))?;
    Ok(s)
}

impl Burst {
    fn fail(&mut self, error: String) {
        self.failed += 1;
        self.first_error.get_or_insert(error);
    }
}

/// Whether a connection is still open at the other end: nothing to read yet (a peek would
/// block). An EOF, data nobody asked for or an error mean it is not.
fn alive(s: &TcpStream) -> bool {
    matches!(peek(s), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// Peeks one byte without waiting: `Ok(0)` is the peer's EOF.
fn peek(s: &TcpStream) -> std::io::Result<usize> {
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    socket2::SockRef::from(s).peek(&mut buf)
}

/// Keeps `s` under watch: closed at once when it reads EOF, handed back when asked.
fn watch(s: TcpStream) -> Watched {
    let (want, mut asked) = oneshot::channel::<oneshot::Sender<TcpStream>>();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                ready = s.readable() => {
                    let peeked = ready.and_then(|()| s.try_io(Interest::READABLE, || peek(&s)));
                    match peeked {
                        // A false alarm: tokio forgets the readiness, and the watch goes on.
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                        // The server's FIN (or data nobody asked for, or an error): close now
                        // (the drop), not at the next request.
                        _ => return,
                    }
                }
                reply = &mut asked => {
                    if let Ok(reply) = reply {
                        let _ = reply.send(s);
                    }
                    return;
                }
            }
        }
    });
    Watched { want }
}
