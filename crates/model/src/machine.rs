//! The close half of TCP's state machine with a run's numbers on it: each state's count at the
//! end (from the last sample), each arrow's count of transitions (from the kernel's tracepoint),
//! for each side, and the states where sockets are stuck marked.
//!
//! The arrows are RFC 9293's (figure 5) from ESTAB on, plus any other transition the kernel made
//! between these states in the run (a reset, a socket handed to a timewait socket): every
//! transition count of the report between two of these states is on exactly one arrow.

use serde::{Deserialize, Serialize};

use crate::report::{Report, Side};
use crate::state::TcpState;

/// The states drawn, in the order the diagrams lay them out.
pub const STATES: [TcpState; 8] = [
    TcpState::Established,
    TcpState::FinWait1,
    TcpState::FinWait2,
    TcpState::Closing,
    TcpState::TimeWait,
    TcpState::CloseWait,
    TcpState::LastAck,
    TcpState::Close,
];

/// The textbook's arrows and what moves a socket along each.
pub const TEXTBOOK: [(TcpState, TcpState, &str); 10] = [
    (TcpState::Established, TcpState::FinWait1, "close / FIN"),
    (TcpState::Established, TcpState::CloseWait, "FIN / ACK"),
    (TcpState::FinWait1, TcpState::FinWait2, "ACK"),
    (TcpState::FinWait1, TcpState::Closing, "FIN / ACK"),
    (TcpState::FinWait1, TcpState::TimeWait, "FIN+ACK / ACK"),
    (TcpState::FinWait2, TcpState::TimeWait, "FIN / ACK"),
    (TcpState::Closing, TcpState::TimeWait, "ACK"),
    (TcpState::TimeWait, TcpState::Close, "2 MSL"),
    (TcpState::CloseWait, TcpState::LastAck, "close / FIN"),
    (TcpState::LastAck, TcpState::Close, "ACK"),
];

/// One state with its sockets at the end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// The state.
    pub state: TcpState,
    /// Server sockets in it at the end.
    pub server: u32,
    /// Client sockets in it at the end.
    pub client: u32,
    /// Sockets sit here at the end where they should have moved on (every state but TIME-WAIT
    /// and CLOSED): the server's or the client's count is stuck.
    pub stuck_server: bool,
    /// The same for the client side.
    pub stuck_client: bool,
}

/// One arrow with its transitions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Edge {
    /// The state left.
    pub from: TcpState,
    /// The state entered.
    pub to: TcpState,
    /// What moves a socket along it (the textbook's event / action), or the kernel's reason.
    pub label: String,
    /// Server sockets that made it.
    pub server: u64,
    /// Client sockets that made it.
    pub client: u64,
    /// One of the textbook's arrows (false: the kernel took a way the textbook does not draw).
    pub textbook: bool,
}

/// The close half of the state machine with a run's counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// The states, in [`STATES`] order.
    pub nodes: Vec<Node>,
    /// The textbook's arrows, then the kernel's others.
    pub edges: Vec<Edge>,
    /// Whether the transition counts are there (false: tracefs could not be used).
    pub transitions: bool,
    /// Transitions the kernel dropped (nonzero: arrow counts are lower bounds).
    pub lost: u64,
}

impl Machine {
    /// The machine for a report: its last sample and its transitions.
    pub fn of(r: &Report) -> Machine {
        let counts = |side, from, to| r.transitions.count(side, from, to);
        Machine::build(
            |side, state| r.final_counts.get(side, state),
            counts,
            r.transitions.counts.iter().map(|c| (c.from, c.to)),
            r.transitions.available,
            r.transitions.lost,
        )
    }

