//! Nothing left behind, nothing lost: the runner killed at random moments by SIGINT, SIGTERM, a
//! double SIGINT and SIGKILL, 30 times each; survivors are found by the `CWLAB_RUN` mark the lab
//! puts on every process it starts, not by name. Also: the deadline, and two runs at once.

mod util;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cwlab_model::report::{Phase, Verdict};
use util::{can_isolate, check_truth_of, marked, read_report, root, scratch, show};

const RUNS: usize = 30;

/// A quick leak: 40 clients, a 300 ms hold, so a random moment lands in every phase; on one
/// host or two.
fn quick_scenario(dir: &Path, topology: &str) -> PathBuf {
    let text = std::fs::read_to_string(root().join("scenarios/leak.toml")).unwrap();
    let start = text.find("expect = [").unwrap();
    let end = start + text[start..].find("]\n").unwrap() + 2;
    let text =
        format!("{}expect = [\"server CLOSE-WAIT == clients\"]\n{}", &text[..start], &text[end..])
            .replace("count = 100", "count = 40")
            .replace("hold = \"1500ms\"", "hold = \"300ms\"")
            .replace("sample_interval = \"50ms\"", "sample_interval = \"20ms\"")
            + &format!("topology = \"{topology}\"\n");
    let file = dir.join("quick.toml");
    std::fs::write(&file, text).unwrap();
    file
}

