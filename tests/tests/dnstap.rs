//! `--dnstap`: Debian's dnstap decoders (dnstap-ldns, BIND's dnstap-read,
//! kdig) read what dnstrace writes, to a file or through fstrm_capture on a
//! Unix socket or TCP, with the process in each record's identity; the
//! collector may come and go. `dnstrace analyze` reads dnstrace's own dnstap
//! back as it was traced, and Knot's dnstap as lookups by client address.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use dnstrace_tests::{
    clients::{Client, ClientRun, Lookup},
    dnstap::{Collector, DnstapKnot, decode, free_tcp_port},
    netns::{CLIENT_V4, Family, Topology},
    process::PATIENCE,
    servers::{DnsServer, ServerKind},
    trace::{Trace, Tracer, analyzed_whole, dnstrace_bin, readable_by_all},
};

/// Lines of `text` that mention `run`'s name.
fn lines_about<'a>(text: &'a str, run: &ClientRun) -> Vec<&'a str> {
    let name = run.domain.trim_end_matches('.');
    text.lines().filter(|line| line.contains(name)).collect()
}

/// How many of `lines` show the dnstap type `mnemonic` ("SQ", "SR", …) as
/// a word of their own.
fn count_type(lines: &[&str], mnemonic: &str) -> usize {
    lines
        .iter()
        .filter(|line| line.split_whitespace().any(|word| word == mnemonic))
        .count()
}

/// The trace's queries and responses of `run`'s process.
fn queries_and_responses(trace: &Trace, run: &ClientRun) -> (usize, usize) {
    let ours = trace.messages.iter().filter(|m| m.pid == Some(run.pid));
    let (responses, queries): (Vec<_>, Vec<_>) = ours.partition(|m| m.qr == Some(true));
    (queries.len(), responses.len())
}

/// A lookup line's pid, comm, name, outcome and attempts.
type LookupSummary = (Option<u32>, Option<String>, String, String, u32);

/// Traces getent's lookup in its own namespace with JSON, pcapng and
/// dnstap written at once; returns the lookup and the trace.
fn traced_lookup(dir: &Path, label: &str) -> (ClientRun, Trace) {
    let net = Topology::new();
    let server = DnsServer::start(ServerKind::Knot, &net);
    let pcapng = dir.join("trace.pcapng").display().to_string();
    let dnstap = dir.join("trace.dnstap").display().to_string();
    let tracer = Tracer::start([
        "--netns",
        net.client.name(),
        "-w",
        &pcapng,
        "--dnstap",
        &dnstap,
    ]);
    let run = Client::Getent.run(&net, &Lookup::new(label, server.socket(Family::V4)));
    let trace = tracer.stop();
    assert_eq!(
        queries_and_responses(&trace, &run),
        (2, 2),
        "getent's A and AAAA queries and responses:\n{}",
        trace.correlation_of(run.pid)
    );
    // The pcapng was written alongside: one packet per message.
    let packets = decode(
        "tshark",
        &["-r", &pcapng, "-T", "fields", "-e", "frame.number"],
    );
    assert_eq!(packets.lines().count(), trace.messages.len());
    (run, trace)
}

