//! `cwlab sockets`: the kernel's TCP socket table, filtered in the kernel, like `ss -tan`, with the
//! processes and fds that hold each socket when asked.

use std::collections::HashSet;
use std::io::Write;

use clap::ValueEnum;
use cwlab_model::{exit, TcpState};
use cwlab_sampler::cgroup::{self, Cgroup};
use cwlab_sampler::holders::{self, Holders};
use cwlab_sampler::{Backend, PortSide, Query, SocketRecord, States, Table};
use serde::Serialize;

use crate::app::Failure;

#[derive(clap::Args)]
pub struct Args {
    /// Only sockets with this port (on the side --side names).
    #[arg(long)]
    port: Option<u16>,
    /// Which port --port looks at: the local one, the remote one, or either.
    #[arg(long, value_enum, default_value_t = SideArg::Any)]
    side: SideArg,
    /// Only sockets in this state (repeatable; any spelling: close-wait, CLOSE_WAIT, ESTAB...).
    #[arg(long = "state", value_parser = parse_state)]
    states: Vec<TcpState>,
    /// Show which processes and fds hold each socket.
    #[arg(long)]
    holders: bool,
    /// Print only the number of sockets.
    #[arg(long, conflicts_with = "json")]
    count: bool,
    /// Print a JSON array of records.
    #[arg(long)]
    json: bool,
    /// Where to read the table: sock_diag (kernel-filtered) or /proc/net/tcp.
    #[arg(long, value_enum, default_value_t = BackendArg::Diag)]
    backend: BackendArg,
}

#[derive(Clone, Copy, ValueEnum)]
enum SideArg {
    Local,
    Remote,
    Any,
}

#[derive(Clone, Copy, ValueEnum)]
enum BackendArg {
    Diag,
    Proc,
}

fn parse_state(s: &str) -> Result<TcpState, String> {
    s.parse().map_err(|e: cwlab_model::state::UnknownState| e.to_string())
}

/// One socket as `--json` prints it.
#[derive(Serialize)]
struct Record<'a> {
    state: TcpState,
    local: String,
    remote: String,
    inode: u64,
    uid: u32,
    recv_q: u32,
    send_q: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    holders: Option<Vec<HolderJson<'a>>>,
}

#[derive(Serialize)]
struct HolderJson<'a> {
    pid: u32,
    fd: i32,
    comm: &'a str,
    ppid: u32,
    cmdline: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    cgroup: Option<&'a Cgroup>,
}

/// Where each holding process runs, read once per process.
type Places = std::collections::HashMap<u32, Cgroup>;

fn places(h: &Holders) -> Places {
    h.processes.keys().filter_map(|pid| Some((*pid, cgroup::of(*pid)?))).collect()
}

pub fn main(a: &Args) -> Result<i32, Failure> {
    let backend = match a.backend {
        BackendArg::Diag => Backend::SockDiag,
        BackendArg::Proc => Backend::ProcNet,
    };
    let side = match a.side {
        SideArg::Local => PortSide::Local,
        SideArg::Remote => PortSide::Remote,
        SideArg::Any => PortSide::Any,
    };
    let q = Query { states: States::of(&a.states), port: a.port, side, peer: None, info: false };
    let mut out = std::io::stdout().lock();
    if a.count {
        let n = match backend {
            Backend::SockDiag => cwlab_sampler::count_split(&q),
            Backend::ProcNet => Table::open(backend).and_then(|mut t| t.count(&q)),
        }
        .map_err(Failure::bad_input)?;
        writeln!(out, "{n}").map_err(Failure::bad_input)?;
        return Ok(exit::PASS);
    }
    // The holders' descriptors are read while the sockets are dumped.
    let early = a.holders.then(holders::early);
    let mut table = Table::open(backend).map_err(Failure::bad_input)?;
    let records = table.list(&q).map_err(Failure::bad_input)?;
    let held = early.map(|e| {
        let inodes: HashSet<u64> = records.iter().map(|r| r.inode).filter(|i| *i != 0).collect();
        e.find(&inodes)
    });
    let places = held.as_ref().map(places).unwrap_or_default();
    let held = held.as_ref().map(|h| (h, &places));
    let text = if a.json { json(&records, held) } else { table_text(&records, held) };
    out.write_all(text.as_bytes()).map_err(Failure::bad_input)?;
    Ok(exit::PASS)
}

