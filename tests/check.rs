//! `cwlab check` on the example servers in examples/ (Python, and C where a compiler is present),
//! each checked against its row of tests/check-expected.toml: the exit code, the findings, who
//! holds what, and that nothing it started outlives it.

mod util;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use util::{can_isolate, marked, read_report, root, scratch, serial, show};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Row {
    command: Vec<String>,
    #[serde(default)]
    args: Vec<String>,
    exit: i32,
    #[serde(default)]
    findings: Vec<String>,
    #[serde(default)]
    held: BTreeMap<String, u32>,
    processes: Option<usize>,
    fds_grew: Option<i64>,
    error: Option<String>,
    /// For a run that happened but cannot be judged (exit 2 with a report): what its error says.
    no_verdict: Option<String>,
    /// Clients that completed their exchange (default: all 100).
    completed: Option<u32>,
    /// Clients that hung (default: 0).
    #[serde(default)]
    hung: u32,
}

fn table() -> BTreeMap<String, Row> {
    let text = std::fs::read_to_string(root().join("tests/check-expected.toml")).unwrap();
    toml::from_str(&text).unwrap()
}

/// `{c:FILE}` or `{c:FILE:FLAG}`: the C example compiled into `dir`; `None` without a compiler.
fn compiled(word: &str, dir: &Path) -> Option<String> {
    let Some(spec) = word.strip_prefix("{c:").and_then(|w| w.strip_suffix('}')) else {
        return Some(word.to_string());
    };
    let (file, flag) = spec.split_once(':').unwrap_or((spec, ""));
    let out = dir.join(format!("{}{}", file.trim_end_matches(".c"), flag.replace('-', "_")));
    let mut cc = Command::new("cc");
    cc.args(["-O2", "-o"]).arg(&out).arg(root().join("examples/c").join(file));
    if !flag.is_empty() {
        cc.arg(flag);
    }
    match cc.status() {
        Ok(s) if s.success() => Some(out.to_string_lossy().into_owned()),
        Ok(s) => panic!("{file}: cc failed: {s}"),
        Err(_) => {
            assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "CI has a C compiler");
            None
        }
    }
}

fn check(name: &str) {
    let test = format!("check-{name}");
    if !can_isolate(&test) {
        return;
    }
    let row = &table()[name];
    let dir = scratch(&test);
    let mut command = Vec::new();
    for w in &row.command {
        match compiled(w, &dir) {
            Some(w) => command.push(w),
            None => return eprintln!("skipping {test}: no C compiler"),
        }
    }
    let report = dir.join("report.json");
    let _one_at_a_time = serial();
    let child = Command::new(env!("CARGO_BIN_EXE_cwlab"))
        .arg("check")
        .args(if row.args.iter().any(|a| a == "--isolation") {
            &[][..]
        } else {
            &["--isolation", "netns"][..]
        })
        .arg("--report")
        .arg(&report)
        .args(&row.args)
        .arg("--")
        .args(&command)
        .current_dir(root())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let runner = child.id();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(row.exit), "{name}: {}", show(&out));
    // However it ended, nothing it started is alive (a daemon included): the namespace went. A
    // process killed a moment ago may still be exiting: wait for the condition, to a deadline.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !marked(runner).is_empty() {
        assert!(std::time::Instant::now() < deadline, "{name}: survivors {:?}", marked(runner));
        std::thread::yield_now();
    }
    if let Some(want) = &row.error {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(want.as_str()), "{name}: {stderr}");
        assert!(!report.exists(), "{name}: no report when the check could not run");
        return;
    }
    let r = read_report(&report);
    assert_eq!(r.scenario.command.as_deref(), Some(&command_with_port(&command, r.port)[..]));
    let o = &r.client_outcome;
    assert_eq!(o.completed + o.hung + o.failed, r.clients, "{name}: every client counted once");
    assert_eq!(o.hung, row.hung, "{name}: hung clients");
    match &row.no_verdict {
        Some(want) => {
            let error = r.error.as_deref().unwrap_or_default();
            assert!(error.contains(want.as_str()), "{name}: {error}");
        }
        None => assert_eq!(r.error, None, "{name}"),
    }
    let kinds: Vec<String> = r.diagnosis.findings.iter().map(|f| f.kind.to_string()).collect();
    assert_eq!(kinds, row.findings, "{name}: findings\n{}", String::from_utf8_lossy(&out.stdout));
    let held: BTreeMap<String, u32> = r
        .diagnosis
        .held
        .iter()
        .map(|h| (format!("{} {} {}", h.side, h.state, h.role), h.sockets))
        .collect();
    assert_eq!(held, row.held, "{name}: holders");
    if let Some(n) = row.processes {
        let f = &r.diagnosis.findings[0];
        assert_eq!(f.holders.len(), n, "{name}: processes holding the sockets");
        assert!(f.holders.iter().all(|p| p.command.is_some() && !p.fds.is_empty()), "{name}");
        assert!(f.fix.is_some(), "{name}: a fix is printed");
    }
    if let Some(g) = row.fds_grew {
        let grew =
            i64::from(r.acceptor.fds_end.unwrap()) - i64::from(r.acceptor.fds_baseline.unwrap());
        assert_eq!(grew, g, "{name}: the listening process's descriptors");
    }
    assert_eq!(r.client_outcome.completed, row.completed.unwrap_or(100), "{name}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&r.diagnosis.findings[0].explanation), "{name}: {stdout}");
    util::pictures_agree(name, &r);
}

