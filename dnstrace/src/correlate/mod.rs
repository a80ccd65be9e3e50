//! Correlation: messages → attempts → lookups, per process.
//!
//! A query opens an attempt; the response on the same socket, with the same
//! id and question, from the server the query went to closes it (a
//! response without a question section by socket, id and source alone).
//! What the process does next decides whether it used the response: asking
//! the same question again at once, asking another server or switching to
//! TCP means it threw the answer away, unless its resolver keeps that answer
//! (behaviour.rs): then the program is looking the name up again.

pub mod attempt;
pub mod behaviour;
mod drops;
pub mod lookup;
mod open;
pub mod reads;
pub mod servers;
#[cfg(test)]
pub(crate) mod tests;

use std::{collections::HashMap, sync::Arc};

use self::{
    attempt::{Attempt, Mismatch, Outcome, ReadState, Rejection, Response, Shape},
    lookup::Lookup,
    open::{Keys, Open},
};
use crate::{
    decode::Question,
    message::{Client, ClientId, Direction, Message, Transport},
    resolver::{Library, ResolverContext},
};

/// A response is judged rejected only if the process asks again within this
/// long; resolvers that reject an answer ask again at once.
pub const REJECT_WINDOW_NS: u64 = 250_000_000;
/// A lookup is reported once nothing happened in it for this long.
pub const SETTLE_NS: u64 = 1_000_000_000;
/// Slack on top of the resolver's timeout before an unanswered query counts
/// as timed out, for a process that never asks again.
const TIMEOUT_SLACK_NS: u64 = 1_000_000_000;
/// No resolver gives up on a query sooner than this (glibc and Go wait at
/// least 1 s, musl its timeout over its attempts, 100 ms at the least): a
/// process that stops waiting sooner has another reason.
const SHORTEST_TIMEOUT_NS: u64 = 100_000_000;
/// The correlator's memory budget: open lookups per process, in all, and
/// processes tracked. Past any of them the oldest lookup (of the process,
/// of the process holding the most, or every lookup of the process idle
/// longest) is reported as it stands and counted as evicted. A lookup with
/// one attempt takes about 750 bytes with its filters and index entries,
/// so 65,536 take about 48 MiB (docs/benchmarks.md, "Memory").
const MAX_LOOKUPS_PER_PROCESS: usize = 512;
pub const MAX_OPEN_LOOKUPS: usize = 65_536;
const MAX_PROCESSES: usize = 4096;
/// A lookup with this many attempts takes no more; real resolvers make at
/// most about 24 (six search domains, two types, two tries).
const MAX_ATTEMPTS_PER_LOOKUP: usize = 32;

/// What correlation hands on.
#[derive(Debug)]
pub enum Correlated {
    /// A lookup that settled.
    Lookup(Box<Lookup>),
    /// A response that matched no query (rare, and an attempt is larger
    /// than a boxed lookup: boxed, so that a batch of lookups is not).
    Stray(Box<Attempt>),
}

#[derive(Default)]
pub struct Correlator {
    /// Clients without a process have no resolver settings to read.
    unknown_context: Arc<ResolverContext>,
    /// Open lookups per client, oldest first.
    lookups: ClientMap<Open>,
    /// Lookups reported early because the caps were reached.
    pub evicted: u64,
    /// Open lookups in all, counted as they open and go.
    open: usize,
    /// Files: a message without a process belongs to its client address.
    /// Live, such a message is left out (and counted in `unattributed`):
    /// the processes behind one host address would read as one client, and
    /// one's query as another's rejection.
    by_address: bool,
    pub unattributed: u64,
    /// The pods seen answering queries on this node.
    pub servers: servers::ServerPods,
}

