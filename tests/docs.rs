//! Issue 21: the outputs shown in README.md and docs/*.md are the real ones. Every ```console
//! block is run, as snapbox checks a command's output: each `$ COMMAND` line (a trailing `\`
//! goes on to the next line) runs in `sh` with `cwlab` on the PATH, its stdout and stderr
//! together compared with the lines under it, and its exit status with `? N` right under the
//! command (0 where there is none). In the expected lines, `[..]` stands for any text within a
//! line, `...` on a line of its own for any lines, and the placeholders below for what changes
//! from run to run: `[PID]`, `[PORT]` (an ephemeral one), `[MS]` (a number of milliseconds), `[S]` (of seconds),
//! `[T]` (a ladder's time column) and `[INODE]`. A block runs in a folder of its own that holds
//! `scenarios/` and `examples/`, so its reports are written there; a process a block leaves in
//! the background is stopped when the block ends.
//!
//! When an output changes on purpose, `CWLAB_DOCS=overwrite cargo test -p cwlab --test docs`
//! writes the new outputs into the files (placeholders and wildcards kept where they matched);
//! read the diff before committing it.

mod util;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use util::{can_isolate, root, scratch, serial};

/// One command of a console block and what it is expected to print.
#[derive(Debug, Clone)]
struct Step {
    command: String,
    status: i32,
    expected: String,
}

/// One console block: where it is in its file, and its commands.
#[derive(Debug)]
struct Block {
    /// The byte range of the block's body (between the fences).
    body: std::ops::Range<usize>,
    line: usize,
    steps: Vec<Step>,
}

fn blocks(text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(open) = text[at..].find("```console\n").map(|i| at + i) {
        let start = open + "```console\n".len();
        let end = start + text[start..].find("```\n").expect("a console block is closed");
        out.push(Block {
            body: start..end,
            line: text[..open].lines().count() + 1,
            steps: steps(&text[start..end]),
        });
        at = end + 4;
    }
    out
}

fn steps(body: &str) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let mut lines = body.lines().peekable();
    while let Some(line) = lines.next() {
        if let Some(cmd) = line.strip_prefix("$ ") {
            let mut command = cmd.to_string();
            while command.ends_with('\\') {
                command.pop();
                command.push('\n');
                command.push_str(lines.next().unwrap_or(""));
            }
            let status = match lines.peek().and_then(|l| l.strip_prefix("? ")) {
                Some(n) => {
                    let n = n.parse().expect("`? N` is a number");
                    lines.next();
                    n
                }
                None => 0,
            };
            steps.push(Step { command, status, expected: String::new() });
        } else if let Some(s) = steps.last_mut() {
            s.expected.push_str(line);
            s.expected.push('\n');
        }
        // Lines before the first command (a `#` comment) say where it runs: not checked.
    }
    steps
}

/// The block's body again, with `outputs` in place of the expected lines.
fn write_block(steps: &[Step], outputs: &[String], before: &str) -> String {
    let mut s = String::from(before);
    for (step, out) in steps.iter().zip(outputs) {
        let parts: Vec<&str> = step.command.split('\n').collect();
        for (i, part) in parts.iter().enumerate() {
            s.push_str(if i == 0 { "$ " } else { "" });
            s.push_str(part);
            s.push_str(if i + 1 < parts.len() { "\\\n" } else { "\n" });
        }
        if step.status != 0 {
            s.push_str(&format!("? {}\n", step.status));
        }
        s.push_str(out);
    }
    s
}

fn redactions() -> snapbox::Redactions {
    let mut r = snapbox::Redactions::new();
    let re = |p: &str| regex::Regex::new(p).unwrap();
    let mut add = |name: &'static str, pattern: &str| r.insert(name, re(pattern)).unwrap();
    add("[PID]", r"pid[ =](?<redacted>\d+)");
    // The kernel's ephemeral ports (32768-60999): a port a doc names (18099) stays.
    let ephemeral = r"(?<redacted>3[2-9]\d{3}|[45]\d{4}|60\d{3})\b";
    add("[PORT]", &format!(r"port {ephemeral}"));
    add("[PORT]", &format!(r"(?:127\.0\.0\.1|connection |\s):{ephemeral}"));
    // A command's own port, `{port}` made real: `… half_open_leak.js 37331`.
    add("[PORT]", &format!(r"\s{ephemeral}`"));
    add("[MS]", r"(?<redacted>\d+(?:\.\d+)?) ms\b");
    add("[S]", r"(?<redacted>\d+\.\d\d)s\b");
    // The column is right-aligned: its width moves with the time (78.437, 170.693).
    add("[T]", r"(?m)^(?<redacted> +\d+\.\d{3})  ");
    add("[INODE]", r"netns (?<redacted>\d{6,})");
    r
}

