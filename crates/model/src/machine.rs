//! The close half of TCP's state machine with a run's numbers on it: each state's sockets at the
//! end, each arrow's count of transitions (from the kernel's tracepoint), for each side, and the
//! states where sockets are stuck marked.
//!
//! Linux keeps a closing socket whole only until it can hand the connection to a **timewait
//! socket**, a small object of its own that the table shows as TIME-WAIT, or as FIN-WAIT-2 when
//! the peer's FIN has not come yet (an orphan whose owner closed it). The tracepoint reports the
//! hand-over as the full socket's FIN-WAIT-1, FIN-WAIT-2 or CLOSING → CLOSE and never sees the
//! timewait socket again. So the machine draws the timewait sockets as boxes of their own (the
//! TIME-WAIT box, and a FIN-WAIT-2 timewait box), each hand-over as an arrow into them, and the
//! counts add up: for every box, the arrows in equal its sockets at the end plus the arrows out
//! (ESTAB's arrow in is the connections opened; CLOSED keeps every socket that got there).
//!
//! Where the tracepoint is there, a full socket's count is what entered its state less what left
//! it; a timewait box's count is the table's for its state less the full sockets in it. Which
//! timewait box a FIN-WAIT-2 hand-over went to is the table's at the end (the tracepoint does not
//! say): the FIN-WAIT-2 timewait sockets there came from FIN-WAIT-2, the rest went to TIME-WAIT.
//! A timewait socket lives [`TIMEWAIT_LIFE`]; one that ended within the run left by "2 MSL".

use serde::{Deserialize, Serialize};

use crate::evidence::TransitionCount;
use crate::report::{Report, Side};
use crate::state::TcpState;

/// The full sockets' states drawn, in the order the diagrams lay them out.
pub const STATES: [TcpState; 7] = [
    TcpState::Established,
    TcpState::FinWait1,
    TcpState::FinWait2,
    TcpState::Closing,
    TcpState::CloseWait,
    TcpState::LastAck,
    TcpState::Close,
];

/// How long a timewait socket lives, as the boxes say: Linux's TIME-WAIT is 60 s (TCP_TIMEWAIT_LEN),
/// an orphan's FIN-WAIT-2 `net.ipv4.tcp_fin_timeout` (60 s unless set).
pub const TIMEWAIT_LIFE: &str = "60 s";

/// Where a socket is: a full socket in a state, or a timewait socket in one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "socket", content = "state")]
pub enum Place {
    /// A full socket, in this state.
    Full(TcpState),
    /// A timewait socket (TIME-WAIT, or FIN-WAIT-2 before the peer's FIN).
    Timewait(TcpState),
}

impl Place {
    /// The state the table shows.
    pub fn state(self) -> TcpState {
        match self {
            Place::Full(s) | Place::Timewait(s) => s,
        }
    }

    /// How a reader names it: `CLOSE-WAIT`, `TIME-WAIT`, `FIN-WAIT-2 (timewait)`.
    pub fn name(self) -> String {
        match self {
            Place::Timewait(TcpState::FinWait2) => "FIN-WAIT-2 (timewait)".into(),
            p => p.state().name().into(),
        }
    }
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// The timewait boxes.
const TW: Place = Place::Timewait(TcpState::TimeWait);
const FW2_TW: Place = Place::Timewait(TcpState::FinWait2);

/// The textbook's arrows between full sockets and what moves a socket along each.
pub const TEXTBOOK: [(TcpState, TcpState, &str); 6] = [
    (TcpState::Established, TcpState::FinWait1, "close / FIN"),
    (TcpState::Established, TcpState::CloseWait, "FIN / ACK"),
    (TcpState::FinWait1, TcpState::FinWait2, "ACK"),
    (TcpState::FinWait1, TcpState::Closing, "FIN / ACK"),
    (TcpState::CloseWait, TcpState::LastAck, "close / FIN"),
    (TcpState::LastAck, TcpState::Close, "ACK"),
];

/// One box with its sockets at the end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// The box.
    pub place: Place,
    /// Server sockets in it at the end (for CLOSED: every socket that got there).
    pub server: u32,
    /// Client sockets in it at the end.
    pub client: u32,
    /// Sockets sit here at the end where they should have moved on (every box but TIME-WAIT
    /// and CLOSED): the server's count is stuck.
    pub stuck_server: bool,
    /// The same for the client side.
    pub stuck_client: bool,
}

