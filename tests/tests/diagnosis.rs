//! Diagnoses of real resolvers against answers shaped on purpose
//! (../shared/notes/resolver-behaviour.md): each test provokes one failure
//! mode and checks that dnstrace names its cause, the server, the evidence
//! (DNS ids of the process's own messages) and the lookup's outcome; and
//! ordinary traffic gets no verdict at all.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    process::Command,
};

use dnstrace_tests::{
    clients::{Client, ClientRun, Lookup, PausedClient, go_cgo_client},
    netns::{Family, Topology},
    servers::{ANSWER_V4, ANSWER_V6, DnsServer, NXDOMAIN_SUBZONE, ServerKind, V4_ONLY_SUBZONE},
    trace::{Attempt, Diagnosis, Message, Trace, TracedLookup, Tracer},
};

/// Runs `client` for `lookup` under a tracer limited to the client
/// namespace; `run` lets it go and checks how it must end. Returns once
/// dnstrace has reported every lookup of the client.
fn traced(
    net: &Topology,
    client: Client,
    lookup: &Lookup,
    run: impl FnOnce(PausedClient) -> ClientRun,
) -> (ClientRun, Trace) {
    let paused = client.prepare(net, lookup);
    let mut tracer = Tracer::start(["--netns", net.client.name()]);
    let run = run(paused);
    tracer.wait_until_settled();
    let trace = tracer.stop();
    assert_eq!(trace.summary.lost, 0, "dnstrace lost messages: {trace:?}");
    (run, trace)
}

/// The run's one diagnosis with `cause`, as its final line.
fn the_diagnosis<'t>(trace: &'t Trace, run: &ClientRun, cause: &str) -> &'t Diagnosis {
    let found: Vec<&Diagnosis> = trace
        .diagnoses_of(run.pid)
        .into_iter()
        .filter(|d| d.cause == cause)
        .collect();
    let [diagnosis] = found[..] else {
        panic!(
            "{} (pid {}): {} {cause} diagnoses instead of one; its lines:\n{}",
            run.client.name(),
            run.pid,
            found.len(),
            trace.correlation_of(run.pid)
        );
    };
    diagnosis
}

fn assert_no_diagnosis(trace: &Trace, run: &ClientRun, causes: &[&str]) {
    let wrong: Vec<&Diagnosis> = trace
        .diagnoses_of(run.pid)
        .into_iter()
        .filter(|d| causes.contains(&d.cause.as_str()))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} (pid {}) got diagnoses it must not get: {wrong:#?}",
        run.client.name(),
        run.pid
    );
}

/// The diagnosis's evidence is exactly the ids of the attempts `pick`
/// chooses, and each is the id of a query the process sent.
fn assert_evidence(
    trace: &Trace,
    run: &ClientRun,
    diagnosis: &Diagnosis,
    pick: impl Fn(&Attempt) -> bool,
) {
    let expected: BTreeSet<u16> = trace
        .attempts
        .iter()
        .filter(|a| a.pid == run.pid && pick(a))
        .map(|a| a.id)
        .collect();
    let evidence: BTreeSet<u16> = diagnosis.evidence.iter().copied().collect();
    assert!(
        !expected.is_empty() && evidence == expected,
        "{} evidence {evidence:?}, expected {expected:?}; lines:\n{}",
        diagnosis.cause,
        trace.correlation_of(run.pid)
    );
    let sent: BTreeSet<u16> = trace
        .messages
        .iter()
        .filter(|m| m.pid == Some(run.pid) && m.qr == Some(false))
        .filter_map(|m| m.id)
        .collect();
    assert!(
        evidence.is_subset(&sent),
        "evidence {evidence:?} is not among the ids pid {} sent, {sent:?}",
        run.pid
    );
}

/// The run's lookup lines for its own name.
fn lookups_of<'t>(trace: &'t Trace, run: &ClientRun) -> Vec<&'t TracedLookup> {
    let name = run.domain.trim_end_matches('.');
    trace
        .lookups
        .iter()
        .filter(|l| l.pid == run.pid && l.name == name)
        .collect()
}

/// The run's one lookup line for its own name.
fn the_lookup<'t>(trace: &'t Trace, run: &ClientRun) -> &'t TracedLookup {
    let [lookup] = lookups_of(trace, run)[..] else {
        panic!(
            "not one lookup line for {}; lines:\n{}",
            run.domain,
            trace.correlation_of(run.pid)
        );
    };
    lookup
}