#[test]
fn dnstap_decoders_read_the_file_with_the_process_in_each_identity() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (run, trace) = traced_lookup(dir.path(), "dnstap-file");
    let file = dir.path().join("trace.dnstap").display().to_string();
    let identity = format!("getent[{}]", run.pid);

    // dnstap-ldns: one line per record, with the type's mnemonic.
    let quiet = decode("dnstap-ldns", &["-r", &file]);
    assert_eq!(quiet.lines().count(), trace.messages.len(), "{quiet}");
    let ours = lines_about(&quiet, &run);
    assert_eq!(count_type(&ours, "SQ"), 2, "{quiet}");
    assert_eq!(count_type(&ours, "SR"), 2, "{quiet}");
    let yaml = decode("dnstap-ldns", &["-y", "-r", &file]);
    assert_eq!(yaml.matches("type: STUB_QUERY").count(), 2, "{yaml}");
    assert_eq!(yaml.matches("type: STUB_RESPONSE").count(), 2, "{yaml}");
    assert_eq!(yaml.matches(&identity).count(), 4, "{yaml}");
    assert!(yaml.contains("version: \"dnstrace "), "{yaml}");

    // BIND's dnstap-read.
    let summary = decode("dnstap-read", &[&file]);
    let ours = lines_about(&summary, &run);
    assert_eq!(ours.len(), 4, "{summary}");
    assert_eq!(count_type(&ours, "SQ"), 2, "{summary}");
    assert_eq!(count_type(&ours, "SR"), 2, "{summary}");
    let yaml = decode("dnstap-read", &["-y", &file]);
    assert_eq!(
        yaml.matches(&format!("identity: {identity}")).count(),
        4,
        "{yaml}"
    );

    // kdig prints queries only with +qr: a stub's are sent, its responses
    // received.
    let kdig = decode("kdig", &["-G", &file, "+qr"]);
    let questions = kdig
        .lines()
        .filter(|line| line.starts_with(";; ") && line.contains(&run.domain))
        .count();
    assert_eq!(questions, 4, "{kdig}");
    assert_eq!(kdig.matches(";; Sent ").count(), 2, "{kdig}");
    assert_eq!(kdig.matches(";; Received ").count(), 2, "{kdig}");
}

#[test]
fn analyze_reads_dnstraces_own_dnstap_back_as_traced() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (run, trace) = traced_lookup(dir.path(), "dnstap-back");
    let file = dir.path().join("trace.dnstap");
    readable_by_all(&file);
    let analyzed = analyzed_whole(&[&file]);

    // Every message line is the live one: process, socket, addresses, time.
    let messages = |trace: &Trace| -> Vec<serde_json::Value> {
        trace
            .lines
            .iter()
            .filter(|line| line["kind"] == "message")
            .cloned()
            .collect()
    };
    assert_eq!(messages(&analyzed), messages(&trace));

    // The same lookups, by the same process.
    let lookups = |trace: &Trace| -> Vec<LookupSummary> {
        trace
            .lookups
            .iter()
            .map(|l| {
                (
                    l.pid.0,
                    l.comm.clone(),
                    l.name.clone(),
                    l.outcome.clone(),
                    l.attempts,
                )
            })
            .collect()
    };
    let live = lookups(&trace);
    assert_eq!(lookups(&analyzed), live);
    assert!(
        live.iter()
            .any(|(pid, _, name, outcome, _)| *pid == Some(run.pid)
                && format!("{name}.") == run.domain
                && outcome == "resolved"),
        "getent's lookup: {live:?}"
    );
}

/// Streams a traced lookup to `collector` at `target`; returns the lookup,
/// the trace and what the collector wrote.
fn stream_to(target: &str, collector: Collector, label: &str) -> (ClientRun, Trace, String) {
    let net = Topology::new();
    let server = DnsServer::start(ServerKind::Knot, &net);
    let mut tracer = Tracer::start(["--netns", net.client.name(), "--dnstap", target]);
    tracer.wait_for_stderr(&format!("dnstrace: dnstap {target}: connected"), PATIENCE);
    let run = Client::Getent.run(&net, &Lookup::new(label, server.socket(Family::V4)));
    let trace = tracer.stop();
    let sent = format!(
        "dnstrace: dnstap {target}: {} frames sent, 0 dropped",
        trace.messages.len()
    );
    assert!(
        trace.stderr.contains(&sent),
        "expected {sent:?}; stderr:\n{}",
        trace.stderr.join("\n")
    );
    let output = collector.stop();
    let decoded = decode("dnstap-ldns", &["-r", &output.display().to_string()]);
    (run, trace, decoded)
}

#[test]
fn a_collector_on_a_unix_socket_gets_every_message() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("dnstap.sock");
    let collector = Collector::unix(&socket, &dir.path().join("out.fstrm"));
    let target = format!("unix:{}", socket.display());
    let (run, trace, decoded) = stream_to(&target, collector, "dnstap-unix");
    assert_collector_got_every_message(&run, &trace, &decoded);
}

