//! Two namespaces joined by a veth pair, as the two-hosts topology joins the clients' and the
//! server's: a connection crosses it, and each namespace's socket table sees its own end only.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;

use cwlab_sampler::{netns, Backend, PortSide, Query, States, Table, TcpState};

#[test]
fn a_veth_pair_joins_two_namespaces_and_each_sees_its_own_end() {
    if let Err(e) = netns::enter_private() {
        assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "CI runs as root: {e}");
        eprintln!("skipping: needs root for network namespaces ({e})");
        return;
    }
    // The other "host": a thread in a namespace of its own, alive until the test ends.
    let (tid_tx, tid_rx) = mpsc::channel();
    let (end_tx, end_rx) = mpsc::channel::<()>();
    let other = std::thread::spawn(move || {
        netns::enter_private().unwrap();
        // SAFETY: gettid(2) has no preconditions.
        tid_tx.send(unsafe { libc::gettid() } as u32).unwrap();
        let _ = end_rx.recv();
    });
    let tid = tid_rx.recv().unwrap();
    let (here, there) = (Ipv4Addr::new(10, 99, 0, 1), Ipv4Addr::new(10, 99, 0, 2));

    netns::veth_to("cwt-a", "cwt-b", tid).unwrap();
    netns::set_ipv4("cwt-a", here, 24).unwrap();
    netns::set_up("cwt-a").unwrap();
    let (listener, mut their_table) = netns::in_namespace_of(tid, || {
        netns::set_ipv4("cwt-b", there, 24)?;
        netns::set_up("cwt-b")?;
        let l = TcpListener::bind((there, 0))?;
        Ok((l, Table::open(Backend::SockDiag).map_err(std::io::Error::other)?))
    })
    .unwrap();
    let port = listener.local_addr().unwrap().port();

    let client = TcpStream::connect((there, port)).unwrap();
    let (_server, peer) = listener.accept().unwrap();
    assert_eq!(peer, client.local_addr().unwrap(), "the server sees the client's own address");
    assert_eq!(peer.ip(), here);

    let estab = |side| Query {
        states: States::of(&[TcpState::Established]),
        port: Some(port),
        side,
        peer: None,
        info: false,
    };
    let mut our_table = Table::open(Backend::SockDiag).unwrap();
    assert_eq!(their_table.count(&estab(PortSide::Local)).unwrap(), 1, "the server's end, there");
    assert_eq!(their_table.count(&estab(PortSide::Remote)).unwrap(), 0);
    assert_eq!(our_table.count(&estab(PortSide::Remote)).unwrap(), 1, "the client's end, here");
    assert_eq!(our_table.count(&estab(PortSide::Local)).unwrap(), 0);
    let theirs = their_table.list(&estab(PortSide::Local)).unwrap();
    assert_eq!(theirs[0].local, SocketAddr::from((there, port)));

    assert_eq!(
        netns::veth_to("cwt-a", "cwt-c", tid).unwrap_err().raw_os_error(),
        Some(libc::EEXIST),
        "a name taken is refused"
    );
    end_tx.send(()).unwrap();
    other.join().unwrap();
}
