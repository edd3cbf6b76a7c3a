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

/// The client side of CLOSE-WAIT (issue 19): a pool that never notices the server's FIN holds
/// a CLOSE-WAIT per request; a bounded one at most its size, cleared at each burst; a checked one
/// none.
#[test]
fn issue_19_pools_match_the_truth_table_and_are_told_apart() {
    for (name, kind) in
        [("pool-leak", "pool-leak"), ("pool-bounded", "pool-bounded"), ("pool-fixed", "clean")]
    {
        let test = format!("truth-{name}");
        if !can_isolate(&test) {
            return;
        }
        let _one_at_a_time = serial();
        let (out, r) = run(&root().join(format!("scenarios/{name}.toml")), &test);
        check_truth_of(name, &out, &r);
        let kinds: Vec<_> = r.diagnosis.findings.iter().map(|f| f.kind.name()).collect();
        assert_eq!(kinds, [kind], "{name}");
        let w = r.waves.as_ref().expect("bursts measured");
        let after: Vec<u32> = w.waves.iter().map(|w| w.after.client_close_wait).collect();
        let want: &[u32] = match name {
            "pool-leak" => &[50, 100, 150],
            "pool-bounded" => &[10, 10, 10],
            _ => &[0, 0, 0],
        };
        assert_eq!(after, want, "{name}: client CLOSE-WAIT after each burst");
        if name != "pool-fixed" {
            let f = &r.diagnosis.findings[0];
            assert_eq!(f.holders.len(), 1, "{name}: the client process holds them");
            assert_eq!(
                f.holders[0].pid,
                r.holders
                    .iter()
                    .find_map(|h| h.pid.filter(|_| h.side == cwlab_model::report::Side::Client))
                    .unwrap()
            );
        }
    }
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
fn time_wait_client_matches_the_truth_table() {
    check_truth("time-wait-client");
}

#[test]
fn issue_12_slow_close_matches_the_truth_table_and_says_how_long() {
    let test = "truth-slow-close";
    if !can_isolate(test) {
        return;
    }
    let _one_at_a_time = serial();
    let (out, r) = run(&root().join("scenarios/slow-close.toml"), test);
    check_truth_of("slow-close", &out, &r);
    let kinds: Vec<_> = r.diagnosis.findings.iter().map(|f| f.kind.name()).collect();
    assert_eq!(kinds, ["slow-close"]);
    let f = &r.diagnosis.findings[0];
    assert_eq!(f.numbers["peak"], 100);
    // The handler works 500 ms after the FIN: each socket's stay, from the kernel.
    let median = f.numbers["median_ms"];
    assert!((500..1500).contains(&median), "{f:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("→ up to 100 server sockets sat in CLOSE-WAIT"), "{stdout}");
    assert!(stdout.contains("fix: none: it is the server finishing its work, not a leak"));
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
fn leak_two_hosts_matches_the_truth_table_each_side_on_its_own_host() {
    use cwlab_model::report::Side;
    let test = "truth-leak-two-hosts";
    if !can_isolate(test) {
        return;
    }
    let _one_at_a_time = serial();
    let (out, r) = run(&root().join("scenarios/leak-two-hosts.toml"), test);
    check_truth_of("leak-two-hosts", &out, &r);
    assert_eq!(r.topology, cwlab_model::scenario::Topology::TwoHosts);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("two hosts: clients on 10.77.0.1, the server on 10.77.0.2"),
        "{stdout}"
    );
    // Each side was read on its own host: the server's sockets have the server's address, the
    // clients' the clients'.
    let (server, client) = ("10.77.0.2:", "10.77.0.1:");
    for h in &r.holders {
        let (local, remote) =
            if h.side == Side::Server { (server, client) } else { (client, server) };
        assert!(h.local.starts_with(local) && h.remote.starts_with(remote), "{h:?}");
    }
    // The packets were captured on the clients' end of the link, each segment once.
    assert!(r.packets.available, "{:?}", r.packets.note);
    assert_eq!(r.packets.connections, 100);
    assert_eq!(
        (r.packets.sent(Side::Server, "FIN"), r.packets.sent(Side::Client, "FIN")),
        (0, 100)
    );
    assert_eq!(r.packets.sent(Side::Client, "SYN"), 100);
    assert_eq!(r.packets.sent(Side::Server, "SYN"), 100, "the SYN-ACKs");
    assert_eq!(r.packets.client_segments["FIN"], 100, "each segment counted once, not twice");
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

/// The leak's server judged by the fixed scenario's expectations, as `leak-as-fixed.toml` in `dir`.
fn leak_as_fixed(dir: &std::path::Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(root().join("scenarios/fixed.toml")).unwrap();
    let text = text.replace("name = \"fixed\"", "name = \"leak-as-fixed\"");
    let file = dir.join("leak-as-fixed.toml");
    std::fs::write(&file, text.replace("\"shutdown-close\"", "\"close-only\"")).unwrap();
    file
}

#[test]
fn the_leak_judged_by_the_fixed_expectations_fails_and_says_why() {
    if !can_isolate("leak-as-fixed") {
        return;
    }
    let file = leak_as_fixed(&scratch("leak-as-fixed-src"));
    let _one_at_a_time = serial();
    let (out, r) = run(&file, "leak-as-fixed");
    assert_exit!(out, 1);
    assert_eq!(r.verdict, Verdict::Fail);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("✗ server CLOSE-WAIT == 0 "), "{stdout}");
    assert!(stdout.contains("FAIL  1 of 7 expectations held"), "{stdout}");
    let failed: Vec<_> = r.expectations.iter().filter(|e| !e.passed).collect();
    let texts: Vec<&str> = failed.iter().map(|e| e.text.as_str()).collect();
    assert_eq!(
        texts,
        [
            "server CLOSE-WAIT == 0 within 1s",
            "server CLOSE-WAIT == 0",
            "client FIN-WAIT-2 == 0",
            "client TIME-WAIT == clients",
            "server path ESTAB -> CLOSE-WAIT -> LAST-ACK -> CLOSE == clients",
            "server FIN == clients",
        ]
    );
    assert_eq!(failed[5].detail, "0 at the end", "the leak's server never sent a FIN");
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

/// Segments in a pcap file written by the lab, read with a parser of the test's own:
/// (server FINs, client FINs, segments in all).
fn fins_in_pcap(path: &std::path::Path, port: u16) -> (u64, u64, u64) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..4], &0xa1b2_c3d4u32.to_le_bytes(), "pcap magic");
    assert_eq!(u32::from_le_bytes(b[20..24].try_into().unwrap()), 1, "LINKTYPE_ETHERNET");
    let (mut at, mut server, mut client, mut all) = (24, 0, 0, 0);
    while at + 16 <= b.len() {
        let incl = u32::from_le_bytes(b[at + 8..at + 12].try_into().unwrap()) as usize;
        let frame = &b[at + 16..at + 16 + incl];
        at += 16 + incl;
        assert_eq!(&frame[12..14], &[0x08, 0x00], "IPv4 over loopback's Ethernet header");
        let tcp = &frame[14 + usize::from(frame[14] & 0x0f) * 4..];
        let sport = u16::from_be_bytes([tcp[0], tcp[1]]);
        let fin = tcp[13] & 0x01 != 0;
        all += 1;
        if fin && sport == port {
            server += 1;
        } else if fin {
            client += 1;
        }
    }
    (server, client, all)
}

