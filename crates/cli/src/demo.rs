//! `cwlab demo`: scenarios side by side, live, for an audience (the view is
//! `cwlab_report::live`).

use std::path::PathBuf;

use cwlab_model::Scenario;

use crate::app::Failure;

#[derive(clap::Args)]
pub struct Args {
    /// Scenarios by name (scenarios/NAME.toml) or path. Default: leak and fixed.
    scenarios: Vec<String>,
    /// Stop before each phase with a line saying what is about to happen and what to watch.
    #[arg(long)]
    step: bool,
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
    cwlab_report::live::show(scenarios, a.step).map_err(Failure::bad_input)
}
