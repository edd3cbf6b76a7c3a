//! `--html FILE`: one self-contained page per invocation (no script, no font, no fetch: every
//! picture is inline SVG), what a CI job keeps as an artifact and a workshop hands out. For each
//! run: the verdict, the diagnosis with its fix, the expectations, who holds the stuck sockets,
//! the timeline chart, the state machine with its counts and the ladder of each way the
//! connections went.
//!
//! Elements a reader (or a test) can find: `section.run[data-scenario]`, `.verdict[data-verdict]`,
//! `.finding[data-kind]`, `table.expectations`, `table.holders`, `figure.chart svg`,
//! `figure.machine svg`, `figure.ladder svg`.
//!
//! Each run leads with its verdict in words (`.verdict[data-outcome]`: "leak reproduced: 9 of 9
//! expectations held", not a green PASS over a leak), coloured by what the run found (red a
//! leak, green none, grey no verdict). With several runs the page opens with them side by side
//! (`section.compare`: a table of what each found, and their timelines on one scale), then each
//! run in detail.

use std::fmt::Write;
use std::io;
use std::path::PathBuf;

use cwlab_model::events::Reporter;
use cwlab_model::ladder::Ladder;
use cwlab_model::machine::Machine;
use cwlab_model::report::{Report, Verdict};

use crate::text::esc;
use crate::text::ranges;
use crate::{chart, diagram, figures, ladder};

/// The page, written when every run has ended.
pub struct Html {
    path: PathBuf,
    check: bool,
    reports: Vec<Report>,
}

impl Html {
    /// A page to `path`; `check` when the runs are `cwlab check`'s (judged by their diagnosis).
    pub fn new(path: PathBuf, check: bool) -> Html {
        Html { path, check, reports: Vec::new() }
    }
}

impl Reporter for Html {
    fn finish(&mut self, r: &Report) -> io::Result<()> {
        self.reports.push(r.clone());
        Ok(())
    }

    fn close(&mut self) -> io::Result<()> {
        cwlab_os::write_atomically(&self.path, page(&self.reports, self.check).as_bytes())
    }
}

const STYLE: &str = "body{font-family:sans-serif;max-width:1040px;margin:2em auto;padding:0 1em;color:#222}\
h1{font-size:1.6em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em}\
.verdict{display:inline-block;padding:.1em .6em;border-radius:.3em;color:white;font-size:.8em;vertical-align:middle}\
.verdict.clean{background:#2ca02c}.verdict.leak{background:#d62728}.verdict.error{background:#7f7f7f}\
table.compare td.leak{color:#d62728;font-weight:bold}table.compare td.clean{color:#2ca02c;font-weight:bold}\
.finding{border-left:6px solid #2ca02c;padding:.2em 1em;margin:1em 0;background:#f6fbf6}\
.finding.leak{border-color:#d62728;background:#fdf4f4}.fix{font-weight:bold}\
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}\
td.ok{color:#2ca02c}td.no{color:#d62728}td.na{color:#7f7f7f}\
figure{margin:1em 0}figure svg{max-width:100%;height:auto;border:1px solid #eee}\
pre{background:#f7f7f7;padding:.6em;overflow-x:auto}.meta{color:#555}";

/// The whole page for `reports`.
pub fn page(reports: &[Report], check: bool) -> String {
    let mut s = String::new();
    let names: Vec<&str> = reports.iter().map(|r| r.scenario.name.as_str()).collect();
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>closewait-lab: {}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>closewait-lab: {}</h1>\n",
        esc(&names.join(", ")),
        esc(&names.join(", "))
    );
    if reports.len() > 1 {
        compare(&mut s, reports, check);
    }
    for r in reports {
        run(&mut s, r, check);
    }
    s.push_str(
        "<p class=\"meta\">Written by cwlab (closewait-lab). Counts are the kernel's socket table \
         (sock_diag); transitions are its sock:inet_sock_set_state tracepoint; segments are a packet \
         capture on the run's loopback.</p>\n</body>\n</html>\n",
    );
    s
}

/// How the page judges a run: a scenario by its expectations, a check by its diagnosis.
fn verdict(r: &Report, check: bool) -> Verdict {
    match r.verdict {
        Verdict::Error => Verdict::Error,
        _ if check && r.diagnosis.is_clean() => Verdict::Pass,
        _ if check => Verdict::Fail,
        v => v,
    }
}

