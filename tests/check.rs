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
    /// The runtime named from the listening process's executable.
    runtime: Option<String>,
    /// Where the clients dialed (the start of `report.address`).
    address: Option<String>,
    /// Words of the first finding's fix.
    fix: Option<String>,
    /// Words of a note.
    note: Option<String>,
    /// Programs the row needs beyond its command's first word.
    #[serde(default)]
    needs: Vec<String>,
}

/// Two checks at a time, one a core: a check mostly waits (its waves settle, its hold watches),
/// and its verdict does not hang on a timing window (a client waits as long as the server
/// answers anybody). Half the table's time, on CI's two cores.
struct TwoAtATime;

static RUNNING: std::sync::Mutex<u32> = std::sync::Mutex::new(0);
static FREED: std::sync::Condvar = std::sync::Condvar::new();

fn two_at_a_time() -> TwoAtATime {
    let mut n = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
    while *n >= 2 {
        n = FREED.wait(n).unwrap_or_else(|e| e.into_inner());
    }
    *n += 1;
    TwoAtATime
}

impl Drop for TwoAtATime {
    fn drop(&mut self) {
        *RUNNING.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        FREED.notify_one();
    }
}

/// Whether `program` can be run: on PATH, or in /usr/sbin (Debian's servers).
fn available(program: &str) -> bool {
    if program.contains('/') || program.starts_with('{') {
        return true;
    }
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .any(|d| d.join(program).is_file())
}

/// Which truth table: `cwlab check`'s servers, or `cwlab check --client`'s clients.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Of {
    Servers,
    Clients,
}

impl Of {
    fn file(self) -> &'static str {
        match self {
            Of::Servers => "tests/check-expected.toml",
            Of::Clients => "tests/check-client-expected.toml",
        }
    }
}

fn table_of(of: Of) -> BTreeMap<String, Row> {
    let text = std::fs::read_to_string(root().join(of.file())).unwrap();
    toml::from_str(&text).unwrap()
}

fn table() -> BTreeMap<String, Row> {
    table_of(Of::Servers)
}

/// `{c:FILE}` or `{c:FILE:FLAG}`: the C example compiled into `dir`; `None` without a compiler.
fn compiled(word: &str, dir: &Path) -> Option<String> {
    let Some(spec) = word.strip_prefix("{c:").and_then(|w| w.strip_suffix('}')) else {
        return Some(word.to_string());
    };
    let (file, flag) = spec.split_once(':').unwrap_or((spec, ""));
    let out = dir.join(format!("{}{}", file.trim_end_matches(".c"), flag.replace('-', "_")));
    let folder = if file.starts_with("client") { "examples/clients" } else { "examples/c" };
    let mut cc = Command::new("cc");
    cc.args(["-O2", "-o"]).arg(&out).arg(root().join(folder).join(file));
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
    check_in(Of::Servers, name)
}

fn check_in(of: Of, name: &str) {
    let test = match of {
        Of::Servers => format!("check-{name}"),
        Of::Clients => format!("check-client-{name}"),
    };
    if !can_isolate(&test) {
        return;
    }
    let row = &table_of(of)[name];
    let missing: Vec<&String> =
        row.command.iter().take(1).chain(&row.needs).filter(|p| !available(p)).collect();
    if !missing.is_empty() && row.error.is_none() {
        assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "{test}: CI installs {missing:?}");
        return eprintln!("skipping {test}: {missing:?} not installed");
    }
    let dir = scratch(&test);
    let mut command = Vec::new();
    for w in &row.command {
        match compiled(w, &dir) {
            Some(w) => command.push(w),
            None => return eprintln!("skipping {test}: no C compiler"),
        }
    }
    let report = dir.join("report.json");
    let _two_at_a_time = two_at_a_time();
    let child = Command::new(env!("CARGO_BIN_EXE_cwlab"))
        .arg("check")
        .args(if row.args.iter().any(|a| a == "--isolation") {
            &[][..]
        } else {
            &["--isolation", "netns"][..]
        })
        .arg("--report")
        .arg(&report)
        .args(if of == Of::Clients { &["--client"][..] } else { &[][..] })
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
    match of {
        Of::Servers => assert_eq!(
            r.scenario.command.as_deref(),
            Some(&command_with_port(&command, r.port)[..])
        ),
        Of::Clients => {
            let c = r.client.as_ref().expect("the client's run");
            let port = r.port.to_string();
            let pointed = row.command.iter().any(|w| w.contains('{'));
            assert_eq!(pointed, c.command.iter().any(|w| w.contains(&port)), "{name}: {c:?}");
        }
    }
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
    let all = match of {
        Of::Servers => 100,
        Of::Clients => 15,
    };
    assert_eq!(r.client_outcome.completed, row.completed.unwrap_or(all), "{name}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&r.diagnosis.findings[0].explanation), "{name}: {stdout}");
    if let Some(want) = &row.runtime {
        let got = match of {
            Of::Servers => r.acceptor.runtime,
            Of::Clients => r.client.as_ref().and_then(|c| c.runtime),
        };
        let got = got.map(|rt| rt.to_string());
        assert_eq!(got.as_deref(), Some(want.as_str()), "{name}: runtime");
        let first = &r.diagnosis.findings[0];
        if let (Some(fix), Some(idiom)) = (first.fix_line(), first.idiom) {
            assert!(fix.starts_with(&format!("fix ({idiom}): ")), "{name}: {fix}");
            assert!(stdout.contains(&fix), "{name}: the summary shows the fix in its idiom");
        }
    }
    if let Some(want) = &row.address {
        let got = r.address.as_deref().unwrap_or_default();
        assert!(got.starts_with(&format!("{want}:")), "{name}: dialed {got}");
    }
    if let Some(want) = &row.fix {
        let fix = r.diagnosis.findings[0].fix.as_deref().unwrap_or_default();
        assert!(fix.contains(want.as_str()), "{name}: {fix}");
    }
    if let Some(want) = &row.note {
        let notes = &r.diagnosis.notes;
        assert!(notes.iter().any(|n| n.contains(want.as_str())), "{name}: notes {notes:?}");
    }
    if row.no_verdict.is_none() {
        util::pictures_agree(name, &r);
    }
}

