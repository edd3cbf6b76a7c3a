//! `cwlab demo`: scenarios side by side, live, for an audience. Each scenario runs as its own
//! `cwlab run --events` process (so each has its own network namespace), started, moved on and
//! stopped here; the view that draws their events is `cwlab_report::live`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use cwlab_model::events::RunEvent;
use cwlab_model::Scenario;
use cwlab_report::live::{Feed, Runs};

use crate::app::Failure;

#[derive(clap::Args)]
pub struct Args {
    /// Scenarios by name (scenarios/NAME.toml) or path. Default: leak and fixed.
    scenarios: Vec<String>,
    /// Stop before each phase with a line saying what is about to happen and what to watch.
    #[arg(long)]
    step: bool,
    /// How fast the connect and the close go: 1 spreads each over 3 seconds, so a room sees the
    /// sockets move state by state; 2 takes half as long; `max` runs at the lab's own pace.
    /// Default: 1 on a terminal, `max` for plain lines to a pipe.
    #[arg(long, value_parser = parse_speed)]
    speed: Option<Speed>,
    /// Where scenario names are looked up.
    #[arg(long, default_value = "scenarios")]
    dir: PathBuf,
}

pub fn main(a: &Args) -> Result<i32, Failure> {
    let names: Vec<String> = if a.scenarios.is_empty() {
        vec!["leak".into(), "fixed".into()]
    } else {
        a.scenarios.clone()
    };
    let mut scenarios = Vec::new();
    for n in &names {
        let path = if n.ends_with(".toml") || n.contains('/') {
            PathBuf::from(n)
        } else {
            a.dir.join(format!("{n}.toml"))
        };
        scenarios.push(Scenario::load(&path).map_err(Failure::bad_input)?);
    }
    use std::io::IsTerminal;
    let speed = a.speed.unwrap_or(if std::io::stdout().is_terminal() {
        Speed::Times(1.0)
    } else {
        Speed::Max
    });
    let spread = match speed {
        Speed::Max => Duration::ZERO,
        Speed::Times(x) => PACE.div_f64(x),
    };
    let mut runs = Children::new(&scenarios, a.step, spread).map_err(Failure::bad_input)?;
    cwlab_report::live::show(scenarios, a.step, &mut runs).map_err(Failure::bad_input)
}

/// The demo's runs: one `cwlab run --events` child per scenario, its stdout read line by line
/// into the view's feed, its stdin the go-ahead of `--step`.
struct Children {
    exe: PathBuf,
    /// Each scenario's name and file.
    scenarios: Vec<(String, PathBuf)>,
    step: bool,
    spread: Duration,
    /// Each scenario's run, once started.
    running: Vec<Option<Running>>,
}

/// One started run.
struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Children {
    fn new(scenarios: &[Scenario], step: bool, spread: Duration) -> std::io::Result<Children> {
        Ok(Children {
            exe: std::env::current_exe()?,
            scenarios: scenarios.iter().map(|s| (s.name.clone(), s.file.clone())).collect(),
            step,
            spread,
            running: scenarios.iter().map(|_| None).collect(),
        })
    }

    /// Starts scenario `i`'s run, its events read into `feed` on a thread of their own.
    fn spawn(&self, i: usize, feed: &Feed) -> std::io::Result<Running> {
        let (name, file) = &self.scenarios[i];
        let report = Path::new("reports").join(format!("demo-{name}.json"));
        let mut cmd = Command::new(&self.exe);
        cmd.arg(cwlab_model::protocol::entry::RUN)
            .arg(file)
            .arg("--events")
            .arg("--report")
            .arg(report);
        if self.step {
            cmd.arg("--step");
        }
        if !self.spread.is_zero() {
            cmd.arg("--spread").arg(format!("{}ms", self.spread.as_millis()));
        }
        let mut child = cmd
            .stdin(if self.step { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdin = child.stdin.take();
        let out = child.stdout.take().expect("piped");
        let feed = feed.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(ev) = serde_json::from_str::<RunEvent>(&line) {
                    if feed.send((i, Some(ev))).is_err() {
                        return;
                    }
                }
            }
            let _ = feed.send((i, None));
        });
        Ok(Running { child, stdin })
    }
}

impl Runs for Children {
    fn start(&mut self, feed: &Feed) -> std::io::Result<()> {
        for i in 0..self.scenarios.len() {
            self.running[i] = Some(self.spawn(i, feed)?);
        }
        Ok(())
    }

    fn go_on(&mut self, i: usize) {
        if let Some(s) =
            self.running.get_mut(i).and_then(Option::as_mut).and_then(|r| r.stdin.as_mut())
        {
            let _ = s.write_all(b"\n").and_then(|()| s.flush());
        }
    }

    fn ended(&mut self, i: usize) {
        if let Some(r) = self.running.get_mut(i).and_then(Option::as_mut) {
            let _ = r.child.wait();
        }
    }

    fn stop(&mut self) {
        for r in self.running.iter_mut().flatten() {
            r.stdin.take();
            if matches!(r.child.try_wait(), Ok(Some(_))) {
                // Already reaped ([`Runs::ended`]): its pid may be another process's by now.
                continue;
            }
            // SIGTERM: the run tears down and writes its report, marked interrupted.
            if let Some(pid) = rustix::process::Pid::from_raw(r.child.id() as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::Term);
            }
        }
        for r in self.running.iter_mut() {
            if let Some(mut r) = r.take() {
                let _ = r.child.wait();
            }
        }
    }
}

/// How long the connect and the close each take at `--speed 1`.
const PACE: Duration = Duration::from_secs(3);

#[derive(Clone, Copy)]
enum Speed {
    Times(f64),
    Max,
}

fn parse_speed(s: &str) -> Result<Speed, String> {
    match s {
        "max" => Ok(Speed::Max),
        _ => match s.parse::<f64>() {
            Ok(x) if x > 0.0 && x.is_finite() => Ok(Speed::Times(x)),
            _ => Err(format!("`{s}` is not a speed: a number above 0 (1, 2, 0.5) or `max`")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_21_a_speed_is_a_factor_above_zero_or_max() {
        assert!(matches!(parse_speed("2"), Ok(Speed::Times(x)) if x == 2.0));
        assert!(matches!(parse_speed("max"), Ok(Speed::Max)));
        for bad in ["0", "-1", "fast", "inf"] {
            let e = parse_speed(bad).err().unwrap();
            assert_eq!(e, format!("`{bad}` is not a speed: a number above 0 (1, 2, 0.5) or `max`"));
        }
    }
}
