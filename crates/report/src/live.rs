//! The live view of `cwlab demo`: scenarios side by side, live, for an audience. Each scenario
//! runs as its own `cwlab run --events` process, so each has its own network namespace; this
//! process only reads their events and draws. Each scenario's [`Panel`] is a [`Reporter`] fed
//! with the events and the report its run prints. On a terminal it draws with ratatui (q quits
//! and tears everything down, space pauses the view, r reruns, Enter goes on in `--step`);
//! otherwise it prints plain lines and exits with the worst verdict.

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::Duration;

use cwlab_model::events::{cue, Reporter, RunEvent, Witnessed};
use cwlab_model::report::{Phase, Report, Sample, Side};
use cwlab_model::{exit, Scenario, TcpState};
use ratatui::crossterm::event::{self, Event as Key, KeyCode, KeyEventKind};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Wrap};

type Failure = std::io::Error;

/// What one scenario's panel knows.
pub struct Panel {
    scenario: Scenario,
    phase: Phase,
    last: Option<Sample>,
    samples: Vec<Sample>,
    hold_from_ms: Option<u64>,
    report: Option<Report>,
    waiting: Option<Phase>,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    ended: bool,
    /// Plain lines about what happened, for a pipe or a log.
    said: Vec<String>,
    /// What the kernel's transitions and the wire showed so far.
    witnessed: Option<Witnessed>,
}

impl Panel {
    /// A panel for a scenario not yet started.
    pub fn new(scenario: Scenario) -> Panel {
        Panel {
            scenario,
            phase: Phase::Listen,
            last: None,
            samples: Vec::new(),
            hold_from_ms: None,
            report: None,
            waiting: None,
            child: None,
            stdin: None,
            ended: false,
            said: Vec::new(),
            witnessed: None,
        }
    }
}

/// Runs `scenarios` side by side and shows them, each run's connect and close spread over
/// `spread` (a room's pace); returns the exit code (the worst verdict, or 130 when the view was
/// quit before the runs ended).
pub fn show(scenarios: Vec<Scenario>, step: bool, spread: Duration) -> Result<i32, Failure> {
    let (tx, rx) = channel();
    let mut panels: Vec<Panel> = scenarios.into_iter().map(Panel::new).collect();
    let runs = Runs { step, spread };
    start_all(&mut panels, runs, &tx)?;
    if std::io::stdout().is_terminal() {
        live(&mut panels, runs, &tx, &rx)
    } else {
        plain(&mut panels, step, &rx)
    }
}

/// How the view starts its runs.
#[derive(Debug, Clone, Copy)]
struct Runs {
    step: bool,
    spread: Duration,
}

fn start_all(
    panels: &mut [Panel],
    Runs { step, spread }: Runs,
    tx: &Sender<(usize, Option<RunEvent>)>,
) -> Result<(), Failure> {
    let exe = std::env::current_exe()?;
    for (i, p) in panels.iter_mut().enumerate() {
        let report = Path::new("reports").join(format!("demo-{}.json", p.scenario.name));
        let mut cmd = Command::new(&exe);
        cmd.arg("run").arg(&p.scenario.file).arg("--events").arg("--report").arg(report);
        if step {
            cmd.arg("--step");
        }
        if !spread.is_zero() {
            cmd.arg("--spread").arg(format!("{}ms", spread.as_millis()));
        }
        let mut child = cmd
            .stdin(if step { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        p.stdin = child.stdin.take();
        let out = child.stdout.take().expect("piped");
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(ev) = serde_json::from_str::<RunEvent>(&line) {
                    if tx.send((i, Some(ev))).is_err() {
                        return;
                    }
                }
            }
            let _ = tx.send((i, None));
        });
        p.child = Some(child);
        p.phase = Phase::Listen;
        p.last = None;
        p.samples.clear();
        p.hold_from_ms = None;
        p.report = None;
        p.waiting = None;
        p.ended = false;
        p.witnessed = None;
    }
    Ok(())
}

