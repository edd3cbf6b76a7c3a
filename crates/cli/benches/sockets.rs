//! `make bench`: the socket table at 10,000 CLOSE-WAIT sockets on one port, among decoys.
//!
//! Times `cwlab sockets --port P --state close-wait --count` as a whole process against
//! `ss -Htan state close-wait '( sport = :P )' | wc -l`, and the crate's own paths in-process:
//! the sock_diag dump, the /proc/net/tcp parse, the /proc holder walk. Runs in a private network
//! namespace (root). Figures and how to read them: docs/PERFORMANCE.md.

use std::collections::HashSet;
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use cwlab_sampler::{holders, netns, Backend, PortSide, Ports, Query, States, Table, TcpState};

const STUCK: usize = 10_000;
const DECOY_OPEN: usize = 2_000;
const DECOY_STUCK: usize = 1_000;
const RUNS: usize = 21;

/// The commands timed as whole processes: (label, argv). cwlab is spawned itself; the ss
/// pipeline through `sh -c`, as a shell runs it.
const COMMANDS: [(&str, &[&str]); 3] = [
    ("ours", &["{cwlab}", "sockets", "--port", "{port}", "--state", "close-wait", "--count"]),
    ("ss", &["sh", "-c", "ss -Htan state close-wait '( sport = :{port} )' | wc -l"]),
    ("empty", &["{cwlab}", "sockets", "--port", "1", "--state", "close-wait", "--count"]),
];

fn main() {
    if let Some(port) = std::env::var_os("CWLAB_BENCH_TIMER") {
        timer(port.to_str().and_then(|p| p.parse().ok()).expect("CWLAB_BENCH_TIMER=PORT"));
        return;
    }
    if let Err(e) = netns::enter_private() {
        eprintln!("bench: needs root for a private network namespace: {e}");
        std::process::exit(2);
    }
    raise_nofile(65_536);
    let (port, _keep) = population();

    // The commands are timed from a lean child: this process holds 26,000 sockets, and every
    // process it spawns starts with a copy of that descriptor table (closed again at exec), which
    // adds the same few milliseconds to both sides. The child has descriptors 0-2 only, like a
    // shell at a terminal. The fat figures are printed too, for comparison.
    let out = Command::new(std::env::current_exe().unwrap())
        .env("CWLAB_BENCH_TIMER", port.to_string())
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "the timer child failed");
    let lean = parse_timings(&String::from_utf8(out.stdout).unwrap());
    let fat = time_commands(port);
    for t in [&lean, &fat] {
        assert_eq!(t[0].1, STUCK.to_string(), "cwlab's count");
        assert_eq!(t[1].1, STUCK.to_string(), "ss's count");
        assert_eq!(t[2].1, "0", "cwlab's count on an empty port");
    }
    let (ours, theirs, empty) = (lean[0].0, lean[1].0, lean[2].0);

    let q = Query {
        states: States::of(&[TcpState::CloseWait]),
        port: Some(port),
        side: PortSide::Any,
        peer: None,
        info: false,
    };
    let mut diag = Table::open(Backend::SockDiag).unwrap();
    // How `--count` splits the dump between its two threads.
    let mid = cwlab_sampler::ephemeral_middle();
    let low = diag.count(&Query { peer: Some(Ports { low: 0, high: mid }), ..q }).unwrap();
    let dump = time(|| assert_eq!(diag.count(&q).unwrap(), STUCK));
    let mut proc = Table::open(Backend::ProcNet).unwrap();
    let parse = time(|| assert_eq!(proc.count(&q).unwrap(), STUCK));
    let inodes: HashSet<u64> = diag.list(&q).unwrap().iter().map(|r| r.inode).collect();
    let walk = time(|| assert_eq!(holders::find(&inodes).by_inode.len(), STUCK));

    println!(
        "socket table, {STUCK} CLOSE-WAIT on one port among {} decoys; medians of {RUNS}",
        2 * DECOY_OPEN + 2 * DECOY_STUCK + STUCK
    );
    println!("  whole processes, spawned by a process with descriptors 0-2 (as from a shell):");
    println!("  cwlab sockets --port P --state close-wait --count   {:>8.2} ms", ms(ours));
    println!("  ss -Htan state close-wait '( sport = :P )' | wc -l   {:>8.2} ms", ms(theirs));
    println!("  cwlab sockets on a port with no socket (fixed cost) {:>8.2} ms", ms(empty));
    println!(
        "  ratio cwlab / ss                                     {:>8.2}   (target <= 0.30)",
        ms(ours) / ms(theirs)
    );
    println!("  the same, spawned by the process holding the 26,000 sockets:");
    println!("  cwlab sockets --port P --state close-wait --count   {:>8.2} ms", ms(fat[0].0));
    println!("  ss -Htan state close-wait '( sport = :P )' | wc -l   {:>8.2} ms", ms(fat[1].0));
    println!(
        "  ratio cwlab / ss                                     {:>8.2}",
        ms(fat[0].0) / ms(fat[1].0)
    );
    println!("  the split: {low} + {} (peer port <= {mid} and above)", STUCK - low);
    println!("  in-process sock_diag dump (kernel-filtered)          {:>8.2} ms", ms(dump));
    println!("  in-process /proc/net/tcp parse                       {:>8.2} ms", ms(parse));
    if std::env::var_os("CWLAB_BENCH_HOLD").is_some() {
        eprintln!(
            "holding: nsenter -n -t {} ... (port {port}); press enter to end",
            std::process::id()
        );
        let _ = std::io::stdin().read_line(&mut String::new());
    }
    println!("  in-process /proc/*/fd holder walk                    {:>8.2} ms", ms(walk));
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time(mut f: impl FnMut()) -> Duration {
    f();
    median(
        (0..RUNS)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect(),
    )
}

