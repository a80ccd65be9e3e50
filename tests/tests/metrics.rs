//! `--metrics`: a real Prometheus scrapes dnstrace on loopback and is asked,
//! through its HTTP API, for the series of known lookups; `promtool` checks
//! the exposition; the series stay within their documented bound under a
//! flood of names and short-lived processes; `analyze --metrics-file`
//! writes the same metrics; a port in use fails at start.

use std::{
    collections::BTreeSet,
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use dnstrace_tests::{
    clients::{Client, ClientRun, Lookup, NOBODY},
    netns::{Family, ServerAddrs, Topology},
    process::{Daemon, PATIENCE},
    servers::{DnsServer, ServerKind},
    trace::{Trace, Tracer, analyze, dnstrace_bin, readable_by_all},
};
use tempfile::TempDir;

/// A loopback port nothing listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// A plain HTTP/1.0 GET on loopback: the status and the body.
fn http_get(address: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// `/metrics`, which must answer 200.
fn scrape(address: SocketAddr) -> String {
    match http_get(address, "/metrics") {
        Some((200, body)) => body,
        other => panic!("GET /metrics on {address}: {other:?}"),
    }
}

fn percent_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Debian's Prometheus, scraping `target` every second with a config and
/// storage of its own; no system service.
struct Prometheus {
    address: SocketAddr,
    _daemon: Daemon,
    _dir: TempDir,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Self {
        let dir = tempfile::tempdir().expect("prometheus dir");
        let config = dir.path().join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: dnstrace\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("write prometheus.yml");
        let address = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut command = Command::new("prometheus");
        command
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"));
        let mut daemon = Daemon::spawn("prometheus", &mut command);
        poll("prometheus ready", || {
            daemon.assert_running();
            match http_get(address, "/-/ready") {
                Some((200, _)) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        });
        Self {
            address,
            _daemon: daemon,
            _dir: dir,
        }
    }

    /// An instant query: each series's labels and value.
    fn query(&self, promql: &str) -> Vec<(serde_json::Value, f64)> {
        let path = format!("/api/v1/query?query={}", percent_encoded(promql));
        let Some((200, body)) = http_get(self.address, &path) else {
            panic!("prometheus query {promql}");
        };
        let answer: serde_json::Value = serde_json::from_str(&body).expect("API JSON");
        assert_eq!(answer["status"], "success", "{promql}: {answer}");
        answer["data"]["result"]
            .as_array()
            .expect("a vector")
            .iter()
            .map(|series| {
                let value = series["value"][1].as_str().expect("a value").parse();
                (series["metric"].clone(), value.expect("a number"))
            })
            .collect()
    }

    /// Waits until `promql` gives the single value `expected`; the series.
    fn wait_for_value(&self, promql: &str, expected: f64) -> serde_json::Value {
        poll(&format!("{promql} == {expected}"), || {
            match &self.query(promql)[..] {
                [(series, value)] if *value == expected => Ok(series.clone()),
                other => Err(format!("Prometheus answered {other:?}")),
            }
        })
    }
}

/// Retries `attempt` for at most [`PATIENCE`]; its `Err` says what it saw
/// instead, for the panic.
fn poll<T>(what: &str, attempt: impl FnMut() -> Result<T, String>) -> T {
    poll_within(PATIENCE, what, attempt)
}

fn poll_within<T>(
    patience: Duration,
    what: &str,
    mut attempt: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = std::time::Instant::now() + patience;
    loop {
        match attempt() {
            Ok(done) => return done,
            Err(seen) => assert!(
                std::time::Instant::now() < deadline,
                "{what}: not within {patience:?}; {seen}"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// getent's lookups from one client namespace against the shaping server:
/// one that resolves, one NXDOMAIN, one whose lame answers it rejects, and
/// one that times out, traced with `args` added.
struct KnownLookups {
    tracer: Tracer,
    metrics: SocketAddr,
    server: SocketAddr,
    runs: Vec<ClientRun>,
    _shaping: DnsServer,
    _net: Topology,
}

impl KnownLookups {
    fn run(args: &[&str]) -> Self {
        let net = Topology::new();
        let shaping = DnsServer::start(ServerKind::Shaping, &net);
        let server = shaping.socket(Family::V4);
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut tracer = Tracer::start(
            [
                "--netns",
                net.client.name(),
                "--metrics",
                &metrics.to_string(),
            ]
            .iter()
            .chain(args),
        );
        let runs = ["", "nxdomain", "lame", "drop"]
            .into_iter()
            .map(|shape| {
                let lookup = Lookup::in_subzone("getent", shape, server);
                let paused = match shape {
                    // One second's wait, not glibc's 5 s twice.
                    "drop" => Client::Getent.prepare(
                        &net,
                        &lookup.with_resolv_conf("options timeout:1 attempts:1"),
                    ),
                    _ => Client::Getent.prepare(&net, &lookup),
                };
                match shape {
                    "" => paused.run(),
                    _ => paused.run_expecting_failure(),
                }
            })
            .collect();
        tracer.wait_until_settled();
        Self {
            tracer,
            metrics,
            server,
            runs,
            _shaping: shaping,
            _net: net,
        }
    }

    /// Stops the tracer, keeping its JSON Lines at `keep` if given.
    fn stop(self, keep: Option<&Path>) -> Trace {
        match keep {
            Some(path) => self.tracer.stop_keeping(path),
            None => self.tracer.stop(),
        }
    }
}

/// The test's lookups in the trace, per outcome.
fn outcomes(trace: &Trace, runs: &[ClientRun]) -> Vec<(String, usize)> {
    let pids: BTreeSet<u32> = runs.iter().map(|run| run.pid).collect();
    let mut counts: Vec<(String, usize)> = Vec::new();
    for lookup in trace
        .lookups
        .iter()
        .filter(|l| l.pid.0.is_some_and(|p| pids.contains(&p)))
    {
        match counts
            .iter_mut()
            .find(|(outcome, _)| *outcome == lookup.outcome)
        {
            Some((_, count)) => *count += 1,
            None => counts.push((lookup.outcome.clone(), 1)),
        }
    }
    counts
}

#[test]
fn prometheus_sees_resolved_nxdomain_rejected_and_timed_out_lookups_per_client() {
    let scenario = KnownLookups::run(&[]);
    let prometheus = Prometheus::start(scenario.metrics);
    let server = scenario.server.to_string();

    let resolved = prometheus.wait_for_value(
        r#"dnstrace_lookups_total{comm="getent",outcome="resolved"}"#,
        1.0,
    );
    assert_eq!(
        resolved["qtype"], "A,AAAA",
        "getaddrinfo asks both: {resolved}"
    );
    for absent in ["namespace", "pod", "container"] {
        assert!(resolved.get(absent).is_none(), "no pod here: {resolved}");
    }
    assert_eq!(resolved["job"], "dnstrace");
    prometheus.wait_for_value(
        r#"sum(dnstrace_lookups_total{comm="getent",outcome="nxdomain"})"#,
        1.0,
    );

    let runs = scenario.runs.clone();
    let server_address = scenario.server;
    let trace = scenario.stop(None);
    let count = |outcome: &str| {
        trace
            .attempts
            .iter()
            .filter(|a| runs.iter().any(|run| a.pid == run.pid) && a.outcome == outcome)
            .count() as f64
    };
    let rejected = count("rejected");
    let timeouts = count("timeout");
    assert!(rejected >= 2.0 && timeouts >= 2.0, "{rejected} {timeouts}");
    // The tracer is gone: Prometheus's next scrape fails and marks every
    // series stale, so what follows reads the last value scraped.
    let series = prometheus.wait_for_value(
        &last_scraped(&format!(
            r#"dnstrace_responses_rejected_total{{comm="getent",server="{server}"}}"#
        )),
        rejected,
    );
    assert_eq!(series["comm"], "getent");
    prometheus.wait_for_value(
        &last_scraped(&format!(
            r#"dnstrace_timeouts_total{{comm="getent",server="{server}"}}"#
        )),
        timeouts,
    );
    let rejections = trace
        .diagnoses
        .iter()
        .filter(|d| d.cause == "answer_rejected" && d.server == Some(server_address))
        .map(|d| d.count)
        .max()
        .expect("an answer_rejected diagnosis");
    prometheus.wait_for_value(
        &last_scraped(&format!(
            r#"dnstrace_diagnoses_total{{comm="getent",cause="answer_rejected",server="{server}"}}"#
        )),
        rejections as f64,
    );
    // Every lookup of the trace, and no other, by outcome.
    let outcomes = outcomes(&trace, &runs);
    assert!(
        outcomes
            .iter()
            .filter(|(outcome, _)| outcome == "failed")
            .map(|(_, n)| n)
            .sum::<usize>()
            >= 2,
        "the lame and the dropped lookups failed: {outcomes:?}"
    );
    for (outcome, lookups) in &outcomes {
        prometheus.wait_for_value(
            &format!(
                "sum({})",
                last_scraped(&format!(
                    r#"dnstrace_lookups_total{{comm="getent",outcome="{outcome}"}}"#
                ))
            ),
            *lookups as f64,
        );
    }
    prometheus.wait_for_value(
        &format!(
            "sum({})",
            last_scraped(r#"dnstrace_lookup_duration_seconds_count{comm="getent"}"#)
        ),
        outcomes.iter().map(|(_, n)| *n as f64).sum(),
    );
}

/// The series' last values scraped: a range passes over the stale markers
/// that Prometheus writes once a target stops answering.
fn last_scraped(selector: &str) -> String {
    format!("last_over_time({selector}[5m])")
}

/// `promtool check metrics` on `exposition`: its complaints, if any.
fn promtool_problems(exposition: &str) -> String {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("write to promtool");
    let output = promtool.wait_with_output().expect("promtool output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    match output.status.success() {
        true => text,
        false => format!("exit {}: {text}", output.status),
    }
}

#[test]
fn promtool_finds_no_problem_and_analyze_writes_the_same_lookups_to_a_file() {
    let scenario = KnownLookups::run(&["--metrics-top-names", "10"]);
    let metrics = scenario.metrics;
    assert_eq!(http_get(metrics, "/healthz").map(|r| r.0), Some(200));
    assert_eq!(http_get(metrics, "/readyz").map(|r| r.0), Some(200));
    assert_eq!(http_get(metrics, "/nothing").map(|r| r.0), Some(404));
    let live = scrape(metrics);
    for family in [
        "dnstrace_lookups_total",
        "dnstrace_lookup_duration_seconds_bucket",
        "dnstrace_queries_wasted_total",
        "dnstrace_responses_rejected_total",
        "dnstrace_timeouts_total",
        "dnstrace_diagnoses_total",
        "dnstrace_lookups_by_name_total",
        "dnstrace_messages_total",
        "dnstrace_lost_messages_total",
        "dnstrace_lookups_pending",
    ] {
        assert!(
            live.contains(&format!("\n{family}")),
            "{family} missing:\n{live}"
        );
    }
    assert_eq!(promtool_problems(&live), "", "promtool on:\n{live}");

    let dir = tempfile::tempdir().expect("dir");
    std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).expect("chown");
    let kept = dir.path().join("trace.jsonl");
    let file = dir.path().join("metrics.prom");
    let names: Vec<String> = scenario
        .runs
        .iter()
        .map(|r| r.domain.trim_end_matches('.').to_owned())
        .collect();
    scenario.stop(Some(&kept));
    readable_by_all(&kept);
    let analysis = analyze(&[&kept], &["--metrics-file", file.to_str().expect("utf-8")]);
    assert!(analysis.status.success(), "{:?}", analysis.stderr);
    let offline = fs::read_to_string(&file).expect("the metrics file");
    assert_eq!(promtool_problems(&offline), "", "promtool on:\n{offline}");
    // Resolved and NXDOMAIN lookups read back from JSON as they were live.
    let lookup_lines = |text: &str, outcome: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with("dnstrace_lookups_total") && l.contains(outcome))
            .map(str::to_owned)
            .collect()
    };
    for outcome in [r#"outcome="resolved""#, r#"outcome="nxdomain""#] {
        let expected = lookup_lines(&live, outcome);
        assert_eq!(expected.len(), 1, "{live}");
        assert_eq!(lookup_lines(&offline, outcome), expected, "{offline}");
    }
    // With --metrics-top-names, each name the test looked up is a label.
    for name in names {
        assert!(
            live.contains(&format!("name=\"{name}\"")),
            "{name}:\n{live}"
        );
    }
}

/// Series of the per-client families in an exposition, and the label
/// values of `label` among them.
fn client_series(exposition: &str) -> Vec<&str> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && line.contains("comm=\""))
        .collect()
}

fn label_values<'t>(series: &[&'t str], label: &str) -> BTreeSet<&'t str> {
    let key = format!("{label}=\"");
    series
        .iter()
        .filter_map(|line| {
            let start = line.find(&key)? + key.len();
            Some(&line[start..start + line[start..].find('"')?])
        })
        .collect()
}