impl Reporter for Panel {
    fn event(&mut self, ev: &RunEvent) {
        let name = &self.scenario.name;
        match ev {
            RunEvent::Started(s) => {
                self.said.push(format!("[{name}] listening on port {} ({})", s.port, s.isolation));
            }
            RunEvent::Phase(ph) => {
                self.phase = ph.phase;
                if ph.phase == Phase::Hold {
                    self.hold_from_ms = Some(ph.t_ms);
                }
                self.waiting = None;
                self.said.push(format!(
                    "[{name}] {} begins · last sample: {}",
                    ph.phase,
                    counts_line(self.last.as_ref())
                ));
            }
            RunEvent::Sample(s) => {
                self.samples.push(s.clone());
                self.last = Some(s.clone());
            }
            RunEvent::Witnessed(w) => self.witnessed = Some(w.clone()),
            RunEvent::Waiting(w) => {
                self.waiting = Some(w.next);
                self.said.push(format!("[{name}] next, {}: {}", w.next, cue(w.next)));
            }
            RunEvent::Report(r) => {
                let _ = self.finish(r);
            }
        }
    }

    fn finish(&mut self, r: &Report) -> std::io::Result<()> {
        let name = self.scenario.name.clone();
        self.phase = Phase::End;
        let (held, of) = r.expectations_held();
        self.said.push(format!(
            "[{name}] {} {held} of {of} expectations held · {}",
            r.verdict,
            counts_line(r.samples.last())
        ));
        for h in held_by(r) {
            self.said.push(format!("[{name}] {h}"));
        }
        if let Some(f) = r.diagnosis.primary() {
            self.said.push(format!("[{name}] {}: {}", f.kind, f.explanation));
        }
        self.report = Some(r.clone());
        Ok(())
    }
}

/// Applies one event of a run's output (`None`: the run's output ended).
fn apply(p: &mut Panel, ev: Option<RunEvent>) {
    match ev {
        Some(ev) => p.event(&ev),
        None => {
            p.ended = true;
            if let Some(c) = p.child.as_mut() {
                let _ = c.wait();
            }
            if p.report.is_none() {
                p.said.push(format!("[{}] ended without a report", p.scenario.name));
            }
        }
    }
}

fn counts_line(s: Option<&Sample>) -> String {
    let Some(s) = s else { return "no sample yet".into() };
    let mut parts = Vec::new();
    for (side, counts) in [(Side::Server, &s.server), (Side::Client, &s.client)] {
        for (st, n) in counts {
            if *st != TcpState::Listen {
                parts.push(format!("{side} {st} {n}"));
            }
        }
    }
    if parts.is_empty() {
        "no connection".into()
    } else {
        parts.join(" · ")
    }
}

fn worst(panels: &[Panel]) -> i32 {
    panels
        .iter()
        .map(|p| p.report.as_ref().map_or(exit::BAD_INPUT, Report::exit_code))
        .max()
        .unwrap_or(exit::PASS)
}

fn go_on(panels: &mut [Panel]) {
    for p in panels.iter_mut().filter(|p| p.waiting.is_some()) {
        if let Some(s) = p.stdin.as_mut() {
            let _ = s.write_all(b"\n").and_then(|()| s.flush());
        }
        p.waiting = None;
    }
}

fn stop_all(panels: &mut [Panel]) {
    for p in panels.iter_mut() {
        p.stdin.take();
        if let Some(c) = p.child.as_mut() {
            // SIGTERM: the run tears down and writes its report, marked interrupted.
            if let Some(pid) = rustix::process::Pid::from_raw(c.id() as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::Term);
            }
        }
    }
    for p in panels.iter_mut() {
        if let Some(mut c) = p.child.take() {
            let _ = c.wait();
        }
    }
}

/// Plain lines, for a pipe or a log: no escape sequences.
fn plain(
    panels: &mut [Panel],
    step: bool,
    rx: &Receiver<(usize, Option<RunEvent>)>,
) -> Result<i32, Failure> {
    let mut out = std::io::stdout().lock();
    while panels.iter().any(|p| !p.ended) {
        let Ok((i, ev)) = rx.recv() else { break };
        apply(&mut panels[i], ev);
        for line in panels[i].said.drain(..) {
            writeln!(out, "{line}")?;
        }
        if step
            && panels.iter().all(|p| p.ended || p.waiting.is_some())
            && panels.iter().any(|p| p.waiting.is_some())
        {
            let mut l = String::new();
            // A line on our stdin, or its end, lets every run go on.
            let _ = std::io::stdin().read_line(&mut l);
            go_on(panels);
        }
    }
    Ok(worst(panels))
}

