//! Holders named by where they run (issue 22). For each manager's cgroup convention (systemd
//! units, Docker's two drivers, containerd, CRI-O and the kubelet's two drivers, Podman, and the
//! v1 `name=systemd` hierarchy where it is mounted), a process in a cgroup of that name, made
//! here for real, holds a CLOSE-WAIT socket of a leak in a namespace of the test's own. The
//! sampler, the watch's JSON, table and metrics, and `cwlab sockets --holders` must name each
//! one's unit, container or pod; the pods with a UTS namespace of their own by their hostname.

mod util;

use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cwlab_model::watch::{Cgroup, Snapshot};
use cwlab_model::TcpState;
use cwlab_sampler::cgroup;
use util::{can_isolate, scratch, show};

/// One layout: where under the test's folder, and what the watch must call it.
struct Layout {
    /// The cgroup's path under the test's folder.
    path: String,
    /// In the v1 `name=systemd` hierarchy rather than cgroup v2.
    v1: bool,
    /// The hostname of a UTS namespace of its own (a pod's name).
    hostname: Option<&'static str>,
    /// What it says: unit, container (runtime, id), pod (uid, qos, name).
    unit: Option<String>,
    container: Option<(&'static str, String)>,
    pod: Option<(String, &'static str, Option<&'static str>)>,
    short: String,
}

fn hex(seed: u64) -> String {
    (0..4).map(|i| format!("{:016x}", seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i)).collect()
}

fn uid(seed: u64) -> String {
    let h = hex(seed);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

fn layouts() -> Vec<Layout> {
    let (d1, d2, c3, c4, c5, p6) = (hex(1), hex(2), hex(3), hex(4), hex(5), hex(6));
    let (u3, u4, u5) = (uid(13), uid(14), uid(15));
    let (s3, s4) = (u3.replace('-', "_"), u4.replace('-', "_"));
    let short = |s: &str| s[..12].to_string();
    let plain = |path: &str, unit: &str, v1| Layout {
        path: path.into(),
        v1,
        hostname: None,
        unit: Some(unit.into()),
        container: None,
        pod: None,
        short: unit.into(),
    };
    vec![
        plain("system.slice/leaky.service", "leaky.service", false),
        plain("user.slice/user-1000.slice/session-7.scope", "session-7.scope", false),
        Layout {
            path: format!("system.slice/docker-{d1}.scope"),
            unit: Some(format!("docker-{d1}.scope")),
            container: Some(("docker", d1.clone())),
            short: format!("docker/{}", short(&d1)),
            ..plain("", "", false)
        },
        Layout {
            path: format!("docker/{d2}"),
            unit: None,
            container: Some(("docker", d2.clone())),
            short: format!("docker/{}", short(&d2)),
            ..plain("", "", false)
        },
        Layout {
            path: format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{s3}.slice/cri-containerd-{c3}.scope"),
            hostname: Some("web-0"),
            unit: Some(format!("cri-containerd-{c3}.scope")),
            container: Some(("containerd", c3.clone())),
            pod: Some((u3.clone(), "burstable", Some("web-0"))),
            short: "pod/web-0".into(),
            ..plain("", "", false)
        },
        Layout {
            path: format!("kubepods.slice/kubepods-pod{s4}.slice/crio-{c4}.scope"),
            unit: Some(format!("crio-{c4}.scope")),
            container: Some(("cri-o", c4.clone())),
            pod: Some((u4.clone(), "guaranteed", None)),
            short: format!("pod/{}", &u4[..8]),
            ..plain("", "", false)
        },
        Layout {
            path: format!("kubepods/besteffort/pod{u5}/{c5}"),
            hostname: Some("api-7f9c"),
            unit: None,
            container: Some(("unknown", c5.clone())),
            pod: Some((u5.clone(), "besteffort", Some("api-7f9c"))),
            short: "pod/api-7f9c".into(),
            ..plain("", "", false)
        },
        Layout {
            path: format!("machine.slice/libpod-{p6}.scope"),
            unit: Some(format!("libpod-{p6}.scope")),
            container: Some(("podman", p6.clone())),
            short: format!("podman/{}", short(&p6)),
            ..plain("", "", false)
        },
        plain("system.slice/legacy.service", "legacy.service", true),
    ]
}

/// The cgroups made, removed (deepest first) when dropped, after the holders are gone.
struct Made {
    holders: Vec<Child>,
    dirs: Vec<PathBuf>,
}

impl Drop for Made {
    fn drop(&mut self) {
        for c in &mut self.holders {
            let _ = c.kill();
            let _ = c.wait();
        }
        let mut dirs = self.dirs.clone();
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            let _ = std::fs::remove_dir(&d);
        }
    }
}

/// Makes every folder from `root` down to `root/rel`, noting each one made.
fn make(root: &Path, rel: &str, made: &mut Made) -> PathBuf {
    let mut at = root.to_path_buf();
    if !at.exists() {
        std::fs::create_dir(&at).unwrap();
        made.dirs.push(at.clone());
    }
    for part in rel.split('/') {
        at.push(part);
        if !at.exists() {
            std::fs::create_dir(&at).unwrap_or_else(|e| panic!("{}: {e}", at.display()));
            made.dirs.push(at.clone());
        }
    }
    at
}

/// A holder: `sleep` holding `sock` as its stdin, in a UTS namespace named `hostname` when asked.
fn holder(sock: OwnedFd, hostname: Option<&'static str>) -> Child {
    let mut c = Command::new("sleep");
    c.arg("600").stdin(Stdio::from(sock)).stdout(Stdio::null()).stderr(Stdio::null());
    if let Some(name) = hostname {
        // SAFETY: between fork and exec the closure makes two system calls and allocates
        // nothing; the child has one thread.
        unsafe {
            c.pre_exec(move || {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUTS)?;
                nix::unistd::sethostname(name)?;
                Ok(())
            });
        }
    }
    c.spawn().unwrap()
}

