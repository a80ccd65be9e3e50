//! Assertions that compare a trace with the ground truth on the wire.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write,
    net::SocketAddr,
};

use crate::{
    clients::ClientRun,
    netns::is_client_ip,
    trace::{Direction, Message, Trace},
    wire::WirePacket,
};

/// Which end of the link a message is seen from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

impl Side {
    /// Whether `message` was seen by a socket on this side.
    pub fn owns(self, message: &Message) -> bool {
        is_client_ip(message.local.ip()) == (self == Side::Client)
    }
}

/// What identifies one message on one socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct SocketView {
    direction: Direction,
    local: SocketAddr,
    remote: SocketAddr,
    id: u16,
    qr: bool,
}

impl SocketView {
    fn of_packet(packet: &WirePacket, side: Side) -> Self {
        let sent = packet.from_client() == (side == Side::Client);
        let (direction, local, remote) = if sent {
            (Direction::Send, packet.src, packet.dst)
        } else {
            (Direction::Recv, packet.dst, packet.src)
        };
        Self {
            direction,
            local,
            remote,
            id: packet.id,
            qr: packet.qr,
        }
    }

    fn of_message(message: &Message) -> Option<Self> {
        Some(Self {
            direction: message.direction,
            local: message.local,
            remote: message.remote,
            id: message.id?,
            qr: message.qr?,
        })
    }
}

/// Asserts that `messages` hold every one of `packets`, seen from `side`,
/// exactly once, and nothing else; checks each message's DNS content against
/// its packet. Returns the messages paired with their packets.
pub fn assert_captured_once<'t, 'w>(
    what: &str,
    side: Side,
    messages: impl IntoIterator<Item = &'t Message>,
    packets: impl IntoIterator<Item = &'w WirePacket>,
) -> Vec<(&'t Message, &'w WirePacket)> {
    let mut expected: BTreeMap<SocketView, Vec<&WirePacket>> = BTreeMap::new();
    for packet in packets {
        expected
            .entry(SocketView::of_packet(packet, side))
            .or_default()
            .push(packet);
    }
    let mut matched = Vec::new();
    let mut extra = Vec::new();
    for message in messages {
        let packet = SocketView::of_message(message)
            .and_then(|view| expected.get_mut(&view))
            .and_then(Vec::pop);
        match packet {
            Some(packet) => matched.push((message, packet)),
            None => extra.push(message),
        }
    }
    let missing: Vec<_> = expected.into_values().flatten().collect();
    if !missing.is_empty() || !extra.is_empty() {
        let mut report = format!(
            "{what}: {} packets on the wire are missing from the trace, and the \
             trace has {} messages that are not on the wire or are duplicates\n",
            missing.len(),
            extra.len()
        );
        for packet in missing.iter().take(10) {
            let _ = writeln!(report, "  missing: {packet:?}");
        }
        for message in extra.iter().take(10) {
            let _ = writeln!(report, "  extra: {message:?}");
        }
        panic!("{report}");
    }
    for (message, packet) in &matched {
        assert_same_content(what, message, packet);
    }
    matched
}

/// Every tracer must capture this much of a message (the EDNS size that
/// avoids fragmentation), so such messages decode whole.
pub const MUST_CAPTURE: u32 = 1232;

/// The DNS fields dnstrace decoded must be what tshark decoded. Messages
/// longer than [`MUST_CAPTURE`] may be cut short; their header still counts.
fn assert_same_content(what: &str, message: &Message, packet: &WirePacket) {
    let context = || format!("{what}: message {message:?}\nfor packet {packet:?}");
    let flags: BTreeSet<&str> = message.flags.iter().map(String::as_str).collect();
    assert_eq!(flags, packet.flags, "flags; {}", context());
    assert_eq!(
        message.flags.len(),
        flags.len(),
        "flags repeat; {}",
        context()
    );
    assert_eq!(
        message.opcode.as_deref(),
        Some(opcode_name(packet.opcode)),
        "opcode; {}",
        context()
    );
    assert_eq!(
        message.rcode.as_deref(),
        Some(rcode_name(packet.rcode)),
        "rcode; {}",
        context()
    );
    assert_eq!(
        message.qname.as_deref(),
        Some(packet.qname.as_str()),
        "qname; {}",
        context()
    );
    assert_eq!(
        message.qtype.as_deref(),
        Some(qtype_name(packet.qtype)),
        "qtype; {}",
        context()
    );
    assert_eq!(
        message.answers,
        Some(packet.answers),
        "answers; {}",
        context()
    );
    assert_eq!(
        message.authority,
        Some(packet.authority),
        "authority; {}",
        context()
    );
    assert_eq!(
        message.additional,
        Some(packet.additional),
        "additional; {}",
        context()
    );
    assert_eq!(message.size, packet.size, "size; {}", context());
    assert_eq!(message.proto, "udp", "proto; {}", context());
    if packet.size <= MUST_CAPTURE {
        assert!(
            !message.truncated_capture,
            "truncated_capture; {}",
            context()
        );
        assert_eq!(message.decode_error, None, "decode_error; {}", context());
        assert_eq!(
            message.edns_udp_size,
            packet.edns_udp_size,
            "edns_udp_size; {}",
            context()
        );
    }
}

