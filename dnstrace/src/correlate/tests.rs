//! Scenario tests: the message sequences real resolvers produce
//! (../shared/notes/resolver-behaviour.md), through correlation and
//! diagnosis.

use std::{net::SocketAddr, sync::Arc};

use super::{
    Correlated, Correlator,
    attempt::{Attempt, Outcome, ReadState, Response, Shape},
    lookup::{Lookup, LookupOutcome},
};
use crate::{
    decode::{DnsSummary, Flags, HeaderSummary, Question},
    diagnose::{Cause, Diagnoser},
    message::{Client, ClientId, Direction, Envelope, Facts, Message, Process, Transport},
    resolver::{Library, ResolvConf, ResolverContext},
};

const MS: u64 = 1_000_000;
const SECOND: u64 = 1_000 * MS;
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
pub(crate) struct Answer {
    rcode: u16,
    flags: Flags,
    answers: u16,
    additional: u16,
}

/// NOERROR, no answers, neither AA nor RA: what CoreDNS's cache sent.
pub(crate) const LAME_NODATA: Answer = Answer {
    rcode: 0,
    flags: Flags::RD,
    answers: 0,
    additional: 0,
};
pub(crate) const GOOD: Answer = Answer {
    rcode: 0,
    flags: Flags::RA,
    answers: 1,
    additional: 0,
};
pub(crate) const NODATA_RA: Answer = Answer {
    rcode: 0,
    flags: Flags::RA,
    answers: 0,
    additional: 0,
};
pub(crate) const NXDOMAIN: Answer = Answer {
    rcode: 3,
    flags: Flags::RA,
    answers: 0,
    additional: 0,
};

/// A process as correlation names it, with nothing known of its facts.
pub(crate) fn client(pid: u32, comm: &str) -> Client {
    Client {
        id: ClientId::Pid(pid),
        comm: Some(comm.into()),
        facts: None,
    }
}

/// An attempt of `client`'s for `db.test.`, from socket 1 to `server(n)`,
/// sent at `at` and ended a millisecond later, with `answer` then if any:
/// for tests of what reads attempts, without messages to correlate.
pub(crate) fn attempt(
    client: &Client,
    n: u8,
    qtype: u16,
    outcome: Outcome,
    at: u64,
    answer: Option<Answer>,
) -> Attempt {
    Attempt {
        client: client.clone(),
        tid: None,
        socket_cookie: 1,
        transport: Transport::Udp,
        server: server(n),
        local: "192.0.2.100:40000".parse().unwrap(),
        server_pod: None,
        question: Question {
            name: "db.test.".into(),
            qtype,
        },
        id: 1,
        sent_monotonic_ns: Some(at),
        sent_wall: Some(0.into()),
        response: answer.map(|answer| {
            Box::new(Response {
                monotonic_ns: at + MS,
                wall_time_ns: 0,
                from: server(n),
                shape: Shape {
                    rcode: answer.rcode,
                    flags: answer.flags,
                    answers: answer.answers,
                    authority: 0,
                    additional: answer.additional,
                },
                number: None,
                read: ReadState::Unknown,
            })
        }),
        outcome,
        moved_on: false,
        ended_monotonic_ns: Some(at + MS),
        drop: None,
    }
}

/// A lookup of `name` made of `attempts`, the last message at `at + MS`.
pub(crate) fn lookup(name: &str, attempts: Vec<Attempt>, at: u64) -> Lookup {
    let mut attempts = attempts.into_iter();
    let first = attempts.next().expect("a lookup has an attempt");
    let mut lookup = Lookup::new(Default::default(), first);
    lookup.rename(name);
    lookup.attempts.extend(attempts);
    lookup.last_monotonic_ns = at + MS;
    lookup
}

pub(crate) fn server(n: u8) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, n], 53))
}

/// A client socket: its process, its cookie and the server it talks to.
#[derive(Clone, Copy)]
pub(crate) struct Socket {
    pid: u32,
    cookie: u64,
    server: SocketAddr,
}

impl Socket {
    pub(crate) fn new(pid: u32, cookie: u64, server: SocketAddr) -> Self {
        Self {
            pid,
            cookie,
            server,
        }
    }
}

pub(crate) fn message(
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
            Correlated::Lookup(lookup) => Some(&**lookup),
            Correlated::Stray(_) => None,
        })
        .collect()
}

fn causes(diagnoses: &[crate::diagnose::Diagnosis]) -> Vec<Cause> {
    diagnoses.iter().map(|d| d.cause).collect()
}

