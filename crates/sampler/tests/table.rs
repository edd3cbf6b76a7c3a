//! The socket table against known populations, each test in a private network namespace of its
//! own: exact counts per state, side and port, the two backends and `ss` agreeing, and holders.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use cwlab_sampler::{holders, netns, Backend, PortSide, Ports, Query, States, Table, TcpState};

/// Enters a private namespace; without the privilege, skips (and fails under CI=true).
fn private_ns(test: &str) -> bool {
    match netns::enter_private() {
        Ok(()) => true,
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("{test}: CI runs as root and must be able to unshare(CLONE_NEWNET): {e}")
        }
        Err(e) => {
            eprintln!("skipping {test}: needs root for a private network namespace ({e})");
            false
        }
    }
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timeout while waiting for {what}");
        std::thread::yield_now();
    }
}

/// Connections on one listener, held in the states the test asks for.
struct Population {
    _listener: TcpListener,
    _keep: Vec<TcpStream>,
    port: u16,
}

/// `estab` open pairs, `close_wait` pairs whose client closed (server CLOSE-WAIT, client
/// FIN-WAIT-2), `time_wait` pairs closed client first (client TIME-WAIT).
fn populate(ip: IpAddr, estab: usize, close_wait: usize, time_wait: usize) -> Population {
    let listener = TcpListener::bind(SocketAddr::new(ip, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    let pair = || {
        let c = TcpStream::connect(addr).unwrap();
        let (s, _) = listener.accept().unwrap();
        (c, s)
    };
    let mut keep = Vec::new();
    for _ in 0..estab {
        let (c, s) = pair();
        keep.extend([c, s]);
    }
    for _ in 0..close_wait {
        let (c, s) = pair();
        drop(c);
        keep.push(s);
    }
    let mut closing = Vec::new();
    for _ in 0..time_wait {
        closing.push(pair());
    }
    for (c, mut s) in closing {
        drop(c);
        let mut buf = [0u8; 1];
        assert_eq!(s.read(&mut buf).unwrap(), 0, "server side sees the client's FIN");
        drop(s);
    }
    // The FINs' ACKs may still be in flight (delayed ACK): wait until every close has settled.
    let mut t = Table::open(Backend::SockDiag).unwrap();
    let q = Query {
        states: States::of(&[TcpState::FinWait1, TcpState::LastAck]),
        port: Some(addr.port()),
        side: PortSide::Any,
        peer: None,
        info: false,
    };
    wait_until("FIN-WAIT-1 and LAST-ACK to settle", || t.count(&q).unwrap() == 0);
    Population { _listener: listener, _keep: keep, port: addr.port() }
}

fn counts(table: &mut Table, port: u16, side: PortSide) -> BTreeMap<TcpState, usize> {
    let mut m = BTreeMap::new();
    table
        .for_each(&Query { port: Some(port), side, ..Query::default() }, |r| {
            *m.entry(r.state).or_insert(0) += 1
        })
        .unwrap();
    m
}

fn expect(pairs: &[(TcpState, usize)]) -> BTreeMap<TcpState, usize> {
    pairs.iter().copied().filter(|(_, n)| *n > 0).collect()
}

fn exact_counts_on(ip: &str) {
    let ip: IpAddr = ip.parse().unwrap();
    let p = populate(ip, 3, 5, 7);
    let decoy = populate(ip, 2, 4, 6);
    let mut t = Table::open(Backend::SockDiag).unwrap();
    use TcpState::*;
    wait_until("TIME-WAIT to settle", || {
        counts(&mut t, p.port, PortSide::Remote).get(&TimeWait) == Some(&7)
    });
    assert_eq!(
        counts(&mut t, p.port, PortSide::Local),
        expect(&[(Established, 3), (CloseWait, 5), (Listen, 1)])
    );
    assert_eq!(
        counts(&mut t, p.port, PortSide::Remote),
        expect(&[(Established, 3), (FinWait2, 5), (TimeWait, 7)])
    );
    assert_eq!(
        counts(&mut t, p.port, PortSide::Any),
        expect(&[(Established, 6), (CloseWait, 5), (FinWait2, 5), (TimeWait, 7), (Listen, 1)])
    );
    assert_eq!(
        counts(&mut t, decoy.port, PortSide::Any),
        expect(&[(Established, 4), (CloseWait, 4), (FinWait2, 4), (TimeWait, 6), (Listen, 1)])
    );
    let q = Query {
        states: States::of(&[CloseWait]),
        port: Some(p.port),
        side: PortSide::Local,
        peer: None,
        info: false,
    };
    assert_eq!(t.count(&q).unwrap(), 5);
    let q = Query { states: States::of(&[CloseWait, FinWait2]), ..Query::default() };
    assert_eq!(t.count(&q).unwrap(), 5 + 5 + 4 + 4, "no port: both populations");
    let cpus = allowed_cpus();
    for side in [PortSide::Local, PortSide::Remote, PortSide::Any] {
        let q = Query { port: Some(p.port), side, ..Query::default() };
        assert_eq!(cwlab_sampler::count_split(&q).unwrap(), t.count(&q).unwrap(), "{side:?}");
        assert_eq!(allowed_cpus(), cpus, "count_split gives the caller its CPU mask back");
        // On one CPU, one dump: the same count, and the mask stays that one CPU.
        bind_to(&cpus[..1]);
        assert_eq!(cwlab_sampler::count_split(&q).unwrap(), t.count(&q).unwrap(), "{side:?}");
        assert_eq!(allowed_cpus(), cpus[..1]);
        bind_to(&cpus);
        let mut procnet = Table::open(Backend::ProcNet).unwrap();
        let half = Query { peer: Some(Ports { low: 0, high: 40000 }), ..q };
        assert_eq!(t.count(&half).unwrap(), procnet.count(&half).unwrap(), "{side:?}: a slice");
    }
}

#[test]
fn exact_counts_per_state_side_and_port_ipv4() {
    if private_ns("exact_counts_per_state_side_and_port_ipv4") {
        exact_counts_on("127.0.0.1");
    }
}

#[test]
fn exact_counts_per_state_side_and_port_ipv6() {
    if private_ns("exact_counts_per_state_side_and_port_ipv6") {
        exact_counts_on("::1");
    }
}

type Key = (TcpState, SocketAddr, SocketAddr);

fn all(table: &mut Table) -> Vec<Key> {
    let mut v: Vec<Key> = table
        .list(&Query::default())
        .unwrap()
        .into_iter()
        .map(|r| (r.state, r.local, r.remote))
        .collect();
    v.sort();
    v
}

/// `ss -Htan`, parsed: `STATE RECV-Q SEND-Q LOCAL PEER`.
fn ss() -> Vec<Key> {
    let out = Command::new("ss").arg("-Htan").output().expect("ss (iproute2) is installed");
    assert!(out.status.success(), "ss failed: {}", String::from_utf8_lossy(&out.stderr));
    let addr = |s: &str| -> SocketAddr {
        let (host, port) = s.rsplit_once(':').unwrap();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let host = if host == "*" { "0.0.0.0" } else { host };
        let port = if port == "*" { 0 } else { port.parse().unwrap() };
        SocketAddr::new(host.parse().unwrap(), port)
    };
    let mut v: Vec<Key> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w[0].parse().unwrap(), addr(w[3]), addr(w[4]))
        })
        .collect();
    v.sort();
    v
}

