//! Where a process runs: its cgroup (`/proc/PID/cgroup`) read in the conventions of the managers
//! that make cgroups, so that a holder is named by the systemd unit, the container or the
//! Kubernetes pod that runs it, not by a pid alone.
//!
//! The conventions (each manager names its cgroups; the kernel does not care who makes one):
//! - systemd: `/system.slice/NAME.service`, `/user.slice/user-UID.slice/session-N.scope`, a
//!   user's own units under `user@UID.service/app.slice/`;
//! - Docker: `/system.slice/docker-<id>.scope` (systemd driver) or `/docker/<id>` (cgroupfs);
//!   containerd under the kubelet `cri-containerd-<id>.scope`, CRI-O `crio-<id>.scope`, Podman
//!   `libpod-<id>.scope` (or `/libpod_parent/libpod-<id>`); their monitors (`crio-conmon-<id>`,
//!   `libpod-conmon-<id>`) are units, not containers;
//! - the kubelet, systemd driver: `/kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid>.slice/`
//!   with the UID's dashes written as underscores (a guaranteed pod's slice sits directly under
//!   `kubepods.slice`, as `kubepods-pod<uid>.slice`); cgroupfs driver: `/kubepods/<qos>/pod<uid>/<id>`
//!   (guaranteed: `/kubepods/pod<uid>/<id>`).
//!
//! A reader in a cgroup namespace of its own (a pod's) sees other processes' paths relative to
//! its own root, with `..` components first; they are passed over.
//!
//! # References
//! cgroups(7) (`/proc/PID/cgroup`), cgroup_namespaces(7), setns(2), gethostname(2); systemd.unit(5);
//! the kubelet's `pkg/kubelet/cm` (cgroup names per QoS class and driver).

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

pub use cwlab_model::watch::{Cgroup, Container, Pod};

/// The cgroup of process `pid`, with the pod's name where it can be known on the node; `None`
/// when `/proc/PID/cgroup` cannot be read (the process is gone).
pub fn of(pid: u32) -> Option<Cgroup> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let mut c = parse(&text)?;
    if let Some(p) = c.pod.as_mut() {
        p.name = hostname_of(pid);
    }
    Some(c)
}

/// What a `/proc/PID/cgroup` says: the cgroup v2 path (`0::PATH`), or the v1 `name=systemd`
/// hierarchy's where the v2 line is missing or names only the root (a hybrid host whose v2
/// hierarchy nobody manages), read as [`classify`] reads a path. `None` when neither is there.
pub fn parse(text: &str) -> Option<Cgroup> {
    let mut v2 = None;
    let mut named = None;
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let path = path.strip_suffix(" (deleted)").unwrap_or(path);
        if controllers.is_empty() {
            v2 = Some(path);
        } else if controllers.split(',').any(|c| c == "name=systemd") {
            named = Some(path);
        }
    }
    let path = match (v2, named) {
        (Some(p), _) if p != "/" => p,
        (_, Some(n)) => n,
        (Some(p), None) => p,
        (None, None) => return None,
    };
    Some(classify(path))
}

/// What a cgroup path says in the managers' conventions (see the module's documentation).
pub fn classify(path: &str) -> Cgroup {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty() && *p != "..").collect();
    let mut c = Cgroup { path: path.to_string(), ..Cgroup::default() };
    for (i, part) in parts.iter().enumerate() {
        if let Some(slice) = part.strip_suffix(".slice") {
            c.slice = Some(part.to_string());
            if let Some(pod) = pod_slice(slice) {
                c.pod = Some(pod);
            }
        } else if is_unit(part) {
            c.unit = Some(part.to_string());
        }
        if c.container.is_none() {
            c.container = container(&parts, i);
        }
        if c.pod.is_none() {
            c.pod = pod_folder(&parts, i);
        }
    }
    c
}

/// Whether a path component is a systemd unit other than a slice.
fn is_unit(part: &str) -> bool {
    [".service", ".scope", ".socket", ".mount", ".swap"].iter().any(|s| part.ends_with(s))
}

/// The runtimes' scope prefixes (systemd driver), most specific first: a monitor's scope is not
/// its container.
const SCOPES: [(&str, Option<&str>); 6] = [
    ("crio-conmon-", None),
    ("libpod-conmon-", None),
    ("docker-", Some("docker")),
    ("cri-containerd-", Some("containerd")),
    ("crio-", Some("cri-o")),
    ("libpod-", Some("podman")),
];

