//! The JSON report a run writes, one document per scenario run.
//!
//! # Format
//!
//! ```json
//! {
//!   "schema_version": 4,
//!   "scenario": {
//!     "name": "leak",
//!     "file": "scenarios/leak.toml",
//!     "behaviour": "close-only",
//!     "story": "The leak: the acceptor keeps its copy of every accepted socket, …"
//!   },
//!   "isolation": "netns",
//!   "isolation_note": null,
//!   "topology": "loopback",
//!   "port": 45347,
//!   "clients": 100,
//!   "acceptor": {"pid": 11558, "fds_baseline": 4, "fds_end": 104},
//!   "phases": [
//!     {"phase": "listen", "t_ms": 0},
//!     {"phase": "connect", "t_ms": 58},
//!     {"phase": "close", "t_ms": 111},
//!     {"phase": "hold", "t_ms": 119},
//!     {"phase": "end", "t_ms": 1621}
//!   ],
//!   "samples": [
//!     {"t_ms": 0, "phase": "listen", "server": {"LISTEN": 1}, "client": {}, "acceptor_fds": 4},
//!     {
//!       "t_ms": 1621,
//!       "phase": "end",
//!       "server": {"CLOSE-WAIT": 100, "LISTEN": 1},
//!       "client": {"FIN-WAIT-2": 100},
//!       "acceptor_fds": 104
//!     }
//!   ],
//!   "final": {"server": {"CLOSE-WAIT": 100, "LISTEN": 1}, "client": {"FIN-WAIT-2": 100}},
//!   "holders": [
//!     {
//!       "side": "server",
//!       "state": "CLOSE-WAIT",
//!       "local": "127.0.0.1:45347",
//!       "remote": "127.0.0.1:42334",
//!       "inode": 7531,
//!       "pid": 11558,
//!       "fd": 4,
//!       "role": "acceptor",
//!       "comm": "cwlab-acceptor"
//!     },
//!     {
//!       "side": "client",
//!       "state": "FIN-WAIT-2",
//!       "local": "127.0.0.1:42334",
//!       "remote": "127.0.0.1:45347",
//!       "inode": 0,
//!       "pid": null,
//!       "fd": null,
//!       "role": "nobody",
//!       "comm": null
//!     }
//!   ],
//!   "client_outcome": {"completed": 100, "failed": 0, "hung": 0, "first_error": null},
//!   "server": {"accepted": 100, "accept_errors": 0, "accept_errno": null},
//!   "fds_by_role": {"acceptor": 104, "handler": 0},
//!   "transitions": {
//!     "available": true,
//!     "note": null,
//!     "events": 700,
//!     "lost": 0,
//!     "counts": [{"side": "server", "from": "ESTAB", "to": "CLOSE-WAIT", "connections": 100}],
//!     "paths": [{"side": "server", "path": ["ESTAB", "CLOSE-WAIT"], "connections": 100}],
//!     "durations": [
//!       {
//!         "side": "server",
//!         "state": "ESTAB",
//!         "connections": 100,
//!         "min_ms": 50.703,
//!         "median_ms": 54.248,
//!         "max_ms": 57.338
//!       }
//!     ],
//!     "levels": [
//!       {"side": "server", "state": "CLOSE-WAIT", "points": [[80326, 1], [121170, 100]]}
//!     ]
//!   },
//!   "packets": {
//!     "available": true,
//!     "note": null,
//!     "pcap": null,
//!     "server_segments": {"ACK": 400, "PSH": 100, "SYN": 100, "all": 400},
//!     "client_segments": {"ACK": 400, "FIN": 100, "PSH": 100, "SYN": 100, "all": 500},
//!     "connections": 100,
//!     "server_sent": {"ACK": 100, "PSH": 100, "SYN": 100},
//!     "client_sent": {"ACK": 100, "FIN": 100, "PSH": 100, "SYN": 100},
//!     "dropped": 0
//!   },
//!   "connections": [
//!     {
//!       "client_port": 42334,
//!       "like_it": 100,
//!       "steps": [
//!         {"kind": "segment", "t_us": 58658, "side": "client", "flags": "SYN", "len": 0},
//!         {"kind": "state", "t_us": 80316, "side": "client", "from": "ESTAB", "to": "FIN-WAIT-1"},
//!         {"kind": "segment", "t_us": 80324, "side": "client", "flags": "FIN,ACK", "len": 0},
//!         {"kind": "state", "t_us": 80326, "side": "server", "from": "ESTAB", "to": "CLOSE-WAIT"},
//!         {"kind": "segment", "t_us": 121149, "side": "server", "flags": "ACK", "len": 0}
//!       ]
//!     }
//!   ],
//!   "expectations": [
//!     {
//!       "text": "server CLOSE-WAIT == clients for 1s",
//!       "passed": true,
//!       "observed": 100,
//!       "detail": "100 for 1463 ms",
//!       "observable": true
//!     },
//!     {
//!       "text": "server CLOSE-WAIT held by acceptor == clients",
//!       "passed": true,
//!       "observed": 100,
//!       "detail": "100 at the end",
//!       "observable": true
//!     }
//!   ],
//!   "diagnosis": {
//!     "findings": [
//!       {
//!         "kind": "fork-leak",
//!         "title": "fork leak: 100 CLOSE-WAIT held by the acceptor",
//!         "sockets": 100,
//!         "holders": [{"pid": 11558, "name": "cwlab-acceptor", "role": "acceptor", "fds": [4, 5, 6]}],
//!         "numbers": {"acceptor_fds_grew": 100, "close_wait": 100, "held": 100},
//!         "explanation": "the acceptor holds 100 connections the clients have closed: the last reference never went, so no FIN was sent",
//!         "fix": "close the accepted socket in the parent right after fork(); shutdown(SHUT_RDWR) in the child only hides it"
//!       }
//!     ],
//!     "held": [
//!       {
//!         "side": "server",
//!         "state": "CLOSE-WAIT",
//!         "role": "acceptor",
//!         "sockets": 100,
//!         "processes": [{"pid": 11558, "name": "cwlab-acceptor", "role": "acceptor", "fds": [4, 5, 6]}]
//!       },
//!       {"side": "client", "state": "FIN-WAIT-2", "role": "nobody", "sockets": 100, "processes": []}
//!     ]
//!   },
//!   "verdict": "pass",
//!   "error": null,
//!   "interrupted": false,
//!   "stopped_in": null,
//!   "duration_ms": 1722
//! }
//! ```
//!
//! This is a real report of `leak`, its lists cut to one or two entries (a test parses it, and
//! writes it back unchanged). `isolation` is `netns` or `host` (with `isolation_note` saying why
//! the run fell back); `topology` is `loopback` or `two-hosts`; `phases` are `listen`, `connect`,
//! `close`, `hold`, `end`; `verdict` is `pass`, `fail` or `error` (with `error` saying what
//! stopped the run, `interrupted` true when a signal did, `stopped_in` the phase). `diagnosis`
//! (schema 2) is [`Diagnosis`]: `findings[].kind` is one of `fork-leak`, `exec-inherited`,
//! `worker-inherited`, `handler-holds`, `held-elsewhere`, `hidden-leak`, `accept-failing`,
//! `backlog`, `hung-clients`, `clean`; `held` groups the stuck sockets by side, state and role.
//! `transitions.levels` (absent from older reports) are each side's sockets per state after
//! every change, `[µs since LISTEN, sockets]`, timewait sockets counted as the table shows them:
//! what the timeline is drawn from ([`Level`](crate::evidence::Level)).
//! `connections` (schema 3) are [`ConnectionTrace`]s: one connection of each way the run's
//! connections went (`like_it` of them went that way), then the earliest, each step a `segment`
//! (its sender, flags, payload bytes) or a `state` (the side, the state left and entered), in µs
//! since LISTEN.
//!
//! Times are milliseconds since the server reported LISTEN. Counts maps name only the states with
//! at least one socket: a state that is absent has a count of 0. `server` counts the sockets whose
//! local port is the server's port, `client` those whose remote port is. Holders list every socket
//! at the end that is in neither ESTAB, TIME-WAIT nor LISTEN, once per process fd that holds it; a
//! socket no process holds has one row with `pid` and `fd` null and the role `nobody`.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::diagnosis::Diagnosis;
use crate::evidence::{ConnectionTrace, Packets, Transitions};
use crate::runtime::Runtime;
use crate::scenario::Topology;
use crate::state::TcpState;

