//! Every TCP state transition, from the kernel: the `sock:inet_sock_set_state` tracepoint in a
//! tracefs instance of the caller's own, filtered in the kernel to one port, on the monotonic
//! clock. The instance is removed when the tracer stops or is dropped.
//!
//! # References
//! Documentation/trace/ftrace.rst (instances, `trace_pipe`, `trace_clock`),
//! Documentation/trace/events.rst (event filters); bcc `tools/tcpstates.py`.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::TcpState;

/// One transition as the tracepoint prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawTransition {
    /// CLOCK_MONOTONIC, microseconds.
    pub t_us: i64,
    /// Local port (0 for a client's first transition, before it has one).
    pub sport: u16,
    /// Remote port.
    pub dport: u16,
    /// The state left.
    pub from: TcpState,
    /// The state entered.
    pub to: TcpState,
}

/// A tracefs instance recording one port's transitions, and every fork on the machine (the
/// `task:task_newtask` tracepoint without threads), by which the runner tells a forking server
/// from a threaded one.
pub struct Tracer {
    dir: PathBuf,
    pipe: Option<File>,
    partial: String,
    lost: u64,
    forks: Vec<Fork>,
    forks_seen: bool,
}

/// One fork: the thread that forked, and the new process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fork {
    /// The forking thread's id (the process's pid for its main thread).
    pub parent: u32,
    /// The new process's pid.
    pub child: u32,
}

/// The folder an instance of this name has (or will have), mounting tracefs if needed; `None`
/// where tracefs cannot be had.
pub fn instance_dir(name: &str) -> Option<PathBuf> {
    tracefs_root().ok().map(|r| r.join("instances").join(name))
}

/// Where tracefs is, mounting it at /sys/kernel/tracing if it is mounted nowhere.
fn tracefs_root() -> Result<PathBuf, String> {
    for d in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if Path::new(d).join("instances").is_dir() {
            return Ok(PathBuf::from(d));
        }
    }
    rustix::mount::mount2(
        Some("nodev"),
        "/sys/kernel/tracing",
        Some("tracefs"),
        rustix::mount::MountFlags::empty(),
        None,
    )
    .map_err(|e| format!("tracefs is not mounted and cannot be mounted ({e})"))?;
    Ok(PathBuf::from("/sys/kernel/tracing"))
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

impl Tracer {
    /// Creates the instance `name`, filtered to `port` on either side, and starts tracing.
    /// The error says why tracing cannot be done here.
    pub fn start(name: &str, port: u16) -> Result<Tracer, String> {
        let root = tracefs_root()?;
        let event = root.join("events/sock/inet_sock_set_state");
        if !event.is_dir() {
            return Err("this kernel has no sock:inet_sock_set_state tracepoint".into());
        }
        let dir = root.join("instances").join(name);
        fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut t = Tracer {
            dir,
            pipe: None,
            partial: String::new(),
            lost: 0,
            forks: Vec::new(),
            forks_seen: false,
        };
        let ev = t.dir.join("events/sock/inet_sock_set_state");
        write(&t.dir.join("trace_clock"), "mono")?;
        write(&t.dir.join("buffer_size_kb"), "8192")?;
        write(&ev.join("filter"), &format!("sport == {port} || dport == {port}"))?;
        write(&ev.join("enable"), "1")?;
        // Forks, not threads (CLONE_THREAD is 0x10000): best effort, a kernel without the
        // tracepoint only loses the fork/thread distinction.
        let newtask = t.dir.join("events/task/task_newtask");
        if newtask.is_dir() {
            t.forks_seen = write(&newtask.join("filter"), "!(clone_flags & 65536)").is_ok()
                && write(&newtask.join("enable"), "1").is_ok();
        }
        write(&t.dir.join("tracing_on"), "1")?;
        let pipe = OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(t.dir.join("trace_pipe"))
            .map_err(|e| format!("cannot open trace_pipe: {e}"))?;
        t.pipe = Some(pipe);
        Ok(t)
    }

