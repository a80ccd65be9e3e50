//! Nothing is lost at a modest, bounded load: every message on the wire is in
//! the trace exactly once, on both ends, and the summary counts no loss.

use dnstrace_tests::{
    clients::{Client, ClientRun, Lookup},
    expect::{Side, assert_captured_once, assert_client_run_captured_once},
    netns::{Family, Topology},
    servers::{DnsServer, ServerKind},
    trace::{EVERYTHING, Trace, Tracer},
    wire::{PacketCapture, WirePacket},
};

/// Runs `client` against knot under a tracer that sees everything, and
/// checks that neither end of its traffic lost a message.
fn check_nothing_lost(client: Client) {
    let net = Topology::new();
    let server = DnsServer::start(ServerKind::Knot, &net);
    let wire = PacketCapture::start(&net.server, &[53]);
    let tracer = Tracer::start(EVERYTHING);
    let run = client.run(&net, &Lookup::new(client.name(), server.socket(Family::V4)));
    let trace = tracer.stop();
    let packets = wire.stop();
    assert_eq!(trace.summary.lost, 0, "summary {:?}", trace.summary);
    assert_client_run_captured_once(&trace, &packets, net.client.inode(), &run);
    assert_server_side_complete(&trace, &packets, &run);
}

/// Every message of the run on the server's end, whoever it is attributed
/// to (attribution is the capture tests' business).
fn assert_server_side_complete(trace: &Trace, packets: &[WirePacket], run: &ClientRun) {
    let asked = |qname: &str| run.asked_for(qname);
    let messages = trace
        .messages
        .iter()
        .filter(|m| m.qname.as_deref().is_some_and(asked) && Side::Server.owns(m));
    let packets = packets.iter().filter(|p| asked(&p.qname));
    let matched = assert_captured_once("knot's end of the load", Side::Server, messages, packets);
    assert!(!matched.is_empty(), "no server-side messages at all");
}

#[test]
fn dnsperf_load_loses_nothing() {
    check_nothing_lost(Client::Dnsperf { queries: 3000 });
}

#[test]
fn glibc_lookup_loop_loses_nothing() {
    check_nothing_lost(Client::Python { lookups: 500 });
}
