//! `timeout` and `parallel_query_loss`: queries that got no answer in
//! time, whether one came later (`late`) or never.
//!
//! The parallel-query race (conntrack dropping one of two UDP packets sent
//! at once from one socket) has a signature: the A/AAAA pair leaves one
//! socket together, one answer never comes, and after the resolver's
//! timeout both are sent again with the same ids on the same socket.

use super::{Cause, Finding, names_of};
use crate::correlate::{
    attempt::{Attempt, Outcome},
    lookup::Lookup,
};

/// Queries sent this close together on one socket count as a pair.
const PAIR_WINDOW_NS: u64 = 50_000_000;

pub fn check(lookup: &Lookup) -> Vec<Finding> {
    lookup
        .attempts
        .iter()
        // A query or response the kernel dropped is `kernel_drop`'s.
        // An answer that came after the process gave up, even by a few
        // microseconds, changes nothing for it: it waited in vain.
        .filter(|a| matches!(a.outcome, Outcome::Timeout | Outcome::Late) && a.drop.is_none())
        .map(|lost| {
            let waited_ms = lost.latency_ns().unwrap_or(0) / 1_000_000;
            let late = lost.outcome == Outcome::Late;
            if !late && is_parallel_loss(lookup, lost) {
                Finding {
                    cause: Cause::ParallelQueryLoss,
                    server: Some(lost.server),
                    names: names_of(std::iter::once(lost)),
                    evidence: vec![lost.id],
                    explanation: format!(
                        "{} sent two queries at once on one socket to {}; only one answer \
                         came back, and {waited_ms} ms later it sent both again with the same ids. \
                         This is the signature of conntrack dropping one of two simultaneous UDP \
                         packets of a flow (a race in the Linux NAT path, common in Kubernetes).",
                        lookup.client(), lost.server
                    ),
                    fix: "Add `options single-request-reopen` (glibc) to resolv.conf, or avoid DNAT \
                          to the DNS server (NodeLocal DNSCache), or a kernel with the conntrack \
                          race fixes."
                        .into(),
                    shapes: None,
                    wall_time_ns: lost.sent_wall_time_ns().unwrap_or(lookup.first_wall_time_ns()),
                }
            } else {
                Finding {
                    cause: Cause::Timeout,
                    server: Some(lost.server),
                    names: names_of(std::iter::once(lost)),
                    evidence: vec![lost.id],
                    explanation: format!(
                        "{} got no answer from {} for {} {} and gave up after {waited_ms} ms{}.",
                        lookup.client(),
                        lost.server,
                        lost.question.name,
                        crate::decode::qtype_name(lost.question.qtype),
                        match late {
                            true => "; the answer came after that",
                            false => "",
                        }
                    ),
                    fix: format!(
                        "Check that {} is reachable from the process's network namespace and answers \
                         this query type; a server that drops a type (often AAAA) stalls every lookup.",
                        lost.server
                    ),
                    shapes: None,
                    wall_time_ns: lost.sent_wall_time_ns().unwrap_or(lookup.first_wall_time_ns()),
                }
            }
        })
        .collect()
}

fn is_parallel_loss(lookup: &Lookup, lost: &Attempt) -> bool {
    let Some(sent) = lost.sent_monotonic_ns else {
        return false;
    };
    let sibling_answered = lookup.attempts.iter().any(|a| {
        a.socket_cookie == lost.socket_cookie
            && a.question.qtype != lost.question.qtype
            && a.response.is_some()
            && a.sent_monotonic_ns
                .is_some_and(|s| s.abs_diff(sent) <= PAIR_WINDOW_NS)
    });
    // The race is passing: the query sent again is answered. A query lost
    // every time is a plain timeout.
    let resent_and_answered = lookup.attempts.iter().any(|a| {
        a.socket_cookie == lost.socket_cookie
            && a.id == lost.id
            && a.question.same_as(&lost.question)
            && a.sent_monotonic_ns.is_some_and(|s| s > sent)
            && a.response.is_some()
    });
    sibling_answered && resent_and_answered
}
