//! `mismatched_answer`: a response that fits no query the process made.

use super::{Cause, Finding};
use crate::correlate::attempt::{Attempt, Mismatch, Outcome};

pub fn check(stray: &Attempt) -> Finding {
    let from = stray.response.as_ref().map_or(stray.server, |r| r.from);
    let (what, fix) = match stray.outcome {
        Outcome::Mismatched(Mismatch::Source) => (
            "came from another address than the query went to",
            "A server with several addresses answering from another one, or NAT rewriting the \
             path: resolvers ignore such answers and wait for their timeout. Make the server answer \
             from the address it was asked on.",
        ),
        Outcome::Mismatched(Mismatch::Question) if stray.question.name.is_empty() => (
            "carries an id the socket waits for, but no question section",
            "Go's resolver ignores an answer without the question and waits for its timeout; \
             glibc and musl take it by its id. Make the server (or the middlebox in the path) \
             echo the question in its answers.",
        ),
        Outcome::Mismatched(Mismatch::Question) => (
            "carries an id the socket waits for, but another question",
            "The server or something on the path rewrote the question. glibc and Go ignore such an \
             answer; musl accepts it (it checks the id only).",
        ),
        Outcome::Mismatched(Mismatch::Id) => (
            "carries an id the socket does not wait for",
            "Often an answer to an earlier try that came late, or a rewritten id; resolvers ignore \
             it. If it repeats, capture the path between client and server.",
        ),
        _ => (
            "reached a socket with no query outstanding",
            "An answer after the process gave up (it came too late), or unsolicited traffic.",
        ),
    };
    // A bare header (a 12-byte REFUSED or FORMERR) names no question.
    let question = match stray.question.name.as_str() {
        "" => "no question".to_string(),
        name => name.to_string(),
    };
    Finding {
        cause: Cause::MismatchedAnswer,
        server: Some(from),
        names: Some(stray.question.name.clone())
            .filter(|name| !name.is_empty())
            .into_iter()
            .collect(),
        evidence: vec![stray.id],
        explanation: format!(
            "A response from {from} for {question} (id {}) to {} {what}.",
            stray.id, stray.client
        ),
        fix: fix.into(),
        shapes: None,
        wall_time_ns: stray.response.as_ref().map_or(0, |r| r.wall_time_ns),
    }
}
