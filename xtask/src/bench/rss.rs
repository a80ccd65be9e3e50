//! The agent's memory with many queries outstanding: processes in the
//! bench's namespace send queries nobody answers (to an address behind a
//! veth whose far end drops them), all within a few seconds, and the
//! agent's resident set is read while correlation holds them open, until
//! they time out.

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::Path,
    process::{Child, ChildStdout, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Args;

use super::{
    Tracer,
    setup::{BLACKHOLE, BLACKHOLE_SOURCES, BLACKHOLE_TIMEOUT_SECS, Namespace},
};

/// Queries per sending process: under correlation's cap of open lookups
/// per process (512), so that none is evicted early.
const QUERIES_PER_PROCESS: u32 = 400;
/// Queries per socket, each for its own name.
const QUERIES_PER_SOCKET: u32 = 4;
/// Correlation's process cap is 4096; more would measure evictions.
const MAX_PROCESSES: u32 = 4000;
/// How long the bench watches: an unanswered query times out after the
/// senders' resolver timeout and a second of slack, and is then reported;
/// the senders keep their sockets longer.
const WATCH: Duration = Duration::from_secs(BLACKHOLE_TIMEOUT_SECS + 5);
const HOLD_SECS: u64 = BLACKHOLE_TIMEOUT_SECS + 15;
/// Each process sends its queries evenly over this long (all of them
/// together 20,000 a second for the default 100,000): well within the
/// timeout, so that all are outstanding at once, and at a rate the agent
/// keeps up with. Sent in one burst, the queries and the kernel's drop
/// records for them overran the ring buffer, and most were never held.
const SPREAD: Duration = Duration::from_secs(5);

/// `cargo xtask bench-flood`, run by the bench inside its namespace: one
/// process's share of the outstanding queries.
#[derive(Args)]
pub struct FloodOptions {
    /// Queries to send.
    #[arg(long)]
    queries: u32,
    /// Number of this process, to make its names distinct.
    #[arg(long)]
    process: u32,
}

/// Opens the sockets and sends its first query, so that the agent learns
/// the process (its resolver's timeout) before the rest; says `ready`,
/// waits for a line on stdin, sends the rest over `SPREAD`, says `sent N`,
/// and keeps the sockets open for `HOLD_SECS`.
pub fn flood(options: &FloodOptions) -> anyhow::Result<()> {
    let sockets = options.queries.div_ceil(QUERIES_PER_SOCKET);
    let sockets: Vec<UdpSocket> = (0..sockets)
        .map(|n| {
            let source: Ipv4Addr = BLACKHOLE_SOURCES[n as usize % BLACKHOLE_SOURCES.len()]
                .parse()
                .expect("a literal address");
            UdpSocket::bind((source, 0))
        })
        .collect::<Result<_, _>>()
        .context("opening sockets")?;
    let to: SocketAddr = (BLACKHOLE.parse::<Ipv4Addr>()?, 53).into();
    let mut sent = 0;
    let mut send = |query: u32| {
        let socket = &sockets[(query / QUERIES_PER_SOCKET) as usize];
        let name = format!("q{query}.p{}.rss.bench.test", options.process);
        // Each send is one packet; a full queue is a query not sent.
        if socket
            .send_to(&query_bytes(query as u16, &name), to)
            .is_ok()
        {
            sent += 1;
        }
    };
    send(0);
    let mut stdout = std::io::stdout();
    writeln!(stdout, "ready")?;
    stdout.flush()?;
    let mut go = String::new();
    std::io::stdin().read_line(&mut go)?;
    let pause = SPREAD / options.queries.max(1);
    for query in 1..options.queries {
        thread::sleep(pause);
        send(query);
    }
    writeln!(stdout, "sent {sent}")?;
    stdout.flush()?;
    thread::sleep(Duration::from_secs(HOLD_SECS));
    Ok(())
}

/// A query for `name`'s A record, recursion desired.
fn query_bytes(id: u16, name: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(12 + name.len() + 6);
    bytes.extend_from_slice(&id.to_be_bytes());
    bytes.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        bytes.push(label.len() as u8);
        bytes.extend_from_slice(label.as_bytes());
    }
    bytes.extend_from_slice(&[0, 0, 1, 0, 1]);
    bytes
}

