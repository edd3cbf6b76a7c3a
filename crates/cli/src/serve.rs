//! `cwlab serve`: the hidden entry of the forking server. Nothing here may start a thread.

use std::net::IpAddr;

use cwlab_model::scenario::Behaviour;

use crate::app::Failure;

#[derive(clap::Args)]
pub struct Args {
    /// How connections end (see docs/scenarios.md).
    #[arg(long, value_parser = parse_behaviour)]
    behaviour: Behaviour,
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    addr: IpAddr,
    /// The port; 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// The listen backlog.
    #[arg(long, default_value_t = 4096)]
    backlog: i32,
    /// Make the acceptor the init of a new PID namespace.
    #[arg(long)]
    pid_namespace: bool,
    /// Serve from a network namespace of the server's own (the two-hosts topology).
    #[arg(long)]
    net_namespace: bool,
    /// RLIMIT_NOFILE for the acceptor.
    #[arg(long)]
    nofile: Option<u64>,
    /// SO_RCVBUF on the listener.
    #[arg(long)]
    rcvbuf: Option<u32>,
    /// SO_SNDBUF on the listener.
    #[arg(long)]
    sndbuf: Option<u32>,
}

fn parse_behaviour(s: &str) -> Result<Behaviour, String> {
    Behaviour::parse(s).ok_or_else(|| format!("unknown behaviour `{s}`"))
}

pub fn main(a: &Args) -> Result<i32, Failure> {
    let cfg = cwlab_servers::Config {
        behaviour: a.behaviour,
        addr: a.addr,
        port: a.port,
        backlog: a.backlog,
        pid_namespace: a.pid_namespace,
        net_namespace: a.net_namespace,
        nofile: a.nofile,
        rcvbuf: a.rcvbuf,
        sndbuf: a.sndbuf,
    };
    cwlab_servers::serve(&cfg).map_err(Failure::bad_input)
}
