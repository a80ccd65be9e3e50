//! Whether a process read the responses that reached it (the read program on
//! `sock:sock_recv_length`, on this 6.18 host): a response read and thrown
//! away is told apart from one never read, and the reads name the process.

use dnstrace_tests::{
    clients::{Client, ClientRun, Lookup},
    netns::{Family, Topology},
    servers::{DnsServer, ServerKind},
    trace::{Direction, Trace, Tracer},
};

/// Runs `client` under a tracer of it and of `server`: the server's
/// sockets are traced too, so that its reads of queries would show if the
/// read program reported them.
fn traced(
    net: &Topology,
    client: Client,
    lookup: &Lookup,
    server: &DnsServer,
    failing: bool,
) -> (ClientRun, Trace) {
    let paused = client.prepare(net, lookup);
    let mut tracer = Tracer::start([
        "--pid".to_string(),
        paused.pid().to_string(),
        "--pid".to_string(),
        server.pid().to_string(),
    ]);
    let run = if failing {
        paused.run_expecting_failure()
    } else {
        paused.run()
    };
    tracer.wait_until_settled();
    let trace = tracer.stop();
    assert_eq!(trace.summary.lost, 0, "dnstrace lost records: {trace:?}");
    assert!(
        trace
            .stderr
            .iter()
            .any(|line| line.contains("reads of responses tracked")),
        "the start-up lines say reads are tracked: {:?}",
        trace.stderr
    );
    (run, trace)
}

/// Each response the client received, as (socket cookie, size).
fn responses_received(trace: &Trace, run: &ClientRun) -> Vec<(u64, u32)> {
    trace
        .messages
        .iter()
        .filter(|m| m.pid == Some(run.pid) && m.direction == Direction::Recv && m.qr == Some(true))
        .map(|m| (m.socket_cookie, m.size))
        .collect()
}

#[test]
fn glibc_reads_the_lame_answers_it_throws_away() {
    let net = Topology::new();
    let shaping = DnsServer::start(ServerKind::Shaping, &net);
    let lookup = Lookup::in_subzone("getent", "lame", shaping.socket(Family::V4));
    let (run, trace) = traced(&net, Client::Getent, &lookup, &shaping, true);
    assert!(
        trace.reads.iter().all(|r| r.pid != shaping.pid()),
        "the server's reads of queries are not reported"
    );

    let rejected: Vec<_> = trace
        .attempts
        .iter()
        .filter(|a| a.pid == run.pid && a.outcome == "rejected")
        .collect();
    assert!(!rejected.is_empty(), "{}", trace.correlation_of(run.pid));
    for attempt in &rejected {
        assert_eq!(
            (
                attempt.response_read,
                attempt.response_read_after_us.is_some()
            ),
            (Some(true), true),
            "glibc reads each lame answer before it rejects it: {attempt:?}"
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

    // One read per response, by getent, of the response's size, on its socket.
    let mut reads: Vec<(u64, u32)> = trace
        .reads
        .iter()
        .filter(|r| r.pid == run.pid)
        .inspect(|r| assert_eq!((r.tid, r.comm.as_str()), (run.pid, "getent"), "{r:?}"))
        .map(|r| (r.socket_cookie, r.size))
        .collect();
    let mut received = responses_received(&trace, &run);
    reads.sort();
    received.sort();
    assert_eq!(reads, received, "reads against responses (cookie, size)");
}

#[test]
fn an_answer_left_in_the_socket_is_not_read() {
    let net = Topology::new();
    let knot = DnsServer::start(ServerKind::Knot, &net);
    let lookup = Lookup::new("left", knot.socket(Family::V4));

    for read in [false, true] {
        let (run, trace) = traced(&net, Client::UdpQuery { read }, &lookup, &knot, false);
        let context = trace.correlation_of(run.pid);
        let [attempt] = &trace
            .attempts
            .iter()
            .filter(|a| a.pid == run.pid)
            .collect::<Vec<_>>()[..]
        else {
            panic!("not one attempt (read: {read}):\n{context}");
        };
        assert_eq!(
            (attempt.response_rcode.as_deref(), attempt.response_read),
            (Some("NOERROR"), Some(read)),
            "read: {read}: {attempt:?}"
        );
        assert_eq!(
            attempt.response_read_after_us.is_some(),
            read,
            "{attempt:?}"
        );
        let reads: Vec<_> = trace.reads.iter().filter(|r| r.pid == run.pid).collect();
        let received = responses_received(&trace, &run);
        if read {
            let [one] = reads[..] else {
                panic!("not one read: {reads:?}\n{context}");
            };
            assert_eq!(
                vec![(one.socket_cookie, one.size)],
                received,
                "the read is the response's (cookie, size)"
            );
        } else {
            assert!(
                reads.is_empty(),
                "no read of a response left unread: {reads:?}"
            );
            assert_eq!(received.len(), 1, "the response arrived: {context}");
        }
        assert!(
            trace.reads.iter().all(|r| r.pid != knot.pid()),
            "the server's reads of queries are not reported"
        );
    }
}
