//! `cwlab watch`: a live host's close sequence, read-only: on screen, as JSON lines, as a
//! Prometheus exporter (`--listen`) or a node_exporter textfile (`--textfile`). It runs with
//! whatever capabilities it is given and says on stderr, at start, which it lacks and what that
//! loses (docs/deploy.md).

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use cwlab_model::exit;
use cwlab_watch::webconfig::WebConfig;
use cwlab_watch::{Namespaces, Watcher};

use crate::app::Failure;
use crate::run::parse_duration;

/// Where the exporter listens unless told: loopback, and a port outside 9100–9999 (the range
/// Prometheus keeps for exporters, all of it allocated since 2023): node_exporter's 9100 plus
/// 10,000, easy to remember beside it and below the ephemeral ports.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:19100";

#[derive(clap::Args)]
pub struct Args {
    /// A service port to watch (repeatable; default: every port with a listener, and the port of
    /// every service CLOSE-WAIT sockets here are stuck on).
    #[arg(long = "port", value_name = "P")]
    ports: Vec<u16>,
    /// How often to look (on screen, JSON lines, textfile).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    interval: Duration,
    /// Watch this network namespace file (/run/netns/NAME, /proc/PID/ns/net); repeatable.
    #[arg(long, value_name = "PATH")]
    netns: Vec<PathBuf>,
    /// Watch this process's network namespace (a container's, a pod's); repeatable.
    #[arg(long, value_name = "PID")]
    netns_pid: Vec<u32>,
    /// Watch every network namespace on the host, each labelled by its inode and a process in it.
    #[arg(long, conflicts_with_all = ["netns", "netns_pid"])]
    all_netns: bool,
    /// How many holders to name per port (server side) and per remote service (client side).
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// How long a CLOSE-WAIT socket may wait before the watch reads it as stuck (a younger one
    /// may still be closed by its server's handler or found by its client's pool): held open on
    /// the server side; on the client side a pool leak unless it was seen closing some and
    /// stays within what it held then.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    stuck: Duration,
    /// One JSON object per interval.
    #[arg(long)]
    json: bool,
    /// Serve /metrics for Prometheus here (loopback by default: the metrics name processes).
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = DEFAULT_LISTEN)]
    listen: Option<SocketAddr>,
    /// Write DIR/cwlab.prom atomically every interval, for node_exporter's textfile collector.
    #[arg(long, value_name = "DIR")]
    textfile: Option<PathBuf>,
    /// Look (or write) once and exit.
    #[arg(long)]
    once: bool,
    /// TLS and basic auth for --listen, in Prometheus exporter-toolkit's web configuration
    /// format (the file node_exporter's --web.config.file reads): docs/prometheus.md.
    #[arg(long = "web.config.file", value_name = "FILE", requires = "listen")]
    web_config: Option<PathBuf>,
    /// How long an exporter client may take to send its request head (TLS handshake included).
    #[arg(long, default_value = "5s", value_parser = parse_duration, hide = true)]
    request_timeout: Duration,
    /// Exporter connections open at once; past it the oldest still waiting for its request is
    /// dropped.
    #[arg(long, default_value_t = cwlab_watch::http::MAX_CONNECTIONS, hide = true)]
    max_connections: usize,
}

