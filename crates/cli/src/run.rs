//! `cwlab run`: run scenario files, write each report, print the summary; the exit code is the
//! verdict (0 every expectation held, 1 one failed, 2 bad input or an environment that cannot run).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::ValueEnum;
use cwlab_model::events::{cue, PhaseStart, RunEvent, Started, Waiting};
use cwlab_model::report::{Report, Verdict};
use cwlab_model::{exit, Scenario};
use cwlab_runner::{Event, IsolationMode, Options};
use std::io::IsTerminal;

use crate::app::Failure;

#[derive(clap::Args)]
pub struct Args {
    /// Scenario files (scenarios/NAME.toml).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Where to write the JSON report; with several files, a folder for NAME.json each.
    /// Default: reports/NAME.json.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Print the report JSON on stdout (one line per scenario) instead of the summary.
    #[arg(long)]
    json: bool,
    /// auto: a private network namespace if permitted, else the host's loopback on a port of the
    /// run's own; netns: a namespace or exit 2; host: the host's loopback.
    #[arg(long, value_enum, default_value_t = IsolationArg::Auto)]
    isolation: IsolationArg,
    /// The whole run's deadline, overriding the scenario's (e.g. 30s).
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Write the run's packets as a pcap file (tcpdump, Wireshark): to FILE, or without one
    /// beside the report as NAME.pcap.
    #[arg(long, value_name = "FILE", num_args = 0..=1)]
    pcap: Option<Option<PathBuf>>,
    /// Draw the timeline of the run(s) as an SVG chart, side by side on one scale.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// Print the run as JSON Lines events on stdout, the report last (see `cwlab demo`).
    #[arg(long, conflicts_with = "json")]
    events: bool,
    /// Stop before each phase, say what is about to happen, and wait for Enter.
    #[arg(long)]
    step: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum IsolationArg {
    Auto,
    Netns,
    Host,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    cwlab_model::duration::parse(s)
}

pub fn main(a: &Args) -> Result<i32, Failure> {
    let mut scenarios = Vec::new();
    for f in &a.files {
        scenarios.push(Scenario::load(f).map_err(Failure::bad_input)?);
    }
    let paths: Vec<PathBuf> = scenarios.iter().map(|s| report_path(a, s)).collect();
    // Folders made for the reports go again if the command ends without a report in them.
    let mut made = MadeFolders::default();
    for p in &paths {
        made.0.extend(check_writable(p)?);
    }
    cwlab_runner::signals::install().map_err(Failure::bad_input)?;
    let exe = std::env::current_exe().map_err(Failure::bad_input)?;
    let opts = Options {
        exe,
        isolation: match a.isolation {
            IsolationArg::Auto => IsolationMode::Auto,
            IsolationArg::Netns => IsolationMode::Netns,
            IsolationArg::Host => IsolationMode::Host,
        },
        timeout: a.timeout,
        run_id: run_id(),
        pcap: None,
        step: a.step,
    };
    let mut worst = exit::PASS;
    let mut done = Vec::new();
    for (i, (scenario, path)) in scenarios.iter().zip(&paths).enumerate() {
        let opts = Options { pcap: pcap_path(a, path, scenarios.len()), ..opts.clone() };
        let mut progress = Progress::new(&scenario.name, a.events);
        let report = match cwlab_runner::run(scenario, &opts, &mut |e| progress.event(e)) {
            Ok(r) => r,
            Err(cwlab_runner::RunError::Interrupted(sig)) => {
                return Err(Failure {
                    code: 128 + sig,
                    error: format!("interrupted by {}", cwlab_runner::signals::name(sig)).into(),
                })
            }
            Err(e) => return Err(Failure::bad_input(e)),
        };
        let mut bytes = serde_json::to_vec_pretty(&report).expect("reports serialize");
        bytes.push(b'\n');
        cwlab_runner::write_atomically(path, &bytes).map_err(|e| {
            Failure::bad_input(format!("{}: cannot write the report: {e}", path.display()))
        })?;
        let mut out = std::io::stdout().lock();
        progress.clear();
        let text = if a.events {
            let mut line = serde_json::to_string(&RunEvent::Report(Box::new(report.clone())))
                .expect("reports serialize");
            line.push('\n');
            line
        } else if a.json {
            let mut line = serde_json::to_string(&report).expect("reports serialize");
            line.push('\n');
            line
        } else {
            let sep = if i > 0 { "\n" } else { "" };
            format!("{sep}{}", crate::summary::render(&report, path))
        };
        out.write_all(text.as_bytes()).map_err(Failure::bad_input)?;
        worst = worst.max(code(&report));
        if a.svg.is_some() {
            done.push(report.clone());
        }
        if let Some(sig) = cwlab_runner::signals::received() {
            // A signal stopped this run (its report says so), or arrived after it ended: then
            // the scenarios after it do not run, and the exit status says why.
            if report.interrupted || i + 1 < scenarios.len() {
                return Ok(128 + sig);
            }
        }
    }
    if let Some(svg) = &a.svg {
        crate::chart_cmd::write_svg(svg, &done)?;
    }
    Ok(worst)
}

/// What a run shows as it goes: JSON Lines events on stdout with `--events`; otherwise, on a
/// terminal, its phase and latest counts on one line of stderr, and the presenter's cue in
/// `--step`; nothing when stderr is not a terminal.
struct Progress<'a> {
    name: &'a str,
    events: bool,
    tty: bool,
    shown: bool,
}