fn live(
    panels: &mut [Panel],
    step: bool,
    tx: &Sender<(usize, Option<RunEvent>)>,
    rx: &Receiver<(usize, Option<RunEvent>)>,
) -> Result<i32, Failure> {
    let mut term = ratatui::try_init()?;
    let colour = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let mut paused = false;
    let mut quit = false;
    let mut pane = Pane::Expectations;
    let mut held: Vec<(usize, Option<RunEvent>)> = Vec::new();
    let result = (|| -> std::io::Result<()> {
        while !quit {
            while let Ok(ev) = rx.try_recv() {
                held.push(ev);
            }
            if !paused {
                for (i, ev) in held.drain(..) {
                    if i < panels.len() {
                        apply(&mut panels[i], ev);
                        panels[i].said.clear();
                    }
                }
            }
            term.draw(|f| draw(f, panels, paused, step, colour, pane))?;
            if event::poll(Duration::from_millis(50))? {
                if let Key::Key(k) = event::read()? {
                    if k.kind != KeyEventKind::Press {
                        continue;
                    }
                    match k.code {
                        KeyCode::Char('q') | KeyCode::Esc => quit = true,
                        KeyCode::Char(' ') => paused = !paused,
                        KeyCode::Char('l') => pane = pane.next(),
                        KeyCode::Char('r') => {
                            stop_all(panels);
                            while rx.try_recv().is_ok() {}
                            held.clear();
                            start_all(panels, step, tx)?;
                        }
                        KeyCode::Enter | KeyCode::Char('n') => go_on(panels),
                        _ => {}
                    }
                }
            }
        }
        Ok(())
    })();
    stop_all(panels);
    ratatui::restore();
    result?;
    let finished = panels.iter().all(|p| p.report.as_ref().is_some_and(|r| !r.interrupted));
    Ok(if finished { worst(panels) } else { exit::INTERRUPTED_SIGINT })
}

/// What the lower part of each column shows where the terminal is too small for all three:
/// the expectations, the ladder of the first connection, or the state machine (`l` goes on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pane {
    Expectations,
    Ladder,
    Machine,
}

impl Pane {
    fn name(self) -> &'static str {
        match self {
            Pane::Expectations => "expectations",
            Pane::Ladder => "ladder",
            Pane::Machine => "state machine",
        }
    }

    fn next(self) -> Pane {
        match self {
            Pane::Expectations => Pane::Ladder,
            Pane::Ladder => Pane::Machine,
            Pane::Machine => Pane::Expectations,
        }
    }
}

