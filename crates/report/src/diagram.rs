//! The close half of TCP's state machine with a run's counts, drawn: one panel per side, each
//! box a state with its sockets at the end (thick and marked where sockets are stuck), each arrow
//! with the transitions the kernel made along it (grey where none did; dashed where the textbook
//! draws no arrow). The timewait sockets the kernel hands a closing connection to (TIME-WAIT,
//! and FIN-WAIT-2 before the peer's FIN) sit in a frame of their own, so the counts in the boxes
//! and on the arrows add up. What the numbers are is [`cwlab_model::machine::Machine`]'s.

use std::fmt::Write;

use cwlab_model::machine::{Edge, Machine, Node, Place, TIMEWAIT_LIFE};
use cwlab_model::report::Side;
use cwlab_model::TcpState;

use crate::palette::{self, paint};
use crate::text::esc;

const PANEL_W: f64 = 660.0;
const PANEL_H: f64 = 530.0;
const BOX_W: f64 = 112.0;
const BOX_H: f64 = 44.0;
/// The columns and rows of the boxes.
const COL: [f64; 3] = [100.0, 330.0, 560.0];
const ROW: [f64; 4] = [80.0, 190.0, 310.0, 450.0];

/// Where each box sits in a panel.
fn at(p: Place) -> (f64, f64) {
    use TcpState::*;
    match p {
        Place::Full(Established) => (COL[1], ROW[0]),
        Place::Full(FinWait1) => (COL[0], ROW[1]),
        Place::Full(CloseWait) => (COL[2], ROW[1]),
        Place::Full(FinWait2) => (COL[0], ROW[2]),
        Place::Full(Closing) => (COL[1], ROW[2]),
        Place::Full(LastAck) => (COL[2], ROW[2]),
        Place::Timewait(FinWait2) => (COL[0], ROW[3]),
        Place::Timewait(_) | Place::Full(TimeWait) => (COL[1], ROW[3]),
        Place::Full(_) => (COL[2], ROW[3]),
    }
}

/// A width that holds `chars` characters of sans-serif at `size` px in any renderer (DejaVu
/// Sans, the widest usual default, averages under 0.62 em; capitals and digits under 0.72).
pub fn text_w(chars: usize, size: f64) -> f64 {
    chars as f64 * size * 0.72
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
    timewait_frame(s, x0, y0);
    opened(s, m.opened(side), x0, y0);
    for e in &m.edges {
        edge(s, e, side, x0, y0);
    }
    for n in &m.nodes {
        node(s, n, side, x0, y0);
    }
    s.push_str("</g>\n");
}

/// The frame around the timewait sockets, with what they are and how long they live.
fn timewait_frame(s: &mut String, x0: f64, y0: f64) {
    let (left, right) = (x0 + COL[0] - BOX_W / 2.0 - 14.0, x0 + COL[1] + BOX_W / 2.0 + 14.0);
    let (top, bottom) = (y0 + ROW[3] - BOX_H / 2.0 - 14.0, y0 + ROW[3] + BOX_H / 2.0 + 34.0);
    let _ = writeln!(
        s,
        r##"<g class="timewait"><rect x="{left}" y="{top}" width="{}" height="{}" rx="10" fill="none" stroke="#888" stroke-width="1.2" stroke-dasharray="4 3"/><text x="{}" y="{}" font-size="12" fill="#555" text-anchor="middle">timewait sockets · each lives {TIMEWAIT_LIFE}</text></g>"##,
        right - left,
        bottom - top,
        (left + right) / 2.0,
        bottom - 10.0
    );
}

/// The arrow into ESTAB: the connections opened.
fn opened(s: &mut String, n: u64, x0: f64, y0: f64) {
    let (x, y) = (x0 + COL[1], y0 + ROW[0] - BOX_H / 2.0 - 3.0);
    let (stroke, tip) = if n > 0 { ("#333", "tip") } else { ("#bbb", "tip-idle") };
    let _ = writeln!(
        s,
        r##"<g class="edge" data-edge="opened ESTAB" data-count="{n}"><line x1="{x}" y1="{}" x2="{x}" y2="{y}" stroke="{stroke}" stroke-width="2" marker-end="url(#{tip})"/><text x="{}" y="{}" font-size="13" font-weight="bold">{n} opened</text></g>"##,
        y - 26.0,
        x + 10.0,
        y - 10.0
    );
}

