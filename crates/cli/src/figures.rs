//! The pictures `cwlab run`, `cwlab check` and `cwlab chart` can draw besides the summary: the
//! ladder, the state machine and the HTML page.

use std::path::PathBuf;

use cwlab_model::events::Reporter;

#[derive(clap::Args, Clone, Default)]
pub struct Figures {
    /// Print the ladder of each way the connections went (client and server columns, every
    /// segment and state) after the summary.
    #[arg(long)]
    pub ladder: bool,
    /// The connection to draw, by the client's port (the summary and the report name them);
    /// default: one of each way the connections went.
    #[arg(long, value_name = "PORT")]
    pub conn: Option<u16>,
    /// Draw the ladders as SVG.
    #[arg(long, value_name = "FILE")]
    pub ladder_svg: Option<PathBuf>,
    /// Draw the close half of TCP's state machine with the run's counts as SVG.
    #[arg(long, value_name = "FILE")]
    pub diagram: Option<PathBuf>,
    /// Write one self-contained HTML page: verdict, diagnosis, expectations, holders, timeline,
    /// state machine and ladder.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
}

impl Figures {
    /// The files these options write, to check before anything runs.
    pub fn files(&self) -> impl Iterator<Item = &PathBuf> {
        self.ladder_svg.iter().chain(&self.diagram).chain(&self.html)
    }

    /// The reporters that draw them; `check` when the runs are `cwlab check`'s.
    pub fn reporters(&self, check: bool) -> Vec<Box<dyn Reporter>> {
        let mut faces: Vec<Box<dyn Reporter>> = Vec::new();
        if self.ladder {
            faces.push(Box::new(cwlab_report::figures::LadderText::new(self.conn)));
        }
        if let Some(p) = &self.ladder_svg {
            faces.push(Box::new(cwlab_report::figures::LadderSvg::new(p.clone(), self.conn)));
        }
        if let Some(p) = &self.diagram {
            faces.push(Box::new(cwlab_report::figures::DiagramSvg::new(p.clone())));
        }
        if let Some(p) = &self.html {
            faces.push(Box::new(cwlab_report::html::Html::new(p.clone(), check)));
        }
        faces
    }
}