/// The version of this format; bumped on any change that a reader could notice.
pub const SCHEMA_VERSION: u32 = 4;

/// Socket counts per state; states with no socket are absent.
pub type Counts = BTreeMap<TcpState, u32>;

/// One run of one scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// [`SCHEMA_VERSION`] when written.
    pub schema_version: u32,
    /// What was run.
    pub scenario: ScenarioRef,
    /// How the run was kept apart from the rest of the machine.
    pub isolation: Isolation,
    /// Why the run fell back to the host's loopback, when it did.
    pub isolation_note: Option<String>,
    /// One host (loopback) or two (a veth pair between two namespaces).
    #[serde(default)]
    pub topology: Topology,
    /// The server's listening port.
    pub port: u16,
    /// Where the clients connected (`127.0.0.1:P`, `[::1]:P`): the address of the server's
    /// LISTEN socket (schema 4; absent for the lab's servers, which listen where they are told).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Where the clients connected instead, when told to (`cwlab check --address`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dialed: Option<String>,
    /// The number of clients the scenario runs.
    pub clients: u32,
    /// The acceptor process and its descriptor counts.
    pub acceptor: Acceptor,
    /// When each phase began.
    pub phases: Vec<PhaseMark>,
    /// Every sample of the socket table, in time order; the last is taken at the end.
    pub samples: Vec<Sample>,
    /// The counts of the last sample.
    #[serde(rename = "final")]
    pub final_counts: SideCounts,
    /// Who holds each socket that is stuck at the end.
    pub holders: Vec<Holder>,
    /// What the clients saw.
    pub client_outcome: ClientOutcome,
    /// How `cwlab check` drove its clients (a warm-up, then waves), or a pool its requests
    /// (bursts), each measured once it settled (schema 4; absent for a scenario's run whose
    /// clients come all at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waves: Option<Waves>,
    /// What `cwlab check --client` saw of the user's client (schema 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<ClientRun>,
    /// What the acceptor reported.
    pub server: ServerOutcome,
    /// The last lines the server printed (stderr; for a command, stdout too), kept when the run
    /// did not pass or the server went away.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_output: Vec<String>,
    /// Open descriptors at the end, summed over the acceptor and its descendants by role.
    pub fds_by_role: BTreeMap<Role, u64>,
    /// Every state transition, from the kernel's tracepoint.
    pub transitions: Transitions,
    /// Every segment, from a packet capture.
    pub packets: Packets,
    /// A few connections step by step, both witnesses merged (schema 3): one of each distinct
    /// way connections went, then the earliest; what the ladder is drawn from.
    #[serde(default)]
    pub connections: Vec<ConnectionTrace>,
    /// Each expectation with what was observed.
    pub expectations: Vec<ExpectationResult>,
    /// What the run shows: the findings and who holds the stuck sockets (absent before schema 2).
    #[serde(default)]
    pub diagnosis: Diagnosis,
    /// The verdict.
    pub verdict: Verdict,
    /// What stopped the run, when something did.
    pub error: Option<String>,
    /// True when a signal ended the run early.
    pub interrupted: bool,
    /// The phase the run was in when a signal or the deadline stopped it.
    pub stopped_in: Option<Phase>,
    /// Wall time of the run, from LISTEN to the report.
    pub duration_ms: u64,
}

