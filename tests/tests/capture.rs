//! Every message of every client is captured exactly once, with the right
//! process, socket and DNS header, over IPv4 and IPv6, against dnsmasq, knot
//! and unbound. The ground truth is tcpdump on the link.

use std::collections::BTreeSet;

use dnstrace_tests::{
    clients::{Client, ClientRun, Lookup},
    expect::{assert_client_run_captured_once, assert_server_side_captured_once},
    netns::{Family, Topology},
    servers::{DnsServer, ServerKind},
    trace::{Direction, EVERYTHING, Message, Tracer},
    wire::PacketCapture,
};

/// Runs `client` against every server over both families, under one tracer
/// and one packet capture, and checks each run's messages with `check` after
/// the common checks.
fn check_each_lookup(client: Client, check: impl Fn(&ClientRun, &[&Message])) {
    let net = Topology::new();
    let servers = DnsServer::start_real(&net);
    let wire = PacketCapture::start(&net.server, &[53]);
    let tracer = Tracer::start(EVERYTHING);
    let runs: Vec<ClientRun> = servers
        .iter()
        .flat_map(|server| Family::BOTH.map(|family| (server, family)))
        .map(|(server, family)| {
            let label = format!("{}-{}-{}", client.name(), server.kind.name(), family.name());
            client.run(&net, &Lookup::new(&label, server.socket(family)))
        })
        .collect();
    let trace = tracer.stop();
    let packets = wire.stop();
    for run in &runs {
        let messages = assert_client_run_captured_once(&trace, &packets, net.client.inode(), run);
        check(run, &messages);
    }
}

fn sends<'t>(messages: &[&'t Message]) -> Vec<&'t Message> {
    messages
        .iter()
        .copied()
        .filter(|m| m.direction == Direction::Send)
        .collect()
}

/// The A and AAAA queries were sent, from exactly `sockets` sockets.
fn assert_a_and_aaaa_sent(run: &ClientRun, messages: &[&Message], sockets: usize) {
    let sent = sends(messages);
    let qtypes: BTreeSet<&str> = sent.iter().filter_map(|m| m.qtype.as_deref()).collect();
    assert_eq!(
        qtypes,
        BTreeSet::from(["A", "AAAA"]),
        "{run:?}: queries {sent:?}"
    );
    let cookies: BTreeSet<u64> = sent.iter().map(|m| m.socket_cookie).collect();
    assert_eq!(cookies.len(), sockets, "{run:?}: sockets of {sent:?}");
}

#[test]
fn dig_messages_are_captured_once_from_its_network_thread() {
    check_each_lookup(Client::Dig, |run, messages| {
        assert_a_and_aaaa_sent(run, messages, 2);
        // dig sends from a libisc thread, not its main thread.
        for message in sends(messages) {
            assert_ne!(
                message.tid,
                Some(run.pid),
                "dig's send has the main thread's tid: {message:?}"
            );
        }
    });
}

#[test]
fn glibc_sendmmsg_pair_is_captured_once() {
    check_each_lookup(Client::Getent, |run, messages| {
        assert_a_and_aaaa_sent(run, messages, 1);
    });
}

#[test]
fn python_getaddrinfo_is_captured_once_with_its_uid() {
    check_each_lookup(Client::Python { lookups: 1 }, |run, messages| {
        assert_a_and_aaaa_sent(run, messages, 1);
    });
}

#[test]
fn musl_parallel_queries_are_captured_once() {
    check_each_lookup(Client::Musl, |run, messages| {
        assert_a_and_aaaa_sent(run, messages, 1);
    });
}

#[test]
fn go_resolver_queries_are_captured_once() {
    // Go's resolver asks each question from a socket of its own.
    check_each_lookup(Client::Go, |run, messages| {
        assert_a_and_aaaa_sent(run, messages, 2);
    });
}

#[test]
fn server_messages_are_attributed_to_each_server() {
    let net = Topology::new();
    let servers = DnsServer::start_real(&net);
    let wire = PacketCapture::start(&net.server, &[53]);
    let tracer = Tracer::start(EVERYTHING);
    let runs: Vec<(&DnsServer, ClientRun)> = servers
        .iter()
        .flat_map(|server| Family::BOTH.map(|family| (server, family)))
        .map(|(server, family)| {
            let label = format!("to-{}-{}", server.kind.name(), family.name());
            let run = Client::Getent.run(&net, &Lookup::new(&label, server.socket(family)));
            (server, run)
        })
        .collect();
    let trace = tracer.stop();
    let packets = wire.stop();
    for (server, run) in &runs {
        assert_server_side_captured_once(&trace, &packets, run, server.pid(), net.server.inode());
    }
}

#[test]
fn glibc_repeated_queries_after_lame_answers_are_each_captured_once() {
    let net = Topology::new();
    let shaping = DnsServer::start(ServerKind::Shaping, &net);
    let wire = PacketCapture::start(&net.server, &[53]);
    let tracer = Tracer::start(EVERYTHING);
    // Lame NODATA for A and AAAA: glibc drops both answers and asks again
    // with the same IDs from the same socket, then gives up.
    let lookup = Lookup::in_subzone("getent", "lame", shaping.socket(Family::V4));
    let run = Client::Getent
        .prepare(&net, &lookup)
        .run_expecting_failure();
    let trace = tracer.stop();
    let packets = wire.stop();
    let queries: Vec<_> = packets
        .iter()
        .filter(|p| run.asked_for(&p.qname) && !p.qr)
        .collect();
    let ids: BTreeSet<u16> = queries.iter().map(|p| p.id).collect();
    assert!(
        queries.len() > ids.len(),
        "glibc repeated no query, so this proves nothing: {queries:?}"
    );
    assert_client_run_captured_once(&trace, &packets, net.client.inode(), &run);
}

/// The kernel side takes a socket's sender name from the socket's recorded
/// owner while the same thread keeps sending, and asks again every 64
/// sends: a thread that renames itself shows its new name within 64.
#[test]
fn a_thread_renamed_while_it_keeps_a_socket_shows_the_new_name_within_64_sends() {
    const QUERIES: u16 = 100;
    let net = Topology::new();
    let knot = DnsServer::start(ServerKind::Knot, &net);
    let server = knot.socket(Family::V4);
    let tracer = Tracer::start(["--netns", net.client.name()]);
    let script = dnstrace_tests::workspace_dir().join("tests/clients/rename.py");
    let output = net
        .client
        .command("python3")
        .arg(&script)
        .args([
            server.ip().to_string(),
            server.port().to_string(),
            format!("renamed.{}", dnstrace_tests::servers::ZONE),
            QUERIES.to_string(),
            "renamed".into(),
        ])
        .output()
        .expect("run rename.py");
    assert!(output.status.success(), "rename.py: {output:?}");
    let pid: u32 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("rename.py prints its pid");
    let trace = tracer.stop();

    let mut sent: Vec<&Message> = trace
        .messages
        .iter()
        .filter(|m| m.pid == Some(pid) && m.direction == Direction::Send)
        .collect();
    sent.sort_by_key(|m| m.id);
    let names: Vec<&str> = sent.iter().filter_map(|m| m.comm.as_deref()).collect();
    assert_eq!(names.len(), usize::from(QUERIES), "every query: {names:?}");
    assert_eq!(names[0], "python3", "before the rename");
    let stale = names[1..]
        .iter()
        .take_while(|name| **name == "python3")
        .count();
    assert!(
        stale < 64 && names[1 + stale..].iter().all(|name| *name == "renamed"),
        "the new name within 64 sends, and from then on: {names:?}"
    );
}
