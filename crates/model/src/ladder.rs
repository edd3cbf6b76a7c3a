//! The ladder of one connection: the textbook picture of the close sequence, drawn from what
//! really happened. Two columns (client, server), time going down, each segment an arrow from
//! its sender with its flags, each side's state written on the row where it changed. Where the
//! sequence stops, the ladder says so and names what holds the socket.
//!
//! Computed once here from a report's [`ConnectionTrace`]s and holders; the text, SVG, HTML and
//! live renderings only draw it.
//!
//! Placing a state: the kernel changes a socket's state just before it sends a segment
//! (`close()` moves a socket to FIN-WAIT-1 or LAST-ACK, then its FIN leaves) or as it receives
//! one (the FIN that moves a server to CLOSE-WAIT). The first kind goes on the row of the segment
//! it leads to, the second on the row of the segment it answers, each within [`SAME_ROW_US`];
//! otherwise a state has a row of its own.
//!
//! A server's SYN-RECV goes on the client's SYN: the listener answers it with a request socket,
//! and the kernel reports the full socket's SYN-RECV only when the handshake's ACK comes.
//!
//! The tracepoint reports a socket handed to a timewait socket as FIN-WAIT → CLOSE; the table
//! shows the timewait socket as TIME-WAIT once the peer's FIN came, FIN-WAIT-2 before. The
//! ladder writes what the table shows.

use serde::{Deserialize, Serialize};

use crate::evidence::{ConnectionTrace, Step};
use crate::report::{Holder, Report, Role, Side};
use crate::state::TcpState;

/// A state change and a segment this close (µs) are one event of the protocol.
pub const SAME_ROW_US: i64 = 2_000;

/// A state stamped this little (µs) before a segment its side receives answers that segment: the
/// capture's and the tracepoint's stamps agree to a few µs, not exactly.
pub const TIE_US: i64 = 100;

/// One connection's ladder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ladder {
    /// The client's port: it names the connection.
    pub client_port: u16,
    /// Connections of the run that went the same way (0: kept only for coming early).
    pub like_it: u64,
    /// Connections in the run.
    pub connections: u64,
    /// The rows, in time order.
    pub rows: Vec<Row>,
    /// Where the sequence stopped and what holds the socket there; empty when both sides
    /// finished.
    pub end: Vec<String>,
    /// What is missing from the picture (a witness that could not be used).
    pub notes: Vec<String>,
}

/// One row: a segment, a state written on either side, or both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// Milliseconds since LISTEN.
    pub t_ms: f64,
    /// The segment, if the row has one.
    pub arrow: Option<Arrow>,
    /// The state the client's socket entered.
    pub client: Option<TcpState>,
    /// The state the server's socket entered.
    pub server: Option<TcpState>,
}

/// One segment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Arrow {
    /// The sender.
    pub from: Side,
    /// Flags and payload: `FIN,ACK`, `PSH,ACK 5 B`.
    pub label: String,
    /// Whether it carries a FIN (drawn in the FIN colour) or an RST.
    pub fin: bool,
    /// Whether it carries an RST.
    pub rst: bool,
}

impl Row {
    /// The state written on `side`'s column.
    pub fn state(&self, side: Side) -> Option<TcpState> {
        match side {
            Side::Client => self.client,
            Side::Server => self.server,
        }
    }

    fn slot(&mut self, side: Side) -> &mut Option<TcpState> {
        match side {
            Side::Client => &mut self.client,
            Side::Server => &mut self.server,
        }
    }
}

/// Why a ladder could not be drawn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LadderError {
    /// The run kept no connection step by step (the witnesses were not there, or no client came).
    NoConnections(String),
    /// `--conn PORT` named a connection the report did not keep; the ports it kept.
    NotKept(u16, Vec<u16>),
}

