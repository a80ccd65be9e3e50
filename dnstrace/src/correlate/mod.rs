//! Correlation: messages → attempts → lookups, per process.
//!
//! A query opens an attempt; the response on the same socket with the same
//! id and question closes it. What the process does next decides whether it
//! used the response: asking the same question again at once, asking
//! another server or switching to TCP means it threw the answer away.

pub mod attempt;
pub mod lookup;
pub mod reads;
#[cfg(test)]
mod tests;

use std::{collections::HashMap, sync::Arc};

use self::{
    attempt::{Attempt, Mismatch, Outcome, ReadState, Rejection, Response, Shape},
    lookup::Lookup,
};
use crate::{
    decode::Question,
    message::{Client, ClientId, Direction, Message},
    resolver::ResolverContext,
};

/// A response is judged rejected only if the process asks again within this
/// long; resolvers that reject an answer ask again at once.
pub const REJECT_WINDOW_NS: u64 = 250_000_000;
/// A lookup is reported once nothing happened in it for this long.
pub const SETTLE_NS: u64 = 1_000_000_000;
/// Slack on top of the resolver's timeout before an unanswered query counts
/// as timed out, for a process that never asks again.
const TIMEOUT_SLACK_NS: u64 = 1_000_000_000;
/// Open lookups kept per process, and processes tracked; past either the
/// oldest lookup is reported as it stands and counted as evicted.
const MAX_LOOKUPS_PER_PROCESS: usize = 512;
const MAX_PROCESSES: usize = 4096;
/// A lookup with this many attempts takes no more; real resolvers make at
/// most about 24 (six search domains, two types, two tries).
const MAX_ATTEMPTS_PER_LOOKUP: usize = 32;
/// A process sending more client messages than this in a second is a load
/// generator or a caching server, not a stub resolver: correlating it would
/// cost more than it tells, so it is left out for `BULK_PAUSE_NS`.
pub const MAX_MESSAGES_PER_SECOND: u32 = 2_000;
const BULK_PAUSE_NS: u64 = 10_000_000_000;

/// What correlation hands on.
#[derive(Debug)]
pub enum Correlated {
    /// A lookup that settled.
    Lookup(Lookup),
    /// A response that matched no query.
    Stray(Attempt),
}

#[derive(Default)]
pub struct Correlator {
    /// Clients without a process have no resolver settings to read.
    unknown_context: Arc<ResolverContext>,
    /// Open lookups per client, oldest first.
    lookups: ClientMap<Vec<Lookup>>,
    /// Lookups reported early because the caps were reached.
    pub evicted: u64,
    /// Client messages of processes too busy to correlate (see
    /// `MAX_MESSAGES_PER_SECOND`).
    pub uncorrelated: u64,
    budgets: ClientMap<Budget>,
    /// Files: a message without a process belongs to its client address.
    /// Live, such a message is left out (and counted in `unattributed`):
    /// the processes behind one host address would read as one client, and
    /// one's query as another's rejection.
    by_address: bool,
    pub unattributed: u64,
}

/// Per-client state, looked up for every client message: foldhash is
/// several times quicker than SipHash on these small keys.
type ClientMap<V> = HashMap<ClientId, V, foldhash::fast::RandomState>;

/// How many messages a process sent in the current one-second window.
#[derive(Default)]
struct Budget {
    window_start_ns: u64,
    messages: u32,
    paused_until_ns: u64,
}

impl Correlator {
    /// For traces read from files, whose messages may have no process.
    pub fn offline() -> Self {
        Self {
            by_address: true,
            ..Self::default()
        }
    }

    pub fn observe(&mut self, message: &Message, out: &mut Vec<Correlated>) {
        let Some(header) = &message.dns.header else {
            return;
        };
        if message.dns.question.is_none() {
            return;
        }
        // Only the client's view: its queries out, its responses in.
        let client_side = match message.envelope.direction {
            Direction::Send => !header.is_response,
            Direction::Recv => header.is_response,
        };
        if !client_side {
            return;
        }
        if message.envelope.process.is_none() && !self.by_address {
            self.unattributed += 1;
            return;
        }
        // The budget first: a busy client's messages end there, and need
        // no copy of its name.
        if !self.within_budget(message.client_id(), message.envelope.monotonic_ns) {
            self.uncorrelated += 1;
            return;
        }
        let client = message.client();
        if header.is_response {
            self.on_response(message, client, header.id, Shape::of(header), out);
        } else {
            self.on_query(message, client, header.id, out);
        }
    }

