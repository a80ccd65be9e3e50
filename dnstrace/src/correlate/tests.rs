//! Scenario tests: the message sequences real resolvers produce
//! (../shared/notes/resolver-behaviour.md), through correlation and
//! diagnosis.

use std::{net::SocketAddr, sync::Arc};

use super::{
    Correlated, Correlator,
    attempt::{Outcome, ReadState},
    lookup::LookupOutcome,
};
use crate::{
    decode::{DnsSummary, Flags, HeaderSummary, Question},
    diagnose::{Cause, Diagnoser},
    message::{Direction, Envelope, Facts, Message, Process, Transport},
    resolver::{ResolvConf, ResolverContext},
};

const MS: u64 = 1_000_000;
const A: u16 = 1;
const AAAA: u16 = 28;

struct Scenario {
    correlator: Correlator,
    out: Vec<Correlated>,
    /// What the enrich stage would attach to each process's messages.
    read: fn(u32) -> ResolverContext,
}

/// How a response looks.
#[derive(Clone, Copy)]
struct Answer {
    rcode: u16,
    flags: Flags,
    answers: u16,
    additional: u16,
}

/// NOERROR, no answers, neither AA nor RA: what CoreDNS's cache sent.
const LAME_NODATA: Answer = Answer {
    rcode: 0,
    flags: Flags::RD,
    answers: 0,
    additional: 0,
};
const GOOD: Answer = Answer {
    rcode: 0,
    flags: Flags::RA,
    answers: 1,
    additional: 0,
};
const NODATA_RA: Answer = Answer {
    rcode: 0,
    flags: Flags::RA,
    answers: 0,
    additional: 0,
};
const NXDOMAIN: Answer = Answer {
    rcode: 3,
    flags: Flags::RA,
    answers: 0,
    additional: 0,
};

fn server(n: u8) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, n], 53))
}

/// A client socket: its process, its cookie and the server it talks to.
#[derive(Clone, Copy)]
struct Socket {
    pid: u32,
    cookie: u64,
    server: SocketAddr,
}

impl Socket {
    fn new(pid: u32, cookie: u64, server: SocketAddr) -> Self {
        Self {
            pid,
            cookie,
            server,
        }
    }
}

fn message(
    direction: Direction,
    socket: Socket,
    id: u16,
    name: &str,
    qtype: u16,
    at: u64,
    answer: Option<Answer>,
) -> Message {
    let header = HeaderSummary {
        id,
        is_response: answer.is_some(),
        opcode: 0,
        flags: answer.map_or(Flags::RD, |a| a.flags),
        rcode: answer.map_or(0, |a| a.rcode),
        questions: 1,
        answers: answer.map_or(0, |a| a.answers),
        authority: 0,
        additional: answer.map_or(0, |a| a.additional),
    };
    Message {
        envelope: Envelope {
            wall_time_ns: i128::from(at),
            monotonic_ns: at,
            process: Some(Process {
                pid: socket.pid,
                tid: socket.pid,
                comm: "client".into(),
                uid: 0,
                cgroup_id: 1,
                // No namespace: the tests must not depend on this host's /proc.
                netns: None,
                facts: Facts::unknown(),
            }),
            socket_cookie: socket.cookie,
            direction,
            transport: Transport::Udp,
            local: SocketAddr::from(([10, 0, 0, 1], 40000 + socket.cookie as u16)),
            remote: socket.server,
            response_number: None,
        },
        size: 40,
        truncated_capture: false,
        payload: Vec::new(),
        dns: DnsSummary {
            header: Some(header),
            question: Some(Question {
                name: name.into(),
                qtype,
            }),
            edns_udp_size: None,
            decode_error: None,
        },
    }
}

impl Scenario {
    /// Processes whose resolv.conf could not be read.
    fn new() -> Self {
        Self::reading(|_| ResolverContext::default())
    }

