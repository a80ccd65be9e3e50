//! `cargo xtask test`: everything CI checks, in the order that fails fastest.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::{
    command::{self, cargo},
    image, vm,
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

/// Test counts summed over every runner, for the closing line.
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Tally {
    /// Runs a `cargo test` command, echoing its output and counting its
    /// `test result:` lines.
    fn cargo_test(&mut self, command: &mut Command) -> anyhow::Result<()> {
        let mut child = command
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("failed to start {command:?}"))?;
        let stdout = child.stdout.take().context("cargo test stdout")?;
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            println!("{line}");
            if let Some(counts) = line.strip_prefix("test result: ") {
                self.add(counts);
            }
        }
        let status = child.wait()?;
        if !status.success() {
            bail!("{command:?} failed: {status}");
        }
        Ok(())
    }

    /// `ok. 7 passed; 0 failed; 1 ignored; 0 measured; …`
    fn add(&mut self, counts: &str) {
        for part in counts.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(count)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(count) = count.parse::<u64>() else {
                continue;
            };
            match what {
                "passed" => self.passed += count,
                "failed" => self.failed += count,
                "ignored" => self.ignored += count,
                _ => {}
            }
        }
    }
}

pub fn run(options: &Options) -> anyhow::Result<()> {
    let mut tally = Tally::default();
    tests(options, &mut tally)?;
    // One closing line for CI over every runner, the VM's checks included.
    println!(
        "dnstrace: {} passed, {} failed, {} skipped",
        tally.passed, tally.failed, tally.ignored
    );
    Ok(())
}

fn tests(options: &Options, tally: &mut Tally) -> anyhow::Result<()> {
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
    tally.cargo_test(cargo().args([
        "test",
        "--workspace",
        "--exclude",
        "dnstrace-tests",
        "--lib",
        "--bins",
        "--tests",
    ]))?;

    // One static release binary for this host and the VM, as users get it.
    let agent = command::build_static_agent()?;
    // The same binary again, as the image a Kubernetes node runs.
    let image = image::run(&image::Options::default())?;
    let mut end_to_end = cargo();
    end_to_end
        .args(["test", "--release", "--package", "dnstrace-tests", "--"])
        .env("DNSTRACE_BIN", &agent)
        .env("DNSTRACE_IMAGE", &image);
    if let Some(filter) = &options.filter {
        end_to_end.arg(filter);
    }
    tally.cargo_test(&mut end_to_end)?;
    if options.no_vm || options.filter.is_some() {
        return Ok(());
    }
    tally.passed += vm::run(&vm::Options::default())? as u64;
    Ok(())
}