    /// The pipe to poll for readability.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.pipe.as_ref().map(|p| p.as_fd())
    }

    /// Events the kernel reported lost so far.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// Reads whatever is ready, without blocking.
    pub fn read_ready(&mut self, out: &mut Vec<RawTransition>) {
        let Some(pipe) = self.pipe.as_mut() else { return };
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    self.partial.push_str(&String::from_utf8_lossy(&buf[..n]));
                    while let Some(i) = self.partial.find('\n') {
                        let line: String = self.partial.drain(..=i).collect();
                        if let Some(lost) = lost_events(&line) {
                            self.lost += lost;
                        } else if let Some(t) = parse_line(&line) {
                            out.push(t);
                        } else if let Some(f) = parse_fork(&line) {
                            self.forks.push(f);
                        }
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
    }

    /// Stops tracing, reads what is left, and removes the instance. Returns the forks seen,
    /// or `None` where the kernel could not trace them.
    pub fn stop(mut self, out: &mut Vec<RawTransition>) -> Option<Vec<Fork>> {
        let _ = write(&self.dir.join("tracing_on"), "0");
        self.read_ready(out);
        self.forks_seen.then(|| std::mem::take(&mut self.forks))
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = write(&self.dir.join("tracing_on"), "0");
        self.pipe.take();
        // Removing an instance frees its buffers; it fails only while a file in it is open.
        let _ = fs::remove_dir(&self.dir);
    }
}

/// `CPU:1 [LOST 42 EVENTS]`
fn lost_events(line: &str) -> Option<u64> {
    let rest = line.split("[LOST ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// `  cwlab-123 [001] ..s1. 1234.567890: inet_sock_set_state: family=AF_INET … sport=80
/// dport=5000 … oldstate=TCP_ESTABLISHED newstate=TCP_CLOSE_WAIT`
pub fn parse_line(line: &str) -> Option<RawTransition> {
    let (head, fields) = line.split_once(": inet_sock_set_state: ")?;
    let ts = head.rsplit(' ').next()?;
    let (secs, micros) = ts.split_once('.')?;
    let t_us = secs.trim().parse::<i64>().ok()? * 1_000_000 + micros.parse::<i64>().ok()?;
    let mut sport = None;
    let mut dport = None;
    let mut from = None;
    let mut to = None;
    for kv in fields.split_whitespace() {
        let Some((k, v)) = kv.split_once('=') else { continue };
        match k {
            "sport" => sport = v.parse().ok(),
            "dport" => dport = v.parse().ok(),
            "oldstate" => from = state(v),
            "newstate" => to = state(v),
            _ => {}
        }
    }
    Some(RawTransition { t_us, sport: sport?, dport: dport?, from: from?, to: to? })
}

/// `  python3-4711 [001] ..... 12.5: task_newtask: pid=4712 comm=python3 clone_flags=1200011 …`
pub fn parse_fork(line: &str) -> Option<Fork> {
    let (head, fields) = line.split_once(": task_newtask: ")?;
    let task = head.rsplit_once(" [")?.0.trim();
    let parent = task.rsplit_once('-')?.1.parse().ok()?;
    let child = fields.split_whitespace().find_map(|kv| kv.strip_prefix("pid="))?.parse().ok()?;
    Some(Fork { parent, child })
}

/// `TCP_CLOSE_WAIT` → CLOSE-WAIT; `TCP_NEW_SYN_RECV` → SYN-RECV.
fn state(v: &str) -> Option<TcpState> {
    let name = v.strip_prefix("TCP_")?;
    if name == "NEW_SYN_RECV" {
        return Some(TcpState::SynRecv);
    }
    name.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_tracepoint_line() {
        let l = "          <idle>-0       [001] ..s2.  2107.123456: inet_sock_set_state: family=AF_INET protocol=IPPROTO_TCP sport=40123 dport=51234 saddr=127.0.0.1 daddr=127.0.0.1 saddrv6=::ffff:127.0.0.1 daddrv6=::ffff:127.0.0.1 oldstate=TCP_ESTABLISHED newstate=TCP_CLOSE_WAIT\n";
        let t = parse_line(l).unwrap();
        assert_eq!(t.t_us, 2_107_123_456);
        assert_eq!((t.sport, t.dport), (40123, 51234));
        assert_eq!((t.from, t.to), (TcpState::Established, TcpState::CloseWait));
        assert_eq!(lost_events("CPU:1 [LOST 42 EVENTS]\n"), Some(42));
        assert_eq!(parse_line("# tracer: nop"), None);
        let f = "   python3 -x-4711    [000] .....  12.500000: task_newtask: pid=4712 comm=python3 -x clone_flags=1200011 oom_score_adj=0\n";
        assert_eq!(parse_fork(f), Some(Fork { parent: 4711, child: 4712 }));
    }
}