impl Node {
    /// The state the table shows for this box.
    pub fn state(&self) -> TcpState {
        self.place.state()
    }

    /// The count and the stuck mark of one side.
    pub fn on(&self, side: Side) -> (u32, bool) {
        match side {
            Side::Server => (self.server, self.stuck_server),
            Side::Client => (self.client, self.stuck_client),
        }
    }
}

/// One arrow with its transitions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Edge {
    /// The box left.
    pub from: Place,
    /// The box entered.
    pub to: Place,
    /// What moves a socket along it (the textbook's event / action), or the kernel's reason.
    pub label: String,
    /// Server sockets that made it.
    pub server: u64,
    /// Client sockets that made it.
    pub client: u64,
    /// One of the textbook's arrows (false: the kernel took a way the textbook does not draw).
    pub textbook: bool,
}

impl Edge {
    /// The count of one side.
    pub fn on(&self, side: Side) -> u64 {
        match side {
            Side::Server => self.server,
            Side::Client => self.client,
        }
    }
}

/// The close half of the state machine with a run's counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// The boxes: the full sockets' states in [`STATES`] order, then TIME-WAIT and the
    /// FIN-WAIT-2 timewait box.
    pub nodes: Vec<Node>,
    /// The textbook's arrows, the hand-overs to timewait sockets, then the kernel's others.
    pub edges: Vec<Edge>,
    /// Connections that reached ESTAB on the server's side (the arrow into ESTAB).
    pub opened_server: u64,
    /// The same on the client's side.
    pub opened_client: u64,
    /// Whether the transition counts are there (false: tracefs could not be used).
    pub transitions: bool,
    /// Transitions the kernel dropped (nonzero: arrow counts are lower bounds).
    pub lost: u64,
}

impl Machine {
    /// The machine for a report: its last sample and its transitions.
    pub fn of(r: &Report) -> Machine {
        Machine::build(
            |side, state| r.final_counts.get(side, state),
            &r.transitions.counts,
            r.transitions.available,
            r.transitions.lost,
        )
    }