#[test]
fn sock_diag_proc_and_ss_agree() {
    if !private_ns("sock_diag_proc_and_ss_agree") {
        return;
    }
    let _v4 = populate("127.0.0.1".parse().unwrap(), 4, 6, 3);
    let _v6 = populate("::1".parse().unwrap(), 2, 3, 5);
    let mut diag = Table::open(Backend::SockDiag).unwrap();
    let mut proc = Table::open(Backend::ProcNet).unwrap();
    let d = all(&mut diag);
    // Per population: LISTEN, 2 per open pair, 2 per CLOSE-WAIT pair, 1 per TIME-WAIT pair.
    assert_eq!(d.len(), (1 + 8 + 12 + 3) + (1 + 4 + 6 + 5), "{d:?}");
    assert_eq!(d, all(&mut proc), "sock_diag and /proc/net/tcp");
    let mut by_family = cwlab_sampler::diag::SockDiag::open().unwrap();
    by_family.per_family();
    let mut f = Table::SockDiag(by_family);
    assert_eq!(d, all(&mut f), "one walk for both families and one request per family");
    assert_eq!(d, ss(), "sock_diag and ss -tan");
}

#[test]
fn the_holder_of_a_forked_copy_is_the_child_and_its_fd() {
    if !private_ns("the_holder_of_a_forked_copy_is_the_child_and_its_fd") {
        return;
    }
    use nix::sys::wait::waitpid;
    use nix::unistd::{fork, pipe, read, ForkResult};
    use std::os::fd::AsRawFd;

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (accepted, _) = listener.accept().unwrap();
    let fd = accepted.as_raw_fd();
    let (gate_r, gate_w) = pipe().unwrap();
    // SAFETY: the child only blocks in read(2) and then _exit(2)s: async-signal-safe calls.
    let child = match unsafe { fork() }.unwrap() {
        ForkResult::Child => {
            // Drop every copy the fork made but the accepted socket and the gate: the other
            // tests' sockets (and our client) must not stay open in here.
            let keep = [fd.min(gate_r.as_raw_fd()), fd.max(gate_r.as_raw_fd())];
            // SAFETY: the child never returns to code that owns the descriptors closed here.
            unsafe {
                libc::close_range(3, keep[0] as u32 - 1, 0);
                libc::close_range(keep[0] as u32 + 1, keep[1] as u32 - 1, 0);
                libc::close_range(keep[1] as u32 + 1, u32::MAX, 0);
            }
            let mut b = [0u8; 1];
            let _ = read(gate_r.as_raw_fd(), &mut b);
            // SAFETY: _exit(2) is async-signal-safe and never returns.
            unsafe { libc::_exit(0) };
        }
        ForkResult::Parent { child } => child,
    };
    drop(gate_r);
    drop(accepted);
    drop(client);
    let mut t = Table::open(Backend::SockDiag).unwrap();
    let q = Query {
        states: States::of(&[TcpState::CloseWait]),
        port: Some(listener.local_addr().unwrap().port()),
        side: PortSide::Local,
        peer: None,
        info: false,
    };
    wait_until("the server socket to reach CLOSE-WAIT", || t.count(&q).unwrap() == 1);
    let socket = t.list(&q).unwrap().remove(0);
    assert_ne!(socket.inode, 0);
    let h = holders::find(&HashSet::from([socket.inode]));
    let pid = child.as_raw() as u32;
    assert_eq!(h.of(socket.inode), &[holders::Holding { pid, fd }]);
    assert_eq!(h.processes[&pid].ppid, std::process::id());
    // The survey finds the same holders, and every process's parent, name and descriptors: the
    // child kept the standard streams it was given, the socket and the gate.
    let holders::Survey { holders: surveyed, everyone } =
        holders::survey(&HashSet::from([socket.inode]));
    assert_eq!(surveyed.of(socket.inode), h.of(socket.inode));
    // SAFETY: fcntl(F_GETFD) only asks whether a descriptor is open.
    let streams = (0..3).filter(|fd| unsafe { libc::fcntl(*fd, libc::F_GETFD) } >= 0).count();
    assert_eq!(everyone[&pid].ppid, std::process::id());
    assert_eq!(everyone[&pid].fds as usize, streams + 2);
    assert!(everyone.contains_key(&std::process::id()), "holders or not, every process");
    let q = Query { states: States::of(&[TcpState::FinWait2]), ..Query::default() };
    wait_until("the client's socket to wait for a FIN", || t.count(&q).unwrap() == 1);
    let orphan = t.list(&q).unwrap();
    assert!(
        holders::find(&HashSet::from([orphan[0].inode])).of(orphan[0].inode).is_empty(),
        "nobody holds an orphan"
    );
    // The child's exit drops the last reference: now the FIN goes out.
    drop(gate_w);
    waitpid(child, None).unwrap();
    let q = Query { states: States::of(&[TcpState::TimeWait]), ..Query::default() };
    wait_until("the client to reach TIME-WAIT once the child exits", || t.count(&q).unwrap() == 1);
}

/// The CPUs the calling thread may run on.
fn allowed_cpus() -> Vec<usize> {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).unwrap();
    (0..nix::sched::CpuSet::count()).filter(|&c| set.is_set(c).unwrap()).collect()
}

fn bind_to(cpus: &[usize]) {
    let mut set = nix::sched::CpuSet::new();
    for &c in cpus {
        set.set(c).unwrap();
    }
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).unwrap();
}
