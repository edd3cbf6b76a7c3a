//! The two witnesses beyond sampling, as the report carries them: every state transition the
//! kernel made (the `sock:inet_sock_set_state` tracepoint) and every segment on the wire (a packet
//! capture), with what this module computes from them: per-connection paths, time spent in each
//! state, transitions and FINs counted per side.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::report::Side;
use crate::state::TcpState;

/// One transition the kernel reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// Microseconds since the run's LISTEN.
    pub t_us: i64,
    /// Which end of the connection.
    pub side: Side,
    /// The client's port: it names the connection.
    pub client_port: u16,
    /// The state left.
    pub from: TcpState,
    /// The state entered.
    pub to: TcpState,
}

/// What the transitions showed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transitions {
    /// False where tracefs could not be used; `note` says why.
    pub available: bool,
    /// Why not, or what to know.
    pub note: Option<String>,
    /// Transitions read.
    pub events: u64,
    /// Events the kernel dropped (its buffer was full); nonzero makes the counts a lower bound.
    pub lost: u64,
    /// For each side and transition, how many connections made it.
    pub counts: Vec<TransitionCount>,
    /// For each side, the distinct paths from ESTAB on and how many connections took each.
    pub paths: Vec<PathCount>,
    /// For each side and state left, how long connections spent in it.
    pub durations: Vec<StateDuration>,
    /// For each side and state, its sockets after every change, as the table shows them
    /// (issue 21: what the timeline is drawn from). Absent from reports before it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub levels: Vec<Level>,
}

/// One side's sockets in one state over the run: the count after each change.
///
/// Full sockets come and go with the kernel's transitions. A closing socket handed to a timewait
/// socket (FIN-WAIT-1, FIN-WAIT-2 or CLOSING → CLOSE) counts on as the table shows it: in
/// TIME-WAIT, or in FIN-WAIT-2 where the peer had not closed yet (an orphan's timewait socket),
/// until the peer closes (its transition to FIN-WAIT-1 or LAST-ACK sends the FIN), then in
/// TIME-WAIT. A timewait socket lives 60 s, longer than a run: none ends here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Level {
    /// The side.
    pub side: Side,
    /// The state.
    pub state: TcpState,
    /// `[µs since LISTEN, sockets]` after each change, in time order; changes in the same µs are
    /// one point. A run of more than [`LEVEL_POINTS`] changes keeps, per slice of time, the
    /// highest and the last count, so that peaks stay exact.
    pub points: Vec<(i64, u32)>,
}

/// The most points a [`Level`] keeps as they are.
pub const LEVEL_POINTS: usize = 2000;

impl Level {
    /// The highest count.
    pub fn peak(&self) -> u32 {
        self.points.iter().map(|(_, n)| *n).max().unwrap_or(0)
    }
}

/// The [`Level`]s of a run from its transitions (any order).
pub fn levels(events: &[Transition]) -> Vec<Level> {
    use TcpState::*;
    let mut events: Vec<&Transition> = events.iter().collect();
    events.sort_by_key(|e| e.t_us);
    // When each side of each connection closed (sent its FIN), as the peer's FIN arrival.
    let mut closed: BTreeMap<(Side, u16), i64> = BTreeMap::new();
    for e in &events {
        if matches!(e.to, FinWait1 | LastAck) {
            closed.entry((e.side, e.client_port)).or_insert(e.t_us);
        }
    }
    let peer = |side: Side| if side == Side::Server { Side::Client } else { Side::Server };
    let mut deltas: Vec<(i64, Side, TcpState, i32)> = Vec::new();
    for e in &events {
        if !matches!(e.from, Listen | Close) {
            deltas.push((e.t_us, e.side, e.from, -1));
        }
        let handed = e.to == Close && matches!(e.from, FinWait1 | FinWait2 | Closing);
        if !handed {
            if e.to != Close {
                deltas.push((e.t_us, e.side, e.to, 1));
            }
            continue;
        }
        let fin = closed.get(&(peer(e.side), e.client_port)).copied();
        match fin {
            Some(t) if t > e.t_us && e.from == FinWait2 => {
                deltas.push((e.t_us, e.side, FinWait2, 1));
                deltas.push((t, e.side, FinWait2, -1));
                deltas.push((t, e.side, TimeWait, 1));
            }
            None if e.from == FinWait2 => deltas.push((e.t_us, e.side, FinWait2, 1)),
            _ => deltas.push((e.t_us, e.side, TimeWait, 1)),
        }
    }
    deltas.sort_by_key(|d| d.0);
    // Each series: its running count, and its points.
    type Running = (i64, Vec<(i64, u32)>);
    let mut series: BTreeMap<(Side, TcpState), Running> = BTreeMap::new();
    for (t, side, state, d) in deltas {
        let (n, points) = series.entry((side, state)).or_insert((0, Vec::new()));
        *n += i64::from(d);
        let now = (*n).max(0) as u32;
        match points.last_mut() {
            Some(last) if last.0 == t => last.1 = now,
            _ => points.push((t, now)),
        }
    }
    series
        .into_iter()
        .filter(|(_, (_, p))| p.iter().any(|(_, n)| *n > 0))
        .map(|((side, state), (_, points))| Level { side, state, points: thin(points) })
        .collect()
}

