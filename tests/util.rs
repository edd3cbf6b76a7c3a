//! A small harness for driving the built `cwlab` binary, after ripgrep's `TestCommand`, and the
//! truth table every scenario is checked against. Each test binary uses part of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use cwlab_model::report::{Phase, Report, Role, Verdict};
use cwlab_model::TcpState;
use serde::Deserialize;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository's root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// A fresh scratch folder for one test.
pub fn scratch(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cwlab-e2e-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// True when this machine lets us make network namespaces; under CI=true it must.
pub fn can_isolate(test: &str) -> bool {
    // SAFETY: geteuid(2) takes nothing and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "{test}: CI runs as root");
    eprintln!("skipping {test}: needs root for private network namespaces");
    false
}

/// `cwlab ARGS` from the repository's root.
pub fn cwlab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cwlab")).args(args).current_dir(root()).output().unwrap()
}

/// Every process whose environment carries the mark of the `cwlab` whose pid is `runner`
/// (`CWLAB_RUN=PID-…`): what a run or a check started, found by the mark and not by name.
pub fn marked(runner: u32) -> Vec<u32> {
    let mark = format!("CWLAB_RUN={runner}-");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
            let env = std::fs::read(e.path().join("environ")).ok()?;
            env.split(|b| *b == 0).any(|v| v.starts_with(mark.as_bytes())).then_some(pid)
        })
        .collect()
}

