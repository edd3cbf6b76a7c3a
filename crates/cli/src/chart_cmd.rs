//! `cwlab chart REPORT.json... [-o FILE.svg] [--ladder] [--ladder-svg FILE] [--diagram FILE]
//! [--html FILE]`: the pictures of finished runs, from their reports.

use std::path::PathBuf;

use cwlab_model::events::{Reporter, Reporters};
use cwlab_model::{exit, Report};

use crate::app::Failure;

#[derive(clap::Args)]
pub struct Args {
    /// Reports written by `cwlab run`.
    #[arg(required = true)]
    reports: Vec<PathBuf>,
    /// The timeline chart to write (SVG), every run side by side on one scale.
    #[arg(short = 'o', long = "output")]
    output: Option<PathBuf>,
    /// The reports are `cwlab check`'s: judged by their diagnosis in the HTML page.
    #[arg(long)]
    check: bool,
    #[command(flatten)]
    figures: crate::figures::Figures,
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
    let mut faces = a.figures.reporters(a.check);
    if let Some(p) = &a.output {
        faces.push(Box::new(cwlab_report::Svg::new(p.clone())));
    }
    if faces.is_empty() {
        return Err(Failure::bad_input(
            "nothing to draw: name -o FILE.svg, --ladder, --ladder-svg, --diagram or --html",
        ));
    }
    let mut faces = Reporters(faces);
    for r in &reports {
        faces.finish(r).map_err(Failure::bad_input)?;
    }
    faces.close().map_err(|e| Failure::bad_input(format!("cannot write the pictures: {e}")))?;
    Ok(exit::PASS)
}
