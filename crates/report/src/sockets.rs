//! `cwlab sockets`' two outputs: the `ss -tan` table (with `ss -p`'s `users:(…)` column when
//! the holders are asked for) and the JSON records of `--json`. The command gathers the records,
//! the holders and where each holder runs; this only writes them.

use std::collections::HashMap;

use cwlab_model::TcpState;
use cwlab_sampler::cgroup::Cgroup;
use cwlab_sampler::holders::Holders;
use cwlab_sampler::SocketRecord;
use serde::Serialize;

/// Where each holding process runs (its cgroup), by pid.
pub type Places = HashMap<u32, Cgroup>;

/// Who holds the sockets listed, and where each holder runs.
#[derive(Debug, Clone, Copy)]
pub struct Held<'a> {
    /// The holders of the sockets.
    pub holders: &'a Holders,
    /// Where each holding process runs, where its cgroup says.
    pub places: &'a Places,
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

/// The records as `--json` prints them: a JSON array, each socket's holders (with where each
/// runs, when its cgroup says) when `held` is given.
pub fn json(records: &[SocketRecord], held: Option<Held<'_>>) -> String {
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
            holders: held.map(|Held { holders: h, places }| {
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
pub fn table(records: &[SocketRecord], held: Option<Held<'_>>) -> String {
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
        if let Some(Held { holders, places }) = held {
            s.push(' ');
            users(&mut s, holders, places, r.inode);
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
    use cwlab_sampler::cgroup;
    use cwlab_sampler::holders::{Holding, Process};

    /// The columns as `format!` writes them: what the hand-written table must equal.
    fn reference(records: &[SocketRecord], held: Option<Held<'_>>) -> String {
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
            let users = held.map_or(String::new(), |Held { holders: h, places }| {
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
        let held = Held { holders: &h, places: &places };
        let text = table(&records, Some(held));
        assert_eq!(text, reference(&records, Some(held)));
        assert!(
            text.contains(r#"users:(("srv",pid=4158,fd=7),("srv",pid=4159,fd=3,in=srv.service))"#),
            "{text}"
        );
        assert_eq!(table(&records, None), reference(&records, None));
    }
}