fn json(records: &[SocketRecord], held: Option<(&Holders, &Places)>) -> String {
    let v: Vec<Record<'_>> = records
        .iter()
        .map(|r| Record {
            state: r.state,
            local: r.local.to_string(),
            remote: r.remote.to_string(),
            inode: r.inode,
            uid: r.uid,
            recv_q: r.recv_q,
            send_q: r.send_q,
            holders: held.map(|(h, places)| {
                h.of(r.inode)
                    .iter()
                    .map(|x| {
                        let p = h.processes.get(&x.pid);
                        HolderJson {
                            pid: x.pid,
                            fd: x.fd,
                            comm: p.map_or("", |p| p.comm.as_str()),
                            ppid: p.map_or(0, |p| p.ppid),
                            cmdline: p.map_or("", |p| p.cmdline.as_str()),
                            cgroup: places.get(&x.pid),
                        }
                    })
                    .collect()
            }),
        })
        .collect();
    let mut s = serde_json::to_string_pretty(&v).expect("records serialize");
    s.push('\n');
    s
}

/// `ss -tan` columns, and `users:(("comm",pid=P,fd=F),…)` as `ss -p` prints holders, each with
/// where it runs when its cgroup says (`in=nginx.service`, `in=pod/web-0`). Written
/// into one string by hand, addresses and numbers included: at 10,000 sockets the formatting
/// machinery (a string per cell, `Display` of each address) was a third of `--holders`' time.
fn table_text(records: &[SocketRecord], held: Option<(&Holders, &Places)>) -> String {
    let mut cell = String::new();
    let (mut lw, mut pw) = (18, 17);
    for r in records {
        cell.clear();
        addr(&mut cell, r.local);
        lw = lw.max(cell.len());
        cell.clear();
        peer_addr(&mut cell, r);
        pw = pw.max(cell.len());
    }
    let mut s = String::with_capacity(records.len() * (lw + pw + 80) + 128);
    let process = if held.is_some() { " Process" } else { "" };
    let head = format!(
        "{:<11}{:>7} {:>7} {:<lw$} {:<pw$}{process}",
        "State", "Recv-Q", "Send-Q", "Local Address:Port", "Peer Address:Port"
    );
    s.push_str(head.trim_end());
    s.push('\n');
    for r in records {
        let start = s.len();
        pad(&mut s, r.state.name(), 11, false);
        cell.clear();
        number(&mut cell, u64::from(r.recv_q));
        pad(&mut s, &cell, 7, true);
        s.push(' ');
        cell.clear();
        number(&mut cell, u64::from(r.send_q));
        pad(&mut s, &cell, 7, true);
        s.push(' ');
        cell.clear();
        addr(&mut cell, r.local);
        pad(&mut s, &cell, lw, false);
        s.push(' ');
        cell.clear();
        peer_addr(&mut cell, r);
        pad(&mut s, &cell, pw, false);
        if let Some((h, places)) = held {
            s.push(' ');
            users(&mut s, h, places, r.inode);
        }
        let end = s[start..].trim_end().len();
        s.truncate(start + end);
        s.push('\n');
    }
    s
}

/// `text` (ASCII: states, numbers, addresses) in a column of `width`, on the right when `right`.
fn pad(s: &mut String, text: &str, width: usize, right: bool) {
    let fill = width.saturating_sub(text.len());
    if right {
        spaces(s, fill);
        s.push_str(text);
    } else {
        s.push_str(text);
        spaces(s, fill);
    }
}

fn spaces(s: &mut String, mut n: usize) {
    const BLANK: &str = "                                                                ";
    while n > 0 {
        let k = n.min(BLANK.len());
        s.push_str(&BLANK[..k]);
        n -= k;
    }
}

/// A number in decimal, without the formatting machinery.
fn number(s: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    s.push_str(std::str::from_utf8(&digits[i..]).expect("ASCII digits"));
}

/// `1.2.3.4:80` or `[::1]:80`, as `SocketAddr` displays it.
fn addr(s: &mut String, a: std::net::SocketAddr) {
    match a {
        std::net::SocketAddr::V4(v4) => {
            for (i, o) in v4.ip().octets().iter().enumerate() {
                if i > 0 {
                    s.push('.');
                }
                number(s, u64::from(*o));
            }
        }
        std::net::SocketAddr::V6(v6) => {
            use std::fmt::Write as _;
            let _ = write!(s, "[{}]", v6.ip());
        }
    }
    s.push(':');
    number(s, u64::from(a.port()));
}

/// The peer's address, or `0.0.0.0:*` for a socket with none (a listener).
fn peer_addr(s: &mut String, r: &SocketRecord) {
    if r.remote.port() == 0 {
        s.push_str(if r.remote.is_ipv4() { "0.0.0.0:*" } else { "[::]:*" });
    } else {
        addr(s, r.remote);
    }
}

