//! Keeping a run apart from the machine: a private network namespace where permitted, the host's
//! loopback (filtered by the run's own port) where not.

use cwlab_model::report::Isolation;

use crate::RunError;

/// What the caller asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IsolationMode {
    /// A private namespace if permitted, else the host with a note saying so.
    #[default]
    Auto,
    /// A private namespace or nothing (exit 2).
    Netns,
    /// The host's loopback.
    Host,
}

/// Moves the calling thread into the isolation asked for. Call it on the thread that will start
/// the server and the sampler, before they start.
pub fn enter(mode: IsolationMode) -> Result<(Isolation, Option<String>), RunError> {
    match mode {
        IsolationMode::Host => Ok((Isolation::Host, Some("asked for the host's loopback".into()))),
        IsolationMode::Netns | IsolationMode::Auto => match cwlab_sampler::netns::enter_private() {
            Ok(()) => {
                no_timewait_reuse();
                Ok((Isolation::Netns, None))
            }
            Err(e) if mode == IsolationMode::Netns => Err(RunError::Environment(format!(
                "cannot make a private network namespace ({e}); run as root, or drop `--isolation netns` to fall back to the host's loopback"
            ))),
            Err(e) => Ok((
                Isolation::Host,
                Some(format!(
                    "no private network namespace ({e}): ran on the host's loopback, counts filtered by the run's own port"
                )),
            )),
        },
    }
}

/// Turns off `tcp_tw_reuse` in the run's own namespace (its default, 2, lets a new connection on
/// loopback take the port of one still in TIME-WAIT): every connection of a run keeps a client
/// port of its own, which is how the witnesses tell connections apart. A namespace that refuses
/// keeps its setting; nothing else depends on it.
fn no_timewait_reuse() {
    // The file is this thread's namespace's: the thread has just entered it.
    let _ = std::fs::write("/proc/sys/net/ipv4/tcp_tw_reuse", "0");
}
