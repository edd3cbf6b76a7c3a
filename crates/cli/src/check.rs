//! `cwlab check -- CMD ARGS...`: a server of the user's own under the lab's witnesses. The exit
//! code is the diagnosis: 0 clean (or a slow close), 1 a leak or another finding, 2 could not
//! run (the command not found, exited or never listened, bad arguments).

use std::path::PathBuf;
use std::time::Duration;

use clap::ValueEnum;
use cwlab_model::events::{Reporter, Reporters};
use cwlab_model::report::Verdict;
use cwlab_model::scenario::{CheckSettings, ClientRead, ServerCommand};
use cwlab_model::{exit, Scenario};
use cwlab_runner::Options;

use crate::app::Failure;
use crate::run::{check_writable, parse_duration, run_id, IsolationArg, MadeFolders};

/// A minimal HTTP/1.0 request, which line servers also take as a line.
const DEFAULT_REQUEST: &str = "GET / HTTP/1.0\r\n\r\n";

#[derive(clap::Args)]
pub struct Args {
    /// Clients, one connection each.
    #[arg(long, default_value_t = 100)]
    clients: u32,
    /// How many connect at once (default: all of them, up to 100).
    #[arg(long)]
    concurrency: Option<u32>,
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
    /// Draw the run's timeline as an SVG chart.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// Write JUnit XML.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Write the run's packets as a pcap file: to FILE, or beside the report.
    #[arg(long, value_name = "FILE", num_args = 0..=1)]
    pcap: Option<Option<PathBuf>>,
    #[command(flatten)]
    figures: crate::figures::Figures,
    /// The server: a program and its arguments; `{port}` stands for the port.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum ReadArg {
    Reply,
    Eof,
    None,
}

pub fn main(a: &Args) -> Result<i32, Failure> {
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
        reply_timeout: a.reply_timeout,
        hold: a.hold,
        timeout: a.ready_timeout + a.hold + a.reply_timeout + Duration::from_secs(60),
    });
    let path = a.report.clone().unwrap_or_else(|| PathBuf::from("reports/check.json"));
    let mut made = MadeFolders::default();
    if a.figures.ladder && a.json {
        return Err(Failure::bad_input("--ladder prints on stdout: it cannot go with --json"));
    }
    for p in std::iter::once(&path).chain(&a.junit).chain(&a.svg).chain(a.figures.files()) {
        made.0.extend(check_writable(p)?);
    }
    cwlab_runner::signals::install().map_err(Failure::bad_input)?;
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
        conn: a.figures.conn,
        spread: Duration::ZERO,
    };
    let mut faces: Vec<Box<dyn Reporter>> = vec![Box::new(cwlab_report::Progress::new())];
    faces.push(if a.json {
        Box::new(cwlab_report::Json)
    } else {
        Box::new(crate::run::summary(cwlab_report::Summary::new(vec![path.clone()]), &a.figures))
    });
    if let Some(p) = &a.svg {
        faces.push(Box::new(cwlab_report::Svg::new(p.clone())));
    }
    if let Some(p) = &a.junit {
        faces.push(Box::new(cwlab_report::Junit::new(p.clone())));
    }
    faces.extend(a.figures.reporters(true));
    let mut faces = Reporters(faces);
    let report = crate::run::run_one(&scenario, &opts, &mut faces, &path)?;
    faces.close().map_err(Failure::bad_input)?;
    if report.interrupted {
        if let Some(sig) = cwlab_runner::signals::received() {
            return Ok(128 + sig);
        }
    }
    Ok(match report.verdict {
        Verdict::Error => exit::BAD_INPUT,
        _ if report.diagnosis.is_clean() => exit::PASS,
        _ => exit::FAIL,
    })
}
