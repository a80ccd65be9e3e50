//! `cargo xtask fuzz`: the cargo-fuzz targets in fuzz/ (docs/fuzzing.md),
//! one after another, with the pinned nightly. By default every target for
//! a few seconds, a smoke run; `--runs` or `--seconds` for real campaigns.

use std::{fs, process::Command};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::command::{self, workspace_root};

/// The targets, in the order they run (the slowest last).
const TARGETS: [&str; 7] = [
    "decode",
    "framing",
    "pcap",
    "pcapng",
    "dnstap",
    "json_lines",
    "correlate",
];

#[derive(Args)]
pub struct Options {
    /// Only this target (decode, framing, pcap, pcapng, dnstap, json_lines,
    /// correlate); all of them by default.
    target: Option<String>,
    /// Stop each target after this many executions.
    #[arg(long, conflicts_with = "seconds")]
    runs: Option<u64>,
    /// Stop each target after this many seconds (10 without --runs).
    #[arg(long)]
    seconds: Option<u64>,
}

pub fn run(options: &Options) -> anyhow::Result<()> {
    let targets: Vec<&str> = match &options.target {
        Some(target) if TARGETS.contains(&target.as_str()) => vec![target],
        Some(target) => bail!("no fuzz target {target}; there are {}", TARGETS.join(", ")),
        None => TARGETS.to_vec(),
    };
    let toolchain = fuzz_toolchain()?;
    let root = workspace_root();
    for target in targets {
        // New inputs go to corpus/ (not kept); the seeds in the repo are
        // read only.
        let corpus = root.join("fuzz/corpus").join(target);
        fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
        // As aya-build runs the eBPF build: `rustup run` names the
        // toolchain whatever this cargo's environment says.
        let mut fuzz = Command::new("rustup");
        fuzz.current_dir(&root)
            .args(["run", &toolchain, "cargo", "fuzz", "run"])
            .args(["--sanitizer", "none", "--release"])
            .args(["--debug-assertions", target])
            .arg(&corpus)
            .arg(root.join("fuzz/seeds").join(target))
            .args([
                "--",
                "-timeout=10",
                "-rss_limit_mb=2048",
                "-print_final_stats=1",
            ]);
        match (options.runs, options.seconds) {
            (Some(runs), _) => fuzz.arg(format!("-runs={runs}")),
            (None, seconds) => fuzz.arg(format!("-max_total_time={}", seconds.unwrap_or(10))),
        };
        command::run(&mut fuzz).with_context(|| {
            format!("fuzz target {target} failed; its input is under fuzz/artifacts/{target}/")
        })?;
    }
    Ok(())
}

/// The nightly cargo-fuzz needs: the one pinned for the eBPF crate
/// (scripts/toolchains.env), so no second nightly is installed.
fn fuzz_toolchain() -> anyhow::Result<String> {
    let path = workspace_root().join("scripts/toolchains.env");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .find_map(|line| line.strip_prefix("EBPF_TOOLCHAIN="))
        .map(str::to_string)
        .with_context(|| format!("no EBPF_TOOLCHAIN in {}", path.display()))
}