/// What a run came to, in words, and the class that colours it: `leak`, `clean` or `error`.
pub fn said(r: &Report, check: bool) -> (String, &'static str) {
    let leak = r.diagnosis.findings.iter().any(|f| f.kind.is_leak());
    let (held, of) = r.expectations_held();
    match verdict(r, check) {
        Verdict::Error => ("no verdict: the run could not finish".into(), "error"),
        _ if check && leak => ("leak found".into(), "leak"),
        _ if check => ("no leak found".into(), "clean"),
        Verdict::Pass if leak => {
            (format!("leak reproduced: {held} of {of} expectations held"), "leak")
        }
        Verdict::Pass => {
            (format!("no leak, as expected: {held} of {of} expectations held"), "clean")
        }
        Verdict::Fail => {
            let class = if leak { "leak" } else { "clean" };
            (format!("not as expected: {} of {of} expectations failed", of - held), class)
        }
    }
}

/// Several runs side by side, before the details: what each found and its numbers at the end,
/// then their timelines on one scale.
fn compare(s: &mut String, reports: &[Report], check: bool) {
    use cwlab_model::report::Side;
    use cwlab_model::TcpState;
    let _ = writeln!(
        s,
        "<section class=\"compare\">\n<h2>Side by side</h2>\n<table class=\"compare\">"
    );
    let row = |s: &mut String, head: &str, cells: Vec<(String, &str)>| {
        let _ = write!(s, "<tr><th>{head}</th>");
        for (c, class) in cells {
            let _ = write!(s, "<td class=\"{class}\">{c}</td>");
        }
        s.push_str("</tr>\n");
    };
    let each = |f: &dyn Fn(&Report) -> String| -> Vec<(String, &str)> {
        reports.iter().map(|r| (f(r), "")).collect()
    };
    row(s, "", each(&|r| format!("<b>{}</b>", esc(&r.scenario.name))));
    let verdicts = reports.iter().map(|r| {
        let (words, class) = said(r, check);
        (esc(&words), class)
    });
    row(s, "verdict", verdicts.collect());
    row(s, "finding", each(&|r| r.diagnosis.primary().map_or(String::new(), |f| esc(&f.title))));
    for (side, st) in [
        (Side::Server, TcpState::CloseWait),
        (Side::Client, TcpState::FinWait2),
        (Side::Client, TcpState::TimeWait),
    ] {
        let head = format!("{side} {st} at the end");
        row(s, &head, each(&|r| r.final_counts.get(side, st).to_string()));
    }
    row(
        s,
        "acceptor fds",
        each(&|r| match (r.acceptor.fds_baseline, r.acceptor.fds_end) {
            (Some(a), Some(b)) => format!("{a} → {b}"),
            _ => "—".into(),
        }),
    );
    s.push_str("</table>\n");
    let _ = writeln!(
        s,
        "<figure class=\"chart compare\">{}<figcaption>Their timelines on one scale.</figcaption></figure>\n</section>",
        chart::render(reports)
    );
}

