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

use cwlab_sampler::{holders, netns, Backend, PortSide, Query, States, Table, TcpState};

const STUCK: usize = 10_000;
const DECOY_OPEN: usize = 2_000;
const DECOY_STUCK: usize = 1_000;
const RUNS: usize = 21;

fn main() {
    if let Err(e) = netns::enter_private() {
        eprintln!("bench: needs root for a private network namespace: {e}");
        std::process::exit(2);
    }
    raise_nofile(65_536);
    let (port, _keep) = population();
    let cwlab = env!("CARGO_BIN_EXE_cwlab");
    let p = port.to_string();

    let ours = time_command(|| {
        Command::new(cwlab)
            .args(["sockets", "--port", &p, "--state", "close-wait", "--count"])
            .output()
            .unwrap()
            .stdout
    });
    let empty = time_command(|| {
        Command::new(cwlab)
            .args(["sockets", "--port", "1", "--state", "close-wait", "--count"])
            .output()
            .unwrap()
            .stdout
    });
    let ss_filter = format!("ss -Htan state close-wait '( sport = :{port} )' | wc -l");
    let theirs =
        time_command(|| Command::new("sh").args(["-c", &ss_filter]).output().unwrap().stdout);
    assert_eq!(ours.1.trim(), STUCK.to_string(), "cwlab's count");
    assert_eq!(theirs.1.trim(), STUCK.to_string(), "ss's count");

    let q = Query {
        states: States::of(&[TcpState::CloseWait]),
        port: Some(port),
        side: PortSide::Any,
        peer: None,
    };
    let mut diag = Table::open(Backend::SockDiag).unwrap();
    let dump = time(|| assert_eq!(diag.count(&q).unwrap(), STUCK));
    let mut proc = Table::open(Backend::ProcNet).unwrap();
    let parse = time(|| assert_eq!(proc.count(&q).unwrap(), STUCK));
    let inodes: HashSet<u64> = diag.list(&q).unwrap().iter().map(|r| r.inode).collect();
    let walk = time(|| assert_eq!(holders::find(&inodes).by_inode.len(), STUCK));

    println!(
        "socket table, {STUCK} CLOSE-WAIT on one port among {} decoys; medians of {RUNS}",
        2 * DECOY_OPEN + 2 * DECOY_STUCK + STUCK
    );
    println!("  cwlab sockets --port P --state close-wait --count   {:>8.2} ms", ms(ours.0));
    println!("  ss -Htan state close-wait '( sport = :P )' | wc -l   {:>8.2} ms", ms(theirs.0));
    println!("  cwlab sockets on a port with no socket (fixed cost) {:>8.2} ms", ms(empty.0));
    println!(
        "  ratio cwlab / ss                                     {:>8.2}   (target <= 0.30)",
        ms(ours.0) / ms(theirs.0)
    );
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

/// The command's output once, then the median of `RUNS` timed runs.
fn time_command(mut f: impl FnMut() -> Vec<u8>) -> (Duration, String) {
    let out = String::from_utf8(f()).unwrap();
    (
        time(|| {
            f();
        }),
        out,
    )
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