fn wait_for_exit(child: &mut Child, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("timeout while waiting for the runner to exit after {what}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Tracefs instances this runner made (`cwlab-PID-*`).
fn instances(runner: u32) -> Vec<String> {
    let prefix = format!("cwlab-{runner}-");
    std::fs::read_dir("/sys/kernel/tracing/instances")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

fn no_survivors(runner: u32, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut left: Vec<String> = marked(runner).iter().map(|p| format!("pid {p}")).collect();
        left.extend(instances(runner).into_iter().map(|i| format!("tracefs instance {i}")));
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: survivors {left:?}");
        std::thread::yield_now();
    }
}

/// xorshift: the moments are random but the seed is printed, so a failure can be replayed.
struct Moments(u64);

impl Moments {
    fn next_ms(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

fn kill_at_random(test: &str, signal: i32, twice: bool) {
    kill_at_random_on(test, signal, twice, "loopback", RUNS);
}

fn kill_at_random_on(test: &str, signal: i32, twice: bool, topology: &str, runs: usize) {
    if !can_isolate(test) {
        return;
    }
    let dir = scratch(test);
    let file = quick_scenario(&dir, topology);
    let args: Vec<String> = ["run", file.to_str().unwrap(), "--isolation", "netns", "--report"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    kill_at_random_with(test, signal, twice, runs, &dir, &args, &[], 450, 0);
}

/// `cwlab check` of a server that daemonizes and leaks, killed at random moments: nothing it
/// started (the daemon and its handlers included) outlives the check.
fn kill_check_at_random(test: &str, signal: i32, runs: usize) {
    if !can_isolate(test) {
        return;
    }
    let dir = scratch(test);
    let server = root().join("examples/python/daemonizes.py");
    let args: Vec<String> =
        ["check", "--clients", "40", "--hold", "300ms", "--isolation", "netns", "--report"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    let tail = ["--".into(), "python3".into(), server.display().to_string(), "{port}".into()];
    // A check that ends before the signal finds the leak: exit 1.
    kill_at_random_with(test, signal, false, runs, &dir, &args, &tail, 900, 1);
}

/// Runs `cwlab ARGS REPORT TAIL` `runs` times, each killed by `signal` (twice: at once again) at
/// a random moment below `window_ms`, and checks what it leaves; a run that ended before the
/// signal exits `finished`.
#[allow(clippy::too_many_arguments)]
fn kill_at_random_with(
    test: &str,
    signal: i32,
    twice: bool,
    runs: usize,
    dir: &Path,
    args: &[String],
    tail: &[String],
    window_ms: u64,
    finished: i32,
) {
    let seed = std::env::var("CWLAB_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
            as u64
            | 1
    });
    eprintln!("{test}: CWLAB_SEED={seed}");
    let mut moments = Moments(seed);
    let mut interrupted = 0;
    for i in 0..runs {
        let report = dir.join(format!("r{i}.json"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_cwlab"))
            .args(args)
            .arg(&report)
            .args(tail)
            .current_dir(root())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let runner = child.id();
        // The moment to strike: anywhere from startup to teardown.
        std::thread::sleep(Duration::from_millis(moments.next_ms(window_ms)));
        // SAFETY: kill(2) takes no memory; the runner is our child, not yet reaped, so its pid
        // cannot have been reused.
        unsafe { libc::kill(runner as i32, signal) };
        if twice {
            // SAFETY: as above.
            unsafe { libc::kill(runner as i32, signal) };
        }
        let what = format!("{test} run {i}");
        let status = wait_for_exit(&mut child, &what);
        no_survivors(runner, &what);
        let leftovers: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{what}: temporary files left: {leftovers:?}");
        use std::os::unix::process::ExitStatusExt;
        match (signal, status.code()) {
            // The run may have ended, with its verdict, just before the signal.
            (_, Some(c)) if c == finished => {}
            (libc::SIGKILL, _) => assert_eq!(status.signal(), Some(libc::SIGKILL), "{what}"),
            (_, Some(c)) => {
                assert_eq!(c, 128 + signal, "{what}: exit status");
                if !twice {
                    let r = read_report(&report);
                    assert!(r.interrupted, "{what}: the report says interrupted");
                    assert!(r.stopped_in.is_some());
                    assert_eq!(r.verdict, Verdict::Error);
                    interrupted += 1;
                }
            }
            // A signal before the handlers were installed does what it does to any process;
            // nothing had started yet.
            (_, None) => assert_eq!(status.signal(), Some(signal), "{what}: {status:?}"),
        }
        if report.exists() {
            read_report(&report); // whole, or not there at all
        }
    }
    if signal != libc::SIGKILL && !twice {
        assert!(
            interrupted >= runs / 2,
            "{test}: only {interrupted} of {runs} runs were interrupted"
        );
    }
}

#[test]
fn sigint_at_random_moments_leaves_nothing_and_writes_the_report() {
    kill_at_random("sigint", libc::SIGINT, false);
}

#[test]
fn sigterm_at_random_moments_leaves_nothing_and_writes_the_report() {
    kill_at_random("sigterm", libc::SIGTERM, false);
}

#[test]
fn a_second_sigint_kills_at_once_and_leaves_nothing() {
    kill_at_random("double-sigint", libc::SIGINT, true);
}

#[test]
fn sigkill_of_the_runner_leaves_nothing() {
    kill_at_random("sigkill", libc::SIGKILL, false);
}

/// Two hosts: the server's namespace, the veth pair between, and the socket table the runner
/// opened in it go with the processes.
#[test]
fn issue_12_sigint_sigterm_and_sigkill_of_a_check_leave_nothing_of_a_daemon() {
    kill_check_at_random("check-sigint", libc::SIGINT, 10);
    kill_check_at_random("check-sigterm", libc::SIGTERM, 10);
    kill_check_at_random("check-sigkill", libc::SIGKILL, 10);
}

#[test]
fn sigint_and_sigkill_of_a_two_hosts_run_leave_nothing() {
    kill_at_random_on("two-hosts-sigint", libc::SIGINT, false, "two-hosts", 20);
    kill_at_random_on("two-hosts-sigkill", libc::SIGKILL, false, "two-hosts", 20);
}

#[test]
fn past_the_deadline_the_run_tears_down_and_names_the_phase() {
    if !can_isolate("deadline") {
        return;
    }
    let dir = scratch("deadline");
    let report = dir.join("r.json");
    let leak = root().join("scenarios/leak.toml");
    let out = util::cwlab(&[
        "run",
        leak.to_str().unwrap(),
        "--timeout",
        "400ms",
        "--report",
        report.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("error: timeout: the hold phase did not finish within the run's 400ms"),
        "{stdout}"
    );
    let r = read_report(&report);
    assert_eq!(
        (r.verdict, r.stopped_in, r.interrupted),
        (Verdict::Error, Some(Phase::Hold), false)
    );
}

#[test]
fn two_runs_at_once_never_see_each_other() {
    if !can_isolate("two-at-once") {
        return;
    }
    let runs: Vec<_> = ["leak", "parent-closes"]
        .into_iter()
        .map(|name| {
            std::thread::spawn(move || {
                let file = root().join(format!("scenarios/{name}.toml"));
                (name, util::run(&file, &format!("two-at-once-{name}")))
            })
        })
        .collect();
    for r in runs {
        let (name, (out, report)) = r.join().unwrap();
        check_truth_of(name, &out, &report);
    }
}
