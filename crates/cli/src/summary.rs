//! The human summary of a report: the story, final counts per side and state, who holds the stuck
//! sockets, what the acceptor's descriptors did, each expectation, the verdict.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::path::Path;

use cwlab_model::report::{Holder, Report, Role, Side, Verdict};
use cwlab_model::TcpState;

pub fn render(r: &Report, report_path: &Path) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "━━ {} ━━ {}", r.scenario.name, r.scenario.file);
    for line in wrap(&r.scenario.story, 76) {
        let _ = writeln!(s, "  {line}");
    }
    let _ = writeln!(
        s,
        "\n  server {} · {} clients ({} completed{}) · port {} · {}",
        r.scenario.behaviour,
        r.clients,
        r.client_outcome.completed,
        if r.client_outcome.failed > 0 {
            format!(", {} failed", r.client_outcome.failed)
        } else {
            String::new()
        },
        r.port,
        r.isolation
    );
    if let Some(note) = &r.isolation_note {
        let _ = writeln!(s, "  note: {note}");
    }
    if r.topology == cwlab_model::scenario::Topology::TwoHosts {
        let _ = writeln!(
            s,
            "  two hosts: clients on {}, the server on {}, a veth pair between; each side counted on its own host",
            cwlab_runner::CLIENT_HOST,
            cwlab_runner::SERVER_HOST
        );
    }
    if let Some(e) = &r.client_outcome.first_error {
        let _ = writeln!(s, "  first client error: {e}");
    }
    counts(&mut s, r);
    holders(&mut s, &r.holders);
    fds(&mut s, r);
    outcomes(&mut s, r);
    witnesses(&mut s, r);
    expectations(&mut s, r, report_path);
    s
}

fn counts(s: &mut String, r: &Report) {
    let _ = writeln!(s, "\n  {:<12}{:>8}{:>8}", "at the end", "server", "client");
    let f = &r.final_counts;
    for st in TcpState::ALL {
        let (a, b) = (f.get(Side::Server, st), f.get(Side::Client, st));
        if a + b > 0 {
            let _ = writeln!(s, "  {:<12}{a:>8}{b:>8}", st.name());
        }
    }
    if f.server.is_empty() && f.client.is_empty() {
        let _ = writeln!(s, "  (no socket on the port)");
    }
}

fn holders(s: &mut String, rows: &[Holder]) {
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(s, "\n  who holds the stuck sockets");
    type Group<'a> = (BTreeSet<(u64, &'a str, &'a str)>, BTreeMap<Option<u32>, Vec<i32>>);
    let mut groups: BTreeMap<(Side, TcpState, Role), Group<'_>> = BTreeMap::new();
    for h in rows {
        let g = groups.entry((h.side, h.state, h.role)).or_default();
        g.0.insert((h.inode, h.local.as_str(), h.remote.as_str()));
        g.1.entry(h.pid).or_default().extend(h.fd);
    }
    for ((side, state, role), (sockets, pids)) in groups {
        let sockets = sockets.len();
        let noun = if sockets == 1 { "socket" } else { "sockets" };
        let who = match (role, pids.len()) {
            (Role::Nobody, _) => "held by nobody".to_string(),
            (_, 1) => {
                let (pid, fds) = pids.iter().next().unwrap();
                format!(
                    "held by pid {}, the {role}, {} {}",
                    pid.unwrap_or(0),
                    if fds.len() == 1 { "fd" } else { "fds" },
                    ranges(fds)
                )
            }
            (_, n) => {
                let list: Vec<String> =
                    pids.keys().take(4).map(|p| p.unwrap_or(0).to_string()).collect();
                let more = if n > 4 { ", …" } else { "" };
                format!("held by {n} {role} processes (pids {}{more})", list.join(", "))
            }
        };
        let _ = writeln!(s, "    {sockets} {side} {state} {noun} {who}");
    }
}