/// The output's streams, for assertion messages.
pub fn show(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Asserts the exit code, showing both streams when it differs.
#[macro_export]
macro_rules! assert_exit {
    ($out:expr, $code:expr) => {
        assert_eq!($out.status.code(), Some($code), "{}", $crate::util::show(&$out))
    };
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expected {
    server: BTreeMap<TcpState, u32>,
    client: BTreeMap<TcpState, u32>,
    acceptor_fds_grew: i64,
    #[serde(default)]
    holders: BTreeMap<String, usize>,
    hung: Option<u32>,
    unaccepted: Option<u32>,
    accepted: Option<u64>,
}

pub fn expected() -> BTreeMap<String, Expected> {
    let text = std::fs::read_to_string(root().join("tests/expected.toml")).unwrap();
    toml::from_str(&text).unwrap()
}

pub fn read_report(path: &Path) -> Report {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs a scenario file in a private namespace; returns the output and the report.
pub fn run(file: &Path, test: &str) -> (std::process::Output, Report) {
    let dir = scratch(test);
    let report = dir.join("report.json");
    let out = cwlab(&[
        "run",
        file.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
        "--isolation",
        "netns",
    ]);
    let r = read_report(&report);
    (out, r)
}

/// Checks a finished run of scenario `name` against its row of the truth table.
pub fn check_truth_of(name: &str, out: &Output, r: &Report) {
    let want = &expected()[name];
    crate::assert_exit!(out, 0);
    assert!(
        out.stderr.is_empty(),
        "{name}: nothing on stderr when it is not a terminal: {}",
        show(out)
    );
    assert_eq!(r.verdict, Verdict::Pass);
    assert_eq!(r.scenario.name, name);
    assert_eq!(r.isolation, cwlab_model::report::Isolation::Netns);
    // Every client completed, hung or was never accepted: none failed otherwise.
    let o = &r.client_outcome;
    assert_eq!(o.failed, o.unaccepted, "{name}: {:?}", o.first_error);
    assert_eq!(o.completed + o.hung + o.failed, r.clients, "{name}: every client counted once");
    assert_eq!(r.final_counts.server, want.server, "{name}: server counts at the end");
    assert_eq!(r.final_counts.client, want.client, "{name}: client counts at the end");
    // The acceptor starts from a clean table: stdin, stdout, stderr and the listener. (A run that
    // mistook the PID-namespace supervisor for the acceptor saw 3 here: issue 4's soak found it.)
    assert_eq!(r.acceptor.fds_baseline, Some(4), "{name}: the acceptor's first descriptors");
    let grew = i64::from(r.acceptor.fds_end.unwrap()) - i64::from(r.acceptor.fds_baseline.unwrap());
    assert_eq!(grew, want.acceptor_fds_grew, "{name}: acceptor fds");
    let phases: Vec<Phase> = r.phases.iter().map(|m| m.phase).collect();
    assert_eq!(phases, [Phase::Listen, Phase::Connect, Phase::Close, Phase::Hold, Phase::End]);
    assert!(r.samples.len() >= 10, "{name}: {} samples", r.samples.len());

    // Who holds what, as distinct sockets per "SIDE STATE ROLE".
    let mut held: BTreeMap<String, BTreeSet<(u64, &str, &str)>> = BTreeMap::new();
    for h in &r.holders {
        let key = format!("{} {} {}", h.side, h.state, h.role);
        held.entry(key).or_default().insert((h.inode, h.local.as_str(), h.remote.as_str()));
    }
    let held: BTreeMap<String, usize> = held
        .into_iter()
        .map(|(k, v)| (k, v.len()))
        .filter(|(k, _)| !k.ends_with(" handler") || want.holders.contains_key(k))
        .collect();
    assert_eq!(held, want.holders, "{name}: holders");
    let acceptor_rows = r.holders.iter().filter(|h| h.role == Role::Acceptor);
    assert!(acceptor_rows.clone().all(|h| h.pid == Some(r.acceptor.pid)), "{name}");
    let fds: BTreeSet<i32> = acceptor_rows.clone().map(|h| h.fd.unwrap()).collect();
    assert_eq!(fds.len(), acceptor_rows.count(), "{name}: one acceptor fd per socket");
    if let Some(hung) = want.hung {
        assert_eq!(r.client_outcome.hung, hung, "{name}: hung clients");
    }
    if let Some(n) = want.unaccepted {
        assert_eq!(r.client_outcome.unaccepted, n, "{name}: clients never accepted");
    }
    if let Some(accepted) = want.accepted {
        assert_eq!(r.server.accepted, accepted, "{name}: accepted");
    }
    pictures_agree(name, r);
}

/// One scenario at a time: each test's run has both cores (the timing windows of the scenarios
/// are generous, but `scale` forks 10,000 handlers).
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The pictures of a run tell its story from the report: a ladder for every way the connections
/// went, with steps from both witnesses; the state machine's arrows carry exactly the report's
/// transition counts, its states the counts at the end.
pub fn pictures_agree(name: &str, r: &Report) {
    use cwlab_model::ladder::Ladder;
    use cwlab_model::machine::{Machine, STATES};
    use cwlab_model::report::Side;
    if !(r.transitions.available && r.packets.available) {
        return;
    }
    let ladders = Ladder::of(r, None).unwrap_or_else(|e| panic!("{name}: {e}"));
    let ways: u64 = ladders.iter().map(|l| l.like_it).sum();
    let (lost, dropped) = (r.transitions.lost, r.packets.dropped);
    if lost == 0 && dropped == 0 {
        assert_eq!(
            ways, r.packets.connections,
            "{name}: every connection went one of the ways drawn"
        );
    } else {
        // A witness that lost some of a connection makes a way of its own of what is left (on a
        // starved CI machine, `scale` once had more than the report keeps).
        assert!(
            ways <= r.packets.connections,
            "{name}: {ways} ways, lost {lost}, dropped {dropped}"
        );
    }
    for l in &ladders {
        assert!(l.rows.iter().any(|row| row.arrow.is_some()), "{name}: segments in the ladder");
    }
    let m = Machine::of(r);
    use cwlab_model::TcpState::{Close, Closing, FinWait1, FinWait2};
    for c in
        r.transitions.counts.iter().filter(|c| STATES.contains(&c.from) && STATES.contains(&c.to))
    {
        // A closing socket handed to a timewait socket is an arrow into a timewait box.
        if matches!((c.from, c.to), (FinWait1 | FinWait2 | Closing, Close)) {
            continue;
        }
        let e = m.edge(c.from, c.to).unwrap_or_else(|| panic!("{name}: {c:?} is drawn"));
        let n = if c.side == Side::Server { e.server } else { e.client };
        assert_eq!(n, c.connections, "{name}: {} {} -> {}", c.side, c.from, c.to);
    }
    // Issue 21: the boxes of a state (the full sockets' and the timewait sockets') hold what the
    // table shows, and the counts add up: each box's arrows in are its sockets and its arrows out.
    for side in Side::BOTH {
        for n in m.nodes.iter().filter(|n| n.place != cwlab_model::machine::Place::Full(Close)) {
            let shown: u32 =
                m.nodes.iter().filter(|o| o.state() == n.state()).map(|o| o.on(side).0).sum();
            assert_eq!(shown, r.final_counts.get(side, n.state()), "{name}: {side} {}", n.place);
        }
        if r.transitions.lost == 0 {
            assert_eq!(m.imbalance(side), [], "{name}: {side}");
        }
    }
}

/// `n` server sockets in CLOSE-WAIT, accepted by this process in a network namespace of a thread
/// of its own (their clients closed): the namespace's file, the listening port, the accepted
/// sockets (whoever keeps them holds the leak), and a sender whose drop lets the thread, and so
/// the namespace, go.
pub fn close_wait_leak(
    n: usize,
) -> (PathBuf, u16, Vec<std::os::fd::OwnedFd>, std::sync::mpsc::Sender<()>) {
    use std::net::{TcpListener, TcpStream};
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        cwlab_sampler::netns::enter_private().unwrap();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let clients: Vec<TcpStream> =
            (0..n).map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
        let accepted: Vec<std::os::fd::OwnedFd> =
            (0..n).map(|_| l.accept().unwrap().0.into()).collect();
        drop(clients);
        // SAFETY: gettid(2) takes nothing and cannot fail.
        let tid = unsafe { libc::gettid() };
        tx.send((tid, port, accepted)).unwrap();
        let _ = stopped.recv();
        drop(l);
    });
    let (tid, port, accepted) = rx.recv().unwrap();
    let ns = PathBuf::from(format!("/proc/{}/task/{tid}/ns/net", std::process::id()));
    (ns, port, accepted, stop)
}