/// Per-client state, looked up for every client message: foldhash is
/// several times quicker than SipHash on these small keys.
type ClientMap<V> = HashMap<ClientId, V, foldhash::fast::RandomState>;

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
        // A query without a question asks nothing; a response without one
        // (a bare REFUSED or FORMERR header) still answers its query.
        if message.dns.question.is_none() && !header.is_response {
            return;
        }
        // Only the client's view: its queries out, its responses in.
        let client_side = match message.envelope.direction {
            Direction::Send => !header.is_response,
            Direction::Recv => header.is_response,
        };
        if !client_side {
            self.servers.observe(message, header.id);
            return;
        }
        if message.envelope.process.is_none() && !self.by_address {
            self.unattributed += 1;
            return;
        }
        // A packet the kernel dropped and said so before its socket
        // program's record came: its attempt has it already.
        let dropped = match header.is_response {
            true => self.response_was_dropped(message, header.id),
            false => self.query_was_dropped(message, header.id),
        };
        if dropped {
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
        // The process's resolver, as the enrich stage found it: borrowed,
        // as only a new lookup keeps it.
        let unknown;
        let context = match &message.envelope.process {
            Some(process) => &process.facts.resolver,
            None => {
                unknown = Arc::clone(&self.unknown_context);
                &unknown
            }
        };
        let name = context.name_as_asked(&question.name);
        if !self.lookups.contains_key(&client.id) && self.lookups.len() >= MAX_PROCESSES {
            self.evict_oldest_process(out);
        }
        if self.open >= MAX_OPEN_LOOKUPS {
            self.evict_from_largest(out);
        }
        let lookups = self.lookups.entry(client.id).or_default();
        let keys = Keys::new(&name, Some(&question), message.envelope.socket_cookie, id);

        // A lookup the summary rules out would not change below.
        let mut next = 0;
        #[cfg(debug_assertions)]
        let mut passed = Vec::new();
        let retry = lookups.may_be_a_retry(&keys, message.envelope.transport == Transport::Tcp);
        while let Some(index) = lookups.next_maybe_repeated(next, &keys, retry) {
            #[cfg(debug_assertions)]
            passed.extend(next..index);
            next = index + 1;
            let over = lookups.is_over(index);
            lookups.change(index, |lookup| {
                // Judged as the lookup's resolver would retry.
                let sender = Sender::of(message, id, lookup.context.library.as_ref());
                let same_name = lookup.name() == name;
                // What a repeat needs is worked out only for a lookup that has
                // one: a busy process has hundreds open.
                let repeated = lookup.attempts.iter().any(|a| {
                    a.outcome == Outcome::Pending
                        && a.question.same_as(&question)
                        && !sender.is_another_call_than(a)
                });
                let (positive, over, fresh_socket_retries) = if repeated {
                    (
                        lookup.has_positive_response(),
                        over,
                        lookup.retries_on_fresh_socket(),
                    )
                } else {
                    (false, false, None)
                };
                let library = repeated.then(|| lookup.context.library.clone()).flatten();
                let answer_thrown_away = repeated
                    && lookup.attempts.iter().any(|a| {
                        (a.response.as_ref()).is_some_and(|r| {
                            behaviour::rejects(library.as_ref(), &r.shape) != Some(false)
                        })
                    });
                for previous in lookup
                    .attempts
                    .iter_mut()
                    .filter(|a| a.outcome == Outcome::Pending && !sender.is_another_call_than(a))
                {
                    if !previous.question.same_as(&question) {
                        // Asking about another name: earlier answers were used.
                        if !same_name && previous.response.is_some() {
                            previous.moved_on = true;
                        }
                        continue;
                    }
                    let known = Known {
                        library: library.as_ref(),
                        answer_was_used: positive || previous.moved_on,
                        lookup_over: over,
                        answer_thrown_away,
                        fresh_socket_retries,
                    };
                    judge_repeat(previous, message, id, now, &known);
                }
            });
        }
        #[cfg(debug_assertions)]
        {
            passed.extend(next..lookups.len());
            for index in passed {
                let lookup = lookups.get(index);
                let sender = Sender::of(message, id, lookup.context.library.as_ref());
                debug_assert!(
                    !concerns(lookup, &sender, &question, &name),
                    "a query passed over a lookup it concerns"
                );
            }
        }

        // A new lookup unless this continues an unfinished one for the name.
        // Without the process's search list, a query that shares its first
        // label with an unresolved lookup continues it (postgres.ns.svc… →
        // postgres.).
        let search_unknown = context.conf.is_none();
        // A lookup that is over for the program (an answer its resolver
        // keeps to every question) ends when the process asks one of its
        // questions again on a fresh socket; a question not asked yet is
        // the next name of the search list. (glibc's last round, one query
        // per socket after timeouts, still belongs to a lookup that lacks
        // an answer.)
        let position = lookups.newest_continued(&keys, |index| {
            let lookup = lookups.get(index);
            let continues = lookup.name() == name
                || (search_unknown
                    && first_label(lookup.name()) == first_label(&name)
                    && !lookup.has_positive_response());
            if !continues || lookup.attempts.len() >= MAX_ATTEMPTS_PER_LOOKUP {
                return false;
            }
            // Starting over needs the question asked in this lookup before.
            if !lookups.may_have_asked(index, &keys) {
                return true;
            }
            let fresh_socket = || {
                lookup
                    .attempts
                    .iter()
                    .all(|a| a.socket_cookie != message.envelope.socket_cookie)
            };
            let asked_before = |same_server: bool| {
                lookup.attempts.iter().any(|a| {
                    a.question.same_as(&question)
                        && (!same_server || a.server == message.envelope.remote)
                })
            };
            // A resolver that asks again on its socket or at the next
            // server starts over on a fresh socket to a server asked the
            // question before, once each question has had a response
            // (glibc's last round after timeouts opens fresh sockets for
            // those still without).
            // A query with the id of one on the same socket is a copy
            // (musl's to its other server) or a retransmission.
            let copy = lookups.may_have_sent(index, &keys)
                && lookup
                    .attempts
                    .iter()
                    .any(|a| a.socket_cookie == message.envelope.socket_cookie && a.id == id);
            // Cheapest first: `is_over` is remembered, `copy` mostly ruled
            // out by the summary; a busy process passes many lookups here.
            let starts_over = (lookups.is_over(index) && !copy && asked_before(false))
                || (fresh_socket()
                    && lookups.retries_on_fresh_socket(index) == Some(false)
                    && asked_before(true)
                    && lookup.every_question_answered());
            !starts_over
        });
        // Made once `name`, which borrows the question, is done with.
        let attempt = |question| Attempt {
            tid: message.envelope.process.as_ref().map(|p| p.tid),
            sent_monotonic_ns: Some(now),
            sent_wall: Some(message.envelope.wall_time_ns.into()),
            ..Attempt::of_message(message, client, question, id)
        };
        match position {
            Some(index) => {
                // The shortest name tried is the one the process asked for.
                let shorter =
                    (name.len() < lookups.get(index).name().len()).then(|| name.into_owned());
                lookups.add_query(index, &keys, shorter, now, attempt(question));
            }
            None => {
                if lookups.len() >= MAX_LOOKUPS_PER_PROCESS {
                    self.evicted += 1;
                    self.open = self.open.saturating_sub(1);
                    if let Some(oldest) = lookups.pop_front() {
                        out.push(Correlated::Lookup(reported_early(oldest)));
                    }
                }
                self.open += 1;
                lookups.push_back(Lookup::new(Arc::clone(context), attempt(question)), &keys);
            }
        }
    }

    fn on_response(
        &mut self,
        message: &Message,
        client: Client,
        id: u16,
        shape: Shape,
        out: &mut Vec<Correlated>,
    ) {
        let question = message.dns.question.as_ref();
        let from = message.envelope.remote;
        let response = Response {
            monotonic_ns: message.envelope.monotonic_ns,
            wall_time_ns: message.envelope.wall_time_ns,
            from,
            shape,
            number: message.envelope.response_number,
            // Settled when the lookup is reported (`reads::settle`).
            read: match message.envelope.response_number {
                Some(_) => ReadState::Pending,
                None => ReadState::Unknown,
            },
        };
        let lookups = self.lookups.entry(client.id).or_default();
        let keys = Keys::new("", None, message.envelope.socket_cookie, id);
        let library = lookups.front().and_then(|l| l.context.library.clone());
        let library = library.as_ref();
        let waiting = |a: &Attempt| {
            a.socket_cookie == message.envelope.socket_cookie
                && a.sent_monotonic_ns.is_some()
                && a.response.is_none()
        };
        // Without a question, the id alone must do, for resolvers that
        // take such answers.
        let fits = |a: &Attempt| {
            a.id == id
                && match question {
                    Some(q) => a.question.same_as(q),
                    None => behaviour::takes_bare_answers(library),
                }
        };
        // The newest query that fits, from the server it went to: glibc
        // re-sends with the same id, and musl sends the same id from one
        // socket to every server at once. An unconnected socket may hear
        // anyone, and resolvers ignore answers from elsewhere.
        let Err(response) = give_newest(
            lookups,
            &keys,
            |a| waiting(a) && fits(a) && a.server == from,
            response,
        ) else {
            return;
        };
        if message.envelope.transport == Transport::Tcp
            && continues_transfer(lookups, message.envelope.socket_cookie, id, question)
        {
            return;
        }
        let open: Vec<&Attempt> = lookups
            .attempts_on_socket(&keys)
            .filter(|a| waiting(a))
            .collect();
        let source = open.iter().find(|a| fits(a));
        let mismatch = if open.is_empty() {
            Mismatch::Unsolicited
        } else if source.is_some() {
            Mismatch::Source
        } else if open.iter().any(|a| a.id == id && a.server == from) {
            Mismatch::Question
        } else if open.iter().any(|a| a.id == id) {
            Mismatch::Source
        } else {
            Mismatch::Id
        };
        // A response without a question is shown with the one it answers
        // where that is known.
        let shown = question
            .or(source.map(|a| &a.question))
            .cloned()
            .unwrap_or(Question {
                name: String::new(),
                qtype: 0,
            });
        out.push(stray(
            message,
            client,
            shown,
            id,
            response.clone(),
            mismatch,
        ));
        // musl checks the id alone and uses an answer to another question;
        // where the resolver is not known it may have. Either way its query
        // was answered, not timed out.
        if mismatch == Mismatch::Question
            && question.is_some()
            && behaviour::checks_question(library) != Some(true)
        {
            // Reported as mismatched already, whether or not it is taken.
            let _ = give_newest(
                lookups,
                &keys,
                |a| waiting(a) && a.id == id && a.server == from,
                response,
            );
        }
    }

    /// Decides what time alone decides, and reports lookups that settled.
    pub fn advance(&mut self, now: u64, out: &mut Vec<Correlated>) {
        self.servers.expire(now);
        for open in self.lookups.values_mut() {
            open.settle(
                now,
                |lookup| judge_by_time(lookup, now),
                |lookup| {
                    lookup.is_settled() && now.saturating_sub(lookup.last_activity_ns()) > SETTLE_NS
                },
                |lookup| out.push(Correlated::Lookup(lookup)),
            );
        }
        self.lookups.retain(|_, lookups| !lookups.is_empty());
        self.open = self.open_lookups();
    }

    /// Reports everything still open, as it stands (at exit).
    pub fn finish(&mut self, out: &mut Vec<Correlated>) {
        self.open = 0;
        let mut open: Vec<Box<Lookup>> = self
            .lookups
            .drain()
            .flat_map(|(_, l)| l.into_lookups())
            .collect();
        // In the order they began, whichever client they belong to.
        open.sort_by_key(|lookup| lookup.first_monotonic_ns());
        out.extend(
            open.into_iter()
                .map(|l| Correlated::Lookup(close_as_it_stands(l))),
        );
    }

    /// Lookups not yet reported.
    pub fn open_lookups(&self) -> usize {
        self.lookups.values().map(Open::len).sum()
    }

    fn evict_oldest_process(&mut self, out: &mut Vec<Correlated>) {
        let oldest = self
            .lookups
            .iter()
            .min_by_key(|(_, lookups)| lookups.iter().map(|l| l.last_monotonic_ns).max())
            .map(|(client, _)| *client);
        if let Some(lookups) = oldest.and_then(|client| self.lookups.remove(&client)) {
            self.evicted += lookups.len() as u64;
            self.open = self.open.saturating_sub(lookups.len());
            out.extend(
                lookups
                    .into_lookups()
                    .map(|l| Correlated::Lookup(reported_early(l))),
            );
        }
    }

    /// The total budget is spent: the oldest lookup of the process holding
    /// the most goes, so a flood from one process evicts its own.
    fn evict_from_largest(&mut self, out: &mut Vec<Correlated>) {
        let Some(lookups) = self.lookups.values_mut().max_by_key(|l| l.len()) else {
            return;
        };
        let Some(lookup) = lookups.pop_front() else {
            return;
        };
        self.evicted += 1;
        self.open = self.open.saturating_sub(1);
        out.push(Correlated::Lookup(reported_early(lookup)));
    }
}

