//! `cargo xtask bench`: what tracing costs a busy DNS server, and what the
//! agent holds in memory with many queries outstanding. Not a test: it
//! reports against the targets and never fails on a number.
//!
//! knot and dnsperf run in a network namespace made for the run, talking
//! over its loopback. The configurations alternate within each round, each
//! round starting one configuration later, so that a shared, noisy
//! machine hurts them all alike; each run is compared to the untraced
//! baseline of the same round. See docs/benchmarks.md.

mod pipeline;
mod probes;
mod report;
mod rss;
mod setup;

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader, Write},
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Args;

pub use self::rss::{FloodOptions, flood};
use self::{
    probes::Counts,
    setup::{Namespace, loopback_packets},
};
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
    /// workspace.
    #[arg(long, value_name = "PATH")]
    agent: Option<PathBuf>,
    /// Also trace everything with this other dnstrace binary, as one more
    /// configuration in every round: two builds side by side in one run.
    #[arg(long, value_name = "PATH")]
    compare: Option<PathBuf>,
    /// Unanswered queries outstanding at once while the agent's memory is
    /// measured (0 skips that part).
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    outstanding: u32,
    /// Skip the pipeline's rate over a recorded trace.
    #[arg(long)]
    no_pipeline: bool,
    /// Append the report to docs/benchmarks.md, which keeps every run.
    #[arg(long)]
    record: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Config {
    Baseline,
    TraceAll,
    TracePid,
    Tcpdump,
    /// `--compare`'s binary, tracing everything.
    Compare,
}

impl Config {
    fn name(self) -> &'static str {
        match self {
            Self::Baseline => "no tracing",
            Self::TraceAll => "dnstrace, all, JSON to /dev/null",
            Self::TracePid => "dnstrace --pid <dnsperf>",
            Self::Tcpdump => "tcpdump -w",
            Self::Compare => "--compare build, all, JSON to /dev/null",
        }
    }
}

/// One dnsperf run under one configuration.
struct Run {
    config: Config,
    round: u32,
    qps: f64,
    queries: f64,
    /// CPU seconds knot, dnsperf and the tracer spent together (the probes'
    /// time is charged to knot and dnsperf, whose packets they run for).
    total_cpu_s: f64,
    tracer: Option<TracerRun>,
    probes: Option<ProbeWindow>,
}

/// What the tracing process itself spent.
struct TracerRun {
    /// utime + stime from the moment dnsperf started to the tracer's exit
    /// (which drains what it had not read yet), all threads.
    cpu_s: f64,
    /// DNS messages it handled: dnstrace's count, or for tcpdump the
    /// packets on the namespace's loopback.
    messages: f64,
    /// dnstrace's count of messages lost in the ring buffer.
    lost: Option<u64>,
}

/// The kernel programs over a window in the middle of the run.
struct ProbeWindow {
    /// By program name.
    programs: BTreeMap<String, Counts>,
    /// The tracer's messages that fell in the window (its count over the
    /// run, in the share of the run's packets the window saw).
    messages: f64,
}

impl ProbeWindow {
    fn total(&self) -> Counts {
        self.programs
            .values()
            .fold(Counts::default(), |sum, c| Counts {
                run_time_ns: sum.run_time_ns + c.run_time_ns,
                runs: sum.runs + c.runs,
            })
    }
}

/// What every run shares.
struct World {
    namespace: Namespace,
    knot: setup::Knot,
    queries: PathBuf,
    /// Last, so that knot has stopped before its files go.
    work: setup::WorkDir,
}

