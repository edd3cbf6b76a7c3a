//! `cwlab check -- CMD ARGS...`: a server of the user's own under the lab's witnesses. The exit
//! code is the diagnosis: 0 clean (or a slow close), 1 a leak or another finding, 2 could not
//! run (the command not found, exited or never listened, bad arguments).

use std::path::PathBuf;
use std::time::Duration;

use clap::ValueEnum;
use cwlab_model::events::Reporter;
use cwlab_model::report::Verdict;
use cwlab_model::scenario::{
    CheckSettings, ClientCheckSettings, ClientRead, Closing, ServerCommand, WavePlan,
};
use cwlab_model::{exit, Scenario};
use cwlab_runner::Options;

use crate::app::Failure;
use crate::faces::{Faces, Stdout};
use crate::run::{check_writable, parse_duration, run_id, IsolationArg, MadeFolders};

/// A minimal HTTP/1.0 request, which line servers also take as a line.
const DEFAULT_REQUEST: &str = "GET / HTTP/1.0\r\n\r\n";

#[derive(clap::Args)]
pub struct Args {
    /// Clients, one connection each: a warm-up, then waves.
    #[arg(long, default_value_t = 100)]
    clients: u32,
    /// How many are at work at once (default: all of them, up to 100).
    #[arg(long)]
    concurrency: Option<u32>,
    /// each: every client closes as soon as its own exchange is over, the next starting as one
    /// finishes (as real clients do); together: all connect, then all close at once.
    #[arg(long = "close", value_enum, default_value_t = CloseArg::Each)]
    close: CloseArg,
    /// Connections before the baseline, so that what a server opens once (a runtime's lazy
    /// descriptor, a log file) is not counted (default: a tenth of the clients, at most 4).
    #[arg(long)]
    warmup: Option<u32>,
    /// Waves the other clients come in: a leak grows with every wave (default: 2).
    #[arg(long)]
    waves: Option<u32>,
    /// Where the clients connect (default: the address of the server's LISTEN socket: its
    /// IPv4 address where it has one, `::1` for an IPv6 wildcard).
    #[arg(long, value_name = "IP")]
    address: Option<std::net::IpAddr>,
    /// What each client sends (default: a minimal HTTP/1.0 GET).
    #[arg(long, conflicts_with = "request_file")]
    request: Option<String>,
    /// A file whose bytes each client sends.
    #[arg(long, value_name = "FILE")]
    request_file: Option<PathBuf>,
    /// reply: until the first reply bytes (and what follows closely) or the reply timeout; eof:
    /// until the server closes (a server that closes first); none: nothing.
    #[arg(long, value_enum, default_value_t = ReadArg::Reply)]
    read: ReadArg,
    /// How long a client waits for its reply (or EOF) before it counts as hung.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    reply_timeout: Duration,
    /// How long the lab watches after the clients closed.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    hold: Duration,
    /// The server's fixed port (default: one of the run's own, given as {port} and PORT).
    #[arg(long)]
    port: Option<u16>,
    /// How long the server may take to listen.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    ready_timeout: Duration,
    /// How long the server gets between SIGTERM and SIGKILL at the end.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    grace: Duration,
    /// auto: a private network and PID namespace if permitted, else the host's loopback;
    /// netns: namespaces or exit 2; host: the host's loopback.
    #[arg(long, value_enum, default_value_t = IsolationArg::Auto)]
    isolation: IsolationArg,
    /// Where to write the JSON report (default: reports/check.json).
    #[arg(long)]
    report: Option<PathBuf>,
    /// Print the report JSON on stdout instead of the summary.
    #[arg(long)]
    json: bool,
    /// Write the run's packets as a pcap file: to FILE, or beside the report.
    #[arg(long, value_name = "FILE", num_args = 0..=1)]
    pcap: Option<Option<PathBuf>>,
    #[command(flatten)]
    faces: Faces,
    /// Check a client of yours instead of a server: CMD runs against the lab's server, which
    /// answers each request and closes a connection once it has been idle for --idle-close;
    /// `{url}`, `{host}`, `{port}` in CMD and URL, HOST, PORT in its environment point at it.
    #[arg(long)]
    client: bool,
    /// With --client: http (HTTP/1.1 with keep-alive) or raw (each line echoed).
    #[arg(long, value_enum, default_value_t = ProtocolArg::Http)]
    protocol: ProtocolArg,
    /// With --client: how long the server keeps an idle connection open (its keep-alive
    /// timeout).
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    idle_close: Duration,
    /// With --client: how long a client-side CLOSE-WAIT may last before it counts as stuck.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    stuck: Duration,
    /// With --client: how long the client may run before it is stopped.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    timeout: Duration,
    /// The server (with --client: the client): a program and its arguments; `{port}` stands
    /// for the port.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum ProtocolArg {
    Http,
    Raw,
}