    /// The machine from counts at one moment: `now(side, state)` sockets in the table, `made`
    /// the transitions so far. The live view builds it from the latest sample.
    pub fn build(
        now: impl Fn(Side, TcpState) -> u32,
        made: &[TransitionCount],
        transitions: bool,
        lost: u64,
    ) -> Machine {
        let sides = Side::BOTH.map(|side| Tally::of(side, &now, made, transitions && lost == 0));
        let pair = |f: &dyn Fn(&Tally) -> u64| (f(&sides[0]), f(&sides[1]));
        let mut edges = Vec::new();
        let mut push = |from, to, label: &str, textbook, (server, client): (u64, u64)| {
            edges.push(Edge { from, to, label: label.into(), server, client, textbook });
        };
        for (from, to, label) in TEXTBOOK {
            push(Place::Full(from), Place::Full(to), label, true, pair(&|t| t.made(from, to)));
        }
        use TcpState::*;
        push(Place::Full(FinWait1), TW, "FIN+ACK / ACK", true, pair(&|t| t.made(FinWait1, Close)));
        push(Place::Full(FinWait2), TW, "FIN / ACK", true, pair(&|t| t.fw2_to_tw()));
        push(Place::Full(Closing), TW, "ACK", true, pair(&|t| t.made(Closing, Close)));
        push(Place::Full(FinWait2), FW2_TW, "orphaned", false, pair(&|t| t.fw2_orphans()));
        push(FW2_TW, TW, "FIN / ACK", false, (0, 0));
        push(TW, Place::Full(Close), "2 MSL", true, pair(&|t| t.ended()));
        let mut seen: Vec<(TcpState, TcpState)> = made.iter().map(|c| (c.from, c.to)).collect();
        seen.sort();
        seen.dedup();
        for (from, to) in seen {
            let drawn = STATES.contains(&from) && STATES.contains(&to) && from != to;
            let handed = matches!((from, to), (FinWait1 | FinWait2 | Closing, Close));
            let known = TEXTBOOK.iter().any(|&(a, b, _)| (a, b) == (from, to));
            if drawn && !handed && !known {
                let label = if to == Close { "RST or abort" } else { "" };
                push(Place::Full(from), Place::Full(to), label, false, pair(&|t| t.made(from, to)));
            }
        }
        let nodes: Vec<Node> = STATES
            .iter()
            .map(|&s| Place::Full(s))
            .chain([TW, FW2_TW])
            .map(|place| {
                let (server, client) =
                    (sides[0].count(place, &edges), sides[1].count(place, &edges));
                let stuckable = !matches!(place, TW | Place::Full(Close));
                Node {
                    place,
                    server,
                    client,
                    stuck_server: stuckable && server > 0,
                    stuck_client: stuckable && client > 0,
                }
            })
            .collect();
        Machine {
            nodes,
            edges,
            opened_server: sides[0].opened(),
            opened_client: sides[1].opened(),
            transitions,
            lost,
        }
    }

    /// The box of a full socket's state (TIME-WAIT's is the timewait box).
    pub fn node(&self, state: TcpState) -> Option<&Node> {
        let place = if state == TcpState::TimeWait { TW } else { Place::Full(state) };
        self.place(place)
    }

    /// A box.
    pub fn place(&self, place: Place) -> Option<&Node> {
        self.nodes.iter().find(|n| n.place == place)
    }

    /// The arrow `from -> to` between full sockets' states, or into TIME-WAIT, if drawn.
    pub fn edge(&self, from: TcpState, to: TcpState) -> Option<&Edge> {
        let to = if to == TcpState::TimeWait { TW } else { Place::Full(to) };
        self.arrow(Place::Full(from), to)
    }

    /// The arrow between two boxes, if drawn.
    pub fn arrow(&self, from: Place, to: Place) -> Option<&Edge> {
        self.edges.iter().find(|e| e.from == from && e.to == to)
    }

    /// The connections that reached ESTAB on `side`.
    pub fn opened(&self, side: Side) -> u64 {
        match side {
            Side::Server => self.opened_server,
            Side::Client => self.opened_client,
        }
    }

    /// Where the counts do not add up on `side`: each box whose arrows in are not its sockets
    /// plus its arrows out, as `(box, in, sockets + out)`. Empty for a run whose tracepoint lost
    /// nothing.
    pub fn imbalance(&self, side: Side) -> Vec<(Place, u64, u64)> {
        self.nodes
            .iter()
            .filter_map(|n| {
                let mut into: u64 =
                    self.edges.iter().filter(|e| e.to == n.place).map(|e| e.on(side)).sum();
                if n.place == Place::Full(TcpState::Established) {
                    into += self.opened(side);
                }
                let out: u64 =
                    self.edges.iter().filter(|e| e.from == n.place).map(|e| e.on(side)).sum();
                let kept = u64::from(n.on(side).0) + out;
                (into != kept).then_some((n.place, into, kept))
            })
            .collect()
    }
}

/// One side's counts: the table's at one moment and the transitions so far.
struct Tally<'a> {
    side: Side,
    table: [u32; 2],
    made: &'a [TransitionCount],
    /// The transitions are whole (there, and none lost): counts are worked out from them.
    whole: bool,
    /// The full sockets in each drawn state, entered less left (or the table's).
    full: Vec<(TcpState, u32)>,
}

