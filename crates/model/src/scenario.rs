//! Scenario files: `scenarios/NAME.toml`, read and checked with errors that name the file, the
//! line, the column and what was expected there.
//!
//! ```toml
//! name = "leak"
//! story = """
//! What happens and why, in a few sentences the user is shown."""
//! expect = [
//!     "server CLOSE-WAIT == clients for 1s",
//!     "client FIN-WAIT-2 == clients",
//! ]
//!
//! [server]
//! behaviour = "close-only"      # see Behaviour
//! port = 0                      # optional: 0 or absent picks a free port
//!
//! [clients]
//! count = 100
//! concurrency = 100             # connections in flight at once (default: count)
//! request_bytes = 64            # bytes each client sends; the server echoes them
//! read = "reply"                # reply, none, until-eof: see ClientRead
//! close = "close"               # how clients end: see ClientClose
//!
//! [run]
//! sample_interval = "50ms"
//! hold = "1500ms"               # how long to watch after the clients closed
//! timeout = "60s"               # the whole run's deadline
//! topology = "loopback"         # or "two-hosts": see Topology
//! ```

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::duration;
use crate::expect::{Expectation, Window};

/// How the server ends each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, Deserialize)]
#[serde(into = "&'static str", try_from = "String")]
pub enum Behaviour {
    /// The leak: the handler child reads to EOF, echoing, then only close()s; the acceptor keeps
    /// its copy of the accepted fd, so the socket's last reference never goes and no FIN is sent.
    CloseOnly,
    /// The symptom fix: the child shutdown(SHUT_RDWR)s, then close()s. The FIN goes out whatever
    /// the refcount, but the acceptor still keeps one fd per connection.
    ShutdownClose,
    /// The real fix: the acceptor closes its copy right after fork; the child close()s.
    ParentCloses,
    /// The handler starts a long-lived helper by fork+exec with CLOEXEC cleared on the
    /// connection, then echoes and close()s; the acceptor closes its copy. The helper keeps the
    /// socket: CLOSE-WAIT, held by helpers.
    ExecInherit,
    /// As `exec-inherit`, but the connection keeps CLOEXEC: the helper inherits nothing.
    ExecCloexec,
    /// The acceptor serves every connection itself (no handler) and forks a long-lived worker per
    /// connection; each worker inherits every connection open at that moment, so closed
    /// connections stay CLOSE-WAIT while any worker lives.
    ForkWorker,
    /// The acceptor listens and never accepts: the look-alike of a leak (a busy server).
    NoAccept,
    /// The handler reads the request, replies and close()s first; the acceptor keeps its copy,
    /// so no FIN reaches the client.
    ReplyClose,
    /// The handler reads the request, replies, shutdown()s and close()s first; the acceptor keeps
    /// its copy, but the FIN goes out.
    ReplyShutdown,
    /// The handler reads the request, replies and close()s first; the acceptor closes its copy:
    /// the server closes first, cleanly.
    ServerFirst,
    /// The handler never reads; the acceptor closes its copy.
    NoRead,
    /// The handler reads to EOF, then writes until the window is zero, then close()s; the
    /// acceptor closes its copy. The FIN waits behind the unsent data.
    FillClose,
    /// The handler writes until the window is zero and shutdown(SHUT_WR)s (its FIN waits behind
    /// the data), then, once the runner releases it (SIGUSR1), reads to EOF.
    Simultaneous,
    /// The look-alike that is under control: the handler reads to EOF, then finishes some work
    /// (half a second) before it close()s; the acceptor closes its copy. CLOSE-WAIT rises with
    /// the clients' FINs and drains when the work is done.
    SlowClose,
    /// An HTTP server's keep-alive: the handler answers request after request on one connection
    /// and close()s it once it has been idle for `[server] idle` (200 ms by default); the
    /// acceptor closes its copy. The server closes first: its FIN reaches the client's
    /// connection pool, which may or may not notice.
    KeepAlive,
    /// `keep-alive` speaking HTTP/1.1: each request's head (and body, by Content-Length) read,
    /// a small `200 OK` with `Connection: keep-alive` written; `Connection: close` honoured. The
    /// server `cwlab check --client` runs.
    HttpKeepAlive,
}

impl Behaviour {
    /// Every behaviour.
    pub const ALL: [Behaviour; 16] = [
        Behaviour::CloseOnly,
        Behaviour::ShutdownClose,
        Behaviour::ParentCloses,
        Behaviour::ExecInherit,
        Behaviour::ExecCloexec,
        Behaviour::ForkWorker,
        Behaviour::NoAccept,
        Behaviour::ReplyClose,
        Behaviour::ReplyShutdown,
        Behaviour::ServerFirst,
        Behaviour::NoRead,
        Behaviour::FillClose,
        Behaviour::Simultaneous,
        Behaviour::SlowClose,
        Behaviour::KeepAlive,
        Behaviour::HttpKeepAlive,
    ];

