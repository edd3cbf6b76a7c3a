//! `cwlab sockets`: the kernel's TCP socket table, filtered in the kernel, like `ss -tan`, with the
//! processes and fds that hold each socket when asked.

use std::collections::HashSet;
use std::io::Write;

use clap::ValueEnum;
use cwlab_model::{exit, TcpState};
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
    let mut table = Table::open(backend).map_err(Failure::bad_input)?;
    let records = table.list(&q).map_err(Failure::bad_input)?;
    let held = if a.holders {
        let inodes: HashSet<u64> = records.iter().map(|r| r.inode).filter(|i| *i != 0).collect();
        Some(holders::find(&inodes))
    } else {
        None
    };
    let text =
        if a.json { json(&records, held.as_ref()) } else { table_text(&records, held.as_ref()) };
    out.write_all(text.as_bytes()).map_err(Failure::bad_input)?;
    Ok(exit::PASS)
}

fn json(records: &[SocketRecord], held: Option<&Holders>) -> String {
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
            holders: held.map(|h| {
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

/// `ss -tan` columns, and `users:(("comm",pid=P,fd=F),…)` as `ss -p` prints holders.
fn table_text(records: &[SocketRecord], held: Option<&Holders>) -> String {
    let locals: Vec<String> = records.iter().map(|r| r.local.to_string()).collect();
    let peers: Vec<String> = records.iter().map(peer).collect();
    let lw = locals.iter().map(String::len).max().unwrap_or(0).max(18);
    let pw = peers.iter().map(String::len).max().unwrap_or(0).max(17);
    let mut s = String::new();
    let mut line = |state: &str, rq: &str, sq: &str, local: &str, peer: &str, users: &str| {
        let l = format!("{state:<11}{rq:>7} {sq:>7} {local:<lw$} {peer:<pw$} {users}");
        s.push_str(l.trim_end());
        s.push('\n');
    };
    let process = if held.is_some() { "Process" } else { "" };
    line("State", "Recv-Q", "Send-Q", "Local Address:Port", "Peer Address:Port", process);
    for (i, r) in records.iter().enumerate() {
        let users = held.map_or(String::new(), |h| users(h, r.inode));
        line(
            r.state.name(),
            &r.recv_q.to_string(),
            &r.send_q.to_string(),
            &locals[i],
            &peers[i],
            &users,
        );
    }
    s
}

fn users(h: &Holders, inode: u64) -> String {
    let list = h.of(inode);
    if list.is_empty() {
        return "-".into();
    }
    let each: Vec<String> = list
        .iter()
        .map(|x| {
            let comm = h.processes.get(&x.pid).map_or("?", |p| p.comm.as_str());
            format!("(\"{comm}\",pid={},fd={})", x.pid, x.fd)
        })
        .collect();
    format!("users:({})", each.join(","))
}

fn peer(r: &SocketRecord) -> String {
    if r.remote.port() == 0 {
        match r.remote {
            std::net::SocketAddr::V4(_) => "0.0.0.0:*".into(),
            std::net::SocketAddr::V6(_) => "[::]:*".into(),
        }
    } else {
        r.remote.to_string()
    }
}
