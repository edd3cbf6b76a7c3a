//! The stable vocabulary of closewait-lab: TCP states as `ss` names them, the scenario file and its
//! expectation language, the report format and the exit codes. Pure: no sockets, no processes.
#![warn(missing_docs)]

pub mod diagnosis;
pub mod duration;
pub mod events;
pub mod evidence;
pub mod exit;
pub mod expect;
pub mod fix;
pub mod ladder;
pub mod machine;
pub mod protocol;
pub mod report;
pub mod runtime;
pub mod scenario;
pub mod state;
pub mod watch;

pub use diagnosis::{Diagnosis, Finding, FindingKind};
pub use expect::{Expectation, Quantity, Window};
pub use report::{Counts, Report, Sample, SideCounts};
pub use scenario::{Scenario, ScenarioError};
pub use state::TcpState;