/// The container that component `i` of `parts` names, if any.
fn container(parts: &[&str], i: usize) -> Option<Container> {
    let part = parts[i];
    let bare = part.strip_suffix(".scope").unwrap_or(part);
    for (prefix, runtime) in SCOPES {
        if let Some(id) = bare.strip_prefix(prefix) {
            let runtime = runtime?;
            return is_id(id).then(|| Container { runtime: runtime.into(), id: id.into() });
        }
    }
    let parent = i.checked_sub(1).map(|p| parts[p]);
    if !is_id(part) {
        return None;
    }
    match parent {
        Some("docker") => Some(Container { runtime: "docker".into(), id: part.into() }),
        // The kubelet's cgroupfs driver: the container's folder is named by its id alone.
        Some(p) if p.starts_with("pod") && pod_folder(parts, i - 1).is_some() => {
            Some(Container { runtime: "unknown".into(), id: part.into() })
        }
        _ => None,
    }
}

/// A container id: 12 to 64 hex digits.
fn is_id(s: &str) -> bool {
    (12..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The pod a kubelet's systemd-driver slice names (`kubepods-burstable-pod<uid>`, without
/// `.slice`), with its QoS class; the UID's underscores turned back into dashes.
fn pod_slice(slice: &str) -> Option<Pod> {
    let rest = slice.strip_prefix("kubepods-")?;
    let (qos, rest) = match rest.split_once('-') {
        Some((q @ ("burstable" | "besteffort"), r)) => (q, r),
        _ => ("guaranteed", rest),
    };
    let uid = rest.strip_prefix("pod")?;
    is_uid(uid).then(|| Pod { uid: uid.replace('_', "-"), qos: qos.into(), name: None })
}

/// The pod a kubelet's cgroupfs-driver folder names: `pod<uid>` at `parts[i]`, under
/// `kubepods/<qos>/` or (guaranteed) `kubepods/`.
fn pod_folder(parts: &[&str], i: usize) -> Option<Pod> {
    let uid = parts[i].strip_prefix("pod").filter(|u| is_uid(u))?;
    let qos = match (i.checked_sub(1).map(|p| parts[p]), i.checked_sub(2).map(|p| parts[p])) {
        (Some("kubepods"), _) => "guaranteed",
        (Some(q @ ("burstable" | "besteffort")), Some("kubepods")) => q,
        _ => return None,
    };
    Some(Pod { uid: uid.replace('_', "-"), qos: qos.into(), name: None })
}

/// A pod UID as the kubelet writes it in a cgroup name: 32 hex digits in the 8-4-4-4-12 groups,
/// separated by dashes (cgroupfs) or underscores (systemd).
fn is_uid(s: &str) -> bool {
    let groups: Vec<&str> = s.split(['-', '_']).collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups.iter().all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The hostname process `pid` sees, where it has a UTS namespace of its own (a pod's hostname
/// is its name unless the pod sets another): through its UTS namespace where this process may
/// enter it (CAP_SYS_ADMIN), else its root's `/etc/hostname` (where the runtime bind-mounts
/// the pod's; reading another user's root needs CAP_SYS_PTRACE). `None` in the host's UTS
/// namespace, whose name is the node's.
pub fn hostname_of(pid: u32) -> Option<String> {
    let ns = std::fs::metadata(format!("/proc/{pid}/ns/uts")).ok()?.ino();
    let host = ["/proc/1/ns/uts", "/proc/self/ns/uts"]
        .iter()
        .find_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.ino());
    if host == Some(ns) {
        return None;
    }
    let name = uts_hostname(pid)
        .ok()
        .or_else(|| std::fs::read_to_string(format!("/proc/{pid}/root/etc/hostname")).ok())?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// The hostname in process `pid`'s UTS namespace, from a thread that joins it (setns(2) moves
/// only the calling thread; the thread ends there).
fn uts_hostname(pid: u32) -> io::Result<String> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/uts"))?;
    std::thread::scope(|s| {
        s.spawn(move || {
            use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};
            use std::os::fd::AsFd;
            move_into_link_name_space(
                ns.as_fd(),
                Some(LinkNameSpaceType::HostNameAndNISDomainName),
            )?;
            Ok(rustix::system::uname().nodename().to_string_lossy().into_owned())
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("a thread in another UTS namespace panicked")))
    })
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup` on a unified host,
/// `/sys/fs/cgroup/unified` on a hybrid one), from `/proc/self/mountinfo`.
pub fn v2_mount() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|l| {
        // `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS… - FSTYPE SOURCE SUPER`
        let (before, after) = l.split_once(" - ")?;
        let point = before.split_whitespace().nth(4)?;
        (after.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(point))
    })
}

/// Where the cgroup v1 `name=systemd` hierarchy is mounted, if it is.
pub fn v1_systemd_mount() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|l| {
        let (before, after) = l.split_once(" - ")?;
        let mut a = after.split_whitespace();
        let named = a.next()? == "cgroup" && a.nth(1)?.split(',').any(|o| o == "name=systemd");
        let point = before.split_whitespace().nth(4)?;
        named.then(|| PathBuf::from(point))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f2a1b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708";
    const UID: &str = "5a0b3c9e-1d2f-4e6a-8b7c-9d0e1f2a3b4c";

    fn pod(qos: &str) -> Option<Pod> {
        Some(Pod { uid: UID.into(), qos: qos.into(), name: None })
    }

    fn ctr(runtime: &str) -> Option<Container> {
        Some(Container { runtime: runtime.into(), id: ID.into() })
    }

    #[test]
    fn recorded_cgroup_files_of_every_shape() {
        let u = UID.replace('-', "_");
        let cases: Vec<(String, Cgroup)> = vec![
            // A unified host: one line.
            (
                "0::/system.slice/nginx.service\n".into(),
                Cgroup {
                    path: "/system.slice/nginx.service".into(),
                    unit: Some("nginx.service".into()),
                    slice: Some("system.slice".into()),
                    ..Default::default()
                },
            ),
            // A hybrid host managed by systemd: the v2 line mirrors name=systemd.
            (
                "12:cpu,cpuacct:/user.slice\n1:name=systemd:/user.slice/user-1000.slice/session-3.scope\n0::/user.slice/user-1000.slice/session-3.scope\n".into(),
                Cgroup {
                    path: "/user.slice/user-1000.slice/session-3.scope".into(),
                    unit: Some("session-3.scope".into()),
                    slice: Some("user-1000.slice".into()),
                    ..Default::default()
                },
            ),
            // A hybrid host whose v2 hierarchy nobody manages: name=systemd says where.
            (
                "9:name=systemd:/system.slice/cron.service\n8:pids:/\n0::/\n".into(),
                Cgroup {
                    path: "/system.slice/cron.service".into(),
                    unit: Some("cron.service".into()),
                    slice: Some("system.slice".into()),
                    ..Default::default()
                },
            ),
            // v1 only: every controller, and name=systemd.
            (
                format!("11:memory:/docker/{ID}\n2:cpu,cpuacct:/docker/{ID}\n1:name=systemd:/docker/{ID}\n"),
                Cgroup { path: format!("/docker/{ID}"), container: ctr("docker"), ..Default::default() },
            ),
            // Docker's systemd driver.
            (
                format!("0::/system.slice/docker-{ID}.scope\n"),
                Cgroup {
                    path: format!("/system.slice/docker-{ID}.scope"),
                    unit: Some(format!("docker-{ID}.scope")),
                    slice: Some("system.slice".into()),
                    container: ctr("docker"),
                    ..Default::default()
                },
            ),
            // The kubelet's systemd driver, containerd, a burstable pod.
            (
                format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{ID}.scope\n"),
                Cgroup {
                    path: format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{ID}.scope"),
                    unit: Some(format!("cri-containerd-{ID}.scope")),
                    slice: Some(format!("kubepods-burstable-pod{u}.slice")),
                    container: ctr("containerd"),
                    pod: pod("burstable"),
                },
            ),
            // CRI-O, a guaranteed pod: its slice directly under kubepods.slice.
            (
                format!("0::/kubepods.slice/kubepods-pod{u}.slice/crio-{ID}.scope\n"),
                Cgroup {
                    path: format!("/kubepods.slice/kubepods-pod{u}.slice/crio-{ID}.scope"),
                    unit: Some(format!("crio-{ID}.scope")),
                    slice: Some(format!("kubepods-pod{u}.slice")),
                    container: ctr("cri-o"),
                    pod: pod("guaranteed"),
                },
            ),
            // CRI-O's monitor beside it: the pod's, not a container.
            (
                format!("0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/crio-conmon-{ID}.scope\n"),
                Cgroup {
                    path: format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/crio-conmon-{ID}.scope"),
                    unit: Some(format!("crio-conmon-{ID}.scope")),
                    slice: Some(format!("kubepods-besteffort-pod{u}.slice")),
                    pod: pod("besteffort"),
                    ..Default::default()
                },
            ),
            // The kubelet's cgroupfs driver (v1 here): no runtime in the name.
            (
                format!("4:memory:/kubepods/besteffort/pod{UID}/{ID}\n1:name=systemd:/kubepods/besteffort/pod{UID}/{ID}\n"),
                Cgroup { path: format!("/kubepods/besteffort/pod{UID}/{ID}"), container: ctr("unknown"), pod: pod("besteffort"), ..Default::default() },
            ),
            (
                format!("0::/kubepods/pod{UID}/{ID}\n"),
                Cgroup { path: format!("/kubepods/pod{UID}/{ID}"), container: ctr("unknown"), pod: pod("guaranteed"), ..Default::default() },
            ),
            // Podman, both drivers.
            (
                format!("0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container\n"),
                Cgroup {
                    path: format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container"),
                    unit: Some(format!("libpod-{ID}.scope")),
                    slice: Some("user.slice".into()),
                    container: ctr("podman"),
                    ..Default::default()
                },
            ),
            (
                format!("0::/libpod_parent/libpod-{ID}\n"),
                Cgroup { path: format!("/libpod_parent/libpod-{ID}"), container: ctr("podman"), ..Default::default() },
            ),
            // Read from inside a pod's cgroup namespace: another pod's path, relative.
            (
                format!("0::/../../kubepods-burstable-pod{u}.slice/cri-containerd-{ID}.scope\n"),
                Cgroup {
                    path: format!("/../../kubepods-burstable-pod{u}.slice/cri-containerd-{ID}.scope"),
                    unit: Some(format!("cri-containerd-{ID}.scope")),
                    slice: Some(format!("kubepods-burstable-pod{u}.slice")),
                    container: ctr("containerd"),
                    pod: pod("burstable"),
                },
            ),
            // The root, and a process that moved into a cgroup since removed.
            ("0::/\n".into(), Cgroup { path: "/".into(), ..Default::default() }),
            (
                "0::/system.slice/gone.service (deleted)\n".into(),
                Cgroup {
                    path: "/system.slice/gone.service".into(),
                    unit: Some("gone.service".into()),
                    slice: Some("system.slice".into()),
                    ..Default::default()
                },
            ),
        ];
        for (text, want) in cases {
            assert_eq!(parse(&text).as_ref(), Some(&want), "{text}");
        }
        assert_eq!(parse(""), None);
        assert_eq!(parse("garbage\n3:memory:/x\n"), None);
    }

    #[test]
    fn look_alikes_name_nothing() {
        // Not ids, not UIDs, not under kubepods: nothing but what systemd says.
        for path in [
            "/docker/notanid",
            "/system.slice/docker.service",
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podxyz.slice",
            "/pods/pod5a0b3c9e-1d2f-4e6a-8b7c-9d0e1f2a3b4c/abc",
            "/system.slice/libpod-conmon-3f2a1b4c5d6e.scope",
        ] {
            let c = classify(path);
            assert_eq!((c.container.as_ref(), c.pod.as_ref()), (None, None), "{path}: {c:?}");
        }
    }

    #[test]
    fn short_names() {
        let u = UID.replace('-', "_");
        let short = |p: &str| classify(p).short();
        assert_eq!(short("/system.slice/nginx.service").as_deref(), Some("nginx.service"));
        assert_eq!(short(&format!("/docker/{ID}")).as_deref(), Some("docker/3f2a1b4c5d6e"));
        assert_eq!(
            short(&format!("/kubepods.slice/kubepods-pod{u}.slice/crio-{ID}.scope")).as_deref(),
            Some("pod/5a0b3c9e")
        );
        assert_eq!(short("/user.slice").as_deref(), Some("user.slice"));
        assert_eq!(short("/lab/odd").as_deref(), Some("/lab/odd"));
        assert_eq!(short("/"), None);
        let mut named = classify(&format!("/kubepods/pod{UID}/{ID}"));
        named.pod.as_mut().unwrap().name = Some("web-0".into());
        assert_eq!(named.short().as_deref(), Some("pod/web-0"));
        assert_eq!(named.container_id(), Some(format!("unknown://{ID}")));
    }

    #[test]
    fn this_process_has_a_cgroup_and_the_host_s_hostname_is_no_pod_s() {
        let me = of(std::process::id()).expect("our own /proc/PID/cgroup");
        assert!(me.path.starts_with('/'), "{me:?}");
        assert_eq!(hostname_of(std::process::id()), None);
    }
}
