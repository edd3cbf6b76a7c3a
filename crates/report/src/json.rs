//! Machine faces on stdout: the report as one JSON line per run (`--json`), or the run as JSON
//! Lines events with the report last (`--events`, the format of
//! [`cwlab_model::events`]).

use std::io::{self, Write};

use cwlab_model::events::{Reporter, RunEvent};
use cwlab_model::Report;

/// `--json`: each report as one line.
pub struct Json;

impl Reporter for Json {
    fn finish(&mut self, r: &Report) -> io::Result<()> {
        line(r)
    }
}

/// `--events`: every event as it happens, then the report, one JSON object a line.
pub struct EventLines;

impl Reporter for EventLines {
    fn event(&mut self, e: &RunEvent) {
        // A reader that went away stops nothing: the run finishes and writes its report.
        let _ = line(e);
    }

    fn finish(&mut self, r: &Report) -> io::Result<()> {
        line(&RunEvent::Report(Box::new(r.clone())))
    }
}

fn line<T: serde::Serialize>(value: &T) -> io::Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    out.write_all(b"\n")?;
    out.flush()
}