/// What the correlator knows, besides the messages, when a question comes
/// again.
struct Known<'a> {
    library: Option<&'a Library>,
    /// The lookup had an answer with records, or the process had asked
    /// about another name since.
    answer_was_used: bool,
    /// The lookup was over for the program (`Lookup::is_over`).
    lookup_over: bool,
    /// Some answer of the lookup has a shape its resolver throws away, or
    /// may (the resolver not known).
    answer_thrown_away: bool,
    /// `Lookup::retries_on_fresh_socket`.
    fresh_socket_retries: Option<bool>,
}

/// What `judge_by_time` did, and until when it would decide nothing more
/// about the lookup unless the lookup changes (0: unknown).
pub(crate) struct Judged {
    pub decided: bool,
    pub quiet_until: u64,
}

/// The first time `now` at which `now - since > window` holds.
fn past(since: u64, window: u64) -> u64 {
    since.saturating_add(window).saturating_add(1)
}

/// Decides what time alone decides about `lookup`'s pending attempts.
fn judge_by_time(lookup: &mut Lookup, now: u64) -> Judged {
    let mut judged = Judged {
        decided: false,
        quiet_until: u64::MAX,
    };
    // Most open lookups of a busy process wait only to settle.
    if lookup.is_settled() {
        return judged;
    }
    let timeout = lookup.context.timeout_ns() + TIMEOUT_SLACK_NS;
    let rejected = rejected_shapes(lookup);
    let library = lookup.context.library.as_ref();
    let superseded: Vec<Option<u64>> = lookup
        .attempts
        .iter()
        .map(|a| superseded_by_copy(&lookup.attempts, a, library))
        .collect();
    for (attempt, superseded) in lookup.attempts.iter_mut().zip(superseded) {
        if attempt.outcome != Outcome::Pending {
            continue;
        }
        match (&attempt.response, attempt.sent_monotonic_ns) {
            (Some(response), _) if now.saturating_sub(response.monotonic_ns) > REJECT_WINDOW_NS => {
                attempt.outcome = match superseded {
                    Some(_) => Outcome::Superseded,
                    None => unrepeated_answer(attempt, &rejected),
                };
                judged.decided = true;
            }
            (None, Some(sent))
                if now.saturating_sub(sent) > timeout
                    || superseded.is_some_and(|at| now.saturating_sub(at) > REJECT_WINDOW_NS) =>
            {
                // Given up on when the copy's answer came.
                attempt.outcome = match superseded {
                    Some(_) => Outcome::Superseded,
                    None => Outcome::Timeout,
                };
                attempt.ended_monotonic_ns = Some(superseded.unwrap_or(now));
                judged.decided = true;
            }
            // Not yet: when time will first decide it.
            (Some(response), _) => {
                judged.quiet_until = judged
                    .quiet_until
                    .min(past(response.monotonic_ns, REJECT_WINDOW_NS));
            }
            (None, Some(sent)) => {
                let copy_answered = superseded.map_or(u64::MAX, |at| past(at, REJECT_WINDOW_NS));
                judged.quiet_until = judged
                    .quiet_until
                    .min(past(sent, timeout))
                    .min(copy_answered);
            }
            (None, None) => {}
        }
    }
    if judged.decided {
        // The attempts decided may change what the others wait for.
        judged.quiet_until = 0;
    }
    judged
}

