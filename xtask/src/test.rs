//! `cargo xtask test`: everything CI checks, in the order that fails fastest.

use clap::Args;

use crate::{
    command::{self, cargo},
    vm,
};

#[derive(Args)]
pub struct Options {
    /// Skip formatting and clippy (for a quick rerun of the tests).
    #[arg(long)]
    no_lint: bool,
    /// Only end-to-end tests whose name contains this (and no VM test).
    #[arg(long)]
    filter: Option<String>,
    /// Skip the VM test on Debian's stock kernel.
    #[arg(long)]
    no_vm: bool,
}

pub fn run(options: &Options) -> anyhow::Result<()> {
    if !options.no_lint {
        command::run(cargo().args(["fmt", "--all", "--check"]))?;
        command::run(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    command::run(cargo().args(["test", "--workspace", "--exclude", "dnstrace-tests"]))?;

    // One static release binary for this host and the VM, as users get it.
    let agent = command::build_static_agent()?;
    let mut end_to_end = cargo();
    end_to_end
        .args(["test", "--release", "--package", "dnstrace-tests", "--"])
        .env("DNSTRACE_BIN", &agent);
    if let Some(filter) = &options.filter {
        end_to_end.arg(filter);
    }
    command::run(&mut end_to_end)?;
    if options.no_vm || options.filter.is_some() {
        return Ok(());
    }
    vm::run(&vm::Options::default())
}
