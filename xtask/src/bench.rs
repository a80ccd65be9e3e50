//! `cargo xtask bench`: what tracing costs a busy DNS server.
//!
//! knot and dnsperf run in a network namespace made for the run, talking
//! over its loopback. The configurations alternate within one sequence and
//! repeat, so that a shared, noisy machine hurts them all alike; the report
//! compares each to the untraced baseline of the same round.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::command;

#[derive(Args)]
pub struct Options {
    /// Seconds per dnsperf run.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// How many times the whole sequence of configurations repeats.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Benchmark this dnstrace binary instead of a release build of the
    /// workspace, to compare two builds.
    #[arg(long, value_name = "PATH")]
    agent: Option<PathBuf>,
    /// Also measure the kernel programs' time per run (kernel.bpf_stats_enabled,
    /// which itself adds two clock reads to every run, so the ratios suffer a
    /// little).
    #[arg(long)]
    probe_stats: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Config {
    Baseline,
    TraceAll,
    TracePid,
    Tcpdump,
}

impl Config {
    const ALL: [Self; 4] = [
        Self::Baseline,
        Self::TraceAll,
        Self::TracePid,
        Self::Tcpdump,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Baseline => "no tracing",
            Self::TraceAll => "dnstrace, all, JSON to /dev/null",
            Self::TracePid => "dnstrace --pid <dnsperf>",
            Self::Tcpdump => "tcpdump -w",
        }
    }
}

enum Tracing {
    None,
    Dnstrace(Tracer),
    Tcpdump(Child),
}

struct Measurement {
    config: Config,
    qps: f64,
    queries: f64,
    /// CPU seconds knot, dnsperf and the tracer spent together. (The
    /// machine's own counters include other tenants of a shared host.)
    total_cpu_s: f64,
    /// CPU seconds the tracer itself spent.
    tracer_cpu_s: f64,
    lost: Option<u64>,
    /// The probes' total run time and run count (`--probe-stats`).
    probes: Option<ProbeStats>,
}

#[derive(Clone, Copy, Default)]
struct ProbeStats {
    run_time_ns: u64,
    runs: u64,
    /// The drop program's part of those (`skb:kfree_skb`, the only
    /// tracing program): what watching drops costs when nothing DNS is
    /// dropped, since it runs for every packet the host drops.
    drop_time_ns: u64,
    drop_runs: u64,
}

/// `BPF_PROG_TYPE_TRACING`, the drop program's type in fdinfo.
const PROG_TYPE_TRACING: u64 = 26;

pub fn run(options: &Options) -> anyhow::Result<()> {
    let agent = match &options.agent {
        Some(agent) => agent.clone(),
        None => command::build_release_agent()?,
    };
    let _stats = options.probe_stats.then(BpfStats::enable).transpose()?;
    let namespace = Namespace::create()?;
    let work = tempdir()?;
    let knot = start_knot(&namespace, &work)?;
    let queries = work.join("queries");
    fs::write(
        &queries,
        "www.bench.test A\nmail.bench.test A\nwww.bench.test AAAA\nnone.bench.test A\n",
    )?;

    let mut results = Vec::new();
    for round in 1..=options.rounds {
        for config in Config::ALL {
            let m = measure(
                config,
                &agent,
                &namespace,
                &queries,
                &work,
                options,
                knot.0.id(),
            )?;
            eprintln!(
                "round {round}: {:<34} {:>9.0} qps  lost {}{}",
                config.name(),
                m.qps,
                m.lost.map_or("-".into(), |l| l.to_string()),
                m.probes.map_or(String::new(), |p| format!(
                    "  probes {:.0} ns/run",
                    p.run_time_ns as f64 / p.runs.max(1) as f64
                ))
            );
            results.push(m);
        }
    }
    report(&results, options);
    Ok(())
}

