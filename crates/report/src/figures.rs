//! The pictures of a run as reporters: its ladders as text (`--ladder`) and SVG
//! (`--ladder-svg`), its state machine (`--diagram`). Each draws what the model reads
//! ([`Ladder`], [`Machine`]); with several runs, one file holds them all, one under another.

use std::io::{self, Write as _};
use std::path::PathBuf;

use cwlab_model::events::Reporter;
use cwlab_model::ladder::Ladder;
use cwlab_model::machine::Machine;
use cwlab_model::report::Report;

use crate::{diagram, ladder, palette};

/// The ladders a run asks for: every representative, or the connection `conn` names. An unknown
/// connection is an error that lists the ones kept.
pub fn ladders(r: &Report, conn: Option<u16>) -> io::Result<Vec<Ladder>> {
    Ladder::of(r, conn).map_err(|e| io::Error::other(format!("{}: {e}", r.scenario.name)))
}

/// `--ladder`: the ladders as text on stdout, after the summary.
pub struct LadderText {
    conn: Option<u16>,
}

impl LadderText {
    /// Every representative's ladder, or `conn`'s.
    pub fn new(conn: Option<u16>) -> LadderText {
        LadderText { conn }
    }
}

impl Reporter for LadderText {
    fn finish(&mut self, r: &Report) -> io::Result<()> {
        let colour = palette::terminal_colour();
        let mut out = io::stdout().lock();
        match ladders(r, self.conn) {
            Ok(ls) => {
                writeln!(
                    out,
                    "\n  {}: the ladder of each way its connections went",
                    r.scenario.name
                )?;
                for l in ls {
                    write!(out, "\n{}", ladder::text(&l, colour))?;
                }
            }
            Err(e) if self.conn.is_some() => return Err(e),
            Err(e) => writeln!(out, "\n  {e}")?,
        }
        out.flush()
    }
}

/// `--ladder-svg FILE`: every run's ladders in one SVG.
pub struct LadderSvg {
    path: PathBuf,
    conn: Option<u16>,
    drawn: Vec<Ladder>,
}

impl LadderSvg {
    /// Ladders to `path`.
    pub fn new(path: PathBuf, conn: Option<u16>) -> LadderSvg {
        LadderSvg { path, conn, drawn: Vec::new() }
    }
}

impl Reporter for LadderSvg {
    fn finish(&mut self, r: &Report) -> io::Result<()> {
        match ladders(r, self.conn) {
            Ok(ls) => self.drawn.extend(ls),
            Err(e) if self.conn.is_some() => return Err(e),
            Err(_) => {}
        }
        Ok(())
    }

    fn close(&mut self) -> io::Result<()> {
        cwlab_os::write_atomically(&self.path, ladder::svg_all(&self.drawn).as_bytes())
    }
}

/// `--diagram FILE`: every run's state machine with its counts, one under another.
pub struct DiagramSvg {
    path: PathBuf,
    drawn: Vec<(String, Machine)>,
}

impl DiagramSvg {
    /// Diagrams to `path`.
    pub fn new(path: PathBuf) -> DiagramSvg {
        DiagramSvg { path, drawn: Vec::new() }
    }
}

impl Reporter for DiagramSvg {
    fn finish(&mut self, r: &Report) -> io::Result<()> {
        self.drawn.push((diagram_title(r), Machine::of(r)));
        Ok(())
    }

    fn close(&mut self) -> io::Result<()> {
        cwlab_os::write_atomically(&self.path, diagram::svg_all(&self.drawn).as_bytes())
    }
}

/// The title of a run's state machine.
pub fn diagram_title(r: &Report) -> String {
    format!(
        "{}: the close half of TCP's state machine (sockets at the end; transitions)",
        r.scenario.name
    )
}