/// Who sent a query, as far as telling calls of the resolver apart needs.
struct Sender {
    /// The sending thread, of a process whose resolver works in the
    /// thread that calls it. Over UDP the kernel tells the thread that
    /// sends; a TCP segment carries its socket's first sender, which for
    /// these resolvers is the thread that opened it for its lookup.
    thread: Option<u32>,
    /// The query's id, of such a process.
    id: Option<u16>,
    transport: Transport,
}

impl Sender {
    fn of(message: &Message, id: u16, library: Option<&Library>) -> Self {
        let tid = message.envelope.process.as_ref().map(|p| p.tid);
        let judged_by_id = behaviour::retries_with_the_same_id(library);
        Self {
            thread: tid.filter(|_| judged_by_id),
            id: judged_by_id.then_some(id),
            transport: message.envelope.transport,
        }
    }

    /// Whether `attempt` was sent by another call of the resolver than
    /// this query. glibc and musl retry only in the thread that called
    /// them, so a question from another thread (the threads of a server
    /// often look one name up at once) is never a retry that judges this
    /// thread's attempt. And they send a query again (to the next server,
    /// over TCP) with its own id, so a query with another id is another
    /// call for an attempt still waiting for its answer (a program that
    /// asks one name twice at once from one thread: c-ares in Node, a load
    /// generator), but for a switch from UDP to TCP, taken as the fallback
    /// whatever its id. Such queries still join one lookup: the C library
    /// mapped is not always the resolver used (Go built with cgo, dig),
    /// and lookups split by thread would misread those.
    fn is_another_call_than(&self, attempt: &Attempt) -> bool {
        let other_thread =
            self.thread.is_some() && attempt.tid.is_some() && attempt.tid != self.thread;
        // glibc and musl move to TCP after a truncated answer and re-send
        // with the same ids, so this matters only where the tracer missed
        // something: a fallback is never read as another call.
        let fallback = attempt.transport == Transport::Udp && self.transport == Transport::Tcp;
        let other_id =
            self.id.is_some_and(|id| id != attempt.id) && attempt.response.is_none() && !fallback;
        other_thread || other_id
    }
}