fn has_flag(flags: &[String], flag: &str) -> bool {
    flags.iter().any(|f| f == flag)
}

/// The shaping server, and knot as a second nameserver that answers well.
fn lame_first_then_good(net: &Topology, shape: &str) -> (DnsServer, DnsServer, Lookup) {
    let shaping = DnsServer::start(ServerKind::Shaping, net);
    let knot = DnsServer::start(ServerKind::Knot, net);
    let lookup = Lookup::in_subzone("getent", shape, shaping.socket(Family::V4))
        .with_resolv_conf(format!("nameserver {}", knot.socket(Family::V4).ip()));
    (shaping, knot, lookup)
}

/// Both answers lame: `client` throws them away, asks again, and fails.
/// Checks what every resolver's case shares; the tests add their own.
fn lame_answers_are_rejected_by(client: Client, label: &str) -> (ClientRun, Trace) {
    let net = Topology::new();
    let shaping = DnsServer::start(ServerKind::Shaping, &net);
    let server = shaping.socket(Family::V4);
    let lookup = Lookup::in_subzone(label, "lame", server);
    let (run, trace) = traced(&net, client, &lookup, PausedClient::run_expecting_failure);

    let diagnosis = the_diagnosis(&trace, &run, "answer_rejected");
    assert_eq!(diagnosis.server, Some(server), "{diagnosis:#?}");
    let shape = diagnosis.rejected_shape.as_ref().expect("a rejected_shape");
    assert!(
        !has_flag(&shape.flags, "aa") && !has_flag(&shape.flags, "ra"),
        "{shape:?}"
    );
    assert_eq!((shape.rcode.as_str(), shape.answers), ("NOERROR", 0));
    assert!(
        diagnosis.explanation.contains("lame-referral"),
        "the lame-referral shape is named: {}",
        diagnosis.explanation
    );
    assert_evidence(&trace, &run, diagnosis, |a| a.outcome == "rejected");
    assert_eq!(the_lookup(&trace, &run).outcome, "failed");
    (run, trace)
}

#[test]
fn glibc_throwing_away_both_lame_answers_is_answer_rejected() {
    let (run, trace) = lame_answers_are_rejected_by(Client::Getent, "getent");
    // glibc asks the pair again with the same ids: one A id, one AAAA id.
    // It gives up after the second pair, asking nothing more; the same lame
    // answers again count as rejected (docs/diagnoses.md).
    let diagnosis = the_diagnosis(&trace, &run, "answer_rejected");
    assert_eq!(diagnosis.evidence.len(), 2, "{diagnosis:#?}");
}

#[test]
fn glibc_skipping_a_lame_first_server_is_answer_rejected_naming_it() {
    let net = Topology::new();
    let (shaping, _knot, lookup) = lame_first_then_good(&net, "lame");
    let (run, trace) = traced(&net, Client::Getent, &lookup, PausedClient::run);

    let diagnosis = the_diagnosis(&trace, &run, "answer_rejected");
    let lame = shaping.socket(Family::V4);
    assert_eq!(diagnosis.server, Some(lame), "{diagnosis:#?}");
    let accepted = diagnosis
        .accepted_shape
        .as_ref()
        .expect("an accepted_shape");
    assert!(
        has_flag(&accepted.flags, "aa") && accepted.answers > 0,
        "knot's authoritative answer is the accepted shape: {accepted:?}"
    );
    assert_evidence(&trace, &run, diagnosis, |a| {
        a.server == lame && a.outcome_detail.as_deref() == Some("asked the next server")
    });
    assert_eq!(the_lookup(&trace, &run).outcome, "resolved");
}

#[test]
fn servfail_from_the_first_server_is_a_server_failure_fallback() {
    let net = Topology::new();
    let (shaping, _knot, lookup) = lame_first_then_good(&net, "servfail");
    let (run, trace) = traced(&net, Client::Getent, &lookup, PausedClient::run);

    let diagnosis = the_diagnosis(&trace, &run, "server_failure_fallback");
    let failing = shaping.socket(Family::V4);
    assert_eq!(diagnosis.server, Some(failing), "{diagnosis:#?}");
    assert_evidence(&trace, &run, diagnosis, |a| {
        a.server == failing && a.response_rcode.as_deref() == Some("SERVFAIL")
    });
    assert_no_diagnosis(&trace, &run, &["answer_rejected"]);
    assert_eq!(the_lookup(&trace, &run).outcome, "resolved");
}