/// At most about [`LEVEL_POINTS`] points: per slice of time, the highest and the last.
fn thin(points: Vec<(i64, u32)>) -> Vec<(i64, u32)> {
    if points.len() <= LEVEL_POINTS {
        return points;
    }
    let slices = LEVEL_POINTS / 2;
    let (t0, t1) = (points[0].0, points[points.len() - 1].0);
    let span = (t1 - t0).max(1) as f64;
    let slice = |t: i64| (((t - t0) as f64 / span) * (slices - 1) as f64) as usize;
    let mut out: Vec<(i64, u32)> = Vec::new();
    let mut i = 0;
    while i < points.len() {
        let k = slice(points[i].0);
        let j = (i..points.len()).find(|&j| slice(points[j].0) != k).unwrap_or(points.len());
        let group = &points[i..j];
        let high = *group.iter().max_by_key(|(_, n)| *n).expect("a slice has a point");
        let last = group[group.len() - 1];
        out.push(high);
        if last != high {
            out.push(last);
        }
        i = j;
    }
    out
}

/// How many connections made one transition on one side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransitionCount {
    /// The side.
    pub side: Side,
    /// The state left.
    pub from: TcpState,
    /// The state entered.
    pub to: TcpState,
    /// Connections.
    pub connections: u64,
}

/// How many connections took one path on one side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathCount {
    /// The side.
    pub side: Side,
    /// The states from ESTAB on, in order.
    pub path: Vec<TcpState>,
    /// Connections.
    pub connections: u64,
}

/// Time spent in one state, over the connections that left it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateDuration {
    /// The side.
    pub side: Side,
    /// The state.
    pub state: TcpState,
    /// Connections that entered and left it.
    pub connections: u64,
    /// Shortest stay, ms.
    pub min_ms: f64,
    /// Median stay, ms.
    pub median_ms: f64,
    /// Longest stay, ms.
    pub max_ms: f64,
}

impl Transitions {
    /// How many connections on `side` made `from -> to`.
    pub fn count(&self, side: Side, from: TcpState, to: TcpState) -> u64 {
        self.counts
            .iter()
            .filter(|c| c.side == side && c.from == from && c.to == to)
            .map(|c| c.connections)
            .sum()
    }

    /// Whether some path ends FIN-WAIT → CLOSE: the kernel handed the socket to a timewait
    /// socket, which the table shows as TIME-WAIT (or FIN-WAIT-2) and the tracepoint never
    /// reports.
    pub fn handed_to_timewait(&self) -> bool {
        self.paths.iter().any(|p| {
            p.path.ends_with(&[TcpState::FinWait2, TcpState::Close])
                || p.path.ends_with(&[TcpState::FinWait1, TcpState::Close])
        })
    }

    /// How many connections on `side` took exactly `path` from ESTAB on.
    pub fn path(&self, side: Side, path: &[TcpState]) -> u64 {
        self.paths.iter().filter(|p| p.side == side && p.path == path).map(|p| p.connections).sum()
    }
}