    /// The name scenario files use.
    pub fn name(self) -> &'static str {
        match self {
            Behaviour::CloseOnly => "close-only",
            Behaviour::ShutdownClose => "shutdown-close",
            Behaviour::ParentCloses => "parent-closes",
            Behaviour::ExecInherit => "exec-inherit",
            Behaviour::ExecCloexec => "exec-cloexec",
            Behaviour::ForkWorker => "fork-worker",
            Behaviour::NoAccept => "no-accept",
            Behaviour::ReplyClose => "reply-close",
            Behaviour::ReplyShutdown => "reply-shutdown",
            Behaviour::ServerFirst => "server-first",
            Behaviour::NoRead => "no-read",
            Behaviour::FillClose => "fill-close",
            Behaviour::Simultaneous => "simultaneous",
            Behaviour::SlowClose => "slow-close",
            Behaviour::KeepAlive => "keep-alive",
            Behaviour::HttpKeepAlive => "http-keep-alive",
        }
    }

    /// Parses a scenario file's name for a behaviour.
    pub fn parse(s: &str) -> Option<Behaviour> {
        Behaviour::ALL.iter().copied().find(|b| b.name() == s)
    }

    /// Whether the acceptor keeps its copy of each accepted socket.
    pub fn acceptor_keeps(self) -> bool {
        matches!(
            self,
            Behaviour::CloseOnly
                | Behaviour::ShutdownClose
                | Behaviour::ReplyClose
                | Behaviour::ReplyShutdown
        )
    }

    /// Whether the handlers wait for the runner's release (SIGUSR1) at the start of the hold.
    pub fn needs_release(self) -> bool {
        matches!(self, Behaviour::Simultaneous)
    }

    fn choices() -> String {
        Behaviour::ALL.iter().map(|b| b.name()).collect::<Vec<_>>().join(", ")
    }
}

impl From<Behaviour> for &'static str {
    fn from(b: Behaviour) -> &'static str {
        b.name()
    }
}

impl TryFrom<String> for Behaviour {
    type Error = String;

    fn try_from(s: String) -> Result<Behaviour, String> {
        Behaviour::parse(&s).ok_or_else(|| {
            format!("unknown server behaviour `{s}` (expected one of {})", Behaviour::choices())
        })
    }
}

impl fmt::Display for Behaviour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A witness beyond sampling, which `[run] require` can make a run unable to do without.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Witness {
    /// The kernel's transitions (the `sock:inet_sock_set_state` tracepoint).
    Transitions,
    /// The packets (a capture on the clients' interface).
    Packets,
}

impl Witness {
    /// The name scenario files use.
    pub fn name(self) -> &'static str {
        match self {
            Witness::Transitions => "transitions",
            Witness::Packets => "packets",
        }
    }

    /// Parses a scenario file's name for a witness.
    pub fn parse(s: &str) -> Option<Witness> {
        [Witness::Transitions, Witness::Packets].into_iter().find(|w| w.name() == s)
    }
}

/// What a client reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientRead {
    /// The echo of its request (`request_bytes`).
    Reply,
    /// Nothing.
    None,
    /// Until the server's FIN: a client the FIN never reaches hangs until `reply_timeout`.
    UntilEof,
    /// The first bytes of a reply of any length, then whatever follows them closely (a client
    /// that closed with reply bytes unread would send RST, not FIN).
    Some,
}

/// How each client ends its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientClose {
    /// close(): the FIN goes out, the socket is orphaned.
    Close,
    /// shutdown(SHUT_WR): the FIN goes out, the client keeps its socket (and reads) until the end
    /// of the run.
    ShutdownWrite,
    /// Write until the send buffer is full (the peer does not read), then close(): the FIN waits
    /// behind the data.
    FillThenClose,
    /// Write until the send buffer is full, then shutdown(SHUT_WR), keeping the socket.
    FillThenShutdown,
}

impl ClientClose {
    /// Every way, for parsing.
    pub const ALL: [ClientClose; 4] = [
        ClientClose::Close,
        ClientClose::ShutdownWrite,
        ClientClose::FillThenClose,
        ClientClose::FillThenShutdown,
    ];

    /// The name scenario files use.
    pub fn name(self) -> &'static str {
        match self {
            ClientClose::Close => "close",
            ClientClose::ShutdownWrite => "shutdown-write",
            ClientClose::FillThenClose => "fill-then-close",
            ClientClose::FillThenShutdown => "fill-then-shutdown",
        }
    }

    /// Whether the client keeps its socket open until the end of the run.
    pub fn keeps_socket(self) -> bool {
        matches!(self, ClientClose::ShutdownWrite | ClientClose::FillThenShutdown)
    }
}

/// When clients close their connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Closing {
    /// Every client connects and exchanges, then all close together: the lab's way of staging
    /// states (every socket in the same state at the same moment).
    #[default]
    Together,
    /// Each client closes as soon as its own exchange is over, at most `concurrency` at a time,
    /// the next starting as one finishes: how real clients behave (`cwlab check`'s default).
    Each,
}

impl Closing {
    /// The name `--close` takes.
    pub fn name(self) -> &'static str {
        match self {
            Closing::Together => "together",
            Closing::Each => "each",
        }
    }
}

/// How a connection pool treats the connections it keeps: what the client side of CLOSE-WAIT is
/// made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolPolicy {
    /// Keeps every connection it opened and opens a new one for each request, never reusing or
    /// checking them: each one the server closes stays in CLOSE-WAIT in the client.
    Leak,
    /// Keeps at most `size` idle connections (closing the others when they come back) and finds
    /// a closed one only when it next takes it: CLOSE-WAIT up to `size`, cleared at the next
    /// burst.
    Bounded,
    /// Watches its idle connections and closes one as soon as it reads the server's EOF.
    Checked,
}

impl PoolPolicy {
    /// Every policy, for parsing.
    pub const ALL: [PoolPolicy; 3] = [PoolPolicy::Leak, PoolPolicy::Bounded, PoolPolicy::Checked];

    /// The name scenario files use.
    pub fn name(self) -> &'static str {
        match self {
            PoolPolicy::Leak => "leak",
            PoolPolicy::Bounded => "bounded",
            PoolPolicy::Checked => "checked",
        }
    }
}

