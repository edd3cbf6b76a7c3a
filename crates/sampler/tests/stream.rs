//! The server's half of the table as the kernel's reports keep it ([`cwlab_sampler::stream`])
//! against a dump of the same states in the same namespace: seeded while connections come and
//! go, then kept by events alone, it must name the very sockets a dump names, each with its
//! state, ports and inode, whenever the namespace is still. Each test in a private network
//! namespace of its own.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use cwlab_sampler::stream::{now_ns, Ledger, Stream, STREAMED};
use cwlab_sampler::{netns, Backend, Query, States, Table, TcpState};

fn private_ns_and_stream(test: &str) -> Option<Stream> {
    let ci = std::env::var("CI").as_deref() == Ok("true");
    if let Err(e) = netns::enter_private() {
        assert!(!ci, "{test}: CI runs as root and must be able to unshare(CLONE_NEWNET): {e}");
        eprintln!("skipping {test}: needs root for a private network namespace ({e})");
        return None;
    }
    match Stream::open() {
        Ok(s) => Some(s),
        Err(e) => {
            assert!(!ci, "{test}: the kernel of CI takes the stream's programs: {e}");
            eprintln!("skipping {test}: no BPF stream here ({e})");
            None
        }
    }
}

/// The stream sees every namespace's changes: the tests here take turns, so that one's churn
/// does not fill the other's ring.
static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn own_netns() -> u32 {
    std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino() as u32
}

/// What a dump and a ledger must agree on, by cookie: the state, the ports and, for CLOSE-WAIT
/// (whose holders the watch names), the inode. (A server's socket is ESTAB before it is
/// accepted, and accept() gives it a file without a state change: the ledger knows an ESTAB
/// socket's inode only if it had one at its last change.)
type Picture = BTreeMap<u64, (TcpState, u16, u16, u64)>;

fn cw_inode(state: TcpState, inode: u64) -> u64 {
    if state == TcpState::CloseWait {
        inode
    } else {
        0
    }
}

fn streamed() -> Query {
    Query { states: States::of(&STREAMED), ..Query::default() }
}

fn of_dump(table: &mut Table) -> Picture {
    table
        .list(&streamed())
        .unwrap()
        .into_iter()
        .map(|r| (r.cookie, (r.state, r.local.port(), r.remote.port(), cw_inode(r.state, r.inode))))
        .collect()
}

fn of_ledger(l: &Ledger) -> Picture {
    l.entries
        .iter()
        .map(|(c, e)| (*c, (e.state, e.local_port, e.remote_port, cw_inode(e.state, e.inode))))
        .collect()
}

