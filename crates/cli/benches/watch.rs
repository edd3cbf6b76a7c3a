//! `make bench`, part two: `cwlab watch` as an exporter against node_exporter with only its
//! tcpstat collector (Debian's `prometheus-node-exporter`), the cost of watching at 1 s, and who
//! holds the sockets (`cwlab sockets --holders`) against `ss -p`, at 10,000 and 100,000
//! CLOSE-WAIT sockets (with their FIN-WAIT-2 peers and 2,000 open decoys). A process may hold at
//! most RLIMIT_NOFILE descriptors, 20,000 at most on this machine, so the sockets are held by
//! holder processes of 10,000 each, one listening port each, their clients each from an address
//! of their own (127.0.0.2 and up). Runs in a private network namespace (root). Figures:
//! docs/PERFORMANCE.md.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cwlab_sampler::{netns, Backend, Query, States, Table, TcpState};

const RUNS: usize = 11;

/// CLOSE-WAIT sockets per holder process.
const PER_HOLDER: usize = 10_000;

fn main() {
    if let Ok(j) = std::env::var("CWLAB_BENCH_HOLDER") {
        return holder(j.parse().unwrap());
    }
    if let Err(e) = netns::enter_private() {
        eprintln!("bench: needs root for a private network namespace: {e}");
        std::process::exit(2);
    }
    let sizes: Vec<usize> = std::env::var("CWLAB_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').map(|n| n.parse().unwrap()).collect())
        .unwrap_or_else(|| vec![10_000, 100_000]);
    for n in sizes {
        let mut holders: Vec<Child> = (0..n.div_ceil(PER_HOLDER))
            .map(|j| {
                Command::new(std::env::current_exe().unwrap())
                    .env("CWLAB_BENCH_HOLDER", j.to_string())
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let ports: Vec<u16> = holders
            .iter_mut()
            .map(|h| {
                let mut line = String::new();
                let mut b = [0u8; 1];
                let out = h.stdout.as_mut().unwrap();
                while out.read(&mut b).unwrap_or(0) == 1 && b[0] != b'\n' {
                    line.push(b[0] as char);
                }
                line.trim().parse().expect("a holder's port")
            })
            .collect();
        settle(&[TcpState::FinWait1]);
        let decoys = decoys();
        if std::env::var_os("CWLAB_BENCH_HOLD").is_some() {
            // For timing by hand: nsenter -n -t PID cwlab watch --once --port P …
            let ports: Vec<String> = ports.iter().map(|p| format!("--port {p}")).collect();
            println!(
                "bench: holding; nsenter -n -t {} … {}; Enter ends",
                std::process::id(),
                ports.join(" ")
            );
            let _ = std::io::stdin().read(&mut [0u8; 1]);
        }
        timer(&ports, n);
        drop(decoys);
        for mut h in holders {
            h.stdin.take();
            let _ = h.wait();
        }
        settle(&[TcpState::CloseWait, TcpState::LastAck, TcpState::FinWait1]);
    }
}

/// A holder: PER_HOLDER CLOSE-WAIT sockets on a port of its own, its clients from 127.0.0.(2+j)
/// and closed; prints the port, then holds them until stdin closes.
fn holder(j: usize) {
    raise_nofile(PER_HOLDER as u64 + 100);
    let main = TcpListener::bind("127.0.0.1:0").unwrap();
    let to = main.local_addr().unwrap();
    let src: SocketAddr = format!("127.0.0.{}:0", 2 + j).parse().unwrap();
    let mut keep = Vec::with_capacity(PER_HOLDER);
    for _ in 0..PER_HOLDER {
        let c = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        c.bind(&src.into()).unwrap();
        c.connect(&to.into()).unwrap();
        keep.push(main.accept().unwrap().0);
    }
    println!("{}", to.port());
    let _ = std::io::stdin().read(&mut [0u8; 1]);
}

/// 1,000 open pairs on a port of their own, held here.
fn decoys() -> Vec<TcpStream> {
    let decoy = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut keep = Vec::new();
    for _ in 0..1_000 {
        keep.push(TcpStream::connect(decoy.local_addr().unwrap()).unwrap());
        keep.push(decoy.accept().unwrap().0);
    }
    keep
}

fn timer(ports: &[u16], n: usize) {
    let cwlab = env!("CARGO_BIN_EXE_cwlab");
    let mut args: Vec<String> = vec!["watch".into(), "--listen".into(), "127.0.0.1:0".into()];
    for p in ports {
        args.extend(["--port".to_string(), p.to_string()]);
    }
    let mut ours = spawn(Command::new(cwlab).args(&args));
    let ours_addr = first_line(&mut ours)
        .strip_prefix("cwlab watch: serving http://")
        .and_then(|r| r.strip_suffix("/metrics").map(str::to_string))
        .expect("the exporter's address");
    let ne_addr = free_addr();
    let node = Command::new("prometheus-node-exporter")
        .args(["--collector.disable-defaults", "--collector.tcpstat"])
        .arg(format!("--web.listen-address={ne_addr}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let mut node = match node {
        Ok(c) => Some(c),
        Err(_) => {
            eprintln!("bench: prometheus-node-exporter is not installed: its column stays empty");
            None
        }
    };
    let ours_body = scrape(&ours_addr);
    let counted: usize = ours_body
        .lines()
        .filter(|l| {
            l.starts_with("cwlab_tcp_sockets{")
                && l.contains("side=\"server\",state=\"close_wait\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<usize>().ok())
        .sum();
    assert_eq!(counted, n, "cwlab's scrape counts every CLOSE-WAIT");
    let mut t_ours = Vec::new();
    let mut t_node = Vec::new();
    if node.is_some() {
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(&ne_addr).is_err() {
            assert!(Instant::now() < deadline, "node_exporter did not listen");
            std::thread::yield_now();
        }
        let b = scrape(&ne_addr);
        assert!(b.contains("node_tcp_connection_states{state=\"close_wait\"}"), "{b}");
    }
    for _ in 0..RUNS {
        t_ours.push(timed(|| scrape(&ours_addr)));
        if node.is_some() {
            t_node.push(timed(|| scrape(&ne_addr)));
        }
    }
    // Every CLOSE-WAIT of the namespace is a held one: no port filter on either side. The two
    // commands take turns, so that the machine's drift weighs on both alike.
    let (holders_ours, holders_ss) = turns(
        &[cwlab, "sockets", "--state", "close-wait", "--holders"],
        &["sh", "-c", "ss -Htanp state close-wait > /dev/null"],
    );
    let (count_ours, count_ss) = turns(
        &[cwlab, "sockets", "--state", "close-wait", "--count"],
        &["sh", "-c", "ss -Htan state close-wait | wc -l"],
    );
    let cpu = watching_cost(cwlab, ports);
    let (ours_ms, node_ms) = (ms(median(t_ours.into_iter())), t_node.is_empty().then_some(0.0));
    let node_ms = node_ms.map_or_else(|| ms(median(t_node.into_iter())), |_| f64::NAN);
    println!(
        "cwlab watch at {n} CLOSE-WAIT held by {} processes on as many ports (+{n} FIN-WAIT-2, 2,000 decoys); scrapes: medians of {RUNS}, commands: of 21 in turns",
        ports.len()
    );
    println!("  one scrape of cwlab watch --listen (ports, ages, holders)   {ours_ms:>9.2} ms   (target < 100 ms)");
    println!("  one scrape of node_exporter, tcpstat only                   {node_ms:>9.2} ms");
    println!(
        "  ratio cwlab / node_exporter                                 {:>9.2}    (target <= 0.50)",
        ours_ms / node_ms
    );
    println!("  watching at 1 s, CPU over 10 s                              {cpu:>8.1} %    of a core (target < 5 %)");
    println!(
        "  cwlab sockets --state close-wait --holders                  {:>9.2} ms",
        ms(holders_ours)
    );
    println!(
        "  ss -Htanp state close-wait                                  {:>9.2} ms",
        ms(holders_ss)
    );
    println!(
        "  ratio cwlab / ss -p                                         {:>9.2}    (target <= 0.25)",
        ms(holders_ours) / ms(holders_ss)
    );
    println!("  cwlab sockets --state close-wait --count / ss ... | wc -l   {:>9.2}    ({:.2} / {:.2} ms; target <= 0.30)", ms(count_ours) / ms(count_ss), ms(count_ours), ms(count_ss));
    let _ = ours.kill();
    let _ = ours.wait();
    if let Some(c) = node.as_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// CPU time (user + system) of `cwlab watch --interval 1s` over 10 s, as a share of one core.
fn watching_cost(cwlab: &str, ports: &[u16]) -> f64 {
    let mut c = Command::new(cwlab)
        .args(["watch", "--interval", "1s"])
        .args(ports.iter().flat_map(|p| ["--port".to_string(), p.to_string()]))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The first look is made at start; measure from its line on, over ten intervals.
    let mut out = c.stdout.take().unwrap();
    let mut b = [0u8; 1];
    while out.read(&mut b).unwrap_or(0) == 1 && b[0] != b'\n' {}
    let ticks = |pid: u32| -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let f: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
        (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
    };
    let (t0, c0) = (Instant::now(), ticks(c.id()));
    let mut lines = 0;
    while lines < 10 {
        if out.read(&mut b).unwrap_or(0) == 1 && b[0] == b'\n' {
            lines += 1;
        }
    }
    let share = (ticks(c.id()) - c0) / t0.elapsed().as_secs_f64() * 100.0;
    let _ = c.kill();
    let _ = c.wait();
    share
}

fn spawn(c: &mut Command) -> Child {
    c.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap()
}

fn first_line(c: &mut Child) -> String {
    let mut err = c.stderr.take().unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while err.read(&mut b).unwrap_or(0) == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    String::from_utf8(line).unwrap()
}

fn free_addr() -> String {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string()
}

fn scrape(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(
        out.starts_with("HTTP/1.") && out.contains(" 200 OK"),
        "{}",
        &out[..out.len().min(200)]
    );
    out
}

fn run(argv: &[&str]) {
    let o = Command::new(argv[0]).args(&argv[1..]).stdout(Stdio::null()).output().unwrap();
    assert!(o.status.success(), "{argv:?}");
}

/// The medians of 21 runs of each of two commands, run in turn.
fn turns(ours: &[&str], theirs: &[&str]) -> (Duration, Duration) {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..21 {
        a.push(timed(|| run(ours)));
        b.push(timed(|| run(theirs)));
    }
    (median(a.into_iter()), median(b.into_iter()))
}

fn timed<T>(f: impl FnOnce() -> T) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

fn median(v: impl Iterator<Item = Duration>) -> Duration {
    let mut v: Vec<Duration> = v.collect();
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn raise_nofile(n: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, n.min(hard), hard).expect("raise RLIMIT_NOFILE");
}

/// Waits, to a deadline, until no socket is in these states.
fn settle(states: &[TcpState]) {
    let mut t = Table::open(Backend::SockDiag).unwrap();
    let q = Query { states: States::of(states), ..Query::default() };
    let deadline = Instant::now() + Duration::from_secs(120);
    while t.count(&q).unwrap() > 0 {
        assert!(Instant::now() < deadline, "timeout while waiting for {states:?} to settle");
        std::thread::yield_now();
    }
}