#[test]
fn a_collector_over_tcp_gets_every_message() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_tcp_port();
    let collector = Collector::tcp(port, &dir.path().join("out.fstrm"));
    let target = format!("tcp:127.0.0.1:{port}");
    let (run, trace, decoded) = stream_to(&target, collector, "dnstap-tcp");
    assert_collector_got_every_message(&run, &trace, &decoded);
}

/// The collector's frames, as `decoded` by dnstap-ldns, are the trace's
/// messages: as many, with the client's pair of queries and responses.
fn assert_collector_got_every_message(run: &ClientRun, trace: &Trace, decoded: &str) {
    assert_eq!(decoded.lines().count(), trace.messages.len(), "{decoded}");
    let ours = lines_about(decoded, run);
    assert_eq!(count_type(&ours, "SQ"), 2, "{decoded}");
    assert_eq!(count_type(&ours, "SR"), 2, "{decoded}");
}

#[test]
fn frames_wait_for_a_collector_that_comes_late_or_comes_back() {
    let net = Topology::new();
    let server = DnsServer::start(ServerKind::Knot, &net);
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("dnstap.sock");
    let target = format!("unix:{}", socket.display());
    let mut tracer = Tracer::start(["--netns", net.client.name(), "--dnstap", &target]);
    tracer.wait_for_stderr(
        &format!("dnstrace: dnstap {target}: cannot connect"),
        PATIENCE,
    );
    // A lookup, and a wait until it is reported: its messages then went to
    // every output (the dnstap buffer) well over a second before.
    let lookup = |tracer: &mut Tracer, label: &str| {
        let run = Client::Getent.run(&net, &Lookup::new(label, server.socket(Family::V4)));
        tracer.wait_for_line(&format!("the lookup of {}", run.domain), |line| {
            line["kind"] == "lookup" && line["pid"] == run.pid
        });
        run
    };

    // Before any collector: the frames wait in the buffer.
    let early = lookup(&mut tracer, "dnstap-early");
    let first = Collector::unix(&socket, &dir.path().join("first.fstrm"));
    tracer.wait_for_stderr(&format!("dnstrace: dnstap {target}: connected"), PATIENCE);
    let during = lookup(&mut tracer, "dnstap-during");
    let first = first.stop();
    tracer.wait_for_stderr(
        &format!("dnstrace: dnstap {target}: collector lost"),
        PATIENCE,
    );

    // While it is away, and then with a new one.
    let between = lookup(&mut tracer, "dnstap-between");
    let second = Collector::unix(&socket, &dir.path().join("second.fstrm"));
    tracer.wait_for_stderr(&format!("dnstrace: dnstap {target}: reconnected"), PATIENCE);
    let trace = tracer.stop();
    let second = second.stop();

    let first = decode("dnstap-ldns", &["-r", &first.display().to_string()]);
    let second = decode("dnstap-ldns", &["-r", &second.display().to_string()]);
    for (run, in_first) in [(&early, true), (&during, true), (&between, false)] {
        let (wanted, other) = match in_first {
            true => (&first, &second),
            false => (&second, &first),
        };
        assert_eq!(
            lines_about(wanted, run).len(),
            4,
            "{}: first collector:\n{first}\nsecond:\n{second}",
            run.domain
        );
        assert!(lines_about(other, run).is_empty(), "{}", run.domain);
    }
    let sent = format!(
        "dnstrace: dnstap {target}: {} frames sent, 0 dropped",
        trace.messages.len()
    );
    assert!(trace.stderr.contains(&sent), "{}", trace.stderr.join("\n"));
}