    fn reading(read: fn(u32) -> ResolverContext) -> Self {
        Self {
            correlator: Correlator::default(),
            out: Vec::new(),
            read,
        }
    }

    fn query(&mut self, socket: Socket, id: u16, name: &str, qtype: u16, at: u64) {
        let m = self.enriched(message(Direction::Send, socket, id, name, qtype, at, None));
        self.correlator.observe(&m, &mut self.out);
    }

    fn answer(&mut self, socket: Socket, id: u16, name: &str, qtype: u16, at: u64, answer: Answer) {
        let m = self.enriched(message(
            Direction::Recv,
            socket,
            id,
            name,
            qtype,
            at,
            Some(answer),
        ));
        self.correlator.observe(&m, &mut self.out);
    }

    fn enriched(&self, mut message: Message) -> Message {
        if let Some(process) = &mut message.envelope.process {
            process.facts = Arc::new(Facts {
                resolver: Arc::new((self.read)(process.pid)),
                ..Facts::default()
            });
        }
        message
    }

    /// An A query at `at`, answered a millisecond later.
    fn exchange(&mut self, socket: Socket, id: u16, name: &str, at: u64, answer: Answer) {
        self.query(socket, id, name, A, at);
        self.answer(socket, id, name, A, at + MS, answer);
    }

    /// Lets 20 s pass, then returns what settled and what was diagnosed.
    fn settle(mut self, now: u64) -> (Vec<Correlated>, Vec<crate::diagnose::Diagnosis>) {
        self.correlator.advance(now + 20_000 * MS, &mut self.out);
        let mut diagnoser = Diagnoser::default();
        for item in &self.out {
            match item {
                Correlated::Lookup(lookup) => {
                    diagnoser.lookup(lookup);
                }
                Correlated::Stray(attempt) => {
                    diagnoser.stray(attempt);
                }
            }
        }
        let diagnoses = diagnoser.all().into_iter().cloned().collect();
        (self.out, diagnoses)
    }
}

fn lookups(out: &[Correlated]) -> Vec<&super::lookup::Lookup> {
    out.iter()
        .filter_map(|item| match item {
            Correlated::Lookup(lookup) => Some(lookup),
            Correlated::Stray(_) => None,
        })
        .collect()
}

fn causes(diagnoses: &[crate::diagnose::Diagnosis]) -> Vec<Cause> {
    diagnoses.iter().map(|d| d.cause).collect()
}

#[test]
fn glibc_both_lame_is_answer_rejected_by_asking_again() {
    let mut s = Scenario::new();
    // glibc 2.36: the A/AAAA pair, lame answers, the pair again on the same socket.
    s.query(Socket::new(7, 1, server(1)), 0x100, "db.test.", A, 0);
    s.query(
        Socket::new(7, 1, server(1)),
        0x101,
        "db.test.",
        AAAA,
        MS / 10,
    );
    s.answer(
        Socket::new(7, 1, server(1)),
        0x100,
        "db.test.",
        A,
        MS,
        LAME_NODATA,
    );
    s.answer(
        Socket::new(7, 1, server(1)),
        0x101,
        "db.test.",
        AAAA,
        MS,
        LAME_NODATA,
    );
    s.query(Socket::new(7, 1, server(1)), 0x100, "db.test.", A, 2 * MS);
    s.query(
        Socket::new(7, 1, server(1)),
        0x101,
        "db.test.",
        AAAA,
        2 * MS,
    );
    s.answer(
        Socket::new(7, 1, server(1)),
        0x100,
        "db.test.",
        A,
        3 * MS,
        LAME_NODATA,
    );
    s.answer(
        Socket::new(7, 1, server(1)),
        0x101,
        "db.test.",
        AAAA,
        3 * MS,
        LAME_NODATA,
    );
    let (out, diagnoses) = s.settle(3 * MS);
    let lookups = lookups(&out);
    assert_eq!(lookups.len(), 1, "one lookup: {lookups:#?}");
    assert_eq!(
        lookups[0].outcome(),
        LookupOutcome::Failed,
        "it gave up on the same answers"
    );
    let outcomes: Vec<Outcome> = lookups[0].attempts.iter().map(|a| a.outcome).collect();
    assert_eq!(
        outcomes[2],
        Outcome::Rejected(super::attempt::Rejection::GaveUp)
    );
    assert!(
        matches!(outcomes[0], Outcome::Rejected(_)) && matches!(outcomes[1], Outcome::Rejected(_)),
        "{outcomes:?}"
    );
    assert_eq!(causes(&diagnoses), [Cause::AnswerRejected]);
    let diagnosis = &diagnoses[0];
    assert_eq!(diagnosis.server, Some(server(1)));
    let (rejected, _) = diagnosis.shapes.unwrap();
    assert!(rejected.is_lame_referral());
    assert!(
        diagnosis.explanation.contains("lame-referral"),
        "{}",
        diagnosis.explanation
    );
    assert_eq!(diagnosis.evidence, [0x100, 0x101]);
}