/// What the memory run saw.
pub struct Memory {
    outstanding: u32,
    sent: u64,
    processes: u32,
    /// The most lookups the agent said were open at once.
    peak_pending: Option<u64>,
    /// VmRSS when that was read, KiB.
    rss_at_peak_kib: u64,
    /// Pss then, KiB: the same pages, each counted once however often
    /// the agent maps it, and a page shared with other processes in part.
    pss_at_peak_kib: u64,
    /// Before the queries, KiB.
    idle_kib: u64,
    /// VmHWM at the end of the watch (the queries timed out and reported
    /// meanwhile), KiB.
    hwm_kib: u64,
    summary: String,
}

impl Memory {
    pub fn peak_mib(&self) -> f64 {
        self.hwm_kib as f64 / 1024.0
    }

    pub fn describe(&self) -> String {
        let mut text = format!(
            "Memory: {} unanswered queries ({} sent, from {} processes, {} per socket) \
             toward a blackhole in the namespace, tracing everything with JSON to /dev/null \
             and metrics on: ",
            self.outstanding, self.sent, self.processes, QUERIES_PER_SOCKET
        );
        let mib = |kib: u64| kib as f64 / 1024.0;
        let _ = write!(
            text,
            "VmRSS {:.1} MiB before, {:.1} MiB with {} lookups open \
             (dnstrace_lookups_pending at its most; VmRSS the most while 95 % of those were \
             open; Pss then {:.1} MiB), \
             VmHWM {:.1} MiB once they had timed out ({} s) and been reported. Agent: {}.",
            mib(self.idle_kib),
            mib(self.rss_at_peak_kib),
            self.peak_pending
                .map_or("an unknown number of".into(), |p| p.to_string()),
            mib(self.pss_at_peak_kib),
            mib(self.hwm_kib),
            BLACKHOLE_TIMEOUT_SECS + 1,
            self.summary
        );
        text
    }
}

pub fn measure(agent: &Path, namespace: &Namespace, outstanding: u32) -> anyhow::Result<Memory> {
    let processes = outstanding.div_ceil(QUERIES_PER_PROCESS);
    if processes > MAX_PROCESSES {
        bail!(
            "--outstanding {outstanding} needs more than {MAX_PROCESSES} processes of \
             {QUERIES_PER_PROCESS} queries"
        );
    }
    namespace.add_blackhole()?;
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.local_addr()?.port()
    };
    let listen = format!("127.0.0.1:{port}");
    let tracer = Tracer::start(
        agent,
        &["--format", "json", "-o", "/dev/null", "--metrics", &listen],
    )?;
    let pid = tracer.child.id();
    thread::sleep(Duration::from_secs(1));
    let idle_kib = status_kib(pid, "VmRSS:")?;

    let mut senders = Senders::default();
    let result = flood_and_watch(
        namespace,
        outstanding,
        processes,
        pid,
        &listen,
        &mut senders,
    );
    senders.stop();
    let (sent, peak_pending, (rss_at_peak_kib, pss_at_peak_kib)) = result?;
    let hwm_kib = status_kib(pid, "VmHWM:")?;
    let (_, summary) = tracer.stop()?;
    Ok(Memory {
        outstanding,
        sent,
        processes,
        peak_pending,
        rss_at_peak_kib,
        pss_at_peak_kib,
        idle_kib,
        hwm_kib,
        summary: summary.line,
    })
}

/// The sending processes, killed when the watch ends.
#[derive(Default)]
struct Senders(Vec<Child>);

