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
//! Each series is a `<polyline>` with `data-series="SIDE STATE"` (or `acceptor fds`) and
//! `data-max="N"`. Each panel's subtitle is the title of the run's first finding.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::io;
use std::path::PathBuf;

use cwlab_model::events::Reporter;
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
        cwlab_runner::write_atomically(&self.path, render(&self.reports).as_bytes())
    }
}

const PANEL_W: f64 = 640.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 110.0;
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

/// The states of a report with a socket in some sample, per side, LISTEN aside.
fn series(r: &Report) -> BTreeSet<(Side, TcpState)> {
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
    set
}

fn rows_bottom() -> f64 {
    TOP + ROW_H.iter().sum::<f64>() + ROW_GAP * 2.0
}

/// Renders one panel per report, side by side, on one scale.
pub fn render(reports: &[Report]) -> String {
    let y_max = reports
        .iter()
        .flat_map(|r| &r.samples)
        .flat_map(|s| {
            s.server.iter().chain(s.client.iter()).filter(|(st, _)| **st != TcpState::Listen)
        })
        .map(|(_, n)| *n)
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
    let states: BTreeSet<TcpState> = reports.iter().flat_map(series).map(|(_, st)| st).collect();
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

/// The time axis: each phase a band of [`MIN_PHASE_SHARE`] of the width, plus a share of the
/// rest in proportion to its length. Returns the bands (phase, start ms, end ms, x0, x1).
pub fn bands(r: &Report, x0: f64, width: f64) -> Vec<(Phase, u64, u64, f64, f64)> {
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
            let band = (*p, *a, *b, x, x + w);
            x += w;
            band
        })
        .collect()
}

/// Where time `t` falls on the axis of `bands`.
fn at(bands: &[(Phase, u64, u64, f64, f64)], t: u64) -> f64 {
    for &(_, a, b, x0, x1) in bands {
        if t <= b {
            let f = if b > a { (t.saturating_sub(a)) as f64 / (b - a) as f64 } else { 0.0 };
            return x0 + (x1 - x0) * f;
        }
    }
    bands.last().map_or(0.0, |b| b.4)
}

