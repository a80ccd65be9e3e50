//! Every output at once: text on standard output, JSON Lines (`--json`),
//! pcapng (`-w`) and dnstap (`--dnstap`), each holding the same messages.

use dnstrace_tests::{
    clients::{Client, Lookup},
    dnstap::decode,
    netns::{Family, Topology},
    servers::{DnsServer, ServerKind},
    trace::Tracer,
};

#[test]
fn text_json_pcapng_and_dnstap_are_written_together() {
    let dir = tempfile::tempdir().expect("temp dir");
    let stdout = dir.path().join("stdout.txt");
    let pcapng = dir.path().join("trace.pcapng").display().to_string();
    let dnstap = dir.path().join("trace.dnstap").display().to_string();
    let net = Topology::new();
    let server = DnsServer::start(ServerKind::Knot, &net);
    let tracer = Tracer::start_printing(
        [
            "--netns",
            net.client.name(),
            "-v",
            "--color",
            "always",
            "-w",
            &pcapng,
            "--dnstap",
            &dnstap,
        ],
        &stdout,
    );
    let run = Client::Getent.run(&net, &Lookup::new("all-outputs", server.socket(Family::V4)));
    let trace = tracer.stop();
    let name = run.domain.trim_end_matches('.');

    let json: Vec<_> = trace
        .messages
        .iter()
        .filter(|m| m.pid == Some(run.pid))
        .collect();
    assert_eq!(json.len(), 4, "getent's A and AAAA, asked and answered");
    assert!(
        trace
            .lookups
            .iter()
            .any(|l| l.pid == run.pid && l.name == name),
        "the lookup in the JSON Lines"
    );

    let text = std::fs::read_to_string(&stdout).expect("read stdout");
    let pid = run.pid.to_string();
    let message_lines = text
        .lines()
        .filter(|line| line.contains(name) && line.contains(&pid) && !line.contains("RESOLVED"))
        .count();
    assert_eq!(message_lines, 4, "one -v line per message:\n{text}");
    assert!(
        text.lines()
            .any(|line| line.contains(&pid) && line.contains("RESOLVED") && line.contains(name)),
        "the lookup line:\n{text}"
    );
    assert!(text.contains("\x1b["), "--color always colours a pipe too");

    let packets = decode(
        "tshark",
        &[
            "-r",
            &pcapng,
            "-Y",
            "dns",
            "-T",
            "fields",
            "-e",
            "dns.qry.name",
        ],
    );
    assert_eq!(packets.lines().count(), trace.messages.len(), "{packets}");
    assert_eq!(
        packets.lines().filter(|l| *l == name).count(),
        4,
        "{packets}"
    );

    let records = decode("dnstap-ldns", &["-r", &dnstap]);
    assert_eq!(records.lines().count(), trace.messages.len(), "{records}");
    assert_eq!(
        records.lines().filter(|l| l.contains(name)).count(),
        4,
        "{records}"
    );
}
