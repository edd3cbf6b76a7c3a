//! The exporter's HTTP side: `GET /metrics` (OpenMetrics when the scraper asks for it, the
//! Prometheus text format otherwise), `GET /` (a page naming the metrics), 404 for anything else;
//! over TLS, behind basic auth, with a rate limit and extra headers when a web configuration
//! asks for them ([`crate::webconfig`]). A look is made at scrape time; scrapes that arrive while
//! one is being made share it.
//!
//! No client can starve a scrape. Every connection is accepted at once (the accept loop never
//! waits for a free place); a client has [`Exporter::request_timeout`] from its connection to
//! finish its request head, its TLS handshake included (408 past it); and past
//! [`Exporter::max_connections`] the oldest connection still waiting for its request is dropped
//! to make room for the new one, which is more likely to be a scraper than a client that has
//! sent nothing useful for a while.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cwlab_model::watch::Snapshot;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::webconfig::WebConfig;
use crate::{metrics, Watcher};

/// Connections open at once, by default; past it the oldest waiting for its request is dropped.
pub const MAX_CONNECTIONS: usize = 1024;

/// How long writing an answer may take: a client that does not read its answer is dropped.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// The OpenMetrics content type.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The Prometheus text format's.
const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Plain text.
const PLAIN: &str = "text/plain; charset=utf-8";

/// A look and the dumps made by then.
pub type Look = Arc<(Snapshot, u64)>;

/// What the exporter serves from.
pub struct Exporter {
    watcher: Arc<Mutex<Watcher>>,
    /// The last look and when it finished.
    last: tokio::sync::Mutex<Option<(Instant, Look)>>,
    /// How long a client may take to send its request head, from its connection (TLS included).
    pub request_timeout: Duration,
    /// Connections open at once; past it the oldest still waiting for its request is dropped.
    pub max_connections: usize,
    /// TLS, users, headers and rate limit (`--web.config.file`); by default none.
    pub web: WebConfig,
    /// The rate limit's bucket: tokens left and when it was last filled.
    bucket: Mutex<Option<(f64, Instant)>>,
}

/// An answer on its way: status, content type, body, and one more header.
struct Answer {
    status: &'static str,
    ctype: &'static str,
    body: String,
    extra: Option<(&'static str, &'static str)>,
}

impl Answer {
    fn new(status: &'static str, ctype: &'static str, body: impl Into<String>) -> Answer {
        Answer { status, ctype, body: body.into(), extra: None }
    }
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
            request_timeout: Duration::from_secs(5),
            max_connections: MAX_CONNECTIONS,
            web: WebConfig::default(),
            bucket: Mutex::new(None),
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
        let seats = Arc::new(Mutex::new(Seats::default()));
        let acceptor = self.web.tls.clone().map(tokio_rustls::TlsAcceptor::from);
        tokio::pin!(stop);
        loop {
            let accepted = tokio::select! {
                _ = &mut stop => return,
                c = listener.accept() => c,
            };
            let Ok((tcp, _)) = accepted else {
                // Out of descriptors (the only error accept(2) repeats): make room, and give the
                // dropped connection's descriptor a moment to close rather than spin.
                lock(&seats).drop_oldest();
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let (seat, dropped) = Seat::take(&seats, self.max_connections);
            tokio::spawn(self.clone().connection(tcp, acceptor.clone(), seat, dropped));
        }
    }

    /// One connection: the TLS handshake where configured, the request, the answer.
    async fn connection(
        self: Arc<Self>,
        tcp: TcpStream,
        tls: Option<tokio_rustls::TlsAcceptor>,
        mut seat: Seat,
        mut dropped: oneshot::Receiver<()>,
    ) {
        let arrived = Instant::now();
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let _ = tcp.set_nodelay(true);
        let Some(acceptor) = tls else {
            return self.exchange(tcp, arrived, deadline, &mut seat, &mut dropped).await;
        };
        let handshake = tokio::select! {
            _ = &mut dropped => return,
            h = tokio::time::timeout_at(deadline, acceptor.accept(tcp)) => h,
        };
        if let Ok(Ok(stream)) = handshake {
            self.exchange(stream, arrived, deadline, &mut seat, &mut dropped).await;
        }
    }

