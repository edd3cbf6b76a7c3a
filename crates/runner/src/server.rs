//! Starting and stopping the server: `cwlab serve` in a process group of its own, with a death
//! signal armed before exec, a lifeline on its stdin and its events on its stdout.

use std::collections::{BTreeSet, HashSet};
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cwlab_model::protocol::{entry, ContainOptions, ServeOptions, ServerMessage};
use cwlab_model::report::ServerOutcome;
use rustix::event::{poll, PollFd, PollFlags};
use rustix::process::Signal;

use crate::{io, RunError};

/// The environment variable that marks every process a run starts, with the run's id as value.
pub const RUN_MARK: &str = "CWLAB_RUN";

/// A running server; dropping it kills every process it started.
pub struct Server {
    child: Child,
    lifeline: Option<ChildStdin>,
    reader: Option<JoinHandle<()>>,
    /// The last lines the server wrote on stderr (and, for a command, stdout).
    pub output: Tail,
    /// Whether it is a command of the user's own, contained (`cwlab contain`).
    contained: bool,
    /// The acceptor's pid as the runner sees it (for a command: the listening process).
    pub acceptor: u32,
    /// The port it listens on.
    pub port: u16,
    /// What it has reported since.
    pub stats: Arc<Mutex<ServerOutcome>>,
    /// The number of connections accepted so far, as it changes.
    pub accepted: tokio::sync::watch::Receiver<u64>,
    /// When each request was answered (the keep-alive behaviours).
    pub served_at: Arc<Mutex<Vec<Instant>>>,
    /// When a command's first process ended.
    pub ended_at: Arc<Mutex<Option<Instant>>>,
    /// Why a command could not be executed, when it could not.
    pub cannot_run: Arc<Mutex<Option<String>>>,
    /// For a command: where its LISTEN socket is, as the clients dial it (a wildcard address as
    /// the loopback of its family).
    pub address: Option<SocketAddr>,
}

/// What the server's messages tell, shared with the thread that reads them.
struct Seen {
    stats: Arc<Mutex<ServerOutcome>>,
    served_at: Arc<Mutex<Vec<Instant>>>,
    ended_at: Arc<Mutex<Option<Instant>>>,
    cannot_run: Arc<Mutex<Option<String>>>,
}

/// How long a server may listen on other ports only before the run says so: a server that
/// opens an admin port first gets a moment to open the one asked for.
const WRONG_PORT_GRACE: Duration = Duration::from_secs(1);

/// LISTEN sockets of the server on ports other than the run's, while it does not listen there.
#[derive(Default)]
struct Elsewhere {
    since: Option<Instant>,
    last_look: Option<Instant>,
    ports: BTreeSet<u16>,
}

impl Elsewhere {
    /// Looks (at most every 100 ms: each look walks the processes) at LISTEN sockets on other
    /// ports; the ports, once the server has listened there and not on its own for
    /// [`WRONG_PORT_GRACE`].
    fn look(
        &mut self,
        there: &[(u64, u16)],
        theirs: impl Fn(&HashSet<u64>) -> HashSet<u64>,
    ) -> Option<BTreeSet<u16>> {
        if self.last_look.is_some_and(|t| t.elapsed() < Duration::from_millis(100)) {
            return self.due();
        }
        self.last_look = Some(Instant::now());
        let held = match there.is_empty() {
            true => HashSet::new(),
            false => theirs(&there.iter().map(|(inode, _)| *inode).collect()),
        };
        let ports: BTreeSet<u16> =
            there.iter().filter(|(inode, _)| held.contains(inode)).map(|(_, p)| *p).collect();
        if ports.is_empty() {
            *self = Elsewhere { last_look: self.last_look, ..Elsewhere::default() };
            return None;
        }
        self.since.get_or_insert_with(Instant::now);
        self.ports = ports;
        self.due()
    }

    fn due(&self) -> Option<BTreeSet<u16>> {
        let since = self.since?;
        (since.elapsed() >= WRONG_PORT_GRACE).then(|| self.ports.clone())
    }
}

