//! Small OS helpers the runner, the faces and the command line share, so that none of them has
//! to depend on another for them: files that appear whole or not at all ([`atomic`]), and the
//! process's SIGINT and SIGTERM ([`signals`]: the first asks to stop, a second kills at once).
#![warn(missing_docs)]

pub mod atomic;
pub mod signals;

pub use atomic::{write_atomically, AtomicFile};
