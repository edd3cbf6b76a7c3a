//! `cwlab watch`: one look at a live host's close sequence, per network namespace and service
//! port, as JSON (`--json`, one object per interval) and as the exporter's metrics.
//!
//! # Format
//!
//! ```text
//! {"t_unix_ms": 1764237600000, "took_ms": 3.1,
//!  "namespaces": [{"inode": 4026531833, "label": "4026531833 (host)", "error": null,
//!    "ports": [{"port": 8080, "listening": true,
//!               "server": {"CLOSE-WAIT": 100, "LISTEN": 1}, "client": {},
//!               "close_wait_oldest_s": 12.5, "close_wait_per_min": 40.0,
//!               "holders": [{"pid": 4711, "name": "myserver", "sockets": 100,
//!                            "open_fds": 104, "max_fds": 1024, "runtime": "native",
//!                            "cgroup": {"path": "/system.slice/myserver.service",
//!                                       "unit": "myserver.service", "slice": "system.slice"}}],
//!               "finding": {"kind": "held-open", "title": "held open: …", "sockets": 100,
//!                           "explanation": "100 CLOSE-WAIT (growing 40/min, …", "fix": "…", …}},
//!              {"port": 443, "listening": false,
//!               "server": {}, "client": {"CLOSE-WAIT": 50, "ESTAB": 2},
//!               "close_wait_oldest_s": null, "close_wait_per_min": null, "holders": [],
//!               "finding": null,
//!               "remotes": [{"remote": "10.0.0.5:443", "close_wait": 50,
//!                            "close_wait_oldest_s": 75.0, "close_wait_per_min": 0.0,
//!                            "cleared": 0, "holders": [{"pid": 4242, "name": "python3", …}],
//!                            "finding": {"kind": "pool-leak", …}}]}],
//!    "other": {"ESTAB": 3}}]}
//! ```
//!
//! `server` counts the sockets whose local port is the port, `client` those whose remote port
//! is. The ports are the service ports (a port with a listener, or those named with `--port`)
//! and, unless `--port` names them, the ports of every other service some socket here is stuck
//! on: the remote port of client-side CLOSE-WAIT (a remote service, or a local one no longer
//! listening) and the local port of a server's CLOSE-WAIT whose listener has gone. `other`
//! counts every socket on neither side of those (one bucket, so that label values stay bounded);
//! nothing in CLOSE-WAIT is there unless `--port` narrowed the ports.
//!
//! On the server side, `close_wait_oldest_s` comes from the kernel on a namespace's first look
//! (`tcp_info`'s time since the last ACK received: a CLOSE-WAIT socket hears nothing after the
//! peer's FIN) and is kept from then on; a socket that entered CLOSE-WAIT later is as old as the
//! first look that saw it (at most one interval short). `close_wait_per_min` is the growth over
//! the last minute watched; it needs two looks, so `--once` has none. `holders` are the top
//! holders of the server CLOSE-WAIT sockets.
//!
//! On the client side, each remote service (address and port) that client-side CLOSE-WAIT
//! sockets here are connected to is one of its port's `remotes`, with the same numbers, its own
//! holders and `cleared`: how many of its CLOSE-WAIT sockets their holder closed while watched
//! (what a pool that finds the FIN on its next use does).
//!
//! `finding` is the model's reading of those numbers ([`crate::diagnosis::of_watch`]), the same
//! [`Finding`] a run's and a check's diagnosis has: `held-open` or `backlog` on the server side,
//! `pool-leak` or `pool-bounded` on the client side, `null` when nothing is wrong. Its
//! `holders` name each process (pid, `comm`, role); the watch counts their descriptors in
//! `holders` (`sockets`, `open_fds`) rather than listing them, so their `fds` are empty.
//!
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::diagnosis::Finding;
use crate::report::Counts;
use crate::runtime::Runtime;

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
    /// The inode and, for people, what it is: `host` for the host's namespace (the one the
    /// first process of the first PID namespace is in), else a process in it.
    pub label: String,
    /// Why it could not be read this time, if it could not (it vanished, no permission).
    pub error: Option<String>,
    /// Each service port (a port with a listener, or one named with `--port`) and each port of
    /// a service some socket here is stuck on, by port.
    pub ports: Vec<PortView>,
    /// Sockets on neither side of those ports, per state.
    pub other: Counts,
}

