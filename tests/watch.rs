//! `cwlab watch` on a leak the test makes itself: a thread of this process in a network
//! namespace of its own accepts connections and never closes them, and the clients close theirs.
//! The watch must count them exactly, name this process as the holder, serve them as metrics
//! Prometheus's own tools accept, and behave as an HTTP server should.

mod util;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cwlab_model::watch::Snapshot;
use cwlab_model::TcpState;
use util::{can_isolate, scratch, show};

/// A leak of `n` connections held by this process, in a namespace of a thread of its own.
struct Leak {
    netns: PathBuf,
    port: u16,
    n: u32,
    inode: u64,
    _stop: std::sync::mpsc::Sender<()>,
}

fn leak(n: u32) -> Leak {
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

fn watch(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cwlab")).arg("watch").args(args).output().unwrap()
}

/// Looks until the clients' FINs have all been acknowledged (their sockets in FIN-WAIT-2), to a
/// deadline; the ACK of a FIN may be delayed.
fn settled(l: &Leak) -> Snapshot {
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

#[test]
fn issue_13_watch_counts_a_leak_exactly_and_names_its_holder() {
    if !can_isolate("watch-leak") {
        return;
    }
    let l = leak(37);
    let s = settled(&l);
    assert_eq!(s.namespaces.len(), 1);
    let ns = &s.namespaces[0];
    assert_eq!(ns.inode, l.inode);
    assert_eq!(ns.error, None);
    assert_eq!(ns.ports.len(), 1, "one service port: {ns:?}");
    let p = &ns.ports[0];
    assert_eq!((p.port, p.listening), (l.port, true));
    assert_eq!(p.server.get(&TcpState::CloseWait), Some(&37));
    assert_eq!(p.server.get(&TcpState::Listen), Some(&1));
    assert_eq!(p.client.get(&TcpState::FinWait2), Some(&37));
    assert!(ns.other.is_empty(), "{:?}", ns.other);
    assert_eq!(p.holders.len(), 1);
    let h = &p.holders[0];
    assert_eq!((h.pid, h.sockets), (std::process::id(), 37));
    assert!(h.open_fds >= 38, "{h:?}");
    assert!(h.max_fds.is_some());
    let age = p.close_wait_oldest_s.expect("an age from tcp_info");
    assert!((0.0..60.0).contains(&age), "{age}");
    assert_eq!(p.close_wait_per_min, None, "one look has no rate");
    let f = p.finding.as_deref().unwrap();
    assert!(f.starts_with("37 CLOSE-WAIT (steady"), "{f}");
    assert!(f.contains(&format!("held by pid {}", std::process::id())), "{f}");

    // The table on screen, and --port narrowing the service ports to one with no listener.
    let ns_path = l.netns.to_str().unwrap();
    let out = watch(&["--netns", ns_path, "--once"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("held by pid {}", std::process::id())), "{text}");
    let out = watch(&["--netns", ns_path, "--once", "--json", "--port", "9"]);
    let s: Snapshot = serde_json::from_slice(&out.stdout).unwrap();
    let p = &s.namespaces[0].ports[0];
    assert_eq!((p.port, p.listening), (9, false));
    assert!(p.server.is_empty() && p.client.is_empty());
    assert_eq!(s.namespaces[0].other.get(&TcpState::CloseWait), Some(&37));
}

#[test]
fn issue_13_a_missing_namespace_exits_2_and_says_which() {
    let out = watch(&["--netns", "/proc/1/task/999999999/ns/net", "--once"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(
            "error: cannot watch the network namespace /proc/1/task/999999999/ns/net:"
        ),
        "{stderr}"
    );
}

/// `promtool check metrics` on `text`; `None` without promtool (CI installs it).
fn promtool_check(text: &str) -> Option<std::process::Output> {
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(_) => {
            assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "CI installs promtool");
            eprintln!("skipping promtool: not installed");
            return None;
        }
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    Some(child.wait_with_output().unwrap())
}

#[test]
fn issue_13_textfile_for_node_exporter_passes_promtool() {
    if !can_isolate("watch-textfile") {
        return;
    }
    let l = leak(12);
    settled(&l);
    let dir = scratch("watch-textfile");
    let out = watch(&[
        "--netns",
        l.netns.to_str().unwrap(),
        "--textfile",
        dir.to_str().unwrap(),
        "--once",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let text = std::fs::read_to_string(dir.join("cwlab.prom")).unwrap();
    let line = format!(
        "cwlab_tcp_sockets{{netns=\"{}\",port=\"{}\",side=\"server\",state=\"close_wait\"}} 12",
        l.inode, l.port
    );
    assert!(text.lines().any(|x| x == line), "{line} in\n{text}");
    assert!(!text.contains("# EOF"), "the textfile collector reads the Prometheus format");
    let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
    assert_eq!(leftovers.len(), 1, "only cwlab.prom: {leftovers:?}");
    if let Some(out) = promtool_check(&text) {
        assert_eq!(out.status.code(), Some(0), "promtool: {}", show(&out));
    }
}

/// A running exporter and its address.
struct Exporter {
    child: Child,
    addr: String,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn exporter(l: &Leak, extra: &[&str]) -> Exporter {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cwlab"))
        .args(["watch", "--netns", l.netns.to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while err.read(&mut b).unwrap_or(0) == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    let line = String::from_utf8(line).unwrap();
    let addr = line
        .strip_prefix("cwlab watch: serving http://")
        .and_then(|r| r.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_string();
    Exporter { child, addr }
}

/// Sends `request` and reads the whole answer.
fn ask(addr: &str, request: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

#[test]
fn issue_13_the_exporter_answers_as_an_http_server_should() {
    if !can_isolate("watch-http") {
        return;
    }
    let l = leak(9);
    settled(&l);
    let e = exporter(&l, &["--request-timeout", "1s"]);
    let want = format!(
        "cwlab_tcp_sockets{{netns=\"{}\",port=\"{}\",side=\"server\",state=\"close_wait\"}} 9",
        l.inode, l.port
    );

    let om = ask(&e.addr, "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n");
    assert!(om.starts_with("HTTP/1.1 200 OK\r\n"), "{om}");
    assert!(om.contains("Content-Type: application/openmetrics-text; version=1.0.0"), "{om}");
    assert!(body(&om).ends_with("# EOF\n"));
    assert!(body(&om).lines().any(|x| x == want), "{om}");

    let plain = ask(&e.addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(plain.contains("Content-Type: text/plain; version=0.0.4"), "{plain}");
    assert!(body(&plain).lines().any(|x| x == want));
    if let Some(out) = promtool_check(body(&plain)) {
        assert_eq!(out.status.code(), Some(0), "promtool: {}", show(&out));
    }

    let index = ask(&e.addr, "GET / HTTP/1.0\r\n\r\n");
    assert!(index.starts_with("HTTP/1.1 200 OK") && index.contains("cwlab_tcp_sockets"));
    assert!(ask(&e.addr, "GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 Not Found"));
    assert!(ask(&e.addr, "BLAH\r\n\r\n").starts_with("HTTP/1.1 400 Bad Request"));
    assert!(ask(&e.addr, "POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
    // A client that never finishes its request is dropped after the request timeout.
    let started = Instant::now();
    let slow = ask(&e.addr, "GET /metr");
    assert!(slow.starts_with("HTTP/1.1 408 Request Timeout"), "{slow}");
    assert!(started.elapsed() < Duration::from_secs(10));

    // 1,000 connections at once, every one answered.
    raise_nofile();
    let conns: Vec<TcpStream> = (0..1000)
        .map(|_| {
            let mut s = TcpStream::connect(&e.addr).unwrap();
            s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
            s
        })
        .collect();
    let mut ok = 0;
    for mut s in conns {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut a = String::new();
        s.read_to_string(&mut a).unwrap();
        ok += usize::from(a.starts_with("HTTP/1.1 200 OK"));
    }
    assert_eq!(ok, 1000);
}

#[test]
fn issue_13_sigterm_ends_the_exporter_cleanly_and_a_taken_address_exits_2() {
    if !can_isolate("watch-signals") {
        return;
    }
    let l = leak(3);
    let mut e = exporter(&l, &[]);
    let out = watch(&["--netns", l.netns.to_str().unwrap(), "--listen", &e.addr]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "error: --listen {}: cannot listen: Address already in use",
            e.addr
        )),
        "{stderr}"
    );
    // SAFETY: kill(2) takes no memory; the exporter is our child, not yet reaped.
    unsafe { libc::kill(e.child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(s) = e.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the exporter did not exit on SIGTERM");
        std::thread::yield_now();
    };
    assert_eq!(status.code(), Some(0));
}

fn raise_nofile() {
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard).unwrap();
}
