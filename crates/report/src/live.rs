//! The live view of `cwlab demo`: scenarios side by side, live, for an audience. Each scenario's
//! [`Panel`] is a [`Reporter`] fed with the events and the report its run prints; the runs
//! themselves are the caller's ([`Runs`]: `cwlab demo` runs each as its own `cwlab run --events`
//! process, so each has its own network namespace), and this module only reads their events and
//! draws. On a terminal it draws with ratatui (q quits and tears everything down, space pauses
//! the view, r reruns, Enter goes on in `--step`); otherwise it prints plain lines and exits with
//! the worst verdict.

use std::io::{IsTerminal, Write};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::Duration;

use cwlab_model::events::{cue, Reporter, RunEvent, Witnessed};
use cwlab_model::report::{Phase, Report, Sample, Side};
use cwlab_model::{exit, Scenario, TcpState};
use ratatui::crossterm::event::{self, Event as Key, KeyCode, KeyEventKind};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph};

type Failure = std::io::Error;

/// Where the runs' events arrive: `(i, Some(event))` for each event of run `i` (the scenario
/// of the `i`-th panel), then `(i, None)` once its output has ended.
pub type Feed = Sender<(usize, Option<RunEvent>)>;

/// The runs the view shows, one per scenario, in the order of the scenarios: started, moved on
/// and stopped by the caller, which owns them (`cwlab demo`'s processes). The view only draws
/// and takes the keys.
pub trait Runs {
    /// Starts every run (again, after [`Runs::stop`]); each one's events go to `feed`.
    fn start(&mut self, feed: &Feed) -> std::io::Result<()>;
    /// Lets run `i`, which waits before its next phase (`--step`), go on.
    fn go_on(&mut self, i: usize);
    /// Run `i`'s output has ended: waits for the run to end.
    fn ended(&mut self, i: usize);
    /// Stops every run (each writes its report, marked interrupted) and waits for them.
    fn stop(&mut self);
}

/// What one scenario's panel knows.
pub struct Panel {
    scenario: Scenario,
    phase: Phase,
    last: Option<Sample>,
    samples: Vec<Sample>,
    hold_from_ms: Option<u64>,
    report: Option<Report>,
    waiting: Option<Phase>,
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
            ended: false,
            said: Vec::new(),
            witnessed: None,
        }
    }

    /// Back to a run about to start (a rerun): nothing seen yet.
    fn restart(&mut self) {
        self.phase = Phase::Listen;
        self.last = None;
        self.samples.clear();
        self.hold_from_ms = None;
        self.report = None;
        self.waiting = None;
        self.ended = false;
        self.witnessed = None;
    }
}

/// Shows `scenarios` side by side as `runs` (one per scenario, in order) goes; `step` when the
/// runs wait before each phase. Returns the exit code (the worst verdict, or 130 when the view
/// was quit before the runs ended).
pub fn show(scenarios: Vec<Scenario>, step: bool, runs: &mut dyn Runs) -> Result<i32, Failure> {
    let (tx, rx) = channel();
    let mut panels: Vec<Panel> = scenarios.into_iter().map(Panel::new).collect();
    start_all(&mut panels, runs, &tx)?;
    if std::io::stdout().is_terminal() {
        live(&mut panels, step, runs, &tx, &rx)
    } else {
        plain(&mut panels, step, runs, &rx)
    }
}