#[test]
fn glibc_retrying_a_truncated_answer_over_tcp_is_truncated_tcp_fallback() {
    let net = Topology::new();
    let shaping = DnsServer::start(ServerKind::Shaping, &net);
    let server = shaping.socket(Family::V4);
    // The shaping server answers `tc` names whole over TCP.
    let lookup = Lookup::in_subzone("getent", "tc", server);
    let (run, trace) = traced(&net, Client::Getent, &lookup, PausedClient::run);

    let diagnosis = the_diagnosis(&trace, &run, "truncated_tcp_fallback");
    assert_eq!(diagnosis.server, Some(server), "{diagnosis:#?}");
    assert_evidence(&trace, &run, diagnosis, |a| {
        a.proto == "udp" && a.response_flags.as_ref().is_some_and(|f| has_flag(f, "tc"))
    });
    assert!(
        trace
            .attempts
            .iter()
            .any(|a| a.pid == run.pid && a.proto == "tcp" && a.outcome == "answered"),
        "an answered TCP attempt; lines:\n{}",
        trace.correlation_of(run.pid)
    );
    // The other answer of the pair, truncated too, may come after glibc
    // asked over TCP: that is not a timeout.
    assert_no_diagnosis(&trace, &run, &["tcp_fallback_missing", "timeout"]);
    assert_eq!(the_lookup(&trace, &run).outcome, "resolved");
}

#[test]
fn musl_without_tcp_fallback_is_tcp_fallback_missing() {
    let net = Topology::new();
    let shaping = DnsServer::start(ServerKind::Shaping, &net);
    let server = shaping.socket(Family::V4);
    let lookup = Lookup::in_subzone("musl", "tc", server);
    // musl 1.2.3 takes the empty truncated answer and fails.
    let (run, trace) = traced(
        &net,
        Client::Musl,
        &lookup,
        PausedClient::run_expecting_failure,
    );

    let diagnosis = the_diagnosis(&trace, &run, "tcp_fallback_missing");
    assert_eq!(diagnosis.server, Some(server), "{diagnosis:#?}");
    assert_evidence(&trace, &run, diagnosis, |a| {
        a.response_flags.as_ref().is_some_and(|f| has_flag(f, "tc"))
    });
    assert_no_diagnosis(&trace, &run, &["truncated_tcp_fallback"]);
    assert_ne!(the_lookup(&trace, &run).outcome, "resolved");
}

#[test]
fn a_dropped_aaaa_is_a_timeout() {
    let net = Topology::new();
    let shaping = DnsServer::start(ServerKind::Shaping, &net);
    let server = shaping.socket(Family::V4);
    let lookup = Lookup::in_subzone("getent", "drop-aaaa", server);
    // glibc waits 5 s twice for the pair, then asks each alone: 15 s.
    let (run, trace) = traced(&net, Client::Getent, &lookup, |client| {
        let (status, run) = client.run_to_exit();
        assert!(status.success(), "getent failed with {status}: {run:?}");
        assert!(
            run.stdout.contains(&ANSWER_V4.to_string())
                && !run.stdout.contains(&ANSWER_V6.to_string()),
            "getent gets the A answer only: {run:?}"
        );
        run
    });

    let found: Vec<&Diagnosis> = trace
        .diagnoses_of(run.pid)
        .into_iter()
        .filter(|d| matches!(d.cause.as_str(), "timeout" | "parallel_query_loss"))
        .collect();
    assert!(
        !found.is_empty(),
        "no timeout diagnosis; lines:\n{}",
        trace.correlation_of(run.pid)
    );
    let aaaa_sent: BTreeSet<u16> = trace
        .messages
        .iter()
        .filter(|m| m.pid == Some(run.pid) && m.qr == Some(false))
        .filter(|m| m.qtype.as_deref() == Some("AAAA"))
        .filter_map(|m| m.id)
        .collect();
    for diagnosis in found {
        assert_eq!(diagnosis.server, Some(server), "{diagnosis:#?}");
        assert!(
            !diagnosis.evidence.is_empty()
                && diagnosis.evidence.iter().all(|id| aaaa_sent.contains(id)),
            "the evidence is the lost AAAA queries {aaaa_sent:?}: {diagnosis:#?}"
        );
    }
    assert_no_diagnosis(&trace, &run, &["answer_rejected", "mismatched_answer"]);
    assert!(
        lookups_of(&trace, &run)
            .iter()
            .any(|l| l.outcome == "resolved"),
        "the lookup resolved (the A answer); lines:\n{}",
        trace.correlation_of(run.pid)
    );
}