/// Where clients dial a server listening on `addrs`: its IPv4 address where it has one (a
/// wildcard as 127.0.0.1), else its IPv6 one (`::` as `::1`).
///
/// ```text
/// 0.0.0.0:P → 127.0.0.1:P    [::]:P → [::1]:P    [::ffff:127.0.0.1]:P → 127.0.0.1:P
/// ```
fn dial_address(addrs: &[SocketAddr]) -> Option<SocketAddr> {
    let chosen = addrs.iter().find(|a| a.is_ipv4()).or_else(|| addrs.first())?;
    let ip = match chosen.ip() {
        IpAddr::V4(v) if v.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v) if v.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        // A JVM binds an IPv6 socket to an IPv4 address (`::ffff:127.0.0.1`): dial the IPv4 one.
        IpAddr::V6(v) => v.to_ipv4_mapped().map_or(IpAddr::V6(v), IpAddr::V4),
        ip => ip,
    };
    Some(SocketAddr::new(ip, chosen.port()))
}

/// What runs as the server.
pub enum Program {
    /// The lab's own: `cwlab serve OPTIONS`.
    Lab(ServeOptions),
    /// The user's: `cwlab contain OPTIONS`.
    Command(ContainOptions),
    /// The user's client (`cwlab check --client`), contained the same way, watched from the
    /// moment it starts: nothing to wait for.
    Client(ContainOptions),
}

/// How to start the server.
pub struct Launch<'a> {
    pub exe: &'a Path,
    /// What runs, with its options as one typed argument.
    pub program: Program,
    pub mark: &'a str,
    pub deadline: Instant,
}

/// The last lines of a stream, at most [`Tail::LINES`] of at most 400 bytes each.
#[derive(Clone, Default)]
pub struct Tail {
    lines: Arc<Mutex<std::collections::VecDeque<String>>>,
    /// Set when the stream has ended and every line of it is kept.
    ended: Arc<std::sync::atomic::AtomicBool>,
}

impl Tail {
    /// How many lines are kept.
    pub const LINES: usize = 20;

    /// Drains `r` on a thread of its own until its end: a chatty server never blocks on a full
    /// pipe, and only the last lines are kept.
    fn drain(r: impl Read + Send + 'static) -> Tail {
        let tail = Tail::default();
        let (lines, ended) = (tail.lines.clone(), tail.ended.clone());
        std::thread::spawn(move || {
            let mut r = std::io::BufReader::new(r);
            let mut line = Vec::new();
            while matches!(std::io::BufRead::read_until(&mut r, b'\n', &mut line), Ok(n) if n > 0) {
                let mut text = String::from_utf8_lossy(&line).trim_end().to_string();
                if text.len() > 400 {
                    let mut cut = 400;
                    while !text.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    text.truncate(cut);
                }
                let mut v = lines.lock().unwrap();
                if v.len() == Tail::LINES {
                    v.pop_front();
                }
                v.push_back(text);
                line.clear();
            }
            ended.store(true, std::sync::atomic::Ordering::Release);
        });
        tail
    }

