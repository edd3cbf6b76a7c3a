//! End to end: the real `cwlab` binary on the real scenario files, each run in a private network
//! namespace of its own, checked against the truth table in tests/expected.toml.

mod util;

use std::collections::BTreeSet;
use std::os::fd::AsRawFd;

use cwlab_model::report::Verdict;
use util::{can_isolate, check_truth_of, cwlab, expected, root, run, scratch, serial};

fn check_truth(name: &str) {
    let test = format!("truth-{name}");
    if !can_isolate(&test) {
        return;
    }
    let _one_at_a_time = serial();
    let (out, r) = run(&root().join(format!("scenarios/{name}.toml")), &test);
    check_truth_of(name, &out, &r);
}

#[test]
fn leak_matches_the_truth_table() {
    check_truth("leak");
}

#[test]
fn fixed_matches_the_truth_table() {
    check_truth("fixed");
}

#[test]
fn parent_closes_matches_the_truth_table() {
    check_truth("parent-closes");
}

#[test]
fn exec_inherit_matches_the_truth_table() {
    check_truth("exec-inherit");
}

#[test]
fn exec_cloexec_matches_the_truth_table() {
    check_truth("exec-cloexec");
}

#[test]
fn backlog_matches_the_truth_table() {
    check_truth("backlog");
}

#[test]
fn half_close_matches_the_truth_table() {
    check_truth("half-close");
}

#[test]
fn server_closes_first_matches_the_truth_table() {
    check_truth("server-closes-first");
}

#[test]
fn server_closes_first_shutdown_matches_the_truth_table() {
    check_truth("server-closes-first-shutdown");
}

#[test]
fn fork_worker_matches_the_truth_table() {
    check_truth("fork-worker");
}

#[test]
fn time_wait_matches_the_truth_table() {
    check_truth("time-wait");
}

#[test]
fn fin_wait_1_matches_the_truth_table() {
    check_truth("fin-wait-1");
}

#[test]
fn last_ack_matches_the_truth_table() {
    check_truth("last-ack");
}

#[test]
fn closing_matches_the_truth_table() {
    check_truth("closing");
}

#[test]
fn fd_exhaustion_matches_the_truth_table() {
    check_truth("fd-exhaustion");
}

#[test]
fn fd_exhaustion_fixed_matches_the_truth_table() {
    check_truth("fd-exhaustion-fixed");
}

#[test]
fn scale_matches_the_truth_table() {
    check_truth("scale");
}

