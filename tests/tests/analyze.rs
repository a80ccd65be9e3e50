//! `dnstrace analyze`: traces written earlier, read back as nobody. tcpdump
//! captures of the diagnosis scenarios give the verdicts live tracing gives,
//! per client address; dnstrace's own pcapng and JSON Lines give back the
//! same lookups with their processes; a file cut by kill -9, damaged or of no
//! known format is reported as such, never with a panic; and files are merged
//! by time whatever their order on the command line.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::{IpAddr, SocketAddr},
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
};

use dnstrace_tests::{
    clients::{Client, ClientRun, Lookup, PausedClient},
    netns::{CLIENT_V4, Family, Topology},
    process::{Daemon, PATIENCE, poll_until},
    servers::{DnsServer, ServerKind, ZONE},
    trace::{
        Analysis, Attempt, Diagnosis, Trace, TracedLookup, Tracer, analyze, analyzed_whole,
        dnstrace_bin, readable_by_all,
    },
    unique_name,
};
use tempfile::TempDir;

/// pcap link types (LINKTYPE_*).
const ETHERNET: u32 = 1;
const LINUX_SLL2: u32 = 276;

/// The client as `analyze` names it in a capture without processes.
fn client_ip() -> IpAddr {
    IpAddr::V4(CLIENT_V4)
}

// ---------------------------------------------------------------------------
// pcap files, read and cut by hand

/// A classic pcap file as tcpdump writes it, split into records.
struct Pcap {
    bytes: Vec<u8>,
    big_endian: bool,
    /// Each record's offset in the file and its length with its header.
    records: Vec<(usize, usize)>,
}

const PCAP_HEADER: usize = 24;
const RECORD_HEADER: usize = 16;

