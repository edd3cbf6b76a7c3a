//! The exporter's HTTP side: `GET /metrics` (OpenMetrics when the scraper asks for it, the
//! Prometheus text format otherwise), `GET /` (a page naming the metrics), 404 for anything else.
//! A look is made at scrape time; scrapes that arrive while one is being made share it. A client
//! that does not finish its request within the request timeout is dropped; at most
//! [`MAX_CONNECTIONS`] are served at once, the rest wait their turn in the backlog.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cwlab_model::watch::Snapshot;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::{metrics, Watcher};

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 1024;

/// The OpenMetrics content type.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The Prometheus text format's.
const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A look and the dumps made by then.
pub type Look = Arc<(Snapshot, u64)>;

/// What the exporter serves from.
pub struct Exporter {
    watcher: Arc<Mutex<Watcher>>,
    /// The last look and when it finished.
    last: tokio::sync::Mutex<Option<(Instant, Look)>>,
    /// How long a client may take to send its request.
    pub request_timeout: Duration,
}

impl Exporter {
    /// An exporter over `watcher`. Where the watcher streams, a thread applies the kernel's
    /// reports every quarter second between scrapes, for as long as the exporter lives.
    pub fn new(watcher: Watcher) -> Exporter {
        let streaming = watcher.streaming();
        let watcher = Arc::new(Mutex::new(watcher));
        if streaming {
            let weak = Arc::downgrade(&watcher);
            std::thread::spawn(move || loop {
                std::thread::sleep(Duration::from_millis(250));
                let Some(w) = weak.upgrade() else { return };
                w.lock().unwrap_or_else(|e| e.into_inner()).catch_up();
            });
        }
        Exporter {
            watcher,
            last: tokio::sync::Mutex::new(None),
            request_timeout: Duration::from_secs(10),
        }
    }

    /// A look for a scrape that arrived at `arrived`: one finished since then if there is one
    /// (a scrape that waited for another's look takes it), else a new one.
    pub async fn look(&self, arrived: Instant) -> Look {
        let mut last = self.last.lock().await;
        if let Some((done, snap)) = last.as_ref() {
            if *done >= arrived {
                return snap.clone();
            }
        }
        let w = self.watcher.clone();
        let snap = tokio::task::spawn_blocking(move || {
            let mut w = w.lock().unwrap_or_else(|e| e.into_inner());
            let s = w.look();
            (s, w.dumps)
        })
        .await
        .expect("a look panicked");
        let snap = Arc::new(snap);
        *last = Some((Instant::now(), snap.clone()));
        snap
    }

    /// Serves until `stop` resolves.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, stop: impl std::future::Future) {
        let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        tokio::pin!(stop);
        loop {
            let permit = tokio::select! {
                _ = &mut stop => return,
                p = permits.clone().acquire_owned() => p.expect("never closed"),
            };
            let conn = tokio::select! {
                _ = &mut stop => return,
                c = listener.accept() => c,
            };
            let Ok((stream, _)) = conn else { continue };
            let me = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                me.answer(stream).await;
            });
        }
    }

    async fn answer(&self, mut s: TcpStream) {
        let arrived = Instant::now();
        let head = match tokio::time::timeout(self.request_timeout, read_head(&mut s)).await {
            Ok(Ok(Some(h))) => h,
            Ok(Ok(None)) | Ok(Err(_)) => return,
            Err(_) => {
                let _ =
                    respond(&mut s, "408 Request Timeout", "text/plain", "request timeout\n").await;
                return;
            }
        };
        let mut lines = head.lines();
        let first = lines.next().unwrap_or("");
        let parts: Vec<&str> = first.split(' ').collect();
        let [method, target, version] = parts[..] else {
            let _ = respond(&mut s, "400 Bad Request", "text/plain", "bad request\n").await;
            return;
        };
        if !version.starts_with("HTTP/1.") {
            let _ = respond(&mut s, "400 Bad Request", "text/plain", "bad request\n").await;
            return;
        }
        if method != "GET" && method != "HEAD" {
            let _ = respond(&mut s, "405 Method Not Allowed", "text/plain", "GET only\n").await;
            return;
        }
        let accept = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("accept"))
            .map(|(_, v)| v.to_ascii_lowercase())
            .unwrap_or_default();
        let path = target.split('?').next().unwrap_or("");
        let (status, ctype, body) = match path {
            "/metrics" => {
                let snap = self.look(arrived).await;
                if accept.contains("application/openmetrics-text") {
                    ("200 OK", OPENMETRICS, metrics::openmetrics(&snap.0, snap.1))
                } else {
                    ("200 OK", TEXT, metrics::prometheus_text(&snap.0, snap.1))
                }
            }
            "/" => ("200 OK", "text/html; charset=utf-8", index()),
            _ => ("404 Not Found", "text/plain", "not found: try /metrics\n".to_string()),
        };
        let body = if method == "HEAD" { String::new() } else { body };
        let _ = respond(&mut s, status, ctype, &body).await;
    }
}

/// Reads up to the blank line that ends a request's head (at most 16 KiB); `None` at EOF first.
async fn read_head(s: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find(&buf, b"\r\n\r\n").or_else(|| find(&buf, b"\n\n")) {
            return Ok(Some(String::from_utf8_lossy(&buf[..end]).into_owned()));
        }
        if buf.len() > 16 * 1024 {
            return Ok(Some(String::from("TOO LONG")));
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Writes the answer in one piece: a head and a body written apart would wait, by Nagle's
/// algorithm, for the client's delayed ACK of the head (40 ms here).
async fn respond(s: &mut TcpStream, status: &str, ctype: &str, body: &str) -> std::io::Result<()> {
    let mut answer = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(body.as_bytes());
    let _ = s.set_nodelay(true);
    s.write_all(&answer).await?;
    s.shutdown().await
}

/// The page at `/`.
fn index() -> String {
    "<!doctype html><html><head><title>cwlab watch</title></head><body>\
<h1>cwlab watch</h1><p>The close sequence of this host, per service port: \
<a href=\"/metrics\">/metrics</a>.</p><ul>\
<li><code>cwlab_tcp_sockets{netns,port,side,state}</code>: sockets per state on each side of a service port</li>\
<li><code>cwlab_tcp_close_wait_oldest_seconds{netns,port}</code>: the oldest CLOSE-WAIT's wait</li>\
<li><code>cwlab_tcp_close_wait_holder_sockets{netns,port,pid,command}</code>: CLOSE-WAIT held by the top holders</li>\
<li><code>cwlab_process_open_fds</code>, <code>cwlab_process_max_fds{pid,command}</code>: the holders' descriptors and limit</li>\
<li><code>cwlab_netns_up</code>, <code>cwlab_scrape_duration_seconds</code>, <code>cwlab_dumps_total</code>, <code>cwlab_build_info</code></li>\
</ul></body></html>\n"
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Namespaces;

    #[tokio::test(flavor = "current_thread")]
    async fn scrapes_that_arrive_together_share_one_look() {
        let w = Watcher::new(Namespaces::Own, vec![], 5).unwrap();
        let e = Arc::new(Exporter::new(w));
        let arrived = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let e = e.clone();
            set.spawn(async move { e.look(arrived).await.1 });
        }
        let mut dumps = Vec::new();
        while let Some(d) = set.join_next().await {
            dumps.push(d.unwrap());
        }
        assert_eq!(dumps, vec![1; 10], "ten scrapes, one dump");
        assert_eq!(e.look(Instant::now()).await.1, 2, "a later scrape makes a new one");
    }
}
