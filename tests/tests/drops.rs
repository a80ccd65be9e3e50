//! DNS packets the kernel drops, named with the kernel's reason and the
//! process they belonged to: a netfilter rule dropping a resolver's AAAA
//! queries, a receive buffer too small for a flood of answers, and an
//! answer that came after its client had closed the socket. Each is made
//! in the test's own namespaces, with real resolvers and servers.

use std::{io::Write as _, net::SocketAddr, process::Stdio};

use dnstrace_tests::{
    clients::{Client, Lookup},
    netns::{Family, Netns, Topology},
    process::run,
    servers::{DnsServer, ServerKind},
    trace::{Drop, Trace, Tracer},
    unique_name,
};

/// The drops of `pid`, with their reasons, for the failure message.
fn drops_of(trace: &Trace, pid: u32) -> Vec<&Drop> {
    trace.drops.iter().filter(|d| d.pid == Some(pid)).collect()
}

/// Bytes of a name in DNS wire form (labels with their lengths, the root).
fn wire_len(name: &str) -> usize {
    name.trim_end_matches('.')
        .split('.')
        .map(|label| label.len() + 1)
        .sum::<usize>()
        + 1
}

/// Loads an nftables ruleset into namespace `ns`; the namespace takes it
/// with it when the test ends.
fn nft(ns: &Netns, ruleset: &str) {
    let mut child = ns
        .command("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("run nft");
    child
        .stdin
        .take()
        .expect("nft stdin")
        .write_all(ruleset.as_bytes())
        .expect("write the ruleset");
    let status = child.wait().expect("wait for nft");
    assert!(status.success(), "nft refused:\n{ruleset}");
}

#[test]
fn aaaa_queries_dropped_by_netfilter_are_named_for_the_resolver() {
    let net = Topology::new();
    let server = DnsServer::start(ServerKind::Knot, &net);
    let address = server.socket(Family::V4);
    let lookup = Lookup::new("getent", address).with_resolv_conf("options timeout:1 attempts:2");
    // Drop the AAAA queries for this name as they come in to the server's
    // namespace, as a node drops a pod's packets: the client does not
    // know, and waits. The type follows the UDP header, the DNS header and
    // the name.
    let qtype_bits = (8 + 12 + wire_len(&lookup.domain)) * 8;
    nft(
        &net.server,
        &format!(
            "table inet dnstrace_test {{\n  chain in {{\n    type filter hook input priority 0;\n    \
             udp dport {} @th,{qtype_bits},16 28 drop\n  }}\n}}\n",
            address.port()
        ),
    );
    let paused = Client::Getent.prepare(&net, &lookup);
    // No filter: a packet dropped where it has no socket has no owner the
    // kernel could filter on.
    let mut tracer = Tracer::start(dnstrace_tests::trace::EVERYTHING);
    let (status, run) = paused.run_to_exit();
    assert!(status.success(), "getent gets the A answer: {run:?}");
    tracer.wait_for_line("the dropped AAAA query", |line| {
        line["kind"] == "drop" && line["pid"] == run.pid
    });
    // Each AAAA attempt times out (1 s, then the slack), then its lookup
    // settles and is diagnosed.
    tracer.wait_for_line("the kernel_drop diagnosis", |line| {
        line["kind"] == "diagnosis" && line["pid"] == run.pid && line["cause"] == "kernel_drop"
    });
    let trace = tracer.stop();

    assert!(
        trace
            .stderr
            .iter()
            .any(|line| line.contains("kernel drops of DNS packets watched")),
        "the start message says drops are watched: {:#?}",
        trace.stderr
    );
    let drops = drops_of(&trace, run.pid);
    assert!(!drops.is_empty(), "no drops for getent: {:#?}", trace.drops);
    for drop in &drops {
        assert_eq!(drop.reason, "NETFILTER_DROP", "{drop:#?}");
        // nft_do_chain on kernels where nftables names its own drops,
        // nf_hook_slow before.
        assert!(
            drop.location.starts_with("nft_do_chain+")
                || drop.location.starts_with("nf_hook_slow+"),
            "{drop:#?}"
        );
        assert_eq!(drop.qtype.as_deref(), Some("AAAA"), "only AAAA: {drop:#?}");
        assert_eq!(drop.qname.as_deref(), Some(run.domain.as_str()));
        assert_eq!(drop.direction, "send");
        assert_eq!(drop.qr, Some(false));
        assert_eq!(drop.remote, address);
        assert_eq!(drop.drop_netns, Some(net.server.inode()), "{drop:#?}");
    }
    // The A query went through, and was answered.
    assert!(
        trace.messages.iter().any(|m| m.pid == Some(run.pid)
            && m.qr == Some(true)
            && m.qtype.as_deref() == Some("A")),
        "the A answer reached getent"
    );
    // Counted, per reason (other tests' drops too: the tracer has no
    // filter).
    assert_eq!(trace.summary.drops, trace.drops.len() as u64);
    assert_eq!(
        trace.summary.drops_by_reason.values().sum::<u64>(),
        trace.summary.drops
    );
    assert!(
        trace.summary.drops_by_reason["NETFILTER_DROP"] >= drops.len() as u64,
        "{:?}",
        trace.summary.drops_by_reason
    );

    // Each dropped query is its attempt's: the AAAA attempts say so and
    // timed out, the A attempts were not dropped.
    let attempts: Vec<_> = trace
        .attempts
        .iter()
        .filter(|a| a.pid == run.pid && a.qname == run.domain)
        .collect();
    let (aaaa, a): (Vec<_>, Vec<_>) = attempts.iter().copied().partition(|a| a.qtype == "AAAA");
    assert!(!aaaa.is_empty() && !a.is_empty(), "{attempts:#?}");
    for attempt in &aaaa {
        assert_eq!(attempt.dropped.as_deref(), Some("query"), "{attempt:#?}");
        assert_eq!(attempt.drop_reason.as_deref(), Some("NETFILTER_DROP"));
        assert_eq!(attempt.outcome, "timeout", "{attempt:#?}");
    }
    for attempt in &a {
        assert_eq!(
            attempt.dropped, None,
            "the A query is not blamed: {attempt:#?}"
        );
    }

    // kernel_drop for getent and the server, naming a rule (conntrack's
    // counters did not move), on the AAAA queries' evidence alone; their
    // timeouts are not also diagnosed as timeouts.
    let diagnoses = trace.diagnoses_of(run.pid);
    let kernel_drop = diagnoses
        .iter()
        .find(|d| d.cause == "kernel_drop")
        .unwrap_or_else(|| panic!("no kernel_drop: {diagnoses:#?}"));
    assert_eq!(kernel_drop.server, Some(address));
    assert!(
        kernel_drop.explanation.contains("NETFILTER_DROP")
            && kernel_drop.explanation.contains("firewall rule"),
        "{kernel_drop:#?}"
    );
    assert!(
        kernel_drop.fix.contains("single-request-reopen"),
        "{kernel_drop:#?}"
    );
    let a_ids: Vec<u16> = a.iter().map(|a| a.id).collect();
    assert!(
        kernel_drop.evidence.iter().all(|id| !a_ids.contains(id)),
        "the A queries are not evidence: {kernel_drop:#?} {a_ids:?}"
    );
    assert!(
        !diagnoses
            .iter()
            .any(|d| d.cause == "timeout" || d.cause == "parallel_query_loss"),
        "{diagnoses:#?}"
    );
}

/// Runs `script` with python3 in the client namespace, asking `address`
/// about `domain`; the pid it prints first.
fn run_client_script(net: &Topology, script: &str, address: SocketAddr, domain: &str) -> u32 {
    let output = run(net.client.command("python3").args([
        "-c",
        script,
        &address.ip().to_string(),
        &address.port().to_string(),
        domain,
    ]));
    output.trim().parse().expect("the client's pid")
}

/// The queries [`FLOOD`] sends, ids 1 to 30.
const FLOOD_QUERIES: u16 = 30;

/// Sends 30 A queries (fewer than a lookup's 32 attempts) from a socket
/// with the smallest receive buffer, reads none of the answers, and closes it once they had time to
/// come. Prints its pid first.
const FLOOD: &str = r#"
import os, socket, struct, sys, time
server, port, domain = sys.argv[1], int(sys.argv[2]), sys.argv[3]
print(os.getpid(), flush=True)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
s.connect((server, port))
name = b"".join(bytes([len(l)]) + l.encode() for l in domain.split(".")) + b"\0"
for i in range(30):
    s.send(struct.pack(">HHHHHH", i + 1, 0x0100, 1, 0, 0, 0) + name + struct.pack(">HH", 1, 1))
time.sleep(1)
s.close()
"#;

#[test]
fn answers_beyond_a_full_receive_buffer_are_socket_rcvbuff_drops() {
    let net = Topology::new();
    let server = DnsServer::start(ServerKind::Knot, &net);
    let address = server.socket(Family::V4);
    let domain = format!("{}.example.test", unique_name("flood"));
    let dir = tempfile::tempdir().expect("temp dir");
    let pcapng = dir.path().join("drops.pcapng");
    let mut tracer = Tracer::start([std::ffi::OsStr::new("-w"), pcapng.as_os_str()]);
    let pid = run_client_script(&net, FLOOD, address, &domain);
    tracer.wait_for_line("a response dropped at the full buffer", |line| {
        line["kind"] == "drop" && line["pid"] == pid
    });
    // The unanswered attempts time out (glibc's default 5 s, then the
    // slack), then the lookup settles and is diagnosed.
    tracer.wait_for_line("the kernel_drop diagnosis", |line| {
        line["kind"] == "diagnosis" && line["pid"] == pid && line["cause"] == "kernel_drop"
    });
    // The last queries can make a lookup of their own (when the answer the
    // socket kept came before they left): each attempt is written once its
    // lookup settles, so wait for every one.
    for id in 1..=FLOOD_QUERIES {
        tracer.wait_for_line(&format!("the attempt of query {id}"), |line| {
            line["kind"] == "attempt" && line["pid"] == pid && line["id"] == id
        });
    }
    let trace = tracer.stop();

    let drops = drops_of(&trace, pid);
    assert!(
        !drops.is_empty(),
        "no drops for the client: {:#?}",
        trace.drops
    );
    for drop in &drops {
        assert_eq!(drop.reason, "SOCKET_RCVBUFF", "{drop:#?}");
        assert_eq!(drop.direction, "recv");
        assert_eq!(drop.qr, Some(true));
        assert_eq!(drop.qname.as_deref(), Some(format!("{domain}.").as_str()));
        assert_eq!(drop.remote, address);
        assert_ne!(drop.socket_cookie, 0, "the receiving socket: {drop:#?}");
    }
    // Each dropped answer is its attempt's, which never had it.
    let dropped: Vec<_> = trace
        .attempts
        .iter()
        .filter(|a| a.pid == pid && a.dropped.is_some())
        .collect();
    assert_eq!(dropped.len(), drops.len(), "{dropped:#?}");
    for attempt in &dropped {
        assert_eq!(attempt.dropped.as_deref(), Some("response"), "{attempt:#?}");
        assert_eq!(attempt.drop_reason.as_deref(), Some("SOCKET_RCVBUFF"));
        // Never answered: it timed out, or (the same question asked 30
        // times) was given up for a copy's answer.
        assert!(
            ["timeout", "superseded"].contains(&attempt.outcome.as_str()),
            "{attempt:#?}"
        );
        assert_eq!(attempt.response_rcode, None, "{attempt:#?}");
    }
    let diagnoses = trace.diagnoses_of(pid);
    let kernel_drop = diagnoses
        .iter()
        .find(|d| d.cause == "kernel_drop")
        .unwrap_or_else(|| panic!("no kernel_drop: {diagnoses:#?}"));
    assert_eq!(kernel_drop.server, Some(address));
    assert!(
        kernel_drop.explanation.contains("receive buffer was full"),
        "{kernel_drop:#?}"
    );
    // No more dropped than the client was sent.
    assert!(drops.len() < 30, "{} drops of 30 answers", drops.len());

    // The pcapng has each drop as a packet, its reason in the comment.
    let comments = run(std::process::Command::new("tshark").args([
        "-r",
        pcapng.to_str().expect("UTF-8 path"),
        "-Y",
        "frame.comment contains \"dropped=SOCKET_RCVBUFF\"",
        "-T",
        "fields",
        "-e",
        "frame.comment",
    ]));
    let dropped_packets = comments
        .lines()
        .filter(|line| line.contains(&format!("pid={pid} ")))
        .count();
    assert_eq!(dropped_packets, drops.len(), "{comments}");
}

/// Sends one A query, closes the socket at once and exits: the answer
/// comes to a port nobody listens on. Prints its pid.
const GIVE_UP: &str = r#"
import os, socket, struct, sys
server, port, domain = sys.argv[1], int(sys.argv[2]), sys.argv[3]
print(os.getpid(), flush=True)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((server, port))
name = b"".join(bytes([len(l)]) + l.encode() for l in domain.split(".")) + b"\0"
s.send(struct.pack(">HHHHHH", 4242, 0x0100, 1, 0, 0, 0) + name + struct.pack(">HH", 1, 1))
s.close()
"#;

#[test]
fn an_answer_after_the_client_closed_its_socket_is_a_no_socket_drop() {
    let net = Topology::new();
    let shaping = DnsServer::start(ServerKind::Shaping, &net);
    let address = shaping.socket(Family::V4);
    // The shaping server answers under this subzone after 1.5 s: long
    // after the client, however slow, has closed its socket.
    let domain = format!("{}.late.example.test", unique_name("late"));
    let dir = tempfile::tempdir().expect("temp dir");
    let metrics = dir.path().join("metrics.prom");
    let mut tracer = Tracer::start([std::ffi::OsStr::new("--metrics-file"), metrics.as_os_str()]);
    let pid = run_client_script(&net, GIVE_UP, address, &domain);
    let qname = format!("{domain}.");
    tracer.wait_for_line("the late answer", |line| {
        line["kind"] == "drop" && line["qname"] == qname.as_str()
    });
    tracer.wait_for_line("the kernel_drop diagnosis", |line| {
        line["kind"] == "diagnosis" && line["pid"] == pid && line["cause"] == "kernel_drop"
    });
    let trace = tracer.stop();

    let drops: Vec<&Drop> = trace
        .drops
        .iter()
        .filter(|d| d.qname.as_deref() == Some(qname.as_str()))
        .collect();
    let [drop] = drops[..] else {
        panic!("one drop for the late answer: {drops:#?}");
    };
    assert_eq!(drop.reason, "NO_SOCKET", "{drop:#?}");
    assert_eq!(drop.direction, "recv");
    assert_eq!(drop.qr, Some(true));
    assert_eq!(drop.id, Some(4242));
    assert_eq!(drop.drop_netns, Some(net.client.inode()));
    // No socket: given to the process whose query left on the same ports.
    assert_eq!(drop.pid, Some(pid), "{drop:#?}");
    assert_eq!(drop.comm.as_deref(), Some("python3"));

    // A late answer the client never saw.
    let attempt = trace
        .attempts
        .iter()
        .find(|a| a.pid == pid && a.id == 4242)
        .unwrap_or_else(|| panic!("no attempt: {:#?}", trace.attempts));
    assert_eq!(attempt.outcome, "late", "{attempt:#?}");
    assert_eq!(attempt.dropped.as_deref(), Some("response"));
    assert_eq!(attempt.drop_reason.as_deref(), Some("NO_SOCKET"));
    assert_eq!(attempt.response_read, Some(false), "{attempt:#?}");
    let diagnoses = trace.diagnoses_of(pid);
    let kernel_drop = diagnoses
        .iter()
        .find(|d| d.cause == "kernel_drop")
        .unwrap_or_else(|| panic!("no kernel_drop: {diagnoses:#?}"));
    assert_eq!(kernel_drop.server, Some(address));
    assert!(
        kernel_drop.explanation.contains("late answer it never saw"),
        "{kernel_drop:#?}"
    );
    // Counted by reason in the metrics written at exit.
    let exposition = std::fs::read_to_string(&metrics).expect("the metrics file");
    let counted = exposition
        .lines()
        .find_map(|line| line.strip_prefix("dnstrace_kernel_drops_total{reason=\"NO_SOCKET\"} "))
        .and_then(|count| count.parse::<u64>().ok());
    assert!(counted >= Some(1), "{exposition}");
}