impl std::fmt::Display for LadderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LadderError::NoConnections(why) => write!(f, "no connection to draw: {why}"),
            LadderError::NotKept(port, kept) => {
                let kept: Vec<String> = kept.iter().map(u16::to_string).collect();
                write!(
                    f,
                    "connection :{port} is not in the report (it keeps {}: {})",
                    kept.len(),
                    kept.join(", ")
                )
            }
        }
    }
}

impl Ladder {
    /// The ladders of every distinct way the run's connections went (the representatives, most
    /// common first), or of the one connection `conn` names.
    pub fn of(r: &Report, conn: Option<u16>) -> Result<Vec<Ladder>, LadderError> {
        if r.connections.is_empty() {
            let why = match (&r.transitions.note, &r.packets.note) {
                (Some(t), _) if !r.transitions.available => t.clone(),
                (_, Some(p)) if !r.packets.available => p.clone(),
                _ => "the run saw no connection".to_string(),
            };
            return Err(LadderError::NoConnections(why));
        }
        let chosen: Vec<&ConnectionTrace> = match conn {
            Some(port) => match r.connections.iter().find(|c| c.client_port == port) {
                Some(c) => vec![c],
                None => {
                    let kept = r.connections.iter().map(|c| c.client_port).collect();
                    return Err(LadderError::NotKept(port, kept));
                }
            },
            None => {
                let reps: Vec<&ConnectionTrace> =
                    r.connections.iter().filter(|c| c.like_it > 0).collect();
                if reps.is_empty() {
                    r.connections.iter().take(1).collect()
                } else {
                    reps
                }
            }
        };
        Ok(chosen.into_iter().map(|c| Ladder::draw(r, c)).collect())
    }

    /// The ladder of the run's most common way: the one a summary shows.
    pub fn representative(r: &Report) -> Option<Ladder> {
        Ladder::of(r, None).ok().and_then(|v| v.into_iter().next())
    }

    /// The ladder of one connection of the report.
    pub fn draw(r: &Report, c: &ConnectionTrace) -> Ladder {
        let mut notes = Vec::new();
        if !r.packets.available {
            notes.push(format!(
                "no segments: {}",
                r.packets.note.as_deref().unwrap_or("no packet capture")
            ));
        }
        if !r.transitions.available {
            notes.push(format!(
                "no states: {}",
                r.transitions.note.as_deref().unwrap_or("no tracepoint")
            ));
        }
        let rows = rows(&c.steps);
        Ladder {
            client_port: c.client_port,
            like_it: c.like_it,
            connections: r.packets.connections.max(u64::from(r.clients)),
            end: end(r, c, &rows),
            rows,
            notes,
        }
    }