pub fn main(a: &Args) -> Result<i32, Failure> {
    let which = if a.all_netns {
        Namespaces::All
    } else if a.netns.is_empty() && a.netns_pid.is_empty() {
        Namespaces::Own
    } else {
        Namespaces::These { paths: a.netns.clone(), pids: a.netns_pid.clone() }
    };
    // The web configuration is checked whole before anything starts.
    let web = match &a.web_config {
        Some(path) => WebConfig::load(path).map_err(Failure::bad_input)?,
        None => WebConfig::default(),
    };
    let others = !matches!(which, Namespaces::Own);
    let mut watcher = Watcher::new(which, a.ports.clone(), a.top)
        .map_err(Failure::bad_input)?
        .with_stuck(a.stuck);
    let notes = Capabilities::of_this_process().notes(others, watcher.stream_error());
    cwlab_runner::signals::install().map_err(Failure::bad_input)?;
    if let Some(addr) = a.listen {
        return serve(addr, watcher, web, a, &notes);
    }
    for n in &notes {
        eprintln!("cwlab watch: {n}");
    }
    if let Some(dir) = &a.textfile {
        return textfile(dir, &mut watcher, a);
    }
    let tty = std::io::stdout().is_terminal();
    if tty && !a.json && !a.once {
        cwlab_report::watch_view::live(a.interval, || watcher.look())
            .map_err(Failure::bad_input)?;
        return Ok(exit::PASS);
    }
    loop {
        let s = watcher.look();
        let text = if a.json {
            serde_json::to_string(&s).expect("snapshots serialize")
        } else if a.once {
            let width = if tty {
                cwlab_report::watch_view::terminal_width()
            } else {
                cwlab_report::watch_view::WIDTH
            };
            cwlab_report::watch_view::table(&s, width)
        } else {
            cwlab_report::watch_view::line(&s)
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", text.trim_end())
            .and_then(|()| out.flush())
            .map_err(Failure::bad_input)?;
        if a.once || !wait(a.interval) {
            return Ok(exit::PASS);
        }
    }
}

/// Waits an interval; false when SIGINT or SIGTERM came (a clean exit, not an error).
fn wait(interval: Duration) -> bool {
    let Some(wake) = cwlab_runner::signals::wake() else {
        std::thread::sleep(interval);
        return true;
    };
    let mut fds = [nix::poll::PollFd::new(wake, nix::poll::PollFlags::POLLIN)];
    let ms = nix::poll::PollTimeout::try_from(interval.as_millis().min(i32::MAX as u128) as i32)
        .unwrap_or(nix::poll::PollTimeout::MAX);
    let _ = nix::poll::poll(&mut fds, ms);
    cwlab_runner::signals::received().is_none()
}

fn textfile(dir: &std::path::Path, watcher: &mut Watcher, a: &Args) -> Result<i32, Failure> {
    let path = dir.join("cwlab.prom");
    loop {
        let s = watcher.look();
        // node_exporter's textfile collector reads the Prometheus text format.
        let text = cwlab_watch::metrics::prometheus_text(&s, watcher.dumps);
        cwlab_runner::write_atomically(&path, text.as_bytes()).map_err(|e| {
            Failure::bad_input(format!("{}: cannot write the textfile: {e}", path.display()))
        })?;
        if a.once || !wait(a.interval) {
            return Ok(exit::PASS);
        }
    }
}

fn serve(
    addr: SocketAddr,
    watcher: Watcher,
    web: WebConfig,
    a: &Args,
    notes: &[String],
) -> Result<i32, Failure> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Failure::bad_input)?;
    let file = a.web_config.as_deref().map(|p| p.display().to_string()).unwrap_or_default();
    for note in &web.notes {
        eprintln!("cwlab watch: note: {file}: {note}");
    }
    rt.block_on(async {
        let listener = listen(addr)
            .map_err(|e| Failure::bad_input(format!("--listen {addr}: cannot listen: {e}")))?;
        let bound = listener.local_addr().map_err(Failure::bad_input)?;
        let scheme = if web.tls.is_some() { "https" } else { "http" };
        eprintln!("cwlab watch: serving {scheme}://{bound}/metrics");
        for n in notes {
            eprintln!("cwlab watch: {n}");
        }
        let mut exporter = cwlab_watch::http::Exporter::new(watcher);
        exporter.request_timeout = a.request_timeout;
        exporter.max_connections = connections(a.max_connections);
        exporter.web = web;
        let stop = async {
            let Some(fd) = cwlab_runner::signals::wake() else {
                return std::future::pending::<()>().await;
            };
            let Ok(fd) = fd.try_clone_to_owned() else { return };
            // SAFETY: the AsyncFd owns its descriptor, a duplicate of the wake pipe's read end,
            // which stays open and the same until the AsyncFd is dropped.
            if let Ok(w) = unsafe { tokio::io::unix::AsyncFd::register(fd) } {
                let _ = w.readable().await;
            }
        };
        std::sync::Arc::new(exporter).serve(listener, stop).await;
        Ok::<i32, Failure>(exit::PASS)
    })
}

/// The listening socket's queue of connections not yet accepted (the kernel caps it at
/// net.core.somaxconn, 4096 by default): a burst of connections waits there instead of having
/// its SYNs dropped, and retried a second later, while the exporter accepts.
const BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Descriptors left for the watch's own files (namespaces, /proc, BPF) beside its connections.
const OWN_FDS: u64 = 64;

/// The connections the exporter may hold: `wanted`, within the descriptor limit once its soft
/// value is raised to the hard one (as Go does for every Go exporter since 1.19): the cap, not
/// EMFILE, decides which connection goes.
fn connections(wanted: usize) -> usize {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return wanted };
    let soft = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    wanted.min(usize::try_from(soft.saturating_sub(OWN_FDS)).unwrap_or(usize::MAX)).max(1)
}

/// The capabilities the watch uses, as bits of the kernel's capability sets (capability.h).
const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The effective capabilities of a process, and what each feature of the watch needs of them
/// (docs/deploy.md has the table, found by experiment).
pub struct Capabilities {
    effective: u64,
    uid: u32,
}

