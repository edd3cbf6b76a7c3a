//! `cwlab chart REPORT.json... -o FILE.svg`: the timelines of finished runs, side by side.

use std::path::PathBuf;

use cwlab_model::events::Reporter;
use cwlab_model::{exit, Report};

use crate::app::Failure;

#[derive(clap::Args)]
pub struct Args {
    /// Reports written by `cwlab run`.
    #[arg(required = true)]
    reports: Vec<PathBuf>,
    /// The SVG file to write.
    #[arg(short = 'o', long = "output")]
    output: PathBuf,
}

pub fn main(a: &Args) -> Result<i32, Failure> {
    let mut reports = Vec::new();
    for p in &a.reports {
        let text = std::fs::read_to_string(p).map_err(|e| {
            Failure::bad_input(format!("{}: cannot read the report: {e}", p.display()))
        })?;
        let r: Report = serde_json::from_str(&text).map_err(|e| {
            Failure::bad_input(format!(
                "{}:{}:{}: not a cwlab report: {e}",
                p.display(),
                e.line(),
                e.column()
            ))
        })?;
        reports.push(r);
    }
    let mut svg = cwlab_report::Svg::new(a.output.clone());
    for r in &reports {
        svg.finish(r).map_err(Failure::bad_input)?;
    }
    svg.close().map_err(|e| {
        Failure::bad_input(format!("{}: cannot write the chart: {e}", a.output.display()))
    })?;
    Ok(exit::PASS)
}
