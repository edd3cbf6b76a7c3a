//! The ladder of a connection, drawn: as text for a terminal (80 columns, plain without colour)
//! and as SVG. What the ladder says is [`cwlab_model::ladder::Ladder`]'s; this only draws it.
//!
//! Rows are evenly spaced, as in the textbook; a pause longer than [`GAP_MS`] between two rows is
//! drawn as a break with its length, so a hold of seconds does not push the close off the page.

use std::fmt::Write;

use cwlab_model::ladder::{Ladder, Row};
use cwlab_model::report::Side;

use crate::palette::{self, paint};
use crate::text::esc;

/// A pause between rows drawn as a break.
pub const GAP_MS: f64 = 100.0;

const ARROW: usize = 34;
const STATE: usize = 11;

/// The title line: which connection, and how many went the same way.
pub fn title(l: &Ladder) -> String {
    if l.like_it > 0 {
        format!(
            "connection :{}, like {} of {} connections",
            l.client_port, l.like_it, l.connections
        )
    } else {
        format!("connection :{}", l.client_port)
    }
}

/// The ladder as text, every line at most 80 columns; `colour` paints states and marks.
pub fn text(l: &Ladder, colour: bool) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "  {}", title(l));
    let _ = writeln!(s, "  {:>9}  {:<STATE$} {:ARROW$} server", "ms", "client", "");
    let mut prev: Option<f64> = None;
    for row in &l.rows {
        if let Some(p) = prev {
            if row.t_ms - p > GAP_MS {
                let line = format!("  {:>9}  {:<STATE$} {:^ARROW$}", "", "", gap(row.t_ms - p));
                let _ = writeln!(s, "{}", line.trim_end());
            }
        }
        prev = Some(row.t_ms);
        let state = |side| match row.state(side) {
            Some(st) => paint(&format!("{:<STATE$}", st.name()), st, colour),
            None => " ".repeat(STATE),
        };
        let arrow =
            row.arrow.as_ref().map_or_else(|| " ".repeat(ARROW), |a| arrow_text(a.from, &a.label));
        let arrow = match row.arrow.as_ref() {
            Some(a) if a.fin && colour => format!("\x1b[1m{arrow}\x1b[0m"),
            _ => arrow,
        };
        let line = format!(
            "  {:>9.3}  {} {} {}",
            row.t_ms,
            state(Side::Client),
            arrow,
            state(Side::Server)
        );
        let _ = writeln!(s, "{}", line.trim_end());
    }
    for e in &l.end {
        for (i, w) in crate::text::wrap(e, 74).into_iter().enumerate() {
            let mark = if i == 0 { "✗" } else { " " };
            let mark =
                if colour && i == 0 { format!("\x1b[1;31m{mark}\x1b[0m") } else { mark.into() };
            let _ = writeln!(s, "  {mark} {w}");
        }
    }
    if l.end.is_empty() && !l.rows.is_empty() {
        let _ = writeln!(s, "  ✓ both sides went through the close sequence");
    }
    for n in &l.notes {
        let _ = writeln!(s, "  ({n})");
    }
    s
}

/// `──SYN──────►` from the client, `◄──────SYN,ACK──` from the server, [`ARROW`] wide.
fn arrow_text(from: Side, label: &str) -> String {
    let label: String = label.chars().take(ARROW - 6).collect();
    let fill = ARROW - 4 - label.chars().count() - 1;
    match from {
        Side::Client => format!("──{label}{}─►", "─".repeat(fill)),
        Side::Server => format!("◄─{}{label}──", "─".repeat(fill)),
    }
}

fn gap(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("⋮ {:.1} s", ms / 1000.0)
    } else {
        format!("⋮ {ms:.0} ms")
    }
}

const W: f64 = 720.0;
const CLIENT_X: f64 = 230.0;
const SERVER_X: f64 = 560.0;
const ROW_H: f64 = 34.0;
const HEAD: f64 = 86.0;

/// The ladder as an SVG document of its own (`--ladder-svg`).
pub fn svg(l: &Ladder) -> String {
    let mut body = String::new();
    let h = svg_body(&mut body, l, 0.0);
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{h}\" viewBox=\"0 0 {W} {h}\" font-family=\"sans-serif\">\n<rect width=\"{W}\" height=\"{h}\" fill=\"white\"/>\n{body}</svg>\n"
    )
}