/// docs/metrics.md's bound for `clients` and `servers`: per client, 50
/// lookup series, 20 of latency, 1 of wasted queries, `servers`+1 each of
/// rejections and timeouts, 9 causes × (`servers`+2) of diagnoses; plus 13
/// series about dnstrace itself and 33 at most of kernel drops.
fn documented_bound(clients: usize, servers: usize) -> usize {
    (clients + 1) * (50 + 20 + 1 + 2 * (servers + 1) + 9 * (servers + 2)) + 13 + 33
}

#[test]
fn a_flood_of_names_and_short_lived_processes_stays_within_the_documented_bound() {
    const PROCESSES: usize = 40;
    const NAMES: usize = 50;
    const DEAD_SERVERS: u8 = 5;
    const GRACE: Duration = Duration::from_secs(30);
    let net = Topology::new();
    let shaping = DnsServer::start(ServerKind::Shaping, &net);
    let server = shaping.socket(Family::V4);
    // Addresses in the server namespace where nothing listens: queries to
    // them time out, each under a server of its own.
    let dead: Vec<String> = (0..DEAD_SERVERS)
        .map(|n| {
            let addrs = ServerAddrs::host(40 + n);
            net.add_server_addrs(addrs);
            addrs.v4.to_string()
        })
        .collect();
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (max_clients, max_servers) = (4, 2);
    let tracer = Tracer::start([
        "--netns",
        net.client.name(),
        "--metrics",
        &metrics.to_string(),
        "--metrics-max-clients",
        &max_clients.to_string(),
        "--metrics-max-servers",
        &max_servers.to_string(),
        // Long enough for every lookup to be counted at once, with room for
        // a loaded machine to run the 40 processes slowly; short enough to
        // see their series go.
        "--metrics-grace",
        &GRACE.as_secs().to_string(),
    ]);
    // Each process names itself fl<k>, asks NAMES distinct names of the
    // shaping server (answered) and one of each dead server, and exits.
    let script = r#"
import os, socket, struct, sys
server, processes, names, label = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
dead = sys.argv[5:]
def query(sock, n, name):
    question = b"".join(bytes([len(l)]) + l.encode() for l in name.split("."))
    sock.send(struct.pack(">HHHHHH", n, 0x0100, 1, 0, 0, 0) + question + b"\0" + struct.pack(">HH", 1, 1))
for k in range(processes):
    if os.fork() == 0:
        with open("/proc/self/comm", "w") as comm:
            comm.write(f"fl{k}")
        for j in range(names):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(5)
                sock.connect((server, 53))
                query(sock, j, f"n{k}-{j}.{label}.example.test")
                sock.recv(4096)
        for i, d in enumerate(dead):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.connect((d, 53))
                query(sock, i, f"d{k}-{i}.{label}.example.test")
        os._exit(0)
    os.wait()
"#;
    let label = dnstrace_tests::unique_name("flood");
    let status = net
        .client
        .command("python3")
        .arg("-c")
        .arg(script)
        .args([
            server.ip().to_string(),
            PROCESSES.to_string(),
            NAMES.to_string(),
            label,
        ])
        .args(&dead)
        .status()
        .expect("run the flood");
    assert!(status.success(), "the flood: {status}");

    // Every query is a lookup of its own; the timeouts settle last.
    let expected = PROCESSES * (NAMES + usize::from(DEAD_SERVERS));
    let mut peak = 0;
    let exposition = poll(&format!("{expected} lookups counted"), || {
        let exposition = scrape(metrics);
        peak = peak.max(exposition.lines().filter(|l| !l.starts_with('#')).count());
        let counted: f64 = exposition
            .lines()
            .filter(|l| l.starts_with("dnstrace_lookups_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        match counted == expected as f64 {
            true => Ok(exposition),
            false => Err(format!("{counted} counted:\n{exposition}")),
        }
    });
    let series = client_series(&exposition);
    let clients = label_values(&series, "comm");
    assert!(
        clients.len() <= max_clients + 1 && clients.contains("~other"),
        "{clients:?}"
    );
    let servers = label_values(&series, "server");
    let named: Vec<_> = servers.iter().filter(|s| !s.is_empty()).collect();
    assert!(
        named.len() <= max_servers + 1 && servers.contains("~other"),
        "{servers:?}"
    );
    let total = exposition.lines().filter(|l| !l.starts_with('#')).count();
    let bound = documented_bound(max_clients, max_servers);
    assert!(
        total <= bound && peak <= bound,
        "{total} series now, {peak} at most, over the bound {bound}:\n{exposition}"
    );
    assert!(
        !exposition.lines().any(|l| l.contains(".example.test")),
        "no query names in labels"
    );

    // The processes are gone: their series go after the grace period.
    poll_within(GRACE + PATIENCE, "the flood's series removed", || {
        let exposition = scrape(metrics);
        match client_series(&exposition).is_empty() {
            true => Ok(()),
            false => Err(exposition),
        }
    });
    drop(tracer);
}

#[test]
fn a_metrics_port_in_use_fails_at_start_with_exit_code_2() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = taken.local_addr().expect("address");
    let output = Command::new(dnstrace_bin())
        .args(["--duration", "1", "--metrics", &address.to_string()])
        .output()
        .expect("run dnstrace");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr:\n{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line:\n{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "dnstrace: cannot serve metrics on {address} (--metrics): "
        )) && stderr.contains("in use"),
        "{stderr}"
    );
}
