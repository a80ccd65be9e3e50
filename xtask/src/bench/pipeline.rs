//! The agent's own work without the kernel: decode → correlate → JSON over
//! a recorded trace, on one core. A trace of dnsperf against knot is
//! recorded once with `dnstrace -w`, then `dnstrace analyze` reads it back
//! several times with JSON to /dev/null; messages per CPU second of the
//! analyze process is the rate (reading pcapng is counted too, so the rate
//! is if anything low).

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
/// analyze runs over the trace; the median is reported.
const REPEATS: usize = 3;

/// What the pipeline managed.
pub struct Pipeline {
    /// Messages in the trace (the recording's count).
    pub messages: u64,
    /// Lost while recording (the trace then has fewer messages than sent).
    pub lost: u64,
    /// Messages per CPU second of each analyze run.
    pub rates: Vec<f64>,
}

impl Pipeline {
    pub fn median_rate(&self) -> f64 {
        median(self.rates.clone())
    }
}

pub fn measure(agent: &Path, world: &World) -> anyhow::Result<Pipeline> {
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
    let mut rates = Vec::new();
    for _ in 0..REPEATS {
        let cpu_s = analyze_cpu_seconds(agent, &trace)?;
        rates.push(summary.messages as f64 / cpu_s.max(1e-9));
    }
    Ok(Pipeline {
        messages: summary.messages,
        lost: summary.lost,
        rates,
    })
}

/// CPU seconds of one `dnstrace analyze` of `trace`, JSON to /dev/null.
fn analyze_cpu_seconds(agent: &Path, trace: &Path) -> anyhow::Result<f64> {
    let mut child = Command::new(agent)
        .arg("analyze")
        .args(["--format", "json", "-o", "/dev/null"])
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