fn node(s: &mut String, n: &Node, side: Side, x0: f64, y0: f64) {
    let (cx, cy) = at(n.place);
    let (cx, cy) = (x0 + cx, y0 + cy);
    let (count, stuck) = n.on(side);
    let c = palette::colour(n.state());
    let (stroke_w, fill_op) = if stuck {
        (4.0, 0.25)
    } else if count > 0 {
        (2.5, 0.15)
    } else {
        (1.5, 0.05)
    };
    let timewait = matches!(n.place, Place::Timewait(_));
    let _ = writeln!(
        s,
        r#"<g class="state" data-state="{}" data-timewait="{timewait}" data-count="{count}" data-stuck="{stuck}"><rect x="{}" y="{}" width="{BOX_W}" height="{BOX_H}" rx="8" fill="{c}" fill-opacity="{fill_op}" stroke="{c}" stroke-width="{stroke_w}"/><text x="{cx}" y="{}" font-size="14" font-weight="bold" text-anchor="middle" fill="{c}">{}</text><text x="{cx}" y="{}" font-size="15" text-anchor="middle">{}{}</text></g>"#,
        n.state().name(),
        cx - BOX_W / 2.0,
        cy - BOX_H / 2.0,
        cy - 4.0,
        n.state().name(),
        cy + 15.0,
        count,
        if stuck { " stuck" } else { "" }
    );
}

