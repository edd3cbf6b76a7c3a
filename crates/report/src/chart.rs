//! Timeline charts as SVG, for slides: several reports side by side on one scale, each a panel of
//! three rows on one time axis: the server's sockets per state, the clients', and the acceptor's
//! (for a check, the listening process's) open descriptors, so a leak that hides its CLOSE-WAIT
//! (`fixed`) still shows against the real fix (`parent-closes`). Hand-written SVG: no font file,
//! no library; text uses the viewer's sans-serif.
//!
//! The time axis gives each phase a band of [`MIN_PHASE_SHARE`] of the axis plus a share of the
//! rest in proportion to its length, so the connect and close phases of a few ms are visible next
//! to a hold of seconds; each phase is labelled in its own band. Only the states that occur are
//! drawn and listed; a state has the same colour everywhere ([`crate::palette`]).
//!
//! The sockets are drawn from the kernel's transitions where the run has them (the report's
//! [`Level`]s: every change, exact, stamped), as steps: a count holds until it changes, so
//! nothing climbs before it happened and a peak between two samples is drawn at its height.
//! Without the tracepoint they are the samples, as steps too. The descriptors are samples.
//!
//! Each series is a `<polyline>` with `data-series="SIDE STATE"` (or `acceptor fds`),
//! `data-max="N"` and `data-from="transitions"` or `"samples"`. Each panel's subtitle is the
//! title of the run's first finding.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::io;
use std::path::PathBuf;

use cwlab_model::events::Reporter;
use cwlab_model::evidence::Level;
use cwlab_model::report::{Phase, Report, Side};
use cwlab_model::TcpState;

/// `--svg FILE`: every run's timeline side by side, written when they have all ended.
pub struct Svg {
    path: PathBuf,
    reports: Vec<Report>,
}

impl Svg {
    /// A chart to `path`.
    pub fn new(path: PathBuf) -> Svg {
        Svg { path, reports: Vec::new() }
    }
}

impl Reporter for Svg {
    fn finish(&mut self, r: &Report) -> io::Result<()> {
        self.reports.push(r.clone());
        Ok(())
    }

    fn close(&mut self) -> io::Result<()> {
        cwlab_os::write_atomically(&self.path, render(&self.reports).as_bytes())
    }
}

const PANEL_W: f64 = 640.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 128.0;
/// The rows of a panel: the server's sockets, the clients', the acceptor's descriptors.
const ROW_H: [f64; 3] = [150.0, 150.0, 90.0];
const ROW_GAP: f64 = 28.0;
const AXIS_H: f64 = 64.0;
const LEGEND_H: f64 = 30.0;
/// The least share of the time axis a phase gets, so that a connect of 50 ms next to a hold of
/// seconds is still wide enough to see and to label.
pub const MIN_PHASE_SHARE: f64 = 0.14;

use crate::palette::{colour, DESCRIPTORS};
use crate::text::esc;

/// A series as drawn: `(ms since LISTEN, sockets)` after each change.
type Steps = Vec<(f64, u32)>;

/// The sockets of each side and state with a socket at some time, LISTEN aside: from the
/// transitions where the run has them, else from the samples.
fn series(r: &Report) -> Vec<((Side, TcpState), Steps)> {
    if !r.transitions.levels.is_empty() {
        let mut out: Vec<((Side, TcpState), Steps)> = r
            .transitions
            .levels
            .iter()
            .filter(|l| l.state != TcpState::Listen && l.peak() > 0)
            .map(|l: &Level| {
                let steps = l.points.iter().map(|&(t, n)| (t as f64 / 1000.0, n)).collect();
                ((l.side, l.state), steps)
            })
            .collect();
        out.sort_by_key(|(k, _)| *k);
        return out;
    }
    let mut set = BTreeSet::new();
    for s in &r.samples {
        for (side, counts) in [(Side::Server, &s.server), (Side::Client, &s.client)] {
            for (st, n) in counts {
                if *n > 0 && *st != TcpState::Listen {
                    set.insert((side, *st));
                }
            }
        }
    }
    set.into_iter()
        .map(|(side, st)| {
            ((side, st), r.samples.iter().map(|s| (s.t_ms as f64, s.get(side, st))).collect())
        })
        .collect()
}

