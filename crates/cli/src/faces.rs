//! The faces a run is shown through, chosen by flags that `cwlab run` and `cwlab check` share:
//! the reporter list is built here, once, so that a new face reaches both commands.

use std::path::PathBuf;

use cwlab_model::events::{Reporter, Reporters};

/// The files a run can be drawn or written into besides its report.
#[derive(clap::Args, Clone, Default)]
pub struct Faces {
    /// Draw the timeline of the run(s) as an SVG chart, side by side on one scale.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Write JUnit XML for CI (GitLab, Jenkins, test-report actions): one test case per
    /// expectation, failures with the observed value.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    #[command(flatten)]
    pub figures: crate::figures::Figures,
}

/// What goes to stdout: one face only.
pub enum Stdout {
    /// The human summary; the reports' paths, which it names.
    Summary(Vec<PathBuf>),
    /// Each report as one JSON line (`--json`).
    Json,
    /// JSON Lines events, each report last (`--events`).
    Events,
}

impl Faces {
    /// The files these options write, to check before anything runs.
    pub fn files(&self) -> impl Iterator<Item = &PathBuf> {
        self.junit.iter().chain(&self.svg).chain(self.figures.files())
    }

    /// Every face asked for: the progress line on stderr, `stdout`'s face, then the files;
    /// `check` when the runs are `cwlab check`'s.
    pub fn reporters(&self, stdout: Stdout, check: bool) -> Reporters {
        let mut faces: Vec<Box<dyn Reporter>> = vec![Box::new(cwlab_report::Progress::new())];
        faces.push(match stdout {
            Stdout::Events => Box::new(cwlab_report::EventLines),
            Stdout::Json => Box::new(cwlab_report::Json),
            Stdout::Summary(paths) => Box::new(self.summary(cwlab_report::Summary::new(paths))),
        });
        if let Some(p) = &self.svg {
            faces.push(Box::new(cwlab_report::Svg::new(p.clone())));
        }
        if let Some(p) = &self.junit {
            faces.push(Box::new(cwlab_report::Junit::new(p.clone())));
        }
        faces.extend(self.figures.reporters(check));
        Reporters(faces)
    }

    /// The summary, without its ladder when `--ladder` prints them all.
    fn summary(&self, s: cwlab_report::Summary) -> cwlab_report::Summary {
        if self.figures.ladder {
            s.without_ladder()
        } else {
            s
        }
    }
}