#[test]
fn without_a_collector_dnstrace_exits_cleanly_and_counts_what_it_dropped() {
    let net = Topology::new();
    let server = DnsServer::start(ServerKind::Knot, &net);
    let dir = tempfile::tempdir().expect("temp dir");
    let target = format!("unix:{}", dir.path().join("nobody-listens.sock").display());
    let tracer = Tracer::start(["--netns", net.client.name(), "--dnstap", &target]);
    Client::Getent.run(&net, &Lookup::new("dnstap-none", server.socket(Family::V4)));
    let stopping = Instant::now();
    let trace = tracer.stop();
    // The buffered frames get a short grace, not a long wait.
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "took {:?} to stop",
        stopping.elapsed()
    );
    let total = trace.messages.len();
    assert!(total >= 4, "getent's messages were traced");
    let dropped = format!(
        "dnstrace: dnstap {target}: 0 frames sent, {total} dropped (0 while the buffer was \
         full, {total} still buffered at exit)"
    );
    assert!(
        trace.stderr.contains(&dropped),
        "expected {dropped:?}; stderr:\n{}",
        trace.stderr.join("\n")
    );
    let complaints = trace
        .stderr
        .iter()
        .filter(|line| line.starts_with(&format!("dnstrace: dnstap {target}: cannot connect")))
        .count();
    assert_eq!(complaints, 1, "one line per outage, not per attempt");
}

#[test]
fn analyze_reads_knots_dnstap_as_lookups_by_client_address() {
    let net = Topology::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let tap = dir.path().join("knot.dnstap");
    let knot = DnstapKnot::start(&net, &tap);
    let runs: Vec<ClientRun> = ["knot-tap-a", "knot-tap-b"]
        .into_iter()
        .map(|label| Client::Dig.run(&net, &Lookup::new(label, knot.socket(Family::V4))))
        .collect();
    let server = knot.socket(Family::V4);
    knot.stop();

    // Knot logs AUTH_QUERY and AUTH_RESPONSE.
    let logged = decode("dnstap-ldns", &["-r", &tap.display().to_string()]);
    for run in &runs {
        let lines = lines_about(&logged, run);
        assert_eq!(count_type(&lines, "AQ"), 2, "{logged}");
        assert_eq!(count_type(&lines, "AR"), 2, "{logged}");
    }

    readable_by_all(&tap);
    let analyzed = analyzed_whole(&[&tap]);
    for run in &runs {
        let messages: Vec<_> = analyzed
            .messages
            .iter()
            .filter(|m| m.qname.as_deref() == Some(run.domain.as_str()))
            .collect();
        assert_eq!(messages.len(), 4, "dig's A and AAAA, asked and answered");
        for message in &messages {
            assert_eq!(message.pid, None);
            // The query side is the client's.
            assert_eq!(message.local.ip(), CLIENT_V4);
            assert_eq!(message.remote, server);
        }
        let name = run.domain.trim_end_matches('.');
        let lookups: Vec<_> = analyzed
            .lookups
            .iter()
            .filter(|lookup| lookup.name == name)
            .collect();
        assert!(
            !lookups.is_empty(),
            "a lookup of {name}: {:?}",
            analyzed.lookups
        );
        for lookup in lookups {
            assert_eq!(lookup.pid.0, None);
            assert_eq!(lookup.client, Some(CLIENT_V4.into()));
            assert_eq!(lookup.outcome, "resolved", "{lookup:?}");
        }
    }
}

#[test]
fn a_bad_dnstap_target_fails_at_once_in_one_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let unwritable = dir.path().join("missing-dir/trace.dnstap");
    for target in [
        "unix:".to_string(),
        "tcp:127.0.0.1".to_string(),
        "tcp:127.0.0.1:notaport".to_string(),
        "tcp::6000".to_string(),
        unwritable.display().to_string(),
    ] {
        // --duration bounds the run should the target be taken.
        let output = std::process::Command::new(dnstrace_bin())
            .args(["--dnstap", &target, "--duration", "1"])
            .output()
            .expect("run dnstrace");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{target}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{target}: {stderr}");
        assert!(
            lines[0].starts_with("dnstrace: ") && lines[0].contains(&target),
            "{target}: {stderr}"
        );
    }
}
