//! `answer_rejected`: answers of one shape reach the process and are thrown
//! away while answers of another shape are used.

use std::net::SocketAddr;

use super::{Cause, Finding, History, describe_shape, names_of, rejected_by_server};
use crate::{
    correlate::{
        attempt::{Attempt, ReadState, Shape},
        behaviour::{LameRule, lame_rule},
        lookup::Lookup,
    },
    decode::Flags,
    resolver::Library,
};

pub fn check(lookup: &Lookup, history: &History<'_>) -> Vec<Finding> {
    // Server failures and truncation have rules of their own.
    rejected_by_server(lookup, |shape| {
        !shape.is_error() && !shape.flags.contains(Flags::TC)
    })
    .into_iter()
    .filter_map(|(server, attempts)| finding(lookup, history, &attempts, server))
    .collect()
}

fn finding(
    lookup: &Lookup,
    history: &History<'_>,
    from_server: &[&Attempt],
    server: SocketAddr,
) -> Option<Finding> {
    let shapes: Vec<Shape> = from_server
        .iter()
        .filter_map(|a| a.response.as_ref().map(|r| r.shape))
        .collect();
    let library = lookup.context.library.as_ref();
    // The lame shape explains the rest when it is there; else the first.
    let rejected_shape = shapes
        .iter()
        .copied()
        .find(|shape| lame_rule(library, shape).is_some())
        .or(shapes.first().copied())?;
    let lame = lame_rule(library, &rejected_shape);
    // The used shape most like the rejected one shows what made the
    // difference; among equals, the most recent.
    let accepted_shape = history
        .accepted_shapes
        .iter()
        .rev()
        .copied()
        .filter(|s| *s != rejected_shape)
        .min_by_key(|s| unlikeness(&rejected_shape, s));
    let first = from_server.first()?;
    let detail = first.outcome.detail().unwrap_or("asked again");

    let mut explanation = format!(
        "{} answer(s) from {server} reached {} and were thrown away: it {detail}. Rejected: {}.",
        from_server.len(),
        lookup.client(),
        describe_shape(&rejected_shape)
    );
    explanation.push_str(&reads_sentence(from_server));
    match accepted_shape {
        Some(accepted) => explanation.push_str(&format!(
            " Used by the same process: {}. Differs in: {}.",
            describe_shape(&accepted),
            differences(&rejected_shape, &accepted)
        )),
        None => explanation.push_str(" The client has used no answer yet."),
    }
    match lame {
        Some(LameRule::Glibc) => explanation.push_str(
            " This is the lame-referral shape (NOERROR, no answers, AA=0, RA=0, no additional \
             records): glibc's res_send drops it and tries the next nameserver, and Go's resolver \
             rejects it as a lame referral; musl and c-ares accept it.",
        ),
        Some(LameRule::Go) => explanation.push_str(
            " This is Go's lame-referral shape (NOERROR, no answers, AA=0, RA=0, whatever the \
             additional section holds, an OPT record too): Go's resolver rejects it and asks \
             again; glibc lets it through when it carries additional records.",
        ),
        None => {}
    }
    if let Some(Library::Glibc { major: 2, minor }) = library
        && *minor < 20
        && shapes.iter().any(Shape::is_positive)
    {
        explanation.push_str(&format!(
            " glibc 2.{minor} also throws away the good answer of the A/AAAA pair when the other is \
             dropped (fixed in glibc 2.20), so the lookup fails although an address came back."
        ));
    }
    if let Some(library) = library {
        explanation.push_str(&format!(" Its resolver: {}.", library.describe()));
    }

    let fix = if lame == Some(LameRule::Go) {
        format!(
            "Make {server} set RA on these answers (it recurses) or AA (it is authoritative); CoreDNS \
             1.5.1 and later set AA on answers from its cache. An OPT record does not help Go."
        )
    } else if lame.is_some() {
        format!(
            "Make {server} set RA on these answers (it recurses) or AA (it is authoritative); CoreDNS \
             1.5.1 and later set AA on answers from its cache. On the client, `options edns0` in \
             resolv.conf makes answers carry an OPT record, which the lame-referral rule lets through."
        )
    } else {
        format!("Make {server}'s answers match the shape this process uses (see the differences).")
    };
    Some(Finding {
        cause: Cause::AnswerRejected,
        server: Some(server),
        names: names_of(from_server.iter().copied()),
        evidence: from_server.iter().map(|a| a.id).collect(),
        explanation,
        fix,
        shapes: Some((rejected_shape, accepted_shape)),
        wall_time_ns: first
            .sent_wall_time_ns()
            .unwrap_or(lookup.first_wall_time_ns()),
    })
}

