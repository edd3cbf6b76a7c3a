//! What the runner and the lab's server (`cwlab serve`) say to each other, typed once: the
//! server's options, handed over as one JSON argument, and the server's messages, one JSON object
//! a line on its stdout. A new option or message is one change here, and both ends follow.
//!
//! # Format
//!
//! ```text
//! cwlab serve '{"behaviour":"close-only","addr":"127.0.0.1","port":0,"backlog":4096,
//!               "pid_namespace":true,"net_namespace":false,
//!               "limits":{"nofile":null,"rcvbuf":null,"sndbuf":null}}'
//! {"event":"acceptor","pid":2}          // with a PID namespace: the acceptor is one fork further
//! {"event":"listening","port":40123}    // ready: the listener is bound and listening
//! {"event":"accepted","count":1}        // after each accept
//! {"event":"accept-error","errno":24}   // after each failed accept
//! {"event":"served"}                    // a keep-alive handler answered a request
//! ```
//!
//! A server of the user's own runs under `cwlab contain '{"command":{…},"port":P,…}'`, whose
//! stdout says `{"event":"exited","status":"exit status 1"}` when the command's first process
//! ends and `{"event":"empty"}` when nothing of the server is left (before those, when the
//! program cannot be executed at all, `{"event":"cannot-run","program":"jvaa","reason":"command
//! not found"}`); the command's own stdout and stderr go to `cwlab contain`'s stderr.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::scenario::{Behaviour, ServerCommand, ServerLimits};

/// The subcommands by which the lab's processes start one another (the `cwlab` binary
/// re-executed): one name each, which the command line parses and every process that starts
/// one names, so that the two cannot drift apart.
pub mod entry {
    /// `cwlab run`: scenarios (`cwlab demo` runs each of its scenarios as one).
    pub const RUN: &str = "run";
    /// `cwlab serve OPTIONS`: a forking server of the lab's (the runner starts it).
    pub const SERVE: &str = "serve";
    /// `cwlab contain OPTIONS`: a user's server or client, contained (the runner starts it).
    pub const CONTAIN: &str = "contain";
    /// `cwlab helper`: holds inherited descriptors until stdin closes (a handler starts it).
    pub const HELPER: &str = "helper";
    /// `cwlab janitor DIR`: removes a tracefs instance when stdin closes (the runner starts it).
    pub const JANITOR: &str = "janitor";
}

/// How to start the lab's server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeOptions {
    /// How connections end.
    pub behaviour: Behaviour,
    /// The address to listen on.
    pub addr: IpAddr,
    /// The port; 0 picks a free one.
    pub port: u16,
    /// The listen(2) backlog.
    pub backlog: i32,
    /// Put the acceptor in a new PID namespace as its init: when it dies, the kernel kills every
    /// process the server started, helpers included.
    pub pid_namespace: bool,
    /// Serve from a new network namespace of the server's own, empty but for a loopback that is
    /// down: the runner joins it to its own with a veth pair (the two-hosts topology).
    pub net_namespace: bool,
    /// The scenario's settings beyond the behaviour (RLIMIT_NOFILE, buffer sizes).
    pub limits: ServerLimits,
}

impl ServeOptions {
    /// The options as the one argument of `cwlab serve`.
    pub fn to_arg(&self) -> String {
        serde_json::to_string(self).expect("options serialize")
    }

    /// Reads the argument of `cwlab serve`.
    pub fn from_arg(s: &str) -> Result<ServeOptions, String> {
        serde_json::from_str(s).map_err(|e| format!("bad server options: {e}"))
    }
}

/// How to run a server of the user's own (`cwlab contain`): in a PID namespace of its own when
/// the run has one, under an init of the lab's that reaps whatever the server leaves behind and
/// stops it all when the lifeline (stdin) closes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainOptions {
    /// The command, `{port}` already replaced.
    pub command: ServerCommand,
    /// The run's port, also given as `PORT`.
    pub port: u16,
    /// Contain it in a PID namespace of its own.
    pub pid_namespace: bool,
    /// How long the server gets between SIGTERM and SIGKILL, in ms.
    pub grace_ms: u64,
}

impl ContainOptions {
    /// The options as the one argument of `cwlab contain`.
    pub fn to_arg(&self) -> String {
        serde_json::to_string(self).expect("options serialize")
    }

    /// Reads the argument of `cwlab contain`.
    pub fn from_arg(s: &str) -> Result<ContainOptions, String> {
        serde_json::from_str(s).map_err(|e| format!("bad contain options: {e}"))
    }
}

/// One line the server writes on its stdout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ServerMessage {
    /// The acceptor's pid, when a PID namespace put it one fork away from the runner's child.
    Acceptor {
        /// Its pid as the runner sees it.
        pid: u32,
    },
    /// The server listens: it is ready.
    Listening {
        /// The bound port.
        port: u16,
    },
    /// A connection was accepted.
    Accepted {
        /// Connections accepted so far.
        count: u64,
    },
    /// A handler of the keep-alive behaviours answered one request.
    Served,
    /// accept() failed.
    AcceptError {
        /// Its errno (24 is EMFILE).
        errno: i32,
    },
    /// The user's command (its first process) ended.
    Exited {
        /// How: `exit status 3`, `killed by signal 9`, or why it could not start.
        status: String,
    },
    /// No process of the user's server is left.
    Empty,
    /// The user's command could not be executed at all.
    CannotRun {
        /// The program as given (`argv[0]`).
        program: String,
        /// Why, as a shell says it: `command not found`, `permission denied`, …
        reason: String,
    },
}

impl ServerMessage {
    /// The message as one line, newline included.
    pub fn line(&self) -> String {
        let mut s = serde_json::to_string(self).expect("messages serialize");
        s.push('\n');
        s
    }

    /// Reads one line; `None` for a line that is not a message (which the runner ignores).
    pub fn parse(line: &str) -> Option<ServerMessage> {
        serde_json::from_str(line.trim()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_and_messages_go_both_ways() {
        let o = ServeOptions {
            behaviour: Behaviour::ExecInherit,
            addr: "127.0.0.1".parse().unwrap(),
            port: 0,
            backlog: 4096,
            pid_namespace: true,
            net_namespace: false,
            limits: ServerLimits {
                nofile: Some(64),
                rcvbuf: None,
                sndbuf: Some(4096),
                idle_ms: None,
            },
        };
        assert_eq!(ServeOptions::from_arg(&o.to_arg()), Ok(o));
        let m = ServerMessage::AcceptError { errno: 24 };
        assert_eq!(m.line(), "{\"event\":\"accept-error\",\"errno\":24}\n");
        assert_eq!(ServerMessage::parse(&m.line()), Some(m.clone()));
        assert_eq!(ServerMessage::parse("listening 4000"), None);
        let e = ServeOptions::from_arg(r#"{"behaviour":"close-all"}"#).unwrap_err();
        assert!(e.contains("unknown server behaviour `close-all`"), "{e}");
    }
}
