//! One namespace's sockets counted per port and side as a dump (or the stream's ledger) is
//! read, with the stuck ones set apart: each port's server CLOSE-WAIT sockets, and its client
//! CLOSE-WAIT sockets by the remote service they are connected to, each with its inode and the
//! oldest's age.
//!
//! The ports are the service ports (those with a listener, or those `--port` names) and, unless
//! `--port` narrowed them, the port of every other service a CLOSE-WAIT socket here is stuck on
//! ([`stuck_ports`]): so nothing stuck is counted in `other` (beyond 32 such services, the least stuck are).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use cwlab_model::watch::{NamespaceView, PortView};
use cwlab_model::TcpState;
use cwlab_sampler::holders::{self, FastMap};
use cwlab_sampler::stream::{self, Ledger};
use cwlab_sampler::{PortSide, Query, SocketRecord, States};

use crate::targets::Target;

/// Counts per state, indexed by the kernel's state number (1–11).
type StateCounts = [u32; 12];

fn counts_map(c: &StateCounts) -> cwlab_model::report::Counts {
    TcpState::ALL.iter().filter(|s| c[**s as usize] > 0).map(|s| (*s, c[*s as usize])).collect()
}

/// What the tally asks of a CLOSE-WAIT socket, only when it meets one.
pub(crate) struct Stuck {
    /// Its inode (0 where no file refers to it).
    pub inode: u64,
    /// How long it has been in CLOSE-WAIT, in seconds.
    pub age_s: f64,
    /// Its remote address and port (what a client-side one is connected to).
    pub remote: SocketAddr,
}

/// One namespace's sockets counted per port (server side and client side) and `other`: added
/// one socket at a time, in arrays indexed by port and state, as a dump is read.
pub(crate) struct Tally {
    /// The ports, sorted.
    ports: Vec<u16>,
    listening: BTreeSet<u16>,
    /// Each port's place in `ports`, or `u16::MAX`.
    index: Vec<u16>,
    tallies: Vec<PortTally>,
    other: StateCounts,
}

#[derive(Default)]
struct PortTally {
    server: StateCounts,
    client: StateCounts,
    oldest: Option<f64>,
    /// The inodes of the server CLOSE-WAIT sockets (0 where no file refers to one).
    stuck: Vec<u64>,
    /// The client CLOSE-WAIT sockets by remote service.
    remotes: FastMap<SocketAddr, Remote>,
}

/// The client CLOSE-WAIT sockets connected to one remote service.
#[derive(Default)]
pub(crate) struct Remote {
    /// How long the oldest has waited, in seconds.
    pub oldest: Option<f64>,
    /// Their inodes.
    pub stuck: Vec<u64>,
    /// How long each has waited, in seconds, in the order of `stuck`.
    pub ages: Vec<f64>,
}

/// The stuck sockets of one namespace's port, as a look found them: the server's, and the
/// client's by remote service (the most first).
pub(crate) struct PortStuck {
    pub server: Vec<u64>,
    pub remotes: Vec<(SocketAddr, Remote)>,
}

impl Tally {
    /// The ports are `only`, or every port with a listener and `stuck` (see [`stuck_ports`]).
    pub fn new(only: &[u16], listening: BTreeSet<u16>, stuck: &BTreeSet<u16>) -> Tally {
        let mut ports: Vec<u16> = if only.is_empty() {
            listening.iter().chain(stuck).copied().collect()
        } else {
            only.to_vec()
        };
        ports.sort_unstable();
        ports.dedup();
        let mut index = vec![u16::MAX; 65_536];
        for (i, p) in ports.iter().enumerate() {
            index[usize::from(*p)] = i as u16;
        }
        let tallies = ports.iter().map(|_| PortTally::default()).collect();
        Tally { ports, listening, index, tallies, other: [0; 12] }
    }

    /// Whether a socket with these ports is counted on the client side of a port.
    pub fn is_client(&self, (lp, rp): (u16, u16)) -> bool {
        self.index[usize::from(lp)] == u16::MAX && self.index[usize::from(rp)] != u16::MAX
    }

