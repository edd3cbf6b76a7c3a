//! What the watch's tests watch and scrape with: a leak the test makes itself (a thread of this
//! process in a network namespace of its own accepts connections and never closes them, and the
//! clients close theirs), a client's leak (a Python client whose server closed its connections
//! and which never notices, the service local to its namespace or in another one behind a veth
//! pair), the exporter over either, plain HTTP requests, and a real Prometheus.
#![allow(dead_code)]

use std::io::{BufRead, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cwlab_model::watch::Snapshot;
use cwlab_model::TcpState;

use crate::util::show;

/// A leak of `n` connections held by this process, in a namespace of a thread of its own.
pub struct Leak {
    pub netns: PathBuf,
    pub port: u16,
    pub n: u32,
    pub inode: u64,
    _stop: std::sync::mpsc::Sender<()>,
}

pub fn leak(n: u32) -> Leak {
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        cwlab_sampler::netns::enter_private().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let clients: Vec<TcpStream> =
            (0..n).map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
        let accepted: Vec<TcpStream> = (0..n).map(|_| listener.accept().unwrap().0).collect();
        drop(clients); // their FINs: the accepted ends go to CLOSE-WAIT, held here
                       // SAFETY: gettid(2) takes nothing and cannot fail.
        let tid = unsafe { libc::gettid() };
        tx.send((tid, port)).unwrap();
        let _ = stop_rx.recv();
        drop(accepted);
    });
    let (tid, port) = rx.recv().unwrap();
    let netns = PathBuf::from(format!("/proc/{}/task/{tid}/ns/net", std::process::id()));
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&netns).unwrap());
    Leak { netns, port, n, inode, _stop: stop_tx }
}

/// A thread of this process in a network namespace of its own, alive until the value goes: its
/// namespace's path and inode.
pub struct Namespace {
    pub path: PathBuf,
    pub tid: i32,
    pub inode: u64,
    _stop: std::sync::mpsc::Sender<()>,
}

impl Namespace {
    pub fn new() -> Namespace {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            cwlab_sampler::netns::enter_private().unwrap();
            // SAFETY: gettid(2) takes nothing and cannot fail.
            tx.send(unsafe { libc::gettid() }).unwrap();
            let _ = stop_rx.recv();
        });
        let tid = rx.recv().unwrap();
        let path = PathBuf::from(format!("/proc/{}/task/{tid}/ns/net", std::process::id()));
        let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap());
        Namespace { path, tid, inode, _stop: stop_tx }
    }

    /// `f` run in the namespace (what it opens belongs there).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> std::io::Result<T> + Send) -> T {
        cwlab_sampler::netns::in_namespace_at(&self.path, f).unwrap()
    }
}

/// The client's and the service's addresses on the veth pair of a [`client_leak`] whose service
/// is not on the client's host.
pub const CLIENT_HOST: Ipv4Addr = Ipv4Addr::new(10, 77, 19, 1);
pub const SERVICE_HOST: Ipv4Addr = Ipv4Addr::new(10, 77, 19, 2);

/// A Python client holding `n` connections its service closed: its pool never notices.
pub struct ClientLeak {
    /// The client's namespace.
    pub ns: Namespace,
    /// The service's namespace, when it is not the client's.
    pub service_ns: Option<Namespace>,
    /// The service, as the client dialled it.
    pub service: SocketAddr,
    /// The client's pid.
    pub pid: u32,
    pub n: u32,
    pub pool: Pool,
    pub listener: TcpListener,
}

/// What a pool runs: `n` connections to HOST:PORT; at each line on its stdin, it closes them
/// and opens `n` new ones (what a pool that finds the FIN on its next use does); at its end,
/// it exits.
const POOL: &str = "import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def fill():
    return [socket.create_connection((host, port)) for _ in range(n)]
pool = fill()
print('ready', flush=True)
for _ in sys.stdin:
    for c in pool: c.close()
    pool = fill()
    print('ready', flush=True)
";