    fn on_query(&mut self, message: &Message, client: Client, id: u16, out: &mut Vec<Correlated>) {
        let question = message.dns.question.clone().expect("checked by observe");
        let now = message.envelope.monotonic_ns;
        // The process's resolver, as the enrich stage found it.
        let context = match &message.envelope.process {
            Some(process) => Arc::clone(&process.facts.resolver),
            None => Arc::clone(&self.unknown_context),
        };
        let name = context.name_as_asked(&question.name);
        if !self.lookups.contains_key(&client.id) && self.lookups.len() >= MAX_PROCESSES {
            self.evict_oldest_process(out);
        }
        let lookups = self.lookups.entry(client.id).or_default();

        for lookup in lookups.iter_mut() {
            let positive = lookup.has_positive_response();
            let same_name = lookup.name == name;
            for previous in lookup
                .attempts
                .iter_mut()
                .filter(|a| a.outcome == Outcome::Pending)
            {
                if !previous.question.same_as(&question) {
                    // Asking about another name: earlier answers were used.
                    if !same_name && previous.response.is_some() {
                        previous.moved_on = true;
                    }
                    continue;
                }
                judge_repeat(previous, message, now, positive || previous.moved_on);
            }
        }

        // A new lookup unless this continues an unfinished one for the name.
        // Without the process's search list, a query that shares its first
        // label with an unresolved lookup continues it (postgres.ns.svc… →
        // postgres.).
        let search_unknown = context.conf.is_none();
        // A lookup that has an answer to every question it asked ends when
        // the process starts over: a fresh socket to the server it began
        // with. (glibc's last round, one query per socket after timeouts,
        // still belongs to a lookup that lacks an answer.)
        let position = lookups.iter().rposition(|lookup| {
            let continues = lookup.name == name
                || (search_unknown
                    && !lookup.has_positive_response()
                    && first_label(&lookup.name) == first_label(&name));
            let starts_over = lookup.has_positive_response()
                && lookup.every_question_answered()
                && lookup
                    .attempts
                    .iter()
                    .all(|a| a.socket_cookie != message.envelope.socket_cookie)
                && lookup
                    .attempts
                    .first()
                    .is_some_and(|a| a.server == message.envelope.remote);
            continues && !starts_over && lookup.attempts.len() < MAX_ATTEMPTS_PER_LOOKUP
        });
        let index = match position {
            Some(index) => index,
            None => {
                if lookups.len() >= MAX_LOOKUPS_PER_PROCESS {
                    self.evicted += 1;
                    out.push(Correlated::Lookup(close_as_it_stands(lookups.remove(0))));
                }
                lookups.push(Lookup {
                    client: client.clone(),
                    name: name.clone(),
                    context: Arc::clone(&context),
                    attempts: Vec::new(),
                    first_monotonic_ns: now,
                    first_wall_time_ns: message.envelope.wall_time_ns,
                    last_monotonic_ns: now,
                });
                lookups.len() - 1
            }
        };
        let lookup = &mut lookups[index];
        lookup.last_monotonic_ns = now;
        if name.len() < lookup.name.len() {
            // The shortest name tried is the one the process asked for.
            lookup.name = name;
        }
        lookup.attempts.push(Attempt {
            client,
            socket_cookie: message.envelope.socket_cookie,
            transport: message.envelope.transport,
            server: message.envelope.remote,
            question,
            id,
            sent_monotonic_ns: Some(now),
            sent_wall_time_ns: Some(message.envelope.wall_time_ns),
            response: None,
            outcome: Outcome::Pending,
            moved_on: false,
            ended_monotonic_ns: None,
        });
    }

