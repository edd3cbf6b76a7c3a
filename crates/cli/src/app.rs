//! The command line: subcommands, and errors printed with their chain and mapped to exit codes.

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use cwlab_model::exit;
use cwlab_model::protocol::entry;

/// closewait-lab: reproduce, watch and assert TCP's close sequence.
#[derive(Parser)]
#[command(name = "cwlab", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List TCP sockets from the kernel (sock_diag), filtered by port and state, with their holders.
    Sockets(crate::sockets::Args),
    /// Run scenarios and check their expectations; the exit code is the verdict.
    #[command(name = entry::RUN)]
    Run(crate::run::Args),
    /// Run your own server (any language) under the lab's witnesses: the verdict, who holds
    /// what, and the fix. `cwlab check -- python3 server.py {port}`
    Check(crate::check::Args),
    /// Watch a live host's close sequence per service port (read-only): on screen, as JSON, or as
    /// a Prometheus exporter (`--listen`).
    Watch(crate::watch::Args),
    /// Run scenarios side by side in a live view (default: leak and fixed), for an audience.
    Demo(crate::demo::Args),
    /// Draw the timelines of finished runs as one SVG, side by side on one scale.
    Chart(crate::chart_cmd::Args),
    /// List the scenarios with the first line of each story.
    List {
        /// Where the scenario files are.
        #[arg(default_value = "scenarios")]
        dir: PathBuf,
    },
    /// Run a forking server (the runner starts this; it never starts a thread).
    #[command(hide = true, name = entry::SERVE)]
    Serve(crate::serve::Args),
    /// Run a user's server contained (the runner starts this for `cwlab check`).
    #[command(hide = true, name = entry::CONTAIN)]
    Contain(crate::serve::ContainArgs),
    /// Hold inherited descriptors until stdin closes (a handler starts this).
    #[command(hide = true, name = entry::HELPER)]
    Helper,
    /// When stdin closes (the runner ended, however), remove a tracefs instance (the runner
    /// starts this, so that even its SIGKILL leaves nothing behind).
    #[command(hide = true, name = entry::JANITOR)]
    Janitor {
        /// The instance's folder.
        dir: PathBuf,
    },
}

/// An error on its way to the terminal, with the exit code it means.
pub struct Failure {
    pub code: i32,
    pub error: Box<dyn std::error::Error>,
}

impl Failure {
    pub fn bad_input(error: impl Into<Box<dyn std::error::Error>>) -> Failure {
        Failure { code: exit::BAD_INPUT, error: error.into() }
    }
}

pub fn main() -> i32 {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sockets(a) => crate::sockets::main(&a),
        Command::Run(a) => crate::run::main(&a),
        Command::Check(a) => crate::check::main(&a),
        Command::Watch(a) => crate::watch::main(&a),
        Command::List { dir } => crate::list::main(&dir),
        Command::Chart(a) => crate::chart_cmd::main(&a),
        Command::Demo(a) => crate::demo::main(&a),
        Command::Serve(a) => crate::serve::main(&a),
        Command::Contain(a) => crate::serve::contain(&a),
        Command::Helper => Ok(cwlab_servers::helper()),
        Command::Janitor { dir } => Ok(cwlab_runner::janitor(&dir)),
    };
    match result {
        Ok(code) => code,
        Err(f) if is_broken_pipe(&*f.error) => exit::PASS,
        Err(f) => {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "error: {}", f.error);
            let mut source = f.error.source();
            while let Some(s) = source {
                let _ = writeln!(err, "  caused by: {s}");
                source = s.source();
            }
            f.code
        }
    }
}

fn is_broken_pipe(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::BrokenPipe {
                return true;
            }
        }
        cur = e.source();
    }
    false
}