/// A Python client's pool of connections to a service whose listener the test holds: the
/// service closes each connection as soon as it accepts it.
pub struct Pool {
    pub pid: u32,
    n: u32,
    child: Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Pool {
    /// `n` connections from namespace `ns` to `service` (served by `listener`), each closed by
    /// the service.
    pub fn start(ns: &Namespace, service: SocketAddr, n: u32, listener: &TcpListener) -> Pool {
        let (host, port) = (service.ip().to_string(), service.port().to_string());
        let mut child = ns.run(|| {
            Command::new("python3")
                .args(["-c", POOL, &host, &port, &n.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
        });
        let stdin = child.stdin.take().unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut p = Pool { pid: child.id(), n, child, stdin, stdout };
        p.served(listener);
        p
    }

    /// The pool's next use: it closes its connections and opens as many new ones, which the
    /// service closes.
    pub fn renew(&mut self, listener: &TcpListener) {
        self.stdin.write_all(b"renew\n").unwrap();
        self.served(listener);
    }

    fn served(&mut self, listener: &TcpListener) {
        let mut ready = String::new();
        self.stdout.read_line(&mut ready).unwrap();
        assert_eq!(ready, "ready\n", "the client connected");
        for _ in 0..self.n {
            drop(listener.accept().unwrap().0); // the service's FIN: the client's end to CLOSE-WAIT
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client leak of `n` connections: `remote`, its service in a namespace of its own joined to
/// the client's by a veth pair (`SERVICE_HOST:443`), else on the client's loopback.
pub fn client_leak(n: u32, remote: bool) -> ClientLeak {
    let ns = Namespace::new();
    let service_ns = remote.then(Namespace::new);
    let (listener, service) = match &service_ns {
        Some(s) => {
            let peer = s.tid as u32;
            ns.run(|| {
                cwlab_sampler::netns::veth_to("cw19-c", "cw19-s", peer)?;
                cwlab_sampler::netns::set_ipv4("cw19-c", CLIENT_HOST, 24)?;
                cwlab_sampler::netns::set_up("cw19-c")
            });
            s.run(|| {
                cwlab_sampler::netns::set_ipv4("cw19-s", SERVICE_HOST, 24)?;
                cwlab_sampler::netns::set_up("cw19-s")
            });
            let l = s.run(|| TcpListener::bind((SERVICE_HOST, 443)));
            (l, SocketAddr::from((SERVICE_HOST, 443)))
        }
        None => {
            let l = ns.run(|| TcpListener::bind("127.0.0.1:0"));
            let addr = l.local_addr().unwrap();
            (l, addr)
        }
    };
    let pool = Pool::start(&ns, service, n, &listener);
    ClientLeak { ns, service_ns, service, pid: pool.pid, n, pool, listener }
}

/// Looks (`cwlab watch --once --json --stuck 1s`) until the client's connections all wait in
/// CLOSE-WAIT and the oldest has waited the second `--stuck` asks, to a deadline: then the
/// model reads them.
pub fn client_settled(c: &ClientLeak) -> Snapshot {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ns = c.ns.path.to_str().unwrap();
        let out = watch(&["--netns", ns, "--once", "--json", "--stuck", "1s"]);
        assert_eq!(out.status.code(), Some(0), "{}", show(&out));
        let s: Snapshot = serde_json::from_slice(&out.stdout).unwrap();
        let r = s.namespaces[0].ports.iter().flat_map(|p| &p.remotes).next();
        if r.is_some_and(|r| r.close_wait == c.n && r.finding.is_some()) {
            return s;
        }
        assert!(Instant::now() < deadline, "timeout while expecting the pool's leak, last {r:?}");
    }
}

/// `cwlab watch ARGS`, run to its end.
pub fn watch(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cwlab")).arg("watch").args(args).output().unwrap()
}

/// Looks until the clients' FINs have all been acknowledged (their sockets in FIN-WAIT-2), to a
/// deadline; the ACK of a FIN may be delayed. `--stuck 0s`: a leak's CLOSE-WAIT is read as
/// stuck at once.
pub fn settled(l: &Leak) -> Snapshot {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ns = l.netns.to_str().unwrap();
        let out = watch(&["--netns", ns, "--once", "--json", "--stuck", "0s"]);
        assert_eq!(out.status.code(), Some(0), "{}", show(&out));
        let s: Snapshot = serde_json::from_slice(&out.stdout).unwrap();
        let p = &s.namespaces[0].ports[0];
        if p.client.get(&TcpState::FinWait2) == Some(&l.n) {
            return s;
        }
        assert!(Instant::now() < deadline, "timeout while expecting FIN-WAIT-2, last {p:?}");
    }
}

/// A running exporter, its address, and the notes it printed before serving.
pub struct Exporter {
    pub child: Child,
    pub addr: String,
    pub notes: Vec<String>,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The exporter over `l`'s namespace on a port of its own, once it says where it serves
/// (`scheme`, http or https).
pub fn exporter_with(l: &Leak, scheme: &str, extra: &[&str]) -> Exporter {
    exporter_at(&l.netns, scheme, extra)
}

/// The exporter over the namespace at `netns`, as [`exporter_with`].
pub fn exporter_at(netns: &Path, scheme: &str, extra: &[&str]) -> Exporter {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cwlab"))
        .args(["watch", "--netns", netns.to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let mut notes = Vec::new();
    let serving = format!("cwlab watch: serving {scheme}://");
    let line = loop {
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while err.read(&mut b).unwrap_or(0) == 1 && b[0] != b'\n' {
            line.push(b[0]);
        }
        let line = String::from_utf8(line).unwrap();
        match line.strip_prefix("cwlab watch: note: ") {
            Some(note) => notes.push(note.to_string()),
            None => break line,
        }
    };
    let addr = line
        .strip_prefix(&serving)
        .and_then(|r| r.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("unexpected line: {line:?} (notes {notes:?})"))
        .to_string();
    Exporter { child, addr, notes }
}

/// The exporter over `l`'s namespace, plain HTTP.
pub fn exporter(l: &Leak, extra: &[&str]) -> Exporter {
    exporter_with(l, "http", extra)
}

/// Sends `request` and reads the whole answer.
pub fn ask(addr: &str, request: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// An answer's body.
pub fn body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// `GET path` on a local HTTP server, the body parsed as JSON.
pub fn get_json(addr: &str, path: &str) -> serde_json::Value {
    let a = ask(addr, &format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n"));
    serde_json::from_str(body(&a)).unwrap_or(serde_json::Value::Null)
}

/// Lets this process open as many descriptors as it may.
pub fn raise_nofile() {
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard).unwrap();
}

/// True when Prometheus is installed (CI installs it; elsewhere a test without it skips).
pub fn prometheus_installed() -> bool {
    let Ok(version) = Command::new("prometheus").arg("--version").output() else {
        assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "CI installs prometheus");
        eprintln!("skipping: prometheus is not installed");
        return false;
    };
    assert!(version.status.success());
    true
}

/// A real Prometheus running `dir/prometheus.yml`, its data in `dir`, its API on `web`.
pub struct Prometheus {
    pub web: String,
    child: Child,
}

impl Prometheus {
    pub fn start(dir: &Path) -> Prometheus {
        let web = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={web}"))
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Prometheus { web, child }
    }

    /// `GET path` on its API once it answers, or Null.
    pub fn get(&self, path: &str) -> serde_json::Value {
        if TcpStream::connect(&self.web).is_err() {
            return serde_json::Value::Null;
        }
        get_json(&self.web, path)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