/// `5–104` or `5, 7, 9–12`; long lists are cut.
fn ranges(fds: &[i32]) -> String {
    let mut v = fds.to_vec();
    v.sort_unstable();
    v.dedup();
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        parts.push(if i == j { v[i].to_string() } else { format!("{}–{}", v[i], v[j]) });
        i = j + 1;
    }
    if parts.len() > 6 {
        let n = parts.len();
        parts.truncate(5);
        parts.push(format!("… ({n} runs)"));
    }
    parts.join(", ")
}

fn fds(s: &mut String, r: &Report) {
    let (Some(before), Some(after)) = (r.acceptor.fds_baseline, r.acceptor.fds_end) else {
        return;
    };
    let grew = i64::from(after) - i64::from(before);
    let _ = writeln!(
        s,
        "\n  acceptor (pid {}) fds: {before} before the clients, {after} at the end ({grew:+})",
        r.acceptor.pid
    );
    let _ = writeln!(s, "  → {}", reading(r, before, grew));
}

/// One sentence that says what the numbers mean.
fn reading(r: &Report, before: u32, grew: i64) -> String {
    let close_wait = r.final_counts.get(Side::Server, TcpState::CloseWait);
    let held = |role: Role| {
        let mut v: Vec<(u64, &str)> = r
            .holders
            .iter()
            .filter(|h| h.state == TcpState::CloseWait && h.side == Side::Server && h.role == role)
            .map(|h| (h.inode, h.remote.as_str()))
            .collect();
        v.sort_unstable();
        v.dedup();
        v.len()
    };
    if close_wait == 0 {
        return if grew > 0 {
            format!("the symptom is gone, the fd leak is not: the acceptor holds {grew} more descriptors than before the clients came")
        } else {
            format!("no socket waits in CLOSE-WAIT and the acceptor is back to its {before} descriptors")
        };
    }
    let (acceptor, helper, worker, nobody) =
        (held(Role::Acceptor), held(Role::Helper), held(Role::Worker), held(Role::Nobody));
    if acceptor > 0 {
        format!("the acceptor holds {acceptor} connections the clients have closed: the last reference never went, so no FIN was sent")
    } else if helper > 0 {
        format!("{helper} closed connections are held by helper processes that inherited them across exec: the acceptor is clean, the leak is in the children")
    } else if worker > 0 {
        format!("{worker} closed connections are held by workers forked while they were open: fork without exec copies every descriptor")
    } else if nobody > 0 {
        format!(
            "{nobody} CLOSE-WAIT sockets are held by no process and {} were accepted: they wait in the listen queue. A busy server, not a leak",
            r.server.accepted
        )
    } else {
        format!("{close_wait} server sockets wait in CLOSE-WAIT: the peer closed, this side never sent its FIN")
    }
}

fn outcomes(s: &mut String, r: &Report) {
    let o = &r.server;
    if o.accept_errors > 0 {
        let errno = o.accept_errno.map_or("?".to_string(), errno_name);
        let _ = writeln!(
            s,
            "  acceptor: {} connections accepted, {} accept() calls failed ({errno})",
            o.accepted, o.accept_errors
        );
    }
    if r.client_outcome.hung > 0 {
        let _ = writeln!(
            s,
            "  clients: {} of {} waited for a reply or an EOF that never came",
            r.client_outcome.hung, r.clients
        );
    }
}

