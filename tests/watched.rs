//! What the watch's tests watch and scrape with: a leak the test makes itself (a thread of this
//! process in a network namespace of its own accepts connections and never closes them, and the
//! clients close theirs), the exporter over it, plain HTTP requests, and a real Prometheus.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
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

/// `cwlab watch ARGS`, run to its end.
pub fn watch(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cwlab")).arg("watch").args(args).output().unwrap()
}

/// Looks until the clients' FINs have all been acknowledged (their sockets in FIN-WAIT-2), to a
/// deadline; the ACK of a FIN may be delayed.
pub fn settled(l: &Leak) -> Snapshot {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ns = l.netns.to_str().unwrap();
        let out = watch(&["--netns", ns, "--once", "--json"]);
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
    let mut child = Command::new(env!("CARGO_BIN_EXE_cwlab"))
        .args(["watch", "--netns", l.netns.to_str().unwrap(), "--listen", "127.0.0.1:0"])
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