impl Pcap {
    fn read(path: &Path) -> Self {
        let bytes = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        assert!(
            bytes.len() >= PCAP_HEADER,
            "{} has no pcap header",
            path.display()
        );
        let big_endian = match bytes[..4] {
            [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => false,
            [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => true,
            _ => panic!("{} is not a pcap file: {:x?}", path.display(), &bytes[..4]),
        };
        let mut pcap = Self {
            bytes,
            big_endian,
            records: Vec::new(),
        };
        let mut offset = PCAP_HEADER;
        while offset < pcap.bytes.len() {
            let len = RECORD_HEADER + pcap.u32_at(offset + 8) as usize;
            assert!(
                offset + len <= pcap.bytes.len(),
                "{}: record at {offset} runs past the end",
                path.display()
            );
            pcap.records.push((offset, len));
            offset += len;
        }
        pcap
    }

    fn u32_at(&self, offset: usize) -> u32 {
        let field: [u8; 4] = self.bytes[offset..offset + 4].try_into().expect("4 bytes");
        match self.big_endian {
            true => u32::from_be_bytes(field),
            false => u32::from_le_bytes(field),
        }
    }

    fn link_type(&self) -> u32 {
        self.u32_at(20)
    }

    /// Record `index`'s captured bytes, after its header.
    fn data(&self, index: usize) -> &[u8] {
        let (offset, len) = self.records[index];
        &self.bytes[offset + RECORD_HEADER..offset + len]
    }

    fn holds(&self, index: usize, label: &str) -> bool {
        self.data(index)
            .windows(label.len())
            .any(|w| w == label.as_bytes())
    }

    /// The indices of the records that carry `label` (a lookup's own).
    fn records_of(&self, label: &str) -> Vec<usize> {
        (0..self.records.len())
            .filter(|&i| self.holds(i, label))
            .collect()
    }

    /// Where record `index`'s DNS message starts in the file (UDP only).
    fn dns_offset(&self, index: usize) -> usize {
        let data = self.data(index);
        let ip = match self.link_type() {
            ETHERNET => 14,
            LINUX_SLL2 => 20,
            other => panic!("link type {other}"),
        };
        let (header, protocol) = match data[ip] >> 4 {
            4 => (usize::from(data[ip] & 0x0f) * 4, data[ip + 9]),
            6 => (40, data[ip + 6]),
            version => panic!("IP version {version} in record {index}"),
        };
        assert_eq!(protocol, 17, "record {index} is UDP");
        let (offset, _) = self.records[index];
        offset + RECORD_HEADER + ip + header + 8
    }

    /// This file's header followed by `records`' bytes.
    fn with_records(&self, records: impl IntoIterator<Item = usize>) -> Vec<u8> {
        let mut bytes = self.bytes[..PCAP_HEADER].to_vec();
        for index in records {
            let (offset, len) = self.records[index];
            bytes.extend_from_slice(&self.bytes[offset..offset + len]);
        }
        bytes
    }
}

/// Writes `bytes` to `dir/name`, readable by nobody.
fn write_input(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    readable_by_all(&path);
    path
}

/// The first label of a run's name: unique, and in every packet of it.
fn label_of(run: &ClientRun) -> &str {
    run.domain.split('.').next().expect("a first label")
}

// ---------------------------------------------------------------------------
// tcpdump in the client namespace

/// tcpdump writing DNS over UDP and TCP on one interface of the client
/// namespace to a pcap file.
struct Tcpdump {
    daemon: Daemon,
    file: PathBuf,
    link_type: u32,
}

impl Tcpdump {
    /// `dns0`, the veth end, gives Ethernet frames; `any` gives Linux
    /// cooked (SLL2) ones.
    fn start(net: &Topology, interface: &str, dir: &Path) -> Self {
        let file = dir.join(format!("{interface}.pcap"));
        let mut command = net.client.command("tcpdump");
        command
            .args([
                "-i", interface, "-n", "-U", "-Z", "root", "-B", "8192", "-w",
            ])
            .arg(&file)
            .arg("port 53");
        let mut daemon = Daemon::spawn("tcpdump", &mut command);
        daemon.wait_for_stderr("tcpdump: listening on", PATIENCE);
        let link_type = match interface {
            "any" => LINUX_SLL2,
            _ => ETHERNET,
        };
        Self {
            daemon,
            file,
            link_type,
        }
    }
}

/// Stops the captures once everything before now is in their files, and
/// returns the files, readable by nobody. A sentinel query, sent from the
/// server namespace to the client's address where nothing listens, proves
/// that; it is cut off again, so each file holds the test's traffic only.
fn stop_tcpdumps(net: &Topology, captures: Vec<Tcpdump>) -> Vec<PathBuf> {
    let label = unique_name("sentinel");
    let status = net
        .server
        .command("dig")
        .args([&format!("@{CLIENT_V4}"), "+tries=1", "+time=1"])
        .arg(format!("{label}.{ZONE}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    assert!(status.is_ok(), "send the sentinel query: {status:?}");
    for capture in &captures {
        poll_until("tcpdump writing the sentinel query", PATIENCE, || {
            let written = fs::read(&capture.file).expect("read capture file");
            written.windows(label.len()).any(|w| w == label.as_bytes())
        });
    }
    captures
        .into_iter()
        .map(|capture| {
            let (status, stderr) = capture.daemon.stop(libc::SIGINT);
            assert!(status.success(), "tcpdump exited with {status}: {stderr:?}");
            assert!(
                stderr.iter().any(|l| l == "0 packets dropped by kernel"),
                "tcpdump dropped packets: {stderr:?}"
            );
            let pcap = Pcap::read(&capture.file);
            assert_eq!(
                pcap.link_type(),
                capture.link_type,
                "link type of {}",
                capture.file.display()
            );
            let sentinel = pcap.records_of(&label);
            let first = *sentinel.first().expect("the sentinel is in the file");
            assert!(
                sentinel.iter().copied().eq(first..pcap.records.len()),
                "only sentinel queries follow the first: records {sentinel:?} of {}",
                pcap.records.len()
            );
            fs::write(&capture.file, pcap.with_records(0..first)).expect("cut the sentinel");
            readable_by_all(&capture.file);
            capture.file
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Comparing verdicts

type Verdict = (
    String,
    Option<SocketAddr>,
    BTreeSet<String>,
    u64,
    BTreeSet<u16>,
);

/// What a diagnosis says, whoever made it: cause, server, names, count and
/// evidence.
fn verdicts<'a>(diagnoses: impl IntoIterator<Item = &'a Diagnosis>) -> BTreeSet<Verdict> {
    diagnoses
        .into_iter()
        .map(|d| {
            (
                d.cause.clone(),
                d.server,
                d.names.iter().cloned().collect(),
                d.count,
                d.evidence.iter().copied().collect(),
            )
        })
        .collect()
}

type LookupKey = (String, Vec<String>, String, u32, u32);

fn lookup_keys<'a>(lookups: impl IntoIterator<Item = &'a TracedLookup>) -> Vec<LookupKey> {
    let mut keys: Vec<LookupKey> = lookups
        .into_iter()
        .map(|l| {
            (
                l.name.clone(),
                l.names_tried.clone(),
                l.outcome.clone(),
                l.attempts,
                l.wasted_queries,
            )
        })
        .collect();
    keys.sort();
    keys
}

type AttemptKey = (
    String,
    String,
    u16,
    String,
    SocketAddr,
    String,
    Option<String>,
);

fn attempt_keys<'a>(attempts: impl IntoIterator<Item = &'a Attempt>) -> Vec<AttemptKey> {
    let mut keys: Vec<AttemptKey> = attempts
        .into_iter()
        .map(|a| {
            (
                a.qname.clone(),
                a.qtype.clone(),
                a.id,
                a.proto.clone(),
                a.server,
                a.outcome.clone(),
                a.outcome_detail.clone(),
            )
        })
        .collect();
    keys.sort();
    keys
}

// ---------------------------------------------------------------------------
// 1. tcpdump captures of the diagnosis scenarios

/// A getent scenario traced live (limited to the client namespace) and
/// captured by tcpdump on the veth and on `any` at the same time.
struct Captured {
    run: ClientRun,
    live: Trace,
    pcaps: Vec<PathBuf>,
    _dir: TempDir,
}

fn traced_and_captured(
    net: &Topology,
    lookup: &Lookup,
    run: impl FnOnce(PausedClient) -> ClientRun,
) -> Captured {
    let dir = tempfile::tempdir().expect("capture dir");
    let paused = Client::Getent.prepare(net, lookup);
    let mut tracer = Tracer::start(["--netns", net.client.name()]);
    let captures = ["dns0", "any"].map(|interface| Tcpdump::start(net, interface, dir.path()));
    let run = run(paused);
    tracer.wait_until_settled();
    let pcaps = stop_tcpdumps(net, captures.into());
    let live = tracer.stop();
    assert_eq!(live.summary.lost, 0, "dnstrace lost messages: {live:?}");
    Captured {
        run,
        live,
        pcaps,
        _dir: dir,
    }
}

/// Analyses each capture as nobody and checks that it gives what live
/// tracing gave for the client process, now under the client's address:
/// the same diagnoses (among them `cause`), lookups and attempts, and no
/// process anywhere. Returns the analysed traces.
fn assert_same_verdicts_as_live(captured: &Captured, cause: &str) -> Vec<Trace> {
    let Captured { run, live, .. } = captured;
    let live_verdicts = verdicts(live.diagnoses_of(run.pid));
    assert!(
        live_verdicts.iter().any(|v| v.0 == cause),
        "live tracing diagnosed no {cause}; lines:\n{}",
        live.correlation_of(run.pid)
    );
    let live_lookups = lookup_keys(live.lookups.iter().filter(|l| l.pid == run.pid));
    let live_attempts = attempt_keys(live.attempts.iter().filter(|a| a.pid == run.pid));
    let live_messages = live
        .messages
        .iter()
        .filter(|m| m.pid == Some(run.pid))
        .count();

    let mut traces = Vec::new();
    for pcap in &captured.pcaps {
        let trace = analyzed_whole(&[pcap]);
        let context = format!(
            "{}; analyze lines:\n{}",
            pcap.display(),
            trace
                .lines
                .iter()
                .filter(|l| l["kind"] != "message")
                .map(|l| format!("{l}\n"))
                .collect::<String>()
        );
        assert!(
            trace
                .messages
                .iter()
                .all(|m| m.pid.is_none() && m.comm.is_none()),
            "a capture names no process: {context}"
        );
        assert!(
            trace
                .lookups
                .iter()
                .all(|l| l.pid.0.is_none() && l.comm.is_none())
                && trace
                    .attempts
                    .iter()
                    .all(|a| a.pid.0.is_none() && a.comm.is_none())
                && trace
                    .diagnoses
                    .iter()
                    .all(|d| d.pid.0.is_none() && d.comm.is_none() && d.client.is_some()),
            "records without a process have null pid and comm and a client: {context}"
        );
        let ours = |client: Option<IpAddr>| client == Some(client_ip());
        assert_eq!(
            verdicts(trace.diagnoses_of_client(client_ip())),
            live_verdicts,
            "the diagnoses of {} (analyze) and of pid {} (live): {context}",
            client_ip(),
            run.pid
        );
        assert_eq!(
            lookup_keys(trace.lookups.iter().filter(|l| ours(l.client))),
            live_lookups,
            "lookups: {context}"
        );
        assert_eq!(
            attempt_keys(trace.attempts.iter().filter(|a| ours(a.client))),
            live_attempts,
            "attempts: {context}"
        );
        assert_eq!(
            trace
                .messages
                .iter()
                .filter(|m| m.local.ip() == client_ip())
                .count(),
            live_messages,
            "messages of the client: {context}"
        );
        traces.push(trace);
    }
    traces
}

#[test]
fn glibc_both_lame_captured_by_tcpdump_is_answer_rejected_for_the_client_address() {
    let net = Topology::new();
    let shaping = DnsServer::start(ServerKind::Shaping, &net);
    let server = shaping.socket(Family::V4);
    let lookup = Lookup::in_subzone("getent", "lame", server);
    let captured = traced_and_captured(&net, &lookup, PausedClient::run_expecting_failure);

    for trace in assert_same_verdicts_as_live(&captured, "answer_rejected") {
        let diagnoses = trace.diagnoses_of_client(client_ip());
        let rejected = diagnoses
            .iter()
            .find(|d| d.cause == "answer_rejected")
            .expect("answer_rejected");
        assert_eq!(rejected.server, Some(server), "{rejected:#?}");
        assert_eq!(rejected.client, Some(client_ip()), "{rejected:#?}");
        let shape = rejected.rejected_shape.as_ref().expect("a rejected_shape");
        assert_eq!((shape.rcode.as_str(), shape.answers), ("NOERROR", 0));
        let name = captured.run.domain.trim_end_matches('.');
        let lookup = trace
            .lookups
            .iter()
            .find(|l| l.name == name)
            .unwrap_or_else(|| panic!("no lookup of {name}: {:#?}", trace.lookups));
        assert_eq!(lookup.outcome, "failed");
    }
}

#[test]
fn servfail_fallback_captured_by_tcpdump_is_a_server_failure_fallback_for_the_client_address() {
    let net = Topology::new();
    let shaping = DnsServer::start(ServerKind::Shaping, &net);
    let knot = DnsServer::start(ServerKind::Knot, &net);
    let failing = shaping.socket(Family::V4);
    let lookup = Lookup::in_subzone("getent", "servfail", failing)
        .with_resolv_conf(format!("nameserver {}", knot.socket(Family::V4).ip()));
    let captured = traced_and_captured(&net, &lookup, PausedClient::run);

    for trace in assert_same_verdicts_as_live(&captured, "server_failure_fallback") {
        let diagnoses = trace.diagnoses_of_client(client_ip());
        let fallback = diagnoses
            .iter()
            .find(|d| d.cause == "server_failure_fallback")
            .expect("server_failure_fallback");
        assert_eq!(fallback.server, Some(failing), "{fallback:#?}");
        assert!(
            diagnoses.iter().all(|d| d.cause != "answer_rejected"),
            "{diagnoses:#?}"
        );
        let name = captured.run.domain.trim_end_matches('.');
        assert!(
            trace
                .lookups
                .iter()
                .any(|l| l.name == name && l.outcome == "resolved"),
            "{name} resolved: {:#?}",
            trace.lookups
        );
    }
}

#[test]
fn ndots_search_expansion_captured_by_tcpdump_counts_the_wasted_queries_for_the_client_address() {
    let net = Topology::new();
    let shaping = DnsServer::start(ServerKind::Shaping, &net);
    let lookup = Lookup::ndots_search(shaping.socket(Family::V4));
    let captured = traced_and_captured(&net, &lookup, PausedClient::run);

    let run = &captured.run;
    let expected_names = lookup.ndots_names_tried();
    // Without the process's resolv.conf, analyze joins the names by their
    // shared first label (docs/diagnoses.md).
    let traces = assert_same_verdicts_as_live(&captured, "search_expansion");
    for trace in &traces {
        let name = run.domain.trim_end_matches('.');
        let [lookup] = trace
            .lookups
            .iter()
            .filter(|l| l.client == Some(client_ip()))
            .collect::<Vec<_>>()[..]
        else {
            panic!("one lookup of {name}: {:#?}", trace.lookups);
        };
        assert_eq!(lookup.name, name);
        assert_eq!(lookup.names_tried, expected_names);
        assert_eq!(lookup.outcome, "resolved");
        assert_eq!(
            (lookup.attempts, lookup.wasted_queries),
            (8, 6),
            "{lookup:#?}"
        );
        let diagnoses = trace.diagnoses_of_client(client_ip());
        let expansion = diagnoses
            .iter()
            .find(|d| d.cause == "search_expansion")
            .expect("search_expansion");
        assert_eq!(
            expansion.names.iter().collect::<BTreeSet<_>>(),
            expected_names.iter().collect(),
            "{expansion:#?}"
        );
        assert!(
            expansion.explanation.contains("6 wasted queries"),
            "{expansion:#?}"
        );
    }
    // analyze knows no ndots; what it says of it must still be true.
    for trace in &traces {
        for diagnosis in trace.diagnoses_of_client(client_ip()) {
            let claim = ndots_claim(&diagnosis.explanation);
            assert!(
                claim.is_none_or(|(dots, ndots)| dots < ndots),
                "the explanation says the name has fewer dots than ndots, and it has not: {}",
                diagnosis.explanation
            );
        }
    }
}

/// "The name has N dot(s), fewer than ndots:M" in an explanation: (N, M).
fn ndots_claim(explanation: &str) -> Option<(u32, u32)> {
    let (_, rest) = explanation.split_once("The name has ")?;
    let (dots, rest) = rest.split_once(" dot(s), fewer than ndots:")?;
    let ndots: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((dots.parse().ok()?, ndots.parse().ok()?))
}

// ---------------------------------------------------------------------------
// 2 and 3. dnstrace's own files, read back

/// Real lookups by several clients against knot, traced live with
/// `-w trace.pcapng` and the JSON output kept as `live.jsonl`.
struct LiveFiles {
    live: Trace,
    runs: Vec<ClientRun>,
    pcapng: PathBuf,
    jsonl: PathBuf,
    _dir: TempDir,
}

fn trace_real_lookups() -> LiveFiles {
    let net = Topology::new();
    let knot = DnsServer::start(ServerKind::Knot, &net);
    let server = knot.socket(Family::V4);
    let dir = tempfile::tempdir().expect("trace dir");
    let pcapng = dir.path().join("trace.pcapng");
    let jsonl = dir.path().join("live.jsonl");
    let pcapng_arg = pcapng.to_str().expect("utf-8 path");
    let mut tracer = Tracer::start(["--netns", net.client.name(), "-w", pcapng_arg]);
    let runs: Vec<ClientRun> = [
        Client::Getent,
        Client::Dig,
        Client::Python { lookups: 1 },
        Client::Getent,
    ]
    .into_iter()
    .map(|client| client.run(&net, &Lookup::new(client.name(), server)))
    .collect();
    tracer.wait_until_settled();
    let live = tracer.stop_keeping(&jsonl);
    assert_eq!(live.summary.lost, 0, "dnstrace lost messages: {live:?}");
    for run in &runs {
        let name = run.domain.trim_end_matches('.');
        assert!(
            live.lookups
                .iter()
                .any(|l| l.pid == run.pid && l.name == name && l.outcome == "resolved"),
            "live tracing resolved {name} for pid {}: {:#?}",
            run.pid,
            live.lookups
        );
    }
    readable_by_all(&pcapng);
    readable_by_all(&jsonl);
    LiveFiles {
        live,
        runs,
        pcapng,
        jsonl,
        _dir: dir,
    }
}

type ProcessLookup = (Option<u32>, Option<String>, LookupKey);

/// Lookups with their processes, sorted.
fn process_lookups(trace: &Trace) -> Vec<ProcessLookup> {
    let mut lookups: Vec<ProcessLookup> = trace
        .lookups
        .iter()
        .map(|l| (l.pid.0, l.comm.clone(), lookup_keys([l]).remove(0)))
        .collect();
    lookups.sort();
    lookups
}

/// Checks that `analyzed` has the live lookups, attempts and messages, each
/// with its process.
fn assert_same_as_live(files: &LiveFiles, analyzed: &Trace, what: &str) {
    let live = &files.live;
    assert_eq!(
        process_lookups(analyzed),
        process_lookups(live),
        "{what}: lookups (pid, comm, (name, names tried, outcome, attempts, wasted))"
    );
    assert!(
        analyzed.lookups.iter().all(|l| l.client.is_none()),
        "{what}: no client address where the process is known: {:#?}",
        analyzed.lookups
    );
    for run in &files.runs {
        assert!(
            analyzed
                .lookups
                .iter()
                .any(|l| l.pid == run.pid
                    && run.client.comm_matches(l.comm.as_deref().unwrap_or(""))),
            "{what}: a lookup of {} with pid {} and its comm",
            run.client.name(),
            run.pid
        );
    }
    let with_process = |trace: &Trace| {
        let mut attempts: Vec<(Option<u32>, Option<String>, AttemptKey)> = trace
            .attempts
            .iter()
            .map(|a| (a.pid.0, a.comm.clone(), attempt_keys([a]).remove(0)))
            .collect();
        attempts.sort();
        attempts
    };
    assert_eq!(
        with_process(analyzed),
        with_process(live),
        "{what}: attempts"
    );
    let final_verdicts = |trace: &Trace| {
        let mut last = BTreeMap::new();
        for d in &trace.diagnoses {
            last.insert((d.pid, d.cause.clone(), d.server), d);
        }
        last.into_iter()
            .map(|((pid, ..), d)| (pid.0, verdicts([d])))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        final_verdicts(analyzed),
        final_verdicts(live),
        "{what}: diagnoses"
    );
    assert_eq!(
        (analyzed.summary.messages, analyzed.messages.len()),
        (live.summary.messages, live.messages.len()),
        "{what}: message counts"
    );
    let messages = |trace: &Trace| {
        let mut messages: Vec<_> = trace
            .messages
            .iter()
            .map(|m| {
                (
                    m.pid,
                    m.comm.clone(),
                    m.direction,
                    m.proto.clone(),
                    m.local,
                    m.remote,
                    m.id,
                    m.qname.clone(),
                    m.qtype.clone(),
                    m.rcode.clone(),
                    m.size,
                )
            })
            .collect();
        messages.sort();
        messages
    };
    assert_eq!(
        messages(analyzed),
        messages(live),
        "{what}: messages (pid, comm, direction, proto, local, remote, id, question, rcode, size)"
    );
}

#[test]
fn dnstraces_own_pcapng_gives_back_the_live_lookups_with_their_processes() {
    let files = trace_real_lookups();
    let analyzed = analyzed_whole(&[&files.pcapng]);
    assert_same_as_live(&files, &analyzed, "analyze trace.pcapng");
}

#[test]
fn dnstraces_own_json_lines_give_back_the_live_lookups_with_their_processes() {
    let files = trace_real_lookups();
    let analyzed = analyzed_whole(&[&files.jsonl]);
    assert_same_as_live(&files, &analyzed, "analyze live.jsonl");
}

// ---------------------------------------------------------------------------
// 4. kill -9

/// The number after "offset " in `line`.
fn offset_in(line: &str) -> Option<usize> {
    let (_, rest) = line.split_once("offset ")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[test]
fn json_lines_cut_by_kill_9_are_read_up_to_the_cut_line() {
    let net = Topology::new();
    let dnsmasq = DnsServer::start(ServerKind::Dnsmasq, &net);
    let dir = tempfile::tempdir().expect("trace dir");
    let file = dir.path().join("killed.jsonl");
    let mut command = Command::new(dnstrace_bin());
    command
        .args(["--netns", net.client.name(), "--format", "json", "-o"])
        .arg(&file);
    let mut agent = Daemon::spawn("dnstrace", &mut command);
    agent.wait_for_stderr("dnstrace: attached", PATIENCE);

    // 300 lookups from two processes over about 3 s: steady, and bounded.
    let client = Client::PythonMany {
        rounds: 300,
        subzones: &[""],
        processes: 2,
        per_second: 50,
    };
    let paused = client.prepare(&net, &Lookup::new("killed", dnsmasq.socket(Family::V4)));
    let status = thread::scope(|scope| {
        let load = scope.spawn(|| paused.run());
        // Kill it once lookups are being reported and messages still come.
        poll_until("dnstrace writing lookups", PATIENCE, || {
            agent.assert_running();
            let text = fs::read_to_string(&file).unwrap_or_default();
            text.contains(r#""kind":"lookup""#)
                && text.matches(r#""kind":"message""#).count() >= 100
        });
        let (status, _) = agent.stop(libc::SIGKILL);
        load.join().expect("the load ran");
        status
    });
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");

    let text = fs::read(&file).expect("read the killed file");
    let pieces: Vec<&[u8]> = text.split_inclusive(|b| *b == b'\n').collect();
    let (last, whole) = pieces.split_last().expect("the file has lines");
    for line in whole {
        assert!(
            serde_json::from_slice::<serde_json::Value>(line).is_ok(),
            "a line before the last is not whole JSON: {}",
            String::from_utf8_lossy(line)
        );
    }
    if last.ends_with(b"\n") {
        assert!(
            serde_json::from_slice::<serde_json::Value>(last).is_ok(),
            "the last line ends in a newline but is not JSON: {}",
            String::from_utf8_lossy(last)
        );
    }

    // Cut the last whole line in the middle, as a kill may.
    let complete: Vec<&[u8]> = pieces
        .iter()
        .copied()
        .filter(|p| p.ends_with(b"\n"))
        .collect();
    let (cut, kept) = complete.split_last().expect("whole lines");
    let cut_at: usize = kept.iter().map(|l| l.len()).sum();
    let cut_len = cut_at + cut.len() / 2;
    fs::write(&file, &text[..cut_len]).expect("cut the file");
    readable_by_all(&file);
    let kept: Vec<serde_json::Value> = kept
        .iter()
        .map(|l| serde_json::from_slice(l).expect("checked above"))
        .collect();

    let analysis = analyze(&[&file], &[]);
    analysis.assert_no_panic();
    assert!(
        analysis.status.success(),
        "a last line cut by a kill is no error: {}; stderr:\n{}",
        analysis.status,
        analysis.stderr.join("\n")
    );
    let path = file.display().to_string();
    let warnings: Vec<&String> = analysis
        .stderr
        .iter()
        .filter(|l| l.contains(&path))
        .collect();
    let [warning] = warnings[..] else {
        panic!("one warning about the cut line: {:?}", analysis.stderr);
    };
    assert!(
        warning.starts_with(&format!("dnstrace: {path}: skipped 1 damaged record(s)")),
        "{warning}"
    );
    let offset = offset_in(warning).unwrap_or_else(|| panic!("no offset in {warning}"));
    assert!(
        (cut_at..=cut_len).contains(&offset),
        "the cut line starts at {cut_at} (the file ends at {cut_len}): {warning}"
    );

    let trace = analysis.trace();
    assert_eq!(trace.summary.skipped_records, 1, "{:?}", trace.summary);
    let kept_messages = kept.iter().filter(|l| l["kind"] == "message").count();
    assert_eq!(
        (trace.summary.messages, trace.messages.len()),
        (kept_messages as u64, kept_messages),
        "every whole message line is read"
    );
    let kept_lookups: Vec<&serde_json::Value> =
        kept.iter().filter(|l| l["kind"] == "lookup").collect();
    assert!(
        !kept_lookups.is_empty(),
        "lookups were written before the kill"
    );
    let missing: Vec<String> = kept_lookups
        .iter()
        .filter(|live| {
            !trace.lookups.iter().any(|l| {
                live["pid"].as_u64() == l.pid.0.map(u64::from)
                    && live["name"] == l.name.as_str()
                    && live["outcome"] == l.outcome.as_str()
            })
        })
        .map(|live| live.to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} lookups written before the kill are not reported the same, for example {:#?}",
        missing.len(),
        kept_lookups.len(),
        &missing[..missing.len().min(3)]
    );
}

// ---------------------------------------------------------------------------
// 5. Bad input

/// Checks that analyze refused `file`: exit 2, one line naming it.
fn assert_refused(file: &Path, what: &str) {
    let analysis = analyze(&[file], &[]);
    analysis.assert_no_panic();
    assert_eq!(
        analysis.status.code(),
        Some(2),
        "{what}: {}; stderr: {:?}",
        analysis.status,
        analysis.stderr
    );
    let [line] = &analysis.stderr[..] else {
        panic!("{what}: one line on stderr: {:?}", analysis.stderr);
    };
    assert!(
        line.starts_with("dnstrace: ") && line.contains(&file.display().to_string()),
        "{what}: the line names the file: {line}"
    );
}

#[test]
fn files_of_no_known_format_empty_or_missing_are_refused_with_exit_2() {
    let dir = tempfile::tempdir().expect("input dir");
    let text = write_input(dir.path(), "notes.txt", b"these are not DNS messages\n");
    assert_refused(&text, "a text file");
    let binary: Vec<u8> = (0u8..=255).rev().cycle().take(4096).collect();
    let binary = write_input(dir.path(), "random.bin", &binary);
    assert_refused(&binary, "a binary file of no known format");
    let empty = write_input(dir.path(), "empty.pcap", b"");
    assert_refused(&empty, "an empty file");
    // A pcap magic number, and the file header cut short after it.
    let stub = write_input(
        dir.path(),
        "stub.pcap",
        &[0xd4, 0xc3, 0xb2, 0xa1, 0x02, 0x00],
    );
    assert_refused(&stub, "a pcap cut inside its file header");
    assert_refused(&dir.path().join("missing.pcap"), "a missing file");
}

/// Four getent lookups, one after the other, against knot, captured by
/// tcpdump on the client's veth.
struct Lookups {
    runs: Vec<ClientRun>,
    pcap: Pcap,
    dir: TempDir,
}

fn capture_four_lookups() -> Lookups {
    let net = Topology::new();
    let knot = DnsServer::start(ServerKind::Knot, &net);
    let dir = tempfile::tempdir().expect("capture dir");
    let tcpdump = Tcpdump::start(&net, "dns0", dir.path());
    let runs: Vec<ClientRun> = (0..4)
        .map(|_| Client::Getent.run(&net, &Lookup::new("getent", knot.socket(Family::V4))))
        .collect();
    let files = stop_tcpdumps(&net, vec![tcpdump]);
    let pcap = Pcap::read(&files[0]);
    let mut next = 0;
    for run in &runs {
        let records = pcap.records_of(label_of(run));
        assert!(
            records.len() == 4 && records.iter().copied().eq(next..next + 4),
            "{} has its A and AAAA queries and answers, after the lookup before: records \
             {records:?}",
            run.domain
        );
        next += 4;
    }
    assert_eq!(next, pcap.records.len(), "nothing else was captured");
    Lookups { runs, pcap, dir }
}

/// Checks that `trace` has `run`'s lookup for the client address, resolved.
fn assert_resolved(trace: &Trace, run: &ClientRun, what: &str) {
    let name = run.domain.trim_end_matches('.');
    assert!(
        trace
            .lookups
            .iter()
            .any(|l| l.name == name && l.client == Some(client_ip()) && l.outcome == "resolved"),
        "{what}: {name} resolved for {}: {:#?}",
        client_ip(),
        trace.lookups
    );
}

fn assert_not_looked_up(trace: &Trace, run: &ClientRun, what: &str) {
    let name = run.domain.trim_end_matches('.');
    assert!(
        trace.lookups.iter().all(|l| l.name != name),
        "{what}: {name} is past the damage: {:#?}",
        trace.lookups
    );
}

/// Checks that analyze read the records before record `third` (the third
/// lookup's first) and nothing after: the first two lookups resolved, the
/// last two not there. `damage` names what stopped it, for the messages.
fn assert_analysed_up_to_the_third_lookup(
    trace: &Trace,
    runs: &[ClientRun],
    third: usize,
    damage: &str,
) {
    assert_eq!(
        trace.summary.messages, third as u64,
        "the records before {damage}"
    );
    for run in &runs[..2] {
        assert_resolved(trace, run, &format!("before {damage}"));
    }
    for run in &runs[2..] {
        assert_not_looked_up(trace, run, &format!("after {damage}"));
    }
}

/// analyze's stderr line naming `file` and an offset, and that offset.
fn damage_reported<'a>(analysis: &'a Analysis, file: &Path) -> (&'a str, usize) {
    let path = file.display().to_string();
    let warning = analysis
        .stderr
        .iter()
        .find(|l| l.contains(&path) && l.contains("offset"))
        .unwrap_or_else(|| panic!("a line naming {path} and the offset: {:?}", analysis.stderr));
    (warning, offset_in(warning).expect("an offset"))
}

#[test]
fn a_pcap_cut_in_the_middle_of_a_record_is_analysed_up_to_it() {
    let Lookups { runs, pcap, dir } = capture_four_lookups();
    // The file ends halfway through the third lookup's first packet.
    let third = 8;
    let (offset, len) = pcap.records[third];
    let cut_len = offset + len / 2;
    let cut = write_input(dir.path(), "cut.pcap", &pcap.bytes[..cut_len]);

    let analysis = analyze(&[&cut], &[]);
    analysis.assert_no_panic();
    let code = analysis.status.code();
    assert!(
        matches!(code, Some(0 | 1)),
        "a damaged last record is skipped (0) or ends the file (1): {}; stderr: {:?}",
        analysis.status,
        analysis.stderr
    );
    let (warning, reported) = damage_reported(&analysis, &cut);
    assert!(
        (offset..=cut_len).contains(&reported),
        "the cut record starts at {offset} (the file ends at {cut_len}): {warning}"
    );
    let trace = analysis.trace();
    if code == Some(0) {
        assert!(warning.contains("skipped 1 damaged record"), "{warning}");
        assert_eq!(trace.summary.skipped_records, 1, "{:?}", trace.summary);
    }
    assert_analysed_up_to_the_third_lookup(&trace, &runs, third, "the cut");
}

#[test]
fn a_pcap_record_header_damaged_mid_file_ends_the_file_with_exit_1() {
    let Lookups { runs, pcap, dir } = capture_four_lookups();
    // The third lookup's first record claims 2 GiB: nothing after it can
    // be found.
    let third = 8;
    let (offset, _) = pcap.records[third];
    let mut bytes = pcap.bytes.clone();
    let huge = 0x7fff_fff0u32;
    let huge = match pcap.big_endian {
        true => huge.to_be_bytes(),
        false => huge.to_le_bytes(),
    };
    bytes[offset + 8..offset + 16].copy_from_slice(&[huge, huge].concat());
    let damaged = write_input(dir.path(), "damaged.pcap", &bytes);

    let analysis = analyze(&[&damaged], &[]);
    analysis.assert_no_panic();
    assert_eq!(
        analysis.status.code(),
        Some(1),
        "damage past a record: {}; stderr: {:?}",
        analysis.status,
        analysis.stderr
    );
    let (warning, reported) = damage_reported(&analysis, &damaged);
    assert!(
        (offset..offset + RECORD_HEADER).contains(&reported),
        "the damaged record header is at {offset}: {warning}"
    );
    let trace = analysis.trace();
    assert_analysed_up_to_the_third_lookup(&trace, &runs, third, "the damage");
}

#[test]
fn a_packet_whose_dns_does_not_decode_is_counted_and_the_rest_analysed() {
    let Lookups { runs, pcap, dir } = capture_four_lookups();
    // The second lookup's A query: its question's first label gets the
    // reserved label type 0b10.
    let query = 4;
    let dns = pcap.dns_offset(query);
    let mut bytes = pcap.bytes.clone();
    assert_eq!(bytes[dns + 2] & 0x80, 0, "record {query} is a query");
    assert!(
        (1..64).contains(&bytes[dns + 12]),
        "a label length starts the question"
    );
    bytes[dns + 12] = 0x80;
    let corrupt = write_input(dir.path(), "corrupt.pcap", &bytes);

    let trace = analyzed_whole(&[&corrupt]);
    assert_eq!(
        trace.summary.messages,
        pcap.records.len() as u64,
        "an undecodable message is still a message"
    );
    assert_eq!(trace.summary.undecodable, 1, "{:?}", trace.summary);
    let undecodable: Vec<_> = trace
        .messages
        .iter()
        .filter(|m| m.decode_error.is_some())
        .collect();
    assert_eq!(undecodable.len(), 1, "{undecodable:#?}");
    for (index, run) in runs.iter().enumerate() {
        if index != 1 {
            assert_resolved(&trace, run, "a lookup beside the undecodable one");
        }
    }
}

// ---------------------------------------------------------------------------
// 6. Several files

#[test]
fn two_pcaps_given_in_reverse_order_are_merged_by_time() {
    let Lookups { runs, pcap, dir } = capture_four_lookups();
    // Split within the second lookup: its queries in the first file, its
    // answers in the second.
    let split = 6;
    assert!(
        pcap.holds(split - 1, label_of(&runs[1])) && pcap.holds(split, label_of(&runs[1])),
        "the split cuts the second lookup"
    );
    let whole = write_input(dir.path(), "whole.pcap", &pcap.bytes);
    let early = write_input(dir.path(), "early.pcap", &pcap.with_records(0..split));
    let late = write_input(
        dir.path(),
        "late.pcap",
        &pcap.with_records(split..pcap.records.len()),
    );

    let merged = analyzed_whole(&[&late, &early]);
    let single = analyzed_whole(&[&whole]);
    for run in &runs {
        assert_resolved(&merged, run, "late.pcap early.pcap");
    }
    assert_eq!(
        lookup_keys(&merged.lookups),
        lookup_keys(&single.lookups),
        "lookups"
    );
    assert_eq!(
        attempt_keys(&merged.attempts),
        attempt_keys(&single.attempts),
        "attempts"
    );
    let in_order = |trace: &Trace| -> Vec<(String, Option<u16>, bool)> {
        trace
            .messages
            .iter()
            .map(|m| (m.ts.clone(), m.id, m.qr == Some(true)))
            .collect()
    };
    assert_eq!(
        in_order(&merged),
        in_order(&single),
        "messages in time order"
    );
    assert_eq!(merged.summary.messages, pcap.records.len() as u64);
}
