//! The client driver: real TCP clients on tokio, at most `concurrency` at once. A scenario's
//! clients connect, send their request and read what the scenario says, and the driver returns
//! the open streams so that every client closes in the next phase, together ([`connect_all`]).
//! `cwlab check`'s clients behave as real clients do: each closes as soon as its own exchange is
//! over, and the next starts ([`each`]); one waits for its reply as long as the server answers
//! somebody, so a server that serves a few at a time is slow, not hung.

use std::future::Future;
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cwlab_model::scenario::{ClientClose, ClientRead, Clients};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// The clients of [`connect_all`]: their open streams, the ports of those that waited for a reply
/// or an EOF that never came within `reply_timeout` (the run tells a hang from a connection
/// never accepted by them), and the failures.
pub struct Connected {
    /// Every stream that connected, the waiting ones included.
    pub streams: Vec<TcpStream>,
    /// The ports of the clients that waited in vain.
    pub waited: Vec<u16>,
    /// The slowest reply that came.
    pub slowest: Option<Duration>,
    /// Clients whose connection failed, and the first error.
    pub failed: u32,
    /// The first error.
    pub first_error: Option<String>,
}

/// Connects `n` clients and exchanges one request each; returns the open streams and the tally.
/// With a `spread`, client i starts i/(n-1) of the way into it rather than at once.
pub async fn connect_all(addr: SocketAddr, n: u32, c: &Clients, spread: Duration) -> Connected {
    let start = tokio::time::Instant::now();
    let gaps = n.saturating_sub(1).max(1);
    let gate = Arc::new(Semaphore::new(c.concurrency as usize));
    let request =
        Arc::new(c.request.clone().unwrap_or_else(|| vec![b'x'; c.request_bytes as usize]));
    let mut set = JoinSet::new();
    for i in 0..n {
        let gate = gate.clone();
        let request = request.clone();
        let c = c.clone();
        set.spawn(async move {
            tokio::time::sleep_until(start + spread * i / gaps).await;
            let _permit = gate.acquire_owned().await.expect("the semaphore is never closed");
            exchange(addr, &request, &c).await
        });
    }
    let mut out = Connected {
        streams: Vec::with_capacity(n as usize),
        waited: Vec::new(),
        slowest: None,
        failed: 0,
        first_error: None,
    };
    while let Some(r) = set.join_next().await {
        match r.expect("a client task panicked") {
            Ok((s, waited)) => {
                match waited {
                    None => out.waited.push(s.local_addr().map_or(0, |a| a.port())),
                    Some(w) => out.slowest = out.slowest.max(Some(w)),
                }
                out.streams.push(s);
            }
            Err(e) => {
                out.failed += 1;
                out.first_error.get_or_insert(e);
            }
        }
    }
    out
}

async fn connect(addr: SocketAddr, c: &Clients) -> std::io::Result<TcpStream> {
    let s = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if let Some(n) = c.sndbuf {
        s.set_send_buffer_size(n)?;
    }
    if let Some(n) = c.rcvbuf {
        s.set_recv_buffer_size(n)?;
    }
    s.connect(addr).await
}

/// One client's exchange: beside the stream, how long it waited for its reply, or none when what
/// it waited for never came.
async fn exchange(
    addr: SocketAddr,
    request: &[u8],
    c: &Clients,
) -> Result<(TcpStream, Option<Duration>), String> {
    let start = Instant::now();
    let mut s = connect(addr, c).await.map_err(|e| format!("connect to {addr}: {e}"))?;
    s.write_all(request).await.map_err(|e| format!("send the request: {e}"))?;
    let wait = c.reply_timeout.unwrap_or(Duration::MAX);
    let read = async {
        match c.read {
            ClientRead::None => Ok(()),
            ClientRead::Reply => {
                let mut reply = vec![0u8; request.len()];
                s.read_exact(&mut reply).await.map(|_| ())
            }
            ClientRead::UntilEof => {
                let mut sink = Vec::new();
                s.read_to_end(&mut sink).await.map(|_| ())
            }
            ClientRead::Some => read_some(&mut s).await,
        }
    };
    match tokio::time::timeout(wait, read).await {
        Ok(Ok(())) => Ok((s, Some(start.elapsed()))),
        Ok(Err(e)) => Err(format!("read the reply: {e}")),
        Err(_) => Ok((s, None)),
    }
}

/// How long a reply may pause before the client takes it as whole.
const QUIET: Duration = Duration::from_millis(100);

/// The first bytes of a reply, then whatever follows within [`QUIET`] of the last, to the EOF:
/// a client that closed with reply bytes unread would send RST instead of FIN, and the server's
/// socket would never be seen in CLOSE-WAIT.
async fn read_some(s: &mut TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    if s.read(&mut buf).await? == 0 {
        return Ok(());
    }
    loop {
        match tokio::time::timeout(QUIET, s.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => return Ok(()),
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => return Err(e),
        }
    }
}

/// Ends every connection the way the scenario says. Returns how many ended, and the sockets the
/// clients keep until the end of the run (after a half-close), off the runtime.
pub fn close_all(streams: Vec<TcpStream>, how: ClientClose) -> (u32, Vec<std::net::TcpStream>) {
    let n = streams.len() as u32;
    let mut kept = Vec::new();
    for s in streams {
        if matches!(how, ClientClose::FillThenClose | ClientClose::FillThenShutdown) {
            fill(&s);
        }
        if how.keeps_socket() {
            let _ = socket2::SockRef::from(&s).shutdown(Shutdown::Write);
            if let Ok(std) = s.into_std() {
                kept.push(std);
            }
        }
    }
    (n, kept)
}