fn start_all(panels: &mut [Panel], runs: &mut dyn Runs, tx: &Feed) -> Result<(), Failure> {
    panels.iter_mut().for_each(Panel::restart);
    runs.start(tx)
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

/// Applies one event of run `i`'s output (`None`: the run's output ended).
fn apply(panels: &mut [Panel], runs: &mut dyn Runs, i: usize, ev: Option<RunEvent>) {
    let Some(p) = panels.get_mut(i) else { return };
    match ev {
        Some(ev) => p.event(&ev),
        None => {
            p.ended = true;
            runs.ended(i);
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

fn go_on(panels: &mut [Panel], runs: &mut dyn Runs) {
    for (i, p) in panels.iter_mut().enumerate().filter(|(_, p)| p.waiting.is_some()) {
        runs.go_on(i);
        p.waiting = None;
    }
}

/// Plain lines, for a pipe or a log: no escape sequences.
fn plain(
    panels: &mut [Panel],
    step: bool,
    runs: &mut dyn Runs,
    rx: &Receiver<(usize, Option<RunEvent>)>,
) -> Result<i32, Failure> {
    let mut out = std::io::stdout().lock();
    while panels.iter().any(|p| !p.ended) {
        let Ok((i, ev)) = rx.recv() else { break };
        apply(panels, runs, i, ev);
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
            go_on(panels, runs);
        }
    }
    Ok(worst(panels))
}

fn live(
    panels: &mut [Panel],
    step: bool,
    runs: &mut dyn Runs,
    tx: &Feed,
    rx: &Receiver<(usize, Option<RunEvent>)>,
) -> Result<i32, Failure> {
    let mut term = ratatui::try_init()?;
    let colour = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let mut paused = false;
    let mut quit = false;
    let mut view = View { colour, pane: Pane::Expectations };
    let mut held: Vec<(usize, Option<RunEvent>)> = Vec::new();
    let result = (|| -> std::io::Result<()> {
        while !quit {
            while let Ok(ev) = rx.try_recv() {
                held.push(ev);
            }
            if !paused {
                for (i, ev) in held.drain(..) {
                    if i < panels.len() {
                        apply(panels, runs, i, ev);
                        panels[i].said.clear();
                    }
                }
            }
            term.draw(|f| draw(f, panels, paused, step, view))?;
            if event::poll(Duration::from_millis(50))? {
                if let Key::Key(k) = event::read()? {
                    if k.kind != KeyEventKind::Press {
                        continue;
                    }
                    match k.code {
                        KeyCode::Char('q') | KeyCode::Esc => quit = true,
                        KeyCode::Char(' ') => paused = !paused,
                        KeyCode::Char('l') => view.pane = view.pane.next(),
                        KeyCode::Char('s') => {
                            view.pane = if view.pane == Pane::Story {
                                Pane::Expectations
                            } else {
                                Pane::Story
                            }
                        }
                        KeyCode::Char('r') => {
                            runs.stop();
                            while rx.try_recv().is_ok() {}
                            held.clear();
                            start_all(panels, runs, tx)?;
                        }
                        KeyCode::Enter | KeyCode::Char('n') => go_on(panels, runs),
                        _ => {}
                    }
                }
            }
        }
        Ok(())
    })();
    runs.stop();
    ratatui::restore();
    result?;
    let finished = panels.iter().all(|p| p.report.as_ref().is_some_and(|r| !r.interrupted));
    Ok(if finished { worst(panels) } else { exit::INTERRUPTED_SIGINT })
}

/// What a column shows under its counts, first: the expectations, the ladder of the first
/// connection, or the state machine (`l` goes on); the others follow as far as the height goes.
/// `s` shows the whole story instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pane {
    Expectations,
    Ladder,
    Machine,
    Story,
}

impl Pane {
    fn name(self) -> &'static str {
        match self {
            Pane::Expectations => "expectations",
            Pane::Ladder => "ladder",
            Pane::Machine => "state machine",
            Pane::Story => "story",
        }
    }

    /// The pane `l` goes to.
    fn next(self) -> Pane {
        match self {
            Pane::Expectations => Pane::Ladder,
            Pane::Ladder => Pane::Machine,
            Pane::Machine | Pane::Story => Pane::Expectations,
        }
    }

    /// The panes in the order a column fills its height with them, this one first.
    fn order(self) -> Vec<Pane> {
        match self {
            Pane::Story => vec![Pane::Story],
            _ => {
                let all = [Pane::Expectations, Pane::Ladder, Pane::Machine];
                let at = all.iter().position(|p| *p == self).unwrap_or(0);
                all.iter().cycle().skip(at).take(3).copied().collect()
            }
        }
    }
}

/// How a column is drawn: colours or not, and what it shows first.
#[derive(Debug, Clone, Copy)]
struct View {
    colour: bool,
    pane: Pane,
}

impl View {
    /// No colour: for measuring.
    const PLAIN: View = View { colour: false, pane: Pane::Expectations };

    fn paint(self, c: Color) -> Style {
        if self.colour {
            Style::default().fg(c)
        } else {
            Style::default()
        }
    }
}

fn draw(f: &mut ratatui::Frame<'_>, panels: &[Panel], paused: bool, step: bool, view: View) {
    let [body, footer] =
        Layout::vertical([Constraint::Min(10), Constraint::Length(2)]).areas(f.area());
    let columns =
        Layout::horizontal(vec![Constraint::Ratio(1, panels.len().max(1) as u32); panels.len()])
            .split(body);
    for (p, area) in panels.iter().zip(columns.iter()) {
        column(f, p, *area, view);
    }
    let waiting = panels.iter().find_map(|p| p.waiting);
    let hint = match (waiting, paused) {
        (_, true) => "paused: space to go on".to_string(),
        (Some(next), _) => format!("next, {next}: {}", cue(next)),
        (None, _) if panels.iter().all(|p| p.report.is_some()) => "done".to_string(),
        _ => String::new(),
    };
    let keys = if step {
        "q quit · space pause · r rerun · l next view · s story · Enter next step"
    } else {
        "q quit · space pause · r rerun · l next view · s story"
    };
    f.render_widget(
        Paragraph::new(vec![
            Line::from(fold(&hint, footer.width as usize)),
            Line::from(Span::styled(
                fold(keys, footer.width as usize),
                view.paint(Color::DarkGray),
            )),
        ]),
        footer,
    );
}

/// One scenario's column: a frame titled with its name and phase (its verdict at the end), the
/// story's first line, the counts now, then the panes as far as the height goes, each under a
/// rule with its name.
fn column(f: &mut ratatui::Frame<'_>, p: &Panel, area: ratatui::layout::Rect, view: View) {
    let title = match &p.report {
        Some(r) => format!(" {} · {} ", p.scenario.name, r.verdict),
        None => format!(" {} · {} ", p.scenario.name, p.phase),
    };
    let block = Block::bordered().title(title);
    let inner = block.inner(area);
    f.render_widget(block, area);
    let width = inner.width as usize;
    let mut lines = counts_lines(p, width, view);
    let room = (inner.height as usize).saturating_sub(lines.len());
    for (pane, height) in share(p, view.pane.order(), width, room) {
        let body = pane_lines(p, pane, width, height, view);
        let hint = if pane == view.pane { " (l: next)" } else { "" };
        let name = format!("─ {}{hint} ", pane.name());
        let rule = format!("{name}{}", "─".repeat(width.saturating_sub(name.chars().count())));
        lines.push(Line::from(Span::styled(rule, view.paint(Color::DarkGray))));
        lines.extend(body);
    }
    f.render_widget(Paragraph::new(lines), inner);
}

/// The rows each pane gets of `room` (each pane also takes a row for its rule): all it would
/// show where everything fits; else each its compact form (the ladder from its FIN, the
/// machine's boxes, an expectation a line) and what is left to the first ones; else as many
/// panes as fit, in order, the last cut to what is left.
fn share(p: &Panel, order: Vec<Pane>, width: usize, room: usize) -> Vec<(Pane, usize)> {
    let sized: Vec<(Pane, usize, usize)> = order
        .into_iter()
        .map(|pane| {
            let natural = pane_lines(p, pane, width, usize::MAX / 4, View::PLAIN).len();
            (pane, natural, compact(p, pane).min(natural))
        })
        .filter(|(_, natural, _)| *natural > 0)
        .collect();
    let need =
        |f: fn(&(Pane, usize, usize)) -> usize| sized.iter().map(|x| f(x) + 1).sum::<usize>();
    if need(|x| x.1) <= room {
        return sized.iter().map(|(pane, n, _)| (*pane, *n)).collect();
    }
    // The first pane whole where it fits, else compact; then the others compact, in order, as
    // far as they fit; what is left goes to the first ones.
    let first_whole = sized.first().is_some_and(|(_, n, _)| *n < room);
    let sized: Vec<(Pane, usize, usize)> = sized
        .into_iter()
        .enumerate()
        .map(|(i, (pane, n, c))| (pane, n, if i == 0 && first_whole { n } else { c }))
        .collect();
    // The panes whose compact forms fit, in order, then what is left to the first ones; the
    // first pane alone gets all the room where even its compact form does not fit.
    let mut left = room;
    let mut out: Vec<(Pane, usize, usize)> = Vec::new();
    for (pane, n, c) in sized {
        if c < left {
            left -= c + 1;
            out.push((pane, n, c));
        } else if out.is_empty() && left >= 4 {
            out.push((pane, left - 1, left - 1));
            left = 0;
        }
    }
    out.into_iter()
        .map(|(pane, n, c)| {
            let more = (n - c).min(left);
            left -= more;
            (pane, c + more)
        })
        .collect()
}

/// The fewest rows a pane shows its point in: the ladder from its first FIN with its end
/// folded, the machine's boxes, the story's first lines, an expectation a line.
fn compact(p: &Panel, pane: Pane) -> usize {
    match pane {
        Pane::Expectations => p.scenario.expectations.len(),
        Pane::Story => 4,
        Pane::Ladder => {
            let Some(l) = p.report.as_ref().and_then(cwlab_model::ladder::Ladder::representative)
            else {
                return 6;
            };
            let fin = l.rows.iter().position(|r| r.arrow.as_ref().is_some_and(|a| a.fin));
            2 + l.rows.len() - fin.unwrap_or(l.rows.len().saturating_sub(3)) + l.end.len()
        }
        Pane::Machine => {
            let m = machine(p);
            1 + crate::diagram::text_rows(&m, false).iter().filter(|r| r.state.is_some()).count()
        }
    }
}

/// `text` in one line of `width` columns: cut with `…` where it is longer.
fn fold(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let mut s: String = text.chars().take(width.saturating_sub(1)).collect();
    s.push('…');
    s
}

/// The top of a column: the story's first line (folded: `s` shows it all), each state's sockets
/// now on both sides with a bar (marked ✗ at the end where they are stuck), the acceptor's
/// descriptors and who holds what is stuck.
fn counts_lines(p: &Panel, width: usize, view: View) -> Vec<Line<'static>> {
    use cwlab_model::machine::Machine;
    let italic = Style::default().add_modifier(Modifier::ITALIC);
    let mut lines = vec![Line::from(Span::styled(fold(p.scenario.headline(), width), italic))];
    lines.push(Line::from(format!("{:<11}{:>7}{:>7}", "", "server", "client")));
    let sample = p.report.as_ref().and_then(|r| r.samples.last()).or(p.last.as_ref());
    let now = |side, st| match &p.report {
        Some(r) => r.final_counts.get(side, st),
        None => sample.map_or(0, |s| s.get(side, st)),
    };
    let machine = p.report.as_ref().map(Machine::of);
    let stuck = |side: Side, st: TcpState| {
        machine.as_ref().is_some_and(|m| m.nodes.iter().any(|n| n.state() == st && n.on(side).1))
    };
    let clients = p.scenario.clients.count.max(1);
    for st in TcpState::ALL.iter().filter(|s| **s != TcpState::Listen) {
        let (a, b) = (now(Side::Server, *st), now(Side::Client, *st));
        if a + b == 0 {
            continue;
        }
        let cell = |side, n: u32| {
            if n > 0 && stuck(side, *st) {
                format!("{n} ✗")
            } else {
                n.to_string()
            }
        };
        let bar_w = width.saturating_sub(27);
        let bar = "█".repeat(((a.max(b) as usize * bar_w) / clients as usize).min(bar_w));
        let c = Color::Indexed(crate::palette::ansi(*st));
        lines.push(Line::from(vec![
            Span::styled(format!("{:<11}", st.name()), view.paint(c)),
            Span::raw(format!("{:>7}{:>7} ", cell(Side::Server, a), cell(Side::Client, b))),
            Span::styled(bar, view.paint(c)),
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
            lines.push(Line::from(Span::styled(fold(&h, width), view.paint(Color::Yellow))));
        }
    }
    lines
}

/// A pane's lines fitted to `width` columns and at most `height` rows.
fn pane_lines(
    p: &Panel,
    pane: Pane,
    width: usize,
    height: usize,
    view: View,
) -> Vec<Line<'static>> {
    match pane {
        Pane::Expectations => expectation_lines(p, width, height, view),
        Pane::Ladder => ladder_lines(p, width, height, view.colour),
        Pane::Machine => machine_lines(p, width, height, view.colour),
        Pane::Story => crate::text::wrap(&p.scenario.story, width.max(10))
            .into_iter()
            .take(height)
            .map(Line::from)
            .collect(),
    }
}

/// Each expectation with its mark (✓ held, ✗ failed, ? not observable, · not yet): wrapped where
/// the height allows, else folded to a line; the last ones left out (and counted) where even
/// that does not fit.
fn expectation_lines(p: &Panel, width: usize, height: usize, view: View) -> Vec<Line<'static>> {
    let marked: Vec<(&str, Color, &str)> = p
        .scenario
        .expectations
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let (mark, c) = match p.report.as_ref().and_then(|r| r.expectations.get(i)) {
                Some(x) if !x.observable => ("?", Color::Gray),
                Some(x) if x.passed => ("✓", Color::Green),
                Some(_) => ("✗", Color::Red),
                None if met_so_far(p, e) => ("✓", Color::Green),
                None => ("·", Color::Gray),
            };
            (mark, c, e.text.as_str())
        })
        .collect();
    let text_w = width.saturating_sub(2).max(8);
    let wrapped: Vec<Vec<String>> =
        marked.iter().map(|(_, _, t)| crate::text::wrap(t, text_w)).collect();
    let whole = wrapped.iter().map(Vec::len).sum::<usize>() <= height;
    let mut out = Vec::new();
    for (i, (mark, c, text)) in marked.iter().enumerate() {
        let parts = if whole { wrapped[i].clone() } else { vec![fold(text, text_w)] };
        for (j, part) in parts.into_iter().enumerate() {
            let head = if j == 0 { format!("{mark} ") } else { "  ".into() };
            out.push(Line::from(vec![Span::styled(head, view.paint(*c)), Span::raw(part)]));
        }
    }
    if out.len() > height && height > 0 {
        let more = marked.len() - (height - 1);
        out.truncate(height - 1);
        out.push(Line::from(format!("… {more} more")));
    }
    out
}