fn users(s: &mut String, h: &Holders, places: &Places, inode: u64) {
    let list = h.of(inode);
    if list.is_empty() {
        s.push('-');
        return;
    }
    s.push_str("users:(");
    for (i, x) in list.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let comm = h.processes.get(&x.pid).map_or("?", |p| p.comm.as_str());
        s.push_str("(\"");
        s.push_str(comm);
        s.push_str("\",pid=");
        number(s, u64::from(x.pid));
        s.push_str(",fd=");
        if x.fd < 0 {
            s.push('-');
        }
        number(s, u64::from(x.fd.unsigned_abs()));
        if let Some(short) = places.get(&x.pid).and_then(Cgroup::short) {
            s.push_str(",in=");
            s.push_str(&short);
        }
        s.push(')');
    }
    s.push(')');
}

#[cfg(test)]
mod tests {
    use super::*;
    use cwlab_model::TcpState;
    use cwlab_sampler::holders::{Holding, Process};

    /// The columns as `format!` writes them: what the hand-written table must equal.
    fn reference(records: &[SocketRecord], held: Option<(&Holders, &Places)>) -> String {
        let peer = |r: &SocketRecord| {
            if r.remote.port() == 0 {
                if r.remote.is_ipv4() {
                    "0.0.0.0:*".to_string()
                } else {
                    "[::]:*".to_string()
                }
            } else {
                r.remote.to_string()
            }
        };
        let lw = records.iter().map(|r| r.local.to_string().len()).max().unwrap_or(0).max(18);
        let pw = records.iter().map(|r| peer(r).len()).max().unwrap_or(0).max(17);
        let process = if held.is_some() { "Process" } else { "" };
        let mut s = format!(
            "{:<11}{:>7} {:>7} {:<lw$} {:<pw$} {process}",
            "State", "Recv-Q", "Send-Q", "Local Address:Port", "Peer Address:Port"
        )
        .trim_end()
        .to_string();
        s.push('\n');
        for r in records {
            let users = held.map_or(String::new(), |(h, places)| {
                let list = h.of(r.inode);
                if list.is_empty() {
                    return "-".into();
                }
                let each: Vec<String> = list
                    .iter()
                    .map(|x| {
                        let at = places.get(&x.pid).and_then(|c| c.short());
                        let at = at.map_or(String::new(), |a| format!(",in={a}"));
                        format!("(\"{}\",pid={},fd={}{at})", h.processes[&x.pid].comm, x.pid, x.fd)
                    })
                    .collect();
                format!("users:({})", each.join(","))
            });
            let l = format!(
                "{:<11}{:>7} {:>7} {:<lw$} {:<pw$} {users}",
                r.state.name(),
                r.recv_q,
                r.send_q,
                r.local.to_string(),
                peer(r)
            );
            s.push_str(l.trim_end());
            s.push('\n');
        }
        s
    }

    #[test]
    fn the_table_reads_as_format_would_write_it() {
        let rec = |state, local: &str, remote: &str, inode, recv_q| SocketRecord {
            state,
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            inode,
            uid: 0,
            recv_q,
            send_q: 4096,
            idle_ms: None,
            cookie: 0,
            timewait: false,
        };
        let records = vec![
            rec(TcpState::Listen, "0.0.0.0:8080", "0.0.0.0:0", 7, 0),
            rec(TcpState::CloseWait, "127.0.0.1:8080", "127.0.0.1:51234", 9, 12),
            rec(TcpState::Established, "[::1]:443", "[2001:db8::1]:65535", 0, 1_000_000),
            rec(TcpState::Listen, "[::]:22", "[::]:0", 11, 0),
        ];
        let mut h = Holders::default();
        h.by_inode.insert(9, vec![Holding { pid: 4158, fd: 7 }, Holding { pid: 4159, fd: 3 }]);
        h.by_inode.insert(7, vec![Holding { pid: 4158, fd: 3 }]);
        for pid in [4158, 4159] {
            let p = Process { pid, ppid: 1, comm: "srv".into(), cmdline: "srv".into() };
            h.processes.insert(pid, p);
        }
        let mut places = Places::new();
        places.insert(4159, cgroup::classify("/system.slice/srv.service"));
        let text = table_text(&records, Some((&h, &places)));
        assert_eq!(text, reference(&records, Some((&h, &places))));
        assert!(
            text.contains(r#"users:(("srv",pid=4158,fd=7),("srv",pid=4159,fd=3,in=srv.service))"#),
            "{text}"
        );
        assert_eq!(table_text(&records, None), reference(&records, None));
    }
}
