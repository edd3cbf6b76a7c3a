//! End to end: the real `cwlab` binary on the real scenario files, each run in a private network
//! namespace of its own, checked against the truth table in tests/expected.toml.

mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::AsRawFd;
use std::path::Path;

use cwlab_model::report::{Phase, Report, Role, Side, Verdict};
use cwlab_model::TcpState;
use serde::Deserialize;
use util::{can_isolate, cwlab, root, scratch};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Expected {
    server: BTreeMap<TcpState, u32>,
    client: BTreeMap<TcpState, u32>,
    acceptor_fds_grew: i64,
    close_wait_held_by: Option<Role>,
}

fn expected() -> BTreeMap<String, Expected> {
    let text = std::fs::read_to_string(root().join("tests/expected.toml")).unwrap();
    toml::from_str(&text).unwrap()
}

fn read_report(path: &Path) -> Report {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs a scenario file in a private namespace; returns the output and the report.
fn run(file: &Path, test: &str) -> (std::process::Output, Report) {
    let dir = scratch(test);
    let report = dir.join("report.json");
    let out = cwlab(&[
        "run",
        file.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
        "--isolation",
        "netns",
    ]);
    let r = read_report(&report);
    (out, r)
}

fn check_truth(name: &str) {
    let test = format!("truth-{name}");
    if !can_isolate(&test) {
        return;
    }
    let want = &expected()[name];
    let (out, r) = run(&root().join(format!("scenarios/{name}.toml")), &test);
    assert_exit!(out, 0);
    assert_eq!(r.verdict, Verdict::Pass);
    assert_eq!(r.scenario.name, name);
    assert_eq!(r.isolation, cwlab_model::report::Isolation::Netns);
    assert_eq!(r.client_outcome.completed, r.clients);
    assert_eq!(r.client_outcome.failed, 0);
    assert_eq!(r.final_counts.server, want.server, "{name}: server counts at the end");
    assert_eq!(r.final_counts.client, want.client, "{name}: client counts at the end");
    let grew = i64::from(r.acceptor.fds_end.unwrap()) - i64::from(r.acceptor.fds_baseline.unwrap());
    assert_eq!(grew, want.acceptor_fds_grew, "{name}: acceptor fds");
    let phases: Vec<Phase> = r.phases.iter().map(|m| m.phase).collect();
    assert_eq!(phases, [Phase::Listen, Phase::Connect, Phase::Close, Phase::Hold, Phase::End]);
    assert!(r.samples.len() >= 10, "{name}: {} samples", r.samples.len());

    let close_wait = r.final_counts.get(Side::Server, TcpState::CloseWait) as usize;
    let rows: Vec<_> = r.holders.iter().filter(|h| h.state == TcpState::CloseWait).collect();
    match want.close_wait_held_by {
        Some(role) => {
            assert!(rows.iter().all(|h| h.role == role), "{name}: {rows:?}");
            let fds: BTreeSet<i32> = rows.iter().map(|h| h.fd.unwrap()).collect();
            assert_eq!(fds.len(), close_wait, "{name}: one fd per stuck socket");
            if role == Role::Acceptor {
                assert!(rows.iter().all(|h| h.pid == Some(r.acceptor.pid)));
            }
        }
        None => assert!(rows.is_empty(), "{name}: nobody should hold a CLOSE-WAIT socket"),
    }
    let fin_wait_2 = r.holders.iter().filter(|h| h.state == TcpState::FinWait2);
    assert!(fin_wait_2.clone().all(|h| h.role == Role::Nobody && h.side == Side::Client));
    assert_eq!(fin_wait_2.count() as u32, r.final_counts.get(Side::Client, TcpState::FinWait2));
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
    let names: Vec<&str> = text.lines().map(|l| l.split_whitespace().next().unwrap()).collect();
    assert_eq!(names, ["fixed", "leak", "parent-closes"]);
    assert!(text.contains("leak           The leak: the acceptor keeps its copy"), "{text}");
}