/// Issue 6: the kernel's transitions and the wire tell the leak from the fix.
fn witnessed(name: &str) -> (cwlab_model::Report, std::path::PathBuf) {
    let dir = scratch(&format!("witness-{name}"));
    let report = dir.join("r.json");
    let pcap = dir.join("r.pcap");
    let file = root().join(format!("scenarios/{name}.toml"));
    let _one_at_a_time = serial();
    let out = cwlab(&[
        "run",
        file.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
        "--pcap",
        pcap.to_str().unwrap(),
    ]);
    assert_exit!(out, 0);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let r = util::read_report(&report);
    assert!(r.transitions.available, "{:?}", r.transitions.note);
    assert!(r.packets.available, "{:?}", r.packets.note);
    assert_eq!(r.packets.pcap.as_deref(), Some(pcap.to_str().unwrap()));
    assert!(stdout.contains(&format!("packets: {}", pcap.display())), "{stdout}");
    (r, pcap)
}

#[test]
fn issue_6_the_kernel_and_the_wire_tell_the_leak_from_the_fix() {
    use cwlab_model::report::Side;
    use cwlab_model::TcpState::*;
    if !can_isolate("witness") {
        return;
    }
    let (leak, leak_pcap) = witnessed("leak");
    let t = &leak.transitions;
    assert_eq!(t.lost, 0);
    assert_eq!(t.path(Side::Server, &[Established, CloseWait]), 100);
    assert_eq!(t.count(Side::Server, CloseWait, LastAck), 0);
    assert_eq!(t.count(Side::Client, Established, FinWait1), 100);
    let fw1 = t.durations.iter().find(|d| d.side == Side::Client && d.state == FinWait1).unwrap();
    assert_eq!(fw1.connections, 100);
    assert!(fw1.min_ms <= fw1.median_ms && fw1.median_ms <= fw1.max_ms);
    assert_eq!(
        (leak.packets.sent(Side::Server, "FIN"), leak.packets.sent(Side::Client, "FIN")),
        (0, 100)
    );
    assert_eq!(leak.packets.connections, 100);
    let (server_fins, client_fins, all) = fins_in_pcap(&leak_pcap, leak.port);
    assert_eq!((server_fins, client_fins), (0, 100), "the pcap file agrees");
    let counted = leak.packets.server_segments["all"] + leak.packets.client_segments["all"];
    assert_eq!(all, counted, "every segment counted is in the file");

    let (fixed, fixed_pcap) = witnessed("fixed");
    let t = &fixed.transitions;
    assert_eq!(t.path(Side::Server, &[Established, CloseWait, LastAck, Close]), 100);
    assert_eq!(t.count(Side::Server, CloseWait, LastAck), 100);
    assert_eq!(fixed.packets.sent(Side::Server, "FIN"), 100);
    assert_eq!(fixed.packets.sent(Side::Server, "RST"), 0);
    let (server_fins, client_fins, _) = fins_in_pcap(&fixed_pcap, fixed.port);
    assert_eq!((server_fins, client_fins), (100, 100));

    for tool in [["tcpdump", "-nr"], ["tshark", "-r"]] {
        let Ok(out) = std::process::Command::new(tool[0]).args([tool[1]]).arg(&fixed_pcap).output()
        else {
            eprintln!("{} is not installed: no cross-check with it", tool[0]);
            continue;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let fins = text.lines().filter(|l| l.contains("[F") || l.contains("FIN")).count();
        assert_eq!(fins, 200, "{} counts the FINs the lab counted", tool[0]);
    }
}

#[test]
fn issue_7_charts_of_the_leak_and_the_fix_differ_where_they_should() {
    if !can_isolate("chart") {
        return;
    }
    let dir = scratch("chart");
    let svg = dir.join("leak-vs-fixed.svg");
    let (leak, fixed) = (root().join("scenarios/leak.toml"), root().join("scenarios/fixed.toml"));
    let parent = root().join("scenarios/parent-closes.toml");
    let _one_at_a_time = serial();
    let out = cwlab(&[
        "run",
        leak.to_str().unwrap(),
        fixed.to_str().unwrap(),
        parent.to_str().unwrap(),
        "--report",
        dir.to_str().unwrap(),
        "--svg",
        svg.to_str().unwrap(),
    ]);
    assert_exit!(out, 0);
    let text = std::fs::read_to_string(&svg).unwrap();
    let doc = roxmltree::Document::parse(&text).expect("the SVG parses");
    let panel = |name: &str| {
        doc.descendants().find(|n| n.attribute("data-scenario") == Some(name)).unwrap()
    };
    let series = |name: &str| -> Vec<(String, String, String)> {
        panel(name)
            .descendants()
            .filter(|n| n.has_tag_name("polyline"))
            .map(|n| {
                let last =
                    n.attribute("points").unwrap().split(' ').next_back().unwrap().to_string();
                (
                    n.attribute("data-series").unwrap().into(),
                    n.attribute("data-max").unwrap().into(),
                    last,
                )
            })
            .collect()
    };
    let leak_cw = series("leak")
        .into_iter()
        .find(|s| s.0 == "server CLOSE-WAIT")
        .expect("a CLOSE-WAIT series");
    assert_eq!(leak_cw.1, "100", "the leak's CLOSE-WAIT reaches 100");
    let fw2 = series("leak").into_iter().find(|s| s.0 == "client FIN-WAIT-2").unwrap();
    assert_eq!(fw2.1, "100");
    // Server and clients have rows of their own: the client's FIN-WAIT-2 at 100 does not lie on
    // the server's CLOSE-WAIT at 100 (issue 14).
    assert_ne!(leak_cw.2.split(',').nth(1), fw2.2.split(',').nth(1), "no series hides another");
    // The fix: no CLOSE-WAIT series, or (a sample that caught one in passing) one that ends at 0,
    // on the bottom of the server's row.
    if let Some(cw) = series("fixed").into_iter().find(|s| s.0 == "server CLOSE-WAIT") {
        assert_ne!(cw.1, "100");
        assert_eq!(cw.2.split(',').nth(1), Some("278.0"), "back on the x axis at the end");
    }
    assert!(series("fixed").iter().any(|s| s.0 == "client TIME-WAIT" && s.1 == "100"));
    // Issue 14: fixed and parent-closes look alike in sockets; the descriptor row tells them
    // apart (the acceptor's copies in fixed, none in parent-closes).
    let fds = |name: &str| {
        let n = panel(name)
            .descendants()
            .find(|n| n.attribute("data-series") == Some("acceptor fds"))
            .expect("a descriptor series");
        let num = |a: &str| n.attribute(a).unwrap().parse::<u32>().unwrap();
        (num("data-first"), num("data-max"))
    };
    let (first, max) = fds("fixed");
    assert_eq!(max - first, 100, "fixed: the acceptor keeps its 100 copies");
    let (first, max) = fds("parent-closes");
    assert!(max - first <= 1, "parent-closes: one in flight at most, none kept: {first}..{max}");
    let labels: Vec<&str> = doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("axis-label"))
        .filter_map(|n| n.text())
        .collect();
    assert!(
        labels.iter().all(|l| l.starts_with("seconds since the server listened")),
        "{labels:?}"
    );
    // Each phase labelled once per panel, in a band of its own.
    let phases: Vec<&str> = panel("leak")
        .descendants()
        .filter(|n| n.attribute("class") == Some("phase-label"))
        .filter_map(|n| n.text())
        .collect();
    assert_eq!(phases, ["listen", "connect", "close", "hold"]);
    let legend: Vec<&str> = doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("legend-item"))
        .filter_map(|n| n.text())
        .collect();
    // Issue 21: drawn from the transitions, fixed's brief LAST-ACK is there; CLOSING never was.
    assert!(legend.contains(&"LAST-ACK") && !legend.contains(&"CLOSING"), "{legend:?}");
    assert!(legend.contains(&"CLOSE-WAIT") && legend.contains(&"descriptors"), "{legend:?}");
    let out = cwlab(&["chart", svg.to_str().unwrap(), "-o", dir.join("x.svg").to_str().unwrap()]);
    assert_exit!(out, 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a cwlab report"));
}