/// Whether a report's sockets are drawn from its transitions.
fn from_transitions(r: &Report) -> bool {
    !r.transitions.levels.is_empty()
}

fn rows_bottom() -> f64 {
    TOP + ROW_H.iter().sum::<f64>() + ROW_GAP * 2.0
}

/// Renders one panel per report, side by side, on one scale.
pub fn render(reports: &[Report]) -> String {
    let y_max = reports
        .iter()
        .flat_map(series)
        .flat_map(|(_, steps)| steps.into_iter().map(|(_, n)| n))
        .max()
        .unwrap_or(1)
        .max(1);
    let fd_max = reports
        .iter()
        .flat_map(|r| &r.samples)
        .filter_map(|s| s.acceptor_fds)
        .max()
        .unwrap_or(1)
        .max(1);
    let scale = Scale { sockets: nice(y_max), fds: nice(fd_max) };
    let states: BTreeSet<TcpState> =
        reports.iter().flat_map(series).map(|((_, st), _)| st).collect();
    let width = PANEL_W * reports.len().max(1) as f64;
    let legend_rows = (states.len() + 1).div_ceil(3).max(1) as f64;
    let height = rows_bottom() + AXIS_H + LEGEND_H * legend_rows + 10.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif">"#
    );
    let _ = writeln!(s, r#"<rect width="{width}" height="{height}" fill="white"/>"#);
    for (i, r) in reports.iter().enumerate() {
        panel(&mut s, r, i as f64 * PANEL_W, scale);
    }
    legend(&mut s, &states, rows_bottom() + AXIS_H);
    s.push_str("</svg>\n");
    s
}

/// The tops of the axes every panel shares.
#[derive(Clone, Copy)]
struct Scale {
    sockets: u32,
    fds: u32,
}

/// A round axis top: 1, 2, 5 × 10^k at or above `n`.
fn nice(n: u32) -> u32 {
    let mut step = 1u32;
    loop {
        for m in [1, 2, 5] {
            if step * m >= n {
                return step * m;
            }
        }
        step *= 10;
    }
}

/// A phase's band on the time axis: when the phase ran, and where it is drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Band {
    /// The phase.
    pub phase: Phase,
    /// When it began, ms into the run.
    pub from_ms: u64,
    /// When it ended, ms into the run.
    pub to_ms: u64,
    /// Where its band begins on the axis.
    pub x0: f64,
    /// Where its band ends on the axis.
    pub x1: f64,
}

/// The time axis: each phase a band of [`MIN_PHASE_SHARE`] of the width, plus a share of the
/// rest in proportion to its length. Returns the bands.
pub fn bands(r: &Report, x0: f64, width: f64) -> Vec<Band> {
    let end = r.samples.last().map_or(1, |s| s.t_ms).max(1);
    let mut marks: Vec<(Phase, u64)> = r.phases.iter().map(|m| (m.phase, m.t_ms)).collect();
    marks.retain(|(p, _)| *p != Phase::End);
    let spans: Vec<(Phase, u64, u64)> = marks
        .iter()
        .enumerate()
        .map(|(i, (p, t))| (*p, *t, marks.get(i + 1).map_or(end, |(_, n)| *n).max(*t)))
        .collect();
    // Each band: its least share, and the rest of the axis shared in proportion to length.
    let total = end as f64;
    let floor = MIN_PHASE_SHARE.min(1.0 / spans.len().max(1) as f64);
    let rest = 1.0 - floor * spans.len() as f64;
    let mut x = x0;
    spans
        .iter()
        .map(|(p, a, b)| {
            let w = width * (floor + rest * (b - a) as f64 / total);
            let band = Band { phase: *p, from_ms: *a, to_ms: *b, x0: x, x1: x + w };
            x += w;
            band
        })
        .collect()
}