    /// The ladder of a connection still in progress (the live view): its rows so far, no end
    /// said yet.
    pub fn so_far(c: &ConnectionTrace) -> Ladder {
        Ladder {
            client_port: c.client_port,
            like_it: 0,
            connections: 0,
            rows: rows(&c.steps),
            end: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// The last state written on `side`'s column.
    pub fn last_state(&self, side: Side) -> Option<TcpState> {
        last_state(&self.rows, side)
    }

    /// Whether `side` sent a segment with a FIN.
    pub fn sent_fin(&self, side: Side) -> bool {
        sent_fin(&self.rows, side)
    }
}

fn last_state(rows: &[Row], side: Side) -> Option<TcpState> {
    rows.iter().rev().find_map(|row| row.state(side))
}

fn sent_fin(rows: &[Row], side: Side) -> bool {
    rows.iter().any(|row| row.arrow.as_ref().is_some_and(|a| a.from == side && a.fin))
}

fn rows(steps: &[Step]) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    let mut pending: [Option<(i64, TcpState)>; 2] = [None, None];
    let mut answers: [Option<TcpState>; 2] = [None, None];
    let idx = |side: Side| usize::from(side == Side::Server);
    let mut got_fin = [false, false];
    let mut began = [false, false];
    for (i, step) in steps.iter().enumerate() {
        match step {
            Step::Segment { t_us, side, flags, len } => {
                let names: Vec<&str> = flags.split(',').collect();
                let fin = names.contains(&"FIN");
                let mut row = Row {
                    t_ms: *t_us as f64 / 1000.0,
                    arrow: Some(Arrow {
                        from: *side,
                        label: if *len > 0 { format!("{flags} {len} B") } else { flags.clone() },
                        fin,
                        rst: names.contains(&"RST"),
                    }),
                    client: None,
                    server: None,
                };
                if let Some((_, st)) = pending[idx(*side)].take() {
                    *row.slot(*side) = Some(st);
                }
                if let Some(st) = answers[idx(other(*side))].take() {
                    *row.slot(other(*side)) = Some(st);
                }
                if fin {
                    got_fin[idx(other(*side))] = true;
                }
                rows.push(row);
            }
            Step::State { t_us, side, from, to } => {
                let s = idx(*side);
                // The first state a side is seen leaving is where it began (SYN-SENT,
                // SYN-RECV): written on the first segment it sent or received.
                if !began[s] && matches!(from, TcpState::SynSent | TcpState::SynRecv) {
                    let first = rows.iter_mut().find(|r| r.arrow.is_some());
                    match first {
                        Some(row) if row.state(*side).is_none() => *row.slot(*side) = Some(*from),
                        _ => {}
                    }
                }
                began[s] = true;
                let Some(shown) = shown(*from, *to, got_fin[s]) else { continue };
                // A listener answers a SYN with a request socket, in SYN-RECV from the SYN on;
                // the kernel makes the full socket (and reports it) only when the ACK comes.
                if shown == TcpState::SynRecv {
                    let syn = rows.iter_mut().find(|r| {
                        r.arrow.as_ref().is_some_and(|a| a.from != *side && a.label == "SYN")
                    });
                    if let Some(row) = syn.filter(|r| r.state(*side).is_none()) {
                        *row.slot(*side) = Some(shown);
                        continue;
                    }
                }
                if leads_to_a_segment(*from, *to) {
                    // close() and connect(): the state comes first, its segment right after.
                    let next = steps[i + 1..].iter().find(|n| matches!(n, Step::Segment { .. }));
                    if let Some(Step::Segment { t_us: tn, side: sn, .. }) = next {
                        if sn == side && tn - t_us <= SAME_ROW_US && pending[s].is_none() {
                            pending[s] = Some((*t_us, shown));
                            continue;
                        }
                    }
                } else {
                    // Every other state answers the segment just received. Two changes on one
                    // segment (a FIN,ACK takes FIN-WAIT-1 through FIN-WAIT-2 to TIME-WAIT, as the
                    // kernel reports it) show both: the second on a row of its own.
                    if let Some(row) = rows.last_mut() {
                        let received = row.arrow.as_ref().is_some_and(|a| a.from != *side);
                        let close = *t_us - (row.t_ms * 1000.0).round() as i64 <= SAME_ROW_US;
                        let free = row.state(*side).is_none_or(|st| st == shown);
                        if received && close && free && pending[s].is_none() {
                            *row.slot(*side) = Some(shown);
                            continue;
                        }
                    }
                    // Stamped a hair before the segment it answers (the two clocks agree to a
                    // few µs): it goes on that segment's row.
                    let next = steps[i + 1..].iter().find(|n| matches!(n, Step::Segment { .. }));
                    if let Some(Step::Segment { t_us: tn, side: sn, .. }) = next {
                        if sn != side && tn - t_us <= TIE_US && answers[s].is_none() {
                            answers[s] = Some(shown);
                            continue;
                        }
                    }
                }
                if let Some((t, st)) = pending[s].take() {
                    rows.push(alone(t, *side, st));
                }
                rows.push(alone(*t_us, *side, shown));
            }
        }
    }
    for side in [Side::Client, Side::Server] {
        if let Some((t, st)) = pending[idx(side)].take() {
            rows.push(alone(t, side, st));
        }
    }
    rows
}

/// A row with only a state on it.
fn alone(t_us: i64, side: Side, state: TcpState) -> Row {
    let mut row = Row { t_ms: t_us as f64 / 1000.0, arrow: None, client: None, server: None };
    *row.slot(side) = Some(state);
    row
}

/// Whether the socket enters the state as it sends a segment (close() sends the FIN, connect()
/// the SYN) rather than on receiving one.
fn leads_to_a_segment(from: TcpState, to: TcpState) -> bool {
    use TcpState::*;
    matches!((from, to), (Established, FinWait1) | (CloseWait, LastAck) | (_, SynSent))
}

/// What the table shows after `from -> to`; `None` when it shows no change (a socket handed to a
/// timewait socket in FIN-WAIT-2 stays FIN-WAIT-2 to the reader).
fn shown(from: TcpState, to: TcpState, got_fin: bool) -> Option<TcpState> {
    use TcpState::*;
    match (from, to) {
        (FinWait1 | FinWait2 | Closing, Close) if got_fin => Some(TimeWait),
        (FinWait2, Close) => None,
        (FinWait1, Close) => Some(FinWait2),
        _ => Some(to),
    }
}

fn other(side: Side) -> Side {
    match side {
        Side::Client => Side::Server,
        Side::Server => Side::Client,
    }
}

/// Where the close sequence stopped, in a sentence per side, with what holds the socket.
fn end(r: &Report, c: &ConnectionTrace, rows: &[Row]) -> Vec<String> {
    let last = |side| last_state(rows, side);
    let sent_fin = |side| sent_fin(rows, side);
    let port = format!(":{}", c.client_port);
    let holders_of = |side: Side| -> Vec<&Holder> {
        r.holders
            .iter()
            .filter(|h| h.side == side)
            .filter(|h| match side {
                Side::Server => h.remote.ends_with(&port),
                Side::Client => h.local.ends_with(&port),
            })
            .collect()
    };
    let held = |side: Side| -> String {
        let hs = holders_of(side);
        let named: Vec<String> = hs
            .iter()
            .filter_map(|h| {
                let pid = h.pid?;
                let who = match (h.role, &r.scenario.command) {
                    (Role::Acceptor, Some(_)) => "the listening process".to_string(),
                    (role, _) => format!("the {}", role.name()),
                };
                Some(match h.fd {
                    Some(fd) => format!("pid {pid} ({who}), fd {fd}"),
                    None => format!("pid {pid} ({who})"),
                })
            })
            .collect();
        if named.is_empty() {
            if hs.is_empty() {
                String::new()
            } else {
                ", held by no process".into()
            }
        } else {
            format!(": the socket is still held by {}", named.join(" and "))
        }
    };
    let mut out = Vec::new();
    use TcpState::*;
    match last(Side::Server) {
        Some(CloseWait) if !sent_fin(Side::Server) => out.push(format!(
            "no FIN from the server{}",
            or_default(held(Side::Server), ": its socket stays in CLOSE-WAIT")
        )),
        Some(Established) if !sent_fin(Side::Server) && sent_fin(Side::Client) => {
            out.push(format!("the server's socket stays in ESTAB{}", held(Side::Server)))
        }
        Some(st @ (Established | FinWait1 | FinWait2 | Closing | LastAck | CloseWait)) => {
            out.push(format!("the server's socket stays in {st}{}", held(Side::Server)))
        }
        _ => {}
    }
    match last(Side::Client) {
        Some(FinWait2) if !sent_fin(Side::Server) => out.push(
            "the client waits in FIN-WAIT-2 for a FIN that does not come (the kernel drops an orphan after tcp_fin_timeout, 60 s)".into(),
        ),
        Some(st @ (Established | FinWait1 | FinWait2 | Closing | LastAck | CloseWait)) => {
            out.push(format!("the client's socket stays in {st}{}", held(Side::Client)))
        }
        _ => {}
    }
    out
}

fn or_default(s: String, default: &str) -> String {
    if s.is_empty() {
        default.to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TcpState::*;

    fn seg(t_us: i64, side: Side, flags: &str) -> Step {
        Step::Segment { t_us, side, flags: flags.into(), len: 0 }
    }

    fn st(t_us: i64, side: Side, from: TcpState, to: TcpState) -> Step {
        Step::State { t_us, side, from, to }
    }

    /// The leak's connection, as the witnesses see it on loopback.
    fn leak() -> Vec<Step> {
        use Side::*;
        vec![
            seg(100, Client, "SYN"),
            seg(110, Server, "SYN,ACK"),
            st(115, Client, SynSent, Established),
            seg(116, Client, "ACK"),
            st(118, Server, SynRecv, Established),
            st(50_000, Client, Established, FinWait1),
            seg(50_005, Client, "FIN,ACK"),
            st(50_010, Server, Established, CloseWait),
            seg(50_012, Server, "ACK"),
            st(50_015, Client, FinWait1, FinWait2),
            st(50_016, Client, FinWait2, Close),
        ]
    }

    #[test]
    fn states_go_on_the_row_of_the_segment_they_answer_or_lead_to() {
        let rows = rows(&leak());
        let line =
            |r: &Row| (r.arrow.as_ref().map(|a| (a.from, a.label.clone())), r.client, r.server);
        let lines: Vec<_> = rows.iter().map(line).collect();
        assert_eq!(
            lines,
            vec![
                (Some((Side::Client, "SYN".into())), Some(SynSent), Some(SynRecv)),
                (Some((Side::Server, "SYN,ACK".into())), Some(Established), None),
                (Some((Side::Client, "ACK".into())), None, Some(Established)),
                (Some((Side::Client, "FIN,ACK".into())), Some(FinWait1), Some(CloseWait)),
                (Some((Side::Server, "ACK".into())), Some(FinWait2), None),
            ]
        );
    }

    #[test]
    fn the_leak_stops_with_no_server_fin_and_names_the_holder() {
        let mut r = Report::begin(
            crate::report::ScenarioRef {
                name: "leak".into(),
                file: "scenarios/leak.toml".into(),
                behaviour: "close-only".into(),
                story: String::new(),
                command: None,
            },
            crate::report::Isolation::Netns,
            None,
            Default::default(),
            1,
        );
        r.connections = vec![ConnectionTrace { client_port: 42334, like_it: 1, steps: leak() }];
        r.holders = vec![Holder {
            side: Side::Server,
            state: CloseWait,
            local: "127.0.0.1:45347".into(),
            remote: "127.0.0.1:42334".into(),
            inode: 7,
            pid: Some(4158),
            fd: Some(7),
            role: Role::Acceptor,
            comm: Some("cwlab-acceptor".into()),
            cmdline: None,
        }];
        let l = Ladder::representative(&r).unwrap();
        assert!(!l.sent_fin(Side::Server));
        assert_eq!(l.last_state(Side::Server), Some(CloseWait));
        assert_eq!(
            l.end[0],
            "no FIN from the server: the socket is still held by pid 4158 (the acceptor), fd 7"
        );
        assert!(l.end[1].starts_with("the client waits in FIN-WAIT-2"), "{:?}", l.end);
        assert_eq!(
            Ladder::of(&r, Some(1)).unwrap_err().to_string(),
            "connection :1 is not in the report (it keeps 1: 42334)"
        );
    }

    #[test]
    fn a_handed_over_socket_reads_as_time_wait_once_the_fin_came() {
        assert_eq!(shown(FinWait2, Close, true), Some(TimeWait));
        assert_eq!(shown(FinWait2, Close, false), None);
        assert_eq!(shown(LastAck, Close, true), Some(Close));
    }
}