#[test]
fn an_answer_used_before_a_one_second_timeout_resends_the_pair_is_not_rejected() {
    let net = Topology::new();
    let shaping = DnsServer::start(ServerKind::Shaping, &net);
    let server = shaping.socket(Family::V4);
    // The A answer comes after 50 ms and is used; the AAAA never comes, so
    // glibc sends the pair again 1 s after the first: 0.95 s after the answer.
    let lookup = Lookup::in_subzone("getent", "slow-drop-aaaa", server)
        .with_resolv_conf("options timeout:1");
    let (run, trace) = traced(&net, Client::Getent, &lookup, |client| {
        let (status, run) = client.run_to_exit();
        assert!(
            status.success() && run.stdout.contains(&ANSWER_V4.to_string()),
            "getent gets the A answer: {status} {run:?}"
        );
        run
    });

    let rejected: Vec<&Attempt> = trace
        .attempts
        .iter()
        .filter(|a| a.pid == run.pid && a.qtype == "A" && a.outcome == "rejected")
        .collect();
    assert!(
        rejected.is_empty(),
        "the A answers were used, not rejected: {rejected:#?}"
    );
    assert_no_diagnosis(&trace, &run, &["answer_rejected"]);
}

/// Threads of one process looking a name up at once, on a server that
/// answers after 1.5 s: no thread's query is read as another's retry.
/// Read so, the second thread's queries (150 ms on) made the first's a
/// timeout whose answer came late.
#[test]
fn threads_looking_one_name_up_at_once_are_not_each_others_retries() {
    let net = Topology::new();
    let shaping = DnsServer::start(ServerKind::Shaping, &net);
    let lookup = Lookup::in_subzone("threads", "late", shaping.socket(Family::V4));
    let threads = 3;
    let (run, trace) = traced(&net, Client::PythonThreads { threads }, &lookup, |client| {
        client.run()
    });

    let tids: BTreeSet<u32> = (calls_each_answered(&trace, &run).iter())
        .filter_map(|m| m.tid)
        .collect();
    assert_eq!(tids.len(), threads as usize, "a thread each: {tids:?}");
}

/// Calls that looked one name up at once: every lookup resolved, every
/// attempt answered (none read as another's retry), nothing diagnosed.
/// Their queries, for the caller's own checks.
fn calls_each_answered<'a>(trace: &'a Trace, run: &ClientRun) -> Vec<&'a Message> {
    let lookups = lookups_of(trace, run);
    assert!(
        !lookups.is_empty() && lookups.iter().all(|l| l.outcome == "resolved"),
        "{lookups:#?}"
    );
    assert_every_attempt(trace, run, "answered", |a| a.outcome == "answered");
    assert!(
        trace.diagnoses_of(run.pid).is_empty(),
        "{:#?}",
        trace.diagnoses_of(run.pid)
    );
    (trace.messages.iter())
        .filter(|m| m.pid == Some(run.pid) && m.qr == Some(false))
        .collect()
}

/// c-ares in Node looks one name up three times at once from Node's one
/// thread, each call 150 ms after the one before, against a server that
/// answers after 1.5 s: each call's queries are its own, not retries of
/// the others' (Node maps glibc, whose retries keep the query's id; these
/// queries each have an id of their own).
#[test]
fn one_thread_looking_one_name_up_at_once_makes_calls_not_retries() {
    let net = Topology::new();
    let shaping = DnsServer::start(ServerKind::Shaping, &net);
    let lookup = Lookup::in_subzone("at-once", "late", shaping.socket(Family::V4));
    let client = Client::NodeAtOnce { lookups: 3 };
    let (run, trace) = traced(&net, client, &lookup, |client| client.run());

    let queries = calls_each_answered(&trace, &run);
    let tids: BTreeSet<u32> = queries.iter().filter_map(|m| m.tid).collect();
    let ids: BTreeSet<u16> = queries.iter().filter_map(|m| m.id).collect();
    assert_eq!(tids.len(), 1, "one thread: {tids:?}");
    assert_eq!(
        (queries.len(), ids.len()),
        (6, 6),
        "A and AAAA for each call"
    );
}