fn draw(
    f: &mut ratatui::Frame<'_>,
    panels: &[Panel],
    paused: bool,
    step: bool,
    colour: bool,
    pane: Pane,
) {
    let paint = |c: Color| if colour { Style::default().fg(c) } else { Style::default() };
    let [body, footer] =
        Layout::vertical([Constraint::Min(10), Constraint::Length(3)]).areas(f.area());
    let columns =
        Layout::horizontal(vec![Constraint::Ratio(1, panels.len().max(1) as u32); panels.len()])
            .split(body);
    for (p, area) in panels.iter().zip(columns.iter()) {
        let width = area.width.saturating_sub(2) as usize;
        let title = match &p.report {
            Some(r) => format!(" {} · {} ", p.scenario.name, r.verdict),
            None => format!(" {} · {} ", p.scenario.name, p.phase),
        };
        let mut lines: Vec<Line<'_>> = crate::text::wrap(p.scenario.headline(), width.max(10))
            .into_iter()
            .map(|l| Line::from(Span::styled(l, Style::default().add_modifier(Modifier::ITALIC))))
            .collect();
        lines.push(Line::from(format!("{:<11}{:>7}{:>7}", "", "server", "client")));
        let sample = p.report.as_ref().and_then(|r| r.samples.last()).or(p.last.as_ref());
        let clients = p.scenario.clients.count.max(1);
        for st in TcpState::ALL.iter().filter(|s| **s != TcpState::Listen) {
            let (a, b) =
                sample.map_or((0, 0), |s| (s.get(Side::Server, *st), s.get(Side::Client, *st)));
            if a + b == 0 {
                continue;
            }
            let bar_w = width.saturating_sub(26);
            let bar = "█".repeat(((a.max(b) as usize * bar_w) / clients as usize).min(bar_w));
            let c = Color::Indexed(crate::palette::ansi(*st));
            lines.push(Line::from(vec![
                Span::raw(format!("{:<11}{a:>7}{b:>7} ", st.name())),
                Span::styled(bar, paint(c)),
            ]));
        }
        let first_fds = p.samples.first().and_then(|s| s.acceptor_fds);
        if let (Some(a), Some(b)) =
            (first_fds.or(sample.and_then(|s| s.acceptor_fds)), sample.and_then(|s| s.acceptor_fds))
        {
            lines.push(Line::from(format!("acceptor fds {a} → {b}")));
        }
        if let Some(r) = &p.report {
            for h in held_by(r).into_iter().take(2) {
                lines.push(Line::from(Span::styled(h, paint(Color::Yellow))));
            }
        }
        let counts_end = lines.len();
        lines.push(Line::from(""));
        for (i, e) in p.scenario.expectations.iter().enumerate() {
            let (mark, c) = match p.report.as_ref().and_then(|r| r.expectations.get(i)) {
                Some(x) if !x.observable => ("?", Color::Gray),
                Some(x) if x.passed => ("✓", Color::Green),
                Some(_) => ("✗", Color::Red),
                None if met_so_far(p, e) => ("✓", Color::Green),
                None => ("·", Color::Gray),
            };
            let text: String = e.text.chars().take(width.saturating_sub(2)).collect();
            lines.push(Line::from(vec![
                Span::styled(format!("{mark} "), paint(c)),
                Span::raw(text),
            ]));
        }
        let block = Block::bordered().title(title);
        // Below the counts: the expectations, the ladder and the state machine, all of them
        // when the terminal is tall enough, else the one `l` chose (80×24 shows one at a time).
        let expectations = lines.split_off(counts_end);
        let width = area.width.saturating_sub(2) as usize;
        let ladder = ladder_lines(p, width, colour);
        let machine = machine_lines(p, width, colour);
        let need = |v: &Vec<Line<'_>>| v.len() as u16 + 2;
        let all =
            need(&lines) + need(&expectations) + need(&ladder).min(14) + need(&machine).min(12);
        let shown: Vec<(String, Vec<Line<'_>>)> = if area.height >= all {
            vec![
                (String::new(), expectations),
                (" ladder ".into(), ladder),
                (" state machine ".into(), machine),
            ]
        } else {
            let name = format!(" {} (l: next) ", pane.name());
            vec![(
                name,
                match pane {
                    Pane::Expectations => expectations,
                    Pane::Ladder => ladder,
                    Pane::Machine => machine,
                },
            )]
        };
        let mut heights = vec![Constraint::Length(need(&lines))];
        let n = shown.len();
        for (i, (_, v)) in shown.iter().enumerate() {
            heights.push(if i + 1 == n { Constraint::Min(0) } else { Constraint::Length(need(v)) });
        }
        let rows = Layout::vertical(heights).split(*area);
        f.render_widget(Paragraph::new(lines).block(block), rows[0]);
        for ((name, body), a) in shown.into_iter().zip(rows.iter().skip(1)) {
            // A ladder longer than its pane keeps its latest rows in view.
            let skip = body.len().saturating_sub(a.height.saturating_sub(2) as usize);
            let body: Vec<Line<'_>> =
                if name.contains("ladder") { body.into_iter().skip(skip).collect() } else { body };
            f.render_widget(Paragraph::new(body).block(Block::bordered().title(name)), *a);
        }
    }
    let waiting = panels.iter().find_map(|p| p.waiting);
    let hint = match (waiting, paused) {
        (_, true) => "paused: space to go on".to_string(),
        (Some(next), _) => format!("next, {next}: {}", cue(next)),
        (None, _) if panels.iter().all(|p| p.report.is_some()) => "done".to_string(),
        _ => String::new(),
    };
    let keys = if step {
        "q quit · space pause · r rerun · l expectations/ladder/machine · Enter next step"
    } else {
        "q quit · space pause · r rerun · l expectations/ladder/machine"
    };
    f.render_widget(
        Paragraph::new(vec![
            Line::from(hint),
            Line::from(Span::styled(keys, paint(Color::DarkGray))),
        ])
        .wrap(Wrap { trim: true }),
        footer,
    );
}

