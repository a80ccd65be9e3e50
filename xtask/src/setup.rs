//! `cargo xtask setup`: the shell script does the work, because it must also
//! run before the pinned toolchain exists (the README's commands and
//! `.ci/run` call it directly).

use std::process::Command;

use crate::command::{self, workspace_root};

pub fn run() -> anyhow::Result<()> {
    command::run(Command::new("bash").arg(workspace_root().join("scripts/setup.sh")))
}
