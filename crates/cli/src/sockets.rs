//! `cwlab sockets`: the kernel's TCP socket table, filtered in the kernel, like `ss -tan`, with the
//! processes and fds that hold each socket when asked. The flags choose what is read; the table
//! and the JSON are written by `cwlab_report::sockets`.

use std::collections::HashSet;
use std::io::Write;

use clap::ValueEnum;
use cwlab_model::{exit, TcpState};
use cwlab_report::sockets::{self, Held, Places};
use cwlab_sampler::cgroup;
use cwlab_sampler::holders::{self, Holders};
use cwlab_sampler::{Backend, PortSide, Query, States, Table};

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

/// Where each holding process runs, read once per process.
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
    let held = held.as_ref().map(|holders| Held { holders, places: &places });
    let text = if a.json { sockets::json(&records, held) } else { sockets::table(&records, held) };
    out.write_all(text.as_bytes()).map_err(Failure::bad_input)?;
    Ok(exit::PASS)
}