/// Runs one block in `dir`; returns each command's output (stdout and stderr as one) and status.
fn run(block: &Block, dir: &Path) -> Vec<(String, i32)> {
    let bin = Path::new(env!("CARGO_BIN_EXE_cwlab")).parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let mut out = Vec::new();
    let mut groups = Vec::new();
    for step in &block.steps {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("exec 2>&1\n{}", step.command))
            .current_dir(dir)
            .env("PATH", &path)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        groups.push(child.id());
        let mut stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            s
        });
        let deadline = Instant::now() + Duration::from_secs(180);
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                stop_group(child.id());
                panic!("line {}: `{}` did not end in 180 s", block.line, step.command);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // What a command leaves in the background (a run to look at) must write elsewhere.
        out.push((reader.join().unwrap(), status));
    }
    for g in groups {
        stop_group(g);
    }
    out
}

/// SIGTERM to every process a block's command started (its process group), then a wait for
/// them to go: a run stopped so tears down and writes its report.
fn stop_group(pgid: u32) {
    let pg = nix::unistd::Pid::from_raw(-(pgid as i32));
    let _ = nix::sys::signal::kill(pg, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(20);
    while nix::sys::signal::kill(pg, None).is_ok() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = nix::sys::signal::kill(pg, nix::sys::signal::Signal::SIGKILL);
}

/// `text` with each marked paragraph (`✗ `, `✓ `, `→ ` …) on one line: a line indented to
/// where the text after the previous line's marker starts goes on that line. The faces wrap at
/// 80 columns with the real pid, so a pid of 3 digits or of 7 moves a word from one line to
/// the next; what the lines say is the same.
fn reflow(text: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut text_at = None;
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        if let (Some(at), Some(last)) = (text_at, out.last_mut()) {
            if indent == at && !line.trim().is_empty() {
                last.push(' ');
                last.push_str(line.trim_start());
                continue;
            }
        }
        let mut rest = line.trim_start().chars();
        text_at = match (rest.next(), rest.next()) {
            (Some(m), Some(' ')) if !m.is_alphanumeric() && !m.is_whitespace() && m != '.' => {
                Some(indent + 2)
            }
            _ => None,
        };
        out.push(line.to_string());
    }
    out.iter().map(|l| format!("{l}\n")).collect()
}

/// The files whose console blocks are checked.
fn documents() -> Vec<PathBuf> {
    let root = root();
    let mut v = vec![root.join("README.md")];
    for name in ["scenarios.md", "workshop.md", "prometheus.md", "runner.md"] {
        v.push(root.join("docs").join(name));
    }
    v
}

/// A folder for a block: scenarios/ and examples/ of the repository, and nothing else.
fn folder(test: &str) -> PathBuf {
    let dir = scratch(test);
    for name in ["scenarios", "examples"] {
        std::os::unix::fs::symlink(root().join(name), dir.join(name)).unwrap();
    }
    dir
}