/// The ladder of the run's first connection, filling in as the witnesses see it; the report's
/// representative once the run has ended. Fitted to `width` columns: the time goes first when
/// there is no room for it.
fn ladder_lines(p: &Panel, width: usize, colour: bool) -> Vec<Line<'static>> {
    use cwlab_model::ladder::Ladder;
    let ladder = match (&p.report, p.witnessed.as_ref().and_then(|w| w.connection.as_ref())) {
        (Some(r), _) => Ladder::representative(r),
        (None, Some(c)) => Some(Ladder::so_far(c)),
        (None, None) => None,
    };
    let Some(l) = ladder else {
        return vec![Line::from("(no connection yet, or no witness)")];
    };
    let state_w = 10;
    let timed = width >= 2 * state_w + 30;
    let arrow_w = width.saturating_sub(2 * state_w + 2 + if timed { 9 } else { 0 }).max(8);
    let style = |st: TcpState| {
        if colour {
            Style::default().fg(Color::Indexed(crate::palette::ansi(st)))
        } else {
            Style::default()
        }
    };
    let mut out = vec![Line::from(format!(":{}", l.client_port))];
    for row in &l.rows {
        let mut spans = Vec::new();
        if timed {
            spans.push(Span::raw(format!("{:>8.1} ", row.t_ms)));
        }
        let cell = |st: Option<TcpState>| match st {
            Some(st) => Span::styled(format!("{:<state_w$}", st.name()), style(st)),
            None => Span::raw(" ".repeat(state_w)),
        };
        spans.push(cell(row.client));
        let arrow = match &row.arrow {
            Some(a) => {
                let label: String = a.label.chars().take(arrow_w.saturating_sub(4)).collect();
                let fill = "─".repeat(arrow_w.saturating_sub(label.chars().count() + 3));
                match a.from {
                    Side::Client => format!("─{label}{fill}►"),
                    Side::Server => format!("◄{fill}{label}─"),
                }
            }
            None => " ".repeat(arrow_w - 1),
        };
        let fin = row.arrow.as_ref().is_some_and(|a| a.fin);
        let arrow_style =
            if fin { Style::default().add_modifier(Modifier::BOLD) } else { Style::default() };
        spans.push(Span::raw(" "));
        spans.push(Span::styled(arrow, arrow_style));
        spans.push(Span::raw(" "));
        spans.push(cell(row.server));
        out.push(Line::from(spans));
    }
    for e in &l.end {
        for w in crate::text::wrap(e, width.saturating_sub(2).max(10)) {
            out.push(Line::from(Span::styled(
                w,
                if colour { Style::default().fg(Color::Red) } else { Style::default() },
            )));
        }
    }
    // The latest rows matter most: keep the end in view.
    out
}

/// The state machine so far: the last sample's counts and the transitions seen.
fn machine_lines(p: &Panel, width: usize, colour: bool) -> Vec<Line<'static>> {
    use cwlab_model::machine::Machine;
    let m = match &p.report {
        Some(r) => Machine::of(r),
        None => {
            let counts = p.witnessed.as_ref().map(|w| w.counts.clone()).unwrap_or_default();
            let last = p.last.clone();
            Machine::build(
                |side, st| last.as_ref().map_or(0, |s| s.get(side, st)),
                |side, from, to| {
                    counts
                        .iter()
                        .filter(|c| c.side == side && c.from == from && c.to == to)
                        .map(|c| c.connections)
                        .sum()
                },
                counts.iter().map(|c| (c.from, c.to)),
                p.witnessed.is_some(),
                0,
            )
        }
    };
    crate::diagram::text_in(&m, false, width)
        .lines()
        .map(|line| {
            let st = m.nodes.iter().map(|n| n.state).find(|st| {
                line.trim_start().starts_with(st.name())
                    && line.starts_with("  ")
                    && !line.starts_with("   ")
            });
            match st {
                Some(st) if colour => Line::from(Span::styled(
                    line.to_string(),
                    Style::default().fg(Color::Indexed(crate::palette::ansi(st))),
                )),
                _ => Line::from(line.to_string()),
            }
        })
        .collect()
}