#[test]
fn issue_7_demo_without_a_terminal_prints_plain_lines_and_exits_with_the_verdict() {
    if !can_isolate("demo") {
        return;
    }
    let _one_at_a_time = serial();
    let out = cwlab(&["demo", "leak", "parent-closes"]);
    assert_exit!(out, 0);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains('\x1b'), "no escape sequences when stdout is not a terminal:\n{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("[leak] PASS 9 of 9 expectations held · server CLOSE-WAIT 100")),
        "{text}"
    );
    assert!(text.lines().any(|l| l.starts_with("[parent-closes] PASS")), "{text}");
    assert!(text.contains("[leak] hold begins"), "{text}");

    // The same, a step at a time: every run waits before each phase until a line arrives.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cwlab"))
        .args(["demo", "fixed", "--step"])
        .current_dir(root())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    use std::io::Write;
    stdin.write_all(b"\n\n\n").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert_exit!(out, 0);
    let text = String::from_utf8_lossy(&out.stdout);
    for next in ["connect", "close", "hold"] {
        assert!(text.contains(&format!("[fixed] next, {next}: ")), "{text}");
    }
    assert!(
        text.contains("[fixed] next, close: clients close their sockets. Watch the server side"),
        "{text}"
    );
}

#[test]
fn issue_7_a_bad_scenario_name_in_the_demo_is_refused() {
    let out = cwlab(&["demo", "no-such-scenario"]);
    assert_exit!(out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: scenarios/no-such-scenario.toml: cannot read the scenario file"),
        "{stderr}"
    );
}