/// The kernel's transitions (paths, the first connections step by step) and the FIN counts.
fn witnesses(s: &mut String, r: &Report) {
    let t = &r.transitions;
    let _ = writeln!(s, "\n  what the kernel did");
    if t.available {
        for p in &t.paths {
            let path: Vec<&str> = p.path.iter().map(|x| x.name()).collect();
            let _ = writeln!(s, "    {} {} × {}", p.side, p.connections, path.join(" → "));
        }
        let handed_over = t.paths.iter().any(|p| {
            p.path.ends_with(&[TcpState::FinWait2, TcpState::Close])
                || p.path.ends_with(&[TcpState::FinWait1, TcpState::Close])
        });
        if handed_over {
            let _ = writeln!(
                s,
                "    (FIN-WAIT → CLOSE: the socket was handed to a timewait socket, which the table shows as TIME-WAIT or FIN-WAIT-2)"
            );
        }
        for c in &t.first {
            let steps = |v: &[(TcpState, f64)]| -> String {
                v.iter().map(|(st, ms)| format!("{st} {ms:.1}")).collect::<Vec<_>>().join(" → ")
            };
            let _ = writeln!(s, "    :{:<5} server {}", c.client_port, steps(&c.server));
            let _ = writeln!(s, "    {:6} client {}", "", steps(&c.client));
        }
        if t.lost > 0 {
            let _ = writeln!(s, "    ({} transitions lost: the counts are lower bounds)", t.lost);
        }
    } else {
        let _ =
            writeln!(s, "    transitions: not observable ({})", t.note.as_deref().unwrap_or("?"));
    }
    let p = &r.packets;
    if p.available {
        let n = p.connections;
        let _ = writeln!(
            s,
            "    server sent FIN: {} of {n} connections · client sent FIN: {} of {n}",
            p.sent(Side::Server, "FIN"),
            p.sent(Side::Client, "FIN")
        );
        let rst = (p.sent(Side::Server, "RST"), p.sent(Side::Client, "RST"));
        if rst != (0, 0) {
            let _ = writeln!(s, "    RST: server in {} connections, client in {}", rst.0, rst.1);
        }
        if let Some(f) = &p.pcap {
            let _ = writeln!(s, "    packets: {f}");
        }
    } else {
        let _ = writeln!(s, "    packets: not observable ({})", p.note.as_deref().unwrap_or("?"));
    }
}

fn errno_name(e: i32) -> String {
    match e {
        24 => "EMFILE: the acceptor is out of descriptors".into(),
        23 => "ENFILE: the system is out of descriptors".into(),
        12 => "ENOMEM".into(),
        105 => "ENOBUFS".into(),
        n => format!("errno {n}"),
    }
}

fn expectations(s: &mut String, r: &Report, path: &Path) {
    if !r.expectations.is_empty() {
        let _ = writeln!(s, "\n  expectations");
        let width = r.expectations.iter().map(|e| e.text.chars().count()).max().unwrap_or(0);
        for e in &r.expectations {
            let mark = match (e.observable, e.passed) {
                (false, _) => "?",
                (true, true) => "✓",
                (true, false) => "✗",
            };
            let _ = writeln!(s, "    {mark} {:width$}   {}", e.text, e.detail);
        }
    }
    if let Some(e) = &r.error {
        let _ = writeln!(s, "\n  error: {e}");
    }
    let held = r.expectations.iter().filter(|e| e.passed).count();
    let verdict = match r.verdict {
        Verdict::Pass => "PASS",
        Verdict::Fail => "FAIL",
        Verdict::Error => "ERROR",
    };
    let _ = writeln!(
        s,
        "\n  {verdict}  {held} of {} expectations held · {:.2}s · report {}",
        r.expectations.len(),
        r.duration_ms as f64 / 1000.0,
        path.display()
    );
}

pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for para in text.split("\n\n") {
        let mut line = String::new();
        for w in para.split_whitespace() {
            if !line.is_empty() && line.chars().count() + 1 + w.chars().count() > width {
                lines.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(w);
        }
        if !line.is_empty() {
            lines.push(line);
        }
        lines.push(String::new());
    }
    lines.pop();
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_ranges_read_like_a_person_writes_them() {
        assert_eq!(ranges(&[5, 6, 7, 8]), "5–8");
        assert_eq!(ranges(&[9, 5, 7, 10, 11]), "5, 7, 9–11");
        assert_eq!(ranges(&[1, 3, 5, 7, 9, 11, 13]), "1, 3, 5, 7, 9, … (7 runs)");
    }

    #[test]
    fn wraps_at_words() {
        assert_eq!(wrap("aa bb cc", 5), vec!["aa bb", "cc"]);
        assert_eq!(wrap("a\n\nb", 10), vec!["a", "", "b"]);
    }
}