/// Whether a `within`/`for` expectation on socket counts is already met by the samples so far:
/// it turns ✓ during the hold, before the report.
fn met_so_far(p: &Panel, e: &cwlab_model::Expectation) -> bool {
    use cwlab_model::expect::{evaluate, Evidence, Quantity, Window};
    let Some(hold_from_ms) = p.hold_from_ms else { return false };
    if matches!(e.window, Window::End) || e.quantity.end_only() {
        return false;
    }
    if !matches!(e.quantity, Quantity::Sockets(..)) {
        return false;
    }
    let ev = Evidence::of_samples(&p.samples, hold_from_ms, p.scenario.clients.count);
    evaluate(e, &ev).passed
}

/// "100 server CLOSE-WAIT held by acceptor" lines, from the report's diagnosis.
fn held_by(r: &Report) -> Vec<String> {
    r.diagnosis
        .held
        .iter()
        .map(|h| format!("{} {} {} held by {}", h.sockets, h.side, h.state, h.role))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cwlab_model::evidence::{ConnectionTrace, Step};
    use ratatui::backend::TestBackend;

    fn panel() -> Panel {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let scenario = Scenario::load(&root.join("scenarios/leak.toml")).unwrap();
        let text = include_str!("../../../tests/fixtures/report-template.json");
        let mut r: Report = serde_json::from_str(text).unwrap();
        let seg =
            |t_us, side, flags: &str| Step::Segment { t_us, side, flags: flags.into(), len: 0 };
        r.connections = vec![ConnectionTrace {
            client_port: 42334,
            like_it: 100,
            steps: vec![
                seg(100, Side::Client, "SYN"),
                seg(110, Side::Server, "SYN,ACK"),
                seg(50_005, Side::Client, "FIN,ACK"),
                Step::State {
                    t_us: 50_010,
                    side: Side::Server,
                    from: TcpState::Established,
                    to: TcpState::CloseWait,
                },
            ],
        }];
        r.transitions.available = true;
        r.transitions.counts = vec![cwlab_model::evidence::TransitionCount {
            side: Side::Server,
            from: TcpState::Established,
            to: TcpState::CloseWait,
            connections: 100,
        }];
        r.packets.available = true;
        let mut p = Panel::new(scenario);
        p.report = Some(r);
        p
    }

    fn screen(panels: &[Panel], w: u16, h: u16, pane: Pane) -> String {
        let mut term = ratatui::Terminal::new(TestBackend::new(w, h)).unwrap();
        term.draw(|f| draw(f, panels, false, false, false, pane)).unwrap();
        let buf = term.backend().buffer().clone();
        (0..h)
            .map(|y| (0..w).map(|x| buf[(x, y)].symbol().to_string()).collect::<String>())
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn at_80_by_24_expectations_ladder_and_machine_take_turns() {
        let panels = [panel(), panel()];
        let s = screen(&panels, 80, 24, Pane::Expectations);
        assert!(s.contains("expectations (l: next)") && s.contains("CLOSE-WAIT"), "{s}");
        let s = screen(&panels, 80, 24, Pane::Ladder);
        assert!(s.contains("ladder (l: next)") && s.contains("─FIN,ACK"), "{s}");
        let s = screen(&panels, 80, 24, Pane::Machine);
        assert!(s.contains("state machine (l: next)") && s.contains("→ CLOSE-WAIT"), "{s}");
    }

    #[test]
    fn a_tall_terminal_shows_all_three() {
        let s = screen(&[panel(), panel()], 160, 70, Pane::Expectations);
        assert!(s.contains(" ladder ") && s.contains(" state machine "), "{s}");
        assert!(s.contains("─SYN") && s.contains("→ CLOSE-WAIT"), "{s}");
    }
}
