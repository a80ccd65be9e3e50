//! DNS over TCP, framed by sequence number: each message reported exactly
//! once, attributed to the socket's owner, whatever the segments did on the
//! way: a zone transfer whose messages span 64 KB segments, with length
//! prefixes far past the bytes copied out, and lookups whose query segments
//! were dropped and retransmitted (from softirq, where the current task is
//! not the sender).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use tempfile::TempDir;

use dnstrace_tests::{
    netns::{Family, Netns, ServerAddrs, Topology},
    process::{Daemon, PATIENCE, poll_until, run},
    servers::{DnsServer, ServerKind, dig_target},
    trace::{Direction, EVERYTHING, Message, Trace, Tracer},
    unique_name,
};

/// The veth end in each namespace (tests/src/netns.rs).
const LINK: &str = "dns0";

/// Records in the transferred zone: about 1.2 MB, some 19 messages of up to
/// 64 KB.
const ZONE_RECORDS: usize = 9000;

#[test]
fn a_zone_transfer_is_reported_message_by_message() {
    let net = Topology::new();
    let zone = format!("{}.test", unique_name("axfr"));
    let (knot, server, _knot_dir) = start_knot_with_big_zone(&net, &zone);
    let knot_pid = knot.pid();
    let wire = TcpCapture::start(&net.server);
    let tracer = Tracer::start(EVERYTHING);

    let kdig = net
        .client
        .command("kdig")
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), "+tcp", "+time=20", "AXFR"])
        .arg(&zone)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kdig");
    let kdig_pid = kdig.id();
    let output = kdig.wait_with_output().expect("wait for kdig");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "kdig failed: {stdout}");
    // ";; Received 1234567 B (19 messages, 9004 records)"
    let received = stdout
        .lines()
        .find_map(|line| {
            line.split_once(";; Received ")?
                .1
                .split_once(" (")?
                .1
                .split_once(" messages")
        })
        .map(|(count, _)| count.parse::<usize>().expect("kdig's message count"))
        .unwrap_or_else(|| panic!("kdig printed no count: {stdout}"));
    assert!(received >= 10, "the zone took only {received} messages");

    let truth = wire.stop(received + 1);
    let trace = tracer.stop();
    drop(knot);

    let mut answers_on_wire: Vec<(u16, u16)> = truth
        .iter()
        .filter(|m| m.from_server)
        .map(|m| (m.id, m.answers))
        .collect();
    answers_on_wire.sort_unstable();
    assert_eq!(answers_on_wire.len(), received, "tshark and kdig disagree");
    // The transfer's two sockets, known by the query for the zone's unique
    // name; tests running alongside use the same addresses.
    let sockets: Vec<u64> = trace
        .messages
        .iter()
        .filter(|m| m.qr == Some(false) && m.qname.as_deref() == Some(&format!("{zone}.")[..]))
        .map(|m| m.socket_cookie)
        .collect();
    assert_eq!(sockets.len(), 2, "the AXFR query, sent and received once");
    let transfer: Vec<&Message> = trace
        .messages
        .iter()
        .filter(|m| sockets.contains(&m.socket_cookie))
        .collect();
    for (side, direction, pid, local) in [
        ("kdig", Direction::Recv, kdig_pid, false),
        ("knot", Direction::Send, knot_pid, true),
    ] {
        let answers: Vec<&Message> = transfer
            .iter()
            .copied()
            .filter(|m| m.direction == direction && (m.local == server) == local)
            .collect();
        let mut reported: Vec<(u16, u16)> = answers
            .iter()
            .map(|m| (m.id.unwrap_or(0), m.answers.unwrap_or(0)))
            .collect();
        reported.sort_unstable();
        assert_eq!(
            reported,
            answers_on_wire,
            "{side}: (id, answers) of each message, as reported and as on the wire;\n{}",
            describe(&answers)
        );
        for message in &answers {
            assert_eq!(message.pid, Some(pid), "{side}: {message:?}");
            assert_eq!(message.qr, Some(true), "{side}: {message:?}");
            assert_eq!(message.decode_error, None, "{side}: {message:?}");
            assert_eq!(
                message.truncated_capture,
                message.size > 2048,
                "{side}: {message:?}"
            );
        }
    }
    // Nothing else on the two sockets: the query once each way, from kdig.
    let queries: Vec<&Message> = transfer
        .iter()
        .copied()
        .filter(|m| m.qr != Some(true))
        .collect();
    assert_eq!(queries.len(), 2, "{}", describe(&queries));
    assert!(
        queries
            .iter()
            .any(|m| m.direction == Direction::Send && m.pid == Some(kdig_pid)),
        "{}",
        describe(&queries)
    );
    assert_eq!(trace.summary.undecodable, 0, "{:?}", trace.summary);
    assert_no_false_verdict(&trace, kdig_pid);
}