pub fn run(options: &Options) -> anyhow::Result<()> {
    let agent = match &options.agent {
        Some(agent) => agent.clone(),
        None => command::build_static_agent()?,
    };
    // The replay is of the workspace's code: beside another build's agent
    // it would measure something else.
    let replay = match (&options.agent, options.no_pipeline) {
        (None, false) => Some(command::build_static_bench("dnstrace", "pipeline")?),
        _ => None,
    };
    let namespace = Namespace::create()?;
    let work = setup::WorkDir::create()?;
    let knot = setup::start_knot(&namespace, &work.path)?;
    let queries = work.path.join("queries");
    fs::write(
        &queries,
        "www.bench.test A\nmail.bench.test A\nwww.bench.test AAAA\nnone.bench.test A\n",
    )?;
    let world = World {
        namespace,
        knot,
        queries,
        work,
    };

    let mut configs = vec![
        Config::Baseline,
        Config::TraceAll,
        Config::TracePid,
        Config::Tcpdump,
    ];
    if options.compare.is_some() {
        configs.push(Config::Compare);
    }
    let mut runs = Vec::new();
    for round in 0..options.rounds {
        for index in 0..configs.len() {
            let config = configs[(index + round as usize) % configs.len()];
            let binary = match config {
                Config::Compare => options.compare.as_deref(),
                _ => Some(agent.as_path()),
            };
            let run = measure(config, round, binary, &world, options.seconds)?;
            eprintln!("{}", report::progress_line(&run));
            runs.push(run);
        }
    }
    let memory = match options.outstanding {
        0 => None,
        outstanding => Some(rss::measure(&agent, &world.namespace, outstanding)?),
    };
    let pipeline = match options.no_pipeline {
        true => None,
        false => Some(pipeline::measure(&agent, replay.as_deref(), &world)?),
    };
    let text = report::markdown(&configs, &runs, memory.as_ref(), pipeline.as_ref(), options)?;
    println!("\n{text}");
    if options.record {
        let path = command::workspace_root().join("docs/benchmarks.md");
        let mut file = fs::OpenOptions::new().append(true).open(&path)?;
        write!(file, "\n{text}")?;
        eprintln!("appended to {}", path.display());
    }
    Ok(())
}

enum Tracing {
    None,
    Dnstrace(Tracer),
    Tcpdump(Child),
}

