//! The bench's report: one markdown block with when, where and how it was
//! measured, the table of medians and spreads, and each target's PASS or
//! MISS.

use std::{fmt::Write as _, fs, process::Command};

use super::{Config, Options, Run, pipeline::Pipeline, rss::Memory};
use crate::command;

/// The targets (docs/benchmarks.md).
const TRACE_ALL_RATIO: f64 = 0.90;
const ABOVE_TCPDUMP: f64 = 0.10;
const TRACE_PID_RATIO: f64 = 0.97;
const AGENT_US_PER_MESSAGE: f64 = 0.2;
const KERNEL_US_PER_RUN: f64 = 0.25;
const RSS_MIB: f64 = 64.0;
const PIPELINE_MESSAGES_PER_SECOND: f64 = 1_000_000.0;

/// One line on stderr as each run ends.
pub fn progress_line(run: &Run) -> String {
    let mut line = format!(
        "round {}: {:<40} {:>9.0} qps",
        run.round + 1,
        run.config.name(),
        run.qps
    );
    if let Some(tracer) = &run.tracer {
        let _ = write!(
            line,
            "  tracer {:.3} µs/msg",
            tracer.cpu_s * 1e6 / tracer.messages.max(1.0)
        );
        if let Some(lost) = tracer.lost {
            let _ = write!(line, "  lost {lost}");
        }
    }
    if let Some(probes) = &run.probes {
        let total = probes.total();
        let _ = write!(
            line,
            "  kernel {:.3} µs/run",
            total.run_time_ns as f64 / 1e3 / total.runs.max(1) as f64
        );
    }
    line
}

/// Medians and spreads of one configuration over the rounds.
struct Summary {
    ratios: Vec<f64>,
    qps: f64,
    lost: Option<u64>,
    agent_us_per_message: Option<f64>,
    kernel_us_per_message: Option<f64>,
    kernel_us_per_run: Option<f64>,
    cpu_us_per_query: f64,
}

fn summarize(config: Config, runs: &[Run]) -> Summary {
    let of_config: Vec<&Run> = runs.iter().filter(|r| r.config == config).collect();
    let ratios = of_config
        .iter()
        .filter_map(|run| {
            let baseline = runs
                .iter()
                .find(|b| b.config == Config::Baseline && b.round == run.round)?;
            Some(run.qps / baseline.qps)
        })
        .collect();
    let tracers: Vec<_> = of_config.iter().filter_map(|r| r.tracer.as_ref()).collect();
    let windows: Vec<_> = of_config.iter().filter_map(|r| r.probes.as_ref()).collect();
    let some_median = |values: Vec<f64>| (!values.is_empty()).then(|| median(values));
    Summary {
        ratios,
        qps: median(of_config.iter().map(|r| r.qps).collect()),
        lost: tracers
            .iter()
            .map(|t| t.lost)
            .sum::<Option<u64>>()
            .filter(|_| !tracers.is_empty()),
        agent_us_per_message: some_median(
            tracers
                .iter()
                .map(|t| t.cpu_s * 1e6 / t.messages.max(1.0))
                .collect(),
        ),
        kernel_us_per_message: some_median(
            windows
                .iter()
                .map(|w| w.total().run_time_ns as f64 / 1e3 / w.messages.max(1.0))
                .collect(),
        ),
        kernel_us_per_run: some_median(
            windows
                .iter()
                .map(|w| {
                    let total = w.total();
                    total.run_time_ns as f64 / 1e3 / total.runs.max(1) as f64
                })
                .collect(),
        ),
        cpu_us_per_query: median(
            of_config
                .iter()
                .map(|r| r.total_cpu_s * 1e6 / r.queries.max(1.0))
                .collect(),
        ),
    }
}