#[test]
fn issue_21_the_docs_show_real_outputs() {
    if !can_isolate("docs") {
        return;
    }
    let overwrite = std::env::var("CWLAB_DOCS").as_deref() == Ok("overwrite");
    let assert = snapbox::Assert::new().redact_with(redactions());
    let mut failures = Vec::new();
    let mut checked = 0;
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).unwrap();
        let name = doc.strip_prefix(root()).unwrap().display().to_string();
        let mut rewritten = text.clone();
        for (i, block) in blocks(&text).iter().enumerate().rev() {
            let dir = folder(&format!("docs-{}-{i}", name.replace('/', "-")));
            let ran = {
                let _one_at_a_time = serial();
                run(block, &dir)
            };
            let mut outputs = Vec::new();
            for (step, (actual, status)) in block.steps.iter().zip(ran) {
                checked += 1;
                let (actual_n, _) = assert.normalize(
                    snapbox::Data::text(actual.clone()),
                    snapbox::Data::text(step.expected.clone()),
                );
                outputs.push(actual_n.render().unwrap_or_default());
                let at = format!("{name}:{}: `{}`", block.line, step.command);
                if status != step.status {
                    failures.push(format!("{at} exited {status}, not {}:\n{actual}", step.status));
                }
                let same = assert.try_eq(
                    Some(&"actual"),
                    snapbox::Data::text(actual.clone()),
                    snapbox::Data::text(step.expected.clone()),
                );
                // A paragraph wraps where its pid's digits put it: read it again unwrapped.
                let reflowed = || {
                    assert.try_eq(
                        Some(&"actual"),
                        snapbox::Data::text(reflow(&actual)),
                        snapbox::Data::text(reflow(&step.expected)),
                    )
                };
                if let Err(e) = same {
                    if reflowed().is_err() {
                        failures.push(format!("{at}:\n{e}"));
                    }
                }
            }
            let _ = std::fs::remove_dir_all(&dir);
            let body = &text[block.body.clone()];
            let before: String = body
                .lines()
                .take_while(|l| !l.starts_with("$ "))
                .map(|l| format!("{l}\n"))
                .collect();
            rewritten
                .replace_range(block.body.clone(), &write_block(&block.steps, &outputs, &before));
        }
        if overwrite && rewritten != text {
            std::fs::write(&doc, rewritten).unwrap();
        }
    }
    assert!(checked >= 5, "the docs show commands with their outputs ({checked})");
    if !overwrite {
        assert!(
            failures.is_empty(),
            "{}\n\n{} outputs differ from the docs; if on purpose: CWLAB_DOCS=overwrite cargo test -p cwlab --test docs",
            failures.join("\n\n"),
            failures.len()
        );
    }
}

#[test]
fn console_blocks_read_as_commands_statuses_and_outputs() {
    let text = "x\n```console\n# where\n$ echo a \\\n  b\nA\n$ false\n? 1\n```\n";
    let b = blocks(text);
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].steps.len(), 2);
    assert_eq!(b[0].steps[0].command, "echo a \n  b");
    assert_eq!(b[0].steps[0].expected, "A\n");
    assert_eq!((b[0].steps[1].status, b[0].steps[1].expected.as_str()), (1, ""));
    let again = write_block(&b[0].steps, &["A\n".into(), String::new()], "# where\n");
    assert_eq!(again, &text[b[0].body.clone()]);
    assert_eq!(
        reflow("  ✗ held by pid [PID] (the\n    acceptor), fd 4\n  ✗ next\n    and on\n    more\n...\n      fix: x\n"),
        "  ✗ held by pid [PID] (the acceptor), fd 4\n  ✗ next and on more\n...\n      fix: x\n"
    );
    // The failure CI once saw: pid 25528 wraps before `listening`, pid 686 after it.
    let wrapped = |pid: &str, at: &str| {
        format!("  ✗ the socket is still held by pid {pid} (the{at}process), fd 19\n")
    };
    let assert = snapbox::Assert::new().redact_with(redactions());
    let (short, long) = (wrapped("686", " listening\n    "), wrapped("[PID]", "\n    listening "));
    assert!(assert.try_eq(None, short.clone().into(), long.clone().into()).is_err());
    assert!(assert.try_eq(None, reflow(&short).into(), reflow(&long).into()).is_ok());
    let r = redactions();
    assert_eq!(
        r.redact("pid 4158 port 41723 · fds 4–103 · 1.69s · after 48 ms"),
        "pid [PID] port [PORT] · fds 4–103 · [S]s · after [MS] ms"
    );
    assert_eq!(r.redact("     78.437  SYN-SENT"), "[T]  SYN-SENT");
    assert_eq!(r.redact("    170.693  FIN-WAIT-1"), "[T]  FIN-WAIT-1");
    assert_eq!(
        r.redact("server `node s.js 37331` (Node.js)"),
        "server `node s.js [PORT]` (Node.js)"
    );
    assert_eq!(
        r.redact("127.0.0.1:36245 users:((\"x\",pid=1,fd=3))"),
        "127.0.0.1:[PORT] users:((\"x\",pid=[PID],fd=3))"
    );
}
