//! Which runtime runs a process, read from its executable and command line, so that a fix can be
//! said in that runtime's idiom ("try-with-resources" to a JVM, `socket.end()` to Node.js)
//! rather than in C's to everyone.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The runtime a server (or a client) runs on, as far as its executable tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Runtime {
    /// CPython (`python3`, `python3.11`, …).
    Cpython,
    /// A Java virtual machine (`java`).
    Jvm,
    /// Node.js (`node`, `nodejs`).
    Nodejs,
    /// Perl (`perl`, `perl5.36.0`).
    Perl,
    /// Tcl (`tclsh`, `tclsh8.6`, `wish`).
    Tcl,
    /// Ruby (`ruby`).
    Ruby,
    /// A native binary: C, C++, Go, Rust, … (nothing above).
    Native,
}

impl Runtime {
    /// Every runtime, for tests and docs.
    pub const ALL: [Runtime; 7] = [
        Runtime::Cpython,
        Runtime::Jvm,
        Runtime::Nodejs,
        Runtime::Perl,
        Runtime::Tcl,
        Runtime::Ruby,
        Runtime::Native,
    ];

    /// How people name it: `CPython`, `JVM`, `Node.js`, …
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Cpython => "CPython",
            Runtime::Jvm => "JVM",
            Runtime::Nodejs => "Node.js",
            Runtime::Perl => "Perl",
            Runtime::Tcl => "Tcl",
            Runtime::Ruby => "Ruby",
            Runtime::Native => "native binary",
        }
    }

    /// The runtime of a process whose executable is `exe` (`/proc/PID/exe`, or `argv[0]` where
    /// that cannot be read) and whose command line is `argv`. An interpreter is named by its
    /// executable; `argv[0]` is looked at too, since a wrapper (a pyenv shim, `env`) may have
    /// exec'd it under another name.
    pub fn identify(exe: &str, argv: &[String]) -> Runtime {
        let names = std::iter::once(exe).chain(argv.first().map(String::as_str));
        names.filter_map(|p| by_name(basename(p))).next().unwrap_or(Runtime::Native)
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn basename(path: &str) -> &str {
    // A deleted executable reads `/usr/bin/python3.11 (deleted)`.
    let path = path.strip_suffix(" (deleted)").unwrap_or(path);
    path.rsplit('/').next().unwrap_or(path)
}

/// An interpreter named `name`, with or without its version (`python3.11`, `tclsh8.6`).
fn by_name(name: &str) -> Option<Runtime> {
    let stem = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    Some(match stem {
        "python" | "pypy" => Runtime::Cpython,
        "java" => Runtime::Jvm,
        "node" | "nodejs" => Runtime::Nodejs,
        "perl" => Runtime::Perl,
        "tclsh" | "wish" => Runtime::Tcl,
        "ruby" => Runtime::Ruby,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn interpreters_are_named_by_their_executable_with_or_without_a_version() {
        let cases = [
            ("/usr/bin/python3.11", &["python3", "srv.py"][..], Runtime::Cpython),
            ("/root/.pyenv/versions/3.11.7/bin/python3.11", &["python3"], Runtime::Cpython),
            ("/usr/lib/jvm/java-17-openjdk-amd64/bin/java", &["java", "S.java"], Runtime::Jvm),
            ("/usr/bin/node", &["node", "s.js"], Runtime::Nodejs),
            ("/usr/bin/nodejs", &["nodejs"], Runtime::Nodejs),
            ("/usr/bin/perl", &["perl", "s.pl"], Runtime::Perl),
            ("/usr/bin/tclsh8.6", &["tclsh", "s.tcl"], Runtime::Tcl),
            ("/usr/sbin/nginx", &["nginx: master process"], Runtime::Native),
            ("/tmp/fork_leak", &["/tmp/fork_leak", "4000"], Runtime::Native),
            ("/usr/bin/python3.11 (deleted)", &["x"], Runtime::Cpython),
        ];
        for (exe, words, want) in cases {
            assert_eq!(Runtime::identify(exe, &argv(words)), want, "{exe}");
        }
    }

    #[test]
    fn an_unreadable_executable_falls_back_to_argv0() {
        assert_eq!(Runtime::identify("", &argv(&["perl", "x.pl"])), Runtime::Perl);
        assert_eq!(Runtime::identify("", &[]), Runtime::Native);
    }
}