fn command_with_port(command: &[String], port: u16) -> Vec<String> {
    command.iter().map(|w| w.replace("{port}", &port.to_string())).collect()
}

#[test]
fn issue_12_every_example_has_a_row_and_every_row_an_example() {
    let rows = table();
    let mut files: Vec<PathBuf> = Vec::new();
    for lang in ["python", "c"] {
        for e in std::fs::read_dir(root().join("examples").join(lang)).unwrap().flatten() {
            files.push(e.path());
        }
    }
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            rows.values().any(|r| r.command.iter().any(|w| w.contains(&name))),
            "{name} has no row in tests/check-expected.toml"
        );
    }
}

macro_rules! examples {
    ($($test:ident => $row:literal,)*) => {
        $(
            #[test]
            fn $test() {
                check($row);
            }
        )*
        #[test]
        fn issue_12_every_row_has_a_test() {
            let tested = [$($row),*];
            for name in table().keys() {
                assert!(tested.contains(&name.as_str()), "{name} has no test");
            }
        }
    };
}

examples! {
    issue_12_python_fork_leak => "python-fork-leak",
    issue_12_python_shutdown_half_fix => "python-shutdown-half-fix",
    issue_12_python_parent_closes => "python-parent-closes",
    issue_12_python_exec_helper => "python-exec-helper",
    issue_12_python_fork_workers => "python-fork-workers",
    issue_12_python_threaded_never_closes => "python-threaded-never-closes",
    issue_12_python_slow_close => "python-slow-close",
    issue_12_python_daemonizes => "python-daemonizes",
    issue_12_python_exits_at_once => "python-exits-at-once",
    issue_12_python_never_listens => "python-never-listens",
    issue_12_c_fork_leak => "c-fork-leak",
    issue_12_c_parent_closes => "c-parent-closes",
    issue_12_c_exec_helper => "c-exec-helper",
    issue_12_c_exec_cloexec => "c-exec-cloexec",
    issue_12_command_not_found => "not-found",
    issue_12_python_chatty => "python-chatty",
    issue_12_python_crashes_mid_run => "python-crashes-mid-run",
    issue_12_python_ignores_sigterm => "python-ignores-sigterm",
    issue_12_on_the_host_a_daemon_still_goes => "python-daemonizes-on-the-host",
    issue_12_python_closes_first_keeps_copy => "python-closes-first-keeps-copy",
}

