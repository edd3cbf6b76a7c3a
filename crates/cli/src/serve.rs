//! `cwlab serve`: the hidden entry of the forking server. Nothing here may start a thread.

use cwlab_model::protocol::ServeOptions;

use crate::app::Failure;

#[derive(clap::Args)]
pub struct Args {
    /// The server's options as JSON (see cwlab_model::protocol): the runner writes them.
    #[arg(value_parser = ServeOptions::from_arg)]
    options: ServeOptions,
}

pub fn main(a: &Args) -> Result<i32, Failure> {
    cwlab_servers::serve(&a.options).map_err(Failure::bad_input)
}

/// `cwlab contain`: the hidden entry of a user's server, contained.
#[derive(clap::Args)]
pub struct ContainArgs {
    /// The options as JSON (see cwlab_model::protocol): the runner writes them.
    #[arg(value_parser = cwlab_model::protocol::ContainOptions::from_arg)]
    options: cwlab_model::protocol::ContainOptions,
}

pub fn contain(a: &ContainArgs) -> Result<i32, Failure> {
    cwlab_servers::contain(&a.options).map_err(Failure::bad_input)
}
