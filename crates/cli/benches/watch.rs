//! `make bench`, part two: `cwlab watch` as an exporter against node_exporter with only its
//! tcpstat collector (Debian's `prometheus-node-exporter`), the cost of watching at 1 s, who
//! holds the sockets (`cwlab sockets --holders`) against `ss -p`, and what the stream's
//! tracepoint program costs a host that opens and closes connections.
//!
//! The population, at 10,000 and 100,000 CLOSE-WAIT sockets (`CWLAB_BENCH_SIZES=1000000` by
//! hand): N server sockets in CLOSE-WAIT on one service port of the bench's private network
//! namespace, their clients in a namespace of their own joined by a veth pair, as on a real
//! server host (the clients' orphans and timewait sockets count against their namespace's
//! limits, not the server's; `tcp_max_tw_buckets` is raised there so that every peer stays in
//! FIN-WAIT-2). Each client binds an address and port of its own (24 addresses), so no 4-tuple
//! is ever used twice. A process may hold at most RLIMIT_NOFILE descriptors, 20,000 here, so the
//! sockets are held by holder processes of at most 19,990 each, all accepting from one listener.
//! 2,000 open decoys beside them. Every process the bench starts is killed when it ends,
//! whatever the way: a guard's Drop (a panic unwinds through it) and PR_SET_PDEATHSIG (a bench
//! killed outright). Figures: docs/PERFORMANCE.md.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cwlab_sampler::{netns, Backend, PortSide, Query, States, Table, TcpState};

const RUNS: usize = 11;

/// CLOSE-WAIT sockets per holder process: RLIMIT_NOFILE's hard limit (20,000 here) less its
/// standard streams, the listener and some room.
const PER_HOLDER: usize = 19_990;

/// The server's address on the veth pair, and the first of the clients' (10.201.1.0 and up).
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 1);
const CLIENTS: u32 = 24;
const SERVER_IFACE: &str = "cwbench-s";
const CLIENT_IFACE: &str = "cwbench-c";

/// Where the listener is in a holder.
const LISTENER_FD: i32 = 3;