/// What the kernel saw of the process reading the rejected answers, where
/// it could tell: read and then thrown away, or never read at all (the
/// process had stopped waiting on that socket, which is a timeout in
/// disguise). "Each" only when every one is known.
fn reads_sentence(rejected: &[&Attempt]) -> String {
    let states: Vec<ReadState> = rejected
        .iter()
        .filter_map(|a| a.response.as_ref().map(|r| r.read))
        .collect();
    let read = states.iter().filter(|s| **s == ReadState::Read).count();
    let unread = states.iter().filter(|s| **s == ReadState::Unread).count();
    let unknown = states.len() - read - unread;
    match (read, unread, unknown) {
        (0, 0, _) => String::new(),
        (_, 0, 0) => " The process read each of them from its socket before it moved on.".into(),
        (0, _, 0) => " The process never read them from its socket: it had stopped waiting.".into(),
        (read, unread, unknown) => format!(
            " Of them, the process read {read} from its socket and never read {unread}; \
             for {unknown}, the kernel could not tell."
        ),
    }
}

/// How many of rcode and the counts differ: flags are what the comparison
/// is meant to show.
fn unlikeness(a: &Shape, b: &Shape) -> usize {
    [
        a.rcode != b.rcode,
        a.answers != b.answers,
        a.authority != b.authority,
        a.additional != b.additional,
    ]
    .into_iter()
    .filter(|differs| *differs)
    .count()
}

/// "AA 0→1, RA 0→1, an 0→1": what the accepted shape has that the rejected
/// one lacks.
fn differences(rejected: &Shape, accepted: &Shape) -> String {
    let mut parts = Vec::new();
    if rejected.rcode != accepted.rcode {
        parts.push(format!(
            "rcode {}→{}",
            crate::decode::rcode_name(rejected.rcode),
            crate::decode::rcode_name(accepted.rcode)
        ));
    }
    for (flag, name) in [
        (Flags::AA, "AA"),
        (Flags::RA, "RA"),
        (Flags::TC, "TC"),
        (Flags::AD, "AD"),
    ] {
        let (before, after) = (rejected.flags.contains(flag), accepted.flags.contains(flag));
        if before != after {
            parts.push(format!("{name} {}→{}", u8::from(before), u8::from(after)));
        }
    }
    for (name, before, after) in [
        ("an", rejected.answers, accepted.answers),
        ("ns", rejected.authority, accepted.authority),
        ("ar", rejected.additional, accepted.additional),
    ] {
        if before != after {
            parts.push(format!("{name} {before}→{after}"));
        }
    }
    if parts.is_empty() {
        "nothing in flags, rcode or counts".into()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlate::{
        attempt::{Outcome, Rejection},
        tests::{LAME_NODATA, attempt, client},
    };

    /// A lame answer the process threw away, read as `read` says.
    fn rejected(read: ReadState) -> Attempt {
        let outcome = Outcome::Rejected(Rejection::AskedAgain);
        let mut rejected = attempt(&client(7, "getent"), 1, 1, outcome, 0, Some(LAME_NODATA));
        if let Some(response) = &mut rejected.response {
            response.number = Some(1);
            response.read = read;
        }
        rejected
    }

    fn sentence(reads: &[ReadState]) -> String {
        let attempts: Vec<Attempt> = reads.iter().map(|read| rejected(*read)).collect();
        let attempts: Vec<&Attempt> = attempts.iter().collect();
        reads_sentence(&attempts)
    }

    #[test]
    fn the_explanation_says_what_the_kernel_saw_of_the_reads() {
        use ReadState::{Read, Unknown, Unread};
        assert!(sentence(&[Read, Read]).contains("read each of them"));
        assert!(sentence(&[Unread, Unread]).contains("never read them"));
        assert_eq!(
            sentence(&[Read, Unread, Unknown]),
            " Of them, the process read 1 from its socket and never read 1; for 1, the kernel \
             could not tell."
        );
        // "Each" only when every read is known.
        assert!(!sentence(&[Read, Unknown]).contains("each"));
        assert_eq!(sentence(&[Unknown, Unknown]), "");
    }
}