    /// The lines kept so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().iter().cloned().collect()
    }

    /// Whether the stream has ended (every line of it is in [`Tail::lines`]).
    pub fn ended(&self) -> bool {
        self.ended.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl Server {
    /// The server's first process (the supervisor, with a PID namespace): the runner's child,
    /// and in the server's network namespace.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts the server and waits, to the deadline, until it listens: the lab's says so, a
    /// command's LISTEN socket is seen through sock_diag.
    pub fn start(l: &Launch<'_>) -> Result<Server, RunError> {
        let (sub, arg, pid_namespace) = match &l.program {
            Program::Lab(o) => (entry::SERVE, o.to_arg(), o.pid_namespace),
            Program::Command(o) | Program::Client(o) => {
                (entry::CONTAIN, o.to_arg(), o.pid_namespace)
            }
        };
        let mut cmd = Command::new(l.exe);
        cmd.arg(sub)
            .arg(arg)
            .env(RUN_MARK, l.mark)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let parent = std::process::id() as i32;
        // SAFETY: between fork and exec the closure makes only async-signal-safe system calls
        // (prctl(2), getppid(2), _exit(2)) and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                rustix::process::set_parent_process_death_signal(Some(Signal::Kill))?;
                if rustix::process::Pid::as_raw(rustix::process::getppid()) != parent {
                    // Raw libc: rustix has _exit only in its unstable runtime module.
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(io(format!("start {} {sub}", l.exe.display())))?;
        cwlab_os::signals::guard_group(child.id() as i32);
        let lines = LineReader { out: child.stdout.take().expect("piped"), buf: Vec::new() };
        let output = Tail::drain(child.stderr.take().expect("piped"));
        let lifeline = child.stdin.take();
        let (accepted_tx, accepted_rx) = tokio::sync::watch::channel(0u64);
        let mut server = Server {
            acceptor: child.id(),
            child,
            lifeline,
            reader: None,
            output,
            contained: matches!(l.program, Program::Command(_) | Program::Client(_)),
            port: 0,
            stats: Arc::default(),
            accepted: accepted_rx,
            served_at: Arc::default(),
            ended_at: Arc::default(),
            cannot_run: Arc::default(),
            address: None,
        };
        let lines = match &l.program {
            Program::Lab(_) => server.lab_ready(lines, pid_namespace, l.deadline)?,
            Program::Command(o) => server.command_ready(lines, o.port, l.deadline)?,
            Program::Client(_) => lines,
        };
        let seen = Seen {
            stats: server.stats.clone(),
            served_at: server.served_at.clone(),
            ended_at: server.ended_at.clone(),
            cannot_run: server.cannot_run.clone(),
        };
        server.reader = Some(std::thread::spawn(move || follow(lines, &seen, &accepted_tx)));
        Ok(server)
    }

    /// Waits for the lab's server to say it listens, and where its acceptor is.
    fn lab_ready(
        &mut self,
        mut lines: LineReader,
        pid_namespace: bool,
        deadline: Instant,
    ) -> Result<LineReader, RunError> {
        // With a PID namespace, the supervisor's `acceptor` and the acceptor's own `listening`
        // race each other to the pipe: wait for both.
        let mut acceptor_known = !pid_namespace;
        while self.port == 0 || !acceptor_known {
            let Some(line) = lines.next_line(deadline)? else {
                return Err(self.failed_to_start(None));
            };
            match ServerMessage::parse(&line) {
                Some(ServerMessage::Acceptor { pid }) => {
                    self.acceptor = pid;
                    acceptor_known = true;
                }
                Some(ServerMessage::Listening { port }) => self.port = port,
                _ => {}
            }
        }
        Ok(lines)
    }

    /// Waits until a LISTEN socket on `port` is in the table (sock_diag, in the calling thread's
    /// namespace) and a process of the server holds it: that process is the acceptor, and the
    /// socket's address is where the clients dial. Fails at once when the command cannot be
    /// executed, a moment after the server is seen listening on other ports only, and when
    /// nothing of the server is left first.
    fn command_ready(
        &mut self,
        mut lines: LineReader,
        port: u16,
        deadline: Instant,
    ) -> Result<LineReader, RunError> {
        let mut table = cwlab_sampler::Table::open(cwlab_sampler::Backend::SockDiag)?;
        let q = cwlab_sampler::Query {
            states: cwlab_sampler::States::of(&[cwlab_model::TcpState::Listen]),
            port: None,
            side: cwlab_sampler::PortSide::Local,
            peer: None,
            info: false,
        };
        let mut exited = None;
        let mut elsewhere = Elsewhere::default();
        loop {
            let (mut here, mut there) = (Vec::new(), Vec::new());
            table.for_each(&q, |r| {
                if r.local.port() == port {
                    here.push((r.inode, r.local));
                } else {
                    there.push((r.inode, r.local.port()));
                }
            })?;
            if let Some(pid) = self.holder(here.iter().map(|(inode, _)| *inode)) {
                self.acceptor = pid;
                self.port = port;
                let addrs: Vec<SocketAddr> = here.iter().map(|(_, a)| *a).collect();
                self.address = dial_address(&addrs);
                return Ok(lines);
            }
            if let Some(ports) = elsewhere.look(&there, |inodes| self.held(inodes)) {
                return Err(self.wrong_port(port, &ports));
            }
            // A message, or 10 ms to look at the table again: a wait for a condition, to the
            // deadline.
            let soon = (Instant::now() + Duration::from_millis(10)).min(deadline);
            match lines.next_line(soon) {
                Ok(Some(line)) => match ServerMessage::parse(&line) {
                    Some(ServerMessage::Exited { status }) => exited = Some(status),
                    Some(ServerMessage::Empty) => return Err(self.failed_to_start(exited)),
                    Some(ServerMessage::CannotRun { program, reason }) => {
                        self.stop(Duration::ZERO);
                        return Err(RunError::BadInput(format!("{program}: {reason}")));
                    }
                    _ => {}
                },
                Ok(None) => return Err(self.failed_to_start(exited)),
                Err(RunError::Environment(_)) if Instant::now() < deadline => {}
                Err(RunError::Environment(_)) => {
                    return Err(self.never_listened(port, exited));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The first process of the server (by pid) holding one of these LISTEN sockets.
    fn holder(&self, inodes: impl Iterator<Item = u64>) -> Option<u32> {
        let inodes: HashSet<u64> = inodes.collect();
        if inodes.is_empty() {
            return None;
        }
        let found = cwlab_sampler::holders::find(&inodes);
        let mine = self.child.id();
        found.processes.keys().copied().filter(|p| found.descends(*p, mine)).min()
    }

    /// Those of `inodes` a process of the server holds.
    fn held(&self, inodes: &HashSet<u64>) -> HashSet<u64> {
        let found = cwlab_sampler::holders::find(inodes);
        let mine = self.child.id();
        inodes
            .iter()
            .copied()
            .filter(|i| found.of(*i).iter().any(|h| found.descends(h.pid, mine)))
            .collect()
    }

    fn wrong_port(&mut self, port: u16, ports: &BTreeSet<u16>) -> RunError {
        self.stop(Duration::ZERO);
        let list: Vec<String> = ports.iter().map(u16::to_string).collect();
        let first = ports.first().copied().unwrap_or_default();
        RunError::BadInput(format!(
            "the server listens on {}, not on {port}: pass --port {first}, or give it {{port}} or $PORT",
            list.join(" and ")
        ))
    }

    fn never_listened(&mut self, port: u16, exited: Option<String>) -> RunError {
        self.stop(Duration::ZERO);
        let how = exited.map_or(String::new(), |s| format!(" (its command ended: {s})"));
        RunError::Environment(format!(
            "the server never listened on port {port} within the ready timeout{how}{}",
            self.last_lines()
        ))
    }

    fn last_lines(&self) -> String {
        let lines = self.output.lines();
        if lines.is_empty() {
            return "; it printed nothing".into();
        }
        format!("; its last lines:\n  {}", lines.join("\n  "))
    }

    fn failed_to_start(&mut self, exited: Option<String>) -> RunError {
        signal_group(self.child.id(), Signal::Kill);
        let status = self.child.wait().ok();
        cwlab_os::signals::guard_group(0);
        if self.contained {
            let how = exited.unwrap_or_else(|| "an unknown status".into());
            return RunError::Environment(format!(
                "the server exited before it listened ({how}){}",
                self.last_lines()
            ));
        }
        // The drain thread reads to the end of the pipe, which the kill has closed: the whole
        // error, its causes included (waiting for a first line alone lost them, now and then).
        let deadline = Instant::now() + Duration::from_secs(1);
        while !self.output.ended() && Instant::now() < deadline {
            std::thread::yield_now();
        }
        let err = self.output.lines().join("\n");
        let err = err.trim().trim_start_matches("error: ").to_string();
        let status = status.map_or("an unknown status".into(), |s| s.to_string());
        if err.is_empty() {
            RunError::Environment(format!("the server exited before it listened ({status})"))
        } else {
            RunError::Environment(format!("the server could not start: {err}"))
        }
    }

    /// Sends SIGUSR1 to every process of the server: handlers waiting for their release go on.
    pub fn release(&self) {
        signal_group(self.child.id(), Signal::Usr1);
    }

    /// What the acceptor has reported so far.
    pub fn outcome(&self) -> ServerOutcome {
        self.stats.lock().unwrap().clone()
    }

    /// Stops every process the server started and waits for the server: SIGTERM to its process
    /// group, up to `grace` for the server to exit, then SIGKILL to the group and the acceptor.
    /// With a PID namespace the group's first process is the supervisor: when it goes, the
    /// acceptor (the namespace's init) dies of its death signal and the kernel empties the
    /// namespace, helpers included, wherever they moved.
    pub fn stop(&mut self, grace: Duration) {
        self.lifeline.take();
        if self.contained && !grace.is_zero() {
            // The lifeline's end is the contained server's SIGTERM: its init signals every
            // process of the server (daemons included), waits the grace, and goes.
            wait_for_exit(self.child.id(), grace + Duration::from_secs(1));
        } else if !grace.is_zero() && matches!(self.child.try_wait(), Ok(None)) {
            signal_group(self.child.id(), Signal::Term);
            wait_for_exit(self.child.id(), grace);
        }
        signal_group(self.child.id(), Signal::Kill);
        if let Some(acceptor) = rustix::process::Pid::from_raw(self.acceptor as i32) {
            let _ = rustix::process::kill_process(acceptor, Signal::Kill);
        }
        let _ = self.child.wait();
        cwlab_os::signals::guard_group(0);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A last resort (an error on the way, a panic): no grace.
        self.stop(Duration::ZERO);
    }
}

/// Sends `sig` to the process group `pgid` (killpg(2)); a group already gone is no error.
fn signal_group(pgid: u32, sig: Signal) {
    if let Some(group) = rustix::process::Pid::from_raw(pgid as i32) {
        let _ = rustix::process::kill_process_group(group, sig);
    }
}

/// Waits until the process exits or `limit` passes, without reaping it: poll(2) on a pidfd.
fn wait_for_exit(pid: u32, limit: Duration) {
    let Some(pid) = rustix::process::Pid::from_raw(pid as i32) else { return };
    let Ok(fd) = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) else {
        return;
    };
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        match poll(&mut fds, left.as_millis().min(60_000) as i32 + 1) {
            Ok(0) | Err(rustix::io::Errno::INTR) => continue,
            _ => return,
        }
    }
}

/// Reads the server's events until it exits.
fn follow(mut lines: LineReader, seen: &Seen, accepted: &tokio::sync::watch::Sender<u64>) {
    let Seen { stats, served_at, ended_at, cannot_run } = seen;
    while let Ok(Some(line)) = lines.next_line_blocking() {
        let mut s = stats.lock().unwrap();
        match ServerMessage::parse(&line) {
            Some(ServerMessage::Accepted { count }) => {
                s.accepted = count;
                accepted.send_replace(count);
            }
            Some(ServerMessage::Served) => {
                s.served += 1;
                served_at.lock().unwrap().push(Instant::now());
            }
            Some(ServerMessage::AcceptError { errno }) => {
                s.accept_errors += 1;
                s.accept_errno = Some(errno);
            }
            Some(ServerMessage::Exited { status }) => {
                s.exited = Some(status);
                *ended_at.lock().unwrap() = Some(Instant::now());
            }
            Some(ServerMessage::CannotRun { program, reason }) => {
                *cannot_run.lock().unwrap() = Some(format!("{program}: {reason}"));
            }
            Some(ServerMessage::Empty) => s.gone = true,
            _ => {}
        }
    }
}

struct LineReader {
    out: ChildStdout,
    buf: Vec<u8>,
}

impl LineReader {
    fn take_line(&mut self) -> Option<String> {
        let i = self.buf.iter().position(|b| *b == b'\n')?;
        let line: Vec<u8> = self.buf.drain(..=i).collect();
        Some(String::from_utf8_lossy(&line[..i]).into_owned())
    }

    /// The next line, waiting no later than the deadline; `None` at end-of-file.
    fn next_line(&mut self, deadline: Instant) -> Result<Option<String>, RunError> {
        loop {
            if let Some(l) = self.take_line() {
                return Ok(Some(l));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RunError::Environment(
                    "timeout while waiting for the server to listen".into(),
                ));
            }
            let mut fds = [PollFd::new(&self.out, PollFlags::IN)];
            let ms = left.as_millis().min(60_000) as i32 + 1;
            if let Some(sig) = cwlab_os::signals::received() {
                return Err(RunError::Interrupted(sig));
            }
            match poll(&mut fds, ms) {
                Ok(0) | Err(rustix::io::Errno::INTR) => continue,
                Ok(_) => {}
                Err(e) => return Err(io("wait for the server")(e.into())),
            }
            if !self.fill().map_err(io("read the server's events"))? {
                return Ok(None);
            }
        }
    }

    fn next_line_blocking(&mut self) -> std::io::Result<Option<String>> {
        loop {
            if let Some(l) = self.take_line() {
                return Ok(Some(l));
            }
            if !self.fill()? {
                return Ok(None);
            }
        }
    }

    /// Reads what is there; false at end-of-file.
    fn fill(&mut self) -> std::io::Result<bool> {
        let mut chunk = [0u8; 4096];
        loop {
            match self.out.read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(true);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}