/// Computes paths, counts and durations from the transitions, in time order.
pub fn analyse(mut events: Vec<Transition>, lost: u64) -> Transitions {
    events.sort_by_key(|e| e.t_us);
    let levels = levels(&events);
    let mut by_conn: BTreeMap<(Side, u16), Vec<&Transition>> = BTreeMap::new();
    for e in &events {
        by_conn.entry((e.side, e.client_port)).or_default().push(e);
    }
    let mut counts: BTreeMap<(Side, TcpState, TcpState), u64> = BTreeMap::new();
    let mut paths: BTreeMap<(Side, Vec<TcpState>), u64> = BTreeMap::new();
    let mut stays: BTreeMap<(Side, TcpState), Vec<i64>> = BTreeMap::new();
    for ((side, _), evs) in &by_conn {
        let mut path: Vec<TcpState> = Vec::new();
        for (i, e) in evs.iter().enumerate() {
            *counts.entry((*side, e.from, e.to)).or_insert(0) += 1;
            if e.to == TcpState::Established || !path.is_empty() {
                path.push(e.to);
            }
            if let Some(next) = evs.get(i + 1) {
                stays.entry((*side, e.to)).or_default().push(next.t_us - e.t_us);
            }
        }
        if !path.is_empty() {
            *paths.entry((*side, path)).or_insert(0) += 1;
        }
    }
    let ms = |us: i64| us as f64 / 1000.0;
    Transitions {
        available: true,
        note: None,
        events: events.len() as u64,
        lost,
        counts: counts
            .into_iter()
            .map(|((side, from, to), connections)| TransitionCount { side, from, to, connections })
            .collect(),
        paths: paths
            .into_iter()
            .map(|((side, path), connections)| PathCount { side, path, connections })
            .collect(),
        durations: stays
            .into_iter()
            .map(|((side, state), mut v)| {
                v.sort_unstable();
                StateDuration {
                    side,
                    state,
                    connections: v.len() as u64,
                    min_ms: ms(v[0]),
                    median_ms: ms(v[v.len() / 2]),
                    max_ms: ms(v[v.len() - 1]),
                }
            })
            .collect(),
        levels,
    }
}

/// One segment on the wire, as the capture read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Microseconds since the run's LISTEN (the kernel's receive time).
    pub t_us: i64,
    /// The side that sent it.
    pub from: Side,
    /// The client's port: it names the connection.
    pub client_port: u16,
    /// TCP flags (see [`FLAGS`]).
    pub flags: u8,
    /// Payload bytes.
    pub len: u32,
}

/// One thing that happened to one connection: a segment one side sent, or a state one side's
/// socket entered. Both witnesses' times are the kernel's, on one clock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Step {
    /// A segment, from the capture.
    Segment {
        /// Microseconds since LISTEN.
        t_us: i64,
        /// The sender.
        side: Side,
        /// Its flags, as [`flag_names`] spells them (`SYN,ACK`).
        flags: String,
        /// Payload bytes.
        len: u32,
    },
    /// A transition, from the kernel's tracepoint.
    State {
        /// Microseconds since LISTEN.
        t_us: i64,
        /// Whose socket.
        side: Side,
        /// The state left.
        from: TcpState,
        /// The state entered.
        to: TcpState,
    },
}

impl From<&Transition> for Step {
    fn from(e: &Transition) -> Step {
        Step::State { t_us: e.t_us, side: e.side, from: e.from, to: e.to }
    }
}

impl From<&Segment> for Step {
    fn from(s: &Segment) -> Step {
        Step::Segment { t_us: s.t_us, side: s.from, flags: flag_names(s.flags), len: s.len }
    }
}

impl Step {
    /// When it happened, µs since LISTEN.
    pub fn t_us(&self) -> i64 {
        match self {
            Step::Segment { t_us, .. } | Step::State { t_us, .. } => *t_us,
        }
    }

    /// The side that sent the segment or changed state.
    pub fn side(&self) -> Side {
        match self {
            Step::Segment { side, .. } | Step::State { side, .. } => *side,
        }
    }
}

/// One connection, every segment and transition of it in time order: what its ladder is drawn
/// from. A report keeps one connection for each distinct way connections went (the
/// representatives, most common first), then the earliest others, up to [`KEEP_CONNECTIONS`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionTrace {
    /// The client's port.
    pub client_port: u16,
    /// How many connections of the run went the same way (this one included); 0 for a
    /// connection kept only because it came early.
    pub like_it: u64,
    /// Everything that happened to it, in time order.
    pub steps: Vec<Step>,
}

/// Connections a report keeps step by step.
pub const KEEP_CONNECTIONS: usize = 16;

/// The flags of a segment, as the ladder writes them: `SYN`, `SYN,ACK`, `FIN,ACK`, `PSH,ACK`,
/// `RST`.
pub fn flag_names(bits: u8) -> String {
    const ORDER: [(&str, u8); 5] =
        [("SYN", 0x02), ("FIN", 0x01), ("RST", 0x04), ("PSH", 0x08), ("ACK", 0x10)];
    let names: Vec<&str> = ORDER.iter().filter(|(_, b)| bits & b != 0).map(|(n, _)| *n).collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(",")
    }
}