fn main() {
    if let Ok(q) = std::env::var("CWLAB_BENCH_HOLDER") {
        return holder(q.parse().unwrap());
    }
    if let Ok(n) = std::env::var("CWLAB_BENCH_CLIENT") {
        return client(n.parse().unwrap());
    }
    let sizes: Vec<usize> = std::env::var("CWLAB_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter(|n| !n.is_empty()).map(|n| n.parse().unwrap()).collect())
        .unwrap_or_else(|| vec![10_000, 100_000]);
    // The host's setting, from the host's namespace: a private one has no tcp_mem of its own.
    let _mem = TcpMem::at_least(sizes.iter().copied().max().unwrap_or(0));
    if let Err(e) = netns::enter_private() {
        eprintln!("bench: needs root for a private network namespace: {e}");
        std::process::exit(2);
    }
    sysctl("net/core/somaxconn", "65535");
    for n in sizes {
        let mut fleet = Fleet::default();
        let port = populate(n, &mut fleet);
        let decoys = decoys();
        if std::env::var_os("CWLAB_BENCH_HOLD").is_some() {
            // For timing by hand: nsenter -n -t PID cwlab watch --once --port P …
            println!(
                "bench: holding; nsenter -n -t {} … --port {port}; Enter ends",
                std::process::id()
            );
            let _ = std::io::stdin().read(&mut [0u8; 1]);
        }
        timer(port, n);
        drop(decoys);
        // The holders first: their FINs reach the clients' FIN-WAIT-2 sockets, still there.
        fleet.stop();
        settle(&[TcpState::CloseWait, TcpState::LastAck, TcpState::FinWait1]);
    }
    churn_cost(env!("CARGO_BIN_EXE_cwlab"));
}

/// The host's `net.ipv4.tcp_mem` (pages; global, and only the host's namespace shows it) raised for a population
/// that would pass its limit: a CLOSE-WAIT socket accounts about a page, and past the third
/// number the kernel resets the clients' orphans (their servers' sockets close: at 1,000,000,
/// 994,886 stayed in CLOSE-WAIT with this machine's 575,796). Put back when dropped.
/// The file stays open: the bench enters a namespace of its own, where the setting is not shown.
struct TcpMem(Option<(std::fs::File, String)>);

impl TcpMem {
    const PATH: &'static str = "/proc/sys/net/ipv4/tcp_mem";

    fn at_least(n: usize) -> TcpMem {
        let was = std::fs::read_to_string(Self::PATH).unwrap_or_default();
        let v: Vec<u64> = was.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        let want = 2 * n as u64 + 100_000;
        if v.len() != 3 || v[2] >= want {
            return TcpMem(None);
        }
        let mut f = std::fs::OpenOptions::new().write(true).open(Self::PATH).unwrap();
        // One write: a sysctl takes a number only at offset 0.
        let line = format!("{} {} {}", want, want + want / 4, want + want / 2);
        f.write_all(line.as_bytes()).expect("raise net.ipv4.tcp_mem");
        eprintln!("bench: net.ipv4.tcp_mem raised from {} for {n} sockets", was.trim());
        TcpMem(Some((f, was)))
    }
}

impl Drop for TcpMem {
    fn drop(&mut self) {
        if let Some((f, was)) = &mut self.0 {
            // A sysctl takes a number only at offset 0.
            let _ = std::io::Seek::seek(f, std::io::SeekFrom::Start(0));
            let _ = f.write_all(was.trim().as_bytes());
        }
    }
}

/// Every process the bench started: killed and reaped when dropped, holders first.
#[derive(Default)]
struct Fleet {
    holders: Vec<Child>,
    clients: Vec<Child>,
}

impl Fleet {
    fn stop(&mut self) {
        for c in self.holders.drain(..).chain(self.clients.drain(..)) {
            Reaped(c).stop();
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One child, killed and reaped when dropped.
struct Reaped(Child);

impl Reaped {
    fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A child of the bench that dies with it (PR_SET_PDEATHSIG, armed from the main thread).
fn child(c: &mut Command) -> Child {
    try_child(c).unwrap()
}

fn try_child(c: &mut Command) -> std::io::Result<Child> {
    // SAFETY: between fork and exec the closure makes one system call and allocates nothing.
    unsafe {
        c.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            Ok(())
        });
    }
    c.spawn()
}

/// Writes a sysctl of the calling thread's network namespace.
fn sysctl(name: &str, value: &str) {
    std::fs::write(format!("/proc/sys/{name}"), value)
        .unwrap_or_else(|e| panic!("sysctl {name}={value}: {e}"));
}

/// N server sockets in CLOSE-WAIT on one port, held by holders; the clients in a namespace of
/// their own. Returns the port once every socket is in CLOSE-WAIT and held.
fn populate(n: usize, fleet: &mut Fleet) -> u16 {
    let me = std::env::current_exe().unwrap();
    let mut c = child(
        Command::new(&me)
            .env("CWLAB_BENCH_CLIENT", n.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    );
    let (mut to_client, mut from_client) =
        (c.stdin.take().unwrap(), BufReader::new(c.stdout.take().unwrap()));
    let pid = c.id();
    fleet.clients.push(c);
    expect(&mut from_client, "ready");
    netns::veth_to(SERVER_IFACE, CLIENT_IFACE, pid).expect("the veth pair");
    netns::set_ipv4(SERVER_IFACE, SERVER, 16).unwrap();
    netns::set_up(SERVER_IFACE).unwrap();
    let listener =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    listener.bind(&SocketAddr::from((SERVER, 0)).into()).unwrap();
    listener.listen(65_535).unwrap();
    let port = listener.local_addr().unwrap().as_socket().unwrap().port();
    let fd = listener.as_raw_fd();
    let mut held = Vec::new();
    for quota in quotas(n) {
        let mut cmd = Command::new(&me);
        cmd.env("CWLAB_BENCH_HOLDER", quota.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        // SAFETY: dup2 or fcntl between fork and exec, nothing allocated; the listener stays
        // open in the bench until then.
        unsafe {
            cmd.pre_exec(move || {
                if fd == LISTENER_FD {
                    // dup2 onto itself would leave close-on-exec set.
                    nix::fcntl::fcntl(
                        fd,
                        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
                    )?;
                } else {
                    nix::unistd::dup2(fd, LISTENER_FD)?;
                }
                Ok(())
            });
        }
        let mut h = child(&mut cmd);
        held.push(BufReader::new(h.stdout.take().unwrap()));
        fleet.holders.push(h);
    }
    drop(listener);
    let started = Instant::now();
    writeln!(to_client, "{port}").unwrap();
    expect(&mut from_client, "done");
    for h in &mut held {
        expect(h, "held");
    }
    // The client's end stays open: it holds its namespace until the fleet stops.
    std::mem::forget(to_client);
    let deadline = Instant::now() + Duration::from_secs(300);
    while close_wait_on(port) < n {
        assert!(Instant::now() < deadline, "timeout while waiting for {n} CLOSE-WAIT");
        std::thread::sleep(Duration::from_millis(100)); // the kernel's pace: FINs in flight
    }
    eprintln!("bench: {n} CLOSE-WAIT on :{port} in {:.1} s", started.elapsed().as_secs_f64());
    port
}

/// The server CLOSE-WAIT sockets of `port`, counted by sock_diag.
fn close_wait_on(port: u16) -> usize {
    let q = Query {
        states: States::of(&[TcpState::CloseWait]),
        port: Some(port),
        side: PortSide::Local,
        ..Query::default()
    };
    Table::open(Backend::SockDiag).unwrap().count(&q).unwrap()
}

/// How many sockets each holder takes.
fn quotas(n: usize) -> Vec<usize> {
    let k = n.div_ceil(PER_HOLDER);
    (0..k).map(|i| n / k + usize::from(i < n % k)).collect()
}

/// Reads a line and checks it.
fn expect(r: &mut impl BufRead, want: &str) {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), want, "a child's word");
}

/// A holder: accepts `quota` connections from the listener it was given, holds them, says
/// `held`, and waits for its stdin to close.
fn holder(quota: usize) {
    raise_nofile(quota as u64 + 10);
    // SAFETY: the bench put the listener at this descriptor, which nothing else owns.
    let l = unsafe { TcpListener::from_raw_fd(LISTENER_FD) };
    let keep: Vec<TcpStream> = (0..quota).map(|_| l.accept().unwrap().0).collect();
    drop(l);
    println!("held");
    let _ = std::io::stdin().read(&mut [0u8; 1]);
    drop(keep);
}

/// The clients: a namespace of their own, 24 addresses on their end of the veth pair, then `n`
/// connections to the port the bench writes, each from an address and port never used before,
/// each closed at once (its FIN puts the server's socket in CLOSE-WAIT). Two threads.
fn client(n: usize) {
    netns::enter_private().unwrap();
    println!("ready");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    let port: u16 = line.trim().parse().unwrap();
    sysctl("net/ipv4/tcp_max_tw_buckets", &(2 * n + 100_000).to_string());
    for k in 0..CLIENTS {
        let name = if k == 0 { CLIENT_IFACE.to_string() } else { format!("{CLIENT_IFACE}:{k}") };
        netns::set_ipv4(&name, Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 201, 1, 0)) + k), 16)
            .unwrap();
    }
    netns::set_up(CLIENT_IFACE).unwrap();
    let to = SocketAddr::from((SERVER, port));
    let sources: Vec<SocketAddr> = (0..CLIENTS)
        .flat_map(|k| {
            let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 201, 1, 0)) + k);
            (1024..=u16::MAX).map(move |p| SocketAddr::from((ip, p)))
        })
        .take(n + n / 10 + 1000)
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let made = std::sync::atomic::AtomicUsize::new(0);
    let work = || loop {
        if made.load(std::sync::atomic::Ordering::Relaxed) >= n {
            return;
        }
        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let from = sources.get(i).expect("enough addresses and ports");
        let c = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        if c.bind(&(*from).into()).is_err() {
            continue; // a port something else of this namespace has
        }
        if made.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= n {
            return;
        }
        c.connect(&to.into()).unwrap();
    };
    std::thread::scope(|s| {
        s.spawn(work);
        work();
    });
    println!("done");
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