/// The report, as markdown.
pub fn markdown(
    configs: &[Config],
    runs: &[Run],
    memory: Option<&Memory>,
    pipeline: Option<&Pipeline>,
    options: &Options,
) -> anyhow::Result<String> {
    let mut out = String::new();
    let machine = Machine::here();
    writeln!(out, "### {} UTC, commit {}\n", machine.date, machine.commit)?;
    writeln!(
        out,
        "{}, {} cores, Linux {}. `{}`{}: {} s per run, {} round(s), configurations \
         alternated (each round starting one later); ratio = qps / the same round's \
         untraced qps; kernel programs counted over the middle third of each traced run.\n",
        machine.cpu,
        machine.cores,
        machine.kernel,
        machine.command,
        options
            .agent
            .as_ref()
            .map_or(String::new(), |a| format!(" (agent {})", a.display())),
        options.seconds,
        options.rounds,
    )?;
    writeln!(
        out,
        "| configuration | ratio (median) | spread (min–max) | qps (median) | lost \
         | agent µs/msg | kernel µs/msg | kernel µs/run | CPU µs/query, all |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|---|---|---|")?;
    let optional = |value: Option<f64>, digits: usize| {
        value.map_or("-".to_string(), |v| format!("{v:.digits$}"))
    };
    let mut summaries = Vec::new();
    for &config in configs {
        let s = summarize(config, runs);
        let (low, high) = spread(&s.ratios);
        let agent = match (config, s.agent_us_per_message) {
            (Config::Tcpdump, Some(us)) => format!("{us:.3} (tcpdump, per packet)"),
            (_, value) => optional(value, 3),
        };
        writeln!(
            out,
            "| {} | {:.2} | {low:.2}–{high:.2} | {:.0} | {} | {agent} | {} | {} | {:.1} |",
            config.name(),
            median(s.ratios.clone()),
            s.qps,
            s.lost.map_or("-".into(), |l| l.to_string()),
            optional(s.kernel_us_per_message, 3),
            optional(s.kernel_us_per_run, 3),
            s.cpu_us_per_query,
        )?;
        summaries.push((config, s));
    }
    writeln!(out)?;
    for (config, s) in &summaries {
        if *config != Config::Baseline {
            let rounds: Vec<String> = s.ratios.iter().map(|r| format!("{r:.2}")).collect();
            writeln!(out, "- {}: rounds {}", config.name(), rounds.join(", "))?;
        }
    }
    programs_table(&mut out, runs)?;
    if let Some(pipeline) = pipeline {
        let runs = |rates: &[f64]| -> String {
            let rates: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
            rates.join(", ")
        };
        writeln!(
            out,
            "\nPipeline (decode → correlate → JSON over a recorded trace of {} messages, {} lost \
             while recording), messages per CPU second, median:",
            pipeline.messages, pipeline.lost,
        )?;
        match pipeline.median_replay_rate() {
            Some(rate) => writeln!(
                out,
                "- the pipeline bench, the trace held in memory: {rate:.0} (runs {}); its JSON \
                 is the same as analyze's, byte for byte;",
                runs(&pipeline.replay_rates)
            )?,
            None => writeln!(
                out,
                "- the pipeline bench: not run (another build's agent);"
            )?,
        }
        writeln!(
            out,
            "- `dnstrace analyze` of the file, reading pcapng included: {:.0} (runs {}).",
            pipeline.median_analyze_rate(),
            runs(&pipeline.analyze_rates)
        )?;
    }
    if let Some(memory) = memory {
        writeln!(out, "\n{}", memory.describe())?;
    }
    writeln!(out, "\nTargets (issue 14):\n")?;
    let of = |config| summaries.iter().find(|(c, _)| *c == config).map(|(_, s)| s);
    let ratio = |config| of(config).map(|s| median(s.ratios.clone()));
    let mut target = |met: Option<bool>, text: String| {
        let verdict = match met {
            Some(true) => "PASS",
            Some(false) => "MISS",
            None => "n/a",
        };
        writeln!(out, "- {verdict} {text}")
    };
    let all = ratio(Config::TraceAll).unwrap_or(f64::NAN);
    let tcpdump = ratio(Config::Tcpdump).unwrap_or(f64::NAN);
    let pid = ratio(Config::TracePid).unwrap_or(f64::NAN);
    target(
        Some(all >= TRACE_ALL_RATIO),
        format!("tracing everything ≥ {TRACE_ALL_RATIO:.2}: {all:.2}"),
    )?;
    target(
        Some(all >= tcpdump + ABOVE_TCPDUMP),
        format!("tracing everything ≥ tcpdump + {ABOVE_TCPDUMP:.2}: {all:.2} against {tcpdump:.2}"),
    )?;
    target(
        Some(pid >= TRACE_PID_RATIO),
        format!("--pid ≥ {TRACE_PID_RATIO:.2}: {pid:.2}"),
    )?;
    let lost: Option<u64> = [Config::TraceAll, Config::TracePid]
        .into_iter()
        .map(|c| of(c).and_then(|s| s.lost))
        .sum();
    target(
        lost.map(|l| l == 0),
        format!(
            "0 messages lost: {}",
            lost.map_or("-".into(), |l| l.to_string())
        ),
    )?;
    let agent = of(Config::TraceAll).and_then(|s| s.agent_us_per_message);
    target(
        agent.map(|us| us <= AGENT_US_PER_MESSAGE),
        format!(
            "agent ≤ {AGENT_US_PER_MESSAGE} µs per message (tracing everything): {}",
            optional(agent, 3)
        ),
    )?;
    let kernel = of(Config::TraceAll).and_then(|s| s.kernel_us_per_run);
    target(
        kernel.map(|us| us <= KERNEL_US_PER_RUN),
        format!(
            "kernel programs ≤ {KERNEL_US_PER_RUN} µs per run (tracing everything): {}",
            optional(kernel, 3)
        ),
    )?;
    let rate = pipeline.and_then(Pipeline::median_replay_rate);
    target(
        rate.map(|r| r >= PIPELINE_MESSAGES_PER_SECOND),
        format!(
            "decode → correlate → JSON ≥ {PIPELINE_MESSAGES_PER_SECOND:.0} messages per second on one core (the pipeline bench): {}",
            rate.map_or("not measured".into(), |r| format!("{r:.0}"))
        ),
    )?;
    let rss = memory.map(|m| m.peak_mib());
    target(
        rss.map(|mib| mib <= RSS_MIB),
        format!(
            "RSS ≤ {RSS_MIB:.0} MiB with the queries outstanding (VmHWM): {}",
            rss.map_or("not measured".into(), |mib| format!("{mib:.1} MiB"))
        ),
    )?;
    Ok(out)
}

