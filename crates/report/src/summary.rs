//! The human summary of a report: the story, final counts per side and state, who holds the stuck
//! sockets, what the acceptor's descriptors did, the diagnosis with its fix, what the kernel and
//! the wire saw, each expectation, the verdict. Everything it says that is a reading of the run
//! comes from the report's [`Diagnosis`](cwlab_model::diagnosis::Diagnosis).

use std::collections::VecDeque;
use std::fmt::Write;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use cwlab_model::diagnosis::Held;
use cwlab_model::events::Reporter;
use cwlab_model::report::{Report, Role, Side, Verdict};
use cwlab_model::scenario::Topology;
use cwlab_model::TcpState;

use crate::text::{ranges, wrap};

/// Prints each report's summary on stdout, a blank line between two.
pub struct Summary {
    /// Where each report was written, in the order the runs finish.
    paths: VecDeque<PathBuf>,
    printed: usize,
    ladder: bool,
    /// Runs that passed, and those that did not (failed or could not finish).
    tally: (usize, usize),
}

impl Summary {
    /// A summary for runs whose reports go to `paths`, in order.
    pub fn new(paths: Vec<PathBuf>) -> Summary {
        Summary { paths: paths.into(), printed: 0, ladder: true, tally: (0, 0) }
    }

    /// Without the ladder of the representative connection (`--ladder` prints the ladders).
    pub fn without_ladder(mut self) -> Summary {
        self.ladder = false;
        self
    }
}

impl Reporter for Summary {
    fn finish(&mut self, r: &Report) -> io::Result<()> {
        let path = self.paths.pop_front().unwrap_or_default();
        let sep = if self.printed > 0 { "\n" } else { "" };
        self.printed += 1;
        let mut out = io::stdout().lock();
        let colour = crate::palette::terminal_colour();
        write!(out, "{sep}{}", render_with(r, &path, self.ladder.then_some(colour)))?;
        match r.verdict {
            Verdict::Pass => self.tally.0 += 1,
            _ => self.tally.1 += 1,
        }
        out.flush()
    }

    /// Several runs end with one line that counts them: `scenarios: 19 passed, 1 failed` (a run
    /// that could not finish counts as failed).
    fn close(&mut self) -> io::Result<()> {
        if self.printed > 1 {
            let mut out = io::stdout().lock();
            writeln!(out, "\nscenarios: {} passed, {} failed", self.tally.0, self.tally.1)?;
            out.flush()?;
        }
        Ok(())
    }
}

/// The whole summary of one report, plain.
pub fn render(r: &Report, report_path: &Path) -> String {
    render_with(r, report_path, Some(false))
}

/// The whole summary of one report, with the representative connection's ladder when `ladder`
/// is given (`Some(true)` paints its states).
pub fn render_with(r: &Report, report_path: &Path, ladder: Option<bool>) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "━━ {} ━━ {}", r.scenario.name, r.scenario.file);
    for line in wrap(&r.scenario.story, 76) {
        let _ = writeln!(s, "  {line}");
    }
    let server = match (&r.scenario.command, r.acceptor.runtime) {
        (Some(argv), Some(rt)) => format!("`{}` ({rt})", argv.join(" ")),
        (Some(argv), None) => format!("`{}`", argv.join(" ")),
        (None, _) => r.scenario.behaviour.clone(),
    };
    let at = match (&r.address, &r.dialed) {
        (Some(a), Some(d)) => format!("{a} (dialed {d})"),
        (Some(a), None) => a.clone(),
        (None, _) => format!("port {}", r.port),
    };
    match &r.client {
        Some(c) => {
            let rt = c.runtime.map_or(String::new(), |rt| format!(" ({rt})"));
            let _ = writeln!(
                s,
                "\n  client `{}`{rt} · {} requests answered · {} · the lab's {server} server on port {} · {}",
                c.command.join(" "),
                c.requests,
                c.exited.as_deref().unwrap_or("still running"),
                r.port,
                r.isolation
            );
        }
        None => {
            let _ = writeln!(
                s,
                "\n  server {server} · {} · {at} · {}",
                r.client_outcome.summary(r.clients),
                r.isolation
            );
        }
    }
    if let Some(note) = &r.isolation_note {
        let _ = writeln!(s, "  note: {note}");
    }
    if r.topology == Topology::TwoHosts {
        let (client, server) = (Topology::CLIENT_HOST, Topology::SERVER_HOST);
        let _ = writeln!(
            s,
            "  two hosts: clients on {client}, the server on {server}, a veth pair between; each side counted on its own host"
        );
    }
    if let Some(e) = &r.client_outcome.first_error {
        let _ = writeln!(s, "  first client error: {e}");
    }
    counts(&mut s, r);
    holders(&mut s, r);
    fds(&mut s, r);
    waves(&mut s, r);
    findings(&mut s, r);
    if !r.server_output.is_empty() {
        let _ = writeln!(s, "\n  the server's last lines");
        for l in &r.server_output {
            let _ = writeln!(s, "    | {l}");
        }
    }
    witnesses(&mut s, r);
    let one =
        ladder.and_then(|colour| Some((colour, cwlab_model::ladder::Ladder::representative(r)?)));
    if let Some((colour, l)) = one {
        let _ =
            writeln!(s, "\n  the ladder of one connection (cwlab run --ladder: one of each way)");
        s.push_str(&crate::ladder::text(&l, colour));
    }
    expectations(&mut s, r, report_path);
    s
}

