//! `-w FILE.pcapng`: tshark opens what dnstrace writes, dissects the DNS in
//! it, matches responses to queries, and shows the process in each packet's
//! comment.

use std::process::Command;

use dnstrace_tests::{
    clients::{Client, Lookup},
    netns::{Family, Topology},
    servers::{DnsServer, ServerKind},
    trace::Tracer,
};

/// One dissected packet, as tshark prints its fields.
struct Dissected {
    qname: String,
    response: bool,
    authoritative: bool,
    /// Response time, when tshark matched the response to its query.
    time: Option<f64>,
    comment: String,
}

fn dissect(path: &std::path::Path) -> Vec<Dissected> {
    let output = Command::new("tshark")
        .arg("-r")
        .arg(path)
        .args(["-T", "fields", "-E", "separator=|"])
        .args([
            "-e",
            "dns.qry.name",
            "-e",
            "dns.flags.response",
            "-e",
            "dns.flags.authoritative",
        ])
        .args(["-e", "dns.time", "-e", "frame.comment"])
        .output()
        .expect("tshark");
    assert!(
        output.status.success(),
        "tshark could not read {}: {output:?}",
        path.display()
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split('|').collect();
            assert_eq!(fields.len(), 5, "tshark line: {line}");
            Dissected {
                qname: fields[0].to_string(),
                response: fields[1] == "1" || fields[1] == "True",
                authoritative: fields[2] == "1" || fields[2] == "True",
                time: fields[3].parse().ok(),
                comment: fields[4].to_string(),
            }
        })
        .collect()
}

#[test]
fn tshark_dissects_the_pcapng_with_the_process_in_each_comment() {
    let net = Topology::new();
    let server = DnsServer::start(ServerKind::Dnsmasq, &net);
    let dir = tempfile::tempdir().expect("temp dir");
    let pcapng = dir.path().join("trace.pcapng");
    let pcapng_arg = pcapng.to_str().expect("utf-8 path").to_string();
    let tracer = Tracer::start(["--netns", net.client.name(), "-w", &pcapng_arg]);
    let run = Client::Getent.run(&net, &Lookup::new("pcapng", server.socket(Family::V4)));
    let trace = tracer.stop();

    let packets = dissect(&pcapng);
    assert_eq!(
        packets.len(),
        trace.messages.len(),
        "one packet per message"
    );
    // tshark prints names without the root's trailing dot.
    let ours: Vec<&Dissected> = packets
        .iter()
        .filter(|p| run.asked_for(&format!("{}.", p.qname)))
        .collect();
    assert_eq!(ours.len(), 4, "getent's A and AAAA queries and responses");
    for packet in &ours {
        let pid = format!("pid={} ", run.pid);
        assert!(
            packet.comment.starts_with(&pid),
            "comment names the process: {}",
            packet.comment
        );
        assert!(packet.comment.contains("comm=getent"), "{}", packet.comment);
    }
    let responses: Vec<&&Dissected> = ours.iter().filter(|p| p.response).collect();
    assert_eq!(responses.len(), 2);
    for response in responses {
        assert!(
            response.authoritative,
            "dnsmasq answers its own names with AA"
        );
        let time = response
            .time
            .expect("tshark matched the response to its query");
        assert!((0.0..5.0).contains(&time), "response time {time}");
    }
}
