//! The close half of TCP's state machine with a run's counts, drawn: one panel per side, each
//! state a box with its sockets at the end (thick and marked where sockets are stuck), each arrow
//! with the transitions the kernel made along it (grey where none did; dashed where the textbook
//! draws no arrow). What the numbers are is [`cwlab_model::machine::Machine`]'s.

use std::fmt::Write;

use cwlab_model::machine::{Edge, Machine};
use cwlab_model::report::Side;
use cwlab_model::TcpState;

use crate::palette::{self, paint};
use crate::text::esc;

const PANEL_W: f64 = 540.0;
const PANEL_H: f64 = 470.0;
const BOX_W: f64 = 112.0;
const BOX_H: f64 = 44.0;

/// Where each state's box sits in a panel.
fn at(s: TcpState) -> (f64, f64) {
    match s {
        TcpState::Established => (270.0, 60.0),
        TcpState::FinWait1 => (80.0, 150.0),
        TcpState::CloseWait => (460.0, 150.0),
        TcpState::FinWait2 => (80.0, 255.0),
        TcpState::Closing => (280.0, 255.0),
        TcpState::LastAck => (460.0, 255.0),
        TcpState::TimeWait => (280.0, 360.0),
        _ => (460.0, 360.0),
    }
}

/// The machine as an SVG document: the server's panel, then the client's.
pub fn svg(m: &Machine, title: &str) -> String {
    let w = PANEL_W * 2.0;
    let h = PANEL_H + 60.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r##"<defs><marker id="tip" markerWidth="10" markerHeight="8" refX="9" refY="4" orient="auto" markerUnits="userSpaceOnUse"><path d="M0,0 L10,4 L0,8 z" fill="#333"/></marker><marker id="tip-idle" markerWidth="10" markerHeight="8" refX="9" refY="4" orient="auto" markerUnits="userSpaceOnUse"><path d="M0,0 L10,4 L0,8 z" fill="#bbb"/></marker></defs>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="20" y="30" font-size="20" font-weight="bold">{}</text>"#,
        esc(title)
    );
    for (i, side) in Side::BOTH.iter().enumerate() {
        panel(&mut s, m, *side, i as f64 * PANEL_W, 40.0);
    }
    let mut y = PANEL_H + 50.0;
    if !m.transitions {
        let _ = writeln!(
            s,
            r##"<text x="20" y="{y}" font-size="13" fill="#666">(no transitions: tracefs could not be used; the counts at the end only)</text>"##
        );
        y += 16.0;
    }
    if m.lost > 0 {
        let _ = writeln!(
            s,
            r##"<text x="20" y="{y}" font-size="13" fill="#666">({} transitions lost: the arrows are lower bounds)</text>"##,
            m.lost
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Several machines, one under another, as one SVG document.
pub fn svg_all(machines: &[(String, Machine)]) -> String {
    let w = PANEL_W * 2.0;
    let h = PANEL_H + 60.0;
    let total = h * machines.len().max(1) as f64;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{total}\" viewBox=\"0 0 {w} {total}\">\n"
    );
    for (i, (title, m)) in machines.iter().enumerate() {
        let one = svg(m, title);
        // Each machine is a document of its own, nested at its place.
        let inner = one.replacen("<svg ", &format!("<svg y=\"{}\" ", h * i as f64), 1);
        s.push_str(&inner);
    }
    s.push_str("</svg>\n");
    s
}

fn panel(s: &mut String, m: &Machine, side: Side, x0: f64, y0: f64) {
    let _ = writeln!(s, r#"<g class="machine" data-side="{side}">"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" font-size="18" font-weight="bold">{side}</text>"#,
        x0 + 20.0,
        y0 + 22.0
    );
    for e in &m.edges {
        edge(s, e, side, x0, y0);
    }
    for n in &m.nodes {
        let (cx, cy) = at(n.state);
        let (cx, cy) = (x0 + cx, y0 + cy);
        let count = if side == Side::Server { n.server } else { n.client };
        let stuck = if side == Side::Server { n.stuck_server } else { n.stuck_client };
        let c = palette::colour(n.state);
        let (stroke_w, fill_op) = if stuck {
            (4.0, 0.25)
        } else if count > 0 {
            (2.5, 0.15)
        } else {
            (1.5, 0.05)
        };
        let _ = writeln!(
            s,
            r#"<g class="state" data-state="{}" data-count="{count}" data-stuck="{stuck}"><rect x="{}" y="{}" width="{BOX_W}" height="{BOX_H}" rx="8" fill="{c}" fill-opacity="{fill_op}" stroke="{c}" stroke-width="{stroke_w}"/><text x="{cx}" y="{}" font-size="14" font-weight="bold" text-anchor="middle" fill="{c}">{}</text><text x="{cx}" y="{}" font-size="15" text-anchor="middle">{}{}</text></g>"#,
            n.state.name(),
            cx - BOX_W / 2.0,
            cy - BOX_H / 2.0,
            cy - 4.0,
            n.state.name(),
            cy + 15.0,
            count,
            if stuck { " stuck" } else { "" }
        );
    }
    s.push_str("</g>\n");
}

fn edge(s: &mut String, e: &Edge, side: Side, x0: f64, y0: f64) {
    let n = if side == Side::Server { e.server } else { e.client };
    let (ax, ay) = at(e.from);
    let (bx, by) = at(e.to);
    let (ax, ay, bx, by) = (x0 + ax, y0 + ay, x0 + bx, y0 + by);
    // Straight where the boxes see each other; the kernel's own arrows bent below the rest.
    let bend = match (e.from, e.to) {
        (TcpState::FinWait2, TcpState::Close) => Some(175.0),
        _ if !e.textbook => Some(60.0),
        _ => None,
    };
    let (mx, my) = ((ax + bx) / 2.0, (ay + by) / 2.0);
    let (dx, dy) = (bx - ax, by - ay);
    let len = (dx * dx + dy * dy).sqrt().max(1.0);
    let (cx, cy) = match bend {
        Some(b) => (mx - dy / len * b, my + dx / len * b),
        None => (mx, my),
    };
    let (sx, sy) = clip(ax, ay, cx - ax, cy - ay);
    let (ex, ey) = clip(bx, by, cx - bx, cy - by);
    let (stroke, width, tip) = if n > 0 { ("#333", 2.5, "tip") } else { ("#bbb", 1.2, "tip-idle") };
    let dash = if e.textbook { "" } else { r#" stroke-dasharray="6 4""# };
    let _ = writeln!(
        s,
        r#"<g class="edge" data-edge="{} {}" data-count="{n}"><path d="M{sx:.1},{sy:.1} Q{cx:.1},{cy:.1} {ex:.1},{ey:.1}" fill="none" stroke="{stroke}" stroke-width="{width}"{dash} marker-end="url(#{tip})"/>"#,
        e.from.name(),
        e.to.name()
    );
    // The label at the curve's middle, on a white ground so lines under it do not cross it:
    // the count, and under it what moves a socket along the arrow.
    let (lx, ly) = (0.25 * sx + 0.5 * cx + 0.25 * ex, 0.25 * sy + 0.5 * cy + 0.25 * ey);
    let widest = n.to_string().len().max(e.label.chars().count());
    let tw = widest as f64 * 6.0 + 8.0;
    let (colour, weight) = if n > 0 { ("#000", "bold") } else { ("#999", "normal") };
    let _ = writeln!(
        s,
        r##"<rect x="{:.1}" y="{:.1}" width="{tw:.1}" height="28" fill="white" fill-opacity="0.9"/><text x="{lx:.1}" y="{:.1}" font-size="13" font-weight="{weight}" text-anchor="middle" fill="{colour}">{n}</text><text x="{lx:.1}" y="{:.1}" font-size="11" text-anchor="middle" fill="#888">{}</text></g>"##,
        lx - tw / 2.0,
        ly - 14.0,
        ly - 2.0,
        ly + 11.0,
        esc(&e.label)
    );
}

/// Where a line from a box's centre in direction (dx, dy) leaves the box.
fn clip(x: f64, y: f64, dx: f64, dy: f64) -> (f64, f64) {
    let tx = if dx.abs() > 1e-9 { (BOX_W / 2.0 + 3.0) / dx.abs() } else { f64::INFINITY };
    let ty = if dy.abs() > 1e-9 { (BOX_H / 2.0 + 3.0) / dy.abs() } else { f64::INFINITY };
    let t = tx.min(ty);
    (x + dx * t, y + dy * t)
}

/// The machine as text: for each state, its sockets now on each side, then each arrow out of it
/// with its transitions; states and arrows where nothing happened on either side are left out,
/// unless `all`. At most 60 columns.
pub fn text(m: &Machine, colour: bool, all: bool) -> String {
    text_cols(m, colour, all, 34, 8)
}

/// The machine as plain text in at most `width` columns (the live view's pane).
pub fn text_in(m: &Machine, all: bool, width: usize) -> String {
    let name = width.saturating_sub(2 + 2 * 7).clamp(14, 34);
    text_cols(m, false, all, name, 6)
}

fn text_cols(m: &Machine, colour: bool, all: bool, w: usize, c: usize) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "  {:<w$} {:>c$} {:>c$}", "state / → transition", "server", "client");
    for n in &m.nodes {
        let out: Vec<&Edge> = m.edges.iter().filter(|e| e.from == n.state).collect();
        let busy = n.server + n.client > 0 || out.iter().any(|e| e.server + e.client > 0);
        if !busy && !all {
            continue;
        }
        let mark = |stuck: bool, v: u32| if stuck { format!("{v} ✗") } else { v.to_string() };
        let name = paint(&format!("{:<w$}", n.state.name()), n.state, colour);
        let _ = writeln!(
            s,
            "  {name} {:>c$} {:>c$}",
            mark(n.stuck_server, n.server),
            mark(n.stuck_client, n.client)
        );
        for e in out {
            if e.server + e.client == 0 && !all {
                continue;
            }
            let label = format!("  → {}", e.to.name());
            let why = if e.label.is_empty() { String::new() } else { format!(" ({})", e.label) };
            let cell: String = format!("{label}{why}").chars().take(w).collect();
            let _ = writeln!(s, "  {cell:<w$} {:>c$} {:>c$}", e.server, e.client);
        }
    }
    if !m.transitions {
        let _ = writeln!(s, "  (no transitions: tracefs could not be used)");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use cwlab_model::evidence::{TransitionCount, Transitions};
    use TcpState::*;

    fn leak() -> Machine {
        let t = Transitions {
            available: true,
            counts: vec![
                TransitionCount {
                    side: Side::Server,
                    from: Established,
                    to: CloseWait,
                    connections: 100,
                },
                TransitionCount {
                    side: Side::Client,
                    from: Established,
                    to: FinWait1,
                    connections: 100,
                },
                TransitionCount {
                    side: Side::Client,
                    from: FinWait1,
                    to: FinWait2,
                    connections: 100,
                },
                TransitionCount { side: Side::Client, from: FinWait2, to: Close, connections: 100 },
            ],
            ..Transitions::default()
        };
        Machine::build(
            |side, st| match (side, st) {
                (Side::Server, CloseWait) | (Side::Client, FinWait2) => 100,
                _ => 0,
            },
            |side, from, to| t.count(side, from, to),
            t.counts.iter().map(|c| (c.from, c.to)),
            true,
            0,
        )
    }

    #[test]
    fn svg_arrows_carry_the_counts() {
        let svg = svg(&leak(), "leak");
        let doc = roxmltree::Document::parse(&svg).unwrap();
        let edge = |side: &str, name: &str| {
            doc.descendants()
                .filter(|n| n.attribute("data-side") == Some(side))
                .flat_map(|p| p.descendants())
                .find(|n| n.attribute("data-edge") == Some(name))
                .and_then(|n| n.attribute("data-count"))
                .map(str::to_string)
        };
        assert_eq!(edge("server", "ESTAB CLOSE-WAIT").as_deref(), Some("100"));
        assert_eq!(edge("client", "ESTAB CLOSE-WAIT").as_deref(), Some("0"));
        assert_eq!(edge("client", "FIN-WAIT-2 CLOSE").as_deref(), Some("100"));
        let stuck: Vec<(&str, &str)> = doc
            .descendants()
            .filter(|n| n.attribute("data-stuck") == Some("true"))
            .map(|n| {
                let side = n.ancestors().find_map(|a| a.attribute("data-side")).unwrap();
                (side, n.attribute("data-state").unwrap())
            })
            .collect();
        assert_eq!(stuck, [("server", "CLOSE-WAIT"), ("client", "FIN-WAIT-2")]);
    }

    #[test]
    fn text_shows_what_happened() {
        let t = text(&leak(), false, false);
        assert!(t.contains(&format!("{:<34} {:>8} {:>8}", "CLOSE-WAIT", "100 ✗", 0)), "{t}");
        let arrow = format!("{:<34} {:>8} {:>8}", "  → CLOSE-WAIT (FIN / ACK)", 100, 0);
        assert!(t.contains(&arrow), "{t}");
        let handed = format!("{:<34} {:>8} {:>8}", "  → CLOSE (to a timewait socket)", 0, 100);
        assert!(t.contains(&handed), "{t}");
        assert!(!t.contains("LAST-ACK"), "{t}");
        for line in t.lines() {
            assert!(line.chars().count() <= 60, "{line}");
        }
    }
}