/// The ladder of the run's first connection, filling in as the witnesses see it; the report's
/// representative once the run has ended. Fitted to `width` columns (the time goes first) and
/// `height` rows: where the rows do not fit, those before the first FIN go first (a `⋮` says
/// how many), and each sentence of the end is folded to a line.
fn ladder_lines(p: &Panel, width: usize, height: usize, colour: bool) -> Vec<Line<'static>> {
    use cwlab_model::ladder::Ladder;
    let ladder = match (&p.report, p.witnessed.as_ref().and_then(|w| w.connection.as_ref())) {
        (Some(r), _) => Ladder::representative(r),
        (None, Some(c)) => Some(Ladder::so_far(c)),
        (None, None) => None,
    };
    let Some(l) = ladder else {
        return vec![Line::from(fold("(no connection yet, or no witness)", width))];
    };
    let red = if colour { Style::default().fg(Color::Red) } else { Style::default() };
    let said = |w: String| Line::from(Span::styled(w, red));
    let wrapped: Vec<Line<'static>> =
        l.end.iter().flat_map(|e| crate::text::wrap(e, width.max(10))).map(said).collect();
    let rows: Vec<Line<'static>> =
        l.rows.iter().map(|row| ladder_row(row, width, colour)).collect();
    let fin = l.rows.iter().position(|r| r.arrow.as_ref().is_some_and(|a| a.fin));
    let mut out = vec![Line::from(format!(":{}", l.client_port))];
    if 1 + rows.len() + wrapped.len() <= height {
        out.extend(rows);
        out.extend(wrapped);
        return out;
    }
    // The close first: from the first FIN on, the rows before it as far as they fit; the end
    // said whole where that leaves the close in view, else a line a sentence.
    let from_fin = rows.len() - fin.unwrap_or(rows.len().saturating_sub(3));
    let end = if 2 + from_fin + wrapped.len() <= height {
        wrapped
    } else {
        l.end.iter().map(|e| said(fold(e, width))).collect()
    };
    let keep = height.saturating_sub(2 + end.len());
    let latest = rows.len().saturating_sub(keep);
    let from = fin.map_or(latest, |f| f.min(latest));
    out.push(Line::from(format!("⋮ {from} rows before")));
    out.extend(rows.into_iter().skip(from).take(keep));
    out.extend(end);
    out.truncate(height);
    out
}