/// Timer mode: times `COMMANDS` and prints one line per command, `label median_ns output`.
fn timer(port: u16) {
    for (label, (median, out)) in COMMANDS.iter().map(|c| c.0).zip(time_commands(port)) {
        println!("{label} {} {out}", median.as_nanos());
    }
}

fn parse_timings(text: &str) -> Vec<(Duration, String)> {
    let rows: Vec<(Duration, String)> = text
        .lines()
        .map(|l| {
            let mut w = l.split_whitespace().skip(1);
            let ns = w.next().and_then(|n| n.parse().ok()).expect("median in ns");
            (Duration::from_nanos(ns), w.next().unwrap_or_default().to_string())
        })
        .collect();
    assert_eq!(rows.len(), COMMANDS.len(), "the timer child's lines: {text}");
    rows
}

/// Each command's output once, then the median of `RUNS` timed runs of each, the commands taking
/// turns so that a slow moment of the machine falls on all of them alike.
fn time_commands(port: u16) -> Vec<(Duration, String)> {
    let cwlab = env!("CARGO_BIN_EXE_cwlab");
    let port = port.to_string();
    let argvs: Vec<Vec<String>> = COMMANDS
        .iter()
        .map(|c| c.1.iter().map(|a| a.replace("{cwlab}", cwlab).replace("{port}", &port)).collect())
        .collect();
    let run = |argv: &[String]| Command::new(&argv[0]).args(&argv[1..]).output().unwrap().stdout;
    let outputs: Vec<String> =
        argvs.iter().map(|a| String::from_utf8(run(a)).unwrap().trim().to_string()).collect();
    let mut times = vec![Vec::with_capacity(RUNS); argvs.len()];
    for _ in 0..RUNS {
        for (argv, t) in argvs.iter().zip(&mut times) {
            let start = Instant::now();
            run(argv);
            t.push(start.elapsed());
        }
    }
    times.into_iter().map(median).zip(outputs).collect()
}

/// Raises the descriptor limit to `n`, or as far as the hard limit where raising that is refused.
fn raise_nofile(n: u64) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with valid structs.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        let want = libc::rlimit { rlim_cur: n, rlim_max: n.max(lim.rlim_max) };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &want) != 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// 10,000 CLOSE-WAIT (and their 10,000 FIN-WAIT-2 peers) on one port; decoys on another.
fn population() -> (u16, Vec<TcpStream>) {
    let main = TcpListener::bind("127.0.0.1:0").unwrap();
    let decoy = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut keep = Vec::new();
    let mut pairs = |l: &TcpListener, n: usize, close_client: bool| {
        let addr = l.local_addr().unwrap();
        for _ in 0..n {
            let c = TcpStream::connect(addr).unwrap();
            let (s, _) = l.accept().unwrap();
            keep.push(s);
            if !close_client {
                keep.push(c);
            }
        }
    };
    pairs(&main, STUCK, true);
    pairs(&decoy, DECOY_OPEN, false);
    pairs(&decoy, DECOY_STUCK, true);
    let port = main.local_addr().unwrap().port();
    let mut t = Table::open(Backend::SockDiag).unwrap();
    let settling = Query { states: States::of(&[TcpState::FinWait1]), ..Query::default() };
    let deadline = Instant::now() + Duration::from_secs(10);
    while t.count(&settling).unwrap() > 0 {
        assert!(Instant::now() < deadline, "timeout while waiting for the FINs' ACKs");
        std::thread::yield_now();
    }
    std::mem::forget(main);
    std::mem::forget(decoy);
    (port, keep)
}