impl Senders {
    fn stop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts the senders, lets them send at once, then reads the agent's
/// open lookups and resident set until `WATCH` has passed. Returns the
/// queries sent, the most lookups seen open, and VmRSS and Pss then.
fn flood_and_watch(
    namespace: &Namespace,
    outstanding: u32,
    processes: u32,
    agent_pid: u32,
    metrics: &str,
    senders: &mut Senders,
) -> anyhow::Result<(u64, Option<u64>, (u64, u64))> {
    let exe = std::env::current_exe()?;
    let mut outputs: Vec<BufReader<ChildStdout>> = Vec::new();
    let mut left = outstanding;
    for process in 0..processes {
        let queries = left.min(QUERIES_PER_PROCESS);
        left -= queries;
        let mut child = namespace
            .command(&exe.to_string_lossy())
            .args(["bench-flood", "--queries", &queries.to_string()])
            .args(["--process", &process.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting a sender")?;
        outputs.push(BufReader::new(
            child.stdout.take().context("sender stdout")?,
        ));
        senders.0.push(child);
    }
    let mut line = String::new();
    for output in &mut outputs {
        line.clear();
        output.read_line(&mut line)?;
        if line.trim() != "ready" {
            bail!("a sender did not start: {line:?}");
        }
    }
    // Time for the agent to read each sender's resolver settings.
    thread::sleep(Duration::from_secs(3));
    for child in &mut senders.0 {
        writeln!(child.stdin.as_mut().context("sender stdin")?, "go")?;
    }
    let mut sent = 0;
    for output in &mut outputs {
        line.clear();
        output.read_line(&mut line)?;
        let count = line.trim().strip_prefix("sent ");
        sent += count.and_then(|c| c.parse::<u64>().ok()).unwrap_or(0);
    }

    let started = Instant::now();
    let mut samples: Vec<(Option<u64>, (u64, u64))> = Vec::new();
    while started.elapsed() < WATCH {
        thread::sleep(Duration::from_millis(250));
        // The count is from the agent's last tick; the resident set lags
        // the allocations a little, so both are taken over all samples.
        let pending = pending_lookups(metrics);
        let rss = status_kib(agent_pid, "VmRSS:")?;
        let pss = pss_kib(agent_pid)?;
        eprintln!(
            "memory: {:>5.2} s after the queries, VmRSS {:.1} MiB, lookups open {}",
            started.elapsed().as_secs_f64(),
            rss as f64 / 1024.0,
            pending.map_or("?".into(), |p| p.to_string())
        );
        samples.push((pending, (rss, pss)));
    }
    let peak = samples.iter().filter_map(|(pending, _)| *pending).max();
    // The most resident while nearly all of those were open.
    let sizes_at_peak = samples
        .iter()
        .filter(|(pending, _)| pending.zip(peak).is_some_and(|(p, max)| p * 20 >= max * 19))
        .map(|(_, sizes)| *sizes)
        .max()
        .unwrap_or_default();
    Ok((sent, peak, sizes_at_peak))
}

/// A `kB` field of /proc/PID/status.
fn status_kib(pid: u32, key: &str) -> anyhow::Result<u64> {
    proc_kib(pid, "status", key)
}

/// Pss from /proc/PID/smaps_rollup.
fn pss_kib(pid: u32) -> anyhow::Result<u64> {
    proc_kib(pid, "smaps_rollup", "Pss:")
}

/// The `key: N kB` field of /proc/PID/`file`.
fn proc_kib(pid: u32, file: &str, key: &str) -> anyhow::Result<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/{file}"))?;
    text.lines()
        .find_map(|line| {
            line.strip_prefix(key)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .with_context(|| format!("no {key} in /proc/{pid}/{file}"))
}

/// `dnstrace_lookups_pending` from the agent's metrics endpoint.
fn pending_lookups(address: &str) -> Option<u64> {
    let mut stream = TcpStream::connect(address).ok()?;
    // A busy agent answers late.
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    text.lines().find_map(|line| {
        let value = line.strip_prefix("dnstrace_lookups_pending ")?;
        value.trim().parse::<f64>().ok().map(|v| v as u64)
    })
}