impl Report {
    /// The report of a run that is about to begin: nothing seen yet, the witnesses not started
    /// (their notes say so), the verdict an error until the run finishes.
    pub fn begin(
        scenario: ScenarioRef,
        isolation: Isolation,
        isolation_note: Option<String>,
        topology: Topology,
        clients: u32,
    ) -> Report {
        let not_yet = Some("the run stopped before the clients came".to_string());
        Report {
            schema_version: SCHEMA_VERSION,
            scenario,
            isolation,
            isolation_note,
            topology,
            port: 0,
            address: None,
            dialed: None,
            clients,
            acceptor: Acceptor { pid: 0, ..Acceptor::default() },
            phases: vec![PhaseMark { phase: Phase::Listen, t_ms: 0 }],
            samples: Vec::new(),
            final_counts: SideCounts::default(),
            holders: Vec::new(),
            client_outcome: ClientOutcome::default(),
            waves: None,
            client: None,
            server: ServerOutcome::default(),
            server_output: Vec::new(),
            fds_by_role: BTreeMap::new(),
            transitions: Transitions { note: not_yet.clone(), ..Transitions::default() },
            packets: Packets { note: not_yet, ..Packets::default() },
            connections: Vec::new(),
            expectations: Vec::new(),
            diagnosis: Diagnosis::default(),
            verdict: Verdict::Error,
            error: None,
            interrupted: false,
            stopped_in: None,
            duration_ms: 0,
        }
    }