/// Queries the client writes at once, in one segment: more than the kernel
/// frames from one.
const BUNDLED_QUERIES: u16 = 6;

/// The most messages the kernel frames from one segment on cgroup-skb
/// (`MAX_TCP_MESSAGES_PER_SEGMENT` in dnstrace-common).
const FRAMED_PER_SEGMENT: usize = 4;

/// A client writes six framed queries in one segment; the kernel frames
/// the first four (the most it frames from a segment), gives the stream up
/// rather than guess where the rest begin, and counts that once. The
/// server never answers, and the filter leaves its side out: a stream the
/// filters leave out is not counted, so the count is exactly one.
#[test]
fn a_segment_with_more_messages_than_framed_is_counted_as_an_unframed_stream() {
    let net = Topology::new();
    let addrs = ServerAddrs::host(SILENT_SERVER_HOST);
    net.add_server_addrs(addrs);
    let server = Daemon::spawn(
        "silent server",
        net.server
            .command("python3")
            .args(["-c", SILENT_SERVER, &addrs.v4.to_string()]),
    );
    let label = unique_name("bundle");
    let tracer = Tracer::start(["--comm", BUNDLING_COMM]);
    let client = net
        .client
        .command("python3")
        .args(["-c", BUNDLING_CLIENT])
        .args([
            addrs.v4.to_string(),
            BUNDLED_QUERIES.to_string(),
            label.clone(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python3");
    let client_pid = client.id();
    let output = client.wait_with_output().expect("wait for python3");
    let trace = tracer.stop();
    assert!(
        output.status.success(),
        "the client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (status, stderr) = server.wait();
    assert!(status.success(), "the silent server failed: {stderr:?}");

    let sent: Vec<&Message> = trace
        .messages
        .iter()
        .filter(|m| m.pid == Some(client_pid) && m.direction == Direction::Send)
        .collect();
    assert_eq!(sent.len(), FRAMED_PER_SEGMENT, "{}", describe(&sent));
    for (message, number) in sent.iter().zip(0u16..) {
        assert_eq!(message.proto, "tcp", "{message:?}");
        assert_eq!(
            message.qname.as_deref(),
            Some(format!("q{number}.{label}.test.").as_str()),
            "the first queries of the segment, in order: {}",
            describe(&sent)
        );
    }
    assert_eq!(
        trace.summary.unframed_tcp_streams, 1,
        "the client's sending side given up once, the server's left out: {:?}",
        trace.summary
    );
}

/// The silent server's address in the server namespace (tests/src/netns.rs
/// hands out 11 to 14 to the DNS servers).
const SILENT_SERVER_HOST: u8 = 41;

/// Accepts one connection on port 53 of the address given and reads it to
/// its end, answering nothing; for 30 s at most.
const SILENT_SERVER: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 53))
s.listen(1)
s.settimeout(30)
c, _ = s.accept()
c.settimeout(30)
while c.recv(65536):
    pass
"#;

/// The client's thread name, which the tracer's filter selects.
const BUNDLING_COMM: &str = "bundler";

/// Names its thread BUNDLING_COMM, connects to port 53 of the address
/// given (retrying while the server starts, 5 s at most), writes N
/// length-prefixed queries for qI.LABEL.test. A in one call, and closes.
const BUNDLING_CLIENT: &str = r#"
import ctypes, socket, struct, sys, time
ctypes.CDLL(None).prctl(15, b"bundler", 0, 0, 0)
host, count, label = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def query(i):
    q = struct.pack(">6H", 0x5100 + i, 0x0100, 1, 0, 0, 0)
    for part in ("q%d" % i, label, "test"):
        q += bytes([len(part)]) + part.encode()
    q += b"\0" + struct.pack(">2H", 1, 1)
    return struct.pack(">H", len(q)) + q
for attempt in range(50):
    try:
        s = socket.create_connection((host, 53), timeout=5)
        break
    except ConnectionRefusedError:
        time.sleep(0.1)
else:
    sys.exit("the silent server never listened")
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.sendall(b"".join(query(i) for i in range(count)))
time.sleep(0.2)
s.close()
"#;

#[test]
fn dropped_query_segments_are_reported_once_and_attributed_to_dig() {
    let net = Topology::new();
    let knot = DnsServer::start(ServerKind::Knot, &net);
    let server = knot.socket(Family::V4);
    // Every other query segment that leaves the client is dropped: each
    // dig's first one, so the kernel retransmits it from its timer.
    nft(
        &net.client,
        "tcp dport 53 tcp flags & psh == psh numgen inc mod 2 == 0 counter drop",
    );
    let tracer = Tracer::start(EVERYTHING);
    let lookups = run_digs(&net, server, "dropped", 4);
    let trace = tracer.stop();
    let dropped = run(net.client.command("nft").args(["list", "ruleset"]));
    assert!(
        dropped.contains(&format!("packets {} ", lookups.len())),
        "not each dig lost its query segment: {dropped}"
    );
    check_lookups(&trace, &lookups, knot.pid());
}

#[test]
fn lookups_under_random_loss_are_reported_once_and_attributed_to_dig() {
    let net = Topology::new();
    let knot = DnsServer::start(ServerKind::Knot, &net);
    let server = knot.socket(Family::V4);
    // 20 % of TCP packets each way but SYNs: a lost SYN is retried after
    // 1, 3, 7 and 15 s, and a few lost in a row would outlast dig. A lost
    // handshake's last ACK is recovered by the data that follows it.
    nft(
        &net.client,
        "tcp dport 53 tcp flags & syn == 0 numgen random mod 5 == 0 drop",
    );
    nft(
        &net.server,
        "tcp sport 53 tcp flags & syn == 0 numgen random mod 5 == 0 drop",
    );
    let tracer = Tracer::start(EVERYTHING);
    let lookups = run_digs(&net, server, "lossy", 12);
    let trace = tracer.stop();
    check_lookups(&trace, &lookups, knot.pid());
}

/// One `dig +tcp` lookup: its name and pid.
struct DigLookup {
    qname: String,
    pid: u32,
}

/// Runs `count` digs one after another, each for a name of its own, and
/// checks each was answered.
fn run_digs(net: &Topology, server: SocketAddr, label: &str, count: usize) -> Vec<DigLookup> {
    (0..count)
        .map(|n| {
            let qname = format!("{}.example.test.", unique_name(&format!("{label}{n}")));
            // Data is retransmitted from 200 ms on, doubling: dig waits
            // long enough for several losses in a row.
            let child = net
                .client
                .command("dig")
                .args(dig_target(server))
                .args(["+tcp", "+time=20", "+tries=1", "+short", &qname])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn dig");
            let pid = child.id();
            let output = child.wait_with_output().expect("wait for dig");
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert!(
                output.status.success() && stdout.contains("192.0.2.1"),
                "dig {qname} was not answered: {stdout}"
            );
            DigLookup { qname, pid }
        })
        .collect()
}

/// Each lookup's query and answer are reported once on each side, by the
/// process that owns the socket, and dig's lookups are answered lookups.
fn check_lookups(trace: &Trace, lookups: &[DigLookup], server_pid: u32) {
    for lookup in lookups {
        let messages: Vec<&Message> = trace
            .messages
            .iter()
            .filter(|m| m.qname.as_deref() == Some(&lookup.qname[..]))
            .collect();
        let mut seen: BTreeMap<(bool, Direction), Vec<&Message>> = BTreeMap::new();
        for message in &messages {
            let client_side = message.remote.port() == 53;
            seen.entry((client_side, message.direction))
                .or_default()
                .push(message);
        }
        // A server's new connection has no owner until it sends: the query
        // it receives first has no process (never another's).
        for (client_side, direction, pid) in [
            (true, Direction::Send, Some(lookup.pid)),
            (true, Direction::Recv, Some(lookup.pid)),
            (false, Direction::Recv, None),
            (false, Direction::Send, Some(server_pid)),
        ] {
            let found = seen.remove(&(client_side, direction)).unwrap_or_default();
            assert_eq!(
                found.len(),
                1,
                "{} {direction:?} on the {} side: once, not {};\n{}",
                lookup.qname,
                if client_side { "client" } else { "server" },
                found.len(),
                describe(&messages)
            );
            assert_eq!(
                found[0].pid, pid,
                "attributed to another process: {:?}",
                found[0]
            );
            assert_eq!(found[0].proto, "tcp", "{:?}", found[0]);
        }
        assert_no_false_verdict(trace, lookup.pid);
        let attempts: Vec<_> = trace
            .attempts
            .iter()
            .filter(|a| a.pid == lookup.pid)
            .collect();
        assert!(
            !attempts.is_empty() && attempts.iter().all(|a| a.outcome == "answered"),
            "{}: {attempts:?}",
            lookup.qname
        );
    }
    let unattributed: Vec<&Message> = trace
        .messages
        .iter()
        .filter(|m| m.proto == "tcp" && m.pid == Some(0))
        .collect();
    assert!(
        unattributed.is_empty(),
        "pid 0: {}",
        describe(&unattributed)
    );
}

/// Nothing dnstrace said of `pid` blames the network or the server.
fn assert_no_false_verdict(trace: &Trace, pid: u32) {
    let diagnoses = trace.diagnoses_of(pid);
    assert!(diagnoses.is_empty(), "pid {pid}: {diagnoses:?}");
    let bad: Vec<_> = trace
        .attempts
        .iter()
        .filter(|a| a.pid == pid && a.outcome != "answered")
        .collect();
    assert!(bad.is_empty(), "pid {pid}: {bad:?}");
    let failed: Vec<_> = trace
        .lookups
        .iter()
        .filter(|l| l.pid == pid && l.outcome == "failed")
        .collect();
    assert!(failed.is_empty(), "pid {pid}: {failed:?}");
}

fn describe(messages: &[&Message]) -> String {
    let mut text = String::new();
    for m in messages.iter().take(40) {
        let _ = writeln!(
            text,
            "  {:?} {} -> {} pid {:?} id {:?} qr {:?} answers {:?} size {} truncated {} error {:?}",
            m.direction,
            m.local,
            m.remote,
            m.pid,
            m.id,
            m.qr,
            m.answers,
            m.size,
            m.truncated_capture,
            m.decode_error
        );
    }
    text
}

/// Adds a rule to an egress chain on the namespace's veth end.
fn nft(netns: &Netns, rule: &str) {
    let ruleset = format!(
        "table netdev loss {{\n  chain egress {{\n    \
         type filter hook egress device {LINK} priority 0;\n    {rule}\n  }}\n}}\n"
    );
    let mut command = netns.command("nft");
    command.args(["-f", "-"]).stdin(Stdio::piped());
    let mut child = command.spawn().expect("spawn nft");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), ruleset.as_bytes())
        .expect("write the ruleset");
    assert!(
        child.wait().expect("nft").success(),
        "nft refused {ruleset}"
    );
}

