//! `cwlab demo`: scenarios side by side, live, for an audience (the view is
//! `cwlab_report::live`).

use std::path::PathBuf;
use std::time::Duration;

use cwlab_model::Scenario;

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
    cwlab_report::live::show(scenarios, a.step, spread).map_err(Failure::bad_input)
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