/// Every attempt's outcome, lookup by lookup.
fn outcomes(out: &[Correlated]) -> Vec<Outcome> {
    (lookups(out).iter())
        .flat_map(|l| &l.attempts)
        .map(|a| a.outcome)
        .collect()
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
    assert!(super::behaviour::is_glibc_lame(&rejected));
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

/// dnsperf's start against knot, as traced: a socket per line of its
/// input (www A, www AAAA, mail A, nope A), queries sent without waiting.
/// www's A is asked again on its socket while the AAAA on the other is
/// still out. Every answer is one every resolver keeps: nothing was thrown
/// away, whatever the resolver.
#[test]
fn a_client_asking_the_same_question_again_on_one_socket_rejects_nothing() {
    for library in [None, Some(GLIBC), Some(MUSL)] {
        let mut s = match library {
            Some(read) => Scenario::reading(read),
            None => Scenario::new(),
        };
        let www_a = Socket::new(21, 1, server(1));
        let www_aaaa = Socket::new(21, 2, server(1));
        let mail = Socket::new(21, 3, server(1));
        let nope = Socket::new(21, 4, server(1));
        let us = MS / 1000;
        s.query(www_a, 0, "www.test.", A, 0);
        s.answer(www_a, 0, "www.test.", A, 170 * us, GOOD);
        s.query(www_aaaa, 1, "www.test.", AAAA, 1283 * us);
        s.query(mail, 2, "mail.test.", A, 1333 * us);
        s.query(nope, 3, "nope.test.", A, 1436 * us);
        s.query(www_a, 4, "www.test.", A, 1458 * us);
        s.answer(www_aaaa, 1, "www.test.", AAAA, 1460 * us, GOOD);
        s.answer(mail, 2, "mail.test.", A, 1470 * us, GOOD);
        s.answer(nope, 3, "nope.test.", A, 1486 * us, NXDOMAIN);
        s.answer(www_a, 4, "www.test.", A, 1491 * us, GOOD);
        let (out, diagnoses) = s.settle(10 * MS);
        let attempts: Vec<_> = lookups(&out)
            .into_iter()
            .flat_map(|l| &l.attempts)
            .collect();
        assert_eq!(attempts.len(), 5);
        assert!(
            attempts
                .iter()
                .all(|a| !matches!(a.outcome, Outcome::Rejected(_))),
            "{attempts:#?}"
        );
        assert!(diagnoses.is_empty(), "{diagnoses:#?}");
    }
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
        lookups[0].name(),
        "db",
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

/// c-ares gave up on the first server and asked the next; the first's
/// answer came microseconds later. The process still waited in vain.
#[test]
fn an_answer_just_after_the_process_asked_the_next_server_is_still_a_timeout() {
    let mut s = Scenario::new();
    let slow = Socket::new(12, 1, server(1));
    let next = Socket::new(12, 2, server(2));
    s.query(slow, 7, "late.test.", A, 0);
    s.query(next, 7, "late.test.", A, 1_500 * MS);
    s.answer(slow, 7, "late.test.", A, 1_500 * MS + 2_000, GOOD);
    s.answer(next, 7, "late.test.", A, 1_501 * MS, GOOD);
    let (out, diagnoses) = s.settle(1_501 * MS);
    let lookup = lookups(&out)[0];
    assert_eq!(lookup.attempts[0].outcome, Outcome::Late);
    assert_eq!(lookup.attempts[1].outcome, Outcome::Answered);
    assert_eq!(causes(&diagnoses), [Cause::Timeout], "{out:#?}");
    assert_eq!(diagnoses[0].server, Some(server(1)));
    assert!(
        diagnoses[0]
            .explanation
            .contains("gave up after 1500 ms; the answer came after that"),
        "{}",
        diagnoses[0].explanation
    );
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
    assert_eq!(lookups[0].name(), "api");
    assert_eq!(lookups[0].wasted_queries(), 1);
    assert_eq!(causes(&diagnoses), [Cause::SearchExpansion]);
    assert!(diagnoses[0].fix.contains("ndots"), "{}", diagnoses[0].fix);
}

#[test]
fn a_busy_client_is_correlated_and_diagnosed() {
    let mut s = Scenario::new();
    // 5,000 distinct names in half a second, each answered NXDOMAIN: a
    // load generator, or a node-local cache forwarding.
    for n in 0..5_000u64 {
        let name = format!("n{n}.load.test.");
        s.exchange(
            Socket::new(16, n % 8, server(1)),
            n as u16,
            &name,
            n * MS / 10,
            NXDOMAIN,
        );
    }
    // Past its 512 open lookups each new one reports the oldest as it
    // stands: answered, so still NXDOMAIN.
    let evicted = s.correlator.evicted;
    let (out, _) = s.settle(500 * MS);
    assert_eq!(evicted, 5_000 - super::MAX_LOOKUPS_PER_PROCESS as u64);
    let lookups = lookups(&out);
    assert_eq!(lookups.len(), 5_000);
    assert!(
        lookups
            .iter()
            .all(|l| l.outcome() == LookupOutcome::NxDomain)
    );
}

#[test]
fn open_lookups_stay_within_the_budget_and_evictions_are_counted() {
    let mut s = Scenario::new();
    // One process: 600 unanswered names, past its 512.
    for n in 0..600u64 {
        s.query(
            Socket::new(17, n, server(1)),
            n as u16,
            &format!("n{n}.flood.test."),
            A,
            n * MS,
        );
    }
    assert_eq!(s.correlator.open_lookups(), super::MAX_LOOKUPS_PER_PROCESS);
    assert_eq!(s.correlator.evicted, 88);
    let evicted = lookups(&s.out);
    assert_eq!(evicted.len(), 88, "each evicted lookup is reported");
    assert!(
        evicted
            .iter()
            .all(|l| l.outcome() == LookupOutcome::Incomplete),
        "an unanswered query evicted is not a failure"
    );
    // 140 processes of 480 names each: past the 65,536 in all, the
    // process holding the most gives up its oldest.
    for pid in 0..140u32 {
        for n in 0..480u64 {
            s.query(
                Socket::new(100 + pid, n, server(1)),
                n as u16,
                &format!("n{n}.p{pid}.test."),
                A,
                SECOND + n * MS,
            );
        }
    }
    assert_eq!(s.correlator.open_lookups(), super::MAX_OPEN_LOOKUPS);
    let asked = 600 + 140 * 480;
    assert_eq!(
        s.correlator.evicted as usize,
        asked - super::MAX_OPEN_LOOKUPS
    );
}

#[test]
fn a_busy_process_in_a_file_from_the_far_future_is_correlated_without_overflow() {
    // The correlate fuzz target (docs/fuzzing.md) found an overflow near
    // u64::MAX, which any file can give; times there must still add up.
    let mut s = Scenario::new();
    let start = u64::MAX - 1_000 * MS;
    for n in 0..2_100u64 {
        s.query(
            Socket::new(16, n % 8, server(1)),
            n as u16,
            "load.test.",
            A,
            start + n * 1_000,
        );
    }
    let open = s.correlator.open_lookups();
    assert!(open > 0 && open <= 512, "{open} open lookups");
    s.correlator.advance(u64::MAX, &mut s.out);
}

/// The kernel's counts, as a test sets them.
struct Counts(Option<u64>);

impl super::reads::ReadCounter for Counts {
    fn reads(&mut self, _socket_cookie: u64, _number: u64) -> Option<u64> {
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

// What issue 11 found dnstrace misreading: each resolver's normal behaviour
// must get no false verdict.

const MUSL: fn(u32) -> ResolverContext = |_| ResolverContext {
    conf: None,
    library: Some(Library::Musl),
};
const GO: fn(u32) -> ResolverContext = |_| ResolverContext {
    conf: None,
    library: Some(Library::Go),
};
const GLIBC: fn(u32) -> ResolverContext = |_| ResolverContext {
    conf: None,
    library: Some(Library::Glibc {
        major: 2,
        minor: 36,
    }),
};
const REFUSED: Answer = Answer {
    rcode: 5,
    flags: Flags::RA,
    answers: 0,
    additional: 0,
};

impl Scenario {
    /// A response without a question section: a bare 12-byte header.
    fn bare_answer(&mut self, socket: Socket, id: u16, at: u64, answer: Answer) {
        let mut m = message(Direction::Recv, socket, id, ".", A, at, Some(answer));
        m.dns.question = None;
        if let Some(header) = m.dns.header.as_mut() {
            header.questions = 0;
        }
        self.correlator.observe(&m, &mut self.out);
    }

    fn tcp(&mut self, direction: Direction, socket: Socket, id: u16, qtype: u16, at: u64) {
        let answer = (direction == Direction::Recv).then_some(GOOD);
        let mut m = message(direction, socket, id, "db.test.", qtype, at, answer);
        m.envelope.transport = Transport::Tcp;
        self.correlator.observe(&m, &mut self.out);
    }
}

fn strays(out: &[Correlated]) -> Vec<&super::attempt::Attempt> {
    out.iter()
        .filter_map(|item| match item {
            Correlated::Stray(attempt) => Some(&**attempt),
            Correlated::Lookup(_) => None,
        })
        .collect()
}

/// musl sends the pair to both servers at once, from one socket, with the
/// same ids; `first` answers at once, the other server with `second` (or
/// not at all).
fn musl_asks_both(first: Answer, second: Option<Answer>) -> Scenario {
    let mut s = Scenario::reading(MUSL);
    for server in [server(1), server(2)] {
        s.query(Socket::new(20, 1, server), 0x10, "db.test.", A, 0);
        s.query(Socket::new(20, 1, server), 0x11, "db.test.", AAAA, 0);
    }
    for (id, qtype) in [(0x10, A), (0x11, AAAA)] {
        s.answer(
            Socket::new(20, 1, server(1)),
            id,
            "db.test.",
            qtype,
            MS,
            first,
        );
        if let Some(second) = second {
            s.answer(
                Socket::new(20, 1, server(2)),
                id,
                "db.test.",
                qtype,
                2 * MS,
                second,
            );
        }
    }
    s
}

#[test]
fn musl_asking_every_server_at_once_matches_each_answer_to_its_server() {
    for (first, second) in [
        (GOOD, Some(GOOD)),
        (GOOD, None),
        (NXDOMAIN, Some(GOOD)),
        (LAME_NODATA, Some(GOOD)),
        (REFUSED, Some(GOOD)),
    ] {
        let (out, diagnoses) = musl_asks_both(first, second).settle(2 * MS);
        assert!(strays(&out).is_empty(), "{out:#?}");
        assert!(diagnoses.is_empty(), "{diagnoses:#?}");
        let lookups = lookups(&out);
        assert_eq!(lookups.len(), 1, "{lookups:#?}");
        // Each answer is its own server's; musl took server 1's unless it
        // ignored it (REFUSED), and the rest were not needed.
        let first_kept = first.rcode != 5;
        for attempt in &lookups[0].attempts {
            if let Some(response) = &attempt.response {
                assert_eq!(response.from, attempt.server, "{attempt:#?}");
            }
            let used = (attempt.server == server(1)) == first_kept;
            let expected = if used {
                Outcome::Answered
            } else {
                Outcome::Superseded
            };
            assert_eq!(attempt.outcome, expected, "{attempt:#?}");
        }
        let expected = match first.rcode {
            3 => LookupOutcome::NxDomain,
            0 if first.answers == 0 => LookupOutcome::NoData,
            _ => LookupOutcome::Resolved,
        };
        assert_eq!(lookups[0].outcome(), expected);
    }
}

#[test]
fn musl_asking_a_servfail_server_again_is_a_server_failure_fallback() {
    let servfail = Answer {
        rcode: 2,
        ..NODATA_RA
    };
    let mut s = musl_asks_both(servfail, None);
    // musl re-sends to the server that failed, same socket, same id.
    s.query(Socket::new(20, 1, server(1)), 0x10, "db.test.", A, 2 * MS);
    s.query(
        Socket::new(20, 1, server(1)),
        0x11,
        "db.test.",
        AAAA,
        2 * MS,
    );
    // The second server answers both; musl takes them.
    for (id, qtype) in [(0x10, A), (0x11, AAAA)] {
        s.answer(
            Socket::new(20, 1, server(2)),
            id,
            "db.test.",
            qtype,
            3 * MS,
            GOOD,
        );
    }
    let (out, diagnoses) = s.settle(3 * MS);
    assert!(strays(&out).is_empty(), "{out:#?}");
    assert_eq!(causes(&diagnoses), [Cause::ServerFailureFallback]);
    assert_eq!(diagnoses[0].server, Some(server(1)));
    assert_eq!(lookups(&out)[0].outcome(), LookupOutcome::Resolved);
}

#[test]
fn an_answer_from_another_address_than_the_query_went_to_is_still_mismatched() {
    let mut s = Scenario::reading(MUSL);
    s.query(Socket::new(21, 1, server(1)), 7, "db.test.", A, 0);
    s.answer(Socket::new(21, 1, server(3)), 7, "db.test.", A, MS, GOOD);
    let (out, diagnoses) = s.settle(MS);
    let strays = strays(&out);
    assert_eq!(
        strays.iter().map(|a| a.outcome).collect::<Vec<_>>(),
        [Outcome::Mismatched(super::attempt::Mismatch::Source)]
    );
    assert!(causes(&diagnoses).contains(&Cause::MismatchedAnswer));
}

#[test]
fn a_refused_without_a_question_matches_by_socket_and_id() {
    let mut s = Scenario::reading(GLIBC);
    let first = Socket::new(22, 1, server(1));
    s.query(first, 0x20, "db.test.", A, 0);
    s.query(first, 0x21, "db.test.", AAAA, 0);
    s.bare_answer(first, 0x20, MS, REFUSED);
    s.bare_answer(first, 0x21, MS, REFUSED);
    // glibc moves to the next server at once.
    let second = Socket::new(22, 2, server(2));
    s.query(second, 0x22, "db.test.", A, 2 * MS);
    s.query(second, 0x23, "db.test.", AAAA, 2 * MS);
    s.answer(second, 0x22, "db.test.", A, 3 * MS, GOOD);
    s.answer(second, 0x23, "db.test.", AAAA, 3 * MS, NODATA_RA);
    let (out, diagnoses) = s.settle(3 * MS);
    assert!(strays(&out).is_empty(), "{out:#?}");
    assert_eq!(causes(&diagnoses), [Cause::ServerFailureFallback]);
    assert_eq!(diagnoses[0].server, Some(server(1)));
    assert_eq!(diagnoses[0].evidence, [0x20, 0x21]);
    assert_eq!(lookups(&out)[0].outcome(), LookupOutcome::Resolved);
}

#[test]
fn dig_taking_a_refused_without_a_question_as_its_answer_gets_no_verdict() {
    let mut s = Scenario::new();
    let socket = Socket::new(23, 1, server(1));
    s.query(socket, 0x30, "db.test.", A, 0);
    s.bare_answer(socket, 0x30, MS, REFUSED);
    let (out, diagnoses) = s.settle(MS);
    assert!(diagnoses.is_empty(), "{diagnoses:#?}");
    let lookup = lookups(&out)[0];
    assert_eq!(lookup.attempts[0].outcome, Outcome::Answered);
    assert_eq!(lookup.outcome(), LookupOutcome::Failed);
}

#[test]
fn a_response_without_a_question_that_fits_no_query_is_mismatched() {
    let mut s = Scenario::new();
    let socket = Socket::new(24, 1, server(1));
    s.query(socket, 0x40, "db.test.", A, 0);
    s.bare_answer(socket, 0x41, MS, REFUSED);
    s.answer(socket, 0x40, "db.test.", A, 2 * MS, GOOD);
    let (out, diagnoses) = s.settle(2 * MS);
    let strays = strays(&out);
    assert_eq!(strays.len(), 1, "{out:#?}");
    assert_eq!(strays[0].question.name, "");
    assert_eq!(causes(&diagnoses), [Cause::MismatchedAnswer]);
    assert!(
        diagnoses[0].explanation.contains("no question"),
        "{}",
        diagnoses[0].explanation
    );
}

/// glibc's pair over UDP; the A answer is truncated, so glibc asks both
/// over TCP at once; the AAAA's truncated answer comes after that, or
/// never reaches the socket (closed by then).
fn truncated_pair(second_answer_seen: bool) -> (Vec<Correlated>, Vec<crate::diagnose::Diagnosis>) {
    let mut s = Scenario::reading(GLIBC);
    let udp = Socket::new(25, 1, server(1));
    let tcp = Socket::new(25, 2, server(1));
    let truncated = Answer {
        flags: Flags::from_names(["tc", "ra"]).expect("known flags"),
        answers: 0,
        ..GOOD
    };
    s.query(udp, 0x50, "db.test.", A, 0);
    s.query(udp, 0x51, "db.test.", AAAA, 0);
    s.answer(udp, 0x50, "db.test.", A, MS, truncated);
    s.tcp(Direction::Send, tcp, 0x52, A, MS + MS / 10);
    s.tcp(Direction::Send, tcp, 0x53, AAAA, MS + MS / 5);
    if second_answer_seen {
        s.answer(udp, 0x51, "db.test.", AAAA, MS + MS / 4, truncated);
    }
    s.tcp(Direction::Recv, tcp, 0x52, A, 2 * MS);
    s.tcp(Direction::Recv, tcp, 0x53, AAAA, 2 * MS);
    s.settle(2 * MS)
}

#[test]
fn a_truncated_answer_after_the_switch_to_tcp_is_no_timeout() {
    for seen in [true, false] {
        let (out, diagnoses) = truncated_pair(seen);
        assert_eq!(
            causes(&diagnoses),
            [Cause::TruncatedTcpFallback],
            "second answer seen: {seen}: {diagnoses:#?}"
        );
        assert!(strays(&out).is_empty(), "{out:#?}");
        assert_eq!(lookups(&out)[0].outcome(), LookupOutcome::Resolved);
    }
}

/// Go asks A and AAAA each from a socket of its own; the AAAA answer is
/// NOERROR, no records, AA=0, RA=0, with an OPT record (Go sends EDNS).
fn go_rejects_lame_with_opt(read: fn(u32) -> ResolverContext) -> Vec<crate::diagnose::Diagnosis> {
    let mut s = Scenario::reading(read);
    let lame_with_opt = Answer {
        additional: 1,
        ..LAME_NODATA
    };
    s.query(Socket::new(26, 1, server(1)), 0x60, "db.test.", A, 0);
    s.query(Socket::new(26, 2, server(1)), 0x61, "db.test.", AAAA, 0);
    s.answer(Socket::new(26, 1, server(1)), 0x60, "db.test.", A, MS, GOOD);
    s.answer(
        Socket::new(26, 2, server(1)),
        0x61,
        "db.test.",
        AAAA,
        MS,
        lame_with_opt,
    );
    // Go asks AAAA again at once from a fresh socket, gets the same, and
    // gives up on AAAA.
    s.query(
        Socket::new(26, 3, server(1)),
        0x62,
        "db.test.",
        AAAA,
        2 * MS,
    );
    s.answer(
        Socket::new(26, 3, server(1)),
        0x62,
        "db.test.",
        AAAA,
        3 * MS,
        lame_with_opt,
    );
    s.settle(3 * MS).1
}

#[test]
fn go_rejecting_a_lame_answer_with_an_opt_record_is_answer_rejected() {
    let diagnoses = go_rejects_lame_with_opt(GO);
    assert_eq!(
        causes(&diagnoses),
        [Cause::AnswerRejected],
        "{diagnoses:#?}"
    );
    assert_eq!(diagnoses[0].evidence, [0x61, 0x62]);
    assert!(
        diagnoses[0]
            .explanation
            .contains("Go's lame-referral shape"),
        "{}",
        diagnoses[0].explanation
    );
    // Without knowing the resolver: one question per socket, asked again
    // on a fresh one at once after Go's lame shape, is Go rejecting it.
    assert_eq!(
        causes(&go_rejects_lame_with_opt(|_| ResolverContext::default())),
        [Cause::AnswerRejected]
    );
}

#[test]
fn a_program_looking_up_an_nxdomain_name_three_times_rejects_nothing() {
    for read in [GLIBC, |_| ResolverContext::default()] {
        let mut s = Scenario::reading(read);
        for round in 0..3u64 {
            let socket = Socket::new(27, round + 1, server(1));
            let t = round * MS;
            let id = 0x70 + 2 * round as u16;
            s.query(socket, id, "gone.test.", A, t);
            s.query(socket, id + 1, "gone.test.", AAAA, t);
            s.answer(socket, id, "gone.test.", A, t + MS / 2, NXDOMAIN);
            s.answer(socket, id + 1, "gone.test.", AAAA, t + MS / 2, NXDOMAIN);
        }
        let (out, diagnoses) = s.settle(3 * MS);
        assert!(diagnoses.is_empty(), "{diagnoses:#?}");
        let lookups = lookups(&out);
        assert_eq!(lookups.len(), 3, "{lookups:#?}");
        assert!(
            lookups
                .iter()
                .all(|l| l.outcome() == LookupOutcome::NxDomain),
            "{lookups:#?}"
        );
    }
}

#[test]
fn with_options_rotate_a_program_asking_again_asks_the_next_server_and_rejects_nothing() {
    let mut s = Scenario::reading(GLIBC);
    s.exchange(Socket::new(28, 1, server(1)), 1, "db.test.", 0, NXDOMAIN);
    s.exchange(
        Socket::new(28, 2, server(2)),
        2,
        "db.test.",
        2 * MS,
        NXDOMAIN,
    );
    let (out, diagnoses) = s.settle(3 * MS);
    assert!(diagnoses.is_empty(), "{diagnoses:#?}");
    assert_eq!(lookups(&out).len(), 2);
}

#[test]
fn a_resolver_keeping_its_socket_open_asks_again_on_it_and_rejects_nothing() {
    // c-ares (Node's dns.resolve) keeps one socket per server open across
    // lookups: the program's next lookup comes on the same socket.
    for read in [GLIBC, |_| ResolverContext::default()] {
        let mut s = Scenario::reading(read);
        let socket = Socket::new(29, 1, server(1));
        for round in 0..3u64 {
            let t = round * MS;
            let id = 0x80 + 2 * round as u16;
            s.query(socket, id, "gone.test.", A, t);
            s.query(socket, id + 1, "gone.test.", AAAA, t);
            s.answer(socket, id, "gone.test.", A, t + MS / 2, NXDOMAIN);
            s.answer(socket, id + 1, "gone.test.", AAAA, t + MS / 2, NXDOMAIN);
        }
        let (out, diagnoses) = s.settle(3 * MS);
        assert!(diagnoses.is_empty(), "{diagnoses:#?}");
        assert_eq!(lookups(&out).len(), 3, "{out:#?}");
    }
}

#[test]
fn musl_sending_its_copy_after_the_first_answer_came_keeps_one_lookup() {
    // Under load musl's sends interleave with the answers: the A copy to
    // the second server leaves after the first server's answer.
    let mut s = Scenario::reading(MUSL);
    let (first, second) = (Socket::new(30, 1, server(1)), Socket::new(30, 1, server(2)));
    s.query(first, 0x90, "db.test.", A, 0);
    s.answer(first, 0x90, "db.test.", A, MS / 10, GOOD);
    s.query(second, 0x90, "db.test.", A, MS / 5);
    s.query(first, 0x91, "db.test.", AAAA, MS / 4);
    s.query(second, 0x91, "db.test.", AAAA, MS / 3);
    s.answer(first, 0x91, "db.test.", AAAA, MS / 2, GOOD);
    let (out, diagnoses) = s.settle(MS);
    assert!(diagnoses.is_empty(), "{diagnoses:#?}");
    assert_eq!(lookups(&out).len(), 1, "{out:#?}");
}

/// A drop of `message` by the kernel, for `reason`.
fn dropped(message: Message, reason: &str) -> crate::message::Dropped {
    crate::message::Dropped {
        message,
        reason: reason.into(),
        location: "somewhere+0x1".into(),
        netns: Some(1),
        conntrack: None,
    }
}

#[test]
fn a_query_dropped_on_its_way_out_opens_its_attempt_and_is_kernel_drop_not_timeout() {
    let mut s = Scenario::new();
    let socket = Socket::new(7, 1, server(1));
    // glibc's pair: the A query leaves, the AAAA is dropped before any
    // socket program saw it.
    s.query(socket, 0x100, "db.test.", A, 0);
    let aaaa = message(Direction::Send, socket, 0x101, "db.test.", AAAA, 0, None);
    s.correlator
        .dropped(&dropped(aaaa, "NETFILTER_DROP"), &mut s.out);
    s.answer(socket, 0x100, "db.test.", A, MS, GOOD);
    let (out, diagnoses) = s.settle(0);
    let lookups = lookups(&out);
    let attempts = &lookups[0].attempts;
    assert_eq!(attempts.len(), 2, "{attempts:#?}");
    let aaaa = attempts.iter().find(|a| a.question.qtype == AAAA).unwrap();
    let drop = aaaa.drop.as_ref().expect("the AAAA attempt's drop");
    assert_eq!(drop.packet, super::attempt::DroppedPacket::Query);
    assert_eq!(aaaa.outcome, Outcome::Timeout);
    let a = attempts.iter().find(|a| a.question.qtype == A).unwrap();
    assert_eq!((a.drop.as_ref(), a.outcome), (None, Outcome::Answered));
    assert_eq!(causes(&diagnoses), [Cause::KernelDrop]);
    assert_eq!(diagnoses[0].evidence, [0x101]);
    assert!(diagnoses[0].explanation.contains("NETFILTER_DROP"));
}

#[test]
fn a_response_dropped_at_a_full_buffer_after_its_socket_program_saw_it_was_never_had() {
    for drop_first in [false, true] {
        let mut s = Scenario::new();
        let socket = Socket::new(7, 1, server(1));
        s.query(socket, 0x100, "db.test.", A, 0);
        let response = message(
            Direction::Recv,
            socket,
            0x100,
            "db.test.",
            A,
            MS,
            Some(GOOD),
        );
        let drop = dropped(s.enriched(response.clone()), "SOCKET_RCVBUFF");
        if drop_first {
            s.correlator.dropped(&drop, &mut s.out);
            s.correlator.observe(&s.enriched(response), &mut s.out);
        } else {
            s.correlator.observe(&s.enriched(response), &mut s.out);
            s.correlator.dropped(&drop, &mut s.out);
        }
        let (out, diagnoses) = s.settle(0);
        let attempt = &lookups(&out)[0].attempts[0];
        assert_eq!(attempt.outcome, Outcome::Timeout, "{attempt:#?}");
        assert_eq!(attempt.response, None);
        assert_eq!(
            attempt.drop.as_ref().map(|d| d.packet),
            Some(super::attempt::DroppedPacket::Response)
        );
        assert_eq!(causes(&diagnoses), [Cause::KernelDrop], "{out:#?}");
        assert!(diagnoses[0].explanation.contains("receive buffer was full"));
    }
}

#[test]
fn a_response_with_no_socket_left_is_a_late_answer_never_read() {
    let mut s = Scenario::new();
    let socket = Socket::new(7, 1, server(1));
    s.query(socket, 4242, "db.test.", A, 0);
    let response = message(
        Direction::Recv,
        socket,
        4242,
        "db.test.",
        A,
        50 * MS,
        Some(GOOD),
    );
    s.correlator
        .dropped(&dropped(response, "NO_SOCKET"), &mut s.out);
    let (out, diagnoses) = s.settle(0);
    let attempt = &lookups(&out)[0].attempts[0];
    assert_eq!(attempt.outcome, Outcome::Late);
    assert_eq!(
        attempt.response.as_ref().map(|r| r.read),
        Some(ReadState::Unread)
    );
    assert_eq!(causes(&diagnoses), [Cause::KernelDrop]);
    assert!(
        diagnoses[0]
            .explanation
            .contains("late answer it never saw")
    );
}

#[test]
fn a_query_seen_after_its_drop_is_the_same_attempt() {
    let mut s = Scenario::new();
    let socket = Socket::new(7, 1, server(1));
    // The query's own record waited for its process's facts; the drop,
    // further on in the kernel, came first.
    let aaaa = message(Direction::Send, socket, 0x101, "db.test.", AAAA, 0, None);
    let mut later = aaaa.clone();
    later.envelope.monotonic_ns = MS;
    s.correlator
        .dropped(&dropped(s.enriched(later), "NETFILTER_DROP"), &mut s.out);
    s.correlator.observe(&s.enriched(aaaa), &mut s.out);
    let (out, diagnoses) = s.settle(0);
    let attempts = &lookups(&out)[0].attempts;
    assert_eq!(attempts.len(), 1, "{attempts:#?}");
    assert_eq!(attempts[0].sent_monotonic_ns, Some(0));
    assert_eq!(lookups(&out)[0].first_monotonic_ns(), 0);
    assert_eq!(attempts[0].drop.as_ref().map(|d| d.after_ns), Some(MS));
    assert_eq!(causes(&diagnoses), [Cause::KernelDrop]);
}

/// The server's side of an exchange, as a DNS pod's process shows it: the
/// query it received and the response it sent, on its own address (a
/// Service's DNAT gave the client another), from the client's address.
fn served_by(pod: &str, client: Socket, id: u16, name: &str, at: u64) -> [Message; 2] {
    let pod = crate::message::Pod {
        name: Some(pod.into()),
        namespace: Some("kube-system".into()),
        uid: None,
    };
    [None, Some(GOOD)].map(|answer| {
        let direction = match answer {
            None => Direction::Recv,
            Some(_) => Direction::Send,
        };
        let mut m = message(direction, client, id, name, A, at, answer);
        let client_address = m.envelope.local;
        m.envelope.local = SocketAddr::from(([10, 244, 0, 5], 53));
        m.envelope.remote = client_address;
        m.envelope.socket_cookie = 999;
        if let Some(process) = &mut m.envelope.process {
            process.pid = 77;
            process.facts = Arc::new(Facts {
                pod: Some(pod.clone()),
                ..Facts::default()
            });
        }
        m
    })
}

#[test]
fn the_pod_that_answered_behind_a_service_address_is_named() {
    let service = SocketAddr::from(([10, 96, 0, 10], 53));
    let client = Socket::new(10, 1, service);
    let unseen = Socket::new(11, 2, service);
    let mut s = Scenario::new();
    s.query(client, 7, "db.example.", A, 0);
    for m in served_by("coredns-a", client, 7, "db.example.", MS) {
        s.correlator.observe(&m, &mut s.out);
    }
    s.answer(client, 7, "db.example.", A, 2 * MS, GOOD);
    // Another socket's exchange: its server's side was not seen.
    s.exchange(unseen, 7, "db.example.", 0, GOOD);
    s.correlator.advance(20_000 * MS, &mut s.out);
    let mut named = Vec::new();
    for item in &mut s.out {
        if let Correlated::Lookup(lookup) = item {
            s.correlator.servers.name(lookup);
            let pod = lookup.server_pod().and_then(|p| p.name.clone());
            named.push((lookup.client().pid(), pod));
        }
    }
    named.sort();
    assert_eq!(
        named,
        [(Some(10), Some("coredns-a".into())), (Some(11), None)],
        "the server's side matched by the client's address, port, id and name"
    );
    // Kept 30 s, then forgotten.
    s.correlator.advance(60_000 * MS, &mut Vec::new());
    let mut late = Scenario::new();
    late.exchange(client, 7, "db.example.", 60_000 * MS, GOOD);
    late.correlator.servers = std::mem::take(&mut s.correlator.servers);
    late.correlator.advance(90_000 * MS, &mut late.out);
    let Some(Correlated::Lookup(lookup)) = late.out.first_mut() else {
        panic!("a lookup: {:?}", late.out);
    };
    late.correlator.servers.name(lookup);
    assert_eq!(lookup.server_pod(), None);
}

/// An AXFR over TCP: one query, a stream of answers with its id; then an
/// answer on another TCP socket that fits no query.
#[test]
fn a_zone_transfer_is_one_answer_in_many_messages() {
    const AXFR: u16 = 252;
    let mut s = Scenario::new();
    let transfer = Socket::new(31, 1, server(1));
    s.tcp(Direction::Send, transfer, 0x60, AXFR, 0);
    for n in 1..=5 {
        s.tcp(Direction::Recv, transfer, 0x60, AXFR, n * MS);
    }
    // Later messages may leave the question out (RFC 5936 allows it).
    let mut bare = message(
        Direction::Recv,
        transfer,
        0x60,
        ".",
        AXFR,
        6 * MS,
        Some(GOOD),
    );
    bare.envelope.transport = Transport::Tcp;
    bare.dns.question = None;
    s.correlator.observe(&bare, &mut s.out);
    s.tcp(
        Direction::Recv,
        Socket::new(31, 2, server(1)),
        0x61,
        A,
        7 * MS,
    );
    let (out, diagnoses) = s.settle(7 * MS);
    let strays = strays(&out);
    assert_eq!(strays.len(), 1, "{out:#?}");
    assert_eq!(strays[0].id, 0x61);
    assert_eq!(causes(&diagnoses), [Cause::MismatchedAnswer]);
    assert_eq!(lookups(&out)[0].outcome(), LookupOutcome::Resolved);
}

/// A busy client such as dnsperf or a forwarding server holds hundreds of
/// finished lookups of the same few names: asking one again starts a new
/// lookup, but a copy of an earlier query (its socket and id) and a
/// question not asked yet still join the lookup they belong to.
#[test]
fn a_busy_client_starts_new_lookups_but_copies_and_new_questions_still_join() {
    let mut s = Scenario::new();
    for n in 0..200u16 {
        let socket = Socket::new(40, u64::from(n) + 1, server(1));
        s.exchange(socket, n, "www.test.", u64::from(n) * MS, GOOD);
    }
    // A copy of the 51st query, on its socket with its id.
    s.query(Socket::new(40, 51, server(1)), 50, "www.test.", A, 300 * MS);
    // The AAAA of the newest, on a socket of its own.
    let aaaa = Socket::new(40, 1_000, server(1));
    s.query(aaaa, 1, "www.test.", AAAA, 301 * MS);
    s.answer(aaaa, 1, "www.test.", AAAA, 302 * MS, GOOD);
    let (out, _) = s.settle(302 * MS);
    let lookups = lookups(&out);
    assert_eq!(
        lookups.len(),
        200,
        "{:#?}",
        lookups.iter().map(|l| l.attempts.len()).collect::<Vec<_>>()
    );
    let joined = |cookie: u64| {
        let lookup = lookups
            .iter()
            .find(|l| l.attempts[0].socket_cookie == cookie)
            .expect("a lookup per first socket");
        lookup.attempts.len()
    };
    assert_eq!(joined(51), 2, "the copy joins its query's lookup");
    assert_eq!(joined(200), 2, "the AAAA joins the newest lookup");
    assert_eq!(joined(100), 1);
}

impl Scenario {
    /// A query sent by thread `tid` of the socket's process.
    fn query_from_thread(&mut self, tid: u32, socket: Socket, id: u16, qtype: u16, at: u64) {
        let m = message(Direction::Send, socket, id, "db.test.", qtype, at, None);
        self.observe_from_thread(tid, m);
    }

    /// `m`, as of thread `tid` of its process.
    fn observe_from_thread(&mut self, tid: u32, mut m: Message) {
        if let Some(process) = &mut m.envelope.process {
            process.tid = tid;
        }
        let m = self.enriched(m);
        self.correlator.observe(&m, &mut self.out);
    }
}

/// Two threads of a process look `db.test` up at once, the second 150 ms
/// after the first, each on a socket of its own, and a slow server answers
/// each 300 ms after its query; `thread` gives each one's tid.
fn threads_asking_at_once(read: fn(u32) -> ResolverContext, thread: [u32; 2]) -> Scenario {
    let mut s = Scenario::reading(read);
    let sockets = [Socket::new(7, 1, server(1)), Socket::new(7, 2, server(1))];
    let calls = || (0u16..).zip(sockets).zip(thread);
    for ((n, socket), tid) in calls() {
        let (id, at) = (0x100 * (n + 1), 150 * MS * u64::from(n));
        s.query_from_thread(tid, socket, id, A, at);
        s.query_from_thread(tid, socket, id + 1, AAAA, at);
    }
    for ((n, socket), _) in calls() {
        let (id, at) = (0x100 * (n + 1), 150 * MS * u64::from(n) + 300 * MS);
        s.answer(socket, id, "db.test.", A, at, GOOD);
        s.answer(socket, id + 1, "db.test.", AAAA, at, NODATA_RA);
    }
    s
}

/// glibc and musl resolve in the calling thread: another thread's query
/// of the same question is another call, not a retry. Judged as a retry,
/// the slow server's first answers read as a timeout and a late answer.
/// The calls still share a lookup, as ever for one process.
#[test]
fn threads_of_glibc_or_musl_asking_one_name_at_once_are_not_each_others_retries() {
    for read in [GLIBC, MUSL] {
        let (out, diagnoses) = threads_asking_at_once(read, [8, 9]).settle(SECOND);
        let lookups = lookups(&out);
        assert_eq!(lookups.len(), 1, "{lookups:#?}");
        assert_eq!(lookups[0].outcome(), LookupOutcome::Resolved);
        assert!(
            lookups[0]
                .attempts
                .iter()
                .all(|a| a.outcome == Outcome::Answered),
            "{lookups:#?}"
        );
        assert!(diagnoses.is_empty(), "{diagnoses:#?}");
    }
}

const TRUNCATED: Answer = Answer {
    rcode: 0,
    flags: Flags::TC,
    answers: 0,
    additional: 0,
};

impl Scenario {
    fn tcp_from_thread(
        &mut self,
        tid: u32,
        direction: Direction,
        socket: Socket,
        id: u16,
        at: u64,
    ) {
        let answer = (direction == Direction::Recv).then_some(GOOD);
        let mut m = message(direction, socket, id, "db.test.", A, at, answer);
        m.envelope.transport = Transport::Tcp;
        self.observe_from_thread(tid, m);
    }
}

/// Two glibc threads get a truncated answer each and retry over TCP: each
/// thread's TCP query judges its own UDP attempt alone, and every
/// truncated answer was followed over TCP.
#[test]
fn glibc_threads_falling_back_to_tcp_at_once_each_follow_their_own() {
    let mut s = Scenario::reading(GLIBC);
    let (udp_a, udp_b) = (Socket::new(7, 1, server(1)), Socket::new(7, 2, server(1)));
    let (tcp_a, tcp_b) = (Socket::new(7, 3, server(1)), Socket::new(7, 4, server(1)));
    s.query_from_thread(8, udp_a, 0x100, A, 0);
    s.query_from_thread(9, udp_b, 0x200, A, MS / 2);
    s.answer(udp_a, 0x100, "db.test.", A, MS, TRUNCATED);
    s.tcp_from_thread(8, Direction::Send, tcp_a, 0x100, 2 * MS);
    s.answer(udp_b, 0x200, "db.test.", A, 2 * MS + MS / 2, TRUNCATED);
    s.tcp_from_thread(9, Direction::Send, tcp_b, 0x200, 3 * MS);
    s.tcp_from_thread(8, Direction::Recv, tcp_a, 0x100, 3 * MS + MS / 2);
    s.tcp_from_thread(9, Direction::Recv, tcp_b, 0x200, 4 * MS);
    let (out, diagnoses) = s.settle(SECOND);
    let udp: Vec<Outcome> = (lookups(&out).iter())
        .flat_map(|l| &l.attempts)
        .filter(|a| a.transport == Transport::Udp)
        .map(|a| a.outcome)
        .collect();
    let switched = Outcome::Rejected(super::attempt::Rejection::SwitchedToTcp);
    assert_eq!(udp, [switched, switched]);
    assert_eq!(
        causes(&diagnoses),
        [Cause::TruncatedTcpFallback],
        "{diagnoses:#?}"
    );
}

/// One thread of a glibc or musl process asks one name twice at once
/// (c-ares in Node, a load generator), with another id each time: the
/// second is another call, not a retry, however long the first waits.
/// Judged as a retry, the first read as a timeout and its answer as late.
#[test]
fn one_glibc_or_musl_thread_asking_one_name_twice_at_once_makes_two_calls() {
    for read in [GLIBC, MUSL] {
        let (out, diagnoses) = threads_asking_at_once(read, [8, 8]).settle(SECOND);
        let lookups = lookups(&out);
        assert_eq!(lookups.len(), 1, "{lookups:#?}");
        assert_eq!(lookups[0].outcome(), LookupOutcome::Resolved);
        assert!(
            (lookups[0].attempts.iter()).all(|a| a.outcome == Outcome::Answered),
            "{lookups:#?}"
        );
        assert!(diagnoses.is_empty(), "{diagnoses:#?}");
    }
}

/// glibc and musl send a query again with its own id, from another socket
/// when they ask the next server: still a retry, which the first query's
/// answer comes too late for.
#[test]
fn a_glibc_or_musl_retry_to_the_next_server_keeps_its_id_and_judges_the_first() {
    for read in [GLIBC, MUSL] {
        let mut s = Scenario::reading(read);
        let (slow, next) = (Socket::new(7, 1, server(1)), Socket::new(7, 2, server(2)));
        s.query(slow, 0x700, "db.test.", A, 0);
        s.query(next, 0x700, "db.test.", A, 1_500 * MS);
        s.answer(slow, 0x700, "db.test.", A, 1_500 * MS + 2_000, GOOD);
        s.answer(next, 0x700, "db.test.", A, 1_501 * MS, GOOD);
        let (out, diagnoses) = s.settle(1_501 * MS);
        assert_eq!(outcomes(&out), [Outcome::Late, Outcome::Answered]);
        assert_eq!(causes(&diagnoses), [Cause::Timeout], "{out:#?}");
    }
}

/// The retry's name in other case (resolvers that mix case, 0x20) is
/// still the same question, and found by question and id.
#[test]
fn a_retry_in_other_case_keeps_its_id_and_judges_the_first() {
    let mut s = Scenario::reading(GLIBC);
    let (slow, next) = (Socket::new(7, 1, server(1)), Socket::new(7, 2, server(2)));
    s.query(slow, 0x700, "db.test.", A, 0);
    s.query(next, 0x700, "dB.TeSt.", A, 1_500 * MS);
    s.answer(next, 0x700, "dB.TeSt.", A, 1_501 * MS, GOOD);
    let (out, diagnoses) = s.settle(1_501 * MS);
    assert_eq!(outcomes(&out), [Outcome::Timeout, Outcome::Answered]);
    assert_eq!(causes(&diagnoses), [Cause::Timeout], "{out:#?}");
}

/// A program that maps glibc but resolves with code of its own that makes
/// a new id each try (unbound, hickory): its retry is read as another
/// call, so the unanswered first attempt is judged by time, after the
/// resolver's timeout and its slack, and still reads as a timeout.
#[test]
fn a_glibc_process_retrying_with_a_new_id_still_times_out_by_time() {
    let mut s = Scenario::reading(GLIBC);
    let socket = Socket::new(7, 1, server(1));
    s.query(socket, 0x700, "db.test.", A, 0);
    s.query(socket, 0x701, "db.test.", A, 400 * MS);
    s.answer(socket, 0x701, "db.test.", A, 450 * MS, GOOD);
    let (out, diagnoses) = s.settle(7 * SECOND);
    assert_eq!(outcomes(&out), [Outcome::Timeout, Outcome::Answered]);
    assert_eq!(causes(&diagnoses), [Cause::Timeout], "{out:#?}");
}

/// Where the resolver may send from any thread (Go's goroutines move
/// between threads), or is not known, another thread's query of a
/// pending question still concerns the lookup, as from one thread.
#[test]
fn threads_of_other_resolvers_asking_at_once_are_read_as_one_caller() {
    let outcomes = |read: fn(u32) -> ResolverContext, thread: [u32; 2]| -> Vec<Vec<Outcome>> {
        let (out, _) = threads_asking_at_once(read, thread).settle(SECOND);
        (lookups(&out).iter())
            .map(|l| l.attempts.iter().map(|a| a.outcome).collect())
            .collect()
    };
    for read in [GO, |_| ResolverContext::default()] {
        let one_caller = outcomes(read, [7, 7]);
        assert_eq!(outcomes(read, [8, 9]), one_caller);
        assert_eq!(one_caller.len(), 1, "{one_caller:?}");
    }
}
