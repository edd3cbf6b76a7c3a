//! `cwlab watch`: one look at a live host's close sequence, per network namespace and service
//! port, as JSON (`--json`, one object per interval) and as the exporter's metrics.
//!
//! # Format
//!
//! ```text
//! {"t_unix_ms": 1764237600000, "took_ms": 3.1,
//!  "namespaces": [{"inode": 4026531840, "label": "4026531840 (systemd)", "error": null,
//!    "ports": [{"port": 8080, "listening": true,
//!               "server": {"CLOSE-WAIT": 100, "LISTEN": 1}, "client": {},
//!               "close_wait_oldest_s": 12.5, "close_wait_per_min": 40.0,
//!               "holders": [{"pid": 4711, "name": "myserver", "sockets": 100,
//!                            "open_fds": 104, "max_fds": 1024}],
//!               "finding": "CLOSE-WAIT growing, held by pid 4711 `myserver`: …"}],
//!    "other": {"ESTAB": 3}}]}
//! ```
//!
//! `server` counts the sockets whose local port is the service port, `client` those whose remote
//! port is; `other` every socket on neither side of a service port (one bucket, so that label
//! values stay bounded). `close_wait_oldest_s` comes from the kernel on a namespace's first look
//! (`tcp_info`'s time since the last ACK received: a CLOSE-WAIT socket hears nothing after the
//! peer's FIN) and is kept from then on; a socket that entered CLOSE-WAIT later is as old as the
//! first look that saw it (at most one interval short). `close_wait_per_min` is the growth over
//! the last minute watched; it needs two looks, so `--once` has none.

use serde::{Deserialize, Serialize};

use crate::report::Counts;

/// One look at every namespace watched.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// When, in ms since the Unix epoch.
    pub t_unix_ms: u64,
    /// How long the look took, ms.
    pub took_ms: f64,
    /// One entry per namespace.
    pub namespaces: Vec<NamespaceView>,
}

/// One network namespace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceView {
    /// The namespace's inode (as `/proc/PID/ns/net` names it).
    pub inode: u64,
    /// The inode and a process in it, for people.
    pub label: String,
    /// Why it could not be read this time, if it could not (it vanished, no permission).
    pub error: Option<String>,
    /// Each service port: a port with a listener, or one named with `--port`.
    pub ports: Vec<PortView>,
    /// Sockets on neither side of a service port, per state.
    pub other: Counts,
}

/// One service port.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortView {
    /// The port.
    pub port: u16,
    /// Whether something listens on it.
    pub listening: bool,
    /// Sockets whose local port is this one, per state.
    pub server: Counts,
    /// Sockets whose remote port is this one, per state.
    pub client: Counts,
    /// How long the oldest server CLOSE-WAIT socket has waited, in seconds.
    pub close_wait_oldest_s: Option<f64>,
    /// How fast server CLOSE-WAIT grew since the last look, per minute (none on the first).
    pub close_wait_per_min: Option<f64>,
    /// The processes holding the most server CLOSE-WAIT sockets, most first.
    pub holders: Vec<Holding>,
    /// What this looks like, when something is wrong.
    pub finding: Option<String>,
}

/// A process holding server CLOSE-WAIT sockets of a port.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Holding {
    /// Its pid.
    pub pid: u32,
    /// Its name (`comm`).
    pub name: String,
    /// The sockets it holds.
    pub sockets: u32,
    /// Its open descriptors.
    pub open_fds: u32,
    /// Its descriptor limit (RLIMIT_NOFILE, soft), when it could be read.
    pub max_fds: Option<u64>,
}