#[test]
fn ndots_search_expansion_counts_the_wasted_queries() {
    let net = Topology::new();
    let shaping = DnsServer::start(ServerKind::Shaping, &net);
    // A Kubernetes pod's list; every suffix is NXDOMAIN, and the name itself
    // (2 dots, fewer than 5) resolves last.
    let lookup = Lookup::ndots_search(shaping.socket(Family::V4));
    let (run, trace) = traced(&net, Client::Getent, &lookup, PausedClient::run);

    let traced_lookup = the_lookup(&trace, &run);
    let expected_names = lookup.ndots_names_tried();
    assert_eq!(traced_lookup.names_tried, expected_names);
    assert_eq!(traced_lookup.outcome, "resolved");
    // A and AAAA for each of the three suffixes.
    assert_eq!(traced_lookup.attempts, 8, "{traced_lookup:#?}");
    assert_eq!(traced_lookup.wasted_queries, 6, "{traced_lookup:#?}");

    let diagnosis = the_diagnosis(&trace, &run, "search_expansion");
    let names: BTreeSet<&String> = diagnosis.names.iter().collect();
    assert_eq!(
        names,
        expected_names.iter().collect(),
        "the names tried: {diagnosis:#?}"
    );
    assert_evidence(&trace, &run, diagnosis, |a| a.qname != run.domain);
    assert!(
        diagnosis.explanation.contains("6 wasted queries") && diagnosis.fix.contains("ndots"),
        "{diagnosis:#?}"
    );
}

/// A Go program built with cgo maps glibc but resolves with Go's own
/// resolver: dnstrace names Go, and judges its lame answers as Go's. It
/// looks the name up three times, 100 ms apart, so that it still runs
/// when its facts are read.
#[test]
fn go_built_with_cgo_is_read_as_go() {
    let linked = Command::new("ldd")
        .arg(go_cgo_client())
        .output()
        .expect("run ldd");
    let linked = String::from_utf8_lossy(&linked.stdout);
    assert!(linked.contains("libc.so.6"), "built with cgo: {linked}");
    let net = Topology::new();
    let shaping = DnsServer::start(ServerKind::Shaping, &net);
    let lookup = Lookup::in_subzone("go-cgo", "lame", shaping.socket(Family::V4)).times(3);
    let (run, trace) = traced(
        &net,
        Client::GoCgo,
        &lookup,
        PausedClient::run_expecting_failure,
    );
    let lookups = lookups_of(&trace, &run);
    assert!(
        lookups.len() == 3
            && lookups
                .iter()
                .all(|l| l.resolver.as_deref() == Some("Go resolver")),
        "{lookups:#?}"
    );
    let diagnosis = the_diagnosis(&trace, &run, "answer_rejected");
    assert!(
        diagnosis.explanation.contains("Its resolver: Go resolver."),
        "{}",
        diagnosis.explanation
    );
}

#[test]
fn go_rejecting_a_lame_referral_is_answer_rejected() {
    // Go fails with "lame referral" after asking each question twice, each
    // time from a new socket.
    let (run, trace) = lame_answers_are_rejected_by(Client::Go, "go");
    assert!(
        trace
            .attempts
            .iter()
            .any(|a| a.pid == run.pid && a.outcome_detail.as_deref() == Some("asked again")),
        "Go asked again; lines:\n{}",
        trace.correlation_of(run.pid)
    );
}

/// The subzones of unbound's names: names that exist, names that do not,
/// and names with an A record only (AAAA NODATA with RA=1).
const ORDINARY: &[&str] = &["", NXDOMAIN_SUBZONE, V4_ONLY_SUBZONE];