/// A client-side connection pool: `count` requests per burst, `bursts` bursts, each after the
/// server has closed every idle connection (its keep-alive timeout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    /// What it does with the connections it keeps.
    pub policy: PoolPolicy,
    /// For `bounded`: the most idle connections it keeps.
    pub size: u32,
    /// Bursts of requests.
    pub bursts: u32,
}

/// How `cwlab check` drives its clients: a few to warm the server up, then the rest in waves,
/// each measured once it settled. A leak grows with every wave; a one-time cost (a runtime's
/// lazy descriptor, a log file) shows in the warm-up or once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WavePlan {
    /// Connections before the baseline.
    pub warmup: u32,
    /// How many waves the other connections are split into.
    pub waves: u32,
}

impl WavePlan {
    /// The default plan for `clients` connections: a warm-up of up to 4 (a tenth of them), then
    /// two waves (one when there are fewer than four connections left).
    pub fn default_for(clients: u32) -> WavePlan {
        let warmup = (clients / 10).min(4);
        let waves = if clients - warmup >= 4 { 2 } else { 1 };
        WavePlan { warmup, waves }
    }

    /// The connections of each wave: the ones after the warm-up, split as evenly as can be (the
    /// last waves take one more).
    pub fn sizes(self, clients: u32) -> Vec<u32> {
        let rest = clients.saturating_sub(self.warmup);
        let k = self.waves.max(1);
        (0..k).map(|i| rest / k + u32::from(i >= k - rest % k)).collect()
    }
}

/// The server's settings beyond its behaviour.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerLimits {
    /// RLIMIT_NOFILE for the acceptor, if the scenario sets one.
    pub nofile: Option<u64>,
    /// SO_RCVBUF on the listener (accepted sockets inherit it), if set.
    pub rcvbuf: Option<u32>,
    /// SO_SNDBUF on the listener, if set.
    pub sndbuf: Option<u32>,
    /// For `keep-alive`: how long a connection may be idle before the server closes it, in ms
    /// (`[server] idle`; 200 ms when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_ms: Option<u64>,
}

impl ServerLimits {
    /// The keep-alive timeout when none is written.
    pub const IDLE: Duration = Duration::from_millis(200);

    /// How long a `keep-alive` connection may be idle.
    pub fn idle(&self) -> Duration {
        self.idle_ms.map_or(Self::IDLE, Duration::from_millis)
    }
}

/// What the clients do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clients {
    /// How many clients connect, one connection each.
    pub count: u32,
    /// Where the count is written (line, column), for errors found when the run starts.
    pub count_position: (usize, usize),
    /// How many connect and exchange at once.
    pub concurrency: u32,
    /// Bytes each client sends; the server echoes them.
    pub request_bytes: u32,
    /// What each client sends instead of `request_bytes` of filler (`cwlab check`'s request).
    pub request: Option<Vec<u8>>,
    /// What a client reads before it closes.
    pub read: ClientRead,
    /// How long a client waits for what it reads; past it, the client counts as hung.
    pub reply_timeout: Option<Duration>,
    /// How a client ends its connection.
    pub close: ClientClose,
    /// When clients close: together, or each as its exchange ends.
    pub closing: Closing,
    /// A warm-up and waves, for `cwlab check`; none for a scenario, whose clients come at once.
    pub waves: Option<WavePlan>,
    /// A connection pool making `count` requests per burst (`[clients] pool`), instead of one
    /// connection per client.
    pub pool: Option<Pool>,
    /// SO_SNDBUF for each client socket, if set.
    pub sndbuf: Option<u32>,
    /// SO_RCVBUF for each client socket, if set.
    pub rcvbuf: Option<u32>,
}

impl Clients {
    /// Connections (or, with a pool, requests) over the whole run: `count`, or `count` per
    /// burst.
    pub fn total(&self) -> u32 {
        self.count * self.pool.map_or(1, |p| p.bursts)
    }
}

/// Where the client and the server are, as the network sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Topology {
    /// Both on one host: the run's namespace (or the host's) loopback.
    #[default]
    Loopback,
    /// Two hosts: the server in a network namespace of its own, joined to the clients' by a
    /// veth pair (10.77.0.1 the clients, 10.77.0.2 the server); each side's sockets are sampled
    /// in its own namespace, as an operator on each machine would see them. Needs root.
    TwoHosts,
}

impl Topology {
    /// With two hosts, the clients' address.
    pub const CLIENT_HOST: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 77, 0, 1);
    /// With two hosts, the server's address.
    pub const SERVER_HOST: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 77, 0, 2);

    /// The name scenario files and reports use.
    pub fn name(self) -> &'static str {
        match self {
            Topology::Loopback => "loopback",
            Topology::TwoHosts => "two-hosts",
        }
    }

    fn parse(s: &str) -> Option<Topology> {
        [Topology::Loopback, Topology::TwoHosts].into_iter().find(|t| t.name() == s)
    }
}

/// What runs as the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerProgram {
    /// One of the lab's forking servers (`cwlab serve`).
    Lab(Behaviour),
    /// A server of the user's own, any language (`cwlab check`, or `[server] command`).
    Command(ServerCommand),
}

impl ServerProgram {
    /// How reports name it: the behaviour, or `command`.
    pub fn name(&self) -> &str {
        match self {
            ServerProgram::Lab(b) => b.name(),
            ServerProgram::Command(_) => "command",
        }
    }
}

/// A server of the user's own: a program and its arguments, where `{port}` stands for the run's
/// port (also in the `PORT` variable).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerCommand {
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// Variables set beside the caller's environment.
    pub env: std::collections::BTreeMap<String, String>,
    /// Where it runs; the caller's working directory when absent.
    pub cwd: Option<PathBuf>,
}

