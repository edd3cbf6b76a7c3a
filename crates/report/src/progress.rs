//! The progress line: on a terminal, the run's phase and latest counts on one line of stderr;
//! and, in a paced run, the presenter's cue before each phase. Nothing when stderr is not a
//! terminal (a CI log stays clean), except the cue, which someone is waiting on.

use std::io::{self, IsTerminal, Write};

use cwlab_model::events::{cue, Reporter, RunEvent};
use cwlab_model::Report;

/// The progress of the runs, on stderr.
pub struct Progress {
    name: String,
    tty: bool,
    shown: bool,
}

impl Progress {
    /// Progress on stderr, drawn only where stderr is a terminal.
    pub fn new() -> Progress {
        Progress { name: String::new(), tty: io::stderr().is_terminal(), shown: false }
    }
}

impl Default for Progress {
    fn default() -> Progress {
        Progress::new()
    }
}

impl Reporter for Progress {
    fn event(&mut self, e: &RunEvent) {
        let mut err = io::stderr().lock();
        match e {
            RunEvent::Started(s) => self.name.clone_from(&s.scenario),
            RunEvent::Waiting(w) => {
                let _ = writeln!(
                    err,
                    "\r\x1b[K{}: next, {}: {} [Enter]",
                    self.name,
                    w.next,
                    cue(w.next)
                );
            }
            RunEvent::Sample(s) if self.tty => {
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

    /// Clears the line before the run's other faces print.
    fn finish(&mut self, _: &Report) -> io::Result<()> {
        if self.shown {
            write!(io::stderr(), "\r\x1b[K")?;
            self.shown = false;
        }
        Ok(())
    }
}