impl<'a> Tally<'a> {
    fn of(
        side: Side,
        now: &impl Fn(Side, TcpState) -> u32,
        made: &'a [TransitionCount],
        whole: bool,
    ) -> Tally<'a> {
        let mut t = Tally {
            side,
            table: [now(side, TcpState::FinWait2), now(side, TcpState::TimeWait)],
            made,
            whole,
            full: Vec::new(),
        };
        t.full = STATES
            .iter()
            .map(|&st| {
                let n = if whole && st != TcpState::Close {
                    t.entered(st).saturating_sub(t.left(st)) as u32
                } else {
                    now(side, st)
                };
                (st, n)
            })
            .collect();
        t
    }

    fn made(&self, from: TcpState, to: TcpState) -> u64 {
        self.made
            .iter()
            .filter(|c| c.side == self.side && c.from == from && c.to == to)
            .map(|c| c.connections)
            .sum()
    }

    fn entered(&self, st: TcpState) -> u64 {
        self.made.iter().filter(|c| c.side == self.side && c.to == st).map(|c| c.connections).sum()
    }

    fn left(&self, st: TcpState) -> u64 {
        self.made
            .iter()
            .filter(|c| c.side == self.side && c.from == st)
            .map(|c| c.connections)
            .sum()
    }

    fn opened(&self) -> u64 {
        self.entered(TcpState::Established)
    }

    fn full(&self, st: TcpState) -> u32 {
        self.full.iter().find(|(s, _)| *s == st).map_or(0, |(_, n)| *n)
    }

    /// Timewait sockets in FIN-WAIT-2 at the end: the table's FIN-WAIT-2 less the full ones.
    fn fw2_timewait(&self) -> u32 {
        self.table[0].saturating_sub(self.full(TcpState::FinWait2))
    }

    /// FIN-WAIT-2 hand-overs that went to a FIN-WAIT-2 timewait socket (see the module's doc).
    fn fw2_orphans(&self) -> u64 {
        self.made(TcpState::FinWait2, TcpState::Close).min(u64::from(self.fw2_timewait()))
    }

    fn fw2_to_tw(&self) -> u64 {
        self.made(TcpState::FinWait2, TcpState::Close) - self.fw2_orphans()
    }

    /// Timewait sockets that ended within the run: handed to TIME-WAIT, and not there now.
    fn ended(&self) -> u64 {
        use TcpState::*;
        let into = self.made(FinWait1, Close) + self.fw2_to_tw() + self.made(Closing, Close);
        into.saturating_sub(u64::from(self.table[1]))
    }

    /// The sockets in a box at the end (CLOSED: every socket that got there).
    fn count(&self, place: Place, edges: &[Edge]) -> u32 {
        match place {
            Place::Full(TcpState::Close) => {
                edges.iter().filter(|e| e.to == place).map(|e| e.on(self.side)).sum::<u64>() as u32
            }
            Place::Full(st) => self.full(st),
            TW => self.table[1],
            Place::Timewait(_) if self.whole => self.fw2_orphans() as u32,
            Place::Timewait(_) => 0,
        }
    }
}

impl Side {
    /// Both sides, server first.
    pub const BOTH: [Side; 2] = [Side::Server, Side::Client];
}

#[cfg(test)]
mod tests {
    use super::*;
    use TcpState::*;

    fn count(side: Side, from: TcpState, to: TcpState, n: u64) -> TransitionCount {
        TransitionCount { side, from, to, connections: n }
    }

    /// The transitions of `n` connections: the server's path and the client's, as the kernel
    /// reports them (from SYN-RECV and SYN-SENT on).
    fn paths(n: u64, server: &[TcpState], client: &[TcpState]) -> Vec<TransitionCount> {
        let mut out = Vec::new();
        for (side, path, first) in
            [(Side::Server, server, SynRecv), (Side::Client, client, SynSent)]
        {
            let mut from = first;
            for &to in path {
                out.push(count(side, from, to, n));
                from = to;
            }
        }
        out
    }

