//! `cwlab list`: every scenario file in a folder, with the first line of its story.

use std::io::Write;
use std::path::Path;

use cwlab_model::{exit, Scenario};

use crate::app::Failure;

/// The scenario files of a folder, sorted by name.
pub fn scenario_files(dir: &Path) -> Result<Vec<std::path::PathBuf>, Failure> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        Failure::bad_input(format!("{}: cannot read the scenario folder: {e}", dir.display()))
    })?;
    let mut files: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    Ok(files)
}

pub fn main(dir: &Path) -> Result<i32, Failure> {
    let mut scenarios = Vec::new();
    for f in scenario_files(dir)? {
        scenarios.push(Scenario::load(&f).map_err(Failure::bad_input)?);
    }
    scenarios.sort_by(|a, b| a.name.cmp(&b.name));
    let width = scenarios.iter().map(|s| s.name.len()).max().unwrap_or(0);
    let mut out = std::io::stdout().lock();
    for s in &scenarios {
        writeln!(out, "{:width$}  {}", s.name, s.headline()).map_err(Failure::bad_input)?;
    }
    Ok(exit::PASS)
}