    /// The exit code this report means for `cwlab run`: 0 every expectation held, 1 one failed,
    /// 2 the run could not finish.
    pub fn exit_code(&self) -> i32 {
        match self.verdict {
            Verdict::Pass => crate::exit::PASS,
            Verdict::Fail => crate::exit::FAIL,
            Verdict::Error => crate::exit::BAD_INPUT,
        }
    }

    /// The expectations that held, and how many there are.
    pub fn expectations_held(&self) -> (usize, usize) {
        (self.expectations.iter().filter(|e| e.passed).count(), self.expectations.len())
    }

    /// When the hold phase began, in ms since LISTEN (`None` when the run never got there).
    pub fn hold_from_ms(&self) -> Option<u64> {
        self.phases.iter().find(|m| m.phase == Phase::Hold).map(|m| m.t_ms)
    }
}

/// The scenario a report is about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioRef {
    /// The scenario's name.
    pub name: String,
    /// The file it was read from.
    pub file: String,
    /// The server behaviour.
    pub behaviour: String,
    /// The story the scenario tells.
    pub story: String,
    /// The user's command, when the server was one (`cwlab check`, `[server] command`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
}

/// Where a run's sockets lived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// A private network namespace: nothing else shares the socket table, counts are exact.
    Netns,
    /// The host's loopback, filtered by the run's own port.
    Host,
}

impl fmt::Display for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Isolation::Netns => "private network namespace",
            Isolation::Host => "host loopback",
        })
    }
}

/// The acceptor (the server process that listens and forks) and its descriptor counts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Acceptor {
    /// Its pid as the runner sees it.
    pub pid: u32,
    /// Its open descriptors once it listened, before any client.
    pub fds_baseline: Option<u32>,
    /// Its open descriptors at the end.
    pub fds_end: Option<u32>,
    /// For a user's server: whether the listening process forked during the run (a child alive
    /// or unreaped at the end, or children it reaped). Absent for the lab's servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forked: Option<bool>,
    /// For a user's server: the listening process's executable (`/proc/PID/exe`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// For a user's server: the runtime that executable is (schema 4), whose idiom the fix is
    /// phrased in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<Runtime>,
}

/// The phases of a run, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// The server listens; no client yet.
    Listen,
    /// Clients connect, send their request and read the reply.
    Connect,
    /// Clients close their connections.
    Close,
    /// Nobody does anything: the lab watches what stays.
    Hold,
    /// The last sample, the holders and the verdict.
    End,
}