#[test]
fn every_scenario_file_has_a_row_in_the_truth_table() {
    let names: BTreeSet<String> = std::fs::read_dir(root().join("scenarios"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.path().file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    let rows: BTreeSet<String> = expected().into_keys().collect();
    assert_eq!(names, rows);
}

#[test]
fn the_leak_judged_by_the_fixed_expectations_fails_and_says_why() {
    if !can_isolate("leak-as-fixed") {
        return;
    }
    let dir = scratch("leak-as-fixed-src");
    let text = std::fs::read_to_string(root().join("scenarios/fixed.toml")).unwrap();
    let text = text.replace("name = \"fixed\"", "name = \"leak-as-fixed\"");
    let text = text.replace("\"shutdown-close\"", "\"close-only\"");
    let file = dir.join("leak-as-fixed.toml");
    std::fs::write(&file, text).unwrap();
    let _one_at_a_time = serial();
    let (out, r) = run(&file, "leak-as-fixed");
    assert_exit!(out, 1);
    assert_eq!(r.verdict, Verdict::Fail);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("✗ server CLOSE-WAIT == 0 "), "{stdout}");
    assert!(stdout.contains("FAIL  1 of 5 expectations held"), "{stdout}");
    let failed: Vec<_> = r.expectations.iter().filter(|e| !e.passed).collect();
    let texts: Vec<&str> = failed.iter().map(|e| e.text.as_str()).collect();
    assert_eq!(
        texts,
        [
            "server CLOSE-WAIT == 0 within 1s",
            "server CLOSE-WAIT == 0",
            "client FIN-WAIT-2 == 0",
            "client TIME-WAIT == clients"
        ]
    );
    assert_eq!(failed[1].observed, Some(100));
    assert_eq!(failed[1].detail, "100 at the end");
    assert_eq!(failed[3].observed, Some(0));
}

#[test]
fn a_bad_scenario_exits_2_naming_file_line_and_column_and_leaves_nothing() {
    let dir = scratch("bad-scenario");
    let text = std::fs::read_to_string(root().join("scenarios/leak.toml")).unwrap();
    let text = text.replace("count = 100", "count = 100\ncolour = \"red\"");
    let file = dir.join("bad.toml");
    std::fs::write(&file, &text).unwrap();
    let line = text.lines().position(|l| l.starts_with("colour")).unwrap() + 1;
    let report = dir.join("out/report.json");
    let out = cwlab(&["run", file.to_str().unwrap(), "--report", report.to_str().unwrap()]);
    assert_exit!(out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let want = format!("error: {}:{line}:1: unknown field `colour`", file.display());
    assert!(stderr.starts_with(&want), "{stderr}");
    assert!(!dir.join("out").exists(), "nothing is written for bad input");
}

#[test]
fn a_missing_scenario_file_is_named() {
    let out = cwlab(&["run", "scenarios/no-such.toml"]);
    assert_exit!(out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(
            "error: scenarios/no-such.toml: cannot read the scenario file: No such file"
        ),
        "{stderr}"
    );
}

#[test]
fn sockets_counts_and_names_the_holder_of_a_listener_of_our_own() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port().to_string();
    let out = cwlab(&["sockets", "--port", &port, "--state", "listen", "--count"]);
    assert_exit!(out, 0);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n");
    let out = cwlab(&["sockets", "--port", &port, "--side", "remote", "--count"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "0\n");
    let out = cwlab(&["sockets", "--port", &port, "--holders", "--json"]);
    assert_exit!(out, 0);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["state"], "LISTEN");
    assert_eq!(rows[0]["local"], format!("127.0.0.1:{port}"));
    let holders = rows[0]["holders"].as_array().unwrap();
    assert_eq!(holders.len(), 1);
    assert_eq!(holders[0]["pid"], std::process::id());
    assert_eq!(holders[0]["fd"], l.as_raw_fd());
    let out = cwlab(&["sockets", "--port", &port, "--holders"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let me = format!("pid={},fd={}", std::process::id(), l.as_raw_fd());
    assert!(
        text.lines().nth(1).is_some_and(|l| l.starts_with("LISTEN") && l.contains(&me)),
        "{text}"
    );
}

#[test]
fn sockets_refuses_an_unknown_state_or_a_bad_port() {
    let out = cwlab(&["sockets", "--state", "close-wiat"]);
    assert_exit!(out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown TCP state `close-wiat`"), "{stderr}");
    let out = cwlab(&["sockets", "--port", "70000"]);
    assert_exit!(out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("70000"), "{stderr}");
}

#[test]
fn list_shows_each_scenario_with_the_first_line_of_its_story() {
    let out = cwlab(&["list"]);
    assert_exit!(out, 0);
    let text = String::from_utf8_lossy(&out.stdout);
    let names: Vec<String> =
        text.lines().map(|l| l.split_whitespace().next().unwrap().to_string()).collect();
    let rows: Vec<String> = expected().into_keys().collect();
    let mut sorted = rows.clone();
    sorted.sort();
    assert_eq!(names, sorted, "every scenario, by file name");
    let leak = text.lines().find(|l| l.starts_with("leak ")).unwrap();
    assert!(
        leak.ends_with(" The leak: the acceptor keeps its copy of every accepted socket, and the handler child only close()s."),
        "{leak}"
    );
}