impl<'a> Progress<'a> {
    fn new(name: &'a str, events: bool) -> Progress<'a> {
        Progress { name, events, tty: std::io::stderr().is_terminal(), shown: false }
    }

    fn event(&mut self, e: Event<'_>) {
        if self.events {
            let ev = match e {
                Event::Started { scenario, isolation, port, .. } => RunEvent::Started(Started {
                    scenario: scenario.name.clone(),
                    headline: scenario.headline().to_string(),
                    port,
                    isolation,
                }),
                Event::Phase(phase, t_ms) => RunEvent::Phase(PhaseStart { phase, t_ms }),
                Event::Sample(s) => RunEvent::Sample(s.clone()),
                Event::Waiting(next) => RunEvent::Waiting(Waiting { next }),
            };
            let mut out = std::io::stdout().lock();
            let _ = serde_json::to_writer(&mut out, &ev);
            let _ = out.write_all(b"\n");
            let _ = out.flush();
            return;
        }
        let mut err = std::io::stderr().lock();
        match e {
            Event::Waiting(next) => {
                let _ = writeln!(err, "\r\x1b[K{}: next, {next}: {} [Enter]", self.name, cue(next));
            }
            Event::Sample(s) if self.tty => {
                let top: Vec<String> = s
                    .server
                    .iter()
                    .map(|(st, n)| format!("server {st} {n}"))
                    .chain(s.client.iter().map(|(st, n)| format!("client {st} {n}")))
                    .take(4)
                    .collect();
                let _ = write!(
                    err,
                    "\r\x1b[K{}: {} {:.1}s  {}",
                    self.name,
                    s.phase,
                    s.t_ms as f64 / 1000.0,
                    top.join(" · ")
                );
                self.shown = true;
            }
            _ => {}
        }
    }

    fn clear(&mut self) {
        if self.shown {
            let _ = write!(std::io::stderr(), "\r\x1b[K");
            self.shown = false;
        }
    }
}

/// The mark on every process of this invocation: the runner's pid, then a nonce.
fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{}-{nanos:08x}", std::process::id())
}

fn code(r: &Report) -> i32 {
    match r.verdict {
        Verdict::Pass => exit::PASS,
        Verdict::Fail => exit::FAIL,
        Verdict::Error => exit::BAD_INPUT,
    }
}

/// `--pcap FILE` with one scenario; `--pcap` alone (or with several): beside each report.
fn pcap_path(a: &Args, report: &Path, scenarios: usize) -> Option<PathBuf> {
    match &a.pcap {
        None => None,
        Some(Some(file)) if scenarios == 1 => Some(file.clone()),
        Some(_) => Some(report.with_extension("pcap")),
    }
}

fn report_path(a: &Args, s: &Scenario) -> PathBuf {
    let file = format!("{}.json", s.name);
    match &a.report {
        Some(p) if a.files.len() == 1 => p.clone(),
        Some(dir) => dir.join(file),
        None => Path::new("reports").join(file),
    }
}

/// Refuses, before anything runs, a report path that cannot be written. Returns the folders it
/// made for it, deepest first.
fn check_writable(path: &Path) -> Result<Vec<PathBuf>, Failure> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let fail = |why: String| {
        Failure::bad_input(format!("{}: cannot write the report: {why}", path.display()))
    };
    if path.is_dir() {
        return Err(fail("it is a folder".into()));
    }
    let made: Vec<PathBuf> = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
        .map(Path::to_path_buf)
        .collect();
    let mut made = MadeFolders(made);
    std::fs::create_dir_all(&dir).map_err(|e| fail(e.to_string()))?;
    let probe = dir.join(format!(".cwlab-probe-{}", std::process::id()));
    let result = std::fs::File::create(&probe).map(|_| ()).map_err(|e| fail(e.to_string()));
    let _ = std::fs::remove_file(&probe);
    result?;
    Ok(std::mem::take(&mut made.0))
}

/// Folders the command made, deepest first: removed when it ends, those still empty (the ones
/// no report went into).
#[derive(Default)]
struct MadeFolders(Vec<PathBuf>);

impl Drop for MadeFolders {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = std::fs::remove_dir(d);
        }
    }
}
