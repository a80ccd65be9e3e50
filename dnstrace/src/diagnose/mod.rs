//! Diagnosis: rules that name a cause, with evidence and a fix. One rule per
//! file; this module runs them over settled lookups and aggregates what they
//! find per process, cause and server.

mod answer_rejected;
mod kernel_drop;
mod mismatched;
mod search_expansion;
mod server_failure;
mod timeout;
mod truncation;

use std::{
    collections::{BTreeSet, HashMap},
    net::SocketAddr,
};

use crate::{
    correlate::{
        attempt::{Attempt, Shape},
        lookup::Lookup,
    },
    message::{Client, ClientId, Pod},
};

/// Stable cause codes (docs/diagnoses.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cause {
    AnswerRejected,
    ServerFailureFallback,
    TruncatedTcpFallback,
    TcpFallbackMissing,
    Timeout,
    ParallelQueryLoss,
    SearchExpansion,
    MismatchedAnswer,
    KernelDrop,
}

impl Cause {
    pub fn code(self) -> &'static str {
        match self {
            Self::AnswerRejected => "answer_rejected",
            Self::ServerFailureFallback => "server_failure_fallback",
            Self::TruncatedTcpFallback => "truncated_tcp_fallback",
            Self::TcpFallbackMissing => "tcp_fallback_missing",
            Self::Timeout => "timeout",
            Self::ParallelQueryLoss => "parallel_query_loss",
            Self::SearchExpansion => "search_expansion",
            Self::MismatchedAnswer => "mismatched_answer",
            Self::KernelDrop => "kernel_drop",
        }
    }
}

/// What one rule found in one lookup.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    pub cause: Cause,
    pub server: Option<SocketAddr>,
    pub names: Vec<String>,
    /// DNS ids of the messages that show it.
    pub evidence: Vec<u16>,
    pub explanation: String,
    pub fix: String,
    /// For `answer_rejected`: the shape thrown away, and one the same
    /// process used.
    pub shapes: Option<(Shape, Option<Shape>)>,
    pub wall_time_ns: i128,
}

/// Findings of one cause for one process and server, aggregated.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnosis {
    pub client: Client,
    pub cause: Cause,
    pub server: Option<SocketAddr>,
    /// The pod seen answering as `server`, the last one seen.
    pub server_pod: Option<Pod>,
    pub names: BTreeSet<String>,
    pub count: u64,
    pub first_wall_time_ns: i128,
    pub last_wall_time_ns: i128,
    pub evidence: Vec<u16>,
    pub explanation: String,
    pub fix: String,
    pub shapes: Option<(Shape, Option<Shape>)>,
}

/// Evidence and names kept per diagnosis: enough to look them up.
const MAX_EVIDENCE: usize = 32;
const MAX_NAMES: usize = 16;
/// Response shapes remembered per process as accepted.
const MAX_ACCEPTED_SHAPES: usize = 16;
/// Diagnoses kept; past this, new ones are counted, not kept.
const MAX_DIAGNOSES: usize = 16_384;

type Key = (ClientId, Cause, Option<SocketAddr>);

#[derive(Default)]
pub struct Diagnoser {
    diagnoses: HashMap<Key, Diagnosis>,
    /// Keys changed since the last `take_changed`.
    changed: BTreeSet<Key>,
    /// Keys handed out by `take_changed` before.
    published: BTreeSet<Key>,
    /// Shapes each process has used, most recent last.
    accepted: HashMap<ClientId, Vec<Shape>>,
    /// Findings not kept because `MAX_DIAGNOSES` was reached.
    pub dropped: u64,
}

/// What rules may consult besides the lookup itself.
pub struct History<'a> {
    pub accepted_shapes: &'a [Shape],
}

impl Diagnoser {
    /// Runs every rule over a settled lookup. Returns the findings it made,
    /// newly aggregated.
    pub fn lookup(&mut self, lookup: &Lookup) -> Vec<Finding> {
        // What its missing messages would have said is not known.
        if lookup.incomplete {
            return Vec::new();
        }
        let accepted = self.accepted.entry(lookup.client().id).or_default();
        for shape in lookup
            .attempts
            .iter()
            .filter(|a| a.outcome == crate::correlate::attempt::Outcome::Answered)
            .filter_map(|a| a.response.as_ref().map(|r| r.shape))
        {
            accepted.retain(|s| *s != shape);
            accepted.push(shape);
            if accepted.len() > MAX_ACCEPTED_SHAPES {
                accepted.remove(0);
            }
        }
        let history = History {
            accepted_shapes: accepted,
        };
        let mut findings = Vec::new();
        findings.extend(answer_rejected::check(lookup, &history));
        findings.extend(server_failure::check(lookup));
        findings.extend(truncation::check(lookup));
        findings.extend(timeout::check(lookup));
        findings.extend(kernel_drop::check(lookup));
        findings.extend(search_expansion::check(lookup));
        for finding in &findings {
            let server_pod = lookup
                .attempts
                .iter()
                .rfind(|a| Some(a.server) == finding.server && a.server_pod.is_some())
                .and_then(|a| a.server_pod.as_deref());
            self.record(lookup.client(), finding, server_pod);
        }
        findings
    }