#[test]
fn lame_server_then_good_server_names_the_lame_one_and_the_difference() {
    let mut s = Scenario::new();
    s.query(Socket::new(8, 1, server(1)), 1, "db.test.", A, 0);
    s.query(Socket::new(8, 1, server(1)), 2, "db.test.", AAAA, 0);
    s.answer(
        Socket::new(8, 1, server(1)),
        1,
        "db.test.",
        A,
        MS,
        LAME_NODATA,
    );
    s.answer(
        Socket::new(8, 1, server(1)),
        2,
        "db.test.",
        AAAA,
        MS,
        LAME_NODATA,
    );
    // glibc moves to the next nameserver on a new socket.
    s.query(Socket::new(8, 2, server(2)), 3, "db.test.", A, 2 * MS);
    s.query(Socket::new(8, 2, server(2)), 4, "db.test.", AAAA, 2 * MS);
    s.answer(Socket::new(8, 2, server(2)), 3, "db.test.", A, 3 * MS, GOOD);
    s.answer(
        Socket::new(8, 2, server(2)),
        4,
        "db.test.",
        AAAA,
        3 * MS,
        NODATA_RA,
    );
    let (out, diagnoses) = s.settle(3 * MS);
    let lookup = lookups(&out)[0];
    assert_eq!(lookup.outcome(), LookupOutcome::Resolved);
    assert_eq!(lookup.wasted_queries(), 2);
    assert_eq!(causes(&diagnoses), [Cause::AnswerRejected]);
    let diagnosis = &diagnoses[0];
    assert_eq!(diagnosis.server, Some(server(1)));
    assert!(
        diagnosis.explanation.contains("asked the next server"),
        "{}",
        diagnosis.explanation
    );
    let (_, accepted) = diagnosis.shapes.unwrap();
    assert!(
        accepted.unwrap().flags.contains(Flags::RA),
        "accepted shape has RA"
    );
    assert!(
        diagnosis.explanation.contains("RA 0→1"),
        "{}",
        diagnosis.explanation
    );
}

#[test]
fn an_application_repeating_a_lookup_rejects_nothing() {
    let mut s = Scenario::new();
    // Two getaddrinfo calls in a row: new socket each, same server.
    for (round, cookie) in [(0u64, 1u64), (1, 2)] {
        let t = round * 2 * MS;
        let id = cookie as u16 * 10;
        s.query(Socket::new(9, cookie, server(1)), id, "db.test.", A, t);
        s.query(
            Socket::new(9, cookie, server(1)),
            id + 1,
            "db.test.",
            AAAA,
            t,
        );
        s.answer(
            Socket::new(9, cookie, server(1)),
            id,
            "db.test.",
            A,
            t + MS / 2,
            GOOD,
        );
        s.answer(
            Socket::new(9, cookie, server(1)),
            id + 1,
            "db.test.",
            AAAA,
            t + MS / 2,
            NODATA_RA,
        );
    }
    let (out, diagnoses) = s.settle(4 * MS);
    let lookups = lookups(&out);
    assert_eq!(lookups.len(), 2, "two lookups: {lookups:#?}");
    assert!(
        lookups
            .iter()
            .all(|l| l.outcome() == LookupOutcome::Resolved)
    );
    assert!(
        lookups
            .iter()
            .flat_map(|l| &l.attempts)
            .all(|a| a.outcome == Outcome::Answered),
        "{lookups:#?}"
    );
    assert!(diagnoses.is_empty(), "{diagnoses:#?}");
}

