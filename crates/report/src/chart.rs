//! Timeline charts as SVG, for slides: counts per state and side over a run, the phases marked,
//! several reports side by side on one scale. Hand-written SVG: no font file, no library; text
//! uses the viewer's sans-serif.
//!
//! Each series is a `<polyline>` with `data-series="SIDE STATE"` and `data-max="N"`; the chart
//! has one series per (side, state) that had a socket in some sample, LISTEN aside. Each panel's
//! subtitle is the title of the run's first finding, from its diagnosis.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::io;
use std::path::PathBuf;

use cwlab_model::events::Reporter;
use cwlab_model::report::{Report, Side};
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
const PANEL_H: f64 = 420.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 96.0;
const BOTTOM: f64 = 70.0;
const LEGEND_H: f64 = 34.0;

/// A colour per state: few colours, the ones that matter loud.
fn colour(s: TcpState) -> &'static str {
    match s {
        TcpState::CloseWait => "#d62728",
        TcpState::FinWait2 => "#ff7f0e",
        TcpState::TimeWait => "#1f77b4",
        TcpState::Established => "#7f7f7f",
        TcpState::FinWait1 => "#9467bd",
        TcpState::LastAck => "#8c564b",
        TcpState::Closing => "#e377c2",
        _ => "#bcbd22",
    }
}

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
    let y_top = nice(y_max);
    let t_max =
        reports.iter().flat_map(|r| r.samples.last()).map(|s| s.t_ms).max().unwrap_or(1).max(1);
    let all: BTreeSet<(Side, TcpState)> = reports.iter().flat_map(series).collect();
    let width = PANEL_W * reports.len().max(1) as f64;
    let height = PANEL_H + LEGEND_H * all.len().div_ceil(3).max(1) as f64 + 10.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif">"#
    );
    let _ = writeln!(s, r#"<rect width="{width}" height="{height}" fill="white"/>"#);
    for (i, r) in reports.iter().enumerate() {
        panel(&mut s, r, i as f64 * PANEL_W, y_top, t_max);
    }
    legend(&mut s, &all, PANEL_H);
    s.push_str("</svg>\n");
    s
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

fn panel(s: &mut String, r: &Report, x0: f64, y_top: u32, t_max: u64) {
    let (pw, ph) = (PANEL_W - LEFT - RIGHT, PANEL_H - TOP - BOTTOM);
    let (ox, oy) = (x0 + LEFT, TOP + ph);
    let x = |t: u64| ox + pw * t as f64 / t_max as f64;
    let y = |n: u32| oy - ph * f64::from(n) / f64::from(y_top);
    let _ = writeln!(s, r#"<g class="panel" data-scenario="{}">"#, esc(&r.scenario.name));
    let _ = writeln!(
        s,
        r#"<text x="{}" y="30" font-size="26" font-weight="bold">{}</text>"#,
        x0 + LEFT,
        esc(&r.scenario.name)
    );
    let _ = writeln!(
        s,
        r##"<text x="{}" y="52" font-size="15" fill="#444">server {} · {} clients · {}</text>"##,
        x0 + LEFT,
        esc(&r.scenario.behaviour),
        r.clients,
        r.verdict
    );
    if let Some(f) = r.diagnosis.primary() {
        let _ = writeln!(
            s,
            r##"<text class="finding" data-kind="{}" x="{}" y="74" font-size="16" font-weight="bold" fill="{}">{}</text>"##,
            f.kind,
            x0 + LEFT,
            if f.kind.is_leak() { "#d62728" } else { "#2ca02c" },
            esc(&f.title)
        );
    }
    // Axes, ticks and labels.
    let _ = writeln!(
        s,
        r#"<line x1="{ox}" y1="{oy}" x2="{}" y2="{oy}" stroke="black" stroke-width="2"/>"#,
        ox + pw
    );
    let _ = writeln!(
        s,
        r#"<line x1="{ox}" y1="{oy}" x2="{ox}" y2="{TOP}" stroke="black" stroke-width="2"/>"#
    );
    for k in 0..=4 {
        let n = y_top * k / 4;
        let _ = writeln!(
            s,
            r#"<text class="tick" x="{}" y="{}" font-size="16" text-anchor="end">{n}</text>"#,
            ox - 8.0,
            y(n) + 5.0
        );
        let _ = writeln!(
            s,
            r##"<line x1="{ox}" y1="{0}" x2="{1}" y2="{0}" stroke="#ddd"/>"##,
            y(n),
            ox + pw
        );
    }
    let secs = t_max as f64 / 1000.0;
    for k in 0..=4 {
        let t = (t_max as f64 * f64::from(k) / 4.0) as u64;
        let _ = writeln!(
            s,
            r#"<text class="tick" x="{}" y="{}" font-size="16" text-anchor="middle">{:.1}</text>"#,
            x(t),
            oy + 24.0,
            secs * f64::from(k) / 4.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text class="axis-label" x="{}" y="{}" font-size="17" text-anchor="middle">seconds since the server listened</text>"#,
        ox + pw / 2.0,
        oy + 52.0
    );
    let _ = writeln!(
        s,
        r#"<text class="axis-label" x="{}" y="{}" font-size="17" text-anchor="middle" transform="rotate(-90 {} {})">sockets</text>"#,
        x0 + 22.0,
        TOP + ph / 2.0,
        x0 + 22.0,
        TOP + ph / 2.0
    );
    // Phases.
    // The phases: dotted lines, labels stepped down so that close ones stay legible.
    let marks: Vec<_> = r.phases.iter().filter(|m| m.phase.name() != "listen").collect();
    for (i, m) in marks.iter().enumerate() {
        let px = x(m.t_ms);
        let _ = writeln!(
            s,
            r##"<line class="phase" x1="{px}" y1="{TOP}" x2="{px}" y2="{oy}" stroke="#999" stroke-dasharray="4 4"/><text class="phase-label" x="{}" y="{}" font-size="14" fill="#555">{}</text>"##,
            px + 4.0,
            TOP + 16.0 + 16.0 * i as f64,
            m.phase
        );
    }
    // One polyline per series.
    for (side, st) in series(r) {
        let pts: Vec<String> = r
            .samples
            .iter()
            .map(|smp| format!("{:.1},{:.1}", x(smp.t_ms), y(smp.get(side, st))))
            .collect();
        let max = r.samples.iter().map(|smp| smp.get(side, st)).max().unwrap_or(0);
        let dash = if side == Side::Client { r#" stroke-dasharray="10 5""# } else { "" };
        let _ = writeln!(
            s,
            r#"<polyline data-series="{side} {st}" data-max="{max}" fill="none" stroke="{}" stroke-width="4"{dash} points="{}"/>"#,
            colour(st),
            pts.join(" ")
        );
    }
    s.push_str("</g>\n");
}

fn legend(s: &mut String, all: &BTreeSet<(Side, TcpState)>, y0: f64) {
    let _ = writeln!(s, r#"<g class="legend">"#);
    for (i, (side, st)) in all.iter().enumerate() {
        let (col, row) = (i % 3, i / 3);
        let x = LEFT + col as f64 * 260.0;
        let y = y0 + 10.0 + row as f64 * LEGEND_H;
        let dash = if *side == Side::Client { r#" stroke-dasharray="10 5""# } else { "" };
        let _ = writeln!(
            s,
            r#"<line x1="{x}" y1="{}" x2="{}" y2="{}" stroke="{}" stroke-width="4"{dash}/><text x="{}" y="{}" font-size="18">{side} {st}</text>"#,
            y + 12.0,
            x + 40.0,
            y + 12.0,
            colour(*st),
            x + 48.0,
            y + 18.0
        );
    }
    s.push_str("</g>\n");
}

fn esc(t: &str) -> String {
    t.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
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
                ("b".into(), "client TIME-WAIT".into())
            ]
        );
        let ticks: Vec<&str> = doc
            .descendants()
            .filter(|n| n.attribute("class") == Some("tick"))
            .filter_map(|n| n.text())
            .collect();
        assert!(ticks.contains(&"50"), "one scale up to 50 for both: {ticks:?}");
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