impl ServerCommand {
    /// The arguments with `{port}` replaced.
    pub fn argv_for(&self, port: u16) -> Vec<String> {
        self.argv.iter().map(|a| a.replace("{port}", &port.to_string())).collect()
    }
}

/// What `cwlab check` was told: the scenario of a user's server is made of these.
#[derive(Debug, Clone)]
pub struct CheckSettings {
    /// The server's command.
    pub command: ServerCommand,
    /// Its fixed port, or 0 for one of the run's own.
    pub port: u16,
    /// Clients, one connection each.
    pub clients: u32,
    /// How many connect at once.
    pub concurrency: u32,
    /// What each sends.
    pub request: Vec<u8>,
    /// What each reads before it closes.
    pub read: ClientRead,
    /// When they close.
    pub closing: Closing,
    /// The warm-up and waves.
    pub waves: WavePlan,
    /// How long a client waits for it (while the server answers no one) before it gives up.
    pub reply_timeout: Duration,
    /// How long the lab watches after the clients closed.
    pub hold: Duration,
    /// The run's deadline.
    pub timeout: Duration,
}

/// The expectations of `cwlab check`: what a server that closes well shows.
pub const CHECK_EXPECTATIONS: [&str; 3] =
    ["server CLOSE-WAIT == 0", "acceptor fds leaked == 0", "hung clients == 0"];

impl Scenario {
    /// The scenario `cwlab check` runs: the user's command as the server, clients as told, and
    /// [`CHECK_EXPECTATIONS`].
    pub fn check(c: CheckSettings) -> Scenario {
        let line = c.command.argv.join(" ");
        let concurrency = c.concurrency.clamp(1, c.clients.max(1));
        let sizes = c.waves.sizes(c.clients);
        let waves = match (c.waves.warmup, sizes.as_slice()) {
            (0, [one]) => format!("{one} clients"),
            (w, [one]) => format!("{} clients (a warm-up of {w}, then {one})", c.clients),
            (w, many) => {
                let same = many.iter().all(|n| *n == many[0]);
                let split = if same {
                    format!("{} waves of {}", many.len(), many[0])
                } else {
                    let each: Vec<String> = many.iter().map(u32::to_string).collect();
                    format!("waves of {}", each.join(", "))
                };
                match w {
                    0 => format!("{} clients ({split})", c.clients),
                    w => format!("{} clients (a warm-up of {w}, then {split})", c.clients),
                }
            }
        };
        let how = match c.closing {
            Closing::Each => format!(
                "each connect, send a request, read the reply and close, at most {concurrency} at a time"
            ),
            Closing::Together => {
                "connect, send a request and read the reply, then close together".to_string()
            }
        };
        Scenario {
            file: PathBuf::from("cwlab check"),
            name: "check".into(),
            story: format!(
                "Your server, `{line}`, under the lab's witnesses: {waves} {how}; then the lab watches what stays for {} and names who holds it.",
                duration::format(c.hold)
            ),
            program: ServerProgram::Command(c.command),
            port: c.port,
            server: ServerLimits::default(),
            clients: Clients {
                count: c.clients,
                count_position: (0, 0),
                concurrency,
                request_bytes: c.request.len() as u32,
                request: Some(c.request),
                read: c.read,
                reply_timeout: Some(c.reply_timeout),
                close: ClientClose::Close,
                closing: c.closing,
                waves: Some(c.waves),
                pool: None,
                sndbuf: None,
                rcvbuf: None,
            },
            sample_interval: DEFAULT_SAMPLE_INTERVAL.min(c.hold),
            hold: c.hold,
            timeout: c.timeout,
            expectations: CHECK_EXPECTATIONS
                .iter()
                .map(|e| Expectation::parse(e).expect("the check's expectations parse"))
                .collect(),
            require: Vec::new(),
            topology: Topology::Loopback,
            client_command: None,
        }
    }

    /// The scenario `cwlab check --client` runs: the lab's keep-alive server, closing each
    /// connection once it has been idle for `idle_close`, and the user's command as its client,
    /// watched while it runs.
    pub fn check_client(c: ClientCheckSettings) -> Scenario {
        let line = c.command.argv.join(" ");
        let behaviour = if c.http { Behaviour::HttpKeepAlive } else { Behaviour::KeepAlive };
        Scenario {
            file: PathBuf::from("cwlab check --client"),
            name: "check-client".into(),
            story: format!(
                "Your client, `{line}`, against the lab's server, which answers each request and closes a connection once it has been idle for {} (a keep-alive timeout): the lab watches the client's sockets while it runs and names who keeps the ones the server closed.",
                duration::format(c.idle_close)
            ),
            program: ServerProgram::Lab(behaviour),
            port: 0,
            server: ServerLimits { idle_ms: Some(c.idle_close.as_millis() as u64), ..ServerLimits::default() },
            clients: Clients {
                count: 0,
                count_position: (0, 0),
                concurrency: 1,
                request_bytes: 0,
                request: None,
                read: ClientRead::None,
                reply_timeout: None,
                close: ClientClose::Close,
                closing: Closing::Each,
                waves: None,
                pool: None,
                sndbuf: None,
                rcvbuf: None,
            },
            sample_interval: DEFAULT_SAMPLE_INTERVAL,
            hold: Duration::ZERO,
            timeout: c.timeout + Duration::from_secs(60),
            expectations: CHECK_CLIENT_EXPECTATIONS
                .iter()
                .map(|e| Expectation::parse(e).expect("the client check's expectations parse"))
                .collect(),
            require: Vec::new(),
            topology: Topology::Loopback,
            client_command: Some(ClientCommand {
                command: c.command,
                stuck: c.stuck,
                timeout: c.timeout,
            }),
        }
    }
}