#[test]
fn search_list_expansion_counts_the_wasted_queries() {
    let mut s = Scenario::new();
    let mut t = 0;
    let mut id = 0;
    for name in ["db.ns.svc.test.", "db.svc.test."] {
        for qtype in [A, AAAA] {
            id += 1;
            s.query(
                Socket::new(10, u64::from(id), server(1)),
                id,
                name,
                qtype,
                t,
            );
            s.answer(
                Socket::new(10, u64::from(id), server(1)),
                id,
                name,
                qtype,
                t + MS,
                NXDOMAIN,
            );
            t += 2 * MS;
        }
    }
    s.query(Socket::new(10, 99, server(1)), 99, "db.", A, t);
    s.answer(Socket::new(10, 99, server(1)), 99, "db.", A, t + MS, GOOD);
    let (out, diagnoses) = s.settle(t + MS);
    let lookups = lookups(&out);
    assert_eq!(lookups.len(), 1, "{lookups:#?}");
    assert_eq!(
        lookups[0].name, "db",
        "the shortest name is the one asked for"
    );
    assert_eq!(
        lookups[0].names_tried(),
        ["db.ns.svc.test.", "db.svc.test.", "db."]
    );
    assert_eq!(lookups[0].wasted_queries(), 4);
    assert_eq!(causes(&diagnoses), [Cause::SearchExpansion]);
    assert!(
        diagnoses[0].explanation.contains("4 wasted queries"),
        "{}",
        diagnoses[0].explanation
    );
}

#[test]
fn a_lost_aaaa_resent_with_the_same_ids_is_the_parallel_query_race() {
    let mut s = Scenario::new();
    s.query(Socket::new(11, 1, server(1)), 5, "db.test.", A, 0);
    s.query(Socket::new(11, 1, server(1)), 6, "db.test.", AAAA, 0);
    s.answer(Socket::new(11, 1, server(1)), 5, "db.test.", A, MS, GOOD);
    // Five seconds later glibc sends both again, same ids, same socket.
    s.query(Socket::new(11, 1, server(1)), 5, "db.test.", A, 5_000 * MS);
    s.query(
        Socket::new(11, 1, server(1)),
        6,
        "db.test.",
        AAAA,
        5_000 * MS,
    );
    s.answer(
        Socket::new(11, 1, server(1)),
        5,
        "db.test.",
        A,
        5_001 * MS,
        GOOD,
    );
    s.answer(
        Socket::new(11, 1, server(1)),
        6,
        "db.test.",
        AAAA,
        5_001 * MS,
        NODATA_RA,
    );
    let (out, diagnoses) = s.settle(5_001 * MS);
    let lookup = lookups(&out)[0];
    let outcomes: Vec<Outcome> = lookup.attempts.iter().map(|a| a.outcome).collect();
    assert_eq!(
        outcomes,
        [
            Outcome::Answered,
            Outcome::Timeout,
            Outcome::Answered,
            Outcome::Answered
        ]
    );
    assert_eq!(causes(&diagnoses), [Cause::ParallelQueryLoss]);
}