/// Where time `t` (ms) falls on the axis of `bands`.
fn at(bands: &[Band], t: f64) -> f64 {
    for &Band { from_ms, to_ms, x0, x1, .. } in bands {
        let (a, b) = (from_ms as f64, to_ms as f64);
        if t <= b {
            let f = if b > a { (t - a).max(0.0) / (b - a) } else { 0.0 };
            return x0 + (x1 - x0) * f;
        }
    }
    bands.last().map_or(0.0, |b| b.x1)
}

/// One run's panel: its title, the phases, the three rows, the time axis.
fn panel(s: &mut String, r: &Report, x0: f64, scale: Scale) {
    let pw = PANEL_W - LEFT - RIGHT;
    let ox = x0 + LEFT;
    let bands = bands(r, ox, pw);
    let _ = writeln!(s, r#"<g class="panel" data-scenario="{}">"#, esc(&r.scenario.name));
    // The panel's own box: what it says stays in it.
    let _ = writeln!(
        s,
        r#"<rect class="panel-box" x="{x0}" y="0" width="{PANEL_W}" height="{}" fill="none"/>"#,
        rows_bottom() + AXIS_H
    );
    head(s, r, ox);
    phases(s, &bands);
    let acceptor = if r.scenario.command.is_some() { "listener's fds" } else { "acceptor's fds" };
    let mut y0 = TOP;
    for (row, h) in ROW_H.iter().enumerate() {
        let (top, name) = match row {
            0 => (scale.sockets, "server"),
            1 => (scale.sockets, "clients"),
            _ => (scale.fds, acceptor),
        };
        let row_at = Row { x0, ox, pw, y0, h: *h, top };
        row_axes(s, &row_at, name);
        match row {
            0 => sockets(s, r, Side::Server, &row_at, &bands),
            1 => sockets(s, r, Side::Client, &row_at, &bands),
            _ => descriptors(s, r, &row_at, &bands),
        }
        y0 += h + ROW_GAP;
    }
    time_axis(s, r, &bands, ox, pw);
    s.push_str("</g>\n");
}

/// Where one row of a panel is drawn, and its axis's top.
struct Row {
    x0: f64,
    ox: f64,
    pw: f64,
    y0: f64,
    h: f64,
    top: u32,
}

impl Row {
    fn y(&self, n: u32) -> f64 {
        self.y0 + self.h - self.h * f64::from(n) / f64::from(self.top)
    }
}

/// The panel's title, what ran, and its first finding.
fn head(s: &mut String, r: &Report, ox: f64) {
    let _ = writeln!(
        s,
        r#"<text x="{ox}" y="30" font-size="26" font-weight="bold">{}</text>"#,
        esc(&r.scenario.name)
    );
    let (held, of) = r.expectations_held();
    let judged = match r.verdict {
        cwlab_model::report::Verdict::Error => "no verdict".to_string(),
        _ => format!("{held} of {of} expectations held"),
    };
    let _ = writeln!(
        s,
        r##"<text x="{ox}" y="52" font-size="15" fill="#444">server {} · {} clients · {judged}</text>"##,
        esc(&r.scenario.behaviour),
        r.clients,
    );
    if let Some(f) = r.diagnosis.primary() {
        // In two lines at most, each within the panel in the widest renderer.
        let per_line = ((PANEL_W - LEFT - 10.0) / crate::diagram::text_w(1, 16.0)) as usize;
        let mut lines = crate::text::wrap(&f.title, per_line);
        if lines.len() > 2 {
            let rest = lines.split_off(1).join(" ");
            let cut: String = rest.chars().take(per_line - 1).collect();
            lines.push(format!("{cut}…"));
        }
        for (i, line) in lines.iter().enumerate() {
            let _ = writeln!(
                s,
                r##"<text class="finding" data-kind="{}" x="{ox}" y="{}" font-size="16" font-weight="bold" fill="{}">{}</text>"##,
                f.kind,
                74.0 + 20.0 * i as f64,
                if f.kind.is_leak() { "#d62728" } else { "#2ca02c" },
                esc(line)
            );
        }
    }
}

/// The phases: shaded bands, each labelled in its own middle.
fn phases(s: &mut String, bands: &[Band]) {
    let bottom = rows_bottom();
    for (i, &Band { phase: p, x0: bx0, x1: bx1, .. }) in bands.iter().enumerate() {
        if i % 2 == 1 {
            let _ = writeln!(
                s,
                r##"<rect x="{bx0:.1}" y="{}" width="{:.1}" height="{}" fill="#f3f3f3"/>"##,
                TOP - 24.0,
                bx1 - bx0,
                bottom - TOP + 24.0
            );
        }
        let _ = writeln!(
            s,
            r##"<text class="phase-label" data-phase="{p}" x="{:.1}" y="{}" font-size="14" fill="#555" text-anchor="middle">{p}</text>"##,
            (bx0 + bx1) / 2.0,
            TOP - 8.0
        );
    }
}

/// A row's axes, its ticks and its name.
fn row_axes(s: &mut String, row: &Row, name: &str) {
    let (ox, oy, right) = (row.ox, row.y0 + row.h, row.ox + row.pw);
    let _ = writeln!(
        s,
        r#"<line x1="{ox}" y1="{oy}" x2="{right}" y2="{oy}" stroke="black" stroke-width="1.5"/><line x1="{ox}" y1="{oy}" x2="{ox}" y2="{}" stroke="black" stroke-width="1.5"/>"#,
        row.y0
    );
    for k in [0, 2, 4] {
        let n = row.top * k / 4;
        let _ = writeln!(
            s,
            r##"<text class="tick" x="{}" y="{}" font-size="13" text-anchor="end">{n}</text><line x1="{ox}" y1="{2}" x2="{right}" y2="{2}" stroke="#ddd"/>"##,
            ox - 6.0,
            row.y(n) + 4.0,
            row.y(n),
        );
    }
    let _ = writeln!(
        s,
        r#"<text class="row-label" x="{}" y="{}" font-size="14" font-weight="bold" text-anchor="middle" transform="rotate(-90 {0} {1})">{name}</text>"#,
        row.x0 + 24.0,
        row.y0 + row.h / 2.0
    );
}

/// One side's sockets per state, as steps.
fn sockets(s: &mut String, r: &Report, side: Side, row: &Row, bands: &[Band]) {
    let end = r.samples.last().map_or(0.0, |s| s.t_ms as f64);
    let from = if from_transitions(r) { "transitions" } else { "samples" };
    for ((sd, st), steps) in series(r).into_iter().filter(|((sd, _), _)| *sd == side) {
        let max = steps.iter().map(|(_, n)| *n).max().unwrap_or(0);
        let _ = writeln!(
            s,
            r#"<polyline data-series="{sd} {st}" data-max="{max}" data-from="{from}" fill="none" stroke="{}" stroke-width="3.5" stroke-linejoin="round" points="{}"/>"#,
            colour(st),
            step_points(&steps, 0, end, bands, row)
        );
    }
}

/// A series as a step line from `start` at LISTEN: each count held until the next change, the
/// last to `end`.
fn step_points(steps: &[(f64, u32)], start: u32, end: f64, bands: &[Band], row: &Row) -> String {
    let mut pts = vec![format!("{:.1},{:.1}", at(bands, 0.0), row.y(start))];
    let mut prev = start;
    for &(t, n) in steps {
        let x = at(bands, t);
        pts.push(format!("{x:.1},{:.1}", row.y(prev)));
        pts.push(format!("{x:.1},{:.1}", row.y(n)));
        prev = n;
    }
    pts.push(format!("{:.1},{:.1}", at(bands, end), row.y(prev)));
    pts.join(" ")
}

/// The acceptor's (or listener's) open descriptors, sampled, as steps, with first → last.
fn descriptors(s: &mut String, r: &Report, row: &Row, bands: &[Band]) {
    let steps: Vec<(f64, u32)> =
        r.samples.iter().filter_map(|smp| Some((smp.t_ms as f64, smp.acceptor_fds?))).collect();
    let (first, max) =
        (steps.first().map_or(0, |(_, n)| *n), steps.iter().map(|(_, n)| *n).max().unwrap_or(0));
    let end = r.samples.last().map_or(0.0, |s| s.t_ms as f64);
    // Before the first sample the count is the first sample's, not zero.
    let points =
        if steps.is_empty() { String::new() } else { step_points(&steps, first, end, bands, row) };
    let _ = writeln!(
        s,
        r#"<polyline data-series="acceptor fds" data-first="{first}" data-max="{max}" data-from="samples" fill="none" stroke="{DESCRIPTORS}" stroke-width="3" points="{points}"/>"#
    );
    if let (Some(a), Some(b)) = (steps.first(), steps.last()) {
        let _ = writeln!(
            s,
            r#"<text class="fds-note" x="{}" y="{}" font-size="13" text-anchor="end">{} → {}</text>"#,
            row.ox + row.pw - 4.0,
            row.y0 - 4.0,
            a.1,
            b.1
        );
    }
}

/// The time axis: a tick at each phase's start and at the end, in seconds, and its label.
fn time_axis(s: &mut String, r: &Report, bands: &[Band], ox: f64, pw: f64) {
    let oy = rows_bottom();
    let mut last_x = f64::NEG_INFINITY;
    for &Band { from_ms: a, x0: bx0, .. } in bands {
        if bx0 - last_x >= 36.0 {
            let _ = writeln!(
                s,
                r#"<text class="tick" x="{bx0:.1}" y="{}" font-size="13" text-anchor="middle">{:.2}</text>"#,
                oy + 18.0,
                a as f64 / 1000.0
            );
            last_x = bx0;
        }
    }
    let end = r.samples.last().map_or(0, |s| s.t_ms);
    let _ = writeln!(
        s,
        r#"<text class="tick" x="{}" y="{}" font-size="13" text-anchor="end">{:.2}</text>"#,
        ox + pw,
        oy + 18.0,
        end as f64 / 1000.0
    );
    let _ = writeln!(
        s,
        r#"<text class="axis-label" x="{}" y="{}" font-size="14" text-anchor="middle">seconds since the server listened (each phase at least {:.0}% wide)</text>"#,
        ox + pw / 2.0,
        oy + 40.0,
        MIN_PHASE_SHARE * 100.0
    );
}

fn legend(s: &mut String, states: &BTreeSet<TcpState>, y0: f64) {
    let _ = writeln!(s, r#"<g class="legend">"#);
    let items: Vec<(String, &str)> = states
        .iter()
        .map(|st| (st.name().to_string(), colour(*st)))
        .chain(std::iter::once(("descriptors".to_string(), DESCRIPTORS)))
        .collect();
    for (i, (name, c)) in items.iter().enumerate() {
        let (col, row) = (i % 3, i / 3);
        let x = LEFT + col as f64 * 170.0;
        let y = y0 + row as f64 * LEGEND_H;
        let _ = writeln!(
            s,
            r#"<line x1="{x}" y1="{0}" x2="{1}" y2="{0}" stroke="{c}" stroke-width="4"/><text class="legend-item" x="{2}" y="{3}" font-size="15">{name}</text>"#,
            y + 10.0,
            x + 30.0,
            x + 36.0,
            y + 15.0
        );
    }
    s.push_str("</g>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use cwlab_model::report::{Phase, PhaseMark, Sample};

    fn report(name: &str, close_wait: u32) -> Report {
        let text = include_str!("../../../tests/fixtures/report-template.json");
        let mut r: Report = serde_json::from_str(text).unwrap();
        r.scenario.name = name.into();
        r.phases = vec![
            PhaseMark { phase: Phase::Listen, t_ms: 0 },
            PhaseMark { phase: Phase::Hold, t_ms: 100 },
            PhaseMark { phase: Phase::End, t_ms: 1000 },
        ];
        r.samples = (0..=10)
            .map(|i| {
                let mut s = Sample {
                    t_ms: i * 100,
                    phase: Phase::Hold,
                    server: Default::default(),
                    client: Default::default(),
                    acceptor_fds: None,
                    queued: 0,
                    serving: 0,
                };
                s.server.insert(TcpState::Listen, 1);
                if i > 0 && close_wait > 0 {
                    s.server.insert(TcpState::CloseWait, close_wait);
                }
                s.client.insert(TcpState::TimeWait, 3);
                s
            })
            .collect();
        r
    }

    #[test]
    fn one_series_per_state_present_and_one_scale() {
        let svg = render(&[report("a", 40), report("b", 0)]);
        let doc = roxmltree::Document::parse(&svg).unwrap();
        let series: Vec<(String, String)> = doc
            .descendants()
            .filter(|n| n.has_tag_name("polyline"))
            .map(|n| {
                let panel = n.ancestors().find(|a| a.attribute("data-scenario").is_some()).unwrap();
                (
                    panel.attribute("data-scenario").unwrap().into(),
                    n.attribute("data-series").unwrap().into(),
                )
            })
            .collect();
        assert_eq!(
            series,
            [
                ("a".into(), "server CLOSE-WAIT".into()),
                ("a".into(), "client TIME-WAIT".into()),
                ("a".into(), "acceptor fds".into()),
                ("b".into(), "client TIME-WAIT".into()),
                ("b".into(), "acceptor fds".into())
            ]
        );
        let legend: Vec<&str> = doc
            .descendants()
            .filter(|n| n.attribute("class") == Some("legend-item"))
            .filter_map(|n| n.text())
            .collect();
        assert_eq!(legend, ["TIME-WAIT", "CLOSE-WAIT", "descriptors"], "only what occurs");
        let ticks: Vec<&str> = doc
            .descendants()
            .filter(|n| n.attribute("class") == Some("tick"))
            .filter_map(|n| n.text())
            .collect();
        assert!(ticks.contains(&"50"), "one scale up to 50 for both: {ticks:?}");
    }

    #[test]
    fn every_phase_gets_room_for_its_label() {
        let mut r = report("a", 40);
        r.phases = vec![
            PhaseMark { phase: Phase::Listen, t_ms: 0 },
            PhaseMark { phase: Phase::Connect, t_ms: 50 },
            PhaseMark { phase: Phase::Close, t_ms: 60 },
            PhaseMark { phase: Phase::Hold, t_ms: 62 },
            PhaseMark { phase: Phase::End, t_ms: 1000 },
        ];
        let b = bands(&r, 0.0, 540.0);
        assert_eq!(b.len(), 4);
        for Band { phase, x0, x1, .. } in &b {
            assert!(x1 - x0 >= 540.0 * 0.12, "{phase}: {x0}..{x1}");
        }
        assert!((b[3].x1 - 540.0).abs() < 1e-6, "the bands fill the axis");
    }

    #[test]
    fn axis_tops_are_round() {
        assert_eq!(nice(100), 100);
        assert_eq!(nice(101), 200);
        assert_eq!(nice(7), 10);
        assert_eq!(nice(10_000), 10_000);
        assert_eq!(nice(1), 1);
    }
}