    /// Adds one socket; `stuck` answers for a CLOSE-WAIT socket on either side of a port.
    pub fn add(&mut self, state: TcpState, (lp, rp): (u16, u16), stuck: impl FnOnce() -> Stuck) {
        let st = state as usize;
        let cw = state == TcpState::CloseWait;
        let older = |o: Option<f64>, age: f64| Some(o.map_or(age, |o: f64| o.max(age)));
        match (self.index[usize::from(lp)], self.index[usize::from(rp)]) {
            (i, _) if i != u16::MAX => {
                let p = &mut self.tallies[usize::from(i)];
                p.server[st] += 1;
                if cw {
                    let s = stuck();
                    p.stuck.push(s.inode);
                    p.oldest = older(p.oldest, s.age_s);
                }
            }
            (_, i) if i != u16::MAX => {
                let p = &mut self.tallies[usize::from(i)];
                p.client[st] += 1;
                if cw {
                    let s = stuck();
                    let r = p.remotes.entry(s.remote).or_default();
                    r.stuck.push(s.inode);
                    r.ages.push(s.age_s);
                    r.oldest = older(r.oldest, s.age_s);
                }
            }
            _ => self.other[st] += 1,
        }
    }

    /// The counts into `view`; each of its ports' stuck sockets, in the same order.
    pub fn into_view(self, view: &mut NamespaceView) -> Vec<PortStuck> {
        let mut stuck = Vec::with_capacity(self.ports.len());
        view.ports = self
            .ports
            .iter()
            .zip(self.tallies)
            .map(|(port, t)| {
                let mut remotes: Vec<(SocketAddr, Remote)> = t.remotes.into_iter().collect();
                remotes.sort_by(|a, b| b.1.stuck.len().cmp(&a.1.stuck.len()).then(a.0.cmp(&b.0)));
                stuck.push(PortStuck { server: t.stuck, remotes });
                PortView {
                    port: *port,
                    listening: self.listening.contains(port),
                    server: counts_map(&t.server),
                    client: counts_map(&t.client),
                    close_wait_oldest_s: t.oldest,
                    ..Default::default()
                }
            })
            .collect();
        view.other = counts_map(&self.other);
        stuck
    }
}

/// How many ports of services with no listener here a namespace shows at the most (the most
/// stuck first); the sockets of any beyond are counted in `other`: a bound on the rows and on
/// the metrics' `port` label whatever a host's sockets look like.
pub(crate) const MOST_STUCK_PORTS: usize = 32;

/// The ports of the services CLOSE-WAIT sockets on no listening port are stuck on, from each
/// one's (local, remote) ports. A socket whose local port is below the namespace's ephemeral
/// range (from `ephemeral` up) is a server's whose listener has gone: its local port; one whose
/// peer's port is below it is a client's: its remote port. Where both are in the range (a
/// service on a high port, or a peer with another range), the port more of these sockets share
/// is the service's: a service's port is shared by its connections, an ephemeral port is one
/// connection's. At most [`MOST_STUCK_PORTS`], the most stuck first.
pub(crate) fn stuck_ports(
    close_wait: impl Iterator<Item = (u16, u16)>,
    listening: &BTreeSet<u16>,
    ephemeral: u16,
) -> BTreeSet<u16> {
    let cw: Vec<(u16, u16)> =
        close_wait.filter(|(lp, rp)| !listening.contains(lp) && !listening.contains(rp)).collect();
    let mut shared: FastMap<u16, u32> = FastMap::default();
    for (lp, rp) in &cw {
        *shared.entry(*lp).or_default() += 1;
        *shared.entry(*rp).or_default() += 1;
    }
    let mut stuck: FastMap<u16, u32> = FastMap::default();
    for (lp, rp) in cw {
        let service = if lp < ephemeral {
            lp
        } else if rp < ephemeral || shared[&rp] >= shared[&lp] {
            rp
        } else {
            lp
        };
        *stuck.entry(service).or_default() += 1;
    }
    let mut most: Vec<(u16, u32)> = stuck.into_iter().collect();
    most.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    most.into_iter().take(MOST_STUCK_PORTS).map(|(p, _)| p).collect()
}