#[test]
fn an_unanswered_query_times_out_after_the_resolver_timeout() {
    let mut s = Scenario::new();
    s.query(Socket::new(12, 1, server(1)), 7, "gone.test.", A, 0);
    s.correlator.advance(3_000 * MS, &mut s.out);
    assert!(s.out.is_empty(), "still within the 5 s timeout");
    let (out, diagnoses) = s.settle(0);
    let lookup = lookups(&out)[0];
    assert_eq!(lookup.attempts[0].outcome, Outcome::Timeout);
    assert_eq!(lookup.outcome(), LookupOutcome::Failed);
    assert_eq!(causes(&diagnoses), [Cause::Timeout]);
}

#[test]
fn a_response_with_an_unknown_id_is_mismatched() {
    let mut s = Scenario::new();
    s.query(Socket::new(13, 1, server(1)), 7, "db.test.", A, 0);
    s.answer(Socket::new(13, 1, server(1)), 8, "db.test.", A, MS, GOOD);
    s.answer(
        Socket::new(13, 1, server(1)),
        7,
        "db.test.",
        A,
        2 * MS,
        GOOD,
    );
    let (out, diagnoses) = s.settle(2 * MS);
    let stray = out
        .iter()
        .find_map(|item| match item {
            Correlated::Stray(attempt) => Some(attempt),
            Correlated::Lookup(_) => None,
        })
        .expect("a stray response");
    assert_eq!(
        stray.outcome,
        Outcome::Mismatched(super::attempt::Mismatch::Id)
    );
    assert_eq!(lookups(&out)[0].outcome(), LookupOutcome::Resolved);
    assert_eq!(causes(&diagnoses), [Cause::MismatchedAnswer]);
}

#[test]
fn servfail_then_the_next_server_is_a_server_failure_fallback() {
    let mut s = Scenario::new();
    let servfail = Answer {
        rcode: 2,
        ..NODATA_RA
    };
    s.exchange(Socket::new(14, 1, server(1)), 1, "db.test.", 0, servfail);
    s.exchange(Socket::new(14, 2, server(2)), 2, "db.test.", 2 * MS, GOOD);
    let (_, diagnoses) = s.settle(3 * MS);
    assert_eq!(causes(&diagnoses), [Cause::ServerFailureFallback]);
    assert_eq!(diagnoses[0].server, Some(server(1)));
}

#[test]
fn a_known_search_list_groups_the_expansion_under_the_name_asked() {
    let mut s = Scenario::reading(|_| ResolverContext {
        conf: Some(ResolvConf::parse(
            "search ns.svc.test svc.test\noptions ndots:5\n",
        )),
        library: None,
    });
    s.exchange(
        Socket::new(15, 1, server(1)),
        1,
        "api.ns.svc.test.",
        0,
        NXDOMAIN,
    );
    s.exchange(
        Socket::new(15, 2, server(1)),
        2,
        "api.svc.test.",
        2 * MS,
        GOOD,
    );
    let (out, diagnoses) = s.settle(3 * MS);
    let lookups = lookups(&out);
    assert_eq!(lookups.len(), 1, "{lookups:#?}");
    assert_eq!(lookups[0].name, "api");
    assert_eq!(lookups[0].wasted_queries(), 1);
    assert_eq!(causes(&diagnoses), [Cause::SearchExpansion]);
    assert!(diagnoses[0].fix.contains("ndots"), "{}", diagnoses[0].fix);
}

#[test]
fn a_load_generator_is_left_out_rather_than_misjudged() {
    let mut s = Scenario::new();
    // 3,000 queries in half a second, none answered yet.
    for n in 0..3_000u64 {
        s.query(
            Socket::new(16, n % 8, server(1)),
            n as u16,
            "load.test.",
            A,
            n * MS / 6,
        );
    }
    let uncorrelated = s.correlator.uncorrelated;
    let (out, diagnoses) = s.settle(500 * MS);
    assert!(uncorrelated >= 1_000, "{uncorrelated}");
    assert!(
        lookups(&out).is_empty(),
        "no half-seen lookups are reported"
    );
    assert!(diagnoses.is_empty(), "{diagnoses:#?}");
}

