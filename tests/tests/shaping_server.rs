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
    process::wait_bounded,
    servers::{DnsServer, HUGE_TXT_RECORDS, ServerKind, dig_target},
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

fn cases() -> [(&'static str, &'static str, Expected); 15] {
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