/// Whether a query of `question` (for `name`) from `sender` would change
/// `lookup`: an attempt of its question that it judges, or an answer to
/// another name that it moves on from. (Checked of the lookups the filters
/// pass over; those they let through are judged as they come.)
#[cfg(debug_assertions)]
fn concerns(lookup: &Lookup, sender: &Sender, question: &Question, name: &str) -> bool {
    lookup.attempts.iter().any(|a| {
        a.outcome == Outcome::Pending
            && !sender.is_another_call_than(a)
            && (a.question.same_as(question)
                || (a.response.is_some() && !a.moved_on && lookup.name() != name))
    })
}

/// The process asked `previous`'s question again, with `id`. What that
/// says about `previous` depends on whether it had an answer, how it asks
/// again, and which answers its resolver keeps.
fn judge_repeat(previous: &mut Attempt, repeat: &Message, id: u16, now: u64, known: &Known<'_>) {
    let same_socket = repeat.envelope.socket_cookie == previous.socket_cookie;
    let other_server = repeat.envelope.remote != previous.server;
    if same_socket && id == previous.id && other_server {
        // The same query to another server from the same socket: musl asks
        // every server at once, and again each retry. It still waits for
        // this one.
        return;
    }
    let Some(response) = &previous.response else {
        // It gave up waiting: a retransmission, the next server, or TCP;
        // or, sooner than any resolver times out, something else moved it
        // on (the other answer of its pair was truncated).
        let waited = previous
            .sent_monotonic_ns
            .map_or(u64::MAX, |sent| now.saturating_sub(sent));
        previous.outcome = if waited < SHORTEST_TIMEOUT_NS {
            Outcome::Superseded
        } else {
            Outcome::Timeout
        };
        previous.ended_monotonic_ns = Some(now);
        return;
    };
    if now.saturating_sub(response.monotonic_ns) > REJECT_WINDOW_NS {
        previous.outcome = Outcome::Answered;
        return;
    }
    let rejects = behaviour::rejects(known.library, &response.shape);
    let rejection = if repeat.envelope.transport != previous.transport {
        (repeat.envelope.transport == Transport::Tcp).then_some(Rejection::SwitchedToTcp)
    } else if known.lookup_over && rejects == Some(false) {
        // Its resolver keeps this answer and had one to every question:
        // the program is looking the name up again, on any server, and on
        // the same socket where its resolver keeps one open (c-ares).
        None
    } else if same_socket && rejects == Some(false) && !known.answer_thrown_away {
        // Its resolver keeps this answer, and none of the lookup's answers
        // is one it throws away: the same question again on that socket is
        // the program asking again (a load generator, a client that
        // pipelines), not a verdict on the answer. (glibc before 2.20 did
        // throw a good answer away, but only beside one it threw away.)
        None
    } else if same_socket {
        Some(Rejection::AskedAgain)
    } else if other_server {
        Some(Rejection::NextServer)
    } else {
        // A fresh socket to the same server: a resolver that opens one per
        // try (Go) if it throws this answer away; where the resolver is not
        // known but asks one question per socket as Go does, if the lookup
        // had no answer yet or this one has Go's lame shape. Others never
        // ask again that way: the program is looking up again.
        let rejected = known.fresh_socket_retries != Some(false)
            && rejects.unwrap_or_else(|| {
                !known.answer_was_used || behaviour::is_go_lame(&response.shape)
            });
        rejected.then_some(Rejection::AskedAgain)
    };
    previous.outcome = match rejection {
        Some(rejection) => Outcome::Rejected(rejection),
        None => Outcome::Answered,
    };
}