impl Phase {
    /// The phase's name as the report spells it.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Listen => "listen",
            Phase::Connect => "connect",
            Phase::Close => "close",
            Phase::Hold => "hold",
            Phase::End => "end",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// When a phase began.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseMark {
    /// The phase.
    pub phase: Phase,
    /// Milliseconds since LISTEN.
    pub t_ms: u64,
}

/// Counts per state on each side of the connection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SideCounts {
    /// Sockets whose local port is the server's.
    pub server: Counts,
    /// Sockets whose remote port is the server's.
    pub client: Counts,
}

impl SideCounts {
    /// The count on one side in one state (0 when absent).
    pub fn get(&self, side: Side, state: TcpState) -> u32 {
        let counts = match side {
            Side::Server => &self.server,
            Side::Client => &self.client,
        };
        counts.get(&state).copied().unwrap_or(0)
    }
}

/// One look at the socket table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sample {
    /// Milliseconds since LISTEN.
    pub t_ms: u64,
    /// The phase the run was in.
    pub phase: Phase,
    /// Server-side counts.
    pub server: Counts,
    /// Client-side counts.
    pub client: Counts,
    /// The acceptor's open descriptors, when it could be read.
    pub acceptor_fds: Option<u32>,
    /// Connections waiting in the accept queue: accepted by the kernel, not yet by the server
    /// (the LISTEN sockets' receive queue; schema 4).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub queued: u32,
    /// Server-side connections a process holds open (ESTAB or CLOSE-WAIT with a descriptor):
    /// those the server is serving, or keeps (schema 4).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub serving: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

impl Sample {
    /// Both sides' counts.
    pub fn counts(&self) -> SideCounts {
        SideCounts { server: self.server.clone(), client: self.client.clone() }
    }

    /// The count on one side in one state (0 when absent).
    pub fn get(&self, side: Side, state: TcpState) -> u32 {
        let counts = match side {
            Side::Server => &self.server,
            Side::Client => &self.client,
        };
        counts.get(&state).copied().unwrap_or(0)
    }
}

/// Which end of the connection a socket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// Local port is the server's.
    Server,
    /// Remote port is the server's.
    Client,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Server => "server",
            Side::Client => "client",
        })
    }
}

/// What a process holding a socket is to the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The server process that listens, accepts and forks.
    Acceptor,
    /// A child the acceptor forked for one connection.
    Handler,
    /// Any other descendant of the acceptor: a helper a handler started by fork and exec.
    Helper,
    /// A long-lived fork of the acceptor that did not exec (the fork-worker behaviour).
    Worker,
    /// The runner's own client driver.
    Client,
    /// No process holds the socket.
    Nobody,
    /// A process the run did not start.
    Other,
}

