//! `cwlab run`: run scenario files, write each report, print the summary; the exit code is the
//! verdict (0 every expectation held, 1 one failed, 2 bad input or an environment that cannot run).

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::ValueEnum;
use cwlab_model::events::{Reporter, Reporters};
use cwlab_model::report::Report;
use cwlab_model::{exit, Scenario};
use cwlab_runner::{IsolationMode, Options};

use crate::app::Failure;
use crate::faces::{Faces, Stdout};

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
    /// Print the run as JSON Lines events on stdout, the report last (see `cwlab demo`).
    #[arg(long, conflicts_with = "json")]
    events: bool,
    /// Stop before each phase, say what is about to happen, and wait for Enter.
    #[arg(long)]
    step: bool,
    /// A room's pace: start the clients evenly over DURATION, and close them evenly over as
    /// long (e.g. 3s; `cwlab demo` sets it).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    spread: Option<Duration>,
    #[command(flatten)]
    faces: Faces,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum IsolationArg {
    Auto,
    Netns,
    Host,
}

impl IsolationArg {
    pub fn mode(self) -> IsolationMode {
        match self {
            IsolationArg::Auto => IsolationMode::Auto,
            IsolationArg::Netns => IsolationMode::Netns,
            IsolationArg::Host => IsolationMode::Host,
        }
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
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
    if a.faces.figures.ladder && (a.json || a.events) {
        return Err(Failure::bad_input(
            "--ladder prints on stdout: it cannot go with --json or --events",
        ));
    }
    for p in paths.iter().chain(a.faces.files()) {
        made.0.extend(check_writable(p)?);
    }
    cwlab_os::signals::install().map_err(Failure::bad_input)?;
    let exe = std::env::current_exe().map_err(Failure::bad_input)?;
    let opts = Options {
        exe,
        isolation: a.isolation.mode(),
        timeout: a.timeout,
        run_id: run_id(),
        pcap: None,
        grace: cwlab_runner::GRACE,
        ready_timeout: None,
        pace: a.step.then(crate::step::enter_keys),
        conn: a.faces.figures.conn,
        dial: None,
        spread: a.spread.unwrap_or_default(),
    };
    let stdout = if a.events {
        Stdout::Events
    } else if a.json {
        Stdout::Json
    } else {
        Stdout::Summary(paths.clone())
    };
    let mut faces = a.faces.reporters(stdout, false);
    let mut worst = exit::PASS;
    for (i, (scenario, path)) in scenarios.iter().zip(&paths).enumerate() {
        let opts = Options { pcap: pcap_path(a, path, scenarios.len()), ..opts.clone() };
        let report = run_one(scenario, &opts, &mut faces, path)?;
        worst = worst.max(report.exit_code());
        if let Some(sig) = cwlab_os::signals::received() {
            // A signal stopped this run (its report says so), or arrived after it ended: then
            // the scenarios after it do not run, and the exit status says why.
            if report.interrupted || i + 1 < scenarios.len() {
                faces.close().map_err(Failure::bad_input)?;
                return Ok(128 + sig);
            }
        }
    }
    faces.close().map_err(Failure::bad_input)?;
    Ok(worst)
}

/// Runs one scenario, writes its report and tells the faces. A signal before the server listened
/// is an exit of 128 + the signal.
pub fn run_one(
    scenario: &Scenario,
    opts: &Options,
    faces: &mut Reporters,
    path: &Path,
) -> Result<Report, Failure> {
    let report = match cwlab_runner::run(scenario, opts, faces) {
        Ok(r) => r,
        Err(cwlab_runner::RunError::Interrupted(sig)) => {
            return Err(Failure {
                code: 128 + sig,
                error: format!("interrupted by {}", cwlab_os::signals::name(sig)).into(),
            })
        }
        Err(e) => return Err(Failure::bad_input(e)),
    };
    write_report(path, &report)?;
    faces.finish(&report).map_err(Failure::bad_input)?;
    Ok(report)
}

pub fn write_report(path: &Path, report: &Report) -> Result<(), Failure> {
    let mut bytes = serde_json::to_vec_pretty(report).expect("reports serialize");
    bytes.push(b'\n');
    cwlab_os::write_atomically(path, &bytes).map_err(|e| {
        Failure::bad_input(format!("{}: cannot write the report: {e}", path.display()))
    })
}

/// The mark on every process of this invocation: the runner's pid, then a nonce.
pub fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{}-{nanos:08x}", std::process::id())
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
pub fn check_writable(path: &Path) -> Result<Vec<PathBuf>, Failure> {
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
pub struct MadeFolders(pub Vec<PathBuf>);

impl Drop for MadeFolders {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = std::fs::remove_dir(d);
        }
    }
}
