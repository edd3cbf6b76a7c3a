//! The client driver: `count` real TCP clients on tokio, at most `concurrency` connecting at once.
//! Each connects, sends its request and reads what the scenario says; the driver returns the open
//! streams so that every client closes in the next phase, together.

use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use cwlab_model::report::ClientOutcome;
use cwlab_model::scenario::{ClientClose, ClientRead, Clients};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Connects every client and exchanges one request; returns the open streams and the tally.
/// With a `spread`, client i starts i/(count-1) of the way into it rather than at once.
pub async fn connect_all(
    addr: SocketAddr,
    c: &Clients,
    spread: Duration,
) -> (Vec<TcpStream>, ClientOutcome) {
    let start = tokio::time::Instant::now();
    let gaps = c.count.saturating_sub(1).max(1);
    let gate = Arc::new(Semaphore::new(c.concurrency as usize));
    let request =
        Arc::new(c.request.clone().unwrap_or_else(|| vec![b'x'; c.request_bytes as usize]));
    let mut set = JoinSet::new();
    for i in 0..c.count {
        let gate = gate.clone();
        let request = request.clone();
        let c = c.clone();
        set.spawn(async move {
            tokio::time::sleep_until(start + spread * i / gaps).await;
            let _permit = gate.acquire_owned().await.expect("the semaphore is never closed");
            exchange(addr, &request, &c).await
        });
    }
    let mut streams = Vec::with_capacity(c.count as usize);
    let mut outcome = ClientOutcome::default();
    while let Some(r) = set.join_next().await {
        match r.expect("a client task panicked") {
            Ok((s, hung)) => {
                outcome.hung += u32::from(hung);
                streams.push(s);
            }
            Err(e) => {
                outcome.failed += 1;
                outcome.first_error.get_or_insert(e);
            }
        }
    }
    (streams, outcome)
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

/// One client's exchange; true beside the stream when what it waited for never came.
async fn exchange(
    addr: SocketAddr,
    request: &[u8],
    c: &Clients,
) -> Result<(TcpStream, bool), String> {
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
        Ok(Ok(())) => Ok((s, false)),
        Ok(Err(e)) => Err(format!("read the reply: {e}")),
        Err(_) => Ok((s, true)),
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
