//! `cwlab`: the closewait-lab command line. Parses, dispatches, maps errors to exit codes.

mod app;
mod chart_cmd;
mod check;
mod demo;
mod faces;
mod figures;
mod list;
mod run;
mod serve;
mod sockets;
mod step;
mod watch;

fn main() {
    std::process::exit(app::main());
}