/// Asserts that the trace holds each message of `run`'s lookups, on the
/// client side, exactly once, attributed to the client's process in
/// namespace `netns`. Returns its messages.
pub fn assert_client_run_captured_once<'t>(
    trace: &'t Trace,
    packets: &[WirePacket],
    netns: u64,
    run: &ClientRun,
) -> Vec<&'t Message> {
    let what = format!(
        "{} (pid {}) looking up {}",
        run.client.name(),
        run.pid,
        run.domain
    );
    let packets: Vec<&WirePacket> = packets.iter().filter(|p| run.asked_for(&p.qname)).collect();
    assert!(
        packets.iter().any(|p| !p.qr) && packets.iter().any(|p| p.qr),
        "{what}: no query and answer on the wire, so the test proves nothing: {packets:?}"
    );
    // Its names on the client side, and anything else its process sent.
    let messages = trace.messages.iter().filter(|m| {
        let own_name = m.qname.as_deref().is_some_and(|q| run.asked_for(q));
        let own_process = m.netns == Some(netns) && m.pid == Some(run.pid);
        (own_name && Side::Client.owns(m)) || own_process
    });
    let matched = assert_captured_once(&what, Side::Client, messages, packets);
    let messages: Vec<&Message> = matched.into_iter().map(|(m, _)| m).collect();
    for message in &messages {
        let context = || format!("{what}: {message:?}");
        assert_eq!(message.pid, Some(run.pid), "pid; {}", context());
        let comm = message.comm.as_deref().unwrap_or_default();
        assert!(
            run.client.comm_matches(comm),
            "comm {comm:?}; {}",
            context()
        );
        assert_eq!(message.uid, Some(run.client.uid()), "uid; {}", context());
        assert_eq!(message.netns, Some(netns), "netns; {}", context());
        if run.client.is_single_threaded() {
            assert_eq!(
                message.tid,
                Some(run.pid),
                "tid of a single-threaded client; {}",
                context()
            );
        }
    }
    assert_answers_on_query_sockets(&what, &messages);
    messages
}

/// Each socket keeps one local address, and each answer arrives on the
/// socket its query left from. (A port may be reused by a later socket.)
pub fn assert_answers_on_query_sockets(what: &str, messages: &[&Message]) {
    let mut locals: BTreeMap<u64, BTreeSet<SocketAddr>> = BTreeMap::new();
    for message in messages {
        assert_ne!(
            message.socket_cookie, 0,
            "{what}: no socket cookie in {message:?}"
        );
        locals
            .entry(message.socket_cookie)
            .or_default()
            .insert(message.local);
    }
    for (cookie, set) in &locals {
        assert_eq!(
            set.len(),
            1,
            "{what}: socket {cookie} has several local addresses {set:?}"
        );
    }
    let mut query_sockets: BTreeMap<_, BTreeSet<u64>> = BTreeMap::new();
    for query in messages.iter().filter(|m| m.direction == Direction::Send) {
        query_sockets
            .entry((query.local, query.remote, query.id))
            .or_default()
            .insert(query.socket_cookie);
    }
    for answer in messages.iter().filter(|m| m.direction == Direction::Recv) {
        let sockets = query_sockets.get(&(answer.local, answer.remote, answer.id));
        assert!(
            sockets.is_some_and(|cookies| cookies.contains(&answer.socket_cookie)),
            "{what}: answer {answer:?} is not on the socket of its query, {sockets:?}"
        );
    }
}

/// Asserts that the server's side of `run`'s lookups is captured exactly
/// once, attributed to the server process `pid` in namespace `netns`.
pub fn assert_server_side_captured_once(
    trace: &Trace,
    packets: &[WirePacket],
    run: &ClientRun,
    pid: u32,
    netns: u64,
) {
    let what = format!("server (pid {pid}) answering {}", run.domain);
    let packets = packets.iter().filter(|p| run.asked_for(&p.qname));
    let messages = trace
        .messages
        .iter()
        .filter(|m| m.qname.as_deref().is_some_and(|q| run.asked_for(q)) && Side::Server.owns(m));
    for (message, _) in assert_captured_once(&what, Side::Server, messages, packets) {
        assert_eq!(message.netns, Some(netns), "{what}: netns of {message:?}");
        assert_eq!(message.pid, Some(pid), "{what}: pid of {message:?}");
    }
}

/// Asserts that every message in the trace passes `filter`, as a tracer
/// started with that filter must ensure.
pub fn assert_only(trace: &Trace, filter: &str, passes: impl Fn(&Message) -> bool) {
    let strays: Vec<&Message> = trace.messages.iter().filter(|m| !passes(m)).collect();
    assert!(
        strays.is_empty(),
        "{} messages got past {filter}, for example {:?}",
        strays.len(),
        &strays[..strays.len().min(5)]
    );
}

fn opcode_name(opcode: u8) -> &'static str {
    match opcode {
        0 => "QUERY",
        other => panic!("the tests send no opcode {other}"),
    }
}

fn rcode_name(rcode: u8) -> &'static str {
    match rcode {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        other => panic!("the tests provoke no rcode {other}"),
    }
}

fn qtype_name(qtype: u16) -> &'static str {
    match qtype {
        1 => "A",
        16 => "TXT",
        28 => "AAAA",
        other => panic!("the tests ask for no qtype {other}"),
    }
}
