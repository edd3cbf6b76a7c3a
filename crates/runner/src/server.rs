//! Starting and stopping the server: `cwlab serve` in a process group of its own, with a death
//! signal armed before exec, a lifeline on its stdin and its events on its stdout.

use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cwlab_model::protocol::{ServeOptions, ServerMessage};
use cwlab_model::report::ServerOutcome;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::{io, RunError};

/// The environment variable that marks every process a run starts, with the run's id as value.
pub const RUN_MARK: &str = "CWLAB_RUN";

/// A running server; dropping it kills every process it started.
pub struct Server {
    child: Child,
    lifeline: Option<ChildStdin>,
    reader: Option<JoinHandle<()>>,
    /// The acceptor's pid as the runner sees it.
    pub acceptor: u32,
    /// The port it listens on.
    pub port: u16,
    /// What it has reported since.
    pub stats: Arc<Mutex<ServerOutcome>>,
    /// The number of connections accepted so far, as it changes.
    pub accepted: tokio::sync::watch::Receiver<u64>,
}

/// How to start the server.
pub struct Launch<'a> {
    pub exe: &'a Path,
    /// What `cwlab serve` is told, as one typed argument.
    pub options: ServeOptions,
    pub mark: &'a str,
    pub deadline: Instant,
}

impl Server {
    /// The server's first process (the supervisor, with a PID namespace): the runner's child,
    /// and in the server's network namespace.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts the server and waits, to the deadline, until it reports that it listens.
    pub fn start(l: &Launch<'_>) -> Result<Server, RunError> {
        let mut cmd = Command::new(l.exe);
        cmd.arg("serve")
            .arg(l.options.to_arg())
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
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
                if nix::unistd::getppid().as_raw() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(io(format!("start {} serve", l.exe.display())))?;
        crate::signals::guard_group(child.id() as i32);
        let mut lines = LineReader { out: child.stdout.take().expect("piped"), buf: Vec::new() };
        let lifeline = child.stdin.take();
        let (accepted_tx, accepted_rx) = tokio::sync::watch::channel(0u64);
        let mut server = Server {
            acceptor: child.id(),
            child,
            lifeline,
            reader: None,
            port: 0,
            stats: Arc::default(),
            accepted: accepted_rx,
        };
        // With a PID namespace, the supervisor's `acceptor` and the acceptor's own `listening`
        // race each other to the pipe: wait for both.
        let mut acceptor_known = !l.options.pid_namespace;
        while server.port == 0 || !acceptor_known {
            let Some(line) = lines.next_line(l.deadline)? else {
                return Err(server.failed_to_start());
            };
            match ServerMessage::parse(&line) {
                Some(ServerMessage::Acceptor { pid }) => {
                    server.acceptor = pid;
                    acceptor_known = true;
                }
                Some(ServerMessage::Listening { port }) => server.port = port,
                _ => {}
            }
        }
        let stats = server.stats.clone();
        server.reader = Some(std::thread::spawn(move || follow(lines, &stats, &accepted_tx)));
        Ok(server)
    }

    fn failed_to_start(&mut self) -> RunError {
        let _ = kill(Pid::from_raw(-(self.child.id() as i32)), Signal::SIGKILL);
        let status = self.child.wait().ok();
        crate::signals::guard_group(0);
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
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
        let _ = kill(Pid::from_raw(-(self.child.id() as i32)), Signal::SIGUSR1);
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
        let group = Pid::from_raw(-(self.child.id() as i32));
        if !grace.is_zero() && matches!(self.child.try_wait(), Ok(None)) {
            let _ = kill(group, Signal::SIGTERM);
            wait_for_exit(self.child.id(), grace);
        }
        let _ = kill(group, Signal::SIGKILL);
        let _ = kill(Pid::from_raw(self.acceptor as i32), Signal::SIGKILL);
        let _ = self.child.wait();
        crate::signals::guard_group(0);
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
        let mut fds = [rustix::event::PollFd::new(&fd, rustix::event::PollFlags::IN)];
        match rustix::event::poll(&mut fds, left.as_millis().min(60_000) as i32 + 1) {
            Ok(0) | Err(rustix::io::Errno::INTR) => continue,
            _ => return,
        }
    }
}

/// Reads the server's events until it exits.
fn follow(
    mut lines: LineReader,
    stats: &Mutex<ServerOutcome>,
    accepted: &tokio::sync::watch::Sender<u64>,
) {
    while let Ok(Some(line)) = lines.next_line_blocking() {
        let mut s = stats.lock().unwrap();
        match ServerMessage::parse(&line) {
            Some(ServerMessage::Accepted { count }) => {
                s.accepted = count;
                accepted.send_replace(count);
            }
            Some(ServerMessage::AcceptError { errno }) => {
                s.accept_errors += 1;
                s.accept_errno = Some(errno);
            }
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
            let mut fds = [PollFd::new(self.out.as_fd(), PollFlags::POLLIN)];
            let ms = PollTimeout::try_from(left.as_millis().min(60_000) as i32 + 1)
                .unwrap_or(PollTimeout::MAX);
            if let Some(sig) = crate::signals::received() {
                return Err(RunError::Interrupted(sig));
            }
            match poll(&mut fds, ms) {
                Ok(0) | Err(nix::Error::EINTR) => continue,
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