    fn on_response(
        &mut self,
        message: &Message,
        client: Client,
        id: u16,
        shape: Shape,
        out: &mut Vec<Correlated>,
    ) {
        let question = message.dns.question.as_ref().expect("checked by observe");
        let response = Response {
            monotonic_ns: message.envelope.monotonic_ns,
            wall_time_ns: message.envelope.wall_time_ns,
            from: message.envelope.remote,
            shape,
            number: message.envelope.response_number,
            // Settled when the lookup is reported (`reads::settle`).
            read: match message.envelope.response_number {
                Some(_) => ReadState::Pending,
                None => ReadState::Unknown,
            },
        };
        let lookups = self.lookups.entry(client.id).or_default();
        let on_socket = |a: &Attempt| {
            a.socket_cookie == message.envelope.socket_cookie && a.sent_monotonic_ns.is_some()
        };
        // The newest query that fits: glibc re-sends with the same id.
        let matching = lookups
            .iter_mut()
            .rev()
            .flat_map(|lookup| lookup.attempts.iter_mut().rev())
            .find(|a| {
                on_socket(a) && a.id == id && a.response.is_none() && a.question.same_as(question)
            });
        if let Some(attempt) = matching {
            // A connected socket only hears its peer; an unconnected one may
            // hear anyone, and resolvers ignore answers from elsewhere.
            if attempt.server == message.envelope.remote {
                attempt.outcome = match attempt.outcome {
                    Outcome::Timeout => Outcome::Late,
                    outcome => outcome,
                };
                if attempt.outcome == Outcome::Pending {
                    attempt.ended_monotonic_ns = Some(message.envelope.monotonic_ns);
                }
                attempt.response = Some(response);
                return;
            }
            out.push(stray(message, client, id, response, Mismatch::Source));
            return;
        }
        let waiting: Vec<&Attempt> = lookups
            .iter()
            .flat_map(|lookup| lookup.attempts.iter())
            .filter(|a| on_socket(a) && a.response.is_none())
            .collect();
        let mismatch = if waiting.is_empty() {
            Mismatch::Unsolicited
        } else if waiting.iter().any(|a| a.id == id) {
            Mismatch::Question
        } else {
            Mismatch::Id
        };
        out.push(stray(message, client, id, response, mismatch));
    }

    /// Counts the message against its process's budget. A process going
    /// over it has its open lookups dropped unreported: half-seen lookups
    /// would read as timeouts that never happened.
    fn within_budget(&mut self, client: ClientId, now: u64) -> bool {
        if self.budgets.len() >= MAX_PROCESSES && !self.budgets.contains_key(&client) {
            self.budgets.clear();
        }
        let budget = self.budgets.entry(client).or_default();
        if now < budget.paused_until_ns {
            return false;
        }
        if now.saturating_sub(budget.window_start_ns) >= 1_000_000_000 {
            budget.window_start_ns = now;
            budget.messages = 0;
        }
        budget.messages += 1;
        if budget.messages <= MAX_MESSAGES_PER_SECOND {
            return true;
        }
        budget.paused_until_ns = now + BULK_PAUSE_NS;
        if let Some(lookups) = self.lookups.remove(&client) {
            self.uncorrelated += lookups.iter().map(|l| l.attempts.len() as u64).sum::<u64>();
        }
        false
    }

    /// Decides what time alone decides, and reports lookups that settled.
    pub fn advance(&mut self, now: u64, out: &mut Vec<Correlated>) {
        for lookups in self.lookups.values_mut() {
            for lookup in lookups.iter_mut() {
                let timeout = lookup.context.timeout_ns() + TIMEOUT_SLACK_NS;
                let rejected = rejected_shapes(lookup);
                for attempt in lookup
                    .attempts
                    .iter_mut()
                    .filter(|a| a.outcome == Outcome::Pending)
                {
                    match (&attempt.response, attempt.sent_monotonic_ns) {
                        (Some(response), _)
                            if now.saturating_sub(response.monotonic_ns) > REJECT_WINDOW_NS =>
                        {
                            attempt.outcome = unrepeated_answer(attempt, &rejected);
                        }
                        (None, Some(sent)) if now.saturating_sub(sent) > timeout => {
                            attempt.outcome = Outcome::Timeout;
                            attempt.ended_monotonic_ns = Some(now);
                        }
                        _ => {}
                    }
                }
            }
            let (settled, open): (Vec<Lookup>, Vec<Lookup>) = lookups.drain(..).partition(|l| {
                l.is_settled() && now.saturating_sub(l.last_activity_ns()) > SETTLE_NS
            });
            *lookups = open;
            out.extend(settled.into_iter().map(Correlated::Lookup));
        }
        self.lookups.retain(|_, lookups| !lookups.is_empty());
        self.budgets.retain(|_, budget| {
            now.saturating_sub(budget.window_start_ns) < BULK_PAUSE_NS
                || now < budget.paused_until_ns
        });
    }

    /// Reports everything still open, as it stands (at exit).
    pub fn finish(&mut self, out: &mut Vec<Correlated>) {
        let mut open: Vec<Lookup> = self.lookups.drain().flat_map(|(_, l)| l).collect();
        // In the order they began, whichever client they belong to.
        open.sort_by_key(|lookup| lookup.first_monotonic_ns);
        out.extend(
            open.into_iter()
                .map(|l| Correlated::Lookup(close_as_it_stands(l))),
        );
    }

    /// Lookups not yet reported.
    pub fn open_lookups(&self) -> usize {
        self.lookups.values().map(Vec::len).sum()
    }

