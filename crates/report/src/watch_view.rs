//! `cwlab watch` on screen: a table per namespace that fits the terminal's width (80 columns off
//! a terminal), refreshed in place on a terminal (q quits), or one line per interval off a
//! terminal. Each finding is the model's, drawn as it is: its explanation and its fix.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::time::Duration;

use cwlab_model::watch::{Holding, PortView, RemoteView, Snapshot};
use cwlab_model::{Finding, TcpState};
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

/// Which state columns go first when the table is too wide: the rarest first, CLOSE-WAIT never.
const LEAVE_OUT: [TcpState; 7] = [
    TcpState::SynRecv,
    TcpState::Closing,
    TcpState::LastAck,
    TcpState::FinWait1,
    TcpState::TimeWait,
    TcpState::FinWait2,
    TcpState::Established,
];

/// The width the table is made for off a terminal.
pub const WIDTH: usize = 80;

/// The table of one snapshot, at most `width` columns wide: per namespace and port, server and
/// client rows (a port nothing here listens on, a remote service's, shows its client row
/// alone), the server side's holders (pid, command, the CLOSE-WAIT sockets they hold, their
/// descriptors, and the unit, container or pod they run in) and finding, then each remote
/// service the client side is stuck on with its holders and finding.
/// Columns are as wide as their numbers; where they do not fit, the state columns that count
/// nothing go first, then the rarest states (CLOSE-WAIT stays), and a line says which.
pub fn table(s: &Snapshot, width: usize) -> String {
    let mut out = String::new();
    for ns in &s.namespaces {
        let _ = writeln!(out, "netns {}", ns.label);
        if let Some(e) = &ns.error {
            let _ = writeln!(out, "  not readable: {e}");
            continue;
        }
        ports(&mut out, &ns.ports, width);
    }
    let _ = writeln!(out, "looked in {:.1} ms", s.took_ms);
    out
}

/// The terminal's width in columns ([`WIDTH`] where it cannot be read).
pub fn terminal_width() -> usize {
    terminal::size().map_or(WIDTH, |(w, _)| usize::from(w)).max(40)
}

/// One row of the counts: its first cells (port, side), a cell per state, the rate and the age.
struct Row {
    port: String,
    side: &'static str,
    counts: Vec<String>,
    rate: String,
    age: String,
}

/// A port's rows: server and client, or the client's alone for a port nothing here listens on
/// and no server socket is on (a remote service's).
fn rows(p: &PortView) -> Vec<Row> {
    let counts = |c: &cwlab_model::report::Counts| {
        COLUMNS.iter().map(|(st, _)| c.get(st).copied().unwrap_or(0).to_string()).collect()
    };
    let rate = p.close_wait_per_min.map_or("-".into(), |r| format!("{r:+.0}"));
    let age = p.close_wait_oldest_s.map_or("-".into(), |a| format!("{a:.0} s"));
    let port = p.port.to_string();
    let client = Row {
        port: port.clone(),
        side: "client",
        counts: counts(&p.client),
        rate: String::new(),
        age: String::new(),
    };
    if !p.listening && p.server.is_empty() {
        return vec![client];
    }
    vec![Row { port, side: "server", counts: counts(&p.server), rate, age }, client]
}