/// The commands compared with ss only up to this many sockets: `ss -p` takes 3.5 s at 100,000.
const COMMANDS_UP_TO: usize = 200_000;

fn timer(port: u16, n: usize) {
    let cwlab = env!("CARGO_BIN_EXE_cwlab");
    let p = port.to_string();
    let mut ours =
        Reaped(spawn(Command::new(cwlab).args(["watch", "--listen", "127.0.0.1:0", "--port", &p])));
    let ours_addr = first_line(&mut ours.0)
        .strip_prefix("cwlab watch: serving http://")
        .and_then(|r| r.strip_suffix("/metrics").map(str::to_string))
        .expect("the exporter's address");
    let ne_addr = free_addr();
    let mut node = Command::new("prometheus-node-exporter");
    node.args(["--collector.disable-defaults", "--collector.tcpstat"])
        .arg(format!("--web.listen-address={ne_addr}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let node = match try_child(&mut node) {
        Ok(c) => Some(Reaped(c)),
        Err(_) => {
            eprintln!("bench: prometheus-node-exporter is not installed: its column stays empty");
            None
        }
    };
    // The table's own count just before: after a long hold (CWLAB_BENCH_HOLD) a few server
    // sockets may have left CLOSE-WAIT (104 of 1,000,000 after two minutes, once).
    let truth = close_wait_on(port);
    if truth != n {
        eprintln!("bench: {truth} of the {n} sockets are still in CLOSE-WAIT");
    }
    // The first scrape seeds the ledger and walks for the holders.
    let mut ours_body = String::new();
    let first = timed(|| ours_body = scrape(&ours_addr));
    let counted: usize = ours_body
        .lines()
        .filter(|l| {
            l.starts_with("cwlab_tcp_sockets{")
                && l.contains("side=\"server\",state=\"close_wait\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<usize>().ok())
        .sum();
    assert_eq!(counted, truth, "cwlab's scrape counts every CLOSE-WAIT");
    let holders =
        ours_body.lines().filter(|l| l.starts_with("cwlab_tcp_close_wait_holder_sockets{")).count();
    assert_eq!(holders, quotas(n).len().min(5), "the top 5 holders named");
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
    let (rss, peak) = memory(ours.0.id());
    drop(ours);
    drop(node);
    let cpu = watching_cost(cwlab, port);
    let ours_ms = ms(median(t_ours.into_iter()));
    let node_ms = if t_node.is_empty() { f64::NAN } else { ms(median(t_node.into_iter())) };
    println!(
        "cwlab watch at {n} CLOSE-WAIT on one port held by {} processes (their {n} peers in FIN-WAIT-2 in a namespace of their own, 2,000 decoys); scrapes: medians of {RUNS}, commands: of 21 in turns",
        quotas(n).len()
    );
    println!(
        "  the first scrape of cwlab watch --listen (seeds, walks)      {:>9.2} ms",
        ms(first)
    );
    println!("  one scrape of cwlab watch --listen (ports, ages, holders)   {ours_ms:>9.2} ms   (target < 100 ms at 100,000)");
    println!("  one scrape of node_exporter, tcpstat only                   {node_ms:>9.2} ms");
    println!(
        "  ratio cwlab / node_exporter                                 {:>9.2}    (target <= 0.50)",
        ours_ms / node_ms
    );
    println!(
        "  the exporter's resident memory after the scrapes (peak)     {:>6} MiB   ({peak} MiB)",
        rss
    );
    println!("  watching at 1 s, CPU over 10 s                              {cpu:>8.1} %    of a core (target < 5 % at 100,000)");
    if n > COMMANDS_UP_TO {
        println!("  (cwlab sockets and ss are compared up to {COMMANDS_UP_TO} sockets only)");
        return;
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
}

/// A process's resident memory now and at its peak, MiB (VmRSS and VmHWM).
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib = |key: &str| -> u64 {
        let l = status.lines().find(|l| l.starts_with(key)).unwrap();
        l[key.len()..].split_whitespace().next().unwrap().parse().unwrap()
    };
    (kib("VmRSS:") / 1024, kib("VmHWM:") / 1024)
}

/// CPU time (user + system) of `cwlab watch --interval 1s` over 10 s, as a share of one core.
fn watching_cost(cwlab: &str, port: u16) -> f64 {
    let mut c = Reaped(child(
        Command::new(cwlab)
            .args(["watch", "--interval", "1s", "--port", &port.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    ));
    // The first look is made at start; measure from its line on, over ten intervals.
    let mut out = c.0.stdout.take().unwrap();
    let mut b = [0u8; 1];
    while out.read(&mut b).unwrap_or(0) == 1 && b[0] != b'\n' {}
    let ticks = |pid: u32| -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let f: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
        (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
    };
    let (t0, c0) = (Instant::now(), ticks(c.0.id()));
    let mut lines = 0;
    while lines < 10 {
        if out.read(&mut b).unwrap_or(0) == 1 && b[0] == b'\n' {
            lines += 1;
        }
    }
    (ticks(c.0.id()) - c0) / t0.elapsed().as_secs_f64() * 100.0
}

/// What the stream's tracepoint program costs a host that opens and closes connections:
/// connections a second through loopback (a client thread connects, reads the server's close,
/// closes; a server thread accepts and closes), 2 s at a time, in turns: with nothing attached,
/// with the stream's program attached alone (this process holds it and drains its ring every
/// 50 ms, as a watch would, its draining's CPU left out: the kernel's side of the cost), and with `cwlab watch --interval 1s` running (the program and
/// the watch's looks); `CWLAB_BENCH_CHURN_ROUNDS` rounds (9). Each window in a fresh network
/// namespace, so that the last one's timewait sockets do not weigh on it. The load average is
/// printed with it: other work on the machine moves these figures more than the program does.
fn churn_cost(cwlab: &str) {
    let rounds: usize =
        std::env::var("CWLAB_BENCH_CHURN_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(9);
    let window = Duration::from_secs(2);
    let load = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let before = load();
    let (mut bare, mut program, mut watched) = (Vec::new(), Vec::new(), Vec::new());
    let (mut per_run, mut per_conn, mut dropped) = (Vec::new(), Vec::new(), 0u64);
    // The kernel's own count of the program's runs and their time (kernel.bpf_stats_enabled,
    // read from the program's fdinfo): its cost without the machine's noise.
    let stats = "/proc/sys/kernel/bpf_stats_enabled";
    let stats_were = std::fs::read_to_string(stats).unwrap_or_default();
    let _ = std::fs::write(stats, "1");
    let mut streaming = true;
    for _ in 0..rounds {
        bare.push(churn(window));
        match cwlab_sampler::stream::Stream::open() {
            Ok(mut stream) => {
                let (runs0, ns0) = program_stats();
                let churning = std::thread::spawn(move || churn(window));
                // The ring drained as a watch drains it, so that every run writes its event (a
                // ring left full would time the drop path); the draining's own CPU is not the
                // connections'.
                let (cpu0, mut drops) = (cpu_thread(), 0);
                while !churning.is_finished() {
                    drops = stream.drain(|_| {});
                    std::thread::sleep(Duration::from_millis(50));
                }
                let drained = cpu_thread() - cpu0;
                let r = churning.join().unwrap();
                let (runs1, ns1) = program_stats();
                let r = (r.0, r.1 - drained / (r.0 * window.as_secs_f64()) * 1e6);
                dropped += drops;
                program.push(r);
                if runs1 > runs0 {
                    per_run.push((ns1 - ns0) as f64 / (runs1 - runs0) as f64);
                    per_conn.push((runs1 - runs0) as f64 / (r.0 * window.as_secs_f64()));
                }
                drop(stream);
            }
            Err(_) => streaming = false,
        }
        let mut w = Reaped(child(
            Command::new(cwlab)
                .args(["watch", "--interval", "1s", "--port", "9"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        ));
        let mut out = BufReader::new(w.0.stdout.take().unwrap());
        let mut first = String::new();
        out.read_line(&mut first).unwrap();
        watched.push(churn(window));
        w.kill();
        let mut err = String::new();
        w.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        streaming &= !err.contains("BPF stream");
    }
    let _ = std::fs::write(stats, stats_were.trim());
    let rate = |v: &[(f64, f64)]| median_f(v.iter().map(|x| x.0));
    let cpu = |v: &[(f64, f64)]| median_f(v.iter().map(|x| x.1));
    let a = rate(&bare);
    println!(
        "connections through loopback, 2 s windows, medians of {rounds} in turns (the stream {}; load average before {}, after {})",
        if streaming { "on" } else { "OFF: the kernel refused it" },
        before.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        load().split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!("  nothing attached                 {a:>9.0} /s   {:>6.1} µs of CPU each", cpu(&bare));
    for (what, v) in
        [("the stream's program alone", &program), ("cwlab watch --interval 1s", &watched)]
    {
        if v.is_empty() {
            continue;
        }
        let b = rate(v);
        println!(
            "  {what:<32} {b:>9.0} /s   {:>6.1} µs of CPU each   {:>5.1} % fewer (target < 2 %)",
            cpu(v),
            (1.0 - b / a) * 100.0
        );
    }
    if !per_run.is_empty() {
        let (ns, runs) = (median_f(per_run.into_iter()), median_f(per_conn.into_iter()));
        println!(
            "  the program, by the kernel's count: {ns:.0} ns a run, {runs:.1} runs a connection = {:.2} µs a connection, {:.1} % of its CPU ({dropped} events dropped)",
            ns * runs / 1000.0,
            ns * runs / 1000.0 / cpu(&bare) * 100.0
        );
    }
}

/// The runs and run time (ns) of this process's BPF programs, from their fdinfo (counted while
/// `kernel.bpf_stats_enabled` is 1).
fn program_stats() -> (u64, u64) {
    let mut total = (0, 0);
    for e in std::fs::read_dir("/proc/self/fd").into_iter().flatten().flatten() {
        let is_prog = std::fs::read_link(e.path())
            .is_ok_and(|l| l.to_string_lossy() == "anon_inode:bpf-prog");
        if !is_prog {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/self/fdinfo/{}",
            e.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let field = |k: &str| -> u64 {
            info.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        total.0 += field("run_cnt:");
        total.1 += field("run_time_ns:");
    }
    total
}

/// Connections a second, and the bench's CPU (user + system) per connection in µs, for `d`.
fn churn(d: Duration) -> (f64, f64) {
    std::thread::spawn(move || {
        netns::enter_private().unwrap();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let to = l.local_addr().unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        let cpu0 = cpu_self();
        let t0 = Instant::now();
        let n = std::thread::scope(|s| {
            s.spawn(|| {
                while let Ok((c, _)) = l.accept() {
                    drop(c);
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        return;
                    }
                }
            });
            let mut n = 0u64;
            let mut buf = [0u8; 1];
            while t0.elapsed() < d {
                let mut c = TcpStream::connect(to).unwrap();
                let _ = c.read(&mut buf);
                drop(c);
                n += 1;
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = TcpStream::connect(to);
            n
        });
        let secs = t0.elapsed().as_secs_f64();
        (n as f64 / secs, (cpu_self() - cpu0) / n as f64 * 1e6)
    })
    .join()
    .unwrap()
}

/// This process's CPU time so far (user + system), seconds.
fn cpu_self() -> f64 {
    cpu(nix::sys::resource::UsageWho::RUSAGE_SELF)
}

/// This thread's CPU time so far (user + system), seconds.
fn cpu_thread() -> f64 {
    cpu(nix::sys::resource::UsageWho::RUSAGE_THREAD)
}

fn cpu(who: nix::sys::resource::UsageWho) -> f64 {
    let u = nix::sys::resource::getrusage(who).unwrap();
    let s = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    s(u.user_time()) + s(u.system_time())
}

fn median_f(v: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = v.collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn spawn(c: &mut Command) -> Child {
    child(c.stdout(Stdio::null()).stderr(Stdio::piped()))
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
