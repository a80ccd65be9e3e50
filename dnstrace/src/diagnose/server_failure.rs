//! `server_failure_fallback`: SERVFAIL, REFUSED, NOTIMP or FORMERR, then the
//! process asks another server (or the same one again).

use super::{Cause, Finding, names_of, rejected_by_server};
use crate::{
    correlate::{attempt::Shape, lookup::Lookup},
    decode::rcode_name,
};

pub fn check(lookup: &Lookup) -> Vec<Finding> {
    rejected_by_server(lookup, Shape::is_error)
        .into_iter()
        .filter_map(|(server, from_server)| {
            let first = *from_server.first()?;
            let rcode = first.response.as_ref().map_or(2, |r| r.shape.rcode);
            let detail = first.outcome.detail().unwrap_or("asked again");
            Some(Finding {
                cause: Cause::ServerFailureFallback,
                server: Some(server),
                names: names_of(from_server.iter().copied()),
                evidence: from_server.iter().map(|a| a.id).collect(),
                explanation: format!(
                    "{server} answered {} {} time(s); {} {detail}. Each costs a round trip, \
                     and a resolver with no other server left fails the lookup.",
                    rcode_name(rcode),
                    from_server.len(),
                    lookup.client()
                ),
                fix: format!(
                    "Find why {server} answers {}: for SERVFAIL its upstreams or DNSSEC validation \
                     (its logs), for REFUSED its access rules, for NOTIMP the query type, for \
                     FORMERR what the query carries (EDNS).",
                    rcode_name(rcode)
                ),
                shapes: None,
                wall_time_ns: first
                    .sent_wall_time_ns()
                    .unwrap_or(lookup.first_wall_time_ns()),
            })
        })
        .collect()
}
