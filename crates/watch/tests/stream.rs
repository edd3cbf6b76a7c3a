//! A watcher that keeps the server's half of the table from the kernel's reports against one
//! that dumps everything at every look, on the same namespace while a leak grows, is mended in
//! part, and a CLOSE-WAIT socket is accepted only after its FIN; then a client's pool that
//! never notices the server's FIN, to a service that listens here and to one that no longer
//! does: whenever the namespace is still, the two must say the same, and the leak's exact
//! counts and holder.

use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use cwlab_model::watch::Snapshot;
use cwlab_model::TcpState;
use cwlab_watch::{Namespaces, Watcher};

/// What the two watchers must agree on: every count, and each port's holders.
fn seen(s: &Snapshot) -> Vec<String> {
    let ns = &s.namespaces[0];
    let mut v: Vec<String> = ns
        .ports
        .iter()
        .map(|p| {
            let holders: Vec<(u32, u32)> = p.holders.iter().map(|h| (h.pid, h.sockets)).collect();
            let remotes: Vec<String> = p
                .remotes
                .iter()
                .map(|r| {
                    let holders: Vec<(u32, u32)> =
                        r.holders.iter().map(|h| (h.pid, h.sockets)).collect();
                    format!("{} {} {holders:?}", r.remote, r.close_wait)
                })
                .collect();
            format!(
                "{} {} {:?} {:?} {holders:?} {remotes:?}",
                p.port, p.listening, p.server, p.client
            )
        })
        .collect();
    v.push(format!("other {:?}", ns.other));
    v
}

/// Looks with both until they agree and `want` holds of the streamed one's look, to a deadline
/// (a close finishes in the kernel after the calls return).
fn agree(
    streamed: &mut Watcher,
    dumped: &mut Watcher,
    what: &str,
    want: impl Fn(&Snapshot) -> bool,
) -> Snapshot {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (a, b) = (streamed.look(), dumped.look());
        if seen(&a) == seen(&b) && want(&a) {
            return a;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: streamed {:#?}\ndumped {:#?}",
            seen(&a),
            seen(&b)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn close_wait(s: &Snapshot, port: u16) -> u32 {
    let Some(p) = s.namespaces[0].ports.iter().find(|p| p.port == port) else { return 0 };
    p.server.get(&TcpState::CloseWait).copied().unwrap_or(0)
}

#[test]
fn the_stream_and_the_dump_see_the_same_leak() {
    let ci = std::env::var("CI").as_deref() == Ok("true");
    if let Err(e) = cwlab_sampler::netns::enter_private() {
        assert!(!ci, "CI runs as root and must be able to unshare(CLONE_NEWNET): {e}");
        return eprintln!("skipping: needs root for a private network namespace ({e})");
    }
    let mut streamed = Watcher::new(Namespaces::Own, vec![], 5).unwrap();
    let mut dumped = Watcher::new(Namespaces::Own, vec![], 5).unwrap().dumping_only();
    if !streamed.streaming() {
        assert!(!ci, "the kernel of CI takes the stream's program");
        return eprintln!("skipping: no BPF stream here");
    }
    let me = std::process::id();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // The first looks seed; what follows the stream alone reports.
    agree(&mut streamed, &mut dumped, "an idle listener", |s| close_wait(s, port) == 0);

    let mut held = Vec::new();
    let mut open = Vec::new();
    for round in 1..=3u32 {
        for _ in 0..25 {
            let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
            held.push(listener.accept().unwrap().0);
            drop(c);
        }
        for _ in 0..5 {
            let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
            open.push((c, listener.accept().unwrap().0));
        }
        let s = agree(&mut streamed, &mut dumped, "the leak growing", |s| {
            close_wait(s, port) == 25 * round
        });
        let p = &s.namespaces[0].ports[0];
        assert_eq!(p.holders.first().map(|h| (h.pid, h.sockets)), Some((me, 25 * round)));
        assert_eq!(p.server.get(&TcpState::Established), Some(&(5 * round)));
        let age = p.close_wait_oldest_s.unwrap();
        assert!((0.0..60.0).contains(&age), "{age}");
    }
    // Ten of them closed at last: LAST-ACK, then gone.
    held.drain(..10);
    agree(&mut streamed, &mut dumped, "ten mended", |s| close_wait(s, port) == 65);

    // One whose FIN comes before accept(): no file, no holder; then accepted, held here.
    let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    drop(c);
    let s = agree(&mut streamed, &mut dumped, "one in the queue", |s| close_wait(s, port) == 66);
    assert_eq!(s.namespaces[0].ports[0].holders[0].sockets, 65);
    held.push(listener.accept().unwrap().0);
    let s = agree(&mut streamed, &mut dumped, "accepted", |s| {
        s.namespaces[0].ports[0].holders.first().map(|h| h.sockets) == Some(66)
    });
    assert_eq!(close_wait(&s, port), 66);

    // Issue 19: a pool whose server closed 20 of its connections, 5 of which it closes at last.
    let mut pool = Vec::new();
    for _ in 0..20 {
        let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        drop(listener.accept().unwrap().0);
        pool.push(c);
    }
    let remote = format!("127.0.0.1:{port}");
    let client_cw = |s: &Snapshot, remote: &str| {
        let ports = &s.namespaces[0].ports;
        let r = ports.iter().flat_map(|p| &p.remotes).find(|r| r.remote.to_string() == remote);
        r.map_or(0, |r| r.close_wait)
    };
    let s = agree(&mut streamed, &mut dumped, "a pool's leak", |s| client_cw(s, &remote) == 20);
    let r = &s.namespaces[0].ports[0].remotes[0];
    assert_eq!(r.holders.first().map(|h| (h.pid, h.sockets)), Some((me, 20)));
    pool.drain(..5);
    agree(&mut streamed, &mut dumped, "five closed", |s| client_cw(s, &remote) == 15);
    // A service that no longer listens here: its port is still shown, with its remote.
    let gone = TcpListener::bind("127.0.0.1:0").unwrap();
    let gone_port = gone.local_addr().unwrap().port();
    for _ in 0..7 {
        let c = TcpStream::connect(("127.0.0.1", gone_port)).unwrap();
        drop(gone.accept().unwrap().0);
        pool.push(c);
    }
    drop(gone);
    let elsewhere = format!("127.0.0.1:{gone_port}");
    let s = agree(&mut streamed, &mut dumped, "a service gone", |s| client_cw(s, &elsewhere) == 7);
    let p = s.namespaces[0].ports.iter().find(|p| p.port == gone_port).unwrap();
    assert!(!p.listening);
    assert_eq!(p.client.get(&TcpState::CloseWait), Some(&7));
    assert!(!s.namespaces[0].other.contains_key(&TcpState::CloseWait));

    drop(pool);
    drop(held);
    drop(open);
    drop(listener);
    let s = agree(&mut streamed, &mut dumped, "all closed", |s| s.namespaces[0].ports.is_empty());
    assert!(!s.namespaces[0].other.contains_key(&TcpState::CloseWait));
}
