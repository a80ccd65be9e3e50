//! Running child commands with their command line in every error.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// The workspace root: xtask's manifest sits one level below it.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// Runs `command` to completion; a non-zero exit is an error naming it.
pub fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("failed to start {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}

pub fn cargo() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(workspace_root());
    command
}

/// Builds the agent in release mode (tests and benchmarks need its speed)
/// and returns the binary's path.
pub fn build_release_agent() -> anyhow::Result<PathBuf> {
    run(cargo().args(["build", "--release", "--package", "dnstrace"]))?;
    Ok(workspace_root().join("target/release/dnstrace"))
}

/// Static binaries run in the VM's initramfs, which has no libc, and on any
/// host.
pub const STATIC_TARGET: &str = "x86_64-unknown-linux-musl";

/// Builds `bin` of `package` in release mode, statically linked against
/// musl, and returns its path.
pub fn build_static(package: &str, bin: &str) -> anyhow::Result<PathBuf> {
    run(cargo().args([
        "build",
        "--release",
        "--target",
        STATIC_TARGET,
        "--package",
        package,
        "--bin",
        bin,
    ]))?;
    Ok(workspace_root().join(format!("target/{STATIC_TARGET}/release/{bin}")))
}

/// The agent as tests run it: the same static release binary on this host
/// and in the VM.
pub fn build_static_agent() -> anyhow::Result<PathBuf> {
    build_static("dnstrace", "dnstrace")
}