/// One row of a ladder in `width` columns.
fn ladder_row(row: &cwlab_model::ladder::Row, width: usize, colour: bool) -> Line<'static> {
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
    Line::from(spans)
}

/// The machine of the report, or so far: the last sample's counts and the transitions seen,
/// nothing marked stuck before the run has ended.
fn machine(p: &Panel) -> cwlab_model::machine::Machine {
    use cwlab_model::machine::Machine;
    if let Some(r) = &p.report {
        return Machine::of(r);
    }
    let counts = p.witnessed.as_ref().map(|w| w.counts.clone()).unwrap_or_default();
    let last = p.last.as_ref();
    let mut m = Machine::build(
        |side, st| last.map_or(0, |s| s.get(side, st)),
        &counts,
        p.witnessed.is_some(),
        0,
    );
    for n in &mut m.nodes {
        (n.stuck_server, n.stuck_client) = (false, false);
    }
    m
}

/// The state machine so far (the last sample's counts and the transitions seen), in `width`
/// columns and at most `height` rows: where they do not fit, the arrows go first, then the
/// boxes where nothing is stuck, so that a stuck box (`CLOSE-WAIT 100 ✗`) stays in view.
fn machine_lines(p: &Panel, width: usize, height: usize, colour: bool) -> Vec<Line<'static>> {
    use crate::diagram::{text_header, text_line, text_rows, text_widths};
    let m = machine(p);
    let (w, c) = text_widths(width);
    let mut rows = text_rows(&m, false);
    for keep in
        [|r: &crate::diagram::TextRow| r.state.is_some(), |r: &crate::diagram::TextRow| r.stuck]
    {
        if rows.len() + 1 > height {
            rows.retain(keep);
        }
    }
    let mut out = vec![Line::from(text_header(w, c))];
    for r in rows.iter().take(height.saturating_sub(1)) {
        let line = text_line(r, false, w, c);
        out.push(match r.state {
            Some(st) if colour => Line::from(Span::styled(
                line,
                Style::default().fg(Color::Indexed(crate::palette::ansi(st))),
            )),
            _ => Line::from(line),
        });
    }
    out
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
        term.draw(|f| draw(f, panels, false, false, View { colour: false, pane })).unwrap();
        let buf = term.backend().buffer().clone();
        (0..h)
            .map(|y| (0..w).map(|x| buf[(x, y)].symbol().to_string()).collect::<String>())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The leak's stuck row, with its count and mark, as the counts at the top show it.
    fn stuck_row(s: &str) -> bool {
        s.lines().any(|l| {
            let cells: Vec<&str> = l.trim_matches('│').split_whitespace().collect();
            cells.starts_with(&["CLOSE-WAIT", "100", "✗"])
        })
    }

    #[test]
    fn issue_21_at_80_by_24_every_view_keeps_the_stuck_row_and_the_fin() {
        let panels = [panel(), panel()];
        for pane in [Pane::Expectations, Pane::Ladder, Pane::Machine, Pane::Story] {
            let s = screen(&panels, 80, 24, pane);
            assert!(stuck_row(&s), "{s}");
            assert!(s.contains(&format!("─ {} (l: next)", pane.name())), "{s}");
            for line in s.lines() {
                assert_eq!(line.chars().count(), 80, "{line}");
            }
        }
        let s = screen(&panels, 80, 24, Pane::Ladder);
        assert!(s.contains("─FIN,ACK"), "the FIN row in view: {s}");
        let s = screen(&panels, 80, 24, Pane::Machine);
        assert!(s.contains("CLOSE-WAIT") && s.contains("100 ✗"), "{s}");
        let s = screen(&panels, 80, 24, Pane::Expectations);
        assert!(s.contains("server CLOSE-WAIT held by acceptor"), "wrapped, not cut: {s}");
    }

    #[test]
    fn issue_21_at_120_by_40_all_three_and_no_blank_half() {
        let s = screen(&[panel(), panel()], 120, 40, Pane::Expectations);
        assert!(stuck_row(&s), "{s}");
        for name in ["─ expectations (l: next)", "─ ladder ", "─ state machine "] {
            assert!(s.contains(name), "{name}: {s}");
        }
        assert!(s.contains("─SYN") && s.contains("─FIN,ACK"), "{s}");
        let blank = s.lines().filter(|l| l.trim_matches(|c| c == '│' || c == ' ').is_empty());
        assert!(blank.count() < 40 / 2, "no blank half: {s}");
    }

    #[test]
    fn issue_21_a_long_story_is_one_line_until_s() {
        let mut p = panel();
        p.scenario.story = format!("{} {}", "word ".repeat(40), "the end.");
        let s = screen(&[p], 80, 24, Pane::Expectations);
        assert!(s.lines().nth(1).unwrap().contains('…'), "{s}");
        assert!(s.contains("✓ server CLOSE-WAIT == clients"), "the expectations stay: {s}");
        let mut p = panel();
        p.scenario.story = format!("{} {}", "word ".repeat(40), "the end.");
        let s = screen(&[p], 80, 24, Pane::Story);
        assert!(s.contains("the end."), "{s}");
    }
}
