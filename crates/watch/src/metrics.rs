//! A snapshot as Prometheus metrics, built at scrape time with the prometheus org's
//! `prometheus-client`. Names follow Prometheus's conventions; the `state` label is spelled as
//! node_exporter's tcpstat collector spells it (`close_wait`, `fin_wait2`, …), so queries carry
//! over. Label values stay bounded: ports are the service ports, the ports of services stuck
//! sockets are on, and one `other`; remote services the [`REMOTES`] with the most client-side
//! CLOSE-WAIT of each port; holders the top N of each port's server side and of each remote
//! service.
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `cwlab_tcp_sockets` | `netns`, `port`, `side`, `state` | sockets per state on each side of a port (`side="server"`: local port; `client`: remote port); `port="other", side="other"` for the rest |
//! | `cwlab_tcp_close_wait_oldest_seconds` | `netns`, `port`, `side`, `remote` | how long the oldest CLOSE-WAIT socket has waited: a port's server side (`remote=""`), or its client side's connections to one remote service (`remote="10.0.0.5:443"`) |
//! | `cwlab_tcp_close_wait_holder_sockets` | `netns`, `port`, `side`, `remote`, `pid`, `command`, and where it runs | CLOSE-WAIT sockets held by each of the top holders, of the same |
//! | `cwlab_tcp_close_wait_finding` | `netns`, `port`, `side`, `remote`, `kind` | the model's reading of the same (`held-open`, `backlog`, `pool-leak`, `pool-bounded`): the sockets it is about; no series when nothing is wrong |
//! | `cwlab_process_open_fds`, `cwlab_process_max_fds` | `pid`, `command`, and where it runs | the holders' open descriptors and their limit |
//! | `cwlab_netns_up` | `netns` | 1 when the namespace's table could be read |
//! | `cwlab_scrape_duration_seconds` | | how long the look took |
//! | `cwlab_dumps_total` | | kernel dumps made (concurrent scrapes share one) |
//! | `cwlab_build_info` | `version` | 1 |
//!
//! Where a holder runs is four labels, empty when its cgroup does not say: `unit` (the systemd
//! unit), `container_id` (as Kubernetes writes one: `containerd://<id>`), `pod` (its name, where
//! the node knows it) and `pod_uid`. They are only on the holders' series, the top N of each
//! port, so they add no series of their own.

use std::sync::atomic::AtomicU64;

use cwlab_model::watch::{Holding, NamespaceView, Snapshot};
use cwlab_model::Finding;
use cwlab_model::TcpState;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SocketLabels {
    netns: String,
    port: String,
    side: String,
    state: String,
}