/// The connections a report keeps step by step, from every transition and segment of the run:
/// the first of each distinct way (the states each side went through and the flags each sent),
/// the most common way first; then `wanted` (a client port asked for); then the earliest others,
/// up to [`KEEP_CONNECTIONS`] in all.
pub fn traces(
    events: &[Transition],
    segments: &[Segment],
    wanted: Option<u16>,
) -> Vec<ConnectionTrace> {
    let mut steps: BTreeMap<u16, Vec<Step>> = BTreeMap::new();
    for e in events {
        steps.entry(e.client_port).or_default().push(Step::from(e));
    }
    for s in segments {
        steps.entry(s.client_port).or_default().push(Step::from(s));
    }
    for v in steps.values_mut() {
        v.sort_by_key(Step::t_us);
    }
    // The way a connection went: each side's states, and the flags each side sent.
    type Way = (Vec<(Side, TcpState)>, u8, u8);
    let way = |v: &[Step]| -> Way {
        let mut states = Vec::new();
        let (mut server, mut client) = (0u8, 0u8);
        for s in v {
            match s {
                Step::State { side, to, .. } => states.push((*side, *to)),
                Step::Segment { side: Side::Server, flags, .. } => server |= flag_bits(flags),
                Step::Segment { side: Side::Client, flags, .. } => client |= flag_bits(flags),
            }
        }
        states.sort_by_key(|(side, _)| *side);
        (states, server, client)
    };
    let started = |v: &[Step]| v.first().map_or(i64::MAX, Step::t_us);
    let mut ways: BTreeMap<Way, (u64, i64, u16)> = BTreeMap::new();
    for (port, v) in &steps {
        let e = ways.entry(way(v)).or_insert((0, i64::MAX, *port));
        e.0 += 1;
        if started(v) < e.1 {
            (e.1, e.2) = (started(v), *port);
        }
    }
    let mut reps: Vec<(u64, i64, u16)> =
        ways.values().map(|(n, t, port)| (*n, *t, *port)).collect();
    reps.sort_by_key(|(n, t, _)| (std::cmp::Reverse(*n), *t));
    let mut keep: Vec<(u16, u64)> =
        reps.iter().take(KEEP_CONNECTIONS).map(|(n, _, port)| (*port, *n)).collect();
    if let Some(p) = wanted.filter(|p| steps.contains_key(p) && !keep.iter().any(|(k, _)| k == p)) {
        keep.push((p, 0));
    }
    let mut rest: Vec<(i64, u16)> = steps
        .iter()
        .filter(|(p, _)| !keep.iter().any(|(k, _)| k == *p))
        .map(|(p, v)| (started(v), *p))
        .collect();
    rest.sort_unstable();
    let room = KEEP_CONNECTIONS.saturating_sub(keep.len());
    keep.extend(rest.into_iter().take(room).map(|(_, p)| (p, 0)));
    keep.into_iter()
        .map(|(client_port, like_it)| ConnectionTrace {
            client_port,
            like_it,
            steps: steps.remove(&client_port).unwrap_or_default(),
        })
        .collect()
}

fn flag_bits(names: &str) -> u8 {
    names
        .split(',')
        .filter_map(|n| FLAGS.iter().find(|(f, _)| *f == n).map(|(_, b)| *b))
        .fold(0, |a, b| a | b)
}

/// What the capture saw, per side: segments by flag, and connections by what each side sent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Packets {
    /// False where no capture could be made; `note` says why.
    pub available: bool,
    /// Why not.
    pub note: Option<String>,
    /// The pcap file written, if one was asked for.
    pub pcap: Option<String>,
    /// Segments the server sent, by flag (`SYN`, `FIN`, `RST`, `PSH`, `ACK`) and in all (`all`).
    pub server_segments: BTreeMap<String, u64>,
    /// Segments the clients sent.
    pub client_segments: BTreeMap<String, u64>,
    /// Connections seen (by the client's port).
    pub connections: u64,
    /// Connections in which the server sent at least one segment with the flag, by flag.
    pub server_sent: BTreeMap<String, u64>,
    /// Connections in which the client did.
    pub client_sent: BTreeMap<String, u64>,
    /// Packets the kernel dropped before the capture read them (nonzero: counts are lower bounds).
    pub dropped: u64,
}

/// The TCP flags the capture counts.
pub const FLAGS: [(&str, u8); 5] =
    [("FIN", 0x01), ("SYN", 0x02), ("RST", 0x04), ("PSH", 0x08), ("ACK", 0x10)];