impl Role {
    /// The role's name as scenario files and reports spell it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Acceptor => "acceptor",
            Role::Handler => "handler",
            Role::Helper => "helper",
            Role::Worker => "worker",
            Role::Client => "client",
            Role::Nobody => "nobody",
            Role::Other => "other",
        }
    }

    /// Every role, for error messages and parsing.
    pub const ALL: [Role; 7] = [
        Role::Acceptor,
        Role::Handler,
        Role::Helper,
        Role::Worker,
        Role::Client,
        Role::Nobody,
        Role::Other,
    ];
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One process fd that holds one stuck socket (or, with `pid` null, a socket nobody holds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Holder {
    /// The socket's side.
    pub side: Side,
    /// The socket's state.
    pub state: TcpState,
    /// Local address:port.
    pub local: String,
    /// Remote address:port.
    pub remote: String,
    /// The socket's inode (0 for sockets no file refers to, such as orphans).
    pub inode: u64,
    /// The holding process, or null.
    pub pid: Option<u32>,
    /// The descriptor number in that process, or null.
    pub fd: Option<i32>,
    /// What the process is to the run.
    pub role: Role,
    /// The process's name, or null.
    pub comm: Option<String>,
    /// The process's command line, for a user's server (the lab's are named by `comm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
}

/// What the clients saw. `completed`, `failed` and `hung` are disjoint and add up to the clients.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientOutcome {
    /// Clients that connected, exchanged and closed as the scenario says (a late reply
    /// included).
    pub completed: u32,
    /// Clients whose connection did not happen: an error (refused, reset), or a connection the
    /// server never accepted (`unaccepted`).
    pub failed: u32,
    /// Clients the server served (it accepted the connection) that waited for a reply or an EOF
    /// that never came by the end of the run.
    pub hung: u32,
    /// The first error a client hit.
    pub first_error: Option<String>,
    /// Of `failed`: connections that waited in the accept queue until the client gave up, never
    /// accepted (schema 4).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unaccepted: u32,
    /// Of `completed`: clients whose reply (or EOF) came after they had given up waiting
    /// (schema 4).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub late: u32,
    /// The longest a completed client waited for its reply (or EOF), from its connect, in ms
    /// (schema 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slowest_ms: Option<u64>,
}

impl ClientOutcome {
    /// Clients whose connection happened: completed or hung (a verdict stands on these).
    pub fn happened(&self) -> u32 {
        self.completed + self.hung
    }

    /// "100 clients (96 completed, 4 hung)": every count that is not zero, adding up.
    pub fn summary(&self, clients: u32) -> String {
        let mut parts = vec![format!("{} completed", self.completed)];
        if self.hung > 0 {
            parts.push(format!("{} hung", self.hung));
        }
        if self.failed > 0 {
            let never = match self.unaccepted {
                0 => String::new(),
                n if n == self.failed => ": never accepted".into(),
                n => format!(", {n} never accepted"),
            };
            parts.push(format!("{} failed{never}", self.failed));
        }
        format!("{clients} clients ({})", parts.join(", "))
    }
}

/// What `cwlab check --client` saw of a client of the user's own, watched while it ran.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientRun {
    /// Its command line, the server's address in it.
    pub command: Vec<String>,
    /// The runtime its executable is.
    pub runtime: Option<Runtime>,
    /// How it ended (`exit status 0`), or that it was stopped at the timeout.
    pub exited: Option<String>,
    /// Requests the lab's server answered.
    pub requests: u64,
    /// The most client-side CLOSE-WAIT sockets at once.
    pub peak: u32,
    /// Client-side CLOSE-WAIT sockets that lasted `stuck_ms` or more.
    pub stuck: u32,
    /// Client-side CLOSE-WAIT sockets the client closed while it ran.
    pub cleared: u32,
    /// The longest one lasted, in ms.
    pub oldest_ms: u64,
    /// How long one may last before it is stuck (`--stuck`), in ms.
    pub stuck_ms: u64,
    /// Its last lines of output, kept when it made no request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output: Vec<String>,
}

/// How `cwlab check` drove its clients: a few connections to warm the server up (a runtime's
/// lazy descriptors, a log file, a thread pool), then waves, each measured once its connections
/// settled. A leak grows with every wave; a one-time cost shows in the warm-up or once.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Waves {
    /// Bursts of a client-side pool's requests rather than waves of connections.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bursts: bool,
    /// Connections before the baseline.
    pub warmup: u32,
    /// The listening process's descriptors and the server's CLOSE-WAIT once the warm-up
    /// settled.
    pub baseline: Measure,
    /// Each wave, in order.
    pub waves: Vec<Wave>,
}

/// One wave of clients.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wave {
    /// Its connections.
    pub connections: u32,
    /// When its first client started, ms since LISTEN.
    pub from_ms: u64,
    /// What was measured once it settled.
    pub after: Measure,
}