    /// Reads a request head by `deadline` (unless dropped first) and answers it.
    async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut s: S,
        arrived: Instant,
        deadline: tokio::time::Instant,
        seat: &mut Seat,
        dropped: &mut oneshot::Receiver<()>,
    ) {
        let head = tokio::select! {
            _ = dropped => return,
            h = tokio::time::timeout_at(deadline, read_head(&mut s)) => h,
        };
        let answer = match head {
            Ok(Ok(Some(head))) => {
                seat.answering();
                self.answer(&head, arrived).await
            }
            Ok(_) => return,
            Err(_) => Answer::new("408 Request Timeout", PLAIN, "request timeout\n"),
        };
        let bytes = self.bytes(&answer);
        let _ = tokio::time::timeout(ANSWER_TIMEOUT, send(&mut s, &bytes)).await;
    }

    async fn answer(&self, head: &str, arrived: Instant) -> Answer {
        if !self.within_rate() {
            return Answer::new("429 Too Many Requests", PLAIN, "too many requests\n");
        }
        let first = head.lines().next().unwrap_or("");
        let parts: Vec<&str> = first.split(' ').collect();
        let [method, target, version] = parts[..] else {
            return Answer::new("400 Bad Request", PLAIN, "bad request\n");
        };
        if !version.starts_with("HTTP/1.") {
            return Answer::new("400 Bad Request", PLAIN, "bad request\n");
        }
        if let Some(users) = &self.web.users {
            if !users.allow(header(head, "authorization")).await {
                let mut a = Answer::new("401 Unauthorized", PLAIN, "unauthorized\n");
                a.extra = Some(("WWW-Authenticate", "Basic"));
                return a;
            }
        }
        if method != "GET" && method != "HEAD" {
            return Answer::new("405 Method Not Allowed", PLAIN, "GET only\n");
        }
        let accept = header(head, "accept").unwrap_or_default().to_ascii_lowercase();
        let path = target.split('?').next().unwrap_or("");
        let mut a = match path {
            "/metrics" => {
                let snap = self.look(arrived).await;
                if accept.contains("application/openmetrics-text") {
                    Answer::new("200 OK", OPENMETRICS, metrics::openmetrics(&snap.0, snap.1))
                } else {
                    Answer::new("200 OK", TEXT, metrics::prometheus_text(&snap.0, snap.1))
                }
            }
            "/" => Answer::new("200 OK", "text/html; charset=utf-8", index()),
            _ => Answer::new("404 Not Found", "text/plain", "not found: try /metrics\n"),
        };
        if method == "HEAD" {
            a.body.clear();
        }
        a
    }

    /// Takes a token from the rate limit's bucket (`burst` of them, one more every `interval`).
    fn within_rate(&self) -> bool {
        let Some(limit) = self.web.rate_limit else { return true };
        let burst = f64::from(limit.burst);
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let (tokens, then) = bucket.unwrap_or((burst, now));
        let tokens = (tokens
            + now.duration_since(then).as_secs_f64() / limit.interval.as_secs_f64())
        .min(burst);
        let allowed = tokens >= 1.0;
        *bucket = Some((if allowed { tokens - 1.0 } else { tokens }, now));
        allowed
    }

    /// The answer in one piece: a head and a body written apart would wait, by Nagle's
    /// algorithm, for the client's delayed ACK of the head (40 ms here).
    fn bytes(&self, a: &Answer) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            a.status,
            a.ctype,
            a.body.len()
        );
        let extra = a.extra.iter().map(|(k, v)| (*k, *v));
        for (k, v) in extra.chain(self.web.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()))) {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(a.body.as_bytes());
        bytes
    }
}

/// The value of the header `name` (lowercase) in a request head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

