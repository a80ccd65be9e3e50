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

/// The target of every release binary: glibc, linked statically.
/// Statically linked, the same binary runs on any host, in the VM's
/// initramfs (no libc there) and in the image (from scratch). glibc rather
/// than musl: musl's malloc and its `rep movsq` memcpy, which every short
/// copy pays on this CPU, made the agent twice as slow per message.
pub const STATIC_TARGET: &str = "x86_64-unknown-linux-gnu";

/// Builds `bin` of `package` in release mode for [`STATIC_TARGET`],
/// statically linked, and returns its path. The flag goes only to the
/// target's artifacts (an explicit `--target` keeps it from build scripts
/// and proc macros, which cannot be static).
pub fn build_static(package: &str, bin: &str) -> anyhow::Result<PathBuf> {
    run(static_cargo().args([
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

/// Builds the bench target `bench` of `package` as [`build_static`] builds
/// binaries, and returns its path (cargo names it with a hash).
pub fn build_static_bench(package: &str, bench: &str) -> anyhow::Result<PathBuf> {
    let output = static_cargo()
        // Diagnostics rendered to stderr; the artifact lines on stdout.
        .args([
            "bench",
            "--no-run",
            "--message-format",
            "json-render-diagnostics",
        ])
        .args([
            "--target",
            STATIC_TARGET,
            "--package",
            package,
            "--bench",
            bench,
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running cargo bench --no-run")?;
    if !output.status.success() {
        bail!("building the {bench} bench failed");
    }
    // The artifact line of the bench target names its executable.
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["target"]["name"] == bench)
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
        .with_context(|| format!("cargo named no executable for the {bench} bench"))
}

/// Cargo with the static flag for [`STATIC_TARGET`]'s artifacts.
fn static_cargo() -> Command {
    // Cargo's per-target variable, named from the target so the two
    // cannot drift apart.
    let rustflags = format!(
        "CARGO_TARGET_{}_RUSTFLAGS",
        STATIC_TARGET.to_uppercase().replace('-', "_")
    );
    let mut command = cargo();
    command.env(rustflags, "-C target-feature=+crt-static");
    command
}

/// The agent as it ships: one static release binary that `run`, `demo`,
/// the tests, the VM test, the image and the bench all use.
pub fn build_static_agent() -> anyhow::Result<PathBuf> {
    build_static("dnstrace", "dnstrace")
}