/// The expectations of `cwlab check --client`: a client whose pool notices the server's FIN.
pub const CHECK_CLIENT_EXPECTATIONS: [&str; 1] = ["client CLOSE-WAIT leaked == 0"];

/// A scenario, read and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    /// The file it came from.
    pub file: PathBuf,
    /// Its name.
    pub name: String,
    /// What it shows and why.
    pub story: String,
    /// The server: one of the lab's behaviours, or a command of the user's own.
    pub program: ServerProgram,
    /// The port to listen on; 0 picks a free one.
    pub port: u16,
    /// The acceptor's descriptor limit and socket buffers.
    pub server: ServerLimits,
    /// What the clients do.
    pub clients: Clients,
    /// How often the socket table is sampled.
    pub sample_interval: Duration,
    /// How long the lab watches after the clients closed.
    pub hold: Duration,
    /// The whole run's deadline.
    pub timeout: Duration,
    /// What must hold.
    pub expectations: Vec<Expectation>,
    /// Witnesses the run cannot do without (`transitions`, `packets`): where one cannot be had,
    /// the run exits 2 instead of reporting its expectations "not observable".
    pub require: Vec<Witness>,
    /// One host or two.
    pub topology: Topology,
    /// For `cwlab check --client`: the user's client, run against the lab's server.
    pub client_command: Option<ClientCommand>,
}

/// A client of the user's own (`cwlab check --client`): a program and its arguments, where
/// `{url}`, `{host}` and `{port}` stand for the lab's server (also in `URL`, `HOST`, `PORT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCommand {
    /// The program, its arguments, environment and folder.
    pub command: ServerCommand,
    /// How long a client-side CLOSE-WAIT may last before it counts as stuck.
    pub stuck: Duration,
    /// How long the client may run.
    pub timeout: Duration,
}

impl ClientCommand {
    /// The arguments with `{url}`, `{host}` and `{port}` replaced, and the environment with
    /// `URL`, `HOST` and `PORT` set.
    pub fn for_server(&self, url: &str, host: &str, port: u16) -> ServerCommand {
        let mut c = self.command.clone();
        c.argv = c
            .argv
            .iter()
            .map(|a| {
                a.replace("{url}", url).replace("{host}", host).replace("{port}", &port.to_string())
            })
            .collect();
        c.env.insert("URL".into(), url.into());
        c.env.insert("HOST".into(), host.into());
        c
    }
}

/// What `cwlab check --client` was told.
#[derive(Debug, Clone)]
pub struct ClientCheckSettings {
    /// The client's command.
    pub command: ServerCommand,
    /// HTTP/1.1 (`http-keep-alive`) or a line echo (`keep-alive`).
    pub http: bool,
    /// The server's keep-alive timeout.
    pub idle_close: Duration,
    /// How long a client-side CLOSE-WAIT may last before it is stuck.
    pub stuck: Duration,
    /// How long the client may run.
    pub timeout: Duration,
}

impl Scenario {
    /// The lab's behaviour, when the server is the lab's.
    pub fn behaviour(&self) -> Option<Behaviour> {
        match &self.program {
            ServerProgram::Lab(b) => Some(*b),
            ServerProgram::Command(_) => None,
        }
    }

    /// The user's client, for `cwlab check --client`.
    pub fn client_command(&self) -> Option<&ClientCommand> {
        self.client_command.as_ref()
    }

    /// The first line of the story.
    pub fn headline(&self) -> &str {
        self.story.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("")
    }
}