/// A namespace's ports: the counts, then each port's holders and finding.
fn ports(out: &mut String, ports: &[PortView], width: usize) {
    let all: Vec<(&PortView, Vec<Row>)> = ports.iter().map(|p| (p, rows(p))).collect();
    let rows = || all.iter().flat_map(|(_, r)| r.iter());
    let wide = |head: &str, cell: &dyn Fn(&Row) -> usize| {
        rows().map(cell).max().unwrap_or(0).max(head.len())
    };
    let port_w = wide("port", &|r| r.port.len());
    let state_w: Vec<usize> =
        COLUMNS.iter().enumerate().map(|(i, (_, h))| wide(h, &|r| r.counts[i].len())).collect();
    let rate_w = wide("CW/min", &|r| r.rate.len());
    let age_w = wide("oldest", &|r| r.age.len());
    let mut shown: Vec<bool> = vec![true; COLUMNS.len()];
    let total = |shown: &[bool]| {
        2 + port_w
            + 1
            + 6
            + (0..COLUMNS.len()).filter(|i| shown[*i]).map(|i| state_w[i] + 1).sum::<usize>()
            + rate_w
            + 1
            + age_w
            + 1
    };
    let zero = |i: usize| rows().all(|r| r.counts[i] == "0");
    for empty_first in [true, false] {
        for st in LEAVE_OUT {
            let i = COLUMNS.iter().position(|(s, _)| *s == st).expect("a column");
            if total(&shown) > width && shown[i] && (!empty_first || zero(i)) {
                shown[i] = false;
            }
        }
    }
    let _ = write!(out, "  {:<port_w$} {:<6}", "port", "side");
    for (i, (_, h)) in COLUMNS.iter().enumerate().filter(|(i, _)| shown[*i]) {
        let _ = write!(out, " {h:>w$}", w = state_w[i]);
    }
    let _ = writeln!(out, " {:>rate_w$} {:>age_w$}", "CW/min", "oldest");
    for (p, rows) in &all {
        for r in rows {
            let mut line = format!("  {:<port_w$} {:<6}", r.port, r.side);
            for (i, c) in r.counts.iter().enumerate().filter(|(i, _)| shown[*i]) {
                let _ = write!(line, " {c:>w$}", w = state_w[i]);
            }
            let _ = write!(line, " {:>rate_w$} {:>age_w$}", r.rate, r.age);
            let _ = writeln!(out, "{}", line.trim_end());
        }
        holders(out, &p.holders, width);
        finding(out, p.finding.as_ref(), width);
        for r in &p.remotes {
            remote(out, r, width);
        }
    }
    let left: Vec<&str> =
        COLUMNS.iter().enumerate().filter(|(i, _)| !shown[*i]).map(|(_, (_, h))| *h).collect();
    if !left.is_empty() {
        let note = format!("(left out for width: {})", left.join(" "));
        wrap(out, &note, "  ", "   ", width);
    }
}

/// A finding as the model wrote it: its explanation, then its fix.
fn finding(out: &mut String, f: Option<&Finding>, width: usize) {
    let Some(f) = f else { return };
    wrap(out, &format!("→ {}", f.explanation), "    ", "      ", width);
    if let Some(fix) = f.fix_line() {
        wrap(out, &fix, "      ", "      ", width);
    }
}

/// A remote service the client side is stuck on: its CLOSE-WAIT, age, growth and closings,
/// its holders, its finding.
fn remote(out: &mut String, r: &RemoteView, width: usize) {
    let mut head = format!("to {}: {} CLOSE-WAIT", r.remote, r.close_wait);
    if let Some(a) = r.close_wait_oldest_s {
        let _ = write!(head, ", the oldest {a:.0} s");
    }
    if let Some(g) = r.close_wait_per_min {
        let _ = write!(head, ", {g:+.0}/min, {} closed while watched", r.cleared);
    }
    wrap(out, &head, "    ", "      ", width);
    holders(out, &r.holders, width);
    finding(out, r.finding.as_ref(), width);
}

/// Holders as a small table: pid, command, CLOSE-WAIT held, descriptors open (of the limit),
/// and where it runs (the unit, container or pod): the last column, cut at the width.
fn holders(out: &mut String, holders: &[Holding], width: usize) {
    if holders.is_empty() {
        return;
    }
    let fds = |h: &Holding| match h.max_fds {
        Some(m) => format!("{} of {m}", h.open_fds),
        None => h.open_fds.to_string(),
    };
    let pid_w = holders.iter().map(|h| h.pid.to_string().len()).max().unwrap_or(0).max(7);
    let cmd_w = holders.iter().map(|h| h.name.chars().count()).max().unwrap_or(0).max(7);
    let cw_w = holders.iter().map(|h| h.sockets.to_string().len()).max().unwrap_or(0).max(2);
    let fds_w = holders.iter().map(|h| fds(h).len()).max().unwrap_or(0).max(8);
    let head = format!(
        "    {:<pid_w$} {:<cmd_w$} {:>cw_w$}  {:<fds_w$}  unit/container/pod",
        "held by", "command", "CW", "fds open"
    );
    let _ = writeln!(out, "{}", cut(&head, width));
    for h in holders {
        let runs_in = h.cgroup.as_ref().and_then(|c| c.short()).unwrap_or_else(|| "-".into());
        let line = format!(
            "    {:<pid_w$} {:<cmd_w$} {:>cw_w$}  {:<fds_w$}  {}",
            h.pid,
            h.name,
            h.sockets,
            fds(h),
            runs_in
        );
        let _ = writeln!(out, "{}", cut(line.trim_end(), width));
    }
}

/// `text` cut to `width` characters, the last one an ellipsis when cut.
fn cut(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let mut s: String = text.chars().take(width.saturating_sub(1)).collect();
    s.push('…');
    s
}