#[test]
fn issue_12_a_scenario_file_names_a_command_and_ci_judges_it() {
    if !can_isolate("check-file") {
        return;
    }
    let dir = scratch("check-file");
    let _one_at_a_time = serial();
    let run = |file: &Path| {
        Command::new(env!("CARGO_BIN_EXE_cwlab"))
            .args(["run", "--isolation", "netns", "--report"])
            .arg(dir.join("r.json"))
            .arg(file)
            .current_dir(root())
            .output()
            .unwrap()
    };
    let good = root().join("examples/ci/closes-well.toml");
    let out = run(&good);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let r = read_report(&dir.join("r.json"));
    assert_eq!(r.scenario.behaviour, "command");
    assert_eq!(r.packets.sent(cwlab_model::report::Side::Server, "FIN"), 50);

    let text = std::fs::read_to_string(&good).unwrap().replace("parent_closes.py", "fork_leak.py");
    let bad = dir.join("leaks.toml");
    std::fs::write(&bad, text).unwrap();
    let out = run(&bad);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("✗ server CLOSE-WAIT == 0     50 at the end"), "{stdout}");
    assert!(stdout.contains("fix (CPython): close the parent's copy right after os.fork()"));
}

#[test]
fn issue_12_a_server_is_a_behaviour_or_a_command_not_both_nor_neither() {
    let dir = scratch("check-refusals");
    let good = std::fs::read_to_string(root().join("examples/ci/closes-well.toml")).unwrap();
    let cases = [
        (
            good.replace("[server]\n", "[server]\nbehaviour = \"close-only\"\n"),
            "a server has a `behaviour` (the lab's) or a `command` (yours), not both",
        ),
        (
            good.replace(
                "command = [\"python3\", \"examples/python/parent_closes.py\", \"{port}\"]\n",
                "",
            ),
            "expected `behaviour = \"…\"` (one of the lab's) or `command = [\"program\", …]` in [server]",
        ),
        (good.replace("command = [", "command = [\"\", "), "expected a command: a program and its arguments"),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let file = dir.join(format!("bad{i}.toml"));
        std::fs::write(&file, text).unwrap();
        let out = util::cwlab(&["run", file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{}", show(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let line = text.lines().position(|l| l.starts_with("[server]")).unwrap() + 1;
        assert!(stderr.starts_with(&format!("error: {}:", file.display())), "{stderr}");
        assert!(stderr.contains(want), "{stderr}");
        assert!(
            stderr.contains(&format!(":{line}:")) || stderr.contains(&format!(":{}:", line + 1)),
            "placed at the [server] table: {stderr}"
        );
    }
}

#[test]
fn issue_12_a_command_runs_with_its_env_its_folder_and_port() {
    if !can_isolate("check-env") {
        return;
    }
    let dir = scratch("check-env");
    let text = std::fs::read_to_string(root().join("examples/ci/closes-well.toml"))
        .unwrap()
        .replace(
            "command = [\"python3\", \"examples/python/parent_closes.py\", \"{port}\"]",
            "command = [\"sh\", \"-c\", \"test \\\"$MARK\\\" = yes && test \\\"$PORT\\\" = \\\"$0\\\" && exec python3 parent_closes.py \\\"$PORT\\\"\", \"{port}\"]\nenv = { MARK = \"yes\" }\ncwd = \"examples/python\"",
        );
    let file = dir.join("env.toml");
    std::fs::write(&file, &text).unwrap();
    let _one_at_a_time = serial();
    let out = Command::new(env!("CARGO_BIN_EXE_cwlab"))
        .args(["run", "--isolation", "netns", "--report"])
        .arg(dir.join("r.json"))
        .arg(&file)
        .current_dir(root())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}\n{text}", show(&out));
    let r = read_report(&dir.join("r.json"));
    assert_eq!(r.client_outcome.completed, 50);
}