fn panel(s: &mut String, r: &Report, x0: f64, scale: Scale) {
    let pw = PANEL_W - LEFT - RIGHT;
    let ox = x0 + LEFT;
    let bands = bands(r, ox, pw);
    let x = |t: u64| at(&bands, t);
    let _ = writeln!(s, r#"<g class="panel" data-scenario="{}">"#, esc(&r.scenario.name));
    let _ = writeln!(
        s,
        r#"<text x="{ox}" y="30" font-size="26" font-weight="bold">{}</text>"#,
        esc(&r.scenario.name)
    );
    let _ = writeln!(
        s,
        r##"<text x="{ox}" y="52" font-size="15" fill="#444">server {} · {} clients · {}</text>"##,
        esc(&r.scenario.behaviour),
        r.clients,
        r.verdict
    );
    if let Some(f) = r.diagnosis.primary() {
        let _ = writeln!(
            s,
            r##"<text class="finding" data-kind="{}" x="{ox}" y="74" font-size="16" font-weight="bold" fill="{}">{}</text>"##,
            f.kind,
            if f.kind.is_leak() { "#d62728" } else { "#2ca02c" },
            esc(&f.title)
        );
    }
    // The phases: shaded bands, each labelled in its own middle.
    let bottom = rows_bottom();
    for (i, &(p, _, _, bx0, bx1)) in bands.iter().enumerate() {
        if i % 2 == 1 {
            let _ = writeln!(
                s,
                r##"<rect x="{bx0:.1}" y="{}" width="{:.1}" height="{}" fill="#f3f3f3"/>"##,
                TOP - 18.0,
                bx1 - bx0,
                bottom - TOP + 18.0
            );
        }
        let _ = writeln!(
            s,
            r##"<text class="phase-label" data-phase="{p}" x="{:.1}" y="{}" font-size="14" fill="#555" text-anchor="middle">{p}</text>"##,
            (bx0 + bx1) / 2.0,
            TOP - 4.0
        );
    }
    let acceptor = if r.scenario.command.is_some() { "listener's fds" } else { "acceptor's fds" };
    let mut y0 = TOP;
    for (row, h) in ROW_H.iter().enumerate() {
        let (top, name) = match row {
            0 => (scale.sockets, "server"),
            1 => (scale.sockets, "clients"),
            _ => (scale.fds, acceptor),
        };
        let oy = y0 + h;
        let y = |n: u32| oy - h * f64::from(n) / f64::from(top);
        let _ = writeln!(
            s,
            r#"<line x1="{ox}" y1="{oy}" x2="{}" y2="{oy}" stroke="black" stroke-width="1.5"/><line x1="{ox}" y1="{oy}" x2="{ox}" y2="{y0}" stroke="black" stroke-width="1.5"/>"#,
            ox + pw
        );
        for k in [0, 2, 4] {
            let n = top * k / 4;
            let _ = writeln!(
                s,
                r##"<text class="tick" x="{}" y="{}" font-size="13" text-anchor="end">{n}</text><line x1="{ox}" y1="{2}" x2="{3}" y2="{2}" stroke="#ddd"/>"##,
                ox - 6.0,
                y(n) + 4.0,
                y(n),
                ox + pw
            );
        }
        let _ = writeln!(
            s,
            r#"<text class="row-label" x="{}" y="{}" font-size="14" font-weight="bold" text-anchor="middle" transform="rotate(-90 {0} {1})">{name}</text>"#,
            x0 + 24.0,
            y0 + h / 2.0
        );
        if row < 2 {
            let side = if row == 0 { Side::Server } else { Side::Client };
            for (sd, st) in series(r).into_iter().filter(|(sd, _)| *sd == side) {
                let pts: Vec<String> = r
                    .samples
                    .iter()
                    .map(|smp| format!("{:.1},{:.1}", x(smp.t_ms), y(smp.get(sd, st))))
                    .collect();
                let max = r.samples.iter().map(|smp| smp.get(sd, st)).max().unwrap_or(0);
                let _ = writeln!(
                    s,
                    r#"<polyline data-series="{sd} {st}" data-max="{max}" fill="none" stroke="{}" stroke-width="3.5" points="{}"/>"#,
                    colour(st),
                    pts.join(" ")
                );
            }
        } else {
            let pts: Vec<String> = r
                .samples
                .iter()
                .filter_map(|smp| Some(format!("{:.1},{:.1}", x(smp.t_ms), y(smp.acceptor_fds?))))
                .collect();
            let fds: Vec<u32> = r.samples.iter().filter_map(|smp| smp.acceptor_fds).collect();
            let (first, max) =
                (fds.first().copied().unwrap_or(0), fds.iter().max().copied().unwrap_or(0));
            let _ = writeln!(
                s,
                r#"<polyline data-series="acceptor fds" data-first="{first}" data-max="{max}" fill="none" stroke="{DESCRIPTORS}" stroke-width="3" points="{}"/>"#,
                pts.join(" ")
            );
            if let (Some(a), Some(b)) = (fds.first(), fds.last()) {
                let _ = writeln!(
                    s,
                    r#"<text class="fds-note" x="{}" y="{}" font-size="13" text-anchor="end">{a} → {b}</text>"#,
                    ox + pw - 4.0,
                    y0 + 14.0
                );
            }
        }
        y0 = oy + ROW_GAP;
    }
    // The time axis: a tick at each phase's start, in seconds.
    let oy = bottom;
    let mut last_x = f64::NEG_INFINITY;
    for &(_, a, _, bx0, _) in &bands {
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
        r#"<text class="axis-label" x="{}" y="{}" font-size="14" text-anchor="middle">seconds since the server listened (each phase gets {:.0}% of the width, the rest by length)</text>"#,
        ox + pw / 2.0,
        oy + 40.0,
        MIN_PHASE_SHARE * 100.0
    );
    s.push_str("</g>\n");
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
        for (p, _, _, x0, x1) in &b {
            assert!(x1 - x0 >= 540.0 * 0.12, "{p}: {x0}..{x1}");
        }
        assert!((b[3].4 - 540.0).abs() < 1e-6, "the bands fill the axis");
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
