//! `cwlab watch` on a leak the test makes itself: a thread of this process in a network
//! namespace of its own accepts connections and never closes them, and the clients close theirs.
//! The watch must count them exactly, name this process as the holder, serve them as metrics
//! Prometheus's own tools accept, and behave as an HTTP server should. And on a client's leak
//! (issue 19): a Python client whose service closed 50 connections its pool never notices,
//! the service local or on another host, named in the table, the JSON and the metrics, and
//! firing the client-side alert in a real Prometheus. A clean busy server, whose handlers leave
//! sockets in CLOSE-WAIT for a moment, is never read as stuck; its leaking twin is.

mod util;
mod watched;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cwlab_model::runtime::Runtime;
use cwlab_model::watch::Snapshot;
use cwlab_model::{FindingKind, TcpState};
use util::{can_isolate, scratch, show};
use watched::{
    ask, body, client_leak, client_settled, exporter, exporter_at, leak, prometheus_installed,
    raise_nofile, settled, watch, ClientLeak, Prometheus,
};

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
    let f = p.finding.as_ref().unwrap();
    assert_eq!(f.kind, FindingKind::HeldOpen);
    assert!(f.explanation.starts_with("37 CLOSE-WAIT (steady"), "{f:?}");
    assert!(f.explanation.contains(&format!("held by pid {}", std::process::id())), "{f:?}");
    assert!(p.remotes.is_empty(), "the clients closed: none of their sockets is stuck");

    // The table on screen, and --port narrowing the service ports to one with no listener.
    let ns_path = l.netns.to_str().unwrap();
    let out = watch(&["--netns", ns_path, "--once"]);
    let text = String::from_utf8_lossy(&out.stdout);
    // The holder's row of the table (issue 22): pid, command, CLOSE-WAIT held.
    let row = format!("    {} ", std::process::id());
    let held = text.lines().find(|l| l.starts_with(&row)).unwrap_or_else(|| panic!("{text}"));
    assert!(held.split_whitespace().nth(2) == Some("37"), "{held}");
    assert!(text.lines().all(|l| l.chars().count() <= 80), "80 columns off a terminal: {text}");
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

/// `promtool check metrics` on `text`.
fn promtool_check(text: &str) -> Option<std::process::Output> {
    promtool(&["check", "metrics"], &util::root(), Some(text))
}

/// `promtool ARGS` from `dir`, `stdin` on its standard input; `None` without promtool (CI
/// installs it).
fn promtool(
    args: &[&str],
    dir: &std::path::Path,
    stdin: Option<&str>,
) -> Option<std::process::Output> {
    let spawned = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = spawned else {
        assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "CI installs promtool");
        eprintln!("skipping: promtool is not installed");
        return None;
    };
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
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

#[test]
fn issue_13_the_alerting_rules_are_valid_and_their_unit_tests_pass() {
    let root = util::root();
    if let Some(out) = promtool(&["check", "rules", "docs/alerts.yml"], &root, None) {
        assert_eq!(out.status.code(), Some(0), "{}", show(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains("SUCCESS: 4 rules found"));
    }
    if let Some(out) =
        promtool(&["test", "rules", "alerts_test.yml"], &root.join("tests/prometheus"), None)
    {
        assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    }
}

#[test]
fn issue_13_a_real_prometheus_scrapes_the_exact_count_and_fires_the_alert() {
    if !can_isolate("watch-prometheus") {
        return;
    }
    if !prometheus_installed() {
        return;
    }
    let l = leak(25);
    settled(&l);
    let e = exporter(&l, &[]);
    let dir = scratch("watch-prometheus");
    // The rules of docs/alerts.yml, with CloseWaitStuck's 5 minutes and its minute of grace
    // brought down to what a test can wait for.
    let prom = prometheus_over(
        &dir,
        &e.addr,
        "cwlab_tcp_close_wait_oldest_seconds{side=\"server\"} > 300\n        for: 1m",
        "cwlab_tcp_close_wait_oldest_seconds{side=\"server\"} > 0\n        for: 0s",
    );
    let query =
        "/api/v1/query?query=cwlab_tcp_sockets%7Bside%3D%22server%22%2Cstate%3D%22close_wait%22%7D";
    let deadline = Instant::now() + Duration::from_secs(60);
    let value = loop {
        let v = prom.get(query);
        if let Some(r) = v["data"]["result"].as_array().and_then(|r| r.first()) {
            break r.clone();
        }
        assert!(
            Instant::now() < deadline,
            "timeout while expecting the series in Prometheus, last {v}"
        );
        std::thread::sleep(Duration::from_millis(200)); // Prometheus's own pace: scrapes every 1 s
    };
    assert_eq!(value["value"][1], "25", "{value}");
    assert_eq!(value["metric"]["port"], l.port.to_string());
    assert_eq!(value["metric"]["netns"], l.inode.to_string());
    let alert = firing(&prom, "CloseWaitStuck", deadline);
    assert_eq!(alert["labels"]["port"], l.port.to_string(), "{alert}");
}

/// A real Prometheus in `dir` scraping the exporter at `addr` every second, with the rules of
/// docs/alerts.yml, one rule's condition and wait (`slow`) brought down to what a test can wait
/// for (`fast`).
fn prometheus_over(dir: &std::path::Path, addr: &str, slow: &str, fast: &str) -> Prometheus {
    let rules = std::fs::read_to_string(util::root().join("docs/alerts.yml")).unwrap();
    assert!(rules.contains(slow), "the rule to speed up is there: {slow}");
    std::fs::write(dir.join("alerts.yml"), rules.replace(slow, fast)).unwrap();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             rule_files: [alerts.yml]\n\
             scrape_configs:\n  - job_name: cwlab\n    static_configs:\n      - targets: ['{addr}']\n"
        ),
    )
    .unwrap();
    Prometheus::start(dir)
}