/// Runs `client` (a [`Client::PythonMany`] over [`ORDINARY`] names)
/// against unbound, checks that every lookup was correlated, that the client
/// got what the names promise (only the NXDOMAIN names fail), and that
/// dnstrace got the same for each name, with no diagnosis at all.
fn assert_no_false_verdict(client: Client) {
    let net = Topology::new();
    let unbound = DnsServer::start(ServerKind::Unbound, &net);
    let lookup = Lookup::new("many", unbound.socket(Family::V4));
    let (run, trace) = traced(&net, client, &lookup, PausedClient::run);
    assert!(
        trace.stderr.iter().all(|l| !l.contains("not correlated")),
        "dnstrace fell behind and paused correlation, so this proves nothing: {:?}",
        trace.stderr
    );

    let mut reported: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for lookup in &trace.lookups {
        reported
            .entry(lookup.name.as_str())
            .or_default()
            .push(lookup.outcome.as_str());
    }
    let mut wrong = Vec::new();
    for (name, result) in run.stdout.lines().filter_map(|l| l.split_once(' ')) {
        let nxdomain = name.contains(&format!(".{NXDOMAIN_SUBZONE}."));
        assert_eq!(result == "ok", !nxdomain, "the client's {name}: {result}");
        let expected = if nxdomain { "nxdomain" } else { "resolved" };
        let got = reported.get(name).cloned().unwrap_or_default();
        if got != [expected] {
            wrong.push(format!("{name}: {got:?}, expected {expected}"));
        }
    }
    let mut attempt_outcomes: BTreeMap<&str, usize> = BTreeMap::new();
    for attempt in &trace.attempts {
        *attempt_outcomes
            .entry(attempt.outcome.as_str())
            .or_default() += 1;
    }
    let diagnoses: Vec<&Diagnosis> = trace.diagnoses.iter().collect();
    assert!(
        diagnoses.is_empty(),
        "ordinary lookups got diagnoses (answer_rejected, timeout, mismatched_answer or \
         others): {diagnoses:#?}"
    );
    assert!(
        wrong.is_empty() && attempt_outcomes.keys().eq(["answered"].iter()),
        "{} of {} lookups got a wrong outcome, for example {:#?}; attempt outcomes \
         {attempt_outcomes:?}",
        wrong.len(),
        run.stdout.lines().count(),
        &wrong[..wrong.len().min(5)]
    );
}

#[test]
fn a_thousand_ordinary_lookups_get_no_false_verdict() {
    // 3 × 334 = 1,002 lookups in about 3 s, from 20 processes that each stay
    // within dnstrace's documented bounds (docs/diagnoses.md): 64 open
    // lookups (a lookup stays open 1.5 to 2.5 s) and 2,000 messages a second.
    assert_no_false_verdict(Client::PythonMany {
        rounds: 334,
        subzones: ORDINARY,
        processes: 20,
        per_second: 16,
    });
}

#[test]
fn a_process_resolving_a_hundred_names_a_second_gets_true_outcomes() {
    // 300 lookups in 3 s from one process: 400 messages a second, what a
    // busy application server does.
    assert_no_false_verdict(Client::PythonMany {
        rounds: 100,
        subzones: ORDINARY,
        processes: 1,
        per_second: 100,
    });
}

/// Asserts that `run`'s pid got exactly these diagnoses, as (cause,
/// server).
fn assert_verdicts(trace: &Trace, run: &ClientRun, expected: &[(&str, SocketAddr)]) {
    let got: BTreeSet<(String, Option<SocketAddr>)> = trace
        .diagnoses_of(run.pid)
        .into_iter()
        .map(|d| (d.cause.clone(), d.server))
        .collect();
    let expected: BTreeSet<(String, Option<SocketAddr>)> = expected
        .iter()
        .map(|(cause, server)| (cause.to_string(), Some(*server)))
        .collect();
    assert_eq!(
        got,
        expected,
        "{} for {}; lines:\n{}",
        run.client.name(),
        run.domain,
        trace.correlation_of(run.pid)
    );
}

/// Asserts that every attempt of `run`'s pid is `what` says.
fn assert_every_attempt(trace: &Trace, run: &ClientRun, what: &str, is: impl Fn(&Attempt) -> bool) {
    assert!(
        trace.attempts.iter().filter(|a| a.pid == run.pid).all(is),
        "{} for {}: {what}; lines:\n{}",
        run.client.name(),
        run.domain,
        trace.correlation_of(run.pid)
    );
}