/// Applies this namespace's events until the ledger and a dump agree and the dump holds `n`
/// sockets (the kernel may finish a close in softirq after the calls return), or fails with both
/// at the deadline.
fn agree(stream: &mut Stream, ledger: &mut Ledger, table: &mut Table, what: &str, n: usize) {
    let ns = own_netns();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let dropped = stream.drain(|e| {
            if e.netns == ns {
                ledger.apply(&e)
            }
        });
        assert_eq!(dropped, 0, "{what}: the ring overflowed");
        let (mine, dump) = (of_ledger(ledger), of_dump(table));
        if mine == dump && mine.len() == n {
            return;
        }
        if Instant::now() > deadline {
            assert_eq!(dump.len(), n, "{what}: the dump");
            let only_mine: Vec<_> = mine.iter().filter(|(c, v)| dump.get(c) != Some(v)).collect();
            let only_dump: Vec<_> = dump.iter().filter(|(c, v)| mine.get(c) != Some(v)).collect();
            panic!("{what}: the ledger has {only_mine:?} where the dump has {only_dump:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn the_stream_keeps_the_table_a_dump_shows() {
    let Some(mut stream) = private_ns_and_stream("the_stream_keeps_the_table_a_dump_shows") else {
        return;
    };
    let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
    let mut table = Table::open(Backend::SockDiag).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let pair = |l: &TcpListener| {
        let c = TcpStream::connect(addr).unwrap();
        let (s, _) = l.accept().unwrap();
        (c, s)
    };

    // Seeded while a thread opens and closes connections on another listener.
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap();
    let churn = std::thread::spawn(move || {
        for i in 0..300 {
            let c = TcpStream::connect(busy_addr).unwrap();
            let (s, _) = busy.accept().unwrap();
            if i % 2 == 0 {
                drop(c);
                drop(s);
            } else {
                drop(s);
                drop(c);
            }
        }
        busy
    });
    let _ = stream.drain(|_| {});
    let records = table.list(&Query { info: true, ..streamed() }).unwrap();
    let mut ledger = Ledger::seed(&records, now_ns());
    let busy = churn.join().unwrap();
    agree(&mut stream, &mut ledger, &mut table, "after the churn: the two listeners", 2);

    // Then the shapes of the close sequence, kept by events alone: open pairs, the leak's
    // CLOSE-WAIT and FIN-WAIT-2, TIME-WAIT, and a CLOSE-WAIT accepted only after its FIN.
    let mut keep = Vec::new();
    for _ in 0..10 {
        let (c, s) = pair(&listener);
        keep.extend([c, s]);
    }
    for _ in 0..10 {
        let (c, s) = pair(&listener);
        drop(c);
        keep.push(s);
    }
    for _ in 0..10 {
        let (c, mut s) = pair(&listener);
        drop(c);
        let _ = s.read(&mut [0u8; 1]);
        drop(s);
    }
    let late = TcpStream::connect(addr).unwrap();
    let late_port = late.local_addr().unwrap().port();
    drop(late);
    // The ten open pairs, ten CLOSE-WAIT, the late one, the two listeners.
    agree(&mut stream, &mut ledger, &mut table, "with the late one in the queue", 33);
    assert_eq!(ledger.unfiled(TcpState::CloseWait).count(), 1, "the late one has no file yet");
    // Accepting gives it a file and the kernel no event: the ledger learns the inode from a
    // dump of the unfiled sockets' state, as the watch does.
    let (late_server, _) = listener.accept().unwrap();
    let dumped = table.list(&Query { states: States::of(&[TcpState::CloseWait]), ..streamed() });
    ledger.file(&dumped.unwrap());
    agree(&mut stream, &mut ledger, &mut table, "with every shape", 33);
    let count = |state| ledger.entries.values().filter(|e| e.state == state).count();
    assert_eq!(count(TcpState::CloseWait), 11, "ten CLOSE-WAIT and the late one");
    assert_eq!(count(TcpState::Established), 20, "ten open pairs");
    assert_eq!(count(TcpState::Listen), 2);
    let late = ledger.entries.values().find(|e| e.remote_port == late_port).unwrap();
    assert_ne!(late.inode, 0, "the late one's inode");

    // Everything closed: what is left is timewait sockets, the same in both.
    drop(keep);
    drop(late_server);
    drop(listener);
    drop(busy);
    agree(&mut stream, &mut ledger, &mut table, "after closing everything", 0);
}

#[test]
fn a_full_ring_is_counted_and_a_new_seed_agrees_again() {
    let Some(_) = private_ns_and_stream("a_full_ring_is_counted_and_a_new_seed_agrees_again")
    else {
        return;
    };
    let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
    // 64 KiB of ring: about 1,365 events; 600 connections make about 2,400.
    let mut stream = Stream::with_ring(64 << 10).unwrap();
    let mut table = Table::open(Backend::SockDiag).unwrap();
    let mut ledger = Ledger::seed(&table.list(&streamed()).unwrap(), now_ns());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut held = Vec::new();
    for _ in 0..600 {
        let c = TcpStream::connect(addr).unwrap();
        held.push((c, listener.accept().unwrap().0));
    }
    let ns = own_netns();
    let dropped = stream.drain(|e| {
        if e.netns == ns {
            ledger.apply(&e)
        }
    });
    assert!(dropped > 0, "a 64 KiB ring must overflow");
    assert_ne!(of_ledger(&ledger), of_dump(&mut table), "the ledger missed what was dropped");
    // What the watch does then: drain, seed again, and go on with the events.
    let _ = stream.drain(|_| {});
    let mut ledger = Ledger::seed(&table.list(&streamed()).unwrap(), now_ns());
    let before = stream.drain(|_| {});
    held.truncate(590);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = stream.drain(|e| {
            if e.netns == ns {
                ledger.apply(&e)
            }
        });
        assert_eq!(now, before, "ten closes fit in the ring when it is drained");
        // The listener and the 590 pairs left, once the ten closes are through.
        let dump = of_dump(&mut table);
        if of_ledger(&ledger) == dump && dump.len() == 1 + 2 * 590 {
            break;
        }
        assert!(Instant::now() < deadline, "the new seed and its events never agreed");
        std::thread::sleep(Duration::from_millis(5));
    }
}
