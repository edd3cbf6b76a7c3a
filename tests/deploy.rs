//! Where users run the watch (issue 22): the shipped systemd unit passes `systemd-analyze
//! verify`; the Kubernetes DaemonSets ask for exactly the unit's capabilities; and the binary,
//! run as an unprivileged user with exactly those capabilities, names a root process holding
//! CLOSE-WAIT sockets, keeps the table from the BPF stream where the kernel allows it as root,
//! and says nothing is missing. With no capabilities at all it still counts, and says what it
//! lacks and what that loses.

mod util;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cwlab_model::watch::Snapshot;
use cwlab_model::TcpState;
use util::{can_isolate, root, scratch, show};

const UNIT: &str = "packaging/systemd/cwlab-watch.service";
const DAEMONSETS: [&str; 2] =
    ["packaging/kubernetes/daemonset.yaml", "packaging/kubernetes/daemonset-textfile.yaml"];

/// The values of `key=` in the unit's [Service] section, split at spaces, one set per line.
fn unit_sets(key: &str) -> Vec<BTreeSet<String>> {
    let text = std::fs::read_to_string(root().join(UNIT)).unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// The unit's capabilities: its AmbientCapabilities, which must equal its
/// CapabilityBoundingSet.
fn unit_capabilities() -> BTreeSet<String> {
    let ambient = unit_sets("AmbientCapabilities");
    let bounding = unit_sets("CapabilityBoundingSet");
    assert_eq!(ambient.len(), 1, "one AmbientCapabilities= line");
    assert_eq!(ambient, bounding, "the same capabilities in both lines");
    ambient.into_iter().next().unwrap()
}

#[test]
fn issue_22_the_unit_passes_systemd_analyze_verify() {
    let Ok(v) = Command::new("systemd-analyze").arg("--version").output() else {
        assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "CI installs systemd");
        return eprintln!("skipping: systemd-analyze is not installed");
    };
    assert!(v.status.success());
    // The unit as shipped, its ExecStart pointing at this build's binary (a link from a path
    // without spaces, whatever the checkout's path).
    let dir = scratch("deploy-verify");
    let bin = dir.join("cwlab");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_cwlab"), &bin).unwrap();
    let text = std::fs::read_to_string(root().join(UNIT)).unwrap();
    assert!(text.contains("ExecStart=/usr/local/bin/cwlab watch --listen 127.0.0.1:19100\n"));
    let unit = dir.join("cwlab-watch.service");
    std::fs::write(&unit, text.replace("/usr/local/bin/cwlab", bin.to_str().unwrap())).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&unit).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    // Unknown keys and bad values are warnings with exit 0: none.
    assert!(out.stderr.is_empty() && out.stdout.is_empty(), "{}", show(&out));
    // And it does refuse what it should: a binary that is not there.
    std::fs::remove_file(&bin).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&unit).output().unwrap();
    assert_ne!(out.status.code(), Some(0), "{}", show(&out));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn issue_22_the_daemonsets_ask_for_exactly_the_unit_s_capabilities_and_no_privilege() {
    let unit = unit_capabilities();
    assert_eq!(
        unit,
        ["CAP_BPF", "CAP_DAC_READ_SEARCH", "CAP_PERFMON", "CAP_SYS_PTRACE"]
            .map(str::to_string)
            .into(),
        "docs/deploy.md's table"
    );
    for file in DAEMONSETS {
        let text = std::fs::read_to_string(root().join(file)).unwrap();
        let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        let ds: Vec<&serde_yaml::Value> =
            docs.iter().filter(|d| d["kind"] == "DaemonSet").collect();
        assert_eq!(ds.len(), 1, "{file}: one DaemonSet");
        let spec = &ds[0]["spec"]["template"]["spec"];
        assert_eq!(spec["hostPID"], true, "{file}");
        let args: Vec<&str> = spec["containers"][0]["args"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert!(spec["hostNetwork"] == true || args.contains(&"--all-netns"), "{file}");
        let containers = spec["containers"].as_sequence().unwrap();
        assert_eq!(containers.len(), 1, "{file}");
        let sc = &containers[0]["securityContext"];
        assert_ne!(sc["privileged"], true, "{file}: no privileged: true");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{file}");
        let list = |key: &str| -> BTreeSet<String> {
            sc["capabilities"][key]
                .as_sequence()
                .unwrap_or_else(|| panic!("{file}: capabilities.{key}"))
                .iter()
                .map(|c| c.as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(list("drop"), BTreeSet::from(["ALL".to_string()]), "{file}");
        let added: BTreeSet<String> = list("add").iter().map(|c| format!("CAP_{c}")).collect();
        assert_eq!(added, unit, "{file}: the unit's capabilities");
    }
}

/// The built binary copied where an unprivileged user may run it (the checkout may be in a
/// folder only root may enter).
fn reachable_binary(test: &str) -> PathBuf {
    let dir = scratch(test);
    let bin = dir.join("cwlab");
    std::fs::copy(env!("CARGO_BIN_EXE_cwlab"), &bin).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// `bin watch ARGS` as uid and gid 65534 with exactly `caps` (inheritable, ambient, bounding),
/// no supplementary groups, started from a thread in the network namespace at `ns`.
fn as_nobody(ns: &Path, bin: &Path, caps: &BTreeSet<String>, args: &[&str]) -> Output {
    let list: String =
        caps.iter().map(|c| format!(",+{}", c.trim_start_matches("CAP_").to_lowercase())).collect();
    let set = format!("-all{list}");
    cwlab_sampler::netns::in_namespace_at(ns, || {
        Command::new("setpriv")
            .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
            .arg(format!("--inh-caps={set}"))
            .arg(format!("--ambient-caps={set}"))
            .arg(format!("--bounding-set={set}"))
            .arg(bin)
            .arg("watch")
            .args(args)
            .output()
    })
    .unwrap()
}

#[test]
fn issue_22_unprivileged_with_the_unit_s_capabilities_names_root_s_holders() {
    if !can_isolate("deploy-setpriv") {
        return;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "CI has util-linux's setpriv");
        return eprintln!("skipping: setpriv is not installed");
    }
    let caps = unit_capabilities();
    let bin = reachable_binary("deploy-setpriv");
    // Held by this (root) process.
    let (ns, port, _held, _stop) = util::close_wait_leak(17);
    // Where the kernel lets root keep the table from the tracepoint, the unit's capabilities
    // must do as well.
    let stream_as_root = cwlab_sampler::stream::Stream::open().is_ok();
    let me = std::process::id();
    let port_arg = port.to_string();
    let args = ["--once", "--json", "--port", port_arg.as_str()];
    // The clients' FINs are acknowledged at once on loopback, but a look may come first.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let (out, s) = loop {
        let out = as_nobody(&ns, &bin, &caps, &args);
        assert_eq!(out.status.code(), Some(0), "{}", show(&out));
        let s: Snapshot = serde_json::from_slice(&out.stdout).unwrap();
        let p = &s.namespaces[0].ports[0];
        if p.client.get(&TcpState::FinWait2) == Some(&17) || std::time::Instant::now() > deadline {
            break (out, s);
        }
    };
    let p = &s.namespaces[0].ports[0];
    assert_eq!(p.server.get(&TcpState::CloseWait), Some(&17), "{p:?}");
    assert_eq!(p.holders.len(), 1, "{p:?}");
    assert_eq!((p.holders[0].pid, p.holders[0].sockets), (me, 17), "root's holder, named");
    assert!(p.holders[0].open_fds >= 17, "{p:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stream_as_root {
        assert!(!stderr.contains("BPF stream"), "the stream, as for root: {stderr}");
    } else {
        eprintln!("the kernel refuses the BPF stream even to root here");
    }
    assert!(!stderr.contains("lacks"), "nothing lacking in its own namespace: {stderr}");

    // With no capability at all: the same counts, no holder, and it says why.
    let out = as_nobody(&ns, &bin, &BTreeSet::new(), &args);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let s: Snapshot = serde_json::from_slice(&out.stdout).unwrap();
    let p = &s.namespaces[0].ports[0];
    assert_eq!(p.server.get(&TcpState::CloseWait), Some(&17), "{p:?}");
    assert!(p.holders.is_empty(), "{p:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for lacks in [
        "cwlab watch: lacks CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH (or CAP_BPF and CAP_PERFMON): holders are named only among uid 65534's own processes",
        "cwlab watch: lacks CAP_BPF and CAP_PERFMON: no BPF stream",
    ] {
        assert!(stderr.contains(lacks), "{lacks} in {stderr}");
    }
    let _ = std::fs::remove_dir_all(bin.parent().unwrap());
}