/// The connections open now: those still waiting for their request, oldest first (each with the
/// sender whose drop drops it), and how many are being answered.
#[derive(Default)]
struct Seats {
    next: u64,
    waiting: BTreeMap<u64, oneshot::Sender<()>>,
    answering: usize,
}

impl Seats {
    fn drop_oldest(&mut self) -> bool {
        self.waiting.pop_first().is_some()
    }
}

fn lock(seats: &Mutex<Seats>) -> std::sync::MutexGuard<'_, Seats> {
    seats.lock().unwrap_or_else(|e| e.into_inner())
}

/// A connection's place among the open ones, given back when it ends.
struct Seat {
    seats: Arc<Mutex<Seats>>,
    id: u64,
    answering: bool,
}

impl Seat {
    /// A place for a new connection, making room by dropping the oldest waiting ones; and what
    /// resolves when this one is dropped in turn.
    fn take(seats: &Arc<Mutex<Seats>>, max: usize) -> (Seat, oneshot::Receiver<()>) {
        let mut s = lock(seats);
        while s.waiting.len() + s.answering >= max.max(1) && s.drop_oldest() {}
        let id = s.next;
        s.next += 1;
        let (tx, rx) = oneshot::channel();
        s.waiting.insert(id, tx);
        (Seat { seats: seats.clone(), id, answering: false }, rx)
    }

    /// The request is in: from now on this connection is answered, never dropped for room.
    fn answering(&mut self) {
        let mut s = lock(&self.seats);
        s.waiting.remove(&self.id);
        s.answering += 1;
        self.answering = true;
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut s = lock(&self.seats);
        if self.answering {
            s.answering -= 1;
        } else {
            s.waiting.remove(&self.id);
        }
    }
}

/// Reads up to the blank line that ends a request's head (at most 16 KiB); `None` at EOF first.
async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<Option<String>> {
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

/// Writes `bytes` and closes the sending side (with TLS, its close_notify first).
async fn send<S: AsyncWrite + Unpin>(s: &mut S, bytes: &[u8]) -> std::io::Result<()> {
    s.write_all(bytes).await?;
    s.shutdown().await
}

/// The page at `/`.
fn index() -> String {
    "<!doctype html><html><head><title>cwlab watch</title></head><body>\
<h1>cwlab watch</h1><p>The close sequence of this host, per service port: \
<a href=\"/metrics\">/metrics</a>.</p><ul>\
<li><code>cwlab_tcp_sockets{netns,port,side,state}</code>: sockets per state on each side of a service port</li>\
<li><code>cwlab_tcp_close_wait_oldest_seconds{netns,port,side,remote}</code>: the oldest CLOSE-WAIT's wait, \
a port's server side or its client side's connections to one remote service</li>\
<li><code>cwlab_tcp_close_wait_holder_sockets{netns,port,side,remote,pid,command}</code>: CLOSE-WAIT held by the top holders</li>\
<li><code>cwlab_tcp_close_wait_finding{netns,port,side,remote,kind}</code>: the model's reading \
(held-open, backlog, pool-leak, pool-bounded)</li>\
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

    #[tokio::test(flavor = "current_thread")]
    async fn the_rate_limit_answers_429_past_its_burst_and_headers_go_on_every_answer() {
        let mut e = Exporter::new(Watcher::new(Namespaces::Own, vec![], 5).unwrap());
        e.web.rate_limit =
            Some(crate::webconfig::RateLimit { interval: Duration::from_secs(3600), burst: 2 });
        e.web.headers = vec![("X-Frame-Options".into(), "deny".into())];
        let mut statuses = Vec::new();
        for _ in 0..3 {
            statuses.push(e.answer("GET / HTTP/1.1", Instant::now()).await.status);
        }
        assert_eq!(statuses, ["200 OK", "200 OK", "429 Too Many Requests"]);
        let bytes = e.bytes(&Answer::new("200 OK", PLAIN, "x"));
        assert!(String::from_utf8(bytes).unwrap().ends_with("X-Frame-Options: deny\r\n\r\nx"));
    }
}
