//! `cargo xtask run -- ARGS`: build the agent and trace this host.

use std::process::Command;

use clap::Args;

use crate::command;

#[derive(Args)]
pub struct Options {
    /// Arguments for dnstrace, e.g. `-- --pid 1234 --format json`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

pub fn run(options: &Options) -> anyhow::Result<()> {
    let agent = command::build_static_agent()?;
    command::run(Command::new(agent).args(&options.args))
}
