//! The client driver: `count` real TCP clients on tokio, at most `concurrency` connecting at once.
//! Each connects, sends its request and reads the echo; the driver returns the open streams so
//! that every client closes in the next phase, together.

use std::net::SocketAddr;
use std::sync::Arc;

use cwlab_model::report::ClientOutcome;
use cwlab_model::scenario::{ClientClose, Clients};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Connects every client and exchanges one request; returns the open streams and the tally.
pub async fn connect_all(addr: SocketAddr, c: &Clients) -> (Vec<TcpStream>, ClientOutcome) {
    let gate = Arc::new(Semaphore::new(c.concurrency as usize));
    let request = Arc::new(vec![b'x'; c.request_bytes as usize]);
    let mut set = JoinSet::new();
    for _ in 0..c.count {
        let gate = gate.clone();
        let request = request.clone();
        let read_reply = c.read_reply;
        set.spawn(async move {
            let _permit = gate.acquire_owned().await.expect("the semaphore is never closed");
            exchange(addr, &request, read_reply).await
        });
    }
    let mut streams = Vec::with_capacity(c.count as usize);
    let mut outcome = ClientOutcome::default();
    while let Some(r) = set.join_next().await {
        match r.expect("a client task panicked") {
            Ok(s) => streams.push(s),
            Err(e) => {
                outcome.failed += 1;
                outcome.first_error.get_or_insert(e);
            }
        }
    }
    (streams, outcome)
}

async fn exchange(addr: SocketAddr, request: &[u8], read_reply: bool) -> Result<TcpStream, String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| format!("connect to {addr}: {e}"))?;
    s.write_all(request).await.map_err(|e| format!("send the request: {e}"))?;
    if read_reply {
        let mut reply = vec![0u8; request.len()];
        s.read_exact(&mut reply).await.map_err(|e| format!("read the reply: {e}"))?;
    }
    Ok(s)
}

/// Ends every connection the way the scenario says; returns how many closed.
pub fn close_all(streams: Vec<TcpStream>, how: ClientClose) -> u32 {
    let n = streams.len() as u32;
    match how {
        ClientClose::Close => drop(streams),
    }
    n
}