#[test]
fn musl_asking_every_server_at_once_gets_no_false_verdict() {
    // musl sends each query to both servers from one socket with one id and
    // takes the first answer it keeps: none of these is anything to report.
    let net = Topology::new();
    for shape in ["ok", "nxdomain", "lame", "refused"] {
        let (_shaping, _knot, lookup) = lame_first_then_good(&net, shape);
        let (run, trace) = traced(&net, Client::Musl, &lookup, |client| client.run_to_exit().1);
        assert_verdicts(&trace, &run, &[]);
        assert_every_attempt(
            &trace,
            &run,
            "each answer matches its server's query",
            |a| a.outcome != "mismatched" && a.outcome != "timeout",
        );
    }
}

#[test]
fn a_refused_without_a_question_sends_glibc_on_and_is_a_server_failure_fallback() {
    let net = Topology::new();
    let (shaping, _knot, lookup) = lame_first_then_good(&net, "refused-bare");
    let (run, trace) = traced(&net, Client::Getent, &lookup, PausedClient::run);
    let server = shaping.socket(Family::V4);
    assert_verdicts(&trace, &run, &[("server_failure_fallback", server)]);
    let diagnosis = the_diagnosis(&trace, &run, "server_failure_fallback");
    assert_evidence(&trace, &run, diagnosis, |a| {
        a.server == server && a.response_rcode.as_deref() == Some("REFUSED")
    });
    assert_eq!(the_lookup(&trace, &run).outcome, "resolved");
}

#[test]
fn dig_taking_a_refused_without_a_question_as_its_answer_gets_no_timeout() {
    let net = Topology::new();
    let shaping = DnsServer::start(ServerKind::Shaping, &net);
    let lookup = Lookup::in_subzone("dig", "refused-bare", shaping.socket(Family::V4));
    let (run, trace) = traced(&net, Client::Dig, &lookup, |client| client.run_to_exit().1);
    assert_verdicts(&trace, &run, &[]);
    assert_every_attempt(&trace, &run, "each query matched its bare REFUSED", |a| {
        a.response_rcode.as_deref() == Some("REFUSED")
    });
}

#[test]
fn go_rejecting_a_lame_aaaa_with_an_opt_record_is_answer_rejected() {
    // Go sends EDNS, so the lame AAAA answer carries an OPT record: glibc's
    // lame rule would let it through, Go's does not.
    let net = Topology::new();
    let shaping = DnsServer::start(ServerKind::Shaping, &net);
    let server = shaping.socket(Family::V4);
    let lookup = Lookup::in_subzone("go", "lame-aaaa-edns", server);
    let (run, trace) = traced(&net, Client::Go, &lookup, |client| client.run_to_exit().1);
    assert_verdicts(&trace, &run, &[("answer_rejected", server)]);
    let diagnosis = the_diagnosis(&trace, &run, "answer_rejected");
    let shape = diagnosis.rejected_shape.as_ref().expect("a rejected_shape");
    assert_eq!(
        (shape.rcode.as_str(), shape.answers, shape.additional),
        ("NOERROR", 0, 1),
        "the OPT record is in the rejected shape: {shape:?}"
    );
    assert!(
        diagnosis.explanation.contains("Go's lame-referral shape"),
        "{}",
        diagnosis.explanation
    );
    assert_evidence(&trace, &run, diagnosis, |a| {
        a.qtype == "AAAA" && a.outcome == "rejected"
    });
}

#[test]
fn a_program_looking_up_an_nxdomain_name_three_times_rejects_nothing() {
    let net = Topology::new();
    let shaping = DnsServer::start(ServerKind::Shaping, &net);
    let lookup = Lookup::in_subzone("python", NXDOMAIN_SUBZONE, shaping.socket(Family::V4));
    let (run, trace) = traced(
        &net,
        Client::Python { lookups: 3 },
        &lookup,
        PausedClient::run_expecting_failure,
    );
    assert_verdicts(&trace, &run, &[]);
    let outcomes: Vec<&str> = lookups_of(&trace, &run)
        .iter()
        .map(|l| l.outcome.as_str())
        .collect();
    assert_eq!(
        outcomes,
        ["nxdomain"; 3],
        "each getaddrinfo is a lookup of its own; lines:\n{}",
        trace.correlation_of(run.pid)
    );
}