/// Writes until the send buffer is full: the server does not read, so its window closes.
fn fill(s: &TcpStream) {
    let buf = [b'z'; 16 * 1024];
    while let Ok(n) = s.try_write(&buf) {
        if n == 0 {
            break;
        }
    }
}

/// When the server last answered anybody (a reply's bytes, an EOF), shared by every client of a
/// run: a client gives up waiting only once the server has answered nobody for its patience.
#[derive(Clone)]
pub struct Progress {
    t0: Instant,
    last_us: Arc<AtomicU64>,
}

impl Progress {
    /// No answer yet.
    pub fn new() -> Progress {
        Progress { t0: Instant::now(), last_us: Arc::new(AtomicU64::new(0)) }
    }

    /// The server answered somebody now.
    fn mark(&self) {
        let us = self.t0.elapsed().as_micros() as u64;
        self.last_us.fetch_max(us, Ordering::Relaxed);
    }

    /// When it last did (the start, before anybody was answered).
    fn last(&self) -> Instant {
        self.t0 + Duration::from_micros(self.last_us.load(Ordering::Relaxed))
    }
}

/// What one of [`each`]'s clients saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exchange {
    /// It got what it waited for, `waited` after it began to connect, and closed.
    Done {
        /// From its connect to its reply (or EOF).
        waited: Duration,
    },
    /// It waited while the server answered nobody for its patience, then closed: the port its
    /// connection had (the run tells a hang from a connection never accepted by it).
    GaveUp {
        /// The client's port.
        port: u16,
    },
    /// Its connection failed.
    Failed(String),
}

/// `n` clients, at most `c.concurrency` at a time, each closing as soon as its own exchange is
/// over; the next starts as one finishes.
pub async fn each(addr: SocketAddr, n: u32, c: &Clients, progress: &Progress) -> Vec<Exchange> {
    let gate = Arc::new(Semaphore::new(c.concurrency as usize));
    let request =
        Arc::new(c.request.clone().unwrap_or_else(|| vec![b'x'; c.request_bytes as usize]));
    let mut set = JoinSet::new();
    for _ in 0..n {
        let (gate, request, c, progress) =
            (gate.clone(), request.clone(), c.clone(), progress.clone());
        set.spawn(async move {
            let _permit = gate.acquire_owned().await.expect("the semaphore is never closed");
            one(addr, &request, &c, &progress).await
        });
    }
    let mut out = Vec::with_capacity(n as usize);
    while let Some(r) = set.join_next().await {
        out.push(r.expect("a client task panicked"));
    }
    out
}

/// One client: connect, send, read, close; patient while the server answers anybody.
async fn one(addr: SocketAddr, request: &[u8], c: &Clients, progress: &Progress) -> Exchange {
    let start = Instant::now();
    let patience = c.reply_timeout.unwrap_or(Duration::from_secs(2));
    let mut s = match patiently(connect(addr, c), start, patience, progress).await {
        Some(Ok(s)) => s,
        Some(Err(e)) => return Exchange::Failed(format!("connect to {addr}: {e}")),
        None => return Exchange::Failed(format!("connect to {addr}: no answer")),
    };
    let port = s.local_addr().map_or(0, |a| a.port());
    if let Err(e) = s.write_all(request).await {
        return Exchange::Failed(format!("send the request: {e}"));
    }
    let read = async {
        match c.read {
            ClientRead::None => Ok(()),
            ClientRead::Reply => {
                let mut reply = vec![0u8; request.len()];
                s.read_exact(&mut reply).await.map(|_| ())
            }
            ClientRead::UntilEof => read_to_eof(&mut s, progress).await,
            ClientRead::Some => read_some_marking(&mut s, progress).await,
        }
    };
    match patiently(read, start, patience, progress).await {
        Some(Ok(())) => {
            progress.mark();
            Exchange::Done { waited: start.elapsed() }
        }
        Some(Err(e)) => Exchange::Failed(format!("read the reply: {e}")),
        None => Exchange::GaveUp { port },
    }
}

/// Runs `fut` until it ends, or until the server has answered nobody (see [`Progress`]) for
/// `patience` since the later of `start` and its last answer: `None` then.
async fn patiently<F: Future>(
    fut: F,
    start: Instant,
    patience: Duration,
    progress: &Progress,
) -> Option<F::Output> {
    tokio::pin!(fut);
    loop {
        let deadline = progress.last().max(start) + patience;
        match tokio::time::timeout_at(deadline.into(), &mut fut).await {
            Ok(out) => return Some(out),
            Err(_) if progress.last().max(start) + patience <= Instant::now() => return None,
            Err(_) => continue,
        }
    }
}

/// Reads to the EOF, marking progress at every answer.
async fn read_to_eof(s: &mut TcpStream, progress: &Progress) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if s.read(&mut buf).await? == 0 {
            return Ok(());
        }
        progress.mark();
    }
}

/// [`read_some`], marking progress at the first bytes.
async fn read_some_marking(s: &mut TcpStream, progress: &Progress) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    if s.read(&mut buf).await? == 0 {
        return Ok(());
    }
    progress.mark();
    loop {
        match tokio::time::timeout(QUIET, s.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => return Ok(()),
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => return Err(e),
        }
    }
}
