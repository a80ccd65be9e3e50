//! Prometheus metrics: what each client went through (lookups, latency,
//! rejected answers, timeouts, diagnoses) and the agent's own state, with
//! labels that stay bounded. `endpoints` serves them while tracing;
//! `--metrics-file` writes them at the end. Names and labels are a public
//! interface: docs/metrics.md.

mod bounds;
mod identity;

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    io::{self, Write},
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Metric, Registry},
};

use self::{
    bounds::{Expiring, Slots},
    identity::{Identity, empty, other},
};
use super::{AgentState, Output, Summary, create_private};
use crate::{
    cli::MetricsArgs,
    correlate::{
        attempt::{Attempt, Outcome},
        lookup::Lookup,
    },
    diagnose::{Cause, Diagnosis},
    failure::Failure,
    message::{ClientId, Direction, Dropped, Message},
};

/// Lookup latency buckets, in seconds: from a cache hit on the node (about
/// 0.2 ms) to a resolver's 5 s timeout and the retries after it.
const LATENCY_BUCKETS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// The registry in the Prometheus text format.
pub fn exposition(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, registry)
        .expect("writing to a String cannot fail");
    text
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LookupLabels {
    #[prometheus(flatten)]
    client: Identity,
    outcome: &'static str,
    qtype: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabels {
    #[prometheus(flatten)]
    client: Identity,
    server: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DiagnosisLabels {
    #[prometheus(flatten)]
    client: Identity,
    cause: &'static str,
    /// Empty for a diagnosis of no one server (search-list expansion).
    server: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NameLabels {
    name: Arc<str>,
    outcome: &'static str,
}

/// For the few small families whose one label has a fixed set of values.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// The kernel's drop reasons: its enum has about a hundred values; at
/// most `MAX_DROP_REASONS` get series, the rest count as `~other`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropReasonLabels {
    reason: Arc<str>,
}

const MAX_DROP_REASONS: usize = 32;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FoldedLabels {
    label: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The per-client families, whose series come and go with their clients.
struct ClientFamilies {
    lookups: Expiring<LookupLabels, Counter>,
    lookup_duration: Expiring<Identity, Histogram>,
    queries_wasted: Expiring<Identity, Counter>,
    responses_rejected: Expiring<ServerLabels, Counter>,
    timeouts: Expiring<ServerLabels, Counter>,
    diagnoses: Expiring<DiagnosisLabels, Counter>,
    lookups_by_name: Expiring<NameLabels, Counter>,
}

/// Everything about dnstrace itself: a fixed set of series.
struct AgentFamilies {
    messages: Family<DirectionLabels, Counter>,
    lost: Counter,
    undecodable: Counter,
    uncorrelated: Family<ReasonLabels, Counter>,
    lookups_evicted: Counter,
    diagnoses_dropped: Counter,
    lookups_pending: Gauge,
    processes: Gauge,
    folded: Family<FoldedLabels, Counter>,
    kernel_drops: Family<DropReasonLabels, Counter>,
    /// The drop reasons with series of their own.
    drop_reasons: HashSet<Arc<str>>,
}

pub struct MetricsOutput {
    registry: Arc<Registry>,
    clients: ClientFamilies,
    agent: AgentFamilies,
    identities: Slots<Identity, Identity>,
    servers: Slots<SocketAddr, Arc<str>>,
    /// Query names with series of their own (`--metrics-top-names`).
    names: Slots<String, Arc<str>>,
    count_names: bool,
    grace_ns: u64,
    /// The latest time seen, CLOCK_MONOTONIC ns.
    now_ns: u64,
    sent: u64,
    received: u64,
    /// Each diagnosis's count when last seen, so the counter grows by what
    /// it grew. As many as the diagnoser keeps.
    diagnosis_counts: HashMap<(ClientId, Cause, Option<SocketAddr>), u64>,
    /// `--metrics-file`, written at the end.
    file: Option<File>,
}

impl MetricsOutput {
    /// The metrics output when `--metrics-file` asks for one or `serve` is
    /// set (`--metrics`).
    pub fn open(args: &MetricsArgs, serve: bool) -> Result<Option<Self>, Failure> {
        let file = args.file.as_deref().map(create_private).transpose()?;
        if file.is_none() && !serve {
            return Ok(None);
        }
        let mut output = Self::new(args);
        output.file = file;
        Ok(Some(output))
    }

    fn new(args: &MetricsArgs) -> Self {
        let mut registry = Registry::default();
        let r = &mut registry;
        let clients = ClientFamilies {
            lookups: per_client(
                r,
                "dnstrace_lookups",
                "Lookups (one process resolving one name, retries and search list included) by outcome and question type",
                Family::default(),
            ),
            lookup_duration: per_client(
                r,
                "dnstrace_lookup_duration_seconds",
                "Lookup latency as the client saw it: its first query to the response it used, or to giving up",
                Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            ),
            queries_wasted: per_client(
                r,
                "dnstrace_queries_wasted",
                "Queries that did not give a lookup its result: unanswered, rejected, or for search-list names that failed",
                Family::default(),
            ),
            responses_rejected: per_client(
                r,
                "dnstrace_responses_rejected",
                "Responses that reached the client and were thrown away: it asked again, asked another server, or switched to TCP",
                Family::default(),
            ),
            timeouts: per_client(
                r,
                "dnstrace_timeouts",
                "Queries that got no response before the client gave up waiting",
                Family::default(),
            ),
            diagnoses: per_client(
                r,
                "dnstrace_diagnoses",
                "Findings of each diagnosis cause (docs/diagnoses.md), per client and server",
                Family::default(),
            ),
            lookups_by_name: per_client(
                r,
                "dnstrace_lookups_by_name",
                "Lookups by query name, for the names --metrics-top-names allows; the rest are ~other",
                Family::default(),
            ),
        };
        let agent = AgentFamilies {
            messages: registered(
                r,
                "dnstrace_messages",
                "DNS messages seen, by direction from the process's side",
            ),
            lost: registered(
                r,
                "dnstrace_lost_messages",
                "Messages dropped in the kernel because the ring buffer was full",
            ),
            undecodable: registered(
                r,
                "dnstrace_undecodable",
                "Messages whose DNS payload did not decode",
            ),
            uncorrelated: registered(
                r,
                "dnstrace_messages_uncorrelated",
                "Messages left out of correlation: while the agent was behind (behind), or client messages of no known process (unattributed)",
            ),
            lookups_evicted: registered(
                r,
                "dnstrace_lookups_evicted",
                "Lookups reported before they settled because correlation state was full",
            ),
            diagnoses_dropped: registered(
                r,
                "dnstrace_diagnoses_dropped",
                "Diagnoses not kept because too many were",
            ),
            lookups_pending: registered(
                r,
                "dnstrace_lookups_pending",
                "Lookups open in correlation, not yet settled",
            ),
            processes: registered(
                r,
                "dnstrace_processes_tracked",
                "Processes in the per-process report",
            ),
            folded: registered(
                r,
                "dnstrace_metrics_folded",
                "Updates counted under ~other because the client, server or name bound was reached",
            ),
            kernel_drops: registered(
                r,
                "dnstrace_kernel_drops",
                "DNS packets the kernel dropped, by the kernel's drop reason",
            ),
            drop_reasons: HashSet::new(),
        };
        Self {
            registry: Arc::new(registry),
            clients,
            agent,
            identities: Slots::new(args.max_clients),
            servers: Slots::new(args.max_servers),
            names: Slots::new(args.top_names),
            count_names: args.top_names > 0,
            grace_ns: Duration::from_secs(args.grace_secs)
                .as_nanos()
                .try_into()
                .unwrap_or(u64::MAX),
            now_ns: 0,
            sent: 0,
            received: 0,
            diagnosis_counts: HashMap::new(),
            file: None,
        }
    }

    /// What the HTTP endpoint encodes on each scrape.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// The client's labels, or `~other` past the bound.
    fn identity(&mut self, client: &crate::message::Client) -> Identity {
        let identity = Identity::of(client);
        match self
            .identities
            .admit(&identity, self.now_ns, || identity.clone())
        {
            Some(identity) => identity,
            None => {
                self.fold("client");
                Identity::other()
            }
        }
    }

    fn server(&mut self, server: SocketAddr) -> Arc<str> {
        match self
            .servers
            .admit(&server, self.now_ns, || Arc::from(server.to_string()))
        {
            Some(label) => label,
            None => {
                self.fold("server");
                other()
            }
        }
    }

    fn name(&mut self, name: &str) -> Arc<str> {
        match self.names.admit(name, self.now_ns, || Arc::from(name)) {
            Some(label) => label,
            None => {
                self.fold("name");
                other()
            }
        }
    }

    fn fold(&self, label: &'static str) {
        self.agent
            .folded
            .get_or_create(&FoldedLabels { label })
            .inc();
    }

    /// A rejected or timed-out attempt, counted against its server.
    fn attempt(&mut self, client: &Identity, attempt: &Attempt) {
        let rejected = match attempt.outcome {
            Outcome::Rejected(_) => true,
            Outcome::Timeout => false,
            _ => return,
        };
        let labels = ServerLabels {
            client: client.clone(),
            server: self.server(attempt.server),
        };
        let family = match rejected {
            true => &mut self.clients.responses_rejected,
            false => &mut self.clients.timeouts,
        };
        family.get(labels, self.now_ns).inc();
    }

    /// Removes what has not been used for the grace period.
    fn expire(&mut self) {
        let Some(cutoff) = self.now_ns.checked_sub(self.grace_ns) else {
            return;
        };
        self.identities.expire(cutoff);
        self.servers.expire(cutoff);
        self.names.expire(cutoff);
        let families = &mut self.clients;
        families.lookups.expire(cutoff);
        families.lookup_duration.expire(cutoff);
        families.queries_wasted.expire(cutoff);
        families.responses_rejected.expire(cutoff);
        families.timeouts.expire(cutoff);
        families.diagnoses.expire(cutoff);
        families.lookups_by_name.expire(cutoff);
    }

    /// Brings the counters kept elsewhere up to their totals.
    fn count_totals(&self, summary: &Summary) {
        let agent = &self.agent;
        let direction = |direction: Direction| {
            agent.messages.get_or_create_owned(&DirectionLabels {
                direction: direction.name(),
            })
        };
        raise(&direction(Direction::Send), self.sent);
        raise(&direction(Direction::Recv), self.received);
        raise(&agent.lost, summary.lost());
        raise(&agent.undecodable, summary.undecodable);
        let reason = |reason| {
            agent
                .uncorrelated
                .get_or_create_owned(&ReasonLabels { reason })
        };
        raise(&reason("behind"), summary.shed);
        raise(&reason("unattributed"), summary.unattributed);
        raise(&agent.lookups_evicted, summary.evicted_lookups);
        raise(&agent.diagnoses_dropped, summary.dropped_diagnoses);
    }
}

/// A new metric, registered under `name`.
fn registered<M: Metric + Clone + Default>(registry: &mut Registry, name: &str, help: &str) -> M {
    let metric = M::default();
    registry.register(name, help, metric.clone());
    metric
}

/// A per-client family, registered under `name`.
fn per_client<L, M, C>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    family: Family<L, M, C>,
) -> Expiring<L, M, C>
where
    Family<L, M, C>: Metric + Clone,
{
    registry.register(name, help, family.clone());
    Expiring::new(family)
}

/// Raises a counter to `total`, a count kept elsewhere.
fn raise(counter: &Counter, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}

/// The question types of a lookup, from a bounded set: one type, or
/// `A,AAAA` for the address pair (getaddrinfo asks both).
fn qtype_label(lookup: &Lookup) -> &'static str {
    let mut types = lookup
        .attempts
        .iter()
        .filter(|a| a.sent_monotonic_ns.is_some())
        .map(|a| a.question.qtype);
    let Some(first) = types.next() else {
        return "other";
    };
    let mut both = None;
    for qtype in types.filter(|t| *t != first) {
        match both {
            None => both = Some(qtype),
            Some(second) if second == qtype => {}
            Some(_) => return "other",
        }
    }
    match (first, both) {
        (1, Some(28)) | (28, Some(1)) => "A,AAAA",
        (_, Some(_)) => "other",
        (1, None) => "A",
        (28, None) => "AAAA",
        (5, None) => "CNAME",
        (12, None) => "PTR",
        (15, None) => "MX",
        (16, None) => "TXT",
        (33, None) => "SRV",
        (65, None) => "HTTPS",
        _ => "other",
    }
}

impl Output for MetricsOutput {
    fn message(&mut self, message: &Message) -> io::Result<()> {
        // Counted here, published once a tick: cheaper than a counter's
        // atomic add for every message.
        match message.envelope.direction {
            Direction::Send => self.sent += 1,
            Direction::Recv => self.received += 1,
        }
        Ok(())
    }

    fn lookup(&mut self, lookup: &Lookup) -> io::Result<()> {
        self.now_ns = self.now_ns.max(lookup.last_monotonic_ns);
        let now = self.now_ns;
        let client = self.identity(lookup.client());
        let outcome = lookup.outcome().name();
        let labels = LookupLabels {
            client: client.clone(),
            outcome,
            qtype: qtype_label(lookup),
        };
        self.clients.lookups.get(labels, now).inc();
        self.clients
            .lookup_duration
            .get(client.clone(), now)
            .observe(lookup.total_ns() as f64 / 1e9);
        let wasted = lookup.wasted_queries() as u64;
        if wasted > 0 {
            self.clients
                .queries_wasted
                .get(client.clone(), now)
                .inc_by(wasted);
        }
        for attempt in &lookup.attempts {
            self.attempt(&client, attempt);
        }
        if self.count_names {
            let name = self.name(lookup.name());
            self.clients
                .lookups_by_name
                .get(NameLabels { name, outcome }, now)
                .inc();
        }
        Ok(())
    }

    fn dropped(&mut self, dropped: &Dropped) -> io::Result<()> {
        let reasons = &mut self.agent.drop_reasons;
        let has_series = reasons.contains(&dropped.reason)
            || (reasons.len() < MAX_DROP_REASONS && reasons.insert(Arc::clone(&dropped.reason)));
        let reason = match has_series {
            true => Arc::clone(&dropped.reason),
            false => "~other".into(),
        };
        self.agent
            .kernel_drops
            .get_or_create(&DropReasonLabels { reason })
            .inc();
        Ok(())
    }

    fn diagnosis(&mut self, diagnosis: &Diagnosis, _first: bool) -> io::Result<()> {
        let key = (diagnosis.client.id, diagnosis.cause, diagnosis.server);
        let before = self.diagnosis_counts.insert(key, diagnosis.count);
        let grown = diagnosis.count.saturating_sub(before.unwrap_or(0));
        if grown == 0 {
            return Ok(());
        }
        let labels = DiagnosisLabels {
            client: self.identity(&diagnosis.client),
            cause: diagnosis.cause.code(),
            server: diagnosis.server.map_or_else(empty, |s| self.server(s)),
        };
        self.clients
            .diagnoses
            .get(labels, self.now_ns)
            .inc_by(grown);
        Ok(())
    }

    fn state(&mut self, state: &AgentState) -> io::Result<()> {
        self.now_ns = self.now_ns.max(state.now_ns);
        self.count_totals(state.summary);
        let gauge = |value: usize| i64::try_from(value).unwrap_or(i64::MAX);
        self.agent.lookups_pending.set(gauge(state.open_lookups));
        self.agent.processes.set(gauge(state.processes));
        self.expire();
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn finish(&mut self, summary: &Summary) -> io::Result<()> {
        self.count_totals(summary);
        match &mut self.file {
            Some(file) => file.write_all(exposition(&self.registry).as_bytes()),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