fn measure(
    config: Config,
    round: u32,
    agent: Option<&Path>,
    world: &World,
    seconds: u64,
) -> anyhow::Result<Run> {
    // dnsperf waits on its stdin until the tracer is attached, so that
    // `--pid` can name it and no run starts half traced.
    let mut perf = world
        .namespace
        .command("sh")
        .args([
            "-c",
            "read go && exec dnsperf -s 127.0.0.1 -p 53 -d \"$0\" -l \"$1\" -c 4 -q 200",
        ])
        .arg(&world.queries)
        .arg(seconds.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting dnsperf")?;
    let json_to_null = ["--format", "json", "-o", "/dev/null"];
    let perf_pid = perf.id().to_string();
    let agent = || agent.context("no dnstrace binary for this configuration");
    let tracing = match config {
        Config::Baseline => Tracing::None,
        Config::TraceAll | Config::Compare => {
            Tracing::Dnstrace(Tracer::start(agent()?, &json_to_null)?)
        }
        Config::TracePid => Tracing::Dnstrace(Tracer::start(
            agent()?,
            &[&json_to_null[..], &["--pid", &perf_pid]].concat(),
        )?),
        Config::Tcpdump => Tracing::Tcpdump(start_tcpdump(&world.namespace, &world.work.path)?),
    };
    let tracer_pid = match &tracing {
        Tracing::None => None,
        Tracing::Dnstrace(tracer) => Some(tracer.child.id()),
        Tracing::Tcpdump(child) => Some(child.id()),
    };
    let knot_pid = world.knot.pid();
    let tracer_before = tracer_pid.map(process_cpu_seconds).transpose()?;
    let knot_before = process_cpu_seconds(knot_pid)?;
    let children_before = children_cpu_seconds();
    let packets_before = loopback_packets(knot_pid)?;
    let started = Instant::now();
    writeln!(perf.stdin.take().context("dnsperf stdin")?, "go")?;

    let window = match &tracing {
        Tracing::Dnstrace(tracer) => Some(probe_window(tracer.child.id(), knot_pid, seconds)?),
        _ => None,
    };

    let output = perf.wait_with_output()?;
    let perf_cpu_s = children_cpu_seconds() - children_before;
    let knot_cpu_s = process_cpu_seconds(knot_pid)? - knot_before;
    let packets = loopback_packets(knot_pid)?.saturating_sub(packets_before) as f64;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let queries = field(&stdout, "Queries completed:").with_context(|| {
        format!(
            "dnsperf printed no result after {:?}:\n{stdout}",
            started.elapsed()
        )
    })?;
    let qps = field(&stdout, "Queries per second:").context("dnsperf printed no qps")?;

    let tracer = match tracing {
        Tracing::None => None,
        Tracing::Dnstrace(tracer) => {
            let (cpu_s, summary) = tracer.stop()?;
            Some(TracerRun {
                cpu_s: cpu_s - tracer_before.unwrap_or_default(),
                messages: summary.messages as f64,
                lost: Some(summary.lost),
            })
        }
        Tracing::Tcpdump(child) => {
            let (cpu_s, _) = interrupt(child)?;
            Some(TracerRun {
                cpu_s: cpu_s - tracer_before.unwrap_or_default(),
                messages: packets,
                lost: None,
            })
        }
    };
    let probes = window.map(|(programs, window_packets)| ProbeWindow {
        programs,
        messages: tracer.as_ref().map_or(0.0, |t| t.messages) * window_packets / packets.max(1.0),
    });
    Ok(Run {
        config,
        round,
        qps,
        queries,
        total_cpu_s: knot_cpu_s + perf_cpu_s + tracer.as_ref().map_or(0.0, |t| t.cpu_s),
        tracer,
        probes,
    })
}

/// Counts the tracer's programs over the middle third of the run, with
/// run-time statistics on only then; and the packets in that window.
fn probe_window(
    tracer_pid: u32,
    knot_pid: u32,
    seconds: u64,
) -> anyhow::Result<(BTreeMap<String, Counts>, f64)> {
    let third = Duration::from_secs(seconds) / 3;
    thread::sleep(third);
    let stats = probes::StatsEnabled::new()?;
    let before = probes::read(tracer_pid)?;
    let packets_before = loopback_packets(knot_pid)?;
    thread::sleep(third);
    let after = probes::read(tracer_pid)?;
    let packets = loopback_packets(knot_pid)?.saturating_sub(packets_before);
    drop(stats);
    let counts = probes::delta(&before, &after);
    let names = probes::names(counts.keys().copied());
    let mut by_name: BTreeMap<String, Counts> = BTreeMap::new();
    for (id, c) in counts {
        let name = names
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("prog {id}"));
        let sum = by_name.entry(name).or_default();
        sum.run_time_ns += c.run_time_ns;
        sum.runs += c.runs;
    }
    Ok((by_name, packets as f64))
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

/// dnstrace's closing counts.
struct TracerSummary {
    messages: u64,
    lost: u64,
    /// The whole line, for what else it counted.
    line: String,
}

impl Tracer {
    /// Starts dnstrace and waits until it says its programs are attached.
    fn start(agent: &Path, args: &[&str]) -> anyhow::Result<Self> {
        let mut child = Command::new(agent)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", agent.display()))?;
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
        Ok(Self {
            child,
            stderr: receiver,
        })
    }

    /// Stops dnstrace; its CPU seconds over its life, and its summary.
    fn stop(self) -> anyhow::Result<(f64, TracerSummary)> {
        let (cpu, status) = interrupt(self.child)?;
        if !status.success() {
            bail!("dnstrace exited with {status}");
        }
        let lines: Vec<String> = self.stderr.iter().collect();
        let summary = lines
            .iter()
            .find_map(|line| {
                let counts = line.strip_prefix("dnstrace: ")?;
                let (messages, rest) = counts.split_once(" messages seen, ")?;
                Some(TracerSummary {
                    messages: messages.trim().parse().ok()?,
                    lost: rest.split_whitespace().next()?.parse().ok()?,
                    line: counts.to_string(),
                })
            })
            .with_context(|| format!("dnstrace printed no summary: {lines:?}"))?;
        Ok((cpu, summary))
    }
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

/// Sends SIGINT and reaps the process; its CPU seconds over its whole life
/// (all threads, including what it did after the signal), and its status.
fn interrupt(child: Child) -> anyhow::Result<(f64, ExitStatus)> {
    let pid = i32::try_from(child.id())?;
    // SAFETY: signalling our own child, which has not been reaped yet.
    unsafe { libc::kill(pid, libc::SIGINT) };
    reap(child).context("waiting for the tracer")
}

/// Waits for `child`; its CPU seconds over its whole life (all threads)
/// and its status.
fn reap(child: Child) -> std::io::Result<(f64, ExitStatus)> {
    let pid = i32::try_from(child.id()).map_err(std::io::Error::other)?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it and the status.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, writing into locals we own; `child`
    // is not waited for again (dropping a Child does not wait).
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if reaped != pid {
        return Err(std::io::Error::last_os_error());
    }
    Ok((rusage_seconds(&usage), ExitStatus::from_raw(status)))
}

fn rusage_seconds(usage: &libc::rusage) -> f64 {
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
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
    // SAFETY: an all-zero rusage is valid; getrusage fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: writes into the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    rusage_seconds(&usage)
}