/// Gives `response` to the newest attempt that `fits`; hands it back when
/// none does. Only lookups that may have sent the response's (socket, id) are read:
/// `fits` asks for both.
fn give_newest(
    lookups: &mut Open,
    keys: &Keys,
    fits: impl Fn(&Attempt) -> bool,
    response: Response,
) -> Result<(), Response> {
    let Some((index, at)) = (0..lookups.len())
        .rev()
        .filter(|&index| lookups.may_have_sent(index, keys))
        .find_map(|index| Some((index, lookups.get(index).attempts.iter().rposition(&fits)?)))
    else {
        return Err(response);
    };
    lookups.receive(index, at, response);
    Ok(())
}

/// When a copy of `attempt` (the same query from the same socket to another
/// server, as musl sends) had an answer the resolver keeps, if that came
/// before `attempt` had one it keeps: musl takes the first and ignores the
/// rest.
fn superseded_by_copy(
    attempts: &[Attempt],
    attempt: &Attempt,
    library: Option<&Library>,
) -> Option<u64> {
    let kept = |response: &Response| behaviour::rejects(library, &response.shape) != Some(true);
    let own = attempt.response.as_ref().filter(|r| kept(r));
    attempts
        .iter()
        .filter(|copy| {
            copy.socket_cookie == attempt.socket_cookie
                && copy.id == attempt.id
                && copy.server != attempt.server
                && copy.question.same_as(&attempt.question)
        })
        .filter_map(|copy| copy.response.as_ref())
        .filter(|r| kept(r) && own.is_none_or(|own| r.monotonic_ns < own.monotonic_ns))
        .map(|r| r.monotonic_ns)
        .min()
}