#[test]
fn issue_7_progress_shows_on_a_terminal_only() {
    if !can_isolate("progress") {
        return;
    }
    let Ok(script) = which("script") else {
        assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "CI has util-linux's script");
        return eprintln!("skipping: no `script` to make a terminal");
    };
    let dir = scratch("progress");
    let report = dir.join("r.json");
    // script(1) hands the command to a shell: quote the paths, which may hold spaces (issue 11).
    let cmd = format!(
        "{} run scenarios/parent-closes.toml --report {}",
        shell_quote(env!("CARGO_BIN_EXE_cwlab")),
        shell_quote(&report.display().to_string())
    );
    let _one_at_a_time = serial();
    let out = std::process::Command::new(script)
        .args(["-qec", &cmd, "/dev/null"])
        .current_dir(root())
        .output()
        .unwrap();
    assert_exit!(out, 0);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("\r\x1b[Kparent-closes: hold "),
        "the phase and counts on the terminal: {text}"
    );
}

/// `text` as one word for sh: single quotes, each quote inside closed, escaped and reopened.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

fn which(tool: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join(tool)).find(|f| f.is_file()))
        .ok_or(())
}

/// "N side STATE … held by ROLE" from the summary's "who holds" lines.
fn summary_held(stdout: &str) -> BTreeSet<(u32, String, String, String)> {
    let mut v = BTreeSet::new();
    let mut inside = false;
    for line in stdout.lines() {
        if line.trim() == "who holds the stuck sockets" {
            inside = true;
            continue;
        }
        if !inside || !line.starts_with("    ") {
            inside = false;
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let role = match line.split_once(" held by ").unwrap().1 {
            "nobody" => "nobody".to_string(),
            rest if rest.starts_with("pid ") => {
                rest.split(", the ").nth(1).unwrap().split(',').next().unwrap().to_string()
            }
            rest => rest.split_whitespace().nth(1).unwrap().to_string(),
        };
        v.insert((words[0].parse().unwrap(), words[1].into(), words[2].into(), role));
    }
    v
}

#[test]
fn issue_11_summary_demo_and_json_count_the_same_holders() {
    if !can_isolate("held-by") {
        return;
    }
    let _one_at_a_time = serial();
    for name in ["leak", "fork-worker", "exec-inherit"] {
        let (out, r) = run(&root().join(format!("scenarios/{name}.toml")), &format!("held-{name}"));
        assert_exit!(out, 0);
        let json: BTreeSet<(u32, String, String, String)> = r
            .diagnosis
            .held
            .iter()
            .map(|h| (h.sockets, h.side.to_string(), h.state.to_string(), h.role.to_string()))
            .collect();
        assert!(!json.is_empty(), "{name}: something is held");
        let summary = summary_held(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(summary, json, "{name}: the summary against the JSON");

        let demo = cwlab(&["demo", name]);
        assert_exit!(demo, 0);
        let prefix = format!("[{name}] ");
        let demo: BTreeSet<(u32, String, String, String)> = String::from_utf8_lossy(&demo.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .filter_map(|l| {
                let (count, rest) = l.split_once(' ')?;
                let (what, role) = rest.split_once(" held by ")?;
                let (side, state) = what.split_once(' ')?;
                Some((count.parse().ok()?, side.into(), state.into(), role.into()))
            })
            .collect();
        assert_eq!(demo, json, "{name}: the demo against the JSON");
        // And the count is the distinct sockets among the raw holder rows.
        for h in &r.diagnosis.held {
            let rows: BTreeSet<u64> = r
                .holders
                .iter()
                .filter(|x| x.side == h.side && x.state == h.state && x.role == h.role)
                .map(|x| x.inode)
                .collect();
            if h.role != cwlab_model::report::Role::Nobody {
                assert_eq!(rows.len() as u32, h.sockets, "{name}: {h:?}");
            }
        }
    }
}

#[test]
fn issue_11_junit_has_a_case_per_expectation_and_failures_with_what_was_seen() {
    if !can_isolate("junit") {
        return;
    }
    let dir = scratch("junit");
    let file = leak_as_fixed(&dir);
    let xml = dir.join("junit.xml");
    let _one_at_a_time = serial();
    let out = cwlab(&[
        "run",
        file.to_str().unwrap(),
        root().join("scenarios/parent-closes.toml").to_str().unwrap(),
        "--report",
        dir.join("reports").to_str().unwrap(),
        "--junit",
        xml.to_str().unwrap(),
    ]);
    assert_exit!(out, 1);
    let text = std::fs::read_to_string(&xml).unwrap();
    let doc = roxmltree::Document::parse(&text).unwrap();
    let root_el = doc.root_element();
    assert_eq!(root_el.tag_name().name(), "testsuites");
    assert_eq!(root_el.attribute("failures"), Some("6"));
    let suites: Vec<_> = root_el.children().filter(|n| n.has_tag_name("testsuite")).collect();
    let names: Vec<&str> = suites.iter().map(|s| s.attribute("name").unwrap()).collect();
    assert_eq!(names, ["leak-as-fixed", "parent-closes"]);
    let cases = |s: &roxmltree::Node| s.children().filter(|n| n.has_tag_name("testcase")).count();
    assert_eq!(cases(&suites[0]), 7);
    let failure = suites[0]
        .descendants()
        .find(|n| {
            n.has_tag_name("failure")
                && n.parent().unwrap().attribute("name") == Some("server CLOSE-WAIT == 0")
        })
        .expect("the failed expectation is a failure");
    assert_eq!(failure.attribute("message"), Some("observed 100: 100 at the end"));
    let out_text = suites[0].descendants().find(|n| n.has_tag_name("system-out")).unwrap();
    assert!(out_text.text().unwrap().starts_with("fork-leak: the acceptor holds 100"));
    assert_eq!(suites[1].attribute("failures"), Some("0"));
}

#[test]
fn issue_11_the_report_format_doc_has_the_shape_run_json_prints() {
    if !can_isolate("format-doc") {
        return;
    }
    let source = std::fs::read_to_string(root().join("crates/model/src/report.rs")).unwrap();
    let start = source.find("//! ```json\n").unwrap() + "//! ```json\n".len();
    let end = start + source[start..].find("//! ```\n").unwrap();
    let doc: String =
        source[start..end].lines().map(|l| l.strip_prefix("//!").unwrap_or(l)).collect();
    let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
    let dir = scratch("format-doc");
    let _one_at_a_time = serial();
    let out = cwlab(&[
        "run",
        "scenarios/leak.toml",
        "--json",
        "--report",
        dir.join("r.json").to_str().unwrap(),
    ]);
    assert_exit!(out, 0);
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    fn keys(v: &serde_json::Value) -> Vec<String> {
        v.as_object().unwrap().keys().cloned().collect()
    }
    assert_eq!(keys(&printed), keys(&doc), "the top level");
    for path in ["/scenario", "/acceptor", "/transitions", "/packets", "/diagnosis"] {
        assert_eq!(keys(&printed[&path[1..]]), keys(doc.pointer(path).unwrap()), "{path}");
    }
    for path in ["/diagnosis/findings/0", "/diagnosis/held/0", "/holders/0", "/samples/0"] {
        let (a, b) = (printed.pointer(path).unwrap(), doc.pointer(path).unwrap());
        assert_eq!(keys(a), keys(b), "{path}");
    }
}