    fn evict_oldest_process(&mut self, out: &mut Vec<Correlated>) {
        let oldest = self
            .lookups
            .iter()
            .min_by_key(|(_, lookups)| lookups.iter().map(|l| l.last_monotonic_ns).max())
            .map(|(client, _)| *client);
        if let Some(lookups) = oldest.and_then(|client| self.lookups.remove(&client)) {
            self.evicted += lookups.len() as u64;
            out.extend(lookups.into_iter().map(Correlated::Lookup));
        }
    }
}

/// The process asked `previous`'s question again. What that says about
/// `previous` depends on whether it had an answer, and how it asks again.
fn judge_repeat(previous: &mut Attempt, repeat: &Message, now: u64, answer_was_used: bool) {
    let Some(response) = &previous.response else {
        // It gave up waiting: a retransmission, the next server, or TCP.
        previous.outcome = Outcome::Timeout;
        previous.ended_monotonic_ns = Some(now);
        return;
    };
    if now.saturating_sub(response.monotonic_ns) > REJECT_WINDOW_NS {
        previous.outcome = Outcome::Answered;
        return;
    }
    let rejection = if repeat.envelope.transport != previous.transport {
        Some(Rejection::SwitchedToTcp)
    } else if repeat.envelope.remote != previous.server {
        Some(Rejection::NextServer)
    } else if repeat.envelope.socket_cookie == previous.socket_cookie {
        Some(Rejection::AskedAgain)
    } else if !answer_was_used || response.shape.is_lame_referral() {
        // A fresh socket to the same server: a resolver that opens one per
        // try (Go), unless the lookup already had its answer, in which case
        // this is the application asking again. A lame referral is never an
        // answer to keep, so asking again after one is rejecting it.
        Some(Rejection::AskedAgain)
    } else {
        None
    };
    previous.outcome = match rejection {
        Some(rejection) => Outcome::Rejected(rejection),
        None => Outcome::Answered,
    };
}

/// A lookup reported before time could judge it (at exit, or evicted): a
/// response the process did not ask again after was used, or rejected if it
/// repeats one just thrown away; queries without one stay pending.
fn close_as_it_stands(mut lookup: Lookup) -> Lookup {
    let rejected = rejected_shapes(&lookup);
    for attempt in lookup
        .attempts
        .iter_mut()
        .filter(|a| a.outcome == Outcome::Pending && a.response.is_some())
    {
        attempt.outcome = unrepeated_answer(attempt, &rejected);
    }
    lookup
}

/// The questions and response shapes the process threw away in a lookup.
fn rejected_shapes(lookup: &Lookup) -> Vec<(Question, Shape)> {
    lookup
        .attempts
        .iter()
        .filter(|a| matches!(a.outcome, Outcome::Rejected(_)))
        .filter_map(|a| Some((a.question.clone(), a.response.as_ref()?.shape)))
        .collect()
}

/// A response the process did not ask again after. It was used, unless the
/// process had thrown away the very same answer moments before: then it
/// gave up on this one too (glibc's last try after lame answers).
fn unrepeated_answer(attempt: &Attempt, rejected: &[(Question, Shape)]) -> Outcome {
    let shape = attempt.response.as_ref().map(|r| r.shape);
    let seen_before = rejected.iter().any(|(question, rejected)| {
        question.same_as(&attempt.question) && Some(*rejected) == shape
    });
    if seen_before {
        Outcome::Rejected(Rejection::GaveUp)
    } else {
        Outcome::Answered
    }
}

fn first_label(name: &str) -> &str {
    name.split('.').next().unwrap_or(name)
}

fn stray(
    message: &Message,
    client: Client,
    id: u16,
    response: Response,
    mismatch: Mismatch,
) -> Correlated {
    Correlated::Stray(Attempt {
        client,
        socket_cookie: message.envelope.socket_cookie,
        transport: message.envelope.transport,
        server: message.envelope.remote,
        question: message.dns.question.clone().expect("checked by observe"),
        id,
        sent_monotonic_ns: None,
        sent_wall_time_ns: None,
        ended_monotonic_ns: Some(response.monotonic_ns),
        // Reported as it arrives, before the process could read it.
        response: Some(Response {
            read: ReadState::Unknown,
            ..response
        }),
        outcome: Outcome::Mismatched(mismatch),
        moved_on: false,
    })
}

impl Lookup {
    fn last_activity_ns(&self) -> u64 {
        self.attempts
            .iter()
            .filter_map(|a| a.response.as_ref().map(|r| r.monotonic_ns))
            .chain([self.last_monotonic_ns])
            .max()
            .unwrap_or(self.last_monotonic_ns)
    }
}