/// A socket's identity for its age: its inode, which no other socket has while it lives; for a
/// socket no file refers to (inode 0), its addresses folded into a number with the top bit set.
fn socket_id(r: &SocketRecord) -> u64 {
    if r.inode != 0 {
        return r.inode;
    }
    use std::hash::{Hash, Hasher};
    let mut h = holders::FastHasher::default();
    (r.local, r.remote).hash(&mut h);
    h.finish() | 1 << 63
}

/// What the dumping way needs for CLOSE-WAIT ages: when each socket was first seen there.
pub(crate) struct Ages<'a> {
    /// When each CLOSE-WAIT socket (namespace, [`socket_id`]) entered CLOSE-WAIT, as far as the
    /// watcher knows, and the look that last saw it.
    pub born: &'a mut FastMap<(u64, u64), (Instant, u64)>,
    pub now: Instant,
    pub generation: u64,
}

/// Without the stream: every socket of the namespace from a dump (with `tcp_info` where some
/// CLOSE-WAIT socket's age is not known yet), counted.
pub(crate) fn dumped(t: &mut Target, only: &[u16], ages: Ages) -> Result<Tally, String> {
    let records = t.dump(!t.aged)?;
    let listening: BTreeSet<u16> =
        records.iter().filter(|r| r.state == TcpState::Listen).map(|r| r.local.port()).collect();
    let cw = records.iter().filter(|r| r.state == TcpState::CloseWait);
    let stuck = stuck_ports(cw.map(|r| (r.local.port(), r.remote.port())), &listening, t.ephemeral);
    let mut tally = Tally::new(only, listening, &stuck);
    let Ages { born, now, generation } = ages;
    let ns = t.inode;
    for r in &records {
        tally.add(r.state, (r.local.port(), r.remote.port()), || {
            let e = born.entry((ns, socket_id(r))).or_insert_with(|| {
                let idle = Duration::from_millis(u64::from(r.idle_ms.unwrap_or(0)));
                (now.checked_sub(idle).unwrap_or(now), generation)
            });
            e.1 = generation;
            Stuck { inode: r.inode, age_s: now.duration_since(e.0).as_secs_f64(), remote: r.remote }
        });
    }
    Ok(tally)
}

/// With the stream: the ledger's sockets and a dump of the states it does not keep, counted as
/// the dump is read. A ledger is seeded first where there is none; a CLOSE-WAIT socket the
/// ledger has with no file (accepted after its FIN: no event says so) is given its inode from a
/// dump of CLOSE-WAIT; a client-side one whose remote address is not known yet, its address
/// from a dump of CLOSE-WAIT to its remote port.
pub(crate) fn streamed(t: &mut Target, only: &[u16], now_ns: u64) -> Result<Tally, String> {
    let read = keep_ledger(t, now_ns)?;
    let ledger = t.ledger.as_ref().expect("seeded above");
    let listening: BTreeSet<u16> = ledger
        .entries
        .values()
        .filter(|e| e.state == TcpState::Listen)
        .map(|e| e.local_port)
        .collect();
    let cw = || ledger.entries.iter().filter(|(_, e)| e.state == TcpState::CloseWait);
    let stuck =
        stuck_ports(cw().map(|(_, e)| (e.local_port, e.remote_port)), &listening, t.ephemeral);
    let mut tally = Tally::new(only, listening, &stuck);
    let clients: Vec<(u64, u16)> = cw()
        .filter(|(_, e)| tally.is_client((e.local_port, e.remote_port)))
        .map(|(c, e)| (*c, e.remote_port))
        .collect();
    let table = t.table.as_mut().expect("opened by keep_ledger");
    address(&mut t.addresses, &clients, |q| table.first.list(q).map_err(|e| e.to_string()))?;
    let ledger = t.ledger.as_ref().expect("seeded above");
    for (cookie, e) in &ledger.entries {
        let stuck = || Stuck {
            inode: e.inode,
            age_s: now_ns.saturating_sub(e.since_ns) as f64 / 1e9,
            remote: t
                .addresses
                .get(cookie)
                .copied()
                .unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), e.remote_port)),
        };
        tally.add(e.state, (e.local_port, e.remote_port), stuck);
    }
    // The dumped states hold no CLOSE-WAIT: `stuck` is never asked.
    let none = |r: &SocketRecord| Stuck { inode: 0, age_s: 0.0, remote: r.remote };
    let mut add =
        |r: &SocketRecord| tally.add(r.state, (r.local.port(), r.remote.port()), || none(r));
    match read {
        Some(records) => records.iter().for_each(add),
        None => {
            let rest = Query { states: stream::dumped(), ..Query::default() };
            let table = t.table.as_mut().expect("opened by keep_ledger");
            table.first.for_each(&rest, &mut add).map_err(|e| e.to_string())?
        }
    }
    Ok(tally)
}