    fn machine(made: &[TransitionCount], table: &[(Side, TcpState, u32)]) -> Machine {
        let now = |side, st| {
            table.iter().filter(|(s, t, _)| *s == side && *t == st).map(|(_, _, n)| *n).sum()
        };
        Machine::build(now, made, true, 0)
    }

    fn leak() -> Machine {
        let made = paths(100, &[Established, CloseWait], &[Established, FinWait1, FinWait2, Close]);
        machine(&made, &[(Side::Server, CloseWait, 100), (Side::Client, FinWait2, 100)])
    }

    fn fixed() -> Machine {
        let made = paths(
            100,
            &[Established, CloseWait, LastAck, Close],
            &[Established, FinWait1, FinWait2, Close],
        );
        machine(&made, &[(Side::Client, TimeWait, 100)])
    }

    #[test]
    fn issue_21_the_counts_add_up_in_leak_fixed_and_parent_closes() {
        // parent-closes makes the same transitions as fixed and ends the same way.
        for (name, m) in [("leak", leak()), ("fixed", fixed())] {
            for side in Side::BOTH {
                assert_eq!(m.imbalance(side), [], "{name} {side}");
                assert_eq!(m.opened(side), 100, "{name} {side}");
            }
        }
    }

    #[test]
    fn issue_21_the_leak_s_client_waits_in_a_fin_wait_2_timewait_socket() {
        let m = leak();
        let cw = m.node(CloseWait).unwrap();
        assert_eq!((cw.server, cw.stuck_server, cw.client), (100, true, 0));
        // The full socket left FIN-WAIT-2 (handed over); the timewait socket holds the 100.
        let fw2 = m.node(FinWait2).unwrap();
        assert_eq!((fw2.client, fw2.stuck_client), (0, false));
        let tw = m.place(FW2_TW).unwrap();
        assert_eq!((tw.client, tw.stuck_client), (100, true));
        assert_eq!(m.arrow(Place::Full(FinWait2), FW2_TW).unwrap().client, 100);
        assert_eq!(m.edge(FinWait2, TimeWait).unwrap().client, 0);
        assert_eq!(m.node(TimeWait).unwrap().client, 0);
    }

    #[test]
    fn issue_21_fixed_s_time_wait_is_what_the_arrows_into_it_brought() {
        let m = fixed();
        assert_eq!(m.edge(FinWait2, TimeWait).unwrap().client, 100);
        assert_eq!(m.node(TimeWait).unwrap().client, 100);
        assert_eq!(m.place(FW2_TW).unwrap().client, 0);
        assert_eq!(m.node(Close).unwrap().server, 100, "every server socket got to CLOSED");
        assert_eq!(m.arrow(TW, Place::Full(Close)).unwrap().client, 0, "none ended yet");
    }

    #[test]
    fn a_reset_is_an_arrow_of_its_own_and_without_transitions_the_table_counts() {
        let mut made = paths(10, &[Established, Close], &[Established, Close]);
        made.retain(|c| c.side == Side::Server || c.to != Close);
        let m = machine(&made, &[(Side::Client, Established, 10)]);
        let rst = m.edge(Established, Close).unwrap();
        assert_eq!((rst.server, rst.client, rst.textbook), (10, 0, false));
        assert_eq!(rst.label, "RST or abort");
        assert!(m.node(Established).unwrap().stuck_client);
        assert_eq!(m.imbalance(Side::Server), []);
        let blind = Machine::build(|_, st| u32::from(st == FinWait2) * 7, &[], false, 0);
        assert_eq!(blind.node(FinWait2).unwrap().client, 7);
        assert_eq!(blind.place(FW2_TW).unwrap().client, 0);
    }
}