/// The listening process's descriptors and the server's CLOSE-WAIT sockets at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Measure {
    /// Ms since LISTEN.
    pub t_ms: u64,
    /// The listening process's open descriptors.
    pub fds: Option<u32>,
    /// Server-side sockets in CLOSE-WAIT.
    pub close_wait: u32,
    /// Client-side sockets in CLOSE-WAIT (a pool's; schema 4).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub client_close_wait: u32,
}

/// What one wave added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Growth {
    /// The wave's connections.
    pub connections: u32,
    /// Descriptors the listening process gained over the wave (none when unreadable).
    pub fds: Option<i64>,
    /// CLOSE-WAIT sockets the server gained over the wave.
    pub close_wait: i64,
    /// CLOSE-WAIT sockets the clients gained over the wave.
    pub client_close_wait: i64,
}

impl Waves {
    /// What each wave added to what stood before it.
    pub fn growth(&self) -> Vec<Growth> {
        let mut before = &self.baseline;
        let mut out = Vec::new();
        for w in &self.waves {
            let fds = match (before.fds, w.after.fds) {
                (Some(a), Some(b)) => Some(i64::from(b) - i64::from(a)),
                _ => None,
            };
            out.push(Growth {
                connections: w.connections,
                fds,
                close_wait: i64::from(w.after.close_wait) - i64::from(before.close_wait),
                client_close_wait: i64::from(w.after.client_close_wait)
                    - i64::from(before.client_close_wait),
            });
            before = &w.after;
        }
        out
    }

    /// Connections over every wave.
    pub fn connections(&self) -> u32 {
        self.waves.iter().map(|w| w.connections).sum()
    }
}

/// What the acceptor reported over its event pipe.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerOutcome {
    /// Connections accepted.
    pub accepted: u64,
    /// accept() calls that failed.
    pub accept_errors: u64,
    /// errno of the last failed accept(), if any (24 is EMFILE).
    pub accept_errno: Option<i32>,
    /// Requests a keep-alive handler answered (schema 4).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub served: u64,
    /// A command's first process ended, and how (`exit status 0`): only for a user's server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exited: Option<String>,
    /// Nothing of a user's server was left before the run ended: it crashed or quit.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gone: bool,
}

/// One expectation and what was observed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectationResult {
    /// The expectation as written in the scenario file.
    pub text: String,
    /// Whether it held.
    pub passed: bool,
    /// The value that decided it (at the end, at the deciding sample, or the last one looked at).
    pub observed: Option<i64>,
    /// A sentence saying what was seen.
    pub detail: String,
    /// False when the run could not observe what the expectation needs (no tracefs, no
    /// capture): it then neither passes nor fails the run.
    pub observable: bool,
}

/// The outcome of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Every expectation held.
    Pass,
    /// At least one expectation failed.
    Fail,
    /// The run could not finish (timeout, interruption, environment).
    Error,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Error => "ERROR",
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The example of this module's `# Format`.
    pub(crate) fn format_example() -> String {
        let source = include_str!("report.rs");
        let start = source.find("//! ```json\n").expect("a json example") + "//! ```json\n".len();
        let end = start + source[start..].find("//! ```\n").expect("its end");
        source[start..end].lines().map(|l| l.strip_prefix("//!").unwrap_or(l)).collect()
    }

    #[test]
    fn the_format_doc_is_a_report_this_code_writes_back_unchanged() {
        let text = format_example();
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        let r: Report = serde_json::from_value(doc.clone()).unwrap();
        assert_eq!(r.schema_version, SCHEMA_VERSION);
        assert_eq!(serde_json::to_value(&r).unwrap(), doc);
    }

    /// A report of a run that has not begun: no sample, no holder, nothing observed.
    pub(crate) fn report(name: &str, clients: u32) -> Report {
        let scenario = ScenarioRef {
            name: name.into(),
            file: format!("scenarios/{name}.toml"),
            behaviour: "close-only".into(),
            story: String::new(),
            command: None,
        };
        Report::begin(scenario, Isolation::Netns, None, Topology::Loopback, clients)
    }
}