fn counts(s: &mut String, r: &Report) {
    let _ = writeln!(s, "\n  {:<12}{:>8}{:>8}", "at the end", "server", "client");
    let f = &r.final_counts;
    for st in TcpState::ALL {
        let (a, b) = (f.get(Side::Server, st), f.get(Side::Client, st));
        if a + b > 0 {
            let _ = writeln!(s, "  {:<12}{a:>8}{b:>8}", st.name());
        }
    }
    if f.server.is_empty() && f.client.is_empty() {
        let _ = writeln!(s, "  (no socket on the port)");
    }
}

fn holders(s: &mut String, r: &Report) {
    if r.diagnosis.held.is_empty() {
        return;
    }
    let _ = writeln!(s, "\n  who holds the stuck sockets");
    for h in &r.diagnosis.held {
        let _ = writeln!(s, "    {}", held_line(h, &role_name(r, h.role)));
    }
}

/// A role as this report's reader knows it: a user's server has a listening process where the
/// lab's has an acceptor.
fn role_name(r: &Report, role: Role) -> String {
    match (role, &r.scenario.command) {
        (Role::Acceptor, Some(_)) => "listening process".into(),
        _ => role.to_string(),
    }
}

/// "100 server CLOSE-WAIT sockets held by pid 4158, the acceptor, fds 4–103".
pub fn held_line(h: &Held, role: &str) -> String {
    let Held { side, state, sockets, processes, .. } = h;
    let noun = if *sockets == 1 { "socket" } else { "sockets" };
    let who = match (h.role, processes.as_slice()) {
        (_, []) => "held by nobody".to_string(),
        (_, [p]) => format!(
            "held by pid {}, the {role}, {} {}",
            p.pid,
            if p.fds.len() == 1 { "fd" } else { "fds" },
            ranges(&p.fds)
        ),
        (_, many) => {
            let list: Vec<String> = many.iter().take(4).map(|p| p.pid.to_string()).collect();
            let more = if many.len() > 4 { ", …" } else { "" };
            format!(
                "held by {} {role}{} (pids {}{more})",
                many.len(),
                if role.ends_with("process") { "es" } else { " processes" },
                list.join(", ")
            )
        }
    };
    format!("{sockets} {side} {state} {noun} {who}")
}

fn fds(s: &mut String, r: &Report) {
    let (Some(before), Some(after)) = (r.acceptor.fds_baseline, r.acceptor.fds_end) else {
        return;
    };
    if r.client.is_some() {
        // The lab's own server: its descriptors are not what a client check is about.
        return;
    }
    let grew = i64::from(after) - i64::from(before);
    let _ = writeln!(
        s,
        "\n  {} (pid {}) fds: {before} before the clients, {after} at the end ({grew:+})",
        role_name(r, Role::Acceptor),
        r.acceptor.pid
    );
}

/// What the waves measured: "listening process fds 7 → 55 → 103, server CLOSE-WAIT 0 → 48 → 96".
fn waves(s: &mut String, r: &Report) {
    let Some(w) = &r.waves else { return };
    if w.waves.is_empty() {
        return;
    }
    if r.client.is_some() {
        // No descriptor line above it: the lab's server is not what is checked.
        s.push('\n');
    }
    if w.bursts {
        let after = std::iter::once(&w.baseline).chain(w.waves.iter().map(|w| &w.after));
        let cw: Vec<String> = after.map(|m| m.client_close_wait.to_string()).collect();
        let _ = writeln!(
            s,
            "  after each burst of {} requests: client CLOSE-WAIT {}",
            w.waves[0].connections,
            cw.join(" → ")
        );
        return;
    }
    let points = std::iter::once(&w.baseline).chain(w.waves.iter().map(|w| &w.after));
    let (fds, cw): (Vec<String>, Vec<String>) = points
        .map(|m| (m.fds.map_or("?".into(), |n| n.to_string()), m.close_wait.to_string()))
        .unzip();
    let sizes: Vec<String> = w.waves.iter().map(|w| w.connections.to_string()).collect();
    let _ = writeln!(
        s,
        "  after a warm-up of {} and waves of {}: {} fds {}, server CLOSE-WAIT {}",
        w.warmup,
        sizes.join(", "),
        role_name(r, Role::Acceptor),
        fds.join(" → "),
        cw.join(" → ")
    );
}