/// The alert `name` once Prometheus says it fires, to `deadline`.
fn firing(prom: &Prometheus, name: &str, deadline: Instant) -> serde_json::Value {
    loop {
        let v = prom.get("/api/v1/alerts");
        let firing = v["data"]["alerts"].as_array().and_then(|a| {
            a.iter().find(|x| x["labels"]["alertname"] == name && x["state"] == "firing").cloned()
        });
        if let Some(a) = firing {
            return a;
        }
        assert!(Instant::now() < deadline, "timeout while expecting {name} to fire, last {v}");
        std::thread::sleep(Duration::from_millis(200)); // Prometheus's own pace: rules every 1 s
    }
}

/// Issue 19: a client holding 50 half-closed connections is named in the watch's JSON (its
/// remote service, holder, runtime, age and the model's finding), its table and its metrics.
fn a_client_s_leak_is_named(c: &ClientLeak) {
    let s = client_settled(c);
    let ns = &s.namespaces[0];
    assert_eq!(ns.inode, c.ns.inode);
    assert!(!ns.other.contains_key(&TcpState::CloseWait), "nothing stuck in other: {ns:?}");
    let p = ns.ports.iter().find(|p| p.port == c.service.port()).expect("the service's port");
    assert_eq!(p.listening, c.service_ns.is_none(), "{p:?}");
    assert_eq!(p.client.get(&TcpState::CloseWait), Some(&50));
    assert_eq!(p.finding, None, "the service closed: its side is clean");
    assert_eq!(p.remotes.len(), 1, "{p:?}");
    let r = &p.remotes[0];
    assert_eq!((r.remote, r.close_wait), (c.service, 50));
    assert!(r.close_wait_oldest_s.is_some_and(|a| (1.0..60.0).contains(&a)), "{r:?}");
    assert_eq!(r.holders.len(), 1, "{r:?}");
    let h = &r.holders[0];
    assert_eq!((h.pid, h.name.as_str(), h.sockets), (c.pid, "python3", 50));
    assert_eq!(h.runtime, Some(Runtime::Cpython));
    assert!(h.open_fds >= 50, "{h:?}");
    let f = r.finding.as_ref().unwrap();
    assert_eq!(f.kind, FindingKind::PoolLeak);
    let named =
        format!("pid {} `python3` holds 50 half-closed connections to {}", c.pid, c.service);
    assert!(f.explanation.starts_with(&named), "{f:?}");
    assert!(f.explanation.contains("its pool does not notice the server's FIN"), "{f:?}");
    assert_eq!(f.idiom, Some(Runtime::Cpython));
    assert!(f.fix.as_deref().unwrap().contains("requests.Session()"), "{f:?}");

    let ns_path = c.ns.path.to_str().unwrap();
    let out = watch(&["--netns", ns_path, "--once", "--stuck", "1s"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("\n    to {}: 50 CLOSE-WAIT, the oldest ", c.service)),
        "{text}"
    );
    let row = format!("    {} ", c.pid);
    let held = text.lines().find(|l| l.starts_with(&row)).unwrap_or_else(|| panic!("{text}"));
    assert_eq!(
        held.split_whitespace().take(3).collect::<Vec<_>>(),
        [&c.pid.to_string(), "python3", "50"]
    );
    assert!(text.contains(&format!("→ {named}")), "{text}");
    assert!(text.contains("fix (CPython): close every response"), "{text}");
    assert!(text.lines().all(|l| l.chars().count() <= 80), "80 columns off a terminal: {text}");

    let dir = scratch(&format!("watch-client-{}", c.service.port()));
    let out = watch(&[
        "--netns",
        ns_path,
        "--textfile",
        dir.to_str().unwrap(),
        "--once",
        "--stuck",
        "1s",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let text = std::fs::read_to_string(dir.join("cwlab.prom")).unwrap();
    let (netns, port, remote) = (c.ns.inode, c.service.port(), c.service);
    let at = format!("netns=\"{netns}\",port=\"{port}\",side=\"client\"");
    for line in [
        format!("cwlab_tcp_sockets{{{at},state=\"close_wait\"}} 50"),
        format!("cwlab_tcp_close_wait_finding{{{at},remote=\"{remote}\",kind=\"pool-leak\"}} 50"),
    ] {
        assert!(text.lines().any(|x| x == line), "{line} in\n{text}");
    }
    let holder = format!(
        "cwlab_tcp_close_wait_holder_sockets{{{at},remote=\"{remote}\",pid=\"{}\",command=\"python3\",",
        c.pid
    );
    assert!(
        text.lines().any(|x| x.starts_with(&holder) && x.ends_with("} 50")),
        "{holder} in\n{text}"
    );
    if let Some(out) = promtool_check(&text) {
        assert_eq!(out.status.code(), Some(0), "promtool: {}", show(&out));
    }
}

#[test]
fn issue_19_a_client_holding_50_half_closed_connections_to_a_local_service_is_named() {
    if !can_isolate("watch-client-local") {
        return;
    }
    a_client_s_leak_is_named(&client_leak(50, false));
}

#[test]
fn issue_19_a_client_holding_50_half_closed_connections_to_another_host_is_named() {
    if !can_isolate("watch-client-remote") {
        return;
    }
    a_client_s_leak_is_named(&client_leak(50, true));
}

#[test]
fn issue_19_a_real_prometheus_fires_the_client_side_alert_for_a_leaking_pool() {
    if !can_isolate("watch-prometheus-client") || !prometheus_installed() {
        return;
    }
    let c = client_leak(50, true);
    client_settled(&c);
    let e = exporter_at(&c.ns.path, "http", &["--stuck", "1s"]);
    let dir = scratch("watch-prometheus-client");
    let prom = prometheus_over(
        &dir,
        &e.addr,
        "kind=\"pool-leak\"} > 0\n        for: 5m",
        "kind=\"pool-leak\"} > 0\n        for: 0s",
    );
    let alert = firing(&prom, "CloseWaitClientPoolLeak", Instant::now() + Duration::from_secs(60));
    assert_eq!(alert["labels"]["remote"], c.service.to_string(), "{alert}");
    assert_eq!(alert["labels"]["port"], "443", "{alert}");
    assert_eq!(alert["labels"]["netns"], c.ns.inode.to_string(), "{alert}");
    let value = alert["value"].as_str().and_then(|v| v.parse::<f64>().ok());
    assert_eq!(value, Some(50.0), "{alert}");
    let held = prom
        .get("/api/v1/query?query=cwlab_tcp_close_wait_holder_sockets%7Bside%3D%22client%22%7D");
    let r = &held["data"]["result"][0];
    assert_eq!(r["metric"]["pid"], c.pid.to_string(), "{held}");
    assert_eq!(r["metric"]["command"], "python3", "{held}");
    assert_eq!(r["value"][1], "50", "{held}");
}

#[test]
fn issue_13_all_namespaces_finds_a_thread_s_own_and_counts_it_exactly() {
    if !can_isolate("watch-all-netns") {
        return;
    }
    let l = leak(21);
    settled(&l);
    let out = watch(&["--all-netns", "--once", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let s: Snapshot = serde_json::from_slice(&out.stdout).unwrap();
    assert!(s.namespaces.len() >= 2, "the host's and the leak's at least");
    let ns = s.namespaces.iter().find(|n| n.inode == l.inode).expect("the leak's namespace");
    assert!(ns.label.starts_with(&l.inode.to_string()), "{}", ns.label);
    let p = ns.ports.iter().find(|p| p.port == l.port).unwrap();
    assert_eq!(p.server.get(&TcpState::CloseWait), Some(&21));
}

#[test]
fn issue_13_sockets_and_processes_coming_and_going_never_break_or_double_count_a_look() {
    if !can_isolate("watch-churn") {
        return;
    }
    let l = leak(30);
    settled(&l);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The processes the churn starts: each is a fork of this process, which holds copies of the
    // leak's sockets until its exec closes them, and a look may see them there.
    let started = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    // Connections that open and close in the leak's namespace, and processes that start and end.
    let churn = {
        let (stop, ns, started) = (stop.clone(), l.netns.clone(), started.clone());
        std::thread::spawn(move || {
            let f = std::fs::File::open(ns).unwrap();
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let extra = TcpListener::bind("127.0.0.1:0").unwrap();
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let c = TcpStream::connect(extra.local_addr().unwrap()).unwrap();
                let (s, _) = extra.accept().unwrap();
                drop((c, s));
                if n.is_multiple_of(20) {
                    let mut child = Command::new("true").spawn().unwrap();
                    started.lock().unwrap().insert(child.id());
                    let _ = child.wait();
                }
                n += 1;
            }
        })
    };
    let mut w = Command::new(env!("CARGO_BIN_EXE_cwlab"))
        .args(["watch", "--netns", l.netns.to_str().unwrap(), "--port", &l.port.to_string()])
        .args(["--json", "--interval", "20ms"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(w.stdout.take().unwrap()));
    for _ in 0..40 {
        let line = lines.next().expect("a look per interval").unwrap();
        let s: Snapshot = serde_json::from_str(&line).unwrap();
        let ns = &s.namespaces[0];
        assert_eq!(ns.error, None);
        let p = &ns.ports[0];
        // The leak's sockets, exactly, each held once by this process, whatever else came and
        // went; another holder only a process the churn started, caught before its exec.
        assert_eq!(p.server.get(&TcpState::CloseWait), Some(&30), "{p:?}");
        let me = std::process::id();
        let mine: u32 = p.holders.iter().filter(|h| h.pid == me).map(|h| h.sockets).sum();
        assert_eq!(mine, 30, "{p:?}");
        for h in p.holders.iter().filter(|h| h.pid != me) {
            // Its pid is noted once spawn() returns, just after the exec the look preceded.
            let deadline = Instant::now() + Duration::from_secs(5);
            while !started.lock().unwrap().contains(&h.pid) {
                assert!(Instant::now() < deadline, "a holder the churn did not start: {h:?}");
                std::thread::yield_now();
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    churn.join().unwrap();
    // SAFETY: kill(2) takes no memory; the watcher is our child, not yet reaped.
    unsafe { libc::kill(w.id() as i32, libc::SIGTERM) };
    assert_eq!(w.wait().unwrap().code(), Some(0), "SIGTERM ends a watch cleanly");
}

#[test]
fn issue_19_the_host_s_namespace_is_labelled_as_the_host_not_after_the_watcher() {
    // Read-only: the watcher's own namespace, narrowed to a port nothing here uses.
    let out = watch(&["--once", "--json", "--port", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let s: Snapshot = serde_json::from_slice(&out.stdout).unwrap();
    let ns = &s.namespaces[0];
    assert!(!ns.label.ends_with(" (cwlab)"), "never after the watcher: {}", ns.label);
    let own = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata("/proc/self/ns/net").unwrap());
    // Since Linux 6.18 the first network namespace has a fixed inode (NET_NS_INIT_INO).
    if own == 0xEFFF_FFF9 {
        assert_eq!(ns.label, format!("{own} (host)"));
    }
}

#[test]
fn issue_19_one_pool_s_closings_do_not_hide_another_s_leak_to_the_same_service() {
    if !can_isolate("watch-two-pools") {
        return;
    }
    let leaky = client_leak(20, false);
    let mut bounded = watched::Pool::start(&leaky.ns, leaky.service, 5, &leaky.listener);
    let ns = leaky.ns.path.to_str().unwrap();
    let mut w = Command::new(env!("CARGO_BIN_EXE_cwlab"))
        .args(["watch", "--netns", ns, "--json", "--interval", "100ms", "--stuck", "0s"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(w.stdout.take().unwrap()));
    let mut look = |want: &dyn Fn(&cwlab_model::watch::RemoteView) -> bool, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s: Snapshot = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
            let r = s.namespaces[0].ports.iter().flat_map(|p| &p.remotes).next().cloned();
            if let Some(r) = r.filter(|r| want(r)) {
                return r;
            }
            assert!(Instant::now() < deadline, "timeout while expecting {what}");
        }
    };
    look(&|r| r.close_wait == 25, "both pools");
    // The bounded pool's next use, twice: it closes its five each time.
    for round in 1..=2u32 {
        bounded.renew(&leaky.listener);
        let r = look(&|r| r.cleared == 5 * round && r.close_wait == 25, "the closings");
        let f = r.finding.as_ref().unwrap();
        assert_eq!(f.kind, FindingKind::PoolLeak, "{f:?}");
        assert_eq!(f.holders.iter().map(|h| h.pid).collect::<Vec<_>>(), [leaky.pid], "{f:?}");
        assert_eq!(f.sockets, 20);
        assert!(f.explanation.contains("none was closed in the"), "{f:?}");
    }
    // Without the leak, the bounded pool is read as what it is.
    let pid = bounded.pid;
    drop(leaky.pool); // the service's listener stays
    let r = look(&|r| r.close_wait == 5, "the leak gone");
    let f = r.finding.as_ref().unwrap();
    assert_eq!((f.kind, f.holders[0].pid), (FindingKind::PoolBounded, pid), "{f:?}");
    // SAFETY: kill(2) takes no memory; the watcher is our child, not yet reaped.
    unsafe { libc::kill(w.id() as i32, libc::SIGTERM) };
    assert_eq!(w.wait().unwrap().code(), Some(0));
}

/// A server in a namespace of its own under steady churn: clients connect, send a line and
/// close; each handler reads it and takes 300 ms of work, then closes (`leaks`: never).
/// Looks (`--stuck 1s`, every 100 ms) until one shows what `done` wants, to a deadline; how many
/// looks saw the server's CLOSE-WAIT, and the last look.
fn churn_watched(leaks: bool, done: &dyn Fn(&cwlab_model::watch::PortView, u32) -> bool) -> u32 {
    let ns = watched::Namespace::new();
    let listener = ns.run(|| TcpListener::bind("127.0.0.1:0"));
    let port = listener.local_addr().unwrap().port();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (stop2, held2) = (stop.clone(), held.clone());
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            let held = held2.clone();
            std::thread::spawn(move || {
                let mut line = [0u8; 64];
                let _ = s.read(&mut line);
                // The handler's work: the client has closed meanwhile, so its socket waits
                // in CLOSE-WAIT for it (a busy server, not a leak).
                // (Nothing is written back: a write to a closed peer brings its RST.)
                std::thread::sleep(Duration::from_millis(300));
                if leaks {
                    held.lock().unwrap().push(s);
                }
            });
        }
    });
    let path = ns.path.clone();
    std::thread::spawn(move || {
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            let c = cwlab_sampler::netns::in_namespace_at(&path, || {
                let mut c = TcpStream::connect(("127.0.0.1", port))?;
                c.write_all(b"GET\n")?;
                Ok(c)
            });
            drop(c); // the client's FIN, before the handler's answer
            std::thread::sleep(Duration::from_millis(20)); // the clients' pace
        }
    });
    let mut w = Command::new(env!("CARGO_BIN_EXE_cwlab"))
        .args(["watch", "--netns", ns.path.to_str().unwrap(), "--port", &port.to_string()])
        .args(["--json", "--interval", "100ms", "--stuck", "1s"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(w.stdout.take().unwrap()));
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = 0;
    loop {
        let s: Snapshot = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        let p = &s.namespaces[0].ports[0];
        if p.server.get(&TcpState::CloseWait).is_some_and(|n| *n > 0) {
            seen += 1;
        }
        if done(p, seen) {
            break;
        }
        assert!(Instant::now() < deadline, "timeout; the last look: {p:?}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    // SAFETY: kill(2) takes no memory; the watcher is our child, not yet reaped.
    unsafe { libc::kill(w.id() as i32, libc::SIGTERM) };
    assert_eq!(w.wait().unwrap().code(), Some(0));
    seen
}

#[test]
fn issue_19_a_clean_busy_server_gets_no_finding_and_its_leaking_twin_does() {
    if !can_isolate("watch-churn") {
        return;
    }
    // Clean: its handlers close every socket within 300 ms. Twenty looks with CLOSE-WAIT on
    // it (each younger than --stuck), and never a finding.
    let seen = churn_watched(false, &|p, seen| {
        assert_eq!(p.finding, None, "a clean server read as stuck: {p:?}");
        seen >= 20
    });
    assert!(seen >= 20);
    // The same, its handlers never closing: once the oldest has waited a second, held open.
    churn_watched(true, &|p, _| {
        p.finding.as_ref().is_some_and(|f| {
            assert_eq!(f.kind, FindingKind::HeldOpen, "{f:?}");
            assert_eq!(f.holders[0].pid, std::process::id(), "{f:?}");
            true
        })
    });
}