fn cwlab(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cwlab")).args(args).output().unwrap()
}

#[test]
fn issue_22_a_holder_in_each_manager_s_cgroup_is_named_by_its_unit_container_or_pod() {
    if !can_isolate("cgroup-layouts") {
        return;
    }
    let Some(v2) = cgroup::v2_mount() else {
        assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "CI mounts cgroup v2");
        return eprintln!("skipping: no cgroup v2 hierarchy mounted");
    };
    let v1 = cgroup::v1_systemd_mount();
    let folder = format!("cwlab-test-{}", std::process::id());
    let layouts: Vec<Layout> = layouts().into_iter().filter(|l| !l.v1 || v1.is_some()).collect();
    if v1.is_none() {
        eprintln!("no cgroup v1 name=systemd hierarchy here: its layout is left out");
    }
    let (ns, port, sockets, _stop) = util::close_wait_leak(layouts.len());
    let mut made = Made { holders: Vec::new(), dirs: Vec::new() };
    for (l, sock) in layouts.iter().zip(sockets) {
        let root = if l.v1 { v1.clone().unwrap() } else { v2.clone() };
        let dir = make(&root.join(&folder), &l.path, &mut made);
        let child = holder(sock, l.hostname);
        std::fs::write(dir.join("cgroup.procs"), child.id().to_string())
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        if l.v1 {
            // Its cgroup v2 path the root, so that the v1 hierarchy is all there is to read.
            std::fs::write(v2.join("cgroup.procs"), child.id().to_string()).unwrap();
        }
        made.holders.push(child);
    }
    // Each holder has exec'd (its copies of the other sockets closed) before anything looks.
    let deadline = Instant::now() + Duration::from_secs(10);
    for c in &made.holders {
        while std::fs::read_to_string(format!("/proc/{}/comm", c.id()))
            .map(|s| s.trim() == "sleep")
            .ok()
            != Some(true)
        {
            assert!(Instant::now() < deadline, "timeout while waiting for {} to exec", c.id());
            std::thread::yield_now();
        }
    }
    let pids: Vec<u32> = made.holders.iter().map(Child::id).collect();
    let want: Vec<Cgroup> = layouts
        .iter()
        .map(|l| Cgroup {
            path: format!("/{folder}/{}", l.path),
            unit: l.unit.clone(),
            slice: l.path.split('/').rfind(|p| p.ends_with(".slice")).map(str::to_string),
            container: l
                .container
                .clone()
                .map(|(runtime, id)| cwlab_model::watch::Container { runtime: runtime.into(), id }),
            pod: l.pod.clone().map(|(uid, qos, name)| cwlab_model::watch::Pod {
                uid,
                qos: qos.into(),
                name: name.map(str::to_string),
            }),
        })
        .collect();

    // The sampler.
    for ((pid, w), l) in pids.iter().zip(&want).zip(&layouts) {
        let got = cgroup::of(*pid);
        assert_eq!(got.as_ref(), Some(w), "{}", l.path);
        assert_eq!(got.and_then(|c| c.short()), Some(l.short.clone()), "{}", l.path);
    }

    // The watch's JSON: every holder, its socket, where it runs.
    let nsp = ns.to_str().unwrap();
    let top = layouts.len().to_string();
    let out = cwlab(&["watch", "--netns", nsp, "--once", "--json", "--top", &top]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let s: Snapshot = serde_json::from_slice(&out.stdout).unwrap();
    let p = s.namespaces[0].ports.iter().find(|p| p.port == port).unwrap();
    assert_eq!(p.server.get(&TcpState::CloseWait), Some(&(layouts.len() as u32)));
    for (pid, w) in pids.iter().zip(&want) {
        let h = p.holders.iter().find(|h| h.pid == *pid).unwrap_or_else(|| panic!("{pid}: {p:?}"));
        assert_eq!((h.sockets, h.cgroup.as_ref()), (1, Some(w)), "{}", w.path);
    }

    // The table: each holder's row ends with where it runs.
    let out = cwlab(&["watch", "--netns", nsp, "--once", "--top", &top]);
    let text = String::from_utf8_lossy(&out.stdout);
    for (pid, l) in pids.iter().zip(&layouts) {
        let row = text
            .lines()
            .find(|r| r.trim_start().starts_with(&format!("{pid} ")))
            .unwrap_or_else(|| panic!("{pid} in\n{text}"));
        assert!(row.ends_with(&format!("  {}", l.short)), "{row:?} for {}", l.path);
        assert!(row.chars().count() <= 80, "{row:?}");
    }

    // The metrics, through the textfile.
    let dir = scratch("cgroup-layouts");
    let out = cwlab(&[
        "watch",
        "--netns",
        nsp,
        "--once",
        "--top",
        &top,
        "--textfile",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let prom = std::fs::read_to_string(dir.join("cwlab.prom")).unwrap();
    for (pid, w) in pids.iter().zip(&want) {
        let pod = w.pod.as_ref();
        let labels = format!(
            "pid=\"{pid}\",command=\"sleep\",unit=\"{}\",container_id=\"{}\",pod=\"{}\",pod_uid=\"{}\"",
            w.unit.clone().unwrap_or_default(),
            w.container_id().unwrap_or_default(),
            pod.and_then(|p| p.name.clone()).unwrap_or_default(),
            pod.map(|p| p.uid.clone()).unwrap_or_default(),
        );
        let line = format!(
            "cwlab_tcp_close_wait_holder_sockets{{netns=\"{}\",port=\"{port}\",side=\"server\",remote=\"\",{labels}}} 1",
            s.namespaces[0].inode
        );
        assert!(prom.lines().any(|x| x == line), "{line} in\n{prom}");
    }
    let _ = std::fs::remove_dir_all(&dir);

    // cwlab sockets --holders, in the leak's namespace.
    let out = cwlab_sampler::netns::in_namespace_at(&ns, || {
        Command::new(env!("CARGO_BIN_EXE_cwlab"))
            .args(["sockets", "--state", "close-wait", "--holders"])
            .output()
    })
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for (pid, l) in pids.iter().zip(&layouts) {
        let cell = format!("(\"sleep\",pid={pid},fd=0,in={})", l.short);
        assert!(text.contains(&cell), "{cell} in\n{text}");
    }
    drop(made);
    assert!(!v2.join(&folder).exists(), "the test's cgroups are removed");
}