/// One port: a service port, or the port of a service some socket here is stuck on.
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
    /// How fast server CLOSE-WAIT grew over the last minute watched, per minute (none on the
    /// first look).
    pub close_wait_per_min: Option<f64>,
    /// The processes holding the most server CLOSE-WAIT sockets, most first.
    pub holders: Vec<Holding>,
    /// The model's reading of the server side, when something is wrong.
    pub finding: Option<Finding>,
    /// The client side's CLOSE-WAIT by remote service, the most first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remotes: Vec<RemoteView>,
}

/// The client-side CLOSE-WAIT sockets connected to one remote service (address and port): a
/// client's connections that the service closed and the client has not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteView {
    /// The service's address and port, as the client dialled it.
    pub remote: SocketAddr,
    /// Client-side CLOSE-WAIT sockets connected to it.
    pub close_wait: u32,
    /// How long the oldest of them has waited, in seconds.
    pub close_wait_oldest_s: Option<f64>,
    /// How fast they grew over the last minute watched, per minute (none on the first look).
    pub close_wait_per_min: Option<f64>,
    /// How many of them their holder closed while watched (none on the first look).
    pub cleared: u32,
    /// The processes holding the most of them, most first.
    pub holders: Vec<Holding>,
    /// The model's reading, when something is wrong.
    pub finding: Option<Finding>,
}

/// A process holding CLOSE-WAIT sockets of a port (server side) or a remote service (client
/// side).
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
    /// The runtime its executable is (`/proc/PID/exe`, else its `argv[0]`), when it could be
    /// read: the idiom of its finding's fix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<Runtime>,
    /// Where it runs: its cgroup and the unit, container or pod that says (none when its cgroup
    /// could not be read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<Cgroup>,
}

/// Where a process runs, read from its cgroup path in the conventions of the managers that make
/// cgroups: systemd's units and slices, the container runtimes' scopes and folders, the
/// kubelet's pod slices (both cgroup drivers).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cgroup {
    /// The cgroup path: cgroup v2's, or the v1 `name=systemd` hierarchy's where that is all
    /// there is.
    pub path: String,
    /// The innermost systemd unit that is not a slice (`nginx.service`, `session-3.scope`,
    /// `docker-<id>.scope`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// The innermost systemd slice (`system.slice`, `user-1000.slice`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slice: Option<String>,
    /// The container, where a runtime's convention names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
    /// The Kubernetes pod, where the kubelet's convention names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Pod>,
}

/// A container, by its runtime and id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Container {
    /// `docker`, `containerd`, `cri-o`, `podman`, or `unknown` (a kubelet's cgroupfs driver
    /// names no runtime).
    pub runtime: String,
    /// The container's id (64 hex digits for every runtime here).
    pub id: String,
}

/// A Kubernetes pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pod {
    /// Its UID (with dashes, as the API server writes it).
    pub uid: String,
    /// Its QoS class: `guaranteed`, `burstable` or `besteffort`.
    pub qos: String,
    /// Its name, where the node knows it without an API server: the pod's hostname (its name
    /// unless the pod sets `hostname`), seen through the process's UTS namespace or its root's
    /// `/etc/hostname`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Cgroup {
    /// What it says in a few words, most specific first: `pod/NAME` (or `pod/` and the UID's
    /// first 8 digits), `docker/` and the container id's first 12 digits, the unit, the slice;
    /// `None` for the root cgroup.
    pub fn short(&self) -> Option<String> {
        if let Some(p) = &self.pod {
            return Some(match &p.name {
                Some(n) => format!("pod/{n}"),
                None => format!("pod/{}", p.uid.get(..8).unwrap_or(&p.uid)),
            });
        }
        if let Some(c) = &self.container {
            return Some(format!("{}/{}", c.runtime, c.id.get(..12).unwrap_or(&c.id)));
        }
        self.unit.clone().or_else(|| self.slice.clone()).or_else(|| {
            let p = self.path.trim_start_matches("/..").trim_matches('/');
            (!p.is_empty()).then(|| self.path.clone())
        })
    }

    /// The container as Kubernetes writes a container id: `containerd://<id>`.
    pub fn container_id(&self) -> Option<String> {
        self.container.as_ref().map(|c| format!("{}://{}", c.runtime, c.id))
    }
}