fn command_with_port(command: &[String], port: u16) -> Vec<String> {
    command.iter().map(|w| w.replace("{port}", &port.to_string())).collect()
}

#[test]
fn issue_12_every_example_has_a_row_and_every_row_an_example() {
    let rows = table();
    let mut files: Vec<PathBuf> = Vec::new();
    let clients = table_of(Of::Clients);
    for e in std::fs::read_dir(root().join("examples/clients")).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(
            clients.values().any(|r| r.command.iter().any(|w| w.contains(&name))),
            "{name} has no row in tests/check-client-expected.toml"
        );
    }
    for lang in ["python", "c", "java", "node", "perl", "tcl", "debian"] {
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
    issue_18_java_close_with_resources => "java-close-with-resources",
    issue_18_java_close_with_resources_compiled => "java-close-with-resources-compiled",
    issue_18_java_thread_leak => "java-thread-leak",
    issue_18_node_half_open_leak => "node-half-open-leak",
    issue_18_node_closes => "node-closes",
    issue_18_node_ipv6_only_leak => "node-ipv6-only-leak",
    issue_18_perl_prefork => "perl-prefork",
    issue_18_perl_prefork_leak => "perl-prefork-leak",
    issue_18_perl_fork_leak => "perl-fork-leak",
    issue_18_tcl_eventloop_leak => "tcl-eventloop-leak",
    issue_18_tcl_closes => "tcl-closes",
    issue_18_c_fork_leak_v6 => "c-fork-leak-v6",
    issue_18_c_specific_address => "c-specific-address",
    issue_18_c_fork_exec_handler => "c-fork-exec-handler",
    issue_18_python_lazy_log => "python-lazy-log",
    issue_18_python_threaded_lazy_pool => "python-threaded-lazy-pool",
    issue_18_python_ipv6_fork_leak => "python-ipv6-fork-leak",
    issue_18_python_fixed_port => "python-fixed-port",
    issue_18_debian_nginx => "debian-nginx",
    issue_18_debian_lighttpd => "debian-lighttpd",
    issue_18_debian_busybox_httpd => "debian-busybox-httpd",
    issue_18_debian_inetd_micro_httpd => "debian-inetd-micro-httpd",
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

/// Runs `cwlab check ARGS -- COMMAND` in a namespace of its own and returns its output and report.
fn check_with(
    test: &str,
    args: &[&str],
    command: &[&str],
) -> (std::process::Output, cwlab_model::Report) {
    let dir = scratch(test);
    let report = dir.join("report.json");
    let mut words = Vec::new();
    for w in command {
        match compiled(w, &dir) {
            Some(w) => words.push(w),
            None => panic!("{test}: a C compiler is needed"),
        }
    }
    let _one_at_a_time = serial();
    let out = Command::new(env!("CARGO_BIN_EXE_cwlab"))
        .args(["check", "--isolation", "netns", "--report"])
        .arg(&report)
        .args(args)
        .arg("--")
        .args(&words)
        .current_dir(root())
        .output()
        .unwrap();
    let r = read_report(&report);
    (out, r)
}

/// The mutation the waves are there for: the same run of a server that opens a descriptor once,
/// read without its warm-up and waves (a difference of two numbers, as the check used to), is a
/// leak. With them it is clean.
#[test]
fn issue_18_without_the_warmup_and_waves_a_lazy_descriptor_would_be_a_leak() {
    if !can_isolate("check-mutant-waves") {
        return;
    }
    let (out, r) = check_with(
        "check-mutant-waves",
        &[],
        &["python3", "examples/python/lazy_log.py", "{port}"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let kinds = |d: &cwlab_model::Diagnosis| -> Vec<String> {
        d.findings.iter().map(|f| f.kind.to_string()).collect()
    };
    assert_eq!(kinds(&r.diagnosis), ["clean"]);
    let mut mutant = r.clone();
    mutant.waves = None;
    assert_eq!(kinds(&cwlab_model::Diagnosis::of(&mutant)), ["hidden-leak"]);
}

/// The mutation the dialing is there for: clients that dial 127.0.0.1 whatever the server
/// listens on never reach a server on ::1, and no verdict may stand on that.
#[test]
fn issue_18_dialing_127_0_0_1_only_fails_the_ipv6_rows() {
    if !can_isolate("check-mutant-dial") {
        return;
    }
    for (i, command) in [
        &["node", "examples/node/ipv6_only_leak.js", "{port}"][..],
        &["python3", "examples/python/ipv6_fork_leak.py", "{port}"][..],
    ]
    .into_iter()
    .enumerate()
    {
        let test = format!("check-mutant-dial-{i}");
        let (out, r) = check_with(&test, &["--address", "127.0.0.1"], command);
        assert_eq!(out.status.code(), Some(2), "{}", show(&out));
        assert_eq!(r.client_outcome.happened(), 0, "{command:?}");
        let error = r.error.unwrap_or_default();
        assert!(error.contains("only 0 of 100 connections happened"), "{error}");
        assert!(error.contains("; the server listens on [::1]:"), "{error}");
        assert!(error.contains("Connection refused"), "{error}");
    }
}

/// A wrong port and a missing command are said at once, not waited out.
#[test]
fn issue_18_a_wrong_port_and_a_missing_command_exit_2_within_2_seconds() {
    if !can_isolate("check-at-once") {
        return;
    }
    let _one_at_a_time = serial();
    let cases = [
        (
            &["python3", "examples/python/fixed_port.py", "{port}"][..],
            "the server listens on 8080, not on ",
        ),
        (&["jvaa", "Server.java", "{port}"][..], "error: jvaa: command not found"),
        (
            &["examples/python/fork_leak.py", "{port}"][..],
            "examples/python/fork_leak.py: permission denied (not executable)",
        ),
    ];
    for (command, want) in cases {
        let started = std::time::Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_cwlab"))
            .args(["check", "--isolation", "netns", "--ready-timeout", "30s", "--"])
            .args(command)
            .current_dir(root())
            .output()
            .unwrap();
        let took = started.elapsed();
        assert_eq!(out.status.code(), Some(2), "{}", show(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(want), "{stderr}");
        // The server's own start-up (python3) plus the lab's: well under the ready timeout.
        assert!(took < std::time::Duration::from_secs(5), "{command:?} took {took:?}");
    }
}

macro_rules! clients {
    ($($test:ident => $row:literal,)*) => {
        $(
            #[test]
            fn $test() {
                check_in(Of::Clients, $row);
            }
        )*
        #[test]
        fn issue_19_every_client_row_has_a_test() {
            let tested = [$($row),*];
            for name in table_of(Of::Clients).keys() {
                assert!(tested.contains(&name.as_str()), "{name} has no test");
            }
        }
    };
}

clients! {
    issue_19_client_python_leak => "python-leak",
    issue_19_client_python_closes => "python-closes",
    issue_19_client_python_urllib3 => "python-urllib3",
    issue_19_client_python_requests => "python-requests",
    issue_19_client_python_raw_leak => "python-raw-leak",
    issue_19_client_node_agent => "node-agent",
    issue_19_client_node_half_open_leak => "node-half-open-leak",
    issue_19_client_java_httpclient => "java-httpclient",
    issue_19_client_java_urlconnection => "java-urlconnection",
    issue_19_client_c_leak => "c-leak",
    issue_19_client_c_closes => "c-closes",
    issue_19_client_not_found => "not-found",
    issue_19_client_no_requests => "no-requests",
}
