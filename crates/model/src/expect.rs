//! The expectation language: one readable line per assertion, evaluated over a run's timeline.
//!
//! ```text
//! expectation := quantity OP rhs [window] | quantity "grew by" rhs [window]
//! quantity    := SIDE STATE                  e.g. `server CLOSE-WAIT`, `client time_wait`
//!              | SIDE STATE "held by" ROLE   e.g. `server CLOSE-WAIT held by acceptor` (end only)
//!              | "acceptor fds"              the acceptor's open descriptors
//!              | "acceptor fds growth"       the same, less its count before any client
//!              | "acceptor fds leaked"       descriptors it gained with the connections: with
//!                                            `cwlab check`'s waves, their growth when every wave
//!                                            grew with its connections, else 0 (end only)
//!              | "hung clients"              served clients whose reply or EOF never came (end only)
//!              | "unaccepted clients"        clients whose connection was never accepted (end only)
//!              | "client CLOSE-WAIT leaked"  client-side CLOSE-WAIT a pool leaked: held there and
//!                                            growing with the requests, or stuck (end only)
//!              | "accepted"                  connections the acceptor accepted (end only)
//!              | "accept errors"             accept() calls that failed (end only)
//!              | ROLE "fds"                  descriptors open in processes of that role: handler,
//!                                            helper or worker (end only)
//!              | SIDE "transitions" STATE "->" STATE
//!                                            connections whose socket made that transition (end only)
//!              | SIDE "path" STATE ("->" STATE)*
//!                                            connections whose path from ESTAB on is exactly that
//!              | SIDE ("FIN" | "SYN" | "RST")
//!                                            connections in which that side sent such a segment
//! OP          := == | != | < | <= | > | >=
//! rhs         := a whole number | "clients"
//! window      := "within" DURATION           true at some sample in the hold, no later than D
//!              | "for" DURATION              true at every sample of a stretch of the hold >= D
//!                                            (no window: true at the end)
//! ```
//!
//! `acceptor fds grew by N` is `acceptor fds growth == N`. Durations read `500ms`, `1s`, `1.5s`.

//!
//! Parsing is [`Expectation::parse`] (in `expect/parse.rs`); evaluation over a run's samples and
//! report is [`evaluate`] (in `expect/evaluate.rs`).

use std::fmt;
use std::time::Duration;

use crate::report::{Role, Side};
use crate::state::TcpState;

mod evaluate;
mod parse;

pub use evaluate::{evaluate, Evidence};

/// What an expectation measures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Quantity {
    /// Sockets on one side in one state.
    Sockets(Side, TcpState),
    /// Sockets on one side in one state held by a process of one role (known at the end only).
    HeldBy(Side, TcpState, Role),
    /// The acceptor's open descriptors.
    AcceptorFds,
    /// The acceptor's open descriptors less its count before any client.
    AcceptorFdsGrowth,
    /// The descriptors the acceptor gained with the connections
    /// ([`fds_leaked`](crate::diagnosis::fds_leaked)).
    AcceptorFdsLeaked,
    /// Clients that waited for a reply or an EOF that never came (known at the end only).
    HungClients,
    /// Clients whose connection the server never accepted (known at the end only).
    UnacceptedClients,
    /// Client-side CLOSE-WAIT a pool leaked
    /// ([`client_close_wait_leaked`](crate::diagnosis::client_close_wait_leaked); at the end only).
    ClientCloseWaitLeaked,
    /// Connections the acceptor accepted (known at the end only).
    Accepted,
    /// accept() calls that failed (known at the end only).
    AcceptErrors,
    /// Descriptors open in the acceptor's descendants of one role (known at the end only).
    RoleFds(Role),
    /// Connections whose socket on one side made a transition (from the kernel's tracepoint).
    Transitions(Side, TcpState, TcpState),
    /// Connections whose socket on one side took exactly this path from ESTAB on.
    Path(Side, Vec<TcpState>),
    /// Connections in which one side sent a segment with this flag (from the capture).
    Sent(Side, &'static str),
}

impl Quantity {
    /// True when the quantity is only known at the end of a run.
    pub fn end_only(&self) -> bool {
        !matches!(self, Quantity::Sockets(..) | Quantity::AcceptorFds | Quantity::AcceptorFdsGrowth)
    }
}

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl Cmp {
    /// Applies the comparison.
    pub fn holds(self, a: i64, b: i64) -> bool {
        match self {
            Cmp::Eq => a == b,
            Cmp::Ne => a != b,
            Cmp::Lt => a < b,
            Cmp::Le => a <= b,
            Cmp::Gt => a > b,
            Cmp::Ge => a >= b,
        }
    }
}

impl fmt::Display for Cmp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Cmp::Eq => "==",
            Cmp::Ne => "!=",
            Cmp::Lt => "<",
            Cmp::Le => "<=",
            Cmp::Gt => ">",
            Cmp::Ge => ">=",
        })
    }
}

/// The right-hand side of a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rhs {
    /// A number.
    Number(i64),
    /// The scenario's client count.
    Clients,
}

impl Rhs {
    /// The value, given the client count.
    pub fn value(self, clients: u32) -> i64 {
        match self {
            Rhs::Number(n) => n,
            Rhs::Clients => i64::from(clients),
        }
    }
}

/// When an expectation is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// At the last sample.
    End,
    /// At some sample of the hold phase no later than this after it began.
    Within(Duration),
    /// At every sample of a stretch of the hold phase at least this long.
    For(Duration),
}

/// One parsed expectation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expectation {
    /// The text as written.
    pub text: String,
    /// What it measures.
    pub quantity: Quantity,
    /// How it compares.
    pub cmp: Cmp,
    /// What it compares with.
    pub rhs: Rhs,
    /// When it is checked.
    pub window: Window,
}

/// A parse error at a byte offset of the expectation's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// Byte offset in the text where the problem starts.
    pub offset: usize,
    /// What was expected there.
    pub message: String,
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Quantity::Sockets(side, state) => write!(f, "{side} {state}"),
            Quantity::HeldBy(side, state, role) => write!(f, "{side} {state} held by {role}"),
            Quantity::AcceptorFds => f.write_str("acceptor fds"),
            Quantity::AcceptorFdsGrowth => f.write_str("acceptor fds growth"),
            Quantity::AcceptorFdsLeaked => f.write_str("acceptor fds leaked"),
            Quantity::HungClients => f.write_str("hung clients"),
            Quantity::UnacceptedClients => f.write_str("unaccepted clients"),
            Quantity::ClientCloseWaitLeaked => f.write_str("client CLOSE-WAIT leaked"),
            Quantity::Accepted => f.write_str("accepted"),
            Quantity::AcceptErrors => f.write_str("accept errors"),
            Quantity::RoleFds(role) => write!(f, "{role} fds"),
            Quantity::Transitions(side, from, to) => write!(f, "{side} transitions {from} -> {to}"),
            Quantity::Path(side, path) => {
                let p: Vec<&str> = path.iter().map(|s| s.name()).collect();
                write!(f, "{side} path {}", p.join(" -> "))
            }
            Quantity::Sent(side, flag) => write!(f, "{side} {flag}"),
        }
    }
}
