//! The guest of `cargo xtask vm` (docs/vm.md): /init of the initramfs,
//! built static. Its arguments are the plan, one `BACKEND=captures`
//! or `BACKEND=refused:REASON` per backend in `--backend auto`'s order.
//!
//! As /init it mounts what dnstrace needs, loads the sock_diag modules,
//! brings lo up and starts a DNS server. Then for each backend it runs
//! dnstrace while a second server starts and the client queries both, and
//! checks the JSON. One verdict line per backend (and for `auto`) goes to
//! the serial console; then it powers the VM off. The same binary is also
//! a server (`/init serve`) and the client (`/init client`), so that each
//! is a process of its own.

mod check;
mod dns;
#[path = "../../vm/protocol.rs"]
mod protocol;
mod system;
mod tracer;

use std::{
    env, fs,
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};

use crate::{
    check::Pids,
    dns::Server,
    protocol::{AUTO, DONE, Expect, Step, Verdict},
    tracer::{Start, Tracer},
};

/// How long the client may take for all its queries.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
/// How many problems one verdict line lists (the log shows them all).
const PROBLEMS_SHOWN: usize = 4;

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let role = match args.first().map(String::as_str) {
        Some(dns::SERVE) => dns::serve(&args[1..]),
        Some(dns::CLIENT) => dns::client(),
        _ => init(&args),
    };
    match role {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("vm-guest: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// As pid 1: run the plan, then power off whatever happened.
fn init(args: &[String]) -> anyhow::Result<()> {
    system::prepare()?;
    if let Err(error) = run_plan(args) {
        // The host sees no DONE line and fails with the log's tail.
        println!("DNSTRACE-VM-ERROR {error:#}");
    }
    system::power_off()
}

fn run_plan(args: &[String]) -> anyhow::Result<()> {
    println!("DNSTRACE-VM-KERNEL {}", system::kernel());
    let plan = args
        .iter()
        .map(|arg| arg.parse())
        .collect::<Result<Vec<Step>, String>>()
        .map_err(|error| anyhow!("bad plan: {error}"))?;
    if plan.is_empty() {
        bail!("no plan: the kernel command line must end with -- BACKEND=EXPECT...");
    }
    let early = Server::start(&dns::EARLY)?;
    for step in &plan {
        let started = Instant::now();
        let result = match &step.expect {
            Expect::Captures => captures(&step.backend, early.pid()),
            Expect::Refused(reason) => refused(&step.backend, reason),
        };
        report(&step.backend, result, started);
    }
    let started = Instant::now();
    report(AUTO, auto(&plan, early.pid()), started);
    println!("{DONE}");
    Ok(())
}

fn report(backend: &str, result: Result<String, String>, started: Instant) {
    let seconds = started.elapsed().as_secs_f64();
    let (pass, detail) = match result {
        Ok(detail) => (true, format!("{detail} ({seconds:.1} s)")),
        Err(detail) => (false, detail),
    };
    let verdict = Verdict {
        backend: backend.to_owned(),
        pass,
        detail,
    };
    println!("{verdict}");
}

/// The backend attaches, and the trace holds exactly the client's exchanges.
fn captures(backend: &str, early: u32) -> Result<String, String> {
    let run = trace(backend, early)?;
    if run.active != backend {
        return Err(format!("asked for {backend}, dnstrace ran {}", run.active));
    }
    let drops = drops_line(&run)?;
    let dropped = if drops.starts_with("kernel drops of DNS packets watched") {
        dropped_query(backend)?
    } else {
        "no drop expected".to_owned()
    };
    Ok(format!(
        "{} messages checked, lost 0; {}; {drops}; {dropped}",
        run.messages,
        reads_line(&run)?,
    ))
}

/// Where drops are watched, a query sent where nothing listens is reported
/// as a `drop` record with the kernel's reason `NO_SOCKET` and its name.
fn dropped_query(backend: &str) -> Result<String, String> {
    let mut tracer = Tracer::start(backend).map_err(|e| format!("{e:#}"))?;
    if let Start::Exited(status) = tracer.attach().map_err(|e| format!("{e:#}"))? {
        return Err(format!("dnstrace could not start again ({status})"));
    }
    let sent = dns::send_unheard();
    let stopped = tracer.stop();
    sent.map_err(|e| format!("{e:#}"))?;
    let status = stopped.map_err(|e| format!("{e:#}"))?;
    if !status.success() {
        return Err(format!("dnstrace exited with {status} after SIGINT"));
    }
    let jsonl = fs::read_to_string(&tracer.output)
        .map_err(|e| format!("reading {}: {e}", tracer.output.display()))?;
    let drop = jsonl
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|object| object["kind"] == "drop" && object["qname"] == dns::UNHEARD.qname)
        .ok_or_else(|| format!("no drop record for {}", dns::UNHEARD.qname))?;
    if drop["reason"] != "NO_SOCKET" || drop["id"] != dns::UNHEARD.id {
        return Err(format!(
            "the drop record is not NO_SOCKET's of the query: {drop}"
        ));
    }
    Ok(format!(
        "a query where nothing listens dropped: {} at {}",
        drop["reason"], drop["location"]
    ))
}

/// What dnstrace said of watching the kernel's drops, which must match
/// the kernel: `skb:kfree_skb` carries the drop reason since Linux 5.17, so
/// Debian's 6.1 has it, and the drop program must load and attach there
/// with offsets read from that kernel's BTF.
fn drops_line(run: &Run) -> Result<&str, String> {
    let line = run
        .stderr
        .iter()
        .filter_map(|line| line.strip_prefix("dnstrace: "))
        .find(|line| line.starts_with("kernel drops of DNS packets "))
        .ok_or("no start-up line says whether drops are watched")?;
    let kernel = system::kernel();
    let watched = line.starts_with("kernel drops of DNS packets watched");
    if watched != (kernel_version() >= vec![5, 17]) {
        return Err(format!("on kernel {kernel}, dnstrace says: {line}"));
    }
    Ok(line)
}

/// The running kernel's major and minor version.
fn kernel_version() -> Vec<u32> {
    system::kernel()
        .split(|c: char| !c.is_ascii_digit())
        .take(2)
        .map(|part| part.parse().unwrap_or(0))
        .collect()
}

/// What dnstrace said of tracking reads, which must match the kernel: the
/// `sock_recv_length` tracepoint came with Linux 6.3, so Debian's 6.1
/// cannot track them.
fn reads_line(run: &Run) -> Result<&str, String> {
    let line = run
        .stderr
        .iter()
        .filter_map(|line| line.strip_prefix("dnstrace: "))
        .find(|line| line.starts_with("reads of responses "))
        .ok_or("no start-up line says whether reads are tracked")?;
    let kernel = system::kernel();
    let has_tracepoint = kernel_version() >= vec![6, 3];
    let tracked = line.starts_with("reads of responses tracked");
    if tracked != has_tracepoint || !line.contains("sock_recv_length") {
        return Err(format!("on kernel {kernel}, dnstrace says: {line}"));
    }
    Ok(line)
}

/// dnstrace exits with status 2 and says the kernel refused the backend,
/// with a reason that contains `because`.
fn refused(backend: &str, because: &str) -> Result<String, String> {
    let mut tracer = Tracer::start(backend).map_err(|e| format!("{e:#}"))?;
    match tracer.attach().map_err(|e| format!("{e:#}"))? {
        Start::Attached(active) => {
            tracer.kill();
            Err(format!(
                "attached with {active}, but this kernel should refuse {backend}"
            ))
        }
        Start::Exited(status) => {
            let last = tracer.stderr.last().cloned().unwrap_or_default();
            if status.code() != Some(2) || !last.contains("the kernel refused") {
                Err(format!("expected a refusal, got {status}: {last}"))
            } else if !last.contains(because) {
                Err(format!("refused, but the reason lacks {because:?}: {last}"))
            } else {
                Ok(format!("refused: {last}"))
            }
        }
    }
}

/// `--backend auto` picks the first backend the plan expects to capture,
/// names each refused one before it with the expected reason, and captures.
fn auto(plan: &[Step], early: u32) -> Result<String, String> {
    let pick = plan
        .iter()
        .position(|step| step.expect == Expect::Captures)
        .ok_or("the plan has no backend that captures")?;
    let run = trace(AUTO, early)?;
    if run.active != plan[pick].backend {
        return Err(format!(
            "picked {}, expected {}",
            run.active, plan[pick].backend
        ));
    }
    let mut passed_over = Vec::new();
    for step in &plan[..pick] {
        let prefix = format!("dnstrace: backend {} passed over: ", step.backend);
        let reason = run
            .stderr
            .iter()
            .find_map(|line| line.strip_prefix(&prefix))
            .ok_or_else(|| format!("no \"passed over\" line for {}", step.backend))?;
        if let Expect::Refused(because) = &step.expect
            && !reason.contains(because.as_str())
        {
            return Err(format!(
                "passed over {}, but the reason lacks {because:?}: {reason}",
                step.backend
            ));
        }
        passed_over.push(format!("{}: {reason}", step.backend));
    }
    let passed = run
        .stderr
        .iter()
        .filter(|line| line.contains(" passed over: "))
        .count();
    if passed != pick {
        return Err(format!("{passed} backends passed over, expected {pick}"));
    }
    Ok(format!(
        "picked {}; passed over [{}]; {} messages checked, lost 0",
        run.active,
        passed_over.join("; "),
        run.messages
    ))
}

struct Run {
    active: String,
    stderr: Vec<String>,
    messages: usize,
}

/// dnstrace traces while the late server starts and the client runs; its
/// JSON must pass every check.
fn trace(backend: &str, early: u32) -> Result<Run, String> {
    let mut tracer = Tracer::start(backend).map_err(|e| format!("{e:#}"))?;
    let active = match tracer.attach().map_err(|e| format!("{e:#}"))? {
        Start::Attached(active) => active,
        Start::Exited(status) => {
            let last = tracer.stderr.last().cloned().unwrap_or_default();
            return Err(format!("dnstrace could not start ({status}): {last}"));
        }
    };
    let traffic = Server::start(&dns::LATE).and_then(|late| Ok((run_client()?, late)));
    // Stop dnstrace whatever happened, so that no run leaks into the next.
    let stopped = tracer.stop();
    let (client, late) = traffic.map_err(|e| format!("{e:#}"))?;
    let status = stopped.map_err(|e| format!("{e:#}"))?;
    if !status.success() {
        return Err(format!("dnstrace exited with {status} after SIGINT"));
    }
    let jsonl = fs::read_to_string(&tracer.output)
        .map_err(|e| format!("reading {}: {e}", tracer.output.display()))?;
    let pids = Pids {
        client,
        early,
        late: late.pid(),
    };
    let messages = check::trace(&jsonl, pids).map_err(|problems| {
        // The whole story goes to the log; the verdict line gets the start.
        println!("[{backend}] {} problems; the trace was:", problems.len());
        for line in jsonl.lines() {
            println!("[{backend}] {line}");
        }
        for problem in &problems {
            println!("[{backend}] problem: {problem}");
        }
        let mut shown = problems[..problems.len().min(PROBLEMS_SHOWN)].join("; ");
        if problems.len() > PROBLEMS_SHOWN {
            shown.push_str(&format!("; and {} more", problems.len() - PROBLEMS_SHOWN));
        }
        shown
    })?;
    Ok(Run {
        active,
        stderr: tracer.stderr,
        messages,
    })
}

/// Runs `/init client` to its end; its pid owns every client socket.
fn run_client() -> anyhow::Result<u32> {
    let mut child = Command::new(env::current_exe().context("locating /init")?)
        .arg(dns::CLIENT)
        .spawn()
        .context("starting the client")?;
    let pid = child.id();
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().context("waiting for the client")? {
            if !status.success() {
                bail!("the client failed: {status}");
            }
            return Ok(pid);
        }
        if Instant::now() >= deadline {
            // Gone either way after this.
            let _ = child.kill();
            let _ = child.wait();
            bail!("the client did not finish within {CLIENT_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
