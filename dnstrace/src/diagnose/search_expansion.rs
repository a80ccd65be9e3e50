//! `search_expansion`: the search list made the process ask for names that
//! do not exist before the one that resolved (ndots).

use super::{Cause, Finding};
use crate::correlate::{
    attempt::Outcome,
    lookup::{Lookup, LookupOutcome},
};

pub fn check(lookup: &Lookup) -> Option<Finding> {
    if lookup.outcome() != LookupOutcome::Resolved {
        return None;
    }
    let resolving = lookup.resolving_name()?;
    let first_resolving = lookup
        .attempts
        .iter()
        .find(|a| a.question.name.eq_ignore_ascii_case(resolving))?;
    let before: Vec<_> = lookup
        .attempts
        .iter()
        .filter(|a| a.sent_monotonic_ns < first_resolving.sent_monotonic_ns)
        .filter(|a| !a.question.name.eq_ignore_ascii_case(resolving))
        .collect();
    let negative = before.iter().any(|a| {
        a.outcome == Outcome::Answered
            && a.response
                .as_ref()
                .is_some_and(|r| matches!(r.shape.rcode, 0 | 3))
    });
    if before.is_empty() || !negative {
        return None;
    }
    let wasted_ms = first_resolving
        .sent_monotonic_ns?
        .saturating_sub(lookup.first_monotonic_ns())
        / 1_000_000;
    let mut tried: Vec<String> = Vec::new();
    for attempt in &before {
        if !tried.contains(&attempt.question.name) {
            tried.push(attempt.question.name.clone());
        }
    }
    let dots = lookup.name().matches('.').count();
    // Without the client's resolv.conf (a file read by `analyze`), its
    // ndots is not known, only that the name had too few dots for it.
    let why = match lookup.context.conf.as_ref() {
        Some(conf) => format!(
            "The name has {dots} dot(s), fewer than ndots:{}, so every search domain is tried first.",
            conf.ndots
        ),
        None => format!(
            "The name has {dots} dot(s), fewer than the resolver's ndots, so every search domain \
             is tried first."
        ),
    };
    Some(Finding {
        cause: Cause::SearchExpansion,
        server: None,
        names: tried
            .iter()
            .cloned()
            .chain([resolving.to_string()])
            .collect(),
        evidence: before.iter().map(|a| a.id).collect(),
        explanation: format!(
            "{} asked for \"{}\"; the search list made it try {} first ({} wasted queries, \
             {wasted_ms} ms) before {} resolved. {why}",
            lookup.client(),
            lookup.name(),
            tried.join(", "),
            before.len(),
            resolving
        ),
        fix: format!(
            "Use the fully qualified name with a trailing dot (\"{resolving}\"), or lower ndots \
             (`options ndots:{}` in resolv.conf, or dnsConfig in the pod spec).",
            dots.max(1)
        ),
        shapes: None,
        wall_time_ns: lookup.first_wall_time_ns(),
    })
}