/// A scenario file that could not be read or is not a valid scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line and column, when the problem has a place.
    pub position: Option<(usize, usize)>,
    /// What was wrong, or what was expected there.
    pub message: String,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, col)) => {
                write!(f, "{}:{line}:{col}: {}", self.file.display(), self.message)
            }
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for ScenarioError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: String,
    story: String,
    #[serde(default)]
    expect: Vec<Spanned<String>>,
    server: RawServer,
    clients: RawClients,
    #[serde(default)]
    run: RawRun,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    behaviour: Option<Spanned<String>>,
    command: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    env: std::collections::BTreeMap<String, String>,
    cwd: Option<String>,
    #[serde(default)]
    port: u16,
    nofile: Option<Spanned<u64>>,
    rcvbuf: Option<u32>,
    sndbuf: Option<u32>,
    idle: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClients {
    count: Spanned<u32>,
    concurrency: Option<Spanned<u32>>,
    #[serde(default = "default_request_bytes")]
    request_bytes: u32,
    request: Option<String>,
    read: Option<Spanned<String>>,
    reply_timeout: Option<Spanned<String>>,
    close: Option<Spanned<String>>,
    sndbuf: Option<u32>,
    rcvbuf: Option<u32>,
    pool: Option<Spanned<String>>,
    pool_size: Option<Spanned<u32>>,
    bursts: Option<Spanned<u32>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRun {
    sample_interval: Option<Spanned<String>>,
    hold: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    #[serde(default)]
    require: Vec<Spanned<String>>,
    topology: Option<Spanned<String>>,
}

fn default_request_bytes() -> u32 {
    64
}

/// The defaults of the `[run]` table.
pub const DEFAULT_SAMPLE_INTERVAL: Duration = Duration::from_millis(50);
/// How long the lab holds when the scenario does not say.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(1);
/// A run's deadline when neither the scenario nor the command line says.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

struct Source<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    fn error(&self, at: Option<usize>, message: impl Into<String>) -> ScenarioError {
        ScenarioError {
            file: self.file.to_path_buf(),
            position: at.map(|offset| line_col(self.text, offset)),
            message: message.into(),
        }
    }

    fn at(&self, span: Range<usize>, message: impl Into<String>) -> ScenarioError {
        self.error(Some(span.start), message)
    }

    fn duration(
        &self,
        value: &Option<Spanned<String>>,
        default: Duration,
    ) -> Result<Duration, ScenarioError> {
        match value {
            None => Ok(default),
            Some(v) => duration::parse(v.get_ref()).map_err(|m| self.at(v.span(), m)),
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|e| ScenarioError {
            file: path.to_path_buf(),
            position: None,
            message: format!("cannot read the scenario file: {e}"),
        })?;
        Scenario::parse(path, &text)
    }

    /// Checks a scenario given as text; `file` names it in errors.
    pub fn parse(file: &Path, text: &str) -> Result<Scenario, ScenarioError> {
        let src = Source { file, text };
        let raw: RawScenario = toml::from_str(text).map_err(|e| {
            let at = e.span().map_or(0, |s| s.start);
            let mut message = e.message().trim().replace('\n', " ");
            if message.is_empty() {
                // The TOML parser names some refusals by place alone (a control character in a
                // comment or a string): say what it is (found by tests/parsers.rs).
                message = match text.get(at..).and_then(|t| t.chars().next()) {
                    Some(c) if c.is_control() => {
                        format!("invalid character {c:?}: control characters are not allowed here")
                    }
                    Some(c) => format!("invalid TOML at {c:?}"),
                    None => "invalid TOML at the end of the file".to_string(),
                };
            }
            src.error(Some(at), message)
        })?;
        let program = program(&src, &raw.server)?;
        let clients = clients(&src, &raw.clients)?;
        if let Some(n) = raw.server.nofile.as_ref().filter(|n| *n.get_ref() < 8) {
            return Err(
                src.at(n.span(), format!("expected a nofile of at least 8, found {}", n.get_ref()))
            );
        }
        let idle_ms = match &raw.server.idle {
            None => None,
            Some(_) => Some(src.duration(&raw.server.idle, ServerLimits::IDLE)?.as_millis() as u64),
        };
        let server = ServerLimits {
            nofile: raw.server.nofile.as_ref().map(|n| *n.get_ref()),
            rcvbuf: raw.server.rcvbuf,
            sndbuf: raw.server.sndbuf,
            idle_ms,
        };
        let sample_interval = src.duration(&raw.run.sample_interval, DEFAULT_SAMPLE_INTERVAL)?;
        let hold = src.duration(&raw.run.hold, DEFAULT_HOLD)?;
        let timeout = src.duration(&raw.run.timeout, DEFAULT_TIMEOUT)?;
        check_run(&src, &raw.run, sample_interval, hold, timeout)?;
        let mut require = Vec::new();
        for r in &raw.run.require {
            require.push(Witness::parse(r.get_ref()).ok_or_else(|| {
                src.at(
                    r.span(),
                    format!("unknown witness `{}` (expected transitions or packets)", r.get_ref()),
                )
            })?);
        }
        let topology = match &raw.run.topology {
            None => Topology::default(),
            Some(t) => Topology::parse(t.get_ref()).ok_or_else(|| {
                src.at(
                    t.span(),
                    format!("unknown topology `{}` (expected loopback or two-hosts)", t.get_ref()),
                )
            })?,
        };
        let mut expectations = Vec::new();
        for e in &raw.expect {
            expectations.push(expectation(&src, e, hold)?);
        }
        Ok(Scenario {
            client_command: None,
            file: file.to_path_buf(),
            name: raw.name,
            story: raw.story.trim().to_string(),
            program,
            port: raw.server.port,
            server,
            clients,
            sample_interval,
            hold,
            timeout,
            expectations,
            require,
            topology,
        })
    }
}

/// The server: `behaviour` (the lab's) or `command` (the user's), exactly one.
fn program(src: &Source<'_>, raw: &RawServer) -> Result<ServerProgram, ScenarioError> {
    match (&raw.behaviour, &raw.command) {
        (Some(b), None) => {
            let name = b.get_ref();
            let behaviour = Behaviour::parse(name).ok_or_else(|| {
                src.at(
                    b.span(),
                    format!(
                        "unknown server behaviour `{name}` (expected one of {})",
                        Behaviour::choices()
                    ),
                )
            })?;
            if raw.cwd.is_some() || !raw.env.is_empty() {
                return Err(src.at(b.span(), "`env` and `cwd` go with `command`, not `behaviour`"));
            }
            Ok(ServerProgram::Lab(behaviour))
        }
        (None, Some(c)) => {
            if c.get_ref().first().is_none_or(|p| p.is_empty()) {
                return Err(src.at(c.span(), "expected a command: a program and its arguments"));
            }
            Ok(ServerProgram::Command(ServerCommand {
                argv: c.get_ref().clone(),
                env: raw.env.clone(),
                cwd: raw.cwd.as_ref().map(PathBuf::from),
            }))
        }
        (Some(b), Some(_)) => Err(src.at(
            b.span(),
            "a server has a `behaviour` (the lab's) or a `command` (yours), not both",
        )),
        (None, None) => Err(src.error(
            src.text.find("[server]").or(Some(0)),
            "expected `behaviour = \"…\"` (one of the lab's) or `command = [\"program\", …]` in [server]",
        )),
    }
}

