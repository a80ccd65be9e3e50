//! `server_failure_fallback`: SERVFAIL, REFUSED or NOTIMP, then the process
//! asks another server (or the same one again).

use super::{Cause, Finding, names_of};
use crate::{
    correlate::{
        attempt::{Attempt, Outcome},
        lookup::Lookup,
    },
    decode::rcode_name,
};

pub fn check(lookup: &Lookup) -> Vec<Finding> {
    let failed: Vec<&Attempt> = lookup
        .attempts
        .iter()
        .filter(|a| matches!(a.outcome, Outcome::Rejected(_)))
        .filter(|a| {
            a.response
                .as_ref()
                .is_some_and(|r| r.shape.is_server_failure())
        })
        .collect();
    let mut servers: Vec<_> = failed.iter().map(|a| a.server).collect();
    servers.dedup();
    servers
        .into_iter()
        .map(|server| {
            let from_server: Vec<&Attempt> = failed.iter().copied().filter(|a| a.server == server).collect();
            let rcode = from_server[0].response.as_ref().map_or(2, |r| r.shape.rcode);
            let detail = from_server[0].outcome.detail().unwrap_or("asked again");
            Finding {
                cause: Cause::ServerFailureFallback,
                server: Some(server),
                names: names_of(from_server.iter().copied()),
                evidence: from_server.iter().map(|a| a.id).collect(),
                explanation: format!(
                    "{server} answered {} {} time(s); {} (pid {}) {detail}. Each costs a round trip, \
                     and a resolver with no other server left fails the lookup.",
                    rcode_name(rcode),
                    from_server.len(),
                    lookup.comm,
                    lookup.pid
                ),
                fix: format!(
                    "Find why {server} answers {}: for SERVFAIL its upstreams or DNSSEC validation \
                     (its logs), for REFUSED its access rules, for NOTIMP the query type.",
                    rcode_name(rcode)
                ),
                shapes: None,
                wall_time_ns: from_server[0].sent_wall_time_ns.unwrap_or(lookup.first_wall_time_ns),
            }
        })
        .collect()
}
