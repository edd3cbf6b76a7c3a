//! Bad input gets a clear error that names the file, the line and what was wrong, exits 2, and
//! leaves nothing behind: no report, no folder, no process.

mod util;

use std::path::{Path, PathBuf};

use util::{can_isolate, cwlab, root, scratch, show};

/// The leak scenario with one edit.
fn leak_with(from: &str, to: &str) -> String {
    let text = std::fs::read_to_string(root().join("scenarios/leak.toml")).unwrap();
    assert!(text.contains(from), "the leak scenario has `{from}`");
    text.replacen(from, to, 1)
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

/// Writes `text` as a scenario file in a scratch folder and runs `cwlab run FILE --report
/// DIR/out/r.json EXTRA…`; returns the output, the file and the folder.
fn run_text(test: &str, text: &str, extra: &[&str]) -> (std::process::Output, PathBuf, PathBuf) {
    let dir = scratch(test);
    let file = dir.join("s.toml");
    std::fs::write(&file, text).unwrap();
    let report = dir.join("out/r.json");
    let mut args = vec!["run", file.to_str().unwrap(), "--report", report.to_str().unwrap()];
    args.extend_from_slice(extra);
    (cwlab(&args), file, dir)
}

/// Runs `cwlab run FILE` on `text`; asserts exit 2, that stderr starts with `error: FILE:want`,
/// and that no report (nor its folder) was written.
fn refused(test: &str, text: &str, want: &str) {
    let (out, file, dir) = run_text(test, text, &[]);
    assert_eq!(out.status.code(), Some(2), "{test}: {}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let head = format!("error: {}:{want}", file.display());
    assert!(stderr.starts_with(&head), "{test}: expected `{head}`, got:\n{stderr}");
    assert!(!dir.join("out").exists(), "{test}: nothing is written for bad input");
}

#[test]
fn not_toml() {
    let text = "name = \"x\"\nstory = \n";
    refused("not-toml", text, "2:9: invalid string expected `\"`, `'`");
}

#[test]
fn unknown_key() {
    let text = leak_with("[run]", "[run]\ncolour = \"red\"");
    let l = line_of(&text, "colour");
    refused("unknown-key", &text, &format!("{l}:1: unknown field `colour`, expected one of"));
}

#[test]
fn wrong_type() {
    let text = leak_with("count = 100", "count = \"many\"");
    let l = line_of(&text, "count =");
    refused("wrong-type", &text, &format!("{l}:9: invalid type: string \"many\", expected u32"));
}

#[test]
fn unknown_behaviour() {
    let text = leak_with("\"close-only\"", "\"close-sometimes\"");
    let l = line_of(&text, "behaviour");
    refused(
        "unknown-behaviour",
        &text,
        &format!("{l}:13: unknown server behaviour `close-sometimes` (expected one of close-only, shutdown-close, parent-closes, exec-inherit, exec-cloexec, fork-worker, no-accept, reply-close, reply-shutdown, server-first, no-read, fill-close, simultaneous, slow-close, keep-alive, http-keep-alive)"),
    );
}

#[test]
fn unknown_state_side_and_quantity_in_an_expectation() {
    let text = leak_with("client FIN-WAIT-2 == clients", "client FIN-WAIT-3 == clients");
    let l = line_of(&text, "FIN-WAIT-3");
    refused("unknown-state", &text, &format!("{l}:13: unknown TCP state `FIN-WAIT-3`"));
    let text = leak_with("client FIN-WAIT-2 == clients", "middle FIN-WAIT-2 == clients");
    refused(
        "unknown-side",
        &text,
        &format!("{l}:6: expected a quantity: `server STATE`, `client STATE` or `acceptor fds`, found `middle`"),
    );
    let text = leak_with("acceptor fds grew by clients", "acceptor threads grew by clients");
    let l = line_of(&text, "acceptor threads");
    refused("unknown-quantity", &text, &format!("{l}:15: expected `fds`, found `threads`"));
}

#[test]
fn zero_clients() {
    let text = leak_with("count = 100", "count = 0");
    let l = line_of(&text, "count =");
    refused(
        "zero-clients",
        &text,
        &format!("{l}:9: expected a client count of at least 1, found 0"),
    );
}

#[test]
fn more_clients_than_descriptors() {
    let text = leak_with("count = 100", "count = 100000000");
    let l = line_of(&text, "count =");
    let (out, file, _) = run_text("too-many-clients", &text, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let head = format!(
        "error: {}:{l}:9: 100000000 clients need about 100000064 descriptors, but RLIMIT_NOFILE allows ",
        file.display()
    );
    assert!(stderr.starts_with(&head), "{stderr}");
    assert!(stderr.contains("(soft ") && stderr.contains(", hard "), "{stderr}");
}

#[test]
fn sample_interval_zero_or_longer_than_the_hold() {
    let text = leak_with("sample_interval = \"50ms\"", "sample_interval = \"0ms\"");
    let l = line_of(&text, "sample_interval");
    refused("interval-zero", &text, &format!("{l}:19: expected a sample_interval above 0"));
    let text = leak_with("sample_interval = \"50ms\"", "sample_interval = \"5s\"");
    refused(
        "interval-long",
        &text,
        &format!("{l}:19: sample_interval 5s is longer than the hold (1.5s): the hold would see no sample"),
    );
}

#[test]
fn topology_unknown_or_without_namespaces() {
    let text = leak_with("hold = \"1500ms\"", "hold = \"1500ms\"\ntopology = \"three-hosts\"");
    let l = line_of(&text, "topology");
    refused(
        "topology-unknown",
        &text,
        &format!("{l}:12: unknown topology `three-hosts` (expected loopback or two-hosts)"),
    );
    // Two hosts are two network namespaces: on the host's loopback, refused before anything
    // starts, and nothing written.
    let text = std::fs::read_to_string(root().join("scenarios/leak-two-hosts.toml")).unwrap();
    let (out, file, dir) = run_text("two-hosts-on-host", &text, &["--isolation", "host"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let want = format!(
        "error: {}: topology two-hosts needs network namespaces, and this run has none",
        file.display()
    );
    assert!(stderr.starts_with(&want), "{stderr}");
    assert!(!dir.join("out").exists());
}

#[test]
fn unwritable_report_path() {
    let file = root().join("scenarios/leak.toml");
    let out = cwlab(&["run", file.to_str().unwrap(), "--report", "/proc/cwlab/r.json"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("error: /proc/cwlab/r.json: cannot write the report: "), "{stderr}");
}

#[test]
fn a_port_already_in_use() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let text = leak_with(
        "behaviour = \"close-only\"",
        &format!("behaviour = \"close-only\"\nport = {port}"),
    );
    let (out, _, dir) = run_text("port-in-use", &text, &["--isolation", "host"]);
    let report = dir.join("out/r.json");
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let want = format!("error: the server could not start: failed to bind 127.0.0.1:{port}");
    assert!(stderr.starts_with(&want), "{stderr}");
    assert!(stderr.contains("Address already in use"), "{stderr}");
    assert!(!report.exists());
    assert!(!dir.join("out").exists(), "the report's folder, made for it, goes again");
    drop(held);
}

/// `cwlab run` as an unprivileged user: no network namespace. The user runs a copy of the binary
/// in `dir` (which everyone may enter): the checkout may lie in a folder only root may enter (a
/// clone inside `mktemp -d`), where nobody could exec `target/debug/cwlab` (issue 11).
fn as_nobody(args: &[&str], dir: &Path) -> std::process::Output {
    let exe = dir.join("cwlab");
    if !exe.exists() {
        std::fs::copy(env!("CARGO_BIN_EXE_cwlab"), &exe).unwrap();
        std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    }
    std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&exe)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("setpriv (util-linux)")
}

#[test]
fn no_permission_for_a_namespace_falls_back_or_exits_2() {
    if !can_isolate("no-permission") {
        return;
    }
    let dir = scratch("no-permission");
    let text = std::fs::read_to_string(root().join("scenarios/leak.toml")).unwrap();
    std::fs::write(dir.join("leak.toml"), text).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let out =
        as_nobody(&["run", "leak.toml", "--report", "strict.json", "--isolation", "netns"], &dir);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("error: cannot make a private network namespace"), "{stderr}");
    assert!(!dir.join("strict.json").exists());

    let out = as_nobody(&["run", "leak.toml", "--report", "auto.json"], &dir);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("· host loopback"), "{stdout}");
    assert!(stdout.contains("note: no private network namespace"), "{stdout}");
    let report: cwlab_model::Report =
        serde_json::from_str(&std::fs::read_to_string(dir.join("auto.json")).unwrap()).unwrap();
    assert_eq!(report.isolation, cwlab_model::report::Isolation::Host);
    assert_eq!(
        report
            .final_counts
            .get(cwlab_model::report::Side::Server, cwlab_model::TcpState::CloseWait),
        100
    );
}