/// Several ladders one under another, as one SVG document.
pub fn svg_all(ladders: &[Ladder]) -> String {
    let mut body = String::new();
    let mut y = 0.0;
    for l in ladders {
        y = svg_body(&mut body, l, y) + 10.0;
    }
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{y}\" viewBox=\"0 0 {W} {y}\" font-family=\"sans-serif\">\n<rect width=\"{W}\" height=\"{y}\" fill=\"white\"/>\n{body}</svg>\n"
    )
}

/// Draws one ladder from `y0` down; returns where it ends.
fn svg_body(s: &mut String, l: &Ladder, y0: f64) -> f64 {
    let _ = writeln!(s, r#"<g class="ladder" data-conn="{}">"#, l.client_port);
    let _ = writeln!(
        s,
        r#"<text x="20" y="{}" font-size="20" font-weight="bold">{}</text>"#,
        y0 + 30.0,
        esc(&title(l))
    );
    for (x, name) in [(CLIENT_X, "client"), (SERVER_X, "server")] {
        let _ = writeln!(
            s,
            r#"<text x="{x}" y="{}" font-size="17" font-weight="bold" text-anchor="middle">{name}</text>"#,
            y0 + 64.0
        );
    }
    let rows_y: Vec<f64> = layout(&l.rows, y0 + HEAD);
    // The lifelines stop half a row under the last arrow, clear of what is said under them.
    let bottom = rows_y.last().copied().unwrap_or(y0 + HEAD) + ROW_H / 2.0;
    for x in [CLIENT_X, SERVER_X] {
        let _ = writeln!(
            s,
            r##"<line x1="{x}" y1="{}" x2="{x}" y2="{bottom}" stroke="#333" stroke-width="2"/>"##,
            y0 + 72.0
        );
    }
    let _ = writeln!(
        s,
        r##"<defs><marker id="head{0}" markerWidth="10" markerHeight="8" refX="9" refY="4" orient="auto" markerUnits="userSpaceOnUse"><path d="M0,0 L10,4 L0,8 z" fill="#222"/></marker></defs>"##,
        l.client_port
    );
    let mut prev: Option<(f64, f64)> = None;
    for (row, &y) in l.rows.iter().zip(&rows_y) {
        if let Some((pt, py)) = prev {
            if row.t_ms - pt > GAP_MS {
                let _ = writeln!(
                    s,
                    r##"<text class="gap" x="{}" y="{}" font-size="14" fill="#666" text-anchor="middle">⋮ {}</text>"##,
                    (CLIENT_X + SERVER_X) / 2.0,
                    (py + y) / 2.0 + 5.0,
                    gap(row.t_ms - pt).trim_start_matches("⋮ ")
                );
            }
        }
        prev = Some((row.t_ms, y));
        let _ = writeln!(
            s,
            r##"<text class="t" x="20" y="{}" font-size="13" fill="#666">{:.3} ms</text>"##,
            y + 5.0,
            row.t_ms
        );
        if let Some(a) = &row.arrow {
            let (x1, x2) =
                if a.from == Side::Client { (CLIENT_X, SERVER_X) } else { (SERVER_X, CLIENT_X) };
            let (width, weight) = if a.fin || a.rst { (3.0, "bold") } else { (1.5, "normal") };
            let dash = if a.rst { r#" stroke-dasharray="6 4""# } else { "" };
            let _ = writeln!(
                s,
                r##"<line class="segment" data-from="{}" data-flags="{}" x1="{x1}" y1="{}" x2="{x2}" y2="{}" stroke="#222" stroke-width="{width}"{dash} marker-end="url(#head{})"/><text x="{}" y="{}" font-size="14" font-weight="{weight}" text-anchor="middle">{}</text>"##,
                a.from,
                esc(&a.label),
                y - 6.0,
                y + 6.0,
                l.client_port,
                (x1 + x2) / 2.0,
                y - 8.0,
                esc(&a.label)
            );
        }
        for (side, x, anchor) in
            [(Side::Client, CLIENT_X - 10.0, "end"), (Side::Server, SERVER_X + 10.0, "start")]
        {
            if let Some(st) = row.state(side) {
                let _ = writeln!(
                    s,
                    r#"<text class="state" data-side="{side}" x="{x}" y="{}" font-size="15" font-weight="bold" fill="{}" text-anchor="{anchor}">{}</text>"#,
                    y + 5.0,
                    palette::colour(st),
                    st.name()
                );
            }
        }
    }
    let mut y = bottom + 24.0;
    // As many characters a line as the widest renderer's bold 15 px fits in the page.
    let per_line = ((W - 40.0) / crate::diagram::text_w(1, 15.0)) as usize;
    for e in &l.end {
        for w in crate::text::wrap(e, per_line) {
            let _ = writeln!(
                s,
                r##"<text class="end" x="20" y="{y}" font-size="15" font-weight="bold" fill="#d62728">{}</text>"##,
                esc(&w)
            );
            y += 20.0;
        }
    }
    for n in &l.notes {
        let _ =
            writeln!(s, r##"<text x="20" y="{y}" font-size="13" fill="#666">({})</text>"##, esc(n));
        y += 18.0;
    }
    s.push_str("</g>\n");
    y + 6.0
}

/// Each row's y: evenly spaced, a break's height more after a pause.
fn layout(rows: &[Row], top: f64) -> Vec<f64> {
    let mut y = top;
    let mut out = Vec::with_capacity(rows.len());
    let mut prev: Option<f64> = None;
    for row in rows {
        if let Some(p) = prev {
            y += ROW_H;
            if row.t_ms - p > GAP_MS {
                y += ROW_H * 0.8;
            }
        }
        prev = Some(row.t_ms);
        out.push(y);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use cwlab_model::ladder::Arrow;
    use cwlab_model::TcpState;

    fn ladder() -> Ladder {
        let arrow =
            |from, label: &str, fin| Some(Arrow { from, label: label.into(), fin, rst: false });
        Ladder {
            client_port: 42334,
            like_it: 100,
            connections: 100,
            rows: vec![
                Row {
                    t_ms: 0.1,
                    arrow: arrow(Side::Client, "SYN", false),
                    client: Some(TcpState::SynSent),
                    server: Some(TcpState::SynRecv),
                },
                Row {
                    t_ms: 50.0,
                    arrow: arrow(Side::Client, "FIN,ACK", true),
                    client: Some(TcpState::FinWait1),
                    server: Some(TcpState::CloseWait),
                },
                Row { t_ms: 1550.0, arrow: None, client: None, server: None },
            ],
            end: vec![
                "no FIN from the server: the socket is still held by pid 4158 (the acceptor), fd 7"
                    .into(),
            ],
            notes: vec![],
        }
    }

    #[test]
    fn text_fits_80_columns_and_says_where_it_stopped() {
        let t = text(&ladder(), false);
        for line in t.lines() {
            assert!(line.chars().count() <= 80, "{line:?} is {} wide", line.chars().count());
        }
        assert!(t.contains("──FIN,ACK"), "{t}");
        assert!(t.contains("⋮ 1.5 s"), "{t}");
        assert!(
            t.contains("✗ no FIN from the server: the socket is still held by pid 4158"),
            "{t}"
        );
        assert!(!t.contains('\x1b'), "plain without colour");
        assert!(text(&ladder(), true).contains("\x1b[38;5;160mCLOSE-WAIT"));
    }

    #[test]
    fn svg_has_an_arrow_per_segment_and_the_states() {
        let svg = svg(&ladder());
        let doc = roxmltree::Document::parse(&svg).unwrap();
        let flags: Vec<&str> =
            doc.descendants().filter_map(|n| n.attribute("data-flags")).collect();
        assert_eq!(flags, ["SYN", "FIN,ACK"]);
        let states: Vec<&str> = doc
            .descendants()
            .filter(|n| n.attribute("class") == Some("state"))
            .filter_map(|n| n.text())
            .collect();
        assert_eq!(states, ["SYN-SENT", "SYN-RECV", "FIN-WAIT-1", "CLOSE-WAIT"]);
    }
}