fn clients(src: &Source<'_>, raw: &RawClients) -> Result<Clients, ScenarioError> {
    let count = *raw.count.get_ref();
    if count == 0 {
        return Err(src.at(raw.count.span(), "expected a client count of at least 1, found 0"));
    }
    let concurrency = match &raw.concurrency {
        None => count,
        Some(c) if *c.get_ref() == 0 => {
            return Err(src.at(c.span(), "expected a concurrency of at least 1, found 0"))
        }
        Some(c) => (*c.get_ref()).min(count),
    };
    let close = match &raw.close {
        None => ClientClose::Close,
        Some(c) => ClientClose::ALL.iter().copied().find(|x| x.name() == c.get_ref()).ok_or_else(|| {
            src.at(
                c.span(),
                format!(
                    "unknown client close `{}` (expected one of close, shutdown-write, fill-then-close, fill-then-shutdown)",
                    c.get_ref()
                ),
            )
        })?,
    };
    let read = match raw.read.as_ref().map(|r| (r, r.get_ref().as_str())) {
        None | Some((_, "reply")) => ClientRead::Reply,
        Some((_, "none")) => ClientRead::None,
        Some((_, "until-eof")) => ClientRead::UntilEof,
        Some((_, "some")) => ClientRead::Some,
        Some((r, other)) => {
            return Err(src.at(
                r.span(),
                format!(
                    "unknown client read `{other}` (expected one of reply, some, none, until-eof)"
                ),
            ))
        }
    };
    let reply_timeout = match &raw.reply_timeout {
        None => None,
        Some(t) => Some(duration::parse(t.get_ref()).map_err(|m| src.at(t.span(), m))?),
    };
    Ok(Clients {
        count,
        count_position: line_col(src.text, raw.count.span().start),
        concurrency,
        request_bytes: raw.request_bytes,
        request: raw.request.as_ref().map(|r| r.clone().into_bytes()),
        read,
        reply_timeout,
        close,
        closing: Closing::Together,
        waves: None,
        pool: pool(src, raw)?,
        sndbuf: raw.sndbuf,
        rcvbuf: raw.rcvbuf,
    })
}

/// `[clients] pool`, `pool_size` and `bursts`: a pool, or none.
fn pool(src: &Source<'_>, raw: &RawClients) -> Result<Option<Pool>, ScenarioError> {
    let Some(p) = &raw.pool else {
        if let Some(x) =
            raw.pool_size.as_ref().map(Spanned::span).or(raw.bursts.as_ref().map(Spanned::span))
        {
            return Err(src.at(
                x,
                "pool_size and bursts go with `pool = \"leak\"`, `\"bounded\"` or `\"checked\"`",
            ));
        }
        return Ok(None);
    };
    let policy =
        PoolPolicy::ALL.iter().copied().find(|x| x.name() == p.get_ref()).ok_or_else(|| {
            src.at(
                p.span(),
                format!("unknown pool `{}` (expected one of leak, bounded, checked)", p.get_ref()),
            )
        })?;
    let size = match (&raw.pool_size, policy) {
        (Some(n), PoolPolicy::Bounded) if *n.get_ref() == 0 => {
            return Err(src.at(n.span(), "expected a pool_size of at least 1, found 0"))
        }
        (Some(n), PoolPolicy::Bounded) => *n.get_ref(),
        (None, PoolPolicy::Bounded) => {
            return Err(src.at(
                p.span(),
                "a bounded pool needs `pool_size = N`, the most idle connections it keeps",
            ))
        }
        (Some(n), _) => return Err(src.at(n.span(), "pool_size goes with `pool = \"bounded\"`")),
        (None, _) => 0,
    };
    let bursts = match &raw.bursts {
        Some(b) if *b.get_ref() == 0 => {
            return Err(src.at(b.span(), "expected at least 1 burst, found 0"))
        }
        Some(b) => *b.get_ref(),
        None => 3,
    };
    Ok(Some(Pool { policy, size, bursts }))
}

fn check_run(
    src: &Source<'_>,
    raw: &RawRun,
    sample_interval: Duration,
    hold: Duration,
    timeout: Duration,
) -> Result<(), ScenarioError> {
    // Where a clash of two settings is placed: at the one written in the file (the other took
    // its default), the first one when both are (found by tests/parsers.rs).
    let place = |v: &Option<Spanned<String>>| v.as_ref().map(|v| v.span().start);
    let either = |a: &Option<Spanned<String>>, b: &Option<Spanned<String>>| {
        place(a).or(place(b)).or(Some(0))
    };
    if sample_interval.is_zero() {
        return Err(src.error(place(&raw.sample_interval), "expected a sample_interval above 0"));
    }
    if sample_interval > hold {
        return Err(src.error(
            either(&raw.sample_interval, &raw.hold),
            format!(
                "sample_interval {} is longer than the hold ({}): the hold would see no sample",
                duration::format(sample_interval),
                duration::format(hold)
            ),
        ));
    }
    if timeout <= hold {
        return Err(src.error(
            either(&raw.timeout, &raw.hold),
            format!(
                "timeout {} leaves no time beyond the hold ({})",
                duration::format(timeout),
                duration::format(hold)
            ),
        ));
    }
    Ok(())
}

