//! Payloads that are hard to capture: answers near and far beyond the size
//! every tracer must capture, and datagrams that are not valid DNS.

use std::process::Stdio;

use dnstrace_tests::{
    clients::{Client, ClientRun, Lookup},
    expect::{MUST_CAPTURE, assert_client_run_captured_once},
    netns::{Family, Topology},
    servers::{
        DnsServer, FITTING_TXT_RECORDS, FITTING_TXT_SUBZONE, HUGE_TXT_RECORDS, ServerKind,
        dig_target,
    },
    trace::{Direction, Tracer},
    wire::PacketCapture,
};

/// dig asking for `lookup`'s TXT records over UDP; `+ignore` keeps it from
/// retrying over TCP should an answer come truncated.
fn dig_txt(net: &Topology, lookup: &Lookup) -> ClientRun {
    let child = net
        .client
        .command("dig")
        .args(dig_target(lookup.server))
        .args(["+tries=1", "+time=5", "+ignore", "+short"])
        .args([lookup.domain.as_str(), "TXT"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn dig");
    let pid = child.id();
    let output = child.wait_with_output().expect("wait for dig");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "dig TXT {}: {stdout}",
        lookup.domain
    );
    ClientRun {
        client: Client::Dig,
        pid,
        domain: format!("{}.", lookup.domain),
        stdout,
    }
}

#[test]
fn answers_beyond_the_capture_size_are_marked_truncated_with_their_true_size() {
    let net = Topology::new();
    let unbound = DnsServer::start(ServerKind::Unbound, &net);
    let shaping = DnsServer::start(ServerKind::Shaping, &net);
    let wire = PacketCapture::start(&net.server, &[53]);
    let tracer = Tracer::start(["--netns", net.client.name()]);
    let fitting = Lookup::in_subzone("fits", FITTING_TXT_SUBZONE, unbound.socket(Family::V4));
    let huge = Lookup::in_subzone("huge", "huge", shaping.socket(Family::V6));
    let runs = [
        (FITTING_TXT_RECORDS, dig_txt(&net, &fitting)),
        (HUGE_TXT_RECORDS, dig_txt(&net, &huge)),
    ];
    let trace = tracer.stop();
    let packets = wire.stop();
    for (records, run) in &runs {
        // This also checks the sizes against the wire, and that the fitting
        // answer is captured whole.
        let messages = assert_client_run_captured_once(&trace, &packets, net.client.inode(), run);
        let answer = messages
            .iter()
            .find(|m| m.direction == Direction::Recv)
            .expect("the answer is captured");
        assert_eq!(answer.answers, Some(*records as u16), "{answer:?}");
        let huge = answer.size > 4 * MUST_CAPTURE;
        assert!(
            huge || answer.size <= MUST_CAPTURE,
            "answer too close to the limit: {answer:?}"
        );
        assert_eq!(
            answer.truncated_capture, huge,
            "truncated_capture of {answer:?}"
        );
    }
}

#[test]
fn datagrams_that_are_not_dns_still_yield_messages_with_a_decode_error() {
    let net = Topology::new();
    let server = DnsServer::start(ServerKind::Dnsmasq, &net);
    let tracer = Tracer::start(["--netns", net.client.name()]);
    // Three bytes, shorter than a header; then a header whose question is cut off.
    let script = "import socket, struct, sys\n\
                  s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
                  server = (sys.argv[1], 53)\n\
                  s.sendto(b'\\x12\\x34\\x01', server)\n\
                  s.sendto(struct.pack('>6H', 0xbeef, 0x0100, 1, 0, 0, 0) + b'\\x07trunc', server)\n";
    let child = net
        .client
        .command("/usr/bin/python3")
        .args(["-c", script, &server.socket(Family::V4).ip().to_string()])
        .spawn()
        .expect("spawn python3");
    let pid = child.id();
    let status = child.wait_with_output().expect("wait for python3").status;
    assert!(status.success(), "python3 sending junk: {status}");
    let trace = tracer.stop();
    let sent: Vec<_> = trace
        .messages
        .iter()
        .filter(|m| m.pid == Some(pid) && m.direction == Direction::Send)
        .collect();
    let [short, cut] = sent[..] else {
        panic!("expected the two datagrams, got {sent:?}");
    };
    assert_eq!((short.size, short.id), (3, None), "{short:?}");
    assert!(short.decode_error.is_some(), "{short:?}");
    assert_eq!(
        (cut.size, cut.id, cut.qr),
        (18, Some(0xbeef), Some(false)),
        "{cut:?}"
    );
    assert!(cut.decode_error.is_some(), "{cut:?}");
    assert!(trace.summary.undecodable >= 2, "{:?}", trace.summary);
}