/// Knot serving `zone`, of [`ZONE_RECORDS`] TXT records, to anyone who asks
/// for a transfer.
fn start_knot_with_big_zone(net: &Topology, zone: &str) -> (Daemon, SocketAddr, TempDir) {
    let addrs = ServerKind::Knot.addrs();
    net.add_server_addrs(addrs);
    let server = addrs.socket(Family::V4, 53);
    let temp = tempfile::tempdir().expect("knot dir");
    let dir = temp.path();
    let path = dir.display();
    let mut records = format!(
        "$ORIGIN {zone}.\n$TTL 300\n@ SOA ns hostmaster 1 3600 900 604800 300\n@ NS ns\nns A {}\n",
        server.ip()
    );
    for n in 0..ZONE_RECORDS {
        let _ = writeln!(records, "r{n} TXT \"{}\"", "x".repeat(100));
    }
    fs::write(dir.join("zone"), records).expect("write zone");
    let config = format!(
        "server:\n  rundir: \"{path}\"\n  listen: [ {ip}@53 ]\n  \
         udp-workers: 1\n  tcp-workers: 1\n  background-workers: 1\n\
         control:\n  listen: \"{path}/knot.sock\"\n\
         database:\n  storage: \"{path}\"\n\
         log:\n  - target: stderr\n    any: info\n\
         acl:\n  - id: anyone\n    action: transfer\n\
         zone:\n  - domain: {zone}\n    storage: \"{path}\"\n    file: \"zone\"\n    acl: anyone\n",
        ip = server.ip()
    );
    fs::write(dir.join("knot.conf"), config).expect("write knot.conf");
    let mut command = net.server.command("knotd");
    command.args(["-c", &format!("{path}/knot.conf")]);
    let mut daemon = Daemon::spawn("knotd", &mut command);
    poll_until("knot serving the zone", PATIENCE, || {
        daemon.assert_running();
        let output = net
            .server
            .command("kdig")
            .arg(format!("@{}", server.ip()))
            .args(["+time=1", "+short", "SOA", zone])
            .output()
            .expect("run kdig");
        String::from_utf8_lossy(&output.stdout).contains("hostmaster")
    });
    (daemon, server, temp)
}