fn run(s: &mut String, r: &Report, check: bool) {
    let v = verdict(r, check);
    let class = format!("{v}").to_lowercase();
    let (words, outcome) = said(r, check);
    let _ = writeln!(s, "<section class=\"run\" data-scenario=\"{}\">", esc(&r.scenario.name));
    let _ = writeln!(
        s,
        "<h2>{} <span class=\"verdict {outcome}\" data-verdict=\"{class}\" data-outcome=\"{outcome}\">{}</span></h2>",
        esc(&r.scenario.name),
        esc(&words)
    );
    if !r.scenario.story.is_empty() {
        let _ = writeln!(s, "<p class=\"story\">{}</p>", esc(&r.scenario.story));
    }
    let server = match &r.scenario.command {
        Some(argv) => format!("<code>{}</code>", esc(&argv.join(" "))),
        None => esc(&r.scenario.behaviour),
    };
    let (held, of) = r.expectations_held();
    let _ = writeln!(
        s,
        "<p class=\"meta\">server {server} · {} · port {} · {} · {held} of {of} expectations held · {:.1} s</p>",
        esc(&r.client_outcome.summary(r.clients)),
        r.port,
        r.isolation,
        r.duration_ms as f64 / 1000.0
    );
    if let Some(e) = &r.error {
        let _ = writeln!(s, "<p class=\"error\"><b>The run could not finish:</b> {}</p>", esc(e));
    }
    let _ = writeln!(s, "<h3>Diagnosis</h3>");
    for f in &r.diagnosis.findings {
        let leak = if f.kind.is_leak() { " leak" } else { "" };
        let _ = writeln!(
            s,
            "<div class=\"finding{leak}\" data-kind=\"{}\"><h4>{}</h4><p>{}</p>",
            f.kind,
            esc(&f.title),
            esc(&f.explanation)
        );
        if let Some(e) = &f.evidence {
            let _ = writeln!(s, "<p class=\"evidence\">Evidence: {}</p>", esc(e));
        }
        if let Some(fix) = f.fix_line() {
            let _ = writeln!(s, "<p class=\"fix\">{}</p>", esc(&capitalised(&fix)));
        }
        s.push_str("</div>\n");
    }
    for n in &r.diagnosis.notes {
        let _ = writeln!(s, "<p class=\"note\">Note: {}</p>", esc(n));
    }
    expectations(s, r);
    holders(s, r);
    let _ = writeln!(
        s,
        "<h3>Timeline</h3>\n<figure class=\"chart\">{}<figcaption>Sockets per state on each side, and the {} open descriptors, over the run's phases.</figcaption></figure>",
        chart::render(std::slice::from_ref(r)),
        if r.scenario.command.is_some() { "listening process's" } else { "acceptor's" }
    );
    let _ = writeln!(
        s,
        "<h3>The state machine</h3>\n<figure class=\"machine\">{}<figcaption>Each state's sockets at the end, each arrow's transitions from the kernel; stuck states drawn thick.</figcaption></figure>",
        diagram::svg(&Machine::of(r), &figures::diagram_title(r))
    );
    let _ = writeln!(s, "<h3>The ladder</h3>");
    match Ladder::of(r, None) {
        Ok(ls) => {
            let _ = writeln!(
                s,
                "<figure class=\"ladder\">{}<figcaption>One connection of each way the run's connections went: every segment from the wire, every state from the kernel.</figcaption></figure>",
                ladder::svg_all(&ls)
            );
        }
        Err(e) => {
            let _ = writeln!(s, "<p class=\"meta\">{}</p>", esc(&e.to_string()));
        }
    }
    s.push_str("</section>\n");
}

fn expectations(s: &mut String, r: &Report) {
    if r.expectations.is_empty() {
        return;
    }
    let _ = writeln!(s, "<h3>Expectations</h3>\n<table class=\"expectations\"><tr><th></th><th>expectation</th><th>observed</th></tr>");
    for e in &r.expectations {
        let (mark, class) = match (e.observable, e.passed) {
            (false, _) => ("?", "na"),
            (true, true) => ("✓", "ok"),
            (true, false) => ("✗", "no"),
        };
        let _ = writeln!(
            s,
            "<tr data-passed=\"{}\"><td class=\"{class}\">{mark}</td><td><code>{}</code></td><td>{}</td></tr>",
            e.passed,
            esc(&e.text),
            esc(&e.detail)
        );
    }
    s.push_str("</table>\n");
}

fn holders(s: &mut String, r: &Report) {
    let _ = writeln!(s, "<h3>Who holds the stuck sockets</h3>");
    if r.diagnosis.held.is_empty() {
        let _ = writeln!(s, "<p class=\"meta\">No socket is stuck at the end.</p>");
        return;
    }
    let _ = writeln!(s, "<table class=\"holders\"><tr><th>side</th><th>state</th><th>sockets</th><th>held by</th><th>processes (pid, name, fds)</th></tr>");
    for h in &r.diagnosis.held {
        let procs: Vec<String> = h
            .processes
            .iter()
            .map(|p| {
                format!("{} {} fd {}", p.pid, esc(p.name.as_deref().unwrap_or("?")), ranges(&p.fds))
            })
            .collect();
        let _ = writeln!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            h.side,
            h.state,
            h.sockets,
            h.role,
            if procs.is_empty() { "—".into() } else { procs.join("<br>") }
        );
    }
    s.push_str("</table>\n");
}

/// "fix (JVM): …" as "Fix (JVM): …".
fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next().map_or_else(String::new, |f| f.to_uppercase().chain(c).collect())
}
