//! The JSON Lines output: every line has exactly the documented fields, the
//! summary closes the file and agrees with it, and timestamps are wall-clock
//! times with nanoseconds, in causal order.

use std::{
    collections::BTreeSet,
    time::{Duration, SystemTime},
};

use dnstrace_tests::{
    clients::{Client, Lookup},
    netns::{Family, Topology},
    servers::{DnsServer, ServerKind},
    trace::{Direction, Trace, Tracer},
};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

/// The documented message fields (docs/json.md).
const MESSAGE_FIELDS: [&str; 29] = [
    "kind",
    "ts",
    "pid",
    "tid",
    "comm",
    "uid",
    "cgroup_id",
    "netns",
    "container",
    "pod",
    "socket_cookie",
    "direction",
    "proto",
    "local",
    "remote",
    "id",
    "qr",
    "opcode",
    "flags",
    "rcode",
    "qname",
    "qtype",
    "answers",
    "authority",
    "additional",
    "edns_udp_size",
    "size",
    "truncated_capture",
    "decode_error",
];
/// Null even in a complete message: no EDNS, or nothing wrong.
/// (A host process is in no container and no pod.)
const MAY_BE_NULL: [&str; 4] = ["edns_udp_size", "decode_error", "container", "pod"];
const SUMMARY_FIELDS: [&str; 11] = [
    "kind",
    "messages",
    "lost",
    "undecodable",
    "skipped_records",
    "drops",
    "drops_by_reason",
    "evicted_lookups",
    "shed",
    "incomplete_lookups",
    "unframed_tcp_streams",
];
const FLAGS: [&str; 6] = ["aa", "tc", "rd", "ra", "ad", "cd"];

/// A trace of glibc (no EDNS) over IPv4 and dig (EDNS) over IPv6, limited
/// to the client namespace, with the wall-clock times around it.
struct Traced {
    trace: Trace,
    started: SystemTime,
    stopped: SystemTime,
}

fn trace_two_lookups() -> Traced {
    let net = Topology::new();
    let server = DnsServer::start(ServerKind::Dnsmasq, &net);
    let started = SystemTime::now();
    let tracer = Tracer::start(["--netns", net.client.name()]);
    Client::Getent.run(&net, &Lookup::new("getent", server.socket(Family::V4)));
    Client::Dig.run(&net, &Lookup::new("dig", server.socket(Family::V6)));
    let trace = tracer.stop();
    let stopped = SystemTime::now();
    assert_eq!(
        trace.messages.len(),
        8,
        "getent's and dig's 4 messages each: {:?}",
        trace.messages
    );
    Traced {
        trace,
        started,
        stopped,
    }
}

fn keys(line: &serde_json::Value) -> BTreeSet<&str> {
    line.as_object()
        .unwrap_or_else(|| panic!("line is not an object: {line}"))
        .keys()
        .map(String::as_str)
        .collect()
}

#[test]
fn every_message_line_has_exactly_the_documented_fields() {
    let Traced { trace, .. } = trace_two_lookups();
    let (summary, lines) = trace.lines.split_last().expect("lines");
    let messages: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["kind"] == "message").collect();
    assert!(!messages.is_empty(), "no message lines in {lines:?}");
    for line in &messages {
        assert_eq!(
            keys(line),
            BTreeSet::from(MESSAGE_FIELDS),
            "fields of {line}"
        );
    }
    assert_eq!(
        keys(summary),
        BTreeSet::from(SUMMARY_FIELDS),
        "fields of {summary}"
    );
    // Everything is known about a client's own, well-formed lookups.
    for line in &messages {
        let nulls: Vec<&str> = MESSAGE_FIELDS
            .into_iter()
            .filter(|field| !MAY_BE_NULL.contains(field) && line[field].is_null())
            .collect();
        assert!(nulls.is_empty(), "{nulls:?} null in {line}");
    }
    for message in &trace.messages {
        assert!(
            message.qname.as_deref().is_some_and(|q| q.ends_with('.')),
            "qname of {message:?}"
        );
        assert!(
            message.flags.iter().all(|f| FLAGS.contains(&f.as_str())),
            "flags of {message:?}"
        );
        // glibc sends no EDNS; dig does, and dnsmasq answers in kind.
        let dig = message
            .comm
            .as_deref()
            .is_some_and(|c| Client::Dig.comm_matches(c));
        assert_eq!(
            message.edns_udp_size.is_some(),
            dig,
            "edns_udp_size of {message:?}"
        );
    }
}