    /// A response that matched no query.
    pub fn stray(&mut self, attempt: &Attempt) -> Finding {
        let finding = mismatched::check(attempt);
        self.record(&attempt.client, &finding, None);
        finding
    }

    fn record(&mut self, client: &Client, finding: &Finding, server_pod: Option<&Pod>) {
        let key = (client.id, finding.cause, finding.server);
        if !self.diagnoses.contains_key(&key) && self.diagnoses.len() >= MAX_DIAGNOSES {
            self.dropped += 1;
            return;
        }
        let diagnosis = self.diagnoses.entry(key).or_insert_with(|| Diagnosis {
            client: client.clone(),
            cause: finding.cause,
            server: finding.server,
            server_pod: None,
            names: BTreeSet::new(),
            count: 0,
            first_wall_time_ns: finding.wall_time_ns,
            last_wall_time_ns: finding.wall_time_ns,
            evidence: Vec::new(),
            explanation: String::new(),
            fix: String::new(),
            shapes: None,
        });
        diagnosis.count += 1;
        diagnosis.last_wall_time_ns = diagnosis.last_wall_time_ns.max(finding.wall_time_ns);
        diagnosis.first_wall_time_ns = diagnosis.first_wall_time_ns.min(finding.wall_time_ns);
        for name in &finding.names {
            if diagnosis.names.len() < MAX_NAMES {
                diagnosis.names.insert(name.clone());
            }
        }
        for id in &finding.evidence {
            if diagnosis.evidence.len() < MAX_EVIDENCE && !diagnosis.evidence.contains(id) {
                diagnosis.evidence.push(*id);
            }
        }
        diagnosis.explanation.clone_from(&finding.explanation);
        diagnosis.fix.clone_from(&finding.fix);
        if finding.shapes.is_some() {
            diagnosis.shapes = finding.shapes;
        }
        if let Some(pod) = server_pod {
            diagnosis.server_pod = Some(pod.clone());
        }
        self.changed.insert(key);
    }

    /// Diagnoses that changed since the last call, in a stable order, each
    /// with whether it is new since the last call.
    pub fn take_changed(&mut self) -> Vec<(Diagnosis, bool)> {
        std::mem::take(&mut self.changed)
            .into_iter()
            .filter_map(|key| {
                let diagnosis = self.diagnoses.get(&key)?.clone();
                let first = self.published.insert(key);
                Some((diagnosis, first))
            })
            .collect()
    }

    /// Forgets what exited processes used; their diagnoses stay for the
    /// report.
    pub fn forget(&mut self, exited: impl Fn(u32) -> bool) {
        self.accepted.retain(|client, _| match client {
            ClientId::Pid(pid) => !exited(*pid),
            ClientId::Address(_) => true,
        });
    }

    /// Every diagnosis so far, per process.
    pub fn all(&self) -> Vec<&Diagnosis> {
        let mut all: Vec<&Diagnosis> = self.diagnoses.values().collect();
        all.sort_by_key(|d| (d.client.id, d.cause, d.server));
        all
    }
}

/// `AA=0 RA=0 NOERROR an=0 ns=1 ar=0`: flags and counts, as the diagnosis
/// text shows a shape.
pub fn describe_shape(shape: &Shape) -> String {
    use crate::decode::{Flags, rcode_name};
    let bit = |flag| u8::from(shape.flags.contains(flag));
    format!(
        "{} AA={} RA={} TC={} an={} ns={} ar={}",
        rcode_name(shape.rcode),
        bit(Flags::AA),
        bit(Flags::RA),
        bit(Flags::TC),
        shape.answers,
        shape.authority,
        shape.additional
    )
}

/// Rejected attempts whose response shape passes `keep`, grouped by server
/// in the order the servers were first asked.
fn rejected_by_server(
    lookup: &Lookup,
    keep: impl Fn(&Shape) -> bool,
) -> Vec<(SocketAddr, Vec<&Attempt>)> {
    let mut groups: Vec<(SocketAddr, Vec<&Attempt>)> = Vec::new();
    let rejected = lookup
        .attempts
        .iter()
        .filter(|a| matches!(a.outcome, crate::correlate::attempt::Outcome::Rejected(_)))
        .filter(|a| a.response.as_ref().is_some_and(|r| keep(&r.shape)));
    for attempt in rejected {
        match groups
            .iter_mut()
            .find(|(server, _)| *server == attempt.server)
        {
            Some((_, attempts)) => attempts.push(attempt),
            None => groups.push((attempt.server, vec![attempt])),
        }
    }
    groups
}

/// The names of the attempts given, deduplicated in order.
fn names_of<'a>(attempts: impl Iterator<Item = &'a Attempt>) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for attempt in attempts {
        if !names.contains(&attempt.question.name) {
            names.push(attempt.question.name.clone());
        }
    }
    names
}
