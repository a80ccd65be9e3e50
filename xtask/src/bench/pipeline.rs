//! The agent's own work without the kernel: decode → correlate → JSON over
//! a recorded trace, on one core. A trace of dnsperf against knot is
//! recorded once with `dnstrace -w`. The pipeline bench
//! (dnstrace/benches/pipeline.rs) reads it into memory and runs it through
//! decode → correlate → JSON to /dev/null several times: messages per CPU
//! second of those runs is the rate the target speaks of. `dnstrace
//! analyze` of the same file is measured too (reading pcapng is then in
//! the time), and the two must write the same JSON, byte for byte.

use std::{
    io::Write as _,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use super::{Tracer, World, reap, report::median};

/// Queries in the recorded trace: dnsperf goes through its four-line input
/// this many times.
const PASSES: u32 = 50_000;
/// Paced so the recording itself loses nothing on a busy machine.
const QUERIES_PER_SECOND: u32 = 20_000;
/// Runs over the trace of each (replay, analyze); the median is reported.
const REPEATS: usize = 5;

/// What the pipeline managed.
pub struct Pipeline {
    /// Messages in the trace (the recording's count).
    pub messages: u64,
    /// Lost while recording (the trace then has fewer messages than sent).
    pub lost: u64,
    /// Messages per CPU second of each run of the pipeline bench (none
    /// when the bench measures another build than the workspace's).
    pub replay_rates: Vec<f64>,
    /// Messages per CPU second of each analyze run.
    pub analyze_rates: Vec<f64>,
}

impl Pipeline {
    pub fn median_replay_rate(&self) -> Option<f64> {
        (!self.replay_rates.is_empty()).then(|| median(self.replay_rates.clone()))
    }

    pub fn median_analyze_rate(&self) -> f64 {
        median(self.analyze_rates.clone())
    }
}

/// `replay`: the pipeline bench's binary, of the same code as `agent`.
pub fn measure(agent: &Path, replay: Option<&Path>, world: &World) -> anyhow::Result<Pipeline> {
    let trace = world.work.path.join("pipeline.pcapng");
    let trace_arg = trace.to_str().context("work path is not UTF-8")?;
    let tracer = Tracer::start(
        agent,
        &["--format", "json", "-o", "/dev/null", "-w", trace_arg],
    )?;
    let mut perf = world
        .namespace
        .command("dnsperf")
        .args(["-s", "127.0.0.1", "-p", "53", "-c", "4", "-q", "200"])
        .arg("-d")
        .arg(&world.queries)
        .args(["-n", &PASSES.to_string()])
        .args(["-Q", &QUERIES_PER_SECOND.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting dnsperf")?;
    let status = perf.wait()?;
    if !status.success() {
        bail!("dnsperf exited with {status} while recording the pipeline's trace");
    }
    let (_, summary) = tracer.stop()?;
    let mut replay_rates = Vec::new();
    if let Some(replay) = replay {
        same_json(agent, replay, &trace, world)?;
        for (messages, cpu_ns) in replay_runs(replay, &trace, "/dev/null", REPEATS)? {
            // Both rates over the recording's count of messages.
            if messages != summary.messages {
                bail!(
                    "the pipeline bench read {messages} messages of the {} recorded",
                    summary.messages
                );
            }
            replay_rates.push(messages as f64 / (cpu_ns as f64 / 1e9).max(1e-9));
        }
    }
    let mut analyze_rates = Vec::new();
    for _ in 0..REPEATS {
        let cpu_s = run_analyze(agent, &trace, "/dev/null")?;
        analyze_rates.push(summary.messages as f64 / cpu_s.max(1e-9));
    }
    Ok(Pipeline {
        messages: summary.messages,
        lost: summary.lost,
        replay_rates,
        analyze_rates,
    })
}

/// The bench's replay must do all that analyze does: the same JSON.
fn same_json(agent: &Path, replay: &Path, trace: &Path, world: &World) -> anyhow::Result<()> {
    let from_analyze = world.work.path.join("analyze.json");
    let from_replay = world.work.path.join("replay.json");
    let path = |p: &Path| {
        p.to_str()
            .map(str::to_owned)
            .context("work path is not UTF-8")
    };
    run_analyze(agent, trace, &path(&from_analyze)?)?;
    replay_runs(replay, trace, &path(&from_replay)?, 1)?;
    // cmp (diffutils, on every Debian system): 0 the same, 1 not.
    let compared = Command::new("cmp")
        .arg("-s")
        .args([&from_analyze, &from_replay])
        .status()
        .context("running cmp")?;
    let _ = std::fs::remove_file(&from_analyze);
    let _ = std::fs::remove_file(&from_replay);
    match compared.code() {
        Some(0) => Ok(()),
        Some(1) => {
            bail!("the pipeline bench's JSON differs from dnstrace analyze's over the same trace")
        }
        _ => bail!("cmp of the two JSON outputs failed: {compared}"),
    }
}

/// `runs` runs of the pipeline bench over `trace`, JSON to `output`: each
/// run's messages and CPU nanoseconds, as the bench prints them.
fn replay_runs(
    replay: &Path,
    trace: &Path,
    output: &str,
    runs: usize,
) -> anyhow::Result<Vec<(u64, u64)>> {
    let out = Command::new(replay)
        .args(["--runs", &runs.to_string()])
        .args(["--format", "json", "-o", output])
        .arg(trace)
        .stderr(Stdio::inherit())
        .output()
        .context("starting the pipeline bench")?;
    if !out.status.success() {
        bail!("the pipeline bench exited with {}", out.status);
    }
    let parse = |line: &str| -> Option<(u64, u64)> {
        match line.split_whitespace().collect::<Vec<_>>()[..] {
            ["messages", messages, "cpu_ns", cpu_ns] => {
                Some((messages.parse().ok()?, cpu_ns.parse().ok()?))
            }
            _ => None,
        }
    };
    let runs_read: Vec<(u64, u64)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| parse(line).with_context(|| format!("pipeline bench printed {line:?}")))
        .collect::<anyhow::Result<_>>()?;
    if runs_read.len() != runs {
        bail!(
            "the pipeline bench reported {} runs of {runs}",
            runs_read.len()
        );
    }
    Ok(runs_read)
}

/// Runs `dnstrace analyze` of `trace`, JSON to `output`: its CPU seconds.
fn run_analyze(agent: &Path, trace: &Path, output: &str) -> anyhow::Result<f64> {
    let mut child = Command::new(agent)
        .arg("analyze")
        .args(["--format", "json", "-o", output])
        .arg(trace)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting dnstrace analyze")?;
    let mut stderr = child.stderr.take().context("analyze stderr")?;
    let mut errors = Vec::new();
    std::io::copy(&mut stderr, &mut errors)?;
    let (cpu_s, status) = reap(child).context("waiting for dnstrace analyze")?;
    if !status.success() {
        std::io::stderr().write_all(&errors)?;
        bail!("dnstrace analyze exited with {status}");
    }
    Ok(cpu_s)
}