/// `text` in lines of at most `width` characters, broken between words: the first line after
/// `first`, the others after `rest`.
fn wrap(out: &mut String, text: &str, first: &str, rest: &str, width: usize) {
    let mut line = first.to_string();
    let mut empty = true;
    for word in text.split(' ') {
        let fits = line.chars().count() + 1 + word.chars().count() <= width;
        if !empty && !fits {
            let _ = writeln!(out, "{line}");
            line = rest.to_string();
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        line.push_str(word);
        empty = false;
    }
    let _ = writeln!(out, "{line}");
}

/// One line for a snapshot: each service port's server CLOSE-WAIT, rate, age and top holder,
/// and each remote service's client CLOSE-WAIT, the same.
pub fn line(s: &Snapshot) -> String {
    let mut parts = Vec::new();
    for ns in &s.namespaces {
        if let Some(e) = &ns.error {
            parts.push(format!("netns {}: {e}", ns.inode));
            continue;
        }
        for p in &ns.ports {
            if p.listening || !p.server.is_empty() || p.remotes.is_empty() {
                parts.push(port_line(ns.inode, p));
            }
            parts.extend(p.remotes.iter().map(|r| remote_line(ns.inode, r)));
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
    let s = format!("netns {inode} :{} ESTAB {estab} CLOSE-WAIT {cw}", p.port);
    stuck_line(s, p.close_wait_per_min, p.close_wait_oldest_s, &p.holders)
}

fn remote_line(inode: u64, r: &RemoteView) -> String {
    let s = format!("netns {inode} → {} CLOSE-WAIT {}", r.remote, r.close_wait);
    stuck_line(s, r.close_wait_per_min, r.close_wait_oldest_s, &r.holders)
}

/// `s` and, where known, the growth, the oldest's age and the top holder.
fn stuck_line(
    mut s: String,
    rate: Option<f64>,
    oldest: Option<f64>,
    holders: &[Holding],
) -> String {
    if let Some(r) = rate {
        let _ = write!(s, " ({r:+.0}/min)");
    }
    if let Some(a) = oldest {
        let _ = write!(s, " oldest {a:.0}s");
    }
    if let Some(h) = holders.first() {
        let _ = write!(s, " held by {} {} ({})", h.pid, h.name, h.sockets);
    }
    s
}

/// Redraws `next()`'s table every `interval` until q (or Esc, or Ctrl-C) is pressed.
pub fn live(interval: Duration, mut next: impl FnMut() -> Snapshot) -> io::Result<()> {
    terminal::enable_raw_mode()?;
    let result = (|| -> io::Result<()> {
        loop {
            let text = table(&next(), terminal_width());
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

#[cfg(test)]
mod tests {
    use super::*;
    use cwlab_model::diagnosis::{of_watch, Service, Watched};
    use cwlab_model::runtime::Runtime;
    use cwlab_model::watch::{Cgroup, NamespaceView, Pod};

    fn snapshot(cw: u32, fw2: u32, cgroup: Option<Cgroup>) -> Snapshot {
        let mut p = PortView { port: 18080, listening: true, ..Default::default() };
        p.server.insert(TcpState::CloseWait, cw);
        p.server.insert(TcpState::Listen, 1);
        p.client.insert(TcpState::FinWait2, fw2);
        p.close_wait_oldest_s = Some(18.2);
        p.holders.push(Holding {
            pid: 19599,
            name: "python3".into(),
            sockets: cw,
            open_fds: cw + 7,
            max_fds: Some(20000),
            runtime: Some(Runtime::Cpython),
            cgroup,
        });
        p.finding = of_watch(&Watched {
            service: Service::Port(18080),
            close_wait: cw,
            unfiled: 0,
            oldest_s: p.close_wait_oldest_s,
            per_min: None,
            cleared: 0,
            bound: None,
            watched_s: 0.0,
            stuck_s: 10.0,
            holders: &p.holders,
        });
        let ns = NamespaceView {
            inode: 4026531833,
            label: "4026531833 (host)".into(),
            ports: vec![p],
            ..Default::default()
        };
        Snapshot { t_unix_ms: 0, took_ms: 13.94, namespaces: vec![ns] }
    }

    #[test]
    fn issue_21_the_table_fits_80_columns_with_every_column_where_they_fit() {
        let unit = Some(unit_cgroup("/system.slice/leaky.service", "leaky.service"));
        let text = table(&snapshot(220, 220, unit), WIDTH);
        let want = "\
netns 4026531833 (host)
  port  side   ESTAB FW1 FW2 TW  CW LA CLOSING SYN-RECV CW/min oldest
  18080 server     0   0   0  0 220  0       0        0      -   18 s
  18080 client     0   0 220  0   0  0       0        0
    held by command  CW  fds open      unit/container/pod
    19599   python3 220  227 of 20000  leaky.service
    → 220 CLOSE-WAIT (steady, the oldest 18 s), held by pid 19599 `python3`:
      this side got the peer's FIN and never closed; the holder keeps the last
      reference
      fix: close each connection once a read returns EOF, on every path; a
      forking server closes its copy in the parent right after fork() (`cwlab
      check -- CMD` tells which)
looked in 13.9 ms
";
        assert_eq!(text, want, "\n{text}");
    }

    #[test]
    fn issue_19_a_client_stuck_on_a_remote_service_is_named_under_its_port() {
        let holders = vec![Holding {
            pid: 4242,
            name: "python3".into(),
            sockets: 50,
            open_fds: 57,
            max_fds: Some(1024),
            runtime: Some(Runtime::Cpython),
            cgroup: None,
        }];
        let remote = "10.0.0.5:443".parse().unwrap();
        let finding = of_watch(&Watched {
            service: Service::Remote(remote),
            close_wait: 50,
            unfiled: 0,
            oldest_s: Some(75.0),
            per_min: Some(0.0),
            cleared: 0,
            bound: None,
            watched_s: 30.0,
            stuck_s: 60.0,
            holders: &holders,
        });
        let mut p = PortView { port: 443, listening: false, ..Default::default() };
        p.client.insert(TcpState::CloseWait, 50);
        p.client.insert(TcpState::Established, 2);
        p.remotes.push(RemoteView {
            remote,
            close_wait: 50,
            close_wait_oldest_s: Some(75.0),
            close_wait_per_min: Some(0.0),
            cleared: 0,
            holders,
            finding,
        });
        let mut s = snapshot(220, 220, None);
        s.namespaces[0].ports.insert(0, p);
        let text = table(&s, WIDTH);
        let want = "\
netns 4026531833 (host)
  port  side   ESTAB FW1 FW2 TW  CW LA CLOSING SYN-RECV CW/min oldest
  443   client     2   0   0  0  50  0       0        0
    to 10.0.0.5:443: 50 CLOSE-WAIT, the oldest 75 s, +0/min, 0 closed while
      watched
    held by command CW  fds open    unit/container/pod
    4242    python3 50  57 of 1024  -
    → pid 4242 `python3` holds 50 half-closed connections to 10.0.0.5:443
      (steady, the oldest 75 s): its pool does not notice the server's FIN; none
      was closed in the 30 s watched, and each stays half-closed until the
      process closes it or exits
      fix (CPython): close every response and Session (`with requests.Session()
      as s:`, `resp.close()`); http.client: read each response to its end and
      close the HTTPConnection you no longer use
  18080 server     0   0   0  0 220  0       0        0      -   18 s
";
        assert!(text.starts_with(want), "\n{text}");
        let line = line(&s);
        assert!(line.contains("netns 4026531833 → 10.0.0.5:443 CLOSE-WAIT 50 (+0/min) oldest 75s held by 4242 python3 (50) · netns 4026531833 :18080"), "{line}");
    }

    #[test]
    fn issue_21_a_million_sockets_and_a_narrow_terminal_leave_columns_out_not_close_wait() {
        let pod = Cgroup {
            path: "/kubepods/besteffort/pod5a0b3c9e-1d2f-4e6a-8b7c-9d0e1f2a3b4c/x".into(),
            pod: Some(Pod {
                uid: "5a0b3c9e-1d2f-4e6a-8b7c-9d0e1f2a3b4c".into(),
                qos: "besteffort".into(),
                name: Some("checkout-7d9f8b6c4-x2x9q-with-a-very-long-generated-name".into()),
            }),
            ..Default::default()
        };
        for width in [80, 60, 40] {
            let text = table(&snapshot(1_000_000, 1_000_000, Some(pod.clone())), width);
            for l in text.lines() {
                assert!(l.chars().count() <= width, "{width}: {l:?} in\n{text}");
            }
            assert!(text.contains(" CW "), "{text}");
            assert!(text.contains("1000000"), "{text}");
            assert_eq!(text.contains("pod/che"), width >= 60, "{text}");
            let left_out = text.contains("(left out for width: ");
            assert_eq!(left_out, width < 80, "{text}");
        }
        // At 50, the columns that count nothing go first: FW2 stays.
        let text = table(&snapshot(1_000_000, 1_000_000, None), 50);
        assert!(text.contains(" FW2 "), "{text}");
        assert!(text.contains("(left out for width: FW1 TW LA CLOSING SYN-RECV)"), "{text}");
        assert!(text.contains("    19599   python3 1000000"), "{text}");
    }

    fn unit_cgroup(path: &str, unit: &str) -> Cgroup {
        Cgroup {
            path: path.into(),
            unit: Some(unit.into()),
            slice: Some("system.slice".into()),
            ..Default::default()
        }
    }
}