/// Per program, for each traced configuration: the median over rounds of
/// its time per run and of its runs per message.
fn programs_table(out: &mut String, runs: &[Run]) -> std::fmt::Result {
    let mut rows: Vec<(Config, &str)> = runs
        .iter()
        .filter_map(|r| Some((r.config, r.probes.as_ref()?)))
        .flat_map(|(config, window)| window.programs.keys().map(move |n| (config, n.as_str())))
        .collect();
    rows.sort();
    rows.dedup();
    if rows.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "\n| kernel program (middle third of each run) | configuration | µs/run | runs/msg |"
    )?;
    writeln!(out, "|---|---|---|---|")?;
    for (config, name) in rows {
        let windows: Vec<_> = runs
            .iter()
            .filter(|r| r.config == config)
            .filter_map(|r| r.probes.as_ref())
            .filter_map(|w| Some((w.programs.get(name)?, w.messages)))
            .collect();
        let per_run = median(
            windows
                .iter()
                .map(|(c, _)| c.run_time_ns as f64 / 1e3 / c.runs.max(1) as f64)
                .collect(),
        );
        let per_message = median(
            windows
                .iter()
                .map(|(c, messages)| c.runs as f64 / messages.max(1.0))
                .collect(),
        );
        writeln!(
            out,
            "| {name} | {} | {per_run:.3} | {per_message:.2} |",
            config.name()
        )?;
    }
    Ok(())
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[middle],
        _ => (values[middle - 1] + values[middle]) / 2.0,
    }
}

fn spread(values: &[f64]) -> (f64, f64) {
    let low = values.iter().copied().fold(f64::INFINITY, f64::min);
    let high = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (low, high)
}

/// When and where a run was made.
struct Machine {
    date: String,
    commit: String,
    cpu: String,
    cores: usize,
    kernel: String,
    command: String,
}

impl Machine {
    fn here() -> Self {
        let output = |command: &mut Command| {
            command
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default()
        };
        let git = |args: &[&str]| {
            output(
                Command::new("git")
                    .arg("-C")
                    .arg(command::workspace_root())
                    .args(args),
            )
        };
        let mut commit = git(&["rev-parse", "--short=12", "HEAD"]);
        if !git(&["status", "--porcelain", "--untracked-files=no"]).is_empty() {
            commit.push_str(" with uncommitted changes");
        }
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name")?.split_once(':'))
            .map_or("unknown CPU".into(), |(_, model)| model.trim().to_string());
        let cores = cpuinfo
            .lines()
            .filter(|line| line.starts_with("processor"))
            .count();
        let arguments: Vec<String> = std::env::args()
            .skip_while(|argument| argument != "bench")
            .collect();
        Self {
            date: output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M"])),
            commit,
            cpu,
            cores,
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            command: format!("cargo xtask {}", arguments.join(" ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(vec![0.9, 0.7, 0.8]), 0.8);
        assert!((median(vec![0.9, 0.7, 0.8, 1.0]) - 0.85).abs() < 1e-12);
        assert!(median(Vec::new()).is_nan());
    }
}
