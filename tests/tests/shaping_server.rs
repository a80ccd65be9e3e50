//! The shaping server puts the intended odd answer on the wire for each
//! shape, so the tests built on it provoke what they claim to. This checks
//! the fixture, not dnstrace.

use std::{
    collections::BTreeSet,
    process::{Child, Stdio},
    time::Duration,
};

use dnstrace_tests::{
    clients::Lookup,
    netns::{Family, Topology},
    process::{run, wait_bounded},
    servers::{ANSWER_V4, DnsServer, HUGE_TXT_RECORDS, ServerKind, dig_target},
    wire::PacketCapture,
};

/// What the answer to one query must look like on the wire.
enum Expected {
    Answer {
        rcode: u8,
        flags: &'static [&'static str],
        /// Answer, authority and additional counts.
        counts: [u16; 3],
    },
    /// The ID differs from the query's; the rest is a normal answer.
    WrongId,
    Silence,
}

const AUTHORITATIVE: &[&str] = &["aa", "rd", "ra"];
const LAME: &[&str] = &["rd"];

fn rcode(rcode: u8) -> Expected {
    Expected::Answer {
        rcode,
        flags: &["rd", "ra"],
        counts: [0, 0, 0],
    }
}

fn cases() -> [(&'static str, &'static str, Expected); 17] {
    let answer = |flags, counts| Expected::Answer {
        rcode: 0,
        flags,
        counts,
    };
    [
        ("normal", "A", answer(AUTHORITATIVE, [1, 0, 0])),
        ("lame-aaaa", "A", answer(LAME, [1, 0, 0])),
        ("lame-aaaa", "AAAA", answer(LAME, [0, 1, 0])),
        ("lame", "A", answer(LAME, [0, 1, 0])),
        ("formerr", "A", rcode(1)),
        ("servfail", "A", rcode(2)),
        ("nxdomain", "A", rcode(3)),
        ("notimp", "A", rcode(4)),
        ("refused", "A", rcode(5)),
        ("tc", "A", answer(&["aa", "tc", "rd", "ra"], [0, 0, 0])),
        ("drop", "A", Expected::Silence),
        ("drop-aaaa", "A", answer(AUTHORITATIVE, [1, 0, 0])),
        ("drop-aaaa", "AAAA", Expected::Silence),
        ("slow-drop-aaaa", "A", answer(AUTHORITATIVE, [1, 0, 0])),
        ("slow-drop-aaaa", "AAAA", Expected::Silence),
        ("wrong-id", "A", Expected::WrongId),
        (
            "huge",
            "TXT",
            answer(AUTHORITATIVE, [HUGE_TXT_RECORDS as u16, 0, 0]),
        ),
    ]
}

#[test]
fn each_shape_puts_its_answer_on_the_wire() {
    let net = Topology::new();
    let shaping = DnsServer::start(ServerKind::Shaping, &net);
    let wire = PacketCapture::start(&net.server, &[53]);
    // All at once: the silent shapes each cost dig a one-second timeout.
    let digs: Vec<(String, Expected, Child)> = cases()
        .into_iter()
        .map(|(shape, qtype, expected)| {
            let lookup =
                Lookup::in_subzone(&qtype.to_lowercase(), shape, shaping.socket(Family::V4));
            let dig = net
                .client
                .command("dig")
                .args(dig_target(lookup.server))
                .args(["+tries=1", "+time=1", "+ignore", "+noedns"])
                .args([lookup.domain.as_str(), qtype])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn dig");
            (format!("{}.", lookup.domain), expected, dig)
        })
        .collect();
    let mut checks = Vec::new();
    for (qname, expected, mut dig) in digs {
        wait_bounded(&mut dig, Duration::from_secs(30)).expect("dig finishes");
        checks.push((qname, expected));
    }
    let packets = wire.stop();
    for (qname, expected) in checks {
        let of_name: Vec<_> = packets.iter().filter(|p| p.qname == qname).collect();
        let [query, answers @ ..] = &of_name[..] else {
            panic!("no query for {qname}");
        };
        assert!(!query.qr, "the first packet is the query: {of_name:?}");
        match (expected, answers) {
            (Expected::Silence, []) => {}
            (Expected::WrongId, [answer]) => assert_ne!(answer.id, query.id, "{answer:?}"),
            (
                Expected::Answer {
                    rcode,
                    flags,
                    counts,
                },
                [answer],
            ) => {
                assert_eq!(answer.id, query.id, "{answer:?}");
                assert_eq!(answer.rcode, rcode, "{answer:?}");
                assert_eq!(
                    answer.flags,
                    BTreeSet::from_iter(flags.iter().copied()),
                    "{answer:?}"
                );
                let got = [answer.answers, answer.authority, answer.additional];
                assert_eq!(got, counts, "{answer:?}");
            }
            (_, answers) => panic!("wrong number of answers for {qname}: {answers:?}"),
        }
    }
}

/// Runs dig in the client namespace with `args` and returns its output.
fn dig(net: &Topology, lookup: &Lookup, args: &[&str]) -> String {
    let mut command = net.client.command("dig");
    command
        .args(dig_target(lookup.server))
        .args(["+tries=1", "+time=2", "+noedns"])
        .arg(&lookup.domain)
        .args(args)
        .stderr(Stdio::null());
    run(&mut command)
}

#[test]
fn cache_answers_with_aa_first_and_without_it_from_then_on() {
    let net = Topology::new();
    let shaping = DnsServer::start(ServerKind::Shaping, &net);
    let wire = PacketCapture::start(&net.server, &[53]);
    let lookup = Lookup::in_subzone("cache", "cache", shaping.socket(Family::V4));
    // One after the other: the first of each type fills the cache.
    for _ in 0..2 {
        for qtype in ["A", "AAAA"] {
            dig(&net, &lookup, &[qtype]);
        }
    }
    let packets = wire.stop();
    let answers: Vec<_> = packets.iter().filter(|p| p.qr).collect();
    let shapes: Vec<(u16, Vec<&str>, [u16; 3])> = answers
        .iter()
        .map(|p| {
            let flags = p.flags.iter().copied().collect();
            (p.qtype, flags, [p.answers, p.authority, p.additional])
        })
        .collect();
    let cached = LAME.to_vec();
    assert_eq!(
        shapes,
        [
            (1, vec!["aa", "rd"], [1, 0, 0]),
            (28, vec!["aa", "rd"], [0, 1, 0]),
            (1, cached.clone(), [1, 0, 0]),
            (28, cached, [0, 1, 0]),
        ],
        "{answers:#?}"
    );
    assert!(answers.iter().all(|p| p.rcode == 0), "{answers:#?}");
}

#[test]
fn truncated_names_are_answered_whole_over_tcp() {
    let net = Topology::new();
    let shaping = DnsServer::start(ServerKind::Shaping, &net);
    let lookup = Lookup::in_subzone("tcp", "tc", shaping.socket(Family::V4));
    let over_udp = dig(&net, &lookup, &["+ignore", "+short"]);
    assert!(over_udp.trim().is_empty(), "UDP: {over_udp}");
    let over_tcp = dig(&net, &lookup, &["+tcp", "+short"]);
    assert_eq!(over_tcp.trim(), ANSWER_V4.to_string(), "TCP: {over_tcp}");
}