fn measure(
    config: Config,
    agent: &Path,
    namespace: &Namespace,
    queries: &Path,
    work: &Path,
    options: &Options,
    knot_pid: u32,
) -> anyhow::Result<Measurement> {
    let seconds = options.seconds;
    // dnsperf waits on its stdin until the tracer is attached, so that
    // `--pid` can name it and no run starts half traced.
    let mut perf = namespace
        .command("sh")
        .args([
            "-c",
            "read go && exec dnsperf -s 127.0.0.1 -p 53 -d \"$0\" -l \"$1\" -c 4 -q 200",
        ])
        .arg(queries)
        .arg(seconds.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting dnsperf")?;
    let json_to_null = ["--format", "json", "-o", "/dev/null"];
    let perf_pid = perf.id().to_string();
    let tracer = match config {
        Config::Baseline => Tracing::None,
        Config::TraceAll => Tracing::Dnstrace(start_tracer(agent, &json_to_null)?),
        Config::TracePid => Tracing::Dnstrace(start_tracer(
            agent,
            &[&json_to_null[..], &["--pid", &perf_pid]].concat(),
        )?),
        Config::Tcpdump => Tracing::Tcpdump(start_tcpdump(namespace, work)?),
    };
    let knot_before = process_cpu_seconds(knot_pid)?;
    let children_before = children_cpu_seconds();
    let started = Instant::now();
    writeln!(perf.stdin.take().context("dnsperf stdin")?, "go")?;
    let output = perf.wait_with_output()?;
    let perf_cpu_s = children_cpu_seconds() - children_before;
    let knot_cpu_s = process_cpu_seconds(knot_pid)? - knot_before;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let queries_done = field(&stdout, "Queries completed:").with_context(|| {
        format!(
            "dnsperf printed no result after {:?}:\n{stdout}",
            started.elapsed()
        )
    })?;
    let qps = field(&stdout, "Queries per second:").context("dnsperf printed no qps")?;

    let (tracer_cpu_s, lost, probes) = match tracer {
        Tracing::None => (0.0, None, None),
        Tracing::Dnstrace(tracer) => {
            let probes = options
                .probe_stats
                .then(|| probe_stats(tracer.child.id()))
                .flatten();
            let (cpu, lost) = stop_tracer(tracer)?;
            (cpu, Some(lost), probes)
        }
        Tracing::Tcpdump(child) => (interrupt(child)?.0, None, None),
    };
    Ok(Measurement {
        config,
        qps,
        queries: queries_done,
        total_cpu_s: knot_cpu_s + perf_cpu_s + tracer_cpu_s,
        tracer_cpu_s,
        lost,
        probes,
    })
}

fn report(results: &[Measurement], options: &Options) {
    println!(
        "\n{} s per run, {} rounds, configurations alternated; ratio = qps / same round's baseline\n",
        options.seconds, options.rounds
    );
    let (probe_columns, probe_rule) = if options.probe_stats {
        (
            " probe ns/run | probe CPU µs/query | drop program runs | drop program CPU µs/query |",
            "---|---|---|---|",
        )
    } else {
        ("", "")
    };
    println!(
        "| configuration | qps (median) | ratio to baseline (median) | CPU µs/query (knot + dnsperf + tracer) | tracer CPU µs/query | events lost |{probe_columns}"
    );
    println!("|---|---|---|---|---|---|{probe_rule}");
    let baselines: Vec<&Measurement> = results
        .iter()
        .filter(|m| m.config == Config::Baseline)
        .collect();
    for config in Config::ALL {
        let runs: Vec<&Measurement> = results.iter().filter(|m| m.config == config).collect();
        let ratios: Vec<f64> = runs
            .iter()
            .zip(&baselines)
            .map(|(m, b)| m.qps / b.qps)
            .collect();
        let qps = median(runs.iter().map(|m| m.qps).collect());
        let total = median(
            runs.iter()
                .map(|m| m.total_cpu_s / m.queries * 1e6)
                .collect(),
        );
        let tracer = median(
            runs.iter()
                .map(|m| m.tracer_cpu_s / m.queries * 1e6)
                .collect(),
        );
        let lost = match config {
            Config::TraceAll | Config::TracePid => {
                runs.iter().filter_map(|m| m.lost).sum::<u64>().to_string()
            }
            _ => "-".into(),
        };
        let probes = if !options.probe_stats {
            String::new()
        } else if runs.iter().any(|m| m.probes.is_some()) {
            let per_run = median(
                runs.iter()
                    .filter_map(|m| m.probes)
                    .map(|p| p.run_time_ns as f64 / p.runs.max(1) as f64)
                    .collect(),
            );
            let per_query = median(
                runs.iter()
                    .filter_map(|m| Some(m.probes?.run_time_ns as f64 / 1e3 / m.queries))
                    .collect(),
            );
            let drop_runs = median(
                runs.iter()
                    .filter_map(|m| m.probes)
                    .map(|p| p.drop_runs as f64)
                    .collect(),
            );
            let drop_per_query = median(
                runs.iter()
                    .filter_map(|m| Some(m.probes?.drop_time_ns as f64 / 1e3 / m.queries))
                    .collect(),
            );
            format!(" {per_run:.0} | {per_query:.2} | {drop_runs:.0} | {drop_per_query:.3} |")
        } else {
            " - | - | - | - |".into()
        };
        println!(
            "| {} | {qps:.0} | {:.2} | {total:.1} | {tracer:.1} | {lost} |{probes}",
            config.name(),
            median(ratios)
        );
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn field(text: &str, label: &str) -> Option<f64> {
    let rest = text
        .lines()
        .find_map(|line| line.trim().strip_prefix(label))?;
    rest.split_whitespace().next()?.parse().ok()
}

/// A running dnstrace, with its stderr read on a thread: the summary line
/// comes at exit, and the pipe must not fill meanwhile.
struct Tracer {
    child: Child,
    stderr: mpsc::Receiver<String>,
}

/// Starts dnstrace and waits until it says its programs are attached.
fn start_tracer(agent: &Path, args: &[&str]) -> anyhow::Result<Tracer> {
    let mut child = Command::new(agent)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting dnstrace")?;
    let stderr = child.stderr.take().context("dnstrace stderr")?;
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = sender.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match receiver.recv_timeout(left) {
            Ok(line) if line.starts_with("dnstrace: attached") => break,
            Ok(_) => {}
            Err(_) => bail!("dnstrace did not attach within 30 s"),
        }
    }
    Ok(Tracer {
        child,
        stderr: receiver,
    })
}

fn start_tcpdump(namespace: &Namespace, work: &Path) -> anyhow::Result<Child> {
    let mut child = namespace
        .command("tcpdump")
        .args(["-i", "lo", "-w"])
        .arg(work.join("bench.pcap"))
        .args(["-U", "udp port 53"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting tcpdump")?;
    // tcpdump says "listening on lo" once its socket is open.
    let stderr = child.stderr.take().context("tcpdump stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    match lines.next() {
        Some(Ok(line)) if line.contains("listening on") => {}
        other => bail!("tcpdump did not start: {other:?}"),
    }
    thread::spawn(move || lines.for_each(drop));
    Ok(child)
}

/// Sends SIGINT; returns the process's CPU seconds and the exited child.
fn interrupt(mut child: Child) -> anyhow::Result<(f64, std::process::ExitStatus)> {
    let cpu = process_cpu_seconds(child.id())?;
    // SAFETY: signalling our own child, which has not been reaped yet.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    Ok((cpu, child.wait()?))
}

/// The run time and count of the programs a process holds, from the
/// fdinfo of its BPF program descriptors (counted while bpf_stats is on).
fn probe_stats(pid: u32) -> Option<ProbeStats> {
    let mut stats = ProbeStats::default();
    for entry in fs::read_dir(format!("/proc/{pid}/fdinfo")).ok()?.flatten() {
        let Ok(info) = fs::read_to_string(entry.path()) else {
            continue;
        };
        let value = |key: &str| {
            info.lines()
                .find_map(|line| line.strip_prefix(key)?.trim().parse::<u64>().ok())
        };
        if let (Some(time), Some(runs)) = (value("run_time_ns:"), value("run_cnt:")) {
            stats.run_time_ns += time;
            stats.runs += runs;
            if value("prog_type:") == Some(PROG_TYPE_TRACING) {
                stats.drop_time_ns += time;
                stats.drop_runs += runs;
            }
        }
    }
    Some(stats)
}

/// Turns kernel.bpf_stats_enabled on, and back to what it was on drop.
struct BpfStats {
    before: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn enable() -> anyhow::Result<Self> {
        let before = fs::read_to_string(BPF_STATS).context("reading bpf_stats_enabled")?;
        fs::write(BPF_STATS, "1").context("enabling bpf_stats")?;
        Ok(Self { before })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = fs::write(BPF_STATS, self.before.trim());
    }
}

/// Stops dnstrace; its CPU time and the lost count from its summary line.
fn stop_tracer(tracer: Tracer) -> anyhow::Result<(f64, u64)> {
    let (cpu, status) = interrupt(tracer.child)?;
    if !status.success() {
        bail!("dnstrace exited with {status}");
    }
    let lines: Vec<String> = tracer.stderr.iter().collect();
    let lost = lines
        .iter()
        .find_map(|line| {
            let counts = line.strip_prefix("dnstrace: ")?;
            let (_, rest) = counts.split_once(" messages seen, ")?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .with_context(|| format!("dnstrace printed no summary: {lines:?}"))?;
    Ok((cpu, lost))
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// utime + stime of a process, from /proc/PID/stat.
fn process_cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_comm = stat.rsplit_once(')').context("bad /proc stat")?.1;
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let utime: f64 = fields.get(11).context("utime")?.parse()?;
    let stime: f64 = fields.get(12).context("stime")?.parse()?;
    Ok((utime + stime) / clock_ticks())
}

/// CPU seconds of all children waited for so far.
fn children_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// A network namespace for the run, deleted on drop.
struct Namespace {
    name: String,
}

impl Namespace {
    fn create() -> anyhow::Result<Self> {
        let name = format!("dnstrace-bench-{}", std::process::id());
        command::run(Command::new("ip").args(["netns", "add", &name]))?;
        let namespace = Self { name };
        command::run(namespace.command("ip").args(["link", "set", "lo", "up"]))?;
        Ok(namespace)
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

struct Knot(Child);

impl Drop for Knot {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_knot(namespace: &Namespace, work: &Path) -> anyhow::Result<Knot> {
    let dir = work.display();
    fs::write(
        work.join("bench.test.zone"),
        "$ORIGIN bench.test.\n$TTL 300\n\
         @ SOA ns hostmaster 1 3600 600 86400 300\n@ NS ns\nns A 127.0.0.1\n\
         www A 192.0.2.1\nwww AAAA 2001:db8::1\nmail A 192.0.2.2\n",
    )?;
    fs::write(
        work.join("knot.conf"),
        format!(
            "server:\n  listen: 127.0.0.1@53\n  rundir: {dir}\n  udp-workers: 1\n  tcp-workers: 1\n  background-workers: 1\n\
             database:\n  storage: {dir}/db\n\
             log:\n  - target: stderr\n    any: error\n\
             template:\n  - id: default\n    storage: {dir}\n\
             zone:\n  - domain: bench.test\n    file: bench.test.zone\n"
        ),
    )?;
    let child = namespace
        .command("knotd")
        .arg("-c")
        .arg(work.join("knot.conf"))
        .stdout(Stdio::null())
        .spawn()
        .context("starting knotd")?;
    let knot = Knot(child);
    // Ready once it answers.
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let answer = namespace
            .command("dig")
            .args([
                "@127.0.0.1",
                "www.bench.test",
                "+short",
                "+tries=1",
                "+time=1",
            ])
            .output()?;
        if String::from_utf8_lossy(&answer.stdout).contains("192.0.2.1") {
            return Ok(knot);
        }
        thread::sleep(Duration::from_millis(200));
    }
    bail!("knotd did not answer within 20 s")
}

fn tempdir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("dnstrace-bench-{}", std::process::id()));
    fs::create_dir_all(dir.join("db"))?;
    Ok(dir)
}