#[derive(Clone, Copy, ValueEnum)]
enum CloseArg {
    Each,
    Together,
}

#[derive(Clone, Copy, ValueEnum)]
enum ReadArg {
    Reply,
    Eof,
    None,
}

pub fn main(a: &Args) -> Result<i32, Failure> {
    let scenario = if a.client { client_scenario(a) } else { server_scenario(a)? };
    judge(a, &scenario)
}

/// `cwlab check --client`: the user's command is a client of the lab's keep-alive server.
fn client_scenario(a: &Args) -> Scenario {
    Scenario::check_client(ClientCheckSettings {
        command: ServerCommand { argv: a.command.clone(), env: Default::default(), cwd: None },
        http: matches!(a.protocol, ProtocolArg::Http),
        idle_close: a.idle_close,
        stuck: a.stuck,
        timeout: a.timeout,
    })
}

/// `cwlab check`: the user's command is the server.
fn server_scenario(a: &Args) -> Result<Scenario, Failure> {
    if a.clients == 0 {
        return Err(Failure::bad_input("--clients: expected at least 1 client, found 0"));
    }
    let request = match (&a.request, &a.request_file) {
        (Some(t), _) => t.clone().into_bytes(),
        (None, Some(f)) => std::fs::read(f).map_err(|e| {
            Failure::bad_input(format!("{}: cannot read the request: {e}", f.display()))
        })?,
        (None, None) => DEFAULT_REQUEST.as_bytes().to_vec(),
    };
    let plan = waves(a)?;
    let scenario = Scenario::check(CheckSettings {
        command: ServerCommand { argv: a.command.clone(), env: Default::default(), cwd: None },
        port: a.port.unwrap_or(0),
        clients: a.clients,
        concurrency: a.concurrency.unwrap_or(a.clients.min(100)),
        request,
        read: match a.read {
            ReadArg::Reply => ClientRead::Some,
            ReadArg::Eof => ClientRead::UntilEof,
            ReadArg::None => ClientRead::None,
        },
        closing: match a.close {
            CloseArg::Each => Closing::Each,
            CloseArg::Together => Closing::Together,
        },
        waves: plan,
        reply_timeout: a.reply_timeout,
        hold: a.hold,
        timeout: a.ready_timeout + a.hold + a.reply_timeout + Duration::from_secs(60),
    });
    Ok(scenario)
}

/// Runs a check's scenario under every face asked for; the exit code is its diagnosis's.
fn judge(a: &Args, scenario: &Scenario) -> Result<i32, Failure> {
    let path = a.report.clone().unwrap_or_else(|| PathBuf::from("reports/check.json"));
    let mut made = MadeFolders::default();
    if a.faces.figures.ladder && a.json {
        return Err(Failure::bad_input("--ladder prints on stdout: it cannot go with --json"));
    }
    for p in std::iter::once(&path).chain(a.faces.files()) {
        made.0.extend(check_writable(p)?);
    }
    cwlab_os::signals::install().map_err(Failure::bad_input)?;
    let opts = Options {
        exe: std::env::current_exe().map_err(Failure::bad_input)?,
        isolation: a.isolation.mode(),
        timeout: None,
        run_id: run_id(),
        pcap: match &a.pcap {
            None => None,
            Some(Some(f)) => Some(f.clone()),
            Some(None) => Some(path.with_extension("pcap")),
        },
        grace: a.grace,
        ready_timeout: Some(a.ready_timeout),
        pace: None,
        conn: a.faces.figures.conn,
        dial: a.address,
        spread: Duration::ZERO,
    };
    let stdout = if a.json { Stdout::Json } else { Stdout::Summary(vec![path.clone()]) };
    let mut faces = a.faces.reporters(stdout, true);
    let report = crate::run::run_one(scenario, &opts, &mut faces, &path)?;
    faces.close().map_err(Failure::bad_input)?;
    if report.interrupted {
        if let Some(sig) = cwlab_os::signals::received() {
            return Ok(128 + sig);
        }
    }
    Ok(match report.verdict {
        Verdict::Error => exit::BAD_INPUT,
        _ if report.diagnosis.is_clean() => exit::PASS,
        _ => exit::FAIL,
    })
}

/// The warm-up and waves: the defaults for the client count, or what was asked, if it fits.
fn waves(a: &Args) -> Result<WavePlan, Failure> {
    let d = WavePlan::default_for(a.clients);
    let plan = WavePlan { warmup: a.warmup.unwrap_or(d.warmup), waves: a.waves.unwrap_or(d.waves) };
    if plan.waves == 0 {
        return Err(Failure::bad_input("--waves: expected at least 1 wave, found 0"));
    }
    if plan.warmup + plan.waves > a.clients {
        return Err(Failure::bad_input(format!(
            "--clients {}: too few for a warm-up of {} and {} waves of at least one client",
            a.clients, plan.warmup, plan.waves
        )));
    }
    Ok(plan)
}
