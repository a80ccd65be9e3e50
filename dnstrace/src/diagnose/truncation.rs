//! `truncated_tcp_fallback` and `tcp_fallback_missing`: a UDP answer with
//! TC=1, and whether the process retried over TCP.

use super::{Cause, Finding, names_of};
use crate::{
    correlate::{
        attempt::{Attempt, Outcome},
        lookup::Lookup,
    },
    decode::Flags,
    message::Transport,
};

pub fn check(lookup: &Lookup) -> Vec<Finding> {
    let truncated: Vec<&Attempt> = lookup
        .attempts
        .iter()
        .filter(|a| a.transport == Transport::Udp)
        // musl took another server's answer to the same query.
        .filter(|a| a.outcome != Outcome::Superseded)
        .filter(|a| {
            a.response
                .as_ref()
                .is_some_and(|r| r.shape.flags.contains(Flags::TC))
        })
        .collect();
    truncated
        .iter()
        .map(|attempt| {
            let over_tcp = lookup
                .attempts
                .iter()
                .any(|a| a.transport == Transport::Tcp && a.question.same_as(&attempt.question));
            let (cause, explanation, fix) = if over_tcp {
                (
                    Cause::TruncatedTcpFallback,
                    format!(
                        "{} answered {} with TC=1 over UDP; {} asked again over TCP, which \
                         costs a TCP handshake per lookup.",
                        attempt.server, attempt.question.name, lookup.client()
                    ),
                    "Fine as it is; to save the round trips, keep answers under the UDP size (fewer \
                     records), or let the client send EDNS with a larger buffer (`options edns0`)."
                        .to_string(),
                )
            } else {
                (
                    Cause::TcpFallbackMissing,
                    format!(
                        "{} answered {} with TC=1 over UDP, and {} never asked over TCP: it \
                         used the truncated answer or gave up. musl before 1.2.4 has no TCP fallback.",
                        attempt.server, attempt.question.name, lookup.client()
                    ),
                    "Keep the answer under 512 bytes (fewer records), or use a resolver with TCP \
                     fallback (musl 1.2.4 or later, glibc, Go)."
                        .to_string(),
                )
            };
            Finding {
                cause,
                server: Some(attempt.server),
                names: names_of(std::iter::once(*attempt)),
                evidence: vec![attempt.id],
                explanation,
                fix,
                shapes: None,
                wall_time_ns: attempt.sent_wall_time_ns().unwrap_or(lookup.first_wall_time_ns()),
            }
        })
        .collect()
}