impl Capabilities {
    /// This process's, from `CapEff` in /proc/self/status.
    pub fn of_this_process() -> Capabilities {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |name: &str| {
            status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).map(str::to_string)
        };
        let effective =
            field("CapEff:").and_then(|v| u64::from_str_radix(&v, 16).ok()).unwrap_or(0);
        let uid = field("Uid:")
            .and_then(|v| v.split_whitespace().nth(1).and_then(|u| u.parse().ok()))
            .unwrap_or(0);
        Capabilities { effective, uid }
    }

    fn has(&self, cap: u32) -> bool {
        self.effective & (1 << cap) != 0
    }

    /// CAP_BPF and CAP_PERFMON (CAP_SYS_ADMIN stands for both, as the kernel allows).
    fn bpf(&self) -> bool {
        self.has(CAP_SYS_ADMIN) || (self.has(CAP_BPF) && self.has(CAP_PERFMON))
    }

    /// Reading other users' `/proc/PID/fd`: listing it and reading its links.
    fn other_fds(&self) -> bool {
        self.has(CAP_SYS_PTRACE) && self.has(CAP_DAC_READ_SEARCH)
    }

    /// What the watch cannot do with these capabilities and what that loses, one sentence each;
    /// none when it lacks nothing. `others`: other namespaces were asked for; `stream_error`:
    /// why the kernel's reports are not kept, if they are not.
    pub fn notes(&self, others: bool, stream_error: Option<&str>) -> Vec<String> {
        let mut notes = Vec::new();
        let who = self.uid;
        if !self.other_fds() && !self.bpf() {
            notes.push(format!(
                "lacks CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH (or CAP_BPF and CAP_PERFMON): holders are named only among uid {who}'s own processes; other users' CLOSE-WAIT sockets are counted but their holders are not named"
            ));
        } else if !self.other_fds() {
            notes.push(
                "lacks CAP_SYS_PTRACE or CAP_DAC_READ_SEARCH: other users' holders are found by the kernel's file iterator only (the first PID namespace, a kernel that takes it), and every look walks all processes again instead of re-reading only what changed".into(),
            );
        }
        if !self.bpf() {
            notes.push(
                "lacks CAP_BPF and CAP_PERFMON: no BPF stream (every look dumps the whole table: a scrape at 100,000 CLOSE-WAIT costs about 3.5 times as much) and no file iterator for the holders".into(),
            );
        } else if let Some(e) = stream_error {
            notes.push(format!("no BPF stream ({e}): every look dumps the whole table"));
        }
        if others && !(self.has(CAP_SYS_ADMIN) && self.has(CAP_SYS_PTRACE)) {
            notes.push(
                "lacks CAP_SYS_ADMIN or CAP_SYS_PTRACE: other network namespaces cannot be opened and entered (setns); they are reported as not readable".into(),
            );
        }
        if !self.has(CAP_SYS_PTRACE) && !self.has(CAP_SYS_ADMIN) {
            notes.push(
                "lacks CAP_SYS_PTRACE (or CAP_SYS_ADMIN): a pod's name (its hostname) is read only for uid {who}'s own processes; other pods are named by their UID"
                    .replace("{who}", &who.to_string()),
            );
        }
        notes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(list: &[u32]) -> Capabilities {
        Capabilities { effective: list.iter().fold(0, |m, c| m | 1 << c), uid: 65534 }
    }

    #[test]
    fn issue_22_the_unit_s_four_capabilities_lack_nothing_in_the_host_s_namespace() {
        let unit = caps(&[CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH]);
        assert_eq!(unit.notes(false, None), Vec::<String>::new());
        let other = unit.notes(true, None);
        assert_eq!(other.len(), 1);
        assert!(other[0].starts_with("lacks CAP_SYS_ADMIN or CAP_SYS_PTRACE: other"), "{other:?}");
        let refused = unit.notes(false, Some("Operation not permitted (os error 1)"));
        assert_eq!(
            refused,
            ["no BPF stream (Operation not permitted (os error 1)): every look dumps the whole table"]
        );
    }

    #[test]
    fn issue_22_each_missing_capability_says_what_it_loses() {
        let none = caps(&[]).notes(true, Some("x"));
        assert_eq!(none.len(), 4, "{none:?}");
        assert!(none[0].contains("holders are named only among uid 65534's own processes"));
        assert!(none[1].starts_with("lacks CAP_BPF and CAP_PERFMON: no BPF stream"));
        assert!(none[2].starts_with("lacks CAP_SYS_ADMIN or CAP_SYS_PTRACE"));
        assert!(none[3].contains("pod's name"));
        let bpf_only = caps(&[CAP_BPF, CAP_PERFMON]).notes(false, None);
        assert_eq!(bpf_only.len(), 2, "{bpf_only:?}");
        assert!(bpf_only[0].contains("kernel's file iterator only"), "{bpf_only:?}");
        assert_eq!(
            caps(&[CAP_SYS_ADMIN, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH]).notes(true, None).len(),
            0
        );
    }
}