fn expectation(
    src: &Source<'_>,
    raw: &Spanned<String>,
    hold: Duration,
) -> Result<Expectation, ScenarioError> {
    // The span starts at the opening quote; expectations are plain one-line strings.
    let quote = if src.text[raw.span()].starts_with("\"\"\"") { 3 } else { 1 };
    let e = Expectation::parse(raw.get_ref())
        .map_err(|e| src.at(raw.span().start + quote + e.offset..raw.span().end, e.message))?;
    let window = match e.window {
        Window::Within(d) | Window::For(d) => Some(d),
        Window::End => None,
    };
    if let Some(d) = window.filter(|d| *d > hold) {
        return Err(src.at(
            raw.span(),
            format!(
                "`{}` looks {} past the hold ({}): raise [run] hold",
                e.text,
                duration::format(d),
                duration::format(hold)
            ),
        ));
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"name = "leak"
story = """
The parent keeps its copy.
More lines."""
expect = [
    "server CLOSE-WAIT == clients for 1s",
    "client FIN-WAIT-2 == clients",
]

[server]
behaviour = "close-only"

[clients]
count = 100

[run]
sample_interval = "50ms"
hold = "1500ms"
"#;

    fn load(text: &str) -> Result<Scenario, ScenarioError> {
        Scenario::parse(Path::new("scenarios/t.toml"), text)
    }

    fn err(text: &str) -> String {
        load(text).unwrap_err().to_string()
    }

    #[test]
    fn reads_a_good_file_with_defaults() {
        let s = load(GOOD).unwrap();
        assert_eq!(s.name, "leak");
        assert_eq!(s.headline(), "The parent keeps its copy.");
        assert_eq!(s.behaviour(), Some(Behaviour::CloseOnly));
        assert_eq!(s.clients.count, 100);
        assert_eq!(s.clients.concurrency, 100);
        assert_eq!(s.clients.request_bytes, 64);
        assert_eq!(s.clients.read, ClientRead::Reply);
        assert_eq!(s.clients.close, ClientClose::Close);
        assert_eq!(s.hold, Duration::from_millis(1500));
        assert_eq!(s.timeout, DEFAULT_TIMEOUT);
        assert_eq!(s.expectations.len(), 2);
        assert_eq!(s.topology, Topology::Loopback);
    }

    #[test]
    fn topology_is_read_and_an_unknown_one_placed() {
        let two = GOOD.replace("hold = \"1500ms\"", "hold = \"1500ms\"\ntopology = \"two-hosts\"");
        assert_eq!(load(&two).unwrap().topology, Topology::TwoHosts);
        let e = err(&GOOD.replace("hold = \"1500ms\"", "hold = \"1500ms\"\ntopology = \"three\""));
        assert_eq!(
            e,
            "scenarios/t.toml:19:12: unknown topology `three` (expected loopback or two-hosts)"
        );
    }

    #[test]
    fn unknown_key_names_line_and_column() {
        let text = GOOD.replace("count = 100", "count = 100\ncolor = \"red\"");
        let e = err(&text);
        assert!(
            e.starts_with("scenarios/t.toml:15:1: unknown field `color`, expected one of"),
            "{e}"
        );
    }

    #[test]
    fn wrong_type_names_line_and_column() {
        let e = err(&GOOD.replace("count = 100", "count = \"many\""));
        assert!(
            e.starts_with("scenarios/t.toml:14:9: invalid type: string \"many\", expected u32"),
            "{e}"
        );
    }

    #[test]
    fn not_toml_names_the_place() {
        let e = err("name = \"x\"\nstory = \n");
        assert!(e.starts_with("scenarios/t.toml:2:"), "{e}");
    }

    #[test]
    fn unknown_behaviour_lists_the_choices() {
        let e = err(&GOOD.replace("close-only", "close-maybe"));
        assert_eq!(
            e,
            "scenarios/t.toml:11:13: unknown server behaviour `close-maybe` (expected one of close-only, shutdown-close, parent-closes, exec-inherit, exec-cloexec, fork-worker, no-accept, reply-close, reply-shutdown, server-first, no-read, fill-close, simultaneous, slow-close, keep-alive, http-keep-alive)"
        );
    }

    #[test]
    fn bad_expectation_points_inside_the_string() {
        let e = err(&GOOD.replace("client FIN-WAIT-2 == clients", "client FIN-WAIT-3 == clients"));
        assert!(e.starts_with("scenarios/t.toml:7:13: unknown TCP state `FIN-WAIT-3`"), "{e}");
        let e = err(&GOOD.replace("client FIN-WAIT-2 == clients", "clinet FIN-WAIT-2 == clients"));
        assert!(e.starts_with("scenarios/t.toml:7:6: expected a quantity"), "{e}");
    }

    #[test]
    fn zero_clients_is_refused() {
        let e = err(&GOOD.replace("count = 100", "count = 0"));
        assert_eq!(e, "scenarios/t.toml:14:9: expected a client count of at least 1, found 0");
    }

    #[test]
    fn sample_interval_must_fit_the_hold() {
        let e = err(&GOOD.replace("\"50ms\"", "\"0ms\""));
        assert_eq!(e, "scenarios/t.toml:17:19: expected a sample_interval above 0");
        let e = err(&GOOD.replace("\"50ms\"", "\"2s\""));
        assert_eq!(
            e,
            "scenarios/t.toml:17:19: sample_interval 2s is longer than the hold (1.5s): the hold would see no sample"
        );
    }

    #[test]
    fn windows_must_fit_the_hold() {
        let e = err(&GOOD.replace("for 1s", "for 2s"));
        assert_eq!(
            e,
            "scenarios/t.toml:6:5: `server CLOSE-WAIT == clients for 2s` looks 2s past the hold (1.5s): raise [run] hold"
        );
    }

    #[test]
    fn bad_duration_is_placed() {
        let e = err(&GOOD.replace("\"1500ms\"", "\"long\""));
        assert_eq!(
            e,
            "scenarios/t.toml:18:8: expected a duration such as `500ms`, `2s` or `1m`, found `long`"
        );
    }

    #[test]
    fn missing_file_is_named() {
        let e = Scenario::load(Path::new("/nonexistent/x.toml")).unwrap_err().to_string();
        assert!(
            e.starts_with("/nonexistent/x.toml: cannot read the scenario file: No such file"),
            "{e}"
        );
    }
}