/// Seeds the ledger where there is none, and files the CLOSE-WAIT sockets it has with no
/// inode; the records of the dumped states, where that took a dump of them.
fn keep_ledger(t: &mut Target, now_ns: u64) -> Result<Option<Vec<SocketRecord>>, String> {
    t.open_again()?;
    let table = t.table.as_mut().expect("opened above");
    let rest = Query { states: stream::dumped(), ..Query::default() };
    let kept = Query { states: States::of(&stream::STREAMED), ..Query::default() };
    let fail = |e: cwlab_sampler::Error| e.to_string();
    match t.ledger.as_mut() {
        None => {
            let all = table.two(&Query { info: true, ..kept }, &rest).map_err(fail)?;
            let (streamed, others): (Vec<SocketRecord>, Vec<SocketRecord>) =
                all.into_iter().partition(|r| stream::STREAMED.contains(&r.state));
            t.ledger = Some(Ledger::seed(&streamed, now_ns));
            t.addresses.clear();
            Ok(Some(others))
        }
        Some(ledger) if ledger.unfiled(TcpState::CloseWait).next().is_some() => {
            // One walk: the dumped states and CLOSE-WAIT together.
            let mut states: Vec<TcpState> =
                TcpState::ALL.iter().copied().filter(|s| rest.states.contains(*s)).collect();
            states.push(TcpState::CloseWait);
            let both = Query { states: States::of(&states), ..Query::default() };
            let all = table.first.list(&both).map_err(fail)?;
            let (cw, others): (Vec<SocketRecord>, Vec<SocketRecord>) =
                all.into_iter().partition(|r| r.state == TcpState::CloseWait);
            ledger.file(&cw);
            Ok(Some(others))
        }
        Some(_) => Ok(None),
    }
}