    /// The machine from counts at one moment: `now(side, state)` sockets, `made(side, from,
    /// to)` transitions so far, `seen` the transitions that occurred (for the kernel's own
    /// arrows). The live view builds it from the latest sample.
    pub fn build(
        now: impl Fn(Side, TcpState) -> u32,
        made: impl Fn(Side, TcpState, TcpState) -> u64,
        seen: impl Iterator<Item = (TcpState, TcpState)>,
        transitions: bool,
        lost: u64,
    ) -> Machine {
        let nodes = STATES
            .iter()
            .map(|&state| {
                let (server, client) = (now(Side::Server, state), now(Side::Client, state));
                let stuckable = !matches!(state, TcpState::TimeWait | TcpState::Close);
                Node {
                    state,
                    server,
                    client,
                    stuck_server: stuckable && server > 0,
                    stuck_client: stuckable && client > 0,
                }
            })
            .collect();
        let mut edges: Vec<Edge> = TEXTBOOK
            .iter()
            .map(|&(from, to, label)| Edge {
                from,
                to,
                label: label.into(),
                server: made(Side::Server, from, to),
                client: made(Side::Client, from, to),
                textbook: true,
            })
            .collect();
        for (from, to) in seen {
            let drawn = STATES.contains(&from) && STATES.contains(&to) && from != to;
            if !drawn || edges.iter().any(|e| e.from == from && e.to == to) {
                continue;
            }
            edges.push(Edge {
                from,
                to,
                label: kernel_reason(from, to).into(),
                server: made(Side::Server, from, to),
                client: made(Side::Client, from, to),
                textbook: false,
            });
        }
        Machine { nodes, edges, transitions, lost }
    }

    /// The node of a state.
    pub fn node(&self, state: TcpState) -> Option<&Node> {
        self.nodes.iter().find(|n| n.state == state)
    }

    /// The arrow `from -> to`, if drawn.
    pub fn edge(&self, from: TcpState, to: TcpState) -> Option<&Edge> {
        self.edges.iter().find(|e| e.from == from && e.to == to)
    }
}

/// Why the kernel moved a socket along an arrow the textbook does not draw.
fn kernel_reason(from: TcpState, to: TcpState) -> &'static str {
    use TcpState::*;
    match (from, to) {
        (FinWait1 | FinWait2 | Closing, Close) => "to a timewait socket",
        (_, Close) => "RST or abort",
        _ => "",
    }
}

impl Side {
    /// Both sides, server first.
    pub const BOTH: [Side; 2] = [Side::Server, Side::Client];
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::{TransitionCount, Transitions};
    use TcpState::*;

    #[test]
    fn every_transition_between_drawn_states_is_on_one_arrow() {
        let t = Transitions {
            available: true,
            counts: vec![
                TransitionCount {
                    side: Side::Server,
                    from: Established,
                    to: CloseWait,
                    connections: 100,
                },
                TransitionCount {
                    side: Side::Client,
                    from: Established,
                    to: FinWait1,
                    connections: 100,
                },
                TransitionCount {
                    side: Side::Client,
                    from: FinWait1,
                    to: FinWait2,
                    connections: 100,
                },
                TransitionCount { side: Side::Client, from: FinWait2, to: Close, connections: 100 },
                TransitionCount {
                    side: Side::Server,
                    from: SynRecv,
                    to: Established,
                    connections: 100,
                },
            ],
            ..Transitions::default()
        };
        let m = Machine::build(
            |side, st| if side == Side::Server && st == CloseWait { 100 } else { 0 },
            |side, from, to| t.count(side, from, to),
            t.counts.iter().map(|c| (c.from, c.to)),
            true,
            0,
        );
        for c in t.counts.iter().filter(|c| STATES.contains(&c.from)) {
            let e = m.edge(c.from, c.to).expect("drawn");
            let n = if c.side == Side::Server { e.server } else { e.client };
            assert_eq!(n, c.connections);
        }
        let handed = m.edge(FinWait2, Close).unwrap();
        assert!(!handed.textbook);
        assert_eq!(handed.label, "to a timewait socket");
        let cw = m.node(CloseWait).unwrap();
        assert!(cw.stuck_server && !cw.stuck_client);
        assert_eq!(m.edges.len(), TEXTBOOK.len() + 1);
    }
}
