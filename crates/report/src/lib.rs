//! The faces of closewait-lab: every way a run is shown is a
//! [`Reporter`](cwlab_model::events::Reporter), told the run's events as they happen and its
//! report when it ends. None of them works out what a run means: that is the report's
//! [`Diagnosis`](cwlab_model::Diagnosis), computed once in the model.
//!
//! | reporter | face |
//! |---|---|
//! | [`Summary`] | the human summary on stdout |
//! | [`Json`] | the report as one JSON line (`--json`) |
//! | [`EventLines`] | JSON Lines events, the report last (`--events`) |
//! | [`Progress`] | the progress line and the presenter's cues on stderr |
//! | [`Svg`] | the timeline chart (`--svg`) |
//! | [`figures::LadderText`] | each way the connections went, as a ladder on stdout (`--ladder`) |
//! | [`figures::LadderSvg`] | the same ladders as SVG (`--ladder-svg`) |
//! | [`figures::DiagramSvg`] | the state machine with the run's counts (`--diagram`) |
//! | [`html::Html`] | one self-contained HTML page (`--html`) |
//! | [`Junit`] | JUnit XML for CI (`--junit`) |
//! | [`live::Panel`] | one scenario's panel in the live view (`cwlab demo`) |
#![warn(missing_docs)]

pub mod chart;
pub mod diagram;
pub mod figures;
pub mod html;
mod json;
mod junit;
pub mod ladder;
pub mod live;
pub mod palette;
mod progress;
pub mod sockets;
pub mod summary;
pub mod text;
pub mod watch_view;

pub use chart::Svg;
pub use json::{EventLines, Json};
pub use junit::Junit;
pub use progress::Progress;
pub use summary::Summary;