/// Keeps `addresses` to the client-side CLOSE-WAIT sockets `clients` (cookie, remote port):
/// those not known yet are found by a dump of CLOSE-WAIT to their remote port (`list`, filtered
/// in the kernel); those gone are forgotten.
fn address(
    addresses: &mut FastMap<u64, SocketAddr>,
    clients: &[(u64, u16)],
    mut list: impl FnMut(&Query) -> Result<Vec<SocketRecord>, String>,
) -> Result<(), String> {
    let unknown: BTreeSet<u16> =
        clients.iter().filter(|(c, _)| !addresses.contains_key(c)).map(|(_, p)| *p).collect();
    for port in unknown {
        let q = Query {
            states: States::of(&[TcpState::CloseWait]),
            port: Some(port),
            side: PortSide::Remote,
            ..Query::default()
        };
        addresses.extend(list(&q)?.into_iter().map(|r| (r.cookie, r.remote)));
    }
    let now: std::collections::HashSet<u64> = clients.iter().map(|(c, _)| *c).collect();
    addresses.retain(|c, _| now.contains(c));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_19_stuck_sockets_on_no_listening_port_get_the_port_of_their_service() {
        let listening = BTreeSet::from([8080]);
        let cw = [
            (8080, 40001),  // a server's, on a service port
            (45000, 8080),  // a client's, of a local service
            (45001, 443),   // a client's, of a remote service
            (40002, 50000), // a client's: both in the ephemeral range, the remote's the service
            (9090, 51000),  // a server's whose listener has gone
            (9091, 2000),   // a server's whose listener has gone, its peer's range another
        ];
        let ports = stuck_ports(cw.into_iter(), &listening, 32768);
        assert_eq!(ports, BTreeSet::from([443, 9090, 9091, 50000]));
        // A server on a port in the ephemeral range whose listener has gone (gRPC's 50051):
        // its connections share its port, each peer's port is its own. One row, not one each.
        let cw = (0..40).map(|i| (50051, 40000 + i));
        assert_eq!(stuck_ports(cw, &BTreeSet::new(), 32768), BTreeSet::from([50051]));
        // However they look, at most MOST_STUCK_PORTS ports, the most stuck first.
        let cw = (0..100u16).flat_map(|i| (0..=i / 50).map(move |k| (40000 + i * 2 + k, 1000 + i)));
        let ports = stuck_ports(cw, &BTreeSet::new(), 32768);
        assert_eq!(ports.len(), MOST_STUCK_PORTS);
        assert!(ports.contains(&1050) && !ports.contains(&1000), "{ports:?}");
    }

    #[test]
    fn issue_19_client_close_wait_is_grouped_by_remote_service_and_none_is_other() {
        let listening = BTreeSet::from([8080]);
        let mut t = Tally::new(&[], listening, &BTreeSet::from([443]));
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        let add = |t: &mut Tally, state, ports, inode, remote: &str, age| {
            t.add(state, ports, || Stuck { inode, age_s: age, remote: addr(remote) })
        };
        add(&mut t, TcpState::CloseWait, (45000, 443), 1, "10.0.0.5:443", 3.0);
        add(&mut t, TcpState::CloseWait, (45001, 443), 2, "10.0.0.5:443", 7.0);
        add(&mut t, TcpState::CloseWait, (45002, 443), 3, "10.0.0.6:443", 1.0);
        add(&mut t, TcpState::Established, (45003, 443), 4, "10.0.0.6:443", 0.0);
        add(&mut t, TcpState::CloseWait, (8080, 45004), 5, "127.0.0.1:45004", 2.0);
        add(&mut t, TcpState::Established, (45005, 22), 6, "10.0.0.7:22", 0.0);
        let mut view = NamespaceView::default();
        let stuck = t.into_view(&mut view);
        let ports: Vec<(u16, bool)> = view.ports.iter().map(|p| (p.port, p.listening)).collect();
        assert_eq!(ports, [(443, false), (8080, true)]);
        assert_eq!(view.ports[0].client.get(&TcpState::CloseWait), Some(&3));
        assert_eq!(view.ports[0].client.get(&TcpState::Established), Some(&1));
        assert_eq!(view.other.get(&TcpState::Established), Some(&1));
        assert_eq!(view.other.get(&TcpState::CloseWait), None);
        let remotes: Vec<(String, Vec<u64>, Option<f64>)> = stuck[0]
            .remotes
            .iter()
            .map(|(a, r)| (a.to_string(), r.stuck.clone(), r.oldest))
            .collect();
        assert_eq!(
            remotes,
            [
                ("10.0.0.5:443".into(), vec![1, 2], Some(7.0)),
                ("10.0.0.6:443".into(), vec![3], Some(1.0))
            ]
        );
        assert_eq!(stuck[1].server, [5]);
        assert!(stuck[1].remotes.is_empty());
    }
}