/// One side of one service: a port's server side (no remote), or its client side's
/// connections to one remote service.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    netns: String,
    port: String,
    side: String,
    remote: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FindingLabels {
    netns: String,
    port: String,
    side: String,
    remote: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HolderLabels {
    netns: String,
    port: String,
    side: String,
    remote: String,
    pid: String,
    command: String,
    unit: String,
    container_id: String,
    pod: String,
    pod_uid: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProcessLabels {
    pid: String,
    command: String,
    unit: String,
    container_id: String,
    pod: String,
    pod_uid: String,
}

impl ProcessLabels {
    /// A holder's process and where it runs.
    fn of(h: &Holding) -> ProcessLabels {
        let c = h.cgroup.as_ref();
        let pod = c.and_then(|c| c.pod.as_ref());
        ProcessLabels {
            pid: h.pid.to_string(),
            command: h.name.clone(),
            unit: c.and_then(|c| c.unit.clone()).unwrap_or_default(),
            container_id: c.and_then(|c| c.container_id()).unwrap_or_default(),
            pod: pod.and_then(|p| p.name.clone()).unwrap_or_default(),
            pod_uid: pod.map(|p| p.uid.clone()).unwrap_or_default(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NetnsLabels {
    netns: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// A state as node_exporter's tcpstat collector spells it.
pub fn state_label(s: TcpState) -> &'static str {
    match s {
        TcpState::Established => "established",
        TcpState::SynSent => "syn_sent",
        TcpState::SynRecv => "syn_recv",
        TcpState::FinWait1 => "fin_wait1",
        TcpState::FinWait2 => "fin_wait2",
        TcpState::TimeWait => "time_wait",
        TcpState::Close => "close",
        TcpState::CloseWait => "close_wait",
        TcpState::LastAck => "last_ack",
        TcpState::Listen => "listen",
        TcpState::Closing => "closing",
    }
}

/// Remote services named per port in the metrics: those with the most client-side CLOSE-WAIT
/// (the snapshot names them all; their sockets are counted in `cwlab_tcp_sockets` either way).
pub const REMOTES: usize = 10;

/// The metric families a scrape answers with.
#[derive(Default)]
struct Families {
    sockets: Family<SocketLabels, Gauge>,
    oldest: Family<ServiceLabels, FloatGauge>,
    held: Family<HolderLabels, Gauge>,
    finding: Family<FindingLabels, Gauge>,
    open_fds: Family<ProcessLabels, Gauge>,
    max_fds: Family<ProcessLabels, Gauge>,
    up: Family<NetnsLabels, Gauge>,
    took: FloatGauge,
    dumps: Counter<u64>,
}

impl Families {
    fn register(&self, reg: &mut Registry) {
        reg.register(
            "cwlab_tcp_sockets",
            "TCP sockets per state on each side of a port",
            self.sockets.clone(),
        );
        reg.register(
            "cwlab_tcp_close_wait_oldest_seconds",
            "How long the oldest CLOSE-WAIT socket of one side of a service has waited",
            self.oldest.clone(),
        );
        reg.register(
            "cwlab_tcp_close_wait_holder_sockets",
            "CLOSE-WAIT sockets of one side of a service held by one of its top holders",
            self.held.clone(),
        );
        reg.register(
            "cwlab_tcp_close_wait_finding",
            "The model's reading of one side of a service's CLOSE-WAIT, by kind: the sockets it is about",
            self.finding.clone(),
        );
        reg.register(
            "cwlab_process_open_fds",
            "Open descriptors of a process holding CLOSE-WAIT sockets",
            self.open_fds.clone(),
        );
        reg.register(
            "cwlab_process_max_fds",
            "Descriptor limit (soft RLIMIT_NOFILE) of a process holding CLOSE-WAIT sockets",
            self.max_fds.clone(),
        );
        reg.register(
            "cwlab_netns_up",
            "1 when the namespace's socket table could be read",
            self.up.clone(),
        );
        reg.register(
            "cwlab_scrape_duration_seconds",
            "How long the look at the socket tables took",
            self.took.clone(),
        );
        reg.register(
            "cwlab_dumps",
            "Kernel dumps made; concurrent scrapes share one",
            self.dumps.clone(),
        );
        reg.register(
            "cwlab_build",
            "The build of cwlab",
            Info::new(vec![("version".to_string(), env!("CARGO_PKG_VERSION").to_string())]),
        );
    }

    /// One namespace's series.
    fn namespace(&self, ns: &NamespaceView) {
        let netns = ns.inode.to_string();
        self.up
            .get_or_create(&NetnsLabels { netns: netns.clone() })
            .set(i64::from(ns.error.is_none()));
        let put = |port: &str, side: &str, counts: &cwlab_model::report::Counts| {
            for (st, n) in counts {
                let labels = SocketLabels {
                    netns: netns.clone(),
                    port: port.to_string(),
                    side: side.to_string(),
                    state: state_label(*st).to_string(),
                };
                self.sockets.get_or_create(&labels).set(i64::from(*n));
            }
        };
        for p in &ns.ports {
            let port = p.port.to_string();
            put(&port, "server", &p.server);
            put(&port, "client", &p.client);
            let server = ServiceLabels {
                netns: netns.clone(),
                port: port.clone(),
                side: "server".into(),
                remote: String::new(),
            };
            self.service(&server, p.close_wait_oldest_s, &p.holders, p.finding.as_ref());
            for r in p.remotes.iter().take(REMOTES) {
                let client = ServiceLabels {
                    side: "client".into(),
                    remote: r.remote.to_string(),
                    ..server.clone()
                };
                self.service(&client, r.close_wait_oldest_s, &r.holders, r.finding.as_ref());
            }
        }
        put("other", "other", &ns.other);
    }

    /// One side of one service's series: its oldest, its holders, its finding.
    fn service(
        &self,
        at: &ServiceLabels,
        oldest: Option<f64>,
        holders: &[Holding],
        finding: Option<&Finding>,
    ) {
        if let Some(age) = oldest {
            self.oldest.get_or_create(at).set(age);
        }
        for h in holders {
            let who = ProcessLabels::of(h);
            let labels = HolderLabels {
                netns: at.netns.clone(),
                port: at.port.clone(),
                side: at.side.clone(),
                remote: at.remote.clone(),
                pid: who.pid.clone(),
                command: who.command.clone(),
                unit: who.unit.clone(),
                container_id: who.container_id.clone(),
                pod: who.pod.clone(),
                pod_uid: who.pod_uid.clone(),
            };
            self.held.get_or_create(&labels).set(i64::from(h.sockets));
            self.open_fds.get_or_create(&who).set(i64::from(h.open_fds));
            if let Some(m) = h.max_fds {
                self.max_fds.get_or_create(&who).set(i64::try_from(m).unwrap_or(i64::MAX));
            }
        }
        if let Some(f) = finding {
            let labels = FindingLabels {
                netns: at.netns.clone(),
                port: at.port.clone(),
                side: at.side.clone(),
                remote: at.remote.clone(),
                kind: f.kind.name().to_string(),
            };
            self.finding.get_or_create(&labels).set(i64::from(f.sockets));
        }
    }
}

/// The snapshot in the OpenMetrics text format (what `prometheus-client` writes).
pub fn openmetrics(s: &Snapshot, dumps: u64) -> String {
    let mut reg = Registry::default();
    let f = Families::default();
    f.register(&mut reg);
    f.took.set(s.took_ms / 1000.0);
    f.dumps.inc_by(dumps);
    for ns in &s.namespaces {
        f.namespace(ns);
    }
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &reg).expect("writing to a string");
    out
}

/// The snapshot in the Prometheus text format (0.0.4), for scrapers that do not ask for
/// OpenMetrics and for node_exporter's textfile collector: the same samples, without the
/// OpenMetrics-only lines, and with the families named as that format names them (a counter's
/// family by its `_total` sample, an info metric as a gauge named `_info`).
pub fn prometheus_text(s: &Snapshot, dumps: u64) -> String {
    let om = openmetrics(s, dumps);
    let mut out = String::with_capacity(om.len());
    let mut help: Option<(&str, &str)> = None;
    for l in om.lines() {
        if l == "# EOF" || l.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = l.strip_prefix("# HELP ") {
            help = rest.split_once(' ');
            continue;
        }
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                k => (name.to_string(), k),
            };
            if let Some((_, text)) = help.take() {
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        out.push_str(l);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use cwlab_model::diagnosis::{of_watch, Service, Watched};
    use cwlab_model::watch::{PortView, RemoteView};

    #[test]
    fn a_leak_as_metrics() {
        let mut p = PortView { port: 8080, listening: true, ..Default::default() };
        p.server.insert(TcpState::CloseWait, 100);
        p.server.insert(TcpState::Listen, 1);
        p.client.insert(TcpState::FinWait2, 100);
        p.close_wait_oldest_s = Some(12.5);
        p.holders.push(Holding {
            pid: 4711,
            name: "myserver".into(),
            sockets: 100,
            open_fds: 104,
            max_fds: Some(1024),
            runtime: None,
            cgroup: None,
        });
        let uid = "5a0b3c9e-1d2f-4e6a-8b7c-9d0e1f2a3b4c";
        let id = "3f2a1b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708";
        let mut pod = cwlab_model::watch::Cgroup {
            path: format!("/kubepods/burstable/pod{uid}/{id}"),
            ..Default::default()
        };
        pod.container =
            Some(cwlab_model::watch::Container { runtime: "containerd".into(), id: id.into() });
        pod.pod = Some(cwlab_model::watch::Pod {
            uid: uid.into(),
            qos: "burstable".into(),
            name: Some("web-0".into()),
        });
        p.holders.push(Holding {
            pid: 4712,
            name: "worker".into(),
            sockets: 3,
            open_fds: 9,
            max_fds: None,
            runtime: None,
            cgroup: Some(pod),
        });
        let mut ns = NamespaceView { inode: 4026531840, label: "x".into(), ..Default::default() };
        ns.ports.push(p);
        ns.ports.push(client_leak());
        ns.other.insert(TcpState::Established, 3);
        let s = Snapshot { t_unix_ms: 0, took_ms: 3.0, namespaces: vec![ns] };
        let text = openmetrics(&s, 7);
        for want in [
            r#"cwlab_tcp_sockets{netns="4026531840",port="8080",side="server",state="close_wait"} 100"#,
            r#"cwlab_tcp_sockets{netns="4026531840",port="8080",side="client",state="fin_wait2"} 100"#,
            r#"cwlab_tcp_sockets{netns="4026531840",port="other",side="other",state="established"} 3"#,
            r#"cwlab_tcp_close_wait_oldest_seconds{netns="4026531840",port="8080",side="server",remote=""} 12.5"#,
            r#"cwlab_tcp_close_wait_holder_sockets{netns="4026531840",port="8080",side="server",remote="",pid="4711",command="myserver",unit="",container_id="",pod="",pod_uid=""} 100"#,
            r#"cwlab_process_max_fds{pid="4711",command="myserver",unit="",container_id="",pod="",pod_uid=""} 1024"#,
            r#"cwlab_tcp_close_wait_holder_sockets{netns="4026531840",port="8080",side="server",remote="",pid="4712",command="worker",unit="",container_id="containerd://3f2a1b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708",pod="web-0",pod_uid="5a0b3c9e-1d2f-4e6a-8b7c-9d0e1f2a3b4c"} 3"#,
            // Issue 19: the client side, by remote service, and the model's reading of it.
            r#"cwlab_tcp_sockets{netns="4026531840",port="443",side="client",state="close_wait"} 50"#,
            r#"cwlab_tcp_close_wait_oldest_seconds{netns="4026531840",port="443",side="client",remote="10.0.0.5:443"} 75.0"#,
            r#"cwlab_tcp_close_wait_holder_sockets{netns="4026531840",port="443",side="client",remote="10.0.0.5:443",pid="4242",command="python3",unit="",container_id="",pod="",pod_uid=""} 50"#,
            r#"cwlab_tcp_close_wait_finding{netns="4026531840",port="443",side="client",remote="10.0.0.5:443",kind="pool-leak"} 50"#,
            "cwlab_dumps_total 7",
            "# EOF",
        ] {
            assert!(text.contains(want), "{want} in\n{text}");
        }
        let plain = prometheus_text(&s, 7);
        assert!(!plain.contains("# EOF"));
        assert!(
            plain.contains("# TYPE cwlab_dumps_total counter\ncwlab_dumps_total 7\n"),
            "{plain}"
        );
        assert!(
            plain.contains("# TYPE cwlab_build_info gauge\ncwlab_build_info{version="),
            "{plain}"
        );
        // The server side has no finding in this snapshot: no series says one.
        assert!(!text.contains(r#"side="server",remote="",kind="#), "{text}");
    }

    /// Port 443 of a remote service: a client holding 50 of its connections half-closed.
    fn client_leak() -> PortView {
        let mut p = PortView { port: 443, listening: false, ..Default::default() };
        p.client.insert(TcpState::CloseWait, 50);
        let holders = vec![Holding {
            pid: 4242,
            name: "python3".into(),
            sockets: 50,
            open_fds: 57,
            max_fds: Some(1024),
            runtime: Some(cwlab_model::runtime::Runtime::Cpython),
            cgroup: None,
        }];
        let remote = "10.0.0.5:443".parse().unwrap();
        let w = Watched {
            service: Service::Remote(remote),
            close_wait: 50,
            unfiled: 0,
            oldest_s: Some(75.0),
            per_min: None,
            cleared: 0,
            bound: None,
            watched_s: 0.0,
            stuck_s: 60.0,
            holders: &holders,
        };
        let finding = of_watch(&w);
        assert!(finding.is_some());
        p.remotes.push(RemoteView {
            remote,
            close_wait: 50,
            close_wait_oldest_s: Some(75.0),
            close_wait_per_min: None,
            cleared: 0,
            holders,
            finding,
        });
        p
    }
}
