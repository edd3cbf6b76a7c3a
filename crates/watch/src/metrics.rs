//! A snapshot as Prometheus metrics, built at scrape time with the prometheus org's
//! `prometheus-client`. Names follow Prometheus's conventions; the `state` label is spelled as
//! node_exporter's tcpstat collector spells it (`close_wait`, `fin_wait2`, …), so queries carry
//! over. Label values stay bounded: ports are the service ports and one `other`, holders the top
//! N of each port.
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `cwlab_tcp_sockets` | `netns`, `port`, `side`, `state` | sockets per state on each side of a service port (`side="server"`: local port; `client`: remote port); `port="other", side="other"` for the rest |
//! | `cwlab_tcp_close_wait_oldest_seconds` | `netns`, `port` | how long the oldest server CLOSE-WAIT socket of the port has waited |
//! | `cwlab_tcp_close_wait_holder_sockets` | `netns`, `port`, `pid`, `command`, and where it runs | server CLOSE-WAIT sockets held by each of the top holders |
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

use cwlab_model::watch::{Holding, Snapshot};
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PortLabels {
    netns: String,
    port: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HolderLabels {
    netns: String,
    port: String,
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

/// The snapshot in the OpenMetrics text format (what `prometheus-client` writes).
pub fn openmetrics(s: &Snapshot, dumps: u64) -> String {
    let mut reg = Registry::default();
    let sockets = Family::<SocketLabels, Gauge>::default();
    let oldest = Family::<PortLabels, FloatGauge>::default();
    let held = Family::<HolderLabels, Gauge>::default();
    let open_fds = Family::<ProcessLabels, Gauge>::default();
    let max_fds = Family::<ProcessLabels, Gauge>::default();
    let up = Family::<NetnsLabels, Gauge>::default();
    let took = FloatGauge::default();
    let dumps_total = Counter::<u64>::default();
    reg.register(
        "cwlab_tcp_sockets",
        "TCP sockets per state on each side of a service port",
        sockets.clone(),
    );
    reg.register(
        "cwlab_tcp_close_wait_oldest_seconds",
        "How long the oldest server CLOSE-WAIT socket of a port has waited",
        oldest.clone(),
    );
    reg.register(
        "cwlab_tcp_close_wait_holder_sockets",
        "Server CLOSE-WAIT sockets of a port held by one of its top holders",
        held.clone(),
    );
    reg.register(
        "cwlab_process_open_fds",
        "Open descriptors of a process holding CLOSE-WAIT sockets",
        open_fds.clone(),
    );
    reg.register(
        "cwlab_process_max_fds",
        "Descriptor limit (soft RLIMIT_NOFILE) of a process holding CLOSE-WAIT sockets",
        max_fds.clone(),
    );
    reg.register("cwlab_netns_up", "1 when the namespace's socket table could be read", up.clone());
    reg.register(
        "cwlab_scrape_duration_seconds",
        "How long the look at the socket tables took",
        took.clone(),
    );
    reg.register(
        "cwlab_dumps",
        "Kernel dumps made; concurrent scrapes share one",
        dumps_total.clone(),
    );
    reg.register(
        "cwlab_build",
        "The build of cwlab",
        Info::new(vec![("version".to_string(), env!("CARGO_PKG_VERSION").to_string())]),
    );
    took.set(s.took_ms / 1000.0);
    dumps_total.inc_by(dumps);
    for ns in &s.namespaces {
        let netns = ns.inode.to_string();
        up.get_or_create(&NetnsLabels { netns: netns.clone() }).set(i64::from(ns.error.is_none()));
        let put = |port: &str, side: &str, counts: &cwlab_model::report::Counts| {
            for (st, n) in counts {
                sockets
                    .get_or_create(&SocketLabels {
                        netns: netns.clone(),
                        port: port.to_string(),
                        side: side.to_string(),
                        state: state_label(*st).to_string(),
                    })
                    .set(i64::from(*n));
            }
        };
        for p in &ns.ports {
            let port = p.port.to_string();
            put(&port, "server", &p.server);
            put(&port, "client", &p.client);
            if let Some(age) = p.close_wait_oldest_s {
                oldest
                    .get_or_create(&PortLabels { netns: netns.clone(), port: port.clone() })
                    .set(age);
            }
            for h in &p.holders {
                let who = ProcessLabels::of(h);
                held.get_or_create(&HolderLabels {
                    netns: netns.clone(),
                    port: port.clone(),
                    pid: who.pid.clone(),
                    command: who.command.clone(),
                    unit: who.unit.clone(),
                    container_id: who.container_id.clone(),
                    pod: who.pod.clone(),
                    pod_uid: who.pod_uid.clone(),
                })
                .set(i64::from(h.sockets));
                open_fds.get_or_create(&who).set(i64::from(h.open_fds));
                if let Some(m) = h.max_fds {
                    max_fds.get_or_create(&who).set(i64::try_from(m).unwrap_or(i64::MAX));
                }
            }
        }
        put("other", "other", &ns.other);
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
    use cwlab_model::watch::{NamespaceView, PortView};

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
            cgroup: Some(pod),
        });
        let mut ns = NamespaceView { inode: 4026531840, label: "x".into(), ..Default::default() };
        ns.ports.push(p);
        ns.other.insert(TcpState::Established, 3);
        let s = Snapshot { t_unix_ms: 0, took_ms: 3.0, namespaces: vec![ns] };
        let text = openmetrics(&s, 7);
        for want in [
            r#"cwlab_tcp_sockets{netns="4026531840",port="8080",side="server",state="close_wait"} 100"#,
            r#"cwlab_tcp_sockets{netns="4026531840",port="8080",side="client",state="fin_wait2"} 100"#,
            r#"cwlab_tcp_sockets{netns="4026531840",port="other",side="other",state="established"} 3"#,
            r#"cwlab_tcp_close_wait_oldest_seconds{netns="4026531840",port="8080"} 12.5"#,
            r#"cwlab_tcp_close_wait_holder_sockets{netns="4026531840",port="8080",pid="4711",command="myserver",unit="",container_id="",pod="",pod_uid=""} 100"#,
            r#"cwlab_process_max_fds{pid="4711",command="myserver",unit="",container_id="",pod="",pod_uid=""} 1024"#,
            r#"cwlab_tcp_close_wait_holder_sockets{netns="4026531840",port="8080",pid="4712",command="worker",unit="",container_id="containerd://3f2a1b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708",pod="web-0",pod_uid="5a0b3c9e-1d2f-4e6a-8b7c-9d0e1f2a3b4c"} 3"#,
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
    }
}
