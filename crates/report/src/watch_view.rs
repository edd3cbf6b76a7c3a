//! `cwlab watch` on screen: a table per namespace, refreshed in place on a terminal (q quits),
//! or one line per interval off a terminal.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::time::Duration;

use cwlab_model::watch::{PortView, Snapshot};
use cwlab_model::TcpState;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind};
use ratatui::crossterm::terminal;

/// The states shown as columns, in the order of the close sequence.
const COLUMNS: [(TcpState, &str); 8] = [
    (TcpState::Established, "ESTAB"),
    (TcpState::FinWait1, "FW1"),
    (TcpState::FinWait2, "FW2"),
    (TcpState::TimeWait, "TW"),
    (TcpState::CloseWait, "CW"),
    (TcpState::LastAck, "LA"),
    (TcpState::Closing, "CLOSING"),
    (TcpState::SynRecv, "SYN-RECV"),
];

/// The table of one snapshot: per namespace and service port, server and client rows.
pub fn table(s: &Snapshot) -> String {
    let mut out = String::new();
    for ns in &s.namespaces {
        let _ = writeln!(out, "netns {}", ns.label);
        if let Some(e) = &ns.error {
            let _ = writeln!(out, "  not readable: {e}");
            continue;
        }
        let _ = write!(out, "  {:<7}{:<7}", "port", "side");
        for (_, name) in COLUMNS {
            let _ = write!(out, "{name:>9}");
        }
        let _ = writeln!(out, "{:>10}{:>11}", "CW/min", "oldest CW");
        for p in &ns.ports {
            for (side, counts) in [("server", &p.server), ("client", &p.client)] {
                let _ = write!(out, "  {:<7}{side:<7}", p.port);
                for (st, _) in COLUMNS {
                    let _ = write!(out, "{:>9}", counts.get(&st).copied().unwrap_or(0));
                }
                if side == "server" {
                    let rate = p.close_wait_per_min.map_or("-".into(), |r| format!("{r:+.0}"));
                    let age = p.close_wait_oldest_s.map_or("-".into(), |a| format!("{a:.0} s"));
                    let _ = writeln!(out, "{rate:>10}{age:>11}");
                } else {
                    let _ = writeln!(out);
                }
            }
            for h in &p.holders {
                let limit = h.max_fds.map_or(String::new(), |m| format!(" of {m}"));
                let _ = writeln!(
                    out,
                    "    held by pid {} `{}`: {} CLOSE-WAIT, {} fds open{limit}",
                    h.pid, h.name, h.sockets, h.open_fds
                );
            }
            if let Some(f) = &p.finding {
                let _ = writeln!(out, "    → {f}");
            }
        }
    }
    let _ = writeln!(out, "looked in {:.1} ms", s.took_ms);
    out
}

/// One line for a snapshot: each service port's server CLOSE-WAIT, rate, age and top holder.
pub fn line(s: &Snapshot) -> String {
    let mut parts = Vec::new();
    for ns in &s.namespaces {
        if let Some(e) = &ns.error {
            parts.push(format!("netns {}: {e}", ns.inode));
            continue;
        }
        for p in &ns.ports {
            parts.push(port_line(ns.inode, p));
        }
    }
    if parts.is_empty() {
        parts.push("no service port".into());
    }
    format!("{} {}", s.t_unix_ms, parts.join(" · "))
}

fn port_line(inode: u64, p: &PortView) -> String {
    let cw = p.server.get(&TcpState::CloseWait).copied().unwrap_or(0);
    let estab = p.server.get(&TcpState::Established).copied().unwrap_or(0);
    let mut s = format!("netns {inode} :{} ESTAB {estab} CLOSE-WAIT {cw}", p.port);
    if let Some(r) = p.close_wait_per_min {
        let _ = write!(s, " ({r:+.0}/min)");
    }
    if let Some(a) = p.close_wait_oldest_s {
        let _ = write!(s, " oldest {a:.0}s");
    }
    if let Some(h) = p.holders.first() {
        let _ = write!(s, " held by {} {} ({})", h.pid, h.name, h.sockets);
    }
    s
}

/// Redraws `next()`'s table every `interval` until q (or Esc, or Ctrl-C) is pressed.
pub fn live(interval: Duration, mut next: impl FnMut() -> Snapshot) -> io::Result<()> {
    terminal::enable_raw_mode()?;
    let result = (|| -> io::Result<()> {
        loop {
            let text = table(&next());
            let mut out = io::stdout().lock();
            write!(out, "\x1b[H\x1b[2J")?;
            for l in text.lines() {
                write!(out, "{l}\r\n")?;
            }
            write!(out, "q quits\r\n")?;
            out.flush()?;
            drop(out);
            let until = std::time::Instant::now() + interval;
            loop {
                let left = until.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() || !event::poll(left)? {
                    break;
                }
                if let Event::Key(k) = event::read()? {
                    let ctrl_c = k.code == KeyCode::Char('c')
                        && k.modifiers.contains(event::KeyModifiers::CONTROL);
                    if k.kind == KeyEventKind::Press
                        && (matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c)
                    {
                        return Ok(());
                    }
                }
            }
        }
    })();
    terminal::disable_raw_mode()?;
    result
}