#[test]
fn summary_line_ends_the_output_and_counts_its_messages() {
    let Traced { trace, .. } = trace_two_lookups();
    let summary = trace.summary;
    assert_eq!(summary.messages, trace.messages.len() as u64, "{summary:?}");
    let undecodable = trace
        .messages
        .iter()
        .filter(|m| m.decode_error.is_some())
        .count();
    assert_eq!(summary.undecodable, undecodable as u64, "{summary:?}");
    assert_eq!(summary.lost, 0, "{summary:?}");
    let counted = format!("{} messages", summary.messages);
    assert!(
        trace
            .stderr
            .iter()
            .any(|line| line.starts_with("dnstrace:") && line.contains(&counted)),
        "no summary on stderr saying {counted:?}: {:?}",
        trace.stderr
    );
}

#[test]
fn timestamps_are_wall_clock_nanoseconds_in_causal_order() {
    let Traced {
        trace,
        started,
        stopped,
    } = trace_two_lookups();
    // Slack for clock conversion, not for speed: a wrong epoch or time zone
    // is off by hours.
    let slack = Duration::from_secs(5);
    let earliest = OffsetDateTime::from(started - slack);
    let latest = OffsetDateTime::from(stopped + slack);
    let time_of = |ts: &str| {
        let fraction = ts
            .split_once('.')
            .map(|(_, rest)| rest.trim_end_matches('Z'));
        assert!(
            fraction.is_some_and(|f| f.len() == 9 && f.bytes().all(|b| b.is_ascii_digit())),
            "ts {ts:?} lacks nanoseconds"
        );
        OffsetDateTime::parse(ts, &Rfc3339)
            .unwrap_or_else(|e| panic!("ts {ts:?} is not RFC 3339: {e}"))
    };
    for message in &trace.messages {
        let time = time_of(&message.ts);
        assert!(
            earliest <= time && time <= latest,
            "ts of {message:?} is outside the run"
        );
    }
    for answer in trace
        .messages
        .iter()
        .filter(|m| m.direction == Direction::Recv)
    {
        let query = trace
            .messages
            .iter()
            .find(|q| {
                q.direction == Direction::Send
                    && q.socket_cookie == answer.socket_cookie
                    && q.id == answer.id
            })
            .unwrap_or_else(|| panic!("no query for {answer:?}"));
        assert!(
            time_of(&query.ts) <= time_of(&answer.ts),
            "answer {answer:?} is stamped before its query {query:?}"
        );
    }
}

/// `--json-kinds` keeps a node's log to the records it names.
#[test]
fn json_kinds_writes_only_the_kinds_named() {
    let net = Topology::new();
    let server = DnsServer::start(ServerKind::Dnsmasq, &net);
    let tracer = Tracer::start([
        "--netns",
        net.client.name(),
        "--json-kinds",
        "lookup,summary",
    ]);
    Client::Getent.run(&net, &Lookup::new("getent", server.socket(Family::V4)));
    let trace = tracer.stop();
    let kinds: BTreeSet<&str> = trace
        .lines
        .iter()
        .filter_map(|line| line["kind"].as_str())
        .collect();
    assert_eq!(kinds, BTreeSet::from(["lookup", "summary"]));
    assert_eq!(
        trace.summary.messages, 4,
        "every message is still seen and counted: {trace:?}"
    );
}