fn edge(s: &mut String, e: &Edge, side: Side, x0: f64, y0: f64) {
    let n = e.on(side);
    let (ax, ay) = at(e.from);
    let (bx, by) = at(e.to);
    let (ax, ay, bx, by) = (x0 + ax, y0 + ay, x0 + bx, y0 + by);
    // Straight where the boxes see each other; the kernel's own arrows bent aside.
    let bend = if e.textbook || matches!(e.to, Place::Timewait(_)) { 0.0 } else { 60.0 };
    let (mx, my) = ((ax + bx) / 2.0, (ay + by) / 2.0);
    let (dx, dy) = (bx - ax, by - ay);
    let len = (dx * dx + dy * dy).sqrt().max(1.0);
    let (cx, cy) = (mx - dy / len * bend, my + dx / len * bend);
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
    let tw = text_w(n.to_string().len(), 13.0).max(text_w(e.label.chars().count(), 11.0)) + 8.0;
    let (colour, weight) = if n > 0 { ("#000", "bold") } else { ("#999", "normal") };
    let _ = writeln!(
        s,
        r##"<rect x="{:.1}" y="{:.1}" width="{tw:.1}" height="30" fill="white" fill-opacity="0.92"/><text x="{lx:.1}" y="{:.1}" font-size="13" font-weight="{weight}" text-anchor="middle" fill="{colour}">{n}</text><text x="{lx:.1}" y="{:.1}" font-size="11" text-anchor="middle" fill="#888">{}</text></g>"##,
        lx - tw / 2.0,
        ly - 15.0,
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

/// One line of the machine as text: a box with its sockets, or an arrow out of the box above it
/// with its transitions.
#[derive(Debug, Clone, PartialEq)]
pub struct TextRow {
    /// The box's name, or `  → NAME (why)` for an arrow.
    pub name: String,
    /// Why the arrow is taken, apart (dropped first where the width is short).
    pub why: String,
    /// The box's state (for its colour); `None` for an arrow.
    pub state: Option<TcpState>,
    /// The server's cell: a count, `100 ✗` where stuck.
    pub server: String,
    /// The client's cell.
    pub client: String,
    /// Sockets are stuck here: a row to keep in view.
    pub stuck: bool,
}

/// The machine's rows: for each box, its sockets at the end on each side, then each arrow out
/// of it with its transitions; boxes and arrows where nothing happened on either side are left
/// out, unless `all`.
pub fn text_rows(m: &Machine, all: bool) -> Vec<TextRow> {
    let mut rows = Vec::new();
    for n in &m.nodes {
        let out: Vec<&Edge> = m.edges.iter().filter(|e| e.from == n.place).collect();
        let busy = n.server + n.client > 0 || out.iter().any(|e| e.server + e.client > 0);
        if !busy && !all {
            continue;
        }
        let mark = |stuck: bool, v: u32| if stuck { format!("{v} ✗") } else { v.to_string() };
        rows.push(TextRow {
            name: n.place.name(),
            why: String::new(),
            state: Some(n.state()),
            server: mark(n.stuck_server, n.server),
            client: mark(n.stuck_client, n.client),
            stuck: n.stuck_server || n.stuck_client,
        });
        for e in out.into_iter().filter(|e| all || e.server + e.client > 0) {
            rows.push(TextRow {
                name: format!("  → {}", e.to.name()),
                why: if e.label.is_empty() { String::new() } else { format!(" ({})", e.label) },
                state: None,
                server: e.server.to_string(),
                client: e.client.to_string(),
                stuck: false,
            });
        }
    }
    rows
}

/// The machine as text ([`text_rows`]), at most 60 columns; `colour` paints the states.
pub fn text(m: &Machine, colour: bool, all: bool) -> String {
    text_cols(m, colour, all, 34, 8)
}

/// The machine as plain text in at most `width` columns (the live view's pane).
pub fn text_in(m: &Machine, all: bool, width: usize) -> String {
    let (name, cell) = text_widths(width);
    text_cols(m, false, all, name, cell)
}

/// The name column's width and the cells' for `width` columns in all.
pub fn text_widths(width: usize) -> (usize, usize) {
    (width.saturating_sub(2 + 2 * 7).clamp(14, 34), 6)
}

/// One row in columns `w` (the name) and `c` (each cell): the reason goes where it does not fit.
pub fn text_line(r: &TextRow, colour: bool, w: usize, c: usize) -> String {
    let short = r.name.replace(" (timewait)", " tw");
    let fits = [format!("{}{}", r.name, r.why), format!("{short}{}", r.why)];
    let cell = match fits.into_iter().find(|c| c.chars().count() <= w) {
        Some(c) => c,
        None => short.chars().take(w).collect(),
    };
    let cell = match r.state {
        Some(st) => paint(&format!("{cell:<w$}"), st, colour),
        None => format!("{cell:<w$}"),
    };
    format!("  {cell} {:>c$} {:>c$}", r.server, r.client)
}

/// The header line of the text.
pub fn text_header(w: usize, c: usize) -> String {
    format!("  {:<w$} {:>c$} {:>c$}", "state / → transition", "server", "client")
}

fn text_cols(m: &Machine, colour: bool, all: bool, w: usize, c: usize) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{}", text_header(w, c));
    for r in text_rows(m, all) {
        let _ = writeln!(s, "{}", text_line(&r, colour, w, c));
    }
    if !m.transitions {
        let _ = writeln!(s, "  (no transitions: tracefs could not be used)");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use cwlab_model::evidence::TransitionCount;
    use TcpState::*;

    fn leak() -> Machine {
        let t = |side, from, to| TransitionCount { side, from, to, connections: 100 };
        let counts = vec![
            t(Side::Server, SynRecv, Established),
            t(Side::Server, Established, CloseWait),
            t(Side::Client, SynSent, Established),
            t(Side::Client, Established, FinWait1),
            t(Side::Client, FinWait1, FinWait2),
            t(Side::Client, FinWait2, Close),
        ];
        Machine::build(
            |side, st| match (side, st) {
                (Side::Server, CloseWait) | (Side::Client, FinWait2) => 100,
                _ => 0,
            },
            &counts,
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
        assert_eq!(edge("client", "FIN-WAIT-2 FIN-WAIT-2 (timewait)").as_deref(), Some("100"));
        assert_eq!(edge("client", "opened ESTAB").as_deref(), Some("100"));
        let stuck: Vec<(&str, &str, &str)> = doc
            .descendants()
            .filter(|n| n.attribute("data-stuck") == Some("true"))
            .map(|n| {
                let side = n.ancestors().find_map(|a| a.attribute("data-side")).unwrap();
                (side, n.attribute("data-state").unwrap(), n.attribute("data-timewait").unwrap())
            })
            .collect();
        assert_eq!(stuck, [("server", "CLOSE-WAIT", "false"), ("client", "FIN-WAIT-2", "true")]);
    }

    #[test]
    fn text_shows_what_happened() {
        let t = text(&leak(), false, false);
        assert!(t.contains(&format!("{:<34} {:>8} {:>8}", "CLOSE-WAIT", "100 ✗", 0)), "{t}");
        let arrow = format!("{:<34} {:>8} {:>8}", "  → CLOSE-WAIT (FIN / ACK)", 100, 0);
        assert!(t.contains(&arrow), "{t}");
        let handed = format!("{:<34} {:>8} {:>8}", "  → FIN-WAIT-2 tw (orphaned)", 0, 100);
        assert!(t.contains(&handed), "{t}");
        let waits = format!("{:<34} {:>8} {:>8}", "FIN-WAIT-2 (timewait)", 0, "100 ✗");
        assert!(t.contains(&waits), "{t}");
        assert!(!t.contains("LAST-ACK"), "{t}");
        for line in t.lines() {
            assert!(line.chars().count() <= 60, "{line}");
        }
    }

    #[test]
    fn issue_21_narrow_text_drops_the_reason_not_the_state() {
        let t = text_in(&leak(), false, 38);
        assert!(t.contains("  → FIN-WAIT-1 "), "{t}");
        assert!(!t.contains("(close"), "a cut reason is left out whole: {t}");
        for line in t.lines() {
            assert!(line.chars().count() <= 38, "{line}");
        }
    }
}