/// A lookup reported before time could judge it (at exit, or evicted): a
/// response the process did not ask again after was used, or rejected if it
/// repeats one just thrown away; queries without one stay pending.
fn close_as_it_stands(mut lookup: Box<Lookup>) -> Box<Lookup> {
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

/// A lookup reported to make room: as it stands, and incomplete if a
/// query still waits, since its answer (or the repeat that would say what
/// became of it) will not be followed.
fn reported_early(lookup: Box<Lookup>) -> Box<Lookup> {
    let mut lookup = close_as_it_stands(lookup);
    if !lookup.is_settled() {
        lookup.mark_incomplete();
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
    question: Question,
    id: u16,
    response: Response,
    mismatch: Mismatch,
) -> Correlated {
    Correlated::Stray(Box::new(Attempt {
        ended_monotonic_ns: Some(response.monotonic_ns),
        // Reported as it arrives, before the process could read it.
        response: Some(Box::new(Response {
            read: ReadState::Unknown,
            ..response
        })),
        outcome: Outcome::Mismatched(mismatch),
        ..Attempt::of_message(message, client, question, id)
    }))
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

/// AXFR and IXFR: the query types a server answers with many messages.
const TRANSFER_QTYPES: [u16; 2] = [252, 251];

/// Whether a response is a zone transfer's next message (RFC 5936 answers
/// one query with a stream of them, all with its id), rather than one that
/// fits no query: the transfer's query on this socket was answered already,
/// or the message says it is a transfer (it repeats the question).
fn continues_transfer(
    lookups: &Open,
    socket_cookie: u64,
    id: u16,
    question: Option<&Question>,
) -> bool {
    question.is_some_and(|q| TRANSFER_QTYPES.contains(&q.qtype))
        || lookups
            .iter()
            .flat_map(|lookup| lookup.attempts.iter())
            .any(|a| {
                a.socket_cookie == socket_cookie
                    && a.id == id
                    && a.response.is_some()
                    && TRANSFER_QTYPES.contains(&a.question.qtype)
            })
}