/// One DNS message on the wire, as tshark reassembled it.
struct WireMessage {
    from_server: bool,
    id: u16,
    answers: u16,
}

/// tcpdump on TCP port 53 in a namespace: the ground truth, decoded and
/// reassembled by tshark.
struct TcpCapture {
    daemon: Daemon,
    file: std::path::PathBuf,
    _dir: TempDir,
}

impl TcpCapture {
    fn start(netns: &Netns) -> Self {
        let dir = tempfile::tempdir().expect("capture dir");
        let file = dir.path().join("tcp.pcap");
        let mut command = netns.command("tcpdump");
        command
            .args(["-i", LINK, "-n", "-U", "-Z", "root", "-B", "65536", "-w"])
            .arg(&file)
            .arg("tcp port 53");
        let mut daemon = Daemon::spawn("tcpdump", &mut command);
        daemon.wait_for_stderr("tcpdump: listening on", PATIENCE);
        Self {
            daemon,
            file,
            _dir: dir,
        }
    }

    /// Waits until tcpdump has written `expected` messages, then stops it
    /// and returns every message in the capture.
    fn stop(self, expected: usize) -> Vec<WireMessage> {
        let mut messages = Vec::new();
        poll_until("tcpdump writing the transfer", PATIENCE, || {
            messages = decode(&self.file);
            messages.len() >= expected
        });
        std::thread::sleep(Duration::from_millis(200));
        let (_, stderr) = self.daemon.stop(libc::SIGINT);
        assert!(
            stderr.iter().any(|l| l == "0 packets dropped by kernel"),
            "tcpdump dropped packets, so the ground truth is incomplete: {stderr:?}"
        );
        decode(&self.file)
    }
}

/// Every DNS message tshark finds in the capture, in order.
fn decode(file: &Path) -> Vec<WireMessage> {
    let output = run(Command::new("tshark")
        .arg("-r")
        .arg(file)
        .args(["-n", "-d", "tcp.port==53,dns", "-Y", "dns", "-T", "fields"])
        .args([
            "-E",
            "separator=/t",
            "-E",
            "occurrence=a",
            "-E",
            "aggregator=,",
        ])
        .args([
            "-e",
            "tcp.srcport",
            "-e",
            "dns.id",
            "-e",
            "dns.count.answers",
        ]));
    let mut messages = Vec::new();
    for line in output.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        let [port, ids, answers] = fields[..] else {
            panic!("tshark line {line:?}");
        };
        for (id, answers) in ids.split(',').zip(answers.split(',')) {
            messages.push(WireMessage {
                from_server: port == "53",
                id: u16::from_str_radix(id.trim_start_matches("0x"), 16).expect("dns.id"),
                answers: answers.parse().expect("dns.count.answers"),
            });
        }
    }
    messages
}
