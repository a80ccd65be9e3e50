//! Whether a process read the responses that reached it (the read program on
//! `sock:sock_recv_length`, on this 6.18 host): a response read and thrown
//! away is told apart from one never read.

use dnstrace_tests::{
    clients::{Client, ClientRun, Lookup},
    netns::{Family, Topology},
    servers::{DnsServer, ServerKind},
    trace::{Attempt, Trace, Tracer},
};

/// Runs `client` under a tracer of its namespace.
fn traced(net: &Topology, client: Client, lookup: &Lookup, failing: bool) -> (ClientRun, Trace) {
    let paused = client.prepare(net, lookup);
    let mut tracer = Tracer::start(["--netns", net.client.name()]);
    let run = if failing {
        paused.run_expecting_failure()
    } else {
        paused.run()
    };
    tracer.wait_until_settled();
    let trace = tracer.stop();
    assert_eq!(trace.summary.lost, 0, "dnstrace lost records: {trace:?}");
    assert!(
        trace.stderr.iter().any(|line| line
            == "dnstrace: reads of responses tracked (tracepoint sock:sock_recv_length)"),
        "the start-up lines say reads are tracked: {:?}",
        trace.stderr
    );
    (run, trace)
}

fn attempts_of<'t>(trace: &'t Trace, run: &ClientRun) -> Vec<&'t Attempt> {
    trace.attempts.iter().filter(|a| a.pid == run.pid).collect()
}

#[test]
fn glibc_reads_the_lame_answers_it_throws_away() {
    let net = Topology::new();
    let shaping = DnsServer::start(ServerKind::Shaping, &net);
    let lookup = Lookup::in_subzone("getent", "lame", shaping.socket(Family::V4));
    let (run, trace) = traced(&net, Client::Getent, &lookup, true);

    let attempts = attempts_of(&trace, &run);
    let rejected: Vec<_> = attempts
        .iter()
        .filter(|a| a.outcome == "rejected")
        .collect();
    assert!(!rejected.is_empty(), "{}", trace.correlation_of(run.pid));
    for attempt in &attempts {
        assert_eq!(
            attempt.response_read,
            Some(true),
            "glibc reads every answer, the ones it rejects too: {attempt:?}"
        );
    }
    let diagnosis = trace
        .diagnoses_of(run.pid)
        .into_iter()
        .find(|d| d.cause == "answer_rejected")
        .expect("an answer_rejected diagnosis");
    assert!(
        diagnosis
            .explanation
            .contains("The process read each of them from its socket"),
        "{}",
        diagnosis.explanation
    );
}

#[test]
fn an_answer_left_in_the_socket_is_not_read() {
    let net = Topology::new();
    let knot = DnsServer::start(ServerKind::Knot, &net);
    let lookup = Lookup::new("left", knot.socket(Family::V4));

    for read in [false, true] {
        let (run, trace) = traced(&net, Client::UdpQuery { read }, &lookup, false);
        let [attempt] = attempts_of(&trace, &run)[..] else {
            panic!(
                "not one attempt (read: {read}):\n{}",
                trace.correlation_of(run.pid)
            );
        };
        assert_eq!(
            (attempt.response_rcode.as_deref(), attempt.response_read),
            (Some("NOERROR"), Some(read)),
            "the answer arrived, and was read only when the client read it: {attempt:?}"
        );
    }
}

#[test]
fn reads_over_tcp_are_not_claimed() {
    let net = Topology::new();
    let shaping = DnsServer::start(ServerKind::Shaping, &net);
    // A truncated answer over UDP, then the same question over TCP.
    let lookup = Lookup::in_subzone("getent", "tc", shaping.socket(Family::V4));
    let (run, trace) = traced(&net, Client::Getent, &lookup, false);

    let attempts = attempts_of(&trace, &run);
    let over = |proto: &str| {
        attempts
            .iter()
            .filter(|a| a.proto == proto && a.response_rcode.is_some())
            .map(|a| a.response_read)
            .collect::<Vec<_>>()
    };
    let (udp, tcp) = (over("udp"), over("tcp"));
    // glibc reads the first truncated answer and leaves for TCP; the other
    // of the pair, when it came before the socket closed, stays unread.
    assert!(
        udp.contains(&Some(true)) && udp.iter().all(Option::is_some),
        "truncated answers over UDP: the first read, none unknown: {udp:?}"
    );
    assert!(
        !tcp.is_empty() && tcp.iter().all(Option::is_none),
        "over TCP, whether a response was read is not known: {tcp:?}"
    );
}

/// Every resolver reads its answers, whatever call it reads them with:
/// dig (libuv), glibc's recvfrom, musl, Go's read on a connected socket.
#[test]
fn every_resolver_reads_its_answers_and_the_kernel_sees_it() {
    let net = Topology::new();
    let knot = DnsServer::start(ServerKind::Knot, &net);
    for client in [
        Client::Dig,
        Client::Getent,
        Client::Python { lookups: 1 },
        Client::Musl,
        Client::Go,
    ] {
        let lookup = Lookup::new(&format!("read-{}", client.name()), knot.socket(Family::V4));
        let (run, trace) = traced(&net, client, &lookup, false);
        let answered: Vec<_> = attempts_of(&trace, &run)
            .into_iter()
            .filter(|a| a.proto == "udp" && a.response_rcode.is_some())
            .collect();
        assert!(
            !answered.is_empty() && answered.iter().all(|a| a.response_read == Some(true)),
            "{}: every answer read: {answered:#?}",
            client.name()
        );
    }
}