/// Each finding: why, who (a user's server's holders by command line), and the fix.
fn findings(s: &mut String, r: &Report) {
    for f in &r.diagnosis.findings {
        let _ = writeln!(s, "  → {}", f.explanation);
        let shown = f.holders.iter().filter(|p| p.command.is_some()).take(3);
        for p in shown {
            let _ = writeln!(
                s,
                "    pid {} `{}` ({}), {} {}",
                p.pid,
                p.command.as_deref().unwrap_or(""),
                role_name(r, p.role),
                if p.fds.len() == 1 { "fd" } else { "fds" },
                ranges(&p.fds)
            );
        }
        if f.holders.len() > 3 && f.holders.iter().any(|p| p.command.is_some()) {
            let _ = writeln!(s, "    … and {} more processes", f.holders.len() - 3);
        }
        if let Some(e) = &f.evidence {
            let _ = writeln!(s, "    evidence: {e}");
        }
        if let Some(fix) = f.fix_line() {
            let _ = writeln!(s, "    {fix}");
        }
    }
    for n in &r.diagnosis.notes {
        let _ = writeln!(s, "  note: {n}");
    }
}

/// The kernel's transitions (paths, the first connections step by step) and the FIN counts.
fn witnesses(s: &mut String, r: &Report) {
    let t = &r.transitions;
    let _ = writeln!(s, "\n  what the kernel did");
    if t.available {
        let m = cwlab_model::machine::Machine::of(r);
        for p in &t.paths {
            let _ = writeln!(s, "    {} {} × {}", p.side, p.connections, path_text(&m, p));
        }
        if t.handed_to_timewait() {
            let _ = writeln!(
                s,
                "    (⇒: handed to a timewait socket, in the state the table shows; the tracepoint says → CLOSE)"
            );
        }
        if t.lost > 0 {
            let _ = writeln!(s, "    ({} transitions lost: the counts are lower bounds)", t.lost);
        }
    } else {
        let _ =
            writeln!(s, "    transitions: not observable ({})", t.note.as_deref().unwrap_or("?"));
    }
    let p = &r.packets;
    if p.available {
        let n = p.connections;
        let _ = writeln!(
            s,
            "    server sent FIN: {} of {n} connections · client sent FIN: {} of {n}",
            p.sent(Side::Server, "FIN"),
            p.sent(Side::Client, "FIN")
        );
        let rst = (p.sent(Side::Server, "RST"), p.sent(Side::Client, "RST"));
        if rst != (0, 0) {
            let _ = writeln!(s, "    RST: server in {} connections, client in {}", rst.0, rst.1);
        }
        if let Some(f) = &p.pcap {
            let _ = writeln!(s, "    packets: {f}");
        }
    } else {
        let _ = writeln!(s, "    packets: not observable ({})", p.note.as_deref().unwrap_or("?"));
    }
}

/// A path from ESTAB on as the kernel reported it, its hand-over to a timewait socket written
/// as the state that socket is in (`⇒ TIME-WAIT`), as the ladder and the machine draw it.
fn path_text(m: &cwlab_model::machine::Machine, p: &cwlab_model::evidence::PathCount) -> String {
    use cwlab_model::machine::Place;
    use TcpState::{Close, Closing, FinWait1, FinWait2, TimeWait};
    let names: Vec<&str> = p.path.iter().map(|x| x.name()).collect();
    let handed = match p.path.as_slice() {
        [.., FinWait1 | Closing, Close] => Some(TimeWait.name().to_string()),
        [.., FinWait2, Close] => {
            let went = |to| m.arrow(Place::Full(FinWait2), to).map_or(0, |e| e.on(p.side));
            match (went(Place::Timewait(TimeWait)), went(Place::Timewait(FinWait2))) {
                (_, 0) => Some(TimeWait.name().to_string()),
                (0, _) => Some(FinWait2.name().to_string()),
                _ => Some(format!("{} or {}", TimeWait.name(), FinWait2.name())),
            }
        }
        _ => None,
    };
    match handed {
        Some(st) => format!("{} ⇒ {st} (timewait)", names[..names.len() - 1].join(" → ")),
        None => names.join(" → "),
    }
}

fn expectations(s: &mut String, r: &Report, path: &Path) {
    if !r.expectations.is_empty() {
        let _ = writeln!(s, "\n  expectations");
        let width = r.expectations.iter().map(|e| e.text.chars().count()).max().unwrap_or(0);
        for e in &r.expectations {
            let mark = match (e.observable, e.passed) {
                (false, _) => "?",
                (true, true) => "✓",
                (true, false) => "✗",
            };
            let _ = writeln!(s, "    {mark} {:width$}   {}", e.text, e.detail);
        }
    }
    if let Some(e) = &r.error {
        let _ = writeln!(s, "\n  error: {e}");
    }
    let (held, of) = r.expectations_held();
    let _ = writeln!(
        s,
        "\n  {}  {held} of {of} expectations held · {:.2}s · report {}",
        r.verdict,
        r.duration_ms as f64 / 1000.0,
        path.display()
    );
}