/// The kernel's counts, as a test sets them.
struct Counts(Option<u64>);

impl super::reads::ReadCounter for Counts {
    fn reads(&mut self, _socket_cookie: u64) -> Option<u64> {
        self.0
    }
}

/// The A/AAAA pair on one socket, both answered (numbered 1 and 2 when
/// `numbered`), settled against `counts` a second after they came: each
/// response's read state.
fn pair_read_as(numbered: bool, counts: Option<Counts>) -> Vec<ReadState> {
    pair_read_as_at(numbered, counts, MS + super::SETTLE_NS)
}

fn pair_read_as_at(numbered: bool, counts: Option<Counts>, now: u64) -> Vec<ReadState> {
    let mut s = Scenario::new();
    let socket = Socket::new(7, 1, server(1));
    s.query(socket, 0x100, "db.test.", A, 0);
    s.query(socket, 0x101, "db.test.", AAAA, 0);
    for (number, id, qtype) in [(1, 0x100, A), (2, 0x101, AAAA)] {
        let mut m = message(
            Direction::Recv,
            socket,
            id,
            "db.test.",
            qtype,
            MS,
            Some(GOOD),
        );
        m.envelope.response_number = numbered.then_some(number);
        s.correlator.observe(&m, &mut s.out);
    }
    let (out, _) = s.settle(MS);
    let mut counts = counts;
    let mut states = Vec::new();
    for item in out {
        if let Correlated::Lookup(mut lookup) = item {
            super::reads::settle(
                &mut lookup,
                counts
                    .as_mut()
                    .map(|c| c as &mut dyn super::reads::ReadCounter),
                now,
            );
            states.extend(
                lookup
                    .attempts
                    .iter()
                    .map(|a| a.response.as_ref().unwrap().read),
            );
        }
    }
    states
}

#[test]
fn a_response_was_read_once_the_sockets_reads_reach_its_number() {
    use ReadState::{Read, Unknown, Unread};
    assert_eq!(pair_read_as(true, Some(Counts(Some(2)))), [Read, Read]);
    assert_eq!(pair_read_as(true, Some(Counts(Some(1)))), [Read, Unread]);
    assert_eq!(pair_read_as(true, Some(Counts(Some(0)))), [Unread, Unread]);
    // The socket's counts were evicted: nothing can be told.
    assert_eq!(pair_read_as(true, Some(Counts(None))), [Unknown, Unknown]);
    // No counts at all (a file), or responses the kernel did not number.
    assert_eq!(pair_read_as(true, None), [Unknown, Unknown]);
    assert_eq!(
        pair_read_as(false, Some(Counts(Some(2)))),
        [Unknown, Unknown]
    );
    // Reported early (at exit): what was read is known, what was not yet
    // may still be.
    assert_eq!(
        pair_read_as_at(true, Some(Counts(Some(1))), 2 * MS),
        [Read, Unknown]
    );
}

#[test]
fn a_stray_response_is_not_judged_read_or_unread() {
    let mut s = Scenario::new();
    let socket = Socket::new(7, 1, server(1));
    s.query(socket, 0x100, "db.test.", A, 0);
    let mut m = message(
        Direction::Recv,
        socket,
        0x999,
        "db.test.",
        A,
        MS,
        Some(GOOD),
    );
    m.envelope.response_number = Some(1);
    s.correlator.observe(&m, &mut s.out);
    let strays: Vec<ReadState> = s
        .out
        .iter()
        .filter_map(|item| match item {
            Correlated::Stray(attempt) => attempt.response.as_ref().map(|r| r.read),
            Correlated::Lookup(_) => None,
        })
        .collect();
    assert_eq!(strays, [ReadState::Unknown]);
}