impl Packets {
    /// Connections in which `side` sent a segment with `flag` (`FIN`, `SYN`, `RST`, …).
    pub fn sent(&self, side: Side, flag: &str) -> u64 {
        let m = match side {
            Side::Server => &self.server_sent,
            Side::Client => &self.client_sent,
        };
        m.get(flag).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TcpState::*;

    fn t(t_us: i64, side: Side, port: u16, from: TcpState, to: TcpState) -> Transition {
        Transition { t_us, side, client_port: port, from, to }
    }

    #[test]
    fn paths_counts_and_stays() {
        let ev = vec![
            t(0, Side::Server, 1, Close, SynRecv),
            t(10, Side::Server, 1, SynRecv, Established),
            t(1000, Side::Server, 1, Established, CloseWait),
            t(1500, Side::Server, 1, CloseWait, LastAck),
            t(1600, Side::Server, 1, LastAck, Close),
            t(20, Side::Server, 2, SynRecv, Established),
            t(3000, Side::Server, 2, Established, CloseWait),
            t(5, Side::Client, 1, SynSent, Established),
        ];
        let tr = analyse(ev, 0);
        assert_eq!(tr.events, 8);
        assert_eq!(tr.count(Side::Server, CloseWait, LastAck), 1);
        assert_eq!(tr.count(Side::Server, Established, CloseWait), 2);
        assert_eq!(tr.path(Side::Server, &[Established, CloseWait]), 1);
        assert_eq!(tr.path(Side::Server, &[Established, CloseWait, LastAck, Close]), 1);
        let cw =
            tr.durations.iter().find(|d| d.side == Side::Server && d.state == CloseWait).unwrap();
        assert_eq!((cw.connections, cw.min_ms, cw.max_ms), (1, 0.5, 0.5));
        let est =
            tr.durations.iter().find(|d| d.state == Established && d.side == Side::Server).unwrap();
        assert_eq!((est.connections, est.min_ms, est.max_ms), (2, 0.99, 2.98));
    }

    /// `n` connections one after another, 10 µs apart: the clients connect, then each closes;
    /// the server closes too where `server_closes`, 5 µs after the client.
    fn closes(n: u16, server_closes: bool) -> Vec<Transition> {
        let mut v = Vec::new();
        for i in 0..n {
            let (p, t0) = (40000 + i, i64::from(i) * 10);
            v.push(t(t0, Side::Client, p, Close, SynSent));
            v.push(t(t0 + 1, Side::Server, p, Listen, SynRecv));
            v.push(t(t0 + 1, Side::Server, p, SynRecv, Established));
            v.push(t(t0 + 1, Side::Client, p, SynSent, Established));
            let c = i64::from(n) * 10 + 950 + i64::from(i) * 10;
            v.push(t(c, Side::Client, p, Established, FinWait1));
            v.push(t(c + 1, Side::Server, p, Established, CloseWait));
            v.push(t(c + 1, Side::Client, p, FinWait1, FinWait2));
            if server_closes {
                v.push(t(c + 5, Side::Server, p, CloseWait, LastAck));
                v.push(t(c + 6, Side::Server, p, LastAck, Close));
                v.push(t(c + 6, Side::Client, p, FinWait2, Close));
            } else {
                v.push(t(c + 1, Side::Client, p, FinWait2, Close));
            }
        }
        v
    }

    fn level(ls: &[Level], side: Side, state: TcpState) -> &Level {
        ls.iter().find(|l| l.side == side && l.state == state).unwrap()
    }

    #[test]
    fn issue_21_levels_count_every_socket_where_the_table_shows_it() {
        let leak = levels(&closes(5, false));
        let estab = level(&leak, Side::Client, Established);
        assert_eq!(estab.peak(), 5, "every connection open at once: {estab:?}");
        assert_eq!(estab.points.iter().find(|p| p.1 == 5).unwrap().0, 41, "when the 5th came");
        let cw = level(&leak, Side::Server, CloseWait);
        assert_eq!(cw.points.first(), Some(&(1001, 1)), "nothing before it happened");
        assert_eq!(cw.points.last(), Some(&(1041, 5)));
        // The client's socket was handed to a FIN-WAIT-2 timewait socket: the table's count.
        assert_eq!(level(&leak, Side::Client, FinWait2).points.last().unwrap().1, 5);
        assert!(!leak.iter().any(|l| l.state == TimeWait));
        let fixed = levels(&closes(5, true));
        assert_eq!(level(&fixed, Side::Client, TimeWait).points.last().unwrap().1, 5);
        assert_eq!(level(&fixed, Side::Client, FinWait2).points.last().unwrap().1, 0);
        assert_eq!(level(&fixed, Side::Server, LastAck).peak(), 1);
        assert!(!fixed.iter().any(|l| l.state == Listen || l.state == Close));
    }

    #[test]
    fn a_long_level_keeps_its_peak() {
        let v = closes(3000, false);
        let ls = levels(&v);
        let estab = level(&ls, Side::Client, Established);
        assert!(estab.points.len() <= LEVEL_POINTS + 2, "{}", estab.points.len());
        assert_eq!(estab.peak(), 3000);
    }
}
