//! A process's open lookups, oldest first, each with a summary beside it.
//! A busy process has hundreds open, and every query or response concerns
//! one or two of them: the summaries let the correlator pass the others by
//! without reading their attempts. A summary only ever rules a lookup out;
//! whatever it lets through is judged on the lookup itself, as before.

use std::{
    cell::Cell,
    collections::VecDeque,
    hash::{BuildHasher, Hasher, RandomState},
    sync::LazyLock,
};

use smallvec::SmallVec;

use super::{
    Judged, MAX_LOOKUPS_PER_PROCESS,
    attempt::{Attempt, Outcome, Response},
    behaviour,
    lookup::Lookup,
};
use crate::{decode::Question, tally::Tally};

/// A lookup, and its summary: brought up to date each time it changes.
/// One allocation with the lookup's first attempt: an open lookup is
/// nearly always a single query, and each allocation costs 16 bytes more.
struct Entry {
    lookup: Lookup,
    summary: Summary,
}

#[derive(Default)]
pub struct Open {
    /// Boxed: a process's lookups come and go by the hundred, and a
    /// deque's room for them (up to half as many again) then costs a
    /// pointer each, not a lookup, its first attempt and its summary.
    entries: VecDeque<Box<Entry>>,
    /// What every query reads of every open lookup, copied out of the
    /// summaries and packed, so that a pass over hundreds stays in cache:
    /// what rules a lookup out of being continued, and
    /// `Summary::repeat_filter`, and the same for a query that may be a
    /// retry (`Summary::repeat_filter_with_retries`).
    scans: VecDeque<Scan>,
    repeats: VecDeque<u64>,
    retry_repeats: VecDeque<u64>,
    /// How many lookups have an attempt with a dropped packet: with none,
    /// no message needs looking for one.
    with_drops: usize,
    index: Index,
}

/// Counts over the open lookups that tell, without a pass over them, that
/// no lookup can continue a query: a busy client's hundreds are nearly
/// all over, and each query of a name it asked before starts a new one.
#[derive(Default, PartialEq, Debug)]
struct Index {
    /// Lookups by the first label of their name (`(label, 0)`), and by
    /// first label and each question they are sealed for (`Scan::sealed`).
    labels: Tally<(u64, u64), foldhash::fast::RandomState>,
    /// Attempts by `query_key`: only a query with the socket and id of one
    /// of them can be a copy, which even a sealed lookup takes.
    queries: Tally<u64, foldhash::fast::RandomState>,
    /// The attempts that wait for their answer, of lookups whose resolver
    /// sends a query again with its own id, by `asked_key` (question and
    /// id): only a query with the question and id of one of them can be its
    /// retry (`Summary::repeat_filter`).
    waiting: Tally<u64, foldhash::fast::RandomState>,
}

impl Index {
    fn add(&mut self, scan: &Scan, attempts: &[Attempt]) {
        for key in scan.label_keys() {
            self.labels.add(key);
        }
        self.add_queries(attempts);
    }

    fn add_queries(&mut self, attempts: &[Attempt]) {
        for attempt in attempts {
            (self.queries).add(query_key(attempt.socket_cookie, attempt.id));
        }
    }

    fn remove(&mut self, scan: &Scan, attempts: &[Attempt]) {
        for key in scan.label_keys() {
            self.labels.take(&key);
        }
        for attempt in attempts {
            (self.queries).take(&query_key(attempt.socket_cookie, attempt.id));
        }
    }

    /// Counts the attempts of `lookup` whose bits `started` sets as waiting,
    /// and those whose bits `ended` sets no more (`Summary::waiting`).
    fn wait(&mut self, lookup: &Lookup, summary: &Summary, started: u64, ended: u64) {
        for (mut mask, add) in [(started, true), (ended, false)] {
            while mask != 0 {
                let at = mask.trailing_zeros() as usize;
                mask &= mask - 1;
                let key = asked_key(summary.questions[at], lookup.attempts[at].id);
                match add {
                    true => self.waiting.add(key),
                    false => self.waiting.take(&key),
                }
            }
        }
    }

    /// Whether every lookup whose name shares the query's first label is
    /// sealed for its question, and none sent a query with its socket and
    /// id: `Open::newest_continued` would pass over them all.
    fn none_continued(&self, keys: &Keys) -> bool {
        let with_label = self.labels.count(&(keys.label, 0));
        with_label == 0
            || (keys.identity != 0
                && with_label == self.labels.count(&(keys.label, keys.identity))
                && !self.queries.contains(&keys.query_key))
    }
}

/// A lookup as `Open::newest_continued` passes over it.
#[derive(Clone, Copy)]
struct Scan {
    label: u64,
    queries: u64,
    /// While the lookup is over, its questions by identity (0: none), if
    /// it asked at most four: any of them asked again, by a query that is
    /// not a copy of one of its own, starts a new lookup. A busy process
    /// has hundreds of lookups over, all with the same few names.
    sealed: [u64; 4],
}

impl Scan {
    /// Its keys in `Index::labels`.
    fn label_keys(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let sealed = self.sealed.iter().filter(|&&identity| identity != 0);
        std::iter::once((self.label, 0)).chain(sealed.map(|&identity| (self.label, identity)))
    }
}

/// Sets are 64-bit Bloom filters: a clear bit proves something absent.
struct Summary {
    /// The first label of the lookup's name: a query continues only a
    /// lookup whose name shares it; and the name's length when hashed (a
    /// lookup's name only ever changes to a shorter one).
    label: u64,
    label_of_len: u32,
    /// Each attempt's question by `question_identity`, hashed once: an
    /// attempt's question, socket and id never change, and attempts are
    /// only ever added, so a busy lookup's 32 need no hashing again at
    /// each change.
    /// Inline up to two: most lookups make one or two attempts, and a Vec
    /// was an allocation per lookup.
    questions: SmallVec<[u64; 2]>,
    /// The questions asked, those of attempts still pending, and those of
    /// attempts pending with a response.
    asked: u64,
    pending: u64,
    pending_answered: u64,
    /// The lookup's resolver sends a query again with its own id
    /// (`behaviour::retries_with_the_same_id`).
    retries_by_id: bool,
    /// Of such a lookup (of at most 64 attempts), bit `i` set while attempt
    /// `i` is pending without a response (`Index::waiting`).
    waiting: u64,
    /// The sockets, and the (socket, id) pairs, its queries left from.
    sockets: u64,
    queries: u64,
    /// Whether some attempt is pending with a response, not moved on from.
    unmoved: bool,
    /// Whether some attempt has a packet the kernel dropped.
    dropped: bool,
    /// `Lookup::is_over`, worked out again only when a change may have
    /// altered it (`refresh`).
    over: bool,
    /// Attempts with a response, and those rejected, as of the last
    /// change: what decides whether `over` can have changed. (Mismatched
    /// responses are strays, never in an open lookup.)
    answered: u16,
    rejected: u16,
    /// `Lookup::retries_on_fresh_socket`, worked out when first asked
    /// after a change.
    fresh_socket_retries: Cell<Option<Option<bool>>>,
    /// Until when judging the lookup by time decides nothing (0: not
    /// known since it last changed).
    quiet_until: u64,
}

impl Summary {
    /// `first_identity`: its first attempt's question, where the caller
    /// has hashed it already.
    fn of(lookup: &Lookup, first_identity: Option<u64>) -> Self {
        let mut summary = Self {
            label: 0,
            label_of_len: u32::MAX,
            questions: SmallVec::new(),
            asked: 0,
            pending: 0,
            pending_answered: 0,
            retries_by_id: behaviour::retries_with_the_same_id(lookup.context.library.as_ref()),
            waiting: 0,
            sockets: 0,
            queries: 0,
            unmoved: false,
            dropped: false,
            over: false,
            answered: 0,
            rejected: 0,
            fresh_socket_retries: Cell::new(None),
            quiet_until: 0,
        };
        if let Some(identity) = first_identity {
            summary.add_attempt(&lookup.attempts[0], identity);
        }
        summary.refresh(lookup);
        summary.over = summary.is_over(lookup);
        summary
    }

    /// Identities compare in a step, names without case byte by byte.
    fn is_over(&self, lookup: &Lookup) -> bool {
        lookup.is_over(|a, b| self.questions[a] == self.questions[b])
    }

    /// Brings the summary up to date after `lookup` changed.
    fn refresh(&mut self, lookup: &Lookup) {
        let new_question = self.add_attempts(lookup);
        self.pending = 0;
        self.pending_answered = 0;
        self.waiting = 0;
        let by_id = self.retries_by_id && lookup.attempts.len() <= 64;
        self.unmoved = false;
        self.dropped = false;
        let (mut answered, mut rejected) = (0, 0);
        for (at, (attempt, &identity)) in lookup.attempts.iter().zip(&self.questions).enumerate() {
            self.dropped |= attempt.drop.is_some();
            answered += u16::from(attempt.response.is_some());
            rejected += u16::from(matches!(attempt.outcome, Outcome::Rejected(_)));
            if attempt.outcome == Outcome::Pending {
                self.pending |= bit(identity);
                if attempt.response.is_some() {
                    self.pending_answered |= bit(identity);
                    self.unmoved |= !attempt.moved_on;
                } else if by_id {
                    self.waiting |= 1 << at;
                }
            }
        }
        self.judge_over(lookup, answered, rejected, new_question);
    }

    /// `refresh` after the only change was a query added (and the name
    /// shortened), whose question is `identity`: a busy lookup's 32
    /// attempts need no new count.
    fn refresh_after_query(&mut self, lookup: &Lookup, identity: u64) {
        let at = self.questions.len();
        if lookup.attempts.len() != at + 1 || at >= 64 {
            return self.refresh(lookup);
        }
        self.relabel(lookup);
        let new_question = self.add_attempt(&lookup.attempts[at], identity);
        // A query is added pending, without a response or a drop.
        self.pending |= bit(identity);
        if self.retries_by_id {
            self.waiting |= 1 << at;
        }
        self.judge_over(lookup, self.answered, self.rejected, new_question);
    }

    /// `refresh` after the only change was a response given to attempt
    /// `at`, which had none (`Attempt::receive`).
    fn refresh_after_response(&mut self, lookup: &Lookup, at: usize) {
        if at >= 64 {
            return self.refresh(lookup);
        }
        let attempt = &lookup.attempts[at];
        if attempt.outcome == Outcome::Pending {
            self.pending_answered |= bit(self.questions[at]);
            self.unmoved |= !attempt.moved_on;
            self.waiting &= !(1 << at);
        }
        self.judge_over(lookup, self.answered + 1, self.rejected, false);
    }

    /// Hashes the questions of attempts added since the last refresh, and
    /// tells whether one of them is a question not asked before.
    fn add_attempts(&mut self, lookup: &Lookup) -> bool {
        self.relabel(lookup);
        let mut new_question = false;
        for attempt in &lookup.attempts[self.questions.len()..] {
            new_question |= self.add_attempt(attempt, question_identity(&attempt.question));
        }
        new_question
    }

    fn relabel(&mut self, lookup: &Lookup) {
        let len = u32::try_from(lookup.name().len()).unwrap_or(u32::MAX);
        if len != self.label_of_len {
            self.label = label_key(lookup.name());
            self.label_of_len = len;
        }
    }

    /// Adds an attempt whose question is `identity`; tells whether that
    /// is a question not asked before.
    fn add_attempt(&mut self, attempt: &Attempt, identity: u64) -> bool {
        let new_question = !self.questions.contains(&identity);
        self.questions.push(identity);
        self.asked |= bit(identity);
        self.sockets |= bit(attempt.socket_cookie);
        self.queries |= bit(query_key(attempt.socket_cookie, attempt.id));
        new_question
    }

    /// The distinct questions, if there are at most four (0: none).
    fn distinct_questions(&self) -> Option<[u64; 4]> {
        let mut distinct = [0; 4];
        let mut len = 0;
        for &identity in &self.questions {
            if !distinct[..len].contains(&identity) {
                *distinct.get_mut(len)? = identity;
                len += 1;
            }
        }
        Some(distinct)
    }

    /// What `Open::changed` compares the refreshed summary with, taken
    /// after the lookup changed and before the summary follows it.
    fn before_refresh(&self) -> BeforeRefresh {
        BeforeRefresh {
            attempts: self.questions.len(),
            waiting: self.waiting,
            dropped: self.dropped,
        }
    }

    /// Works `over` out again where the change may have altered it, with
    /// the counts of attempts answered and rejected now.
    fn judge_over(&mut self, lookup: &Lookup, answered: u16, rejected: u16, new_question: bool) {
        // A lookup that was over stays over unless an answer was rejected
        // or a question added; one that was not becomes over only with a
        // new response. Most changes of a busy lookup (32 attempts) are
        // neither. That holds as responses are never taken back and a
        // rejected attempt stays so, but where the kernel dropped a packet:
        // drops.rs takes back a response the process never had and judges
        // its attempt again.
        let may_have_changed = self.dropped
            || match self.over {
                true => rejected > self.rejected || new_question,
                false => answered > self.answered,
            };
        if may_have_changed {
            self.over = self.is_over(lookup);
        }
        (self.answered, self.rejected) = (answered, rejected);
        self.fresh_socket_retries.set(None);
        self.quiet_until = 0;
    }

    /// Whether every filter is what `of` would make of the lookup now.
    #[cfg(debug_assertions)]
    fn is_true_of(&self, lookup: &Lookup) -> bool {
        let fresh = Self::of(lookup, None);
        (self.label, &self.questions, self.asked, self.pending)
            == (fresh.label, &fresh.questions, fresh.asked, fresh.pending)
            && (self.pending_answered, self.waiting) == (fresh.pending_answered, fresh.waiting)
            && (self.sockets, self.queries, self.unmoved, self.dropped)
                == (fresh.sockets, fresh.queries, fresh.unmoved, fresh.dropped)
            && self.over == fresh.over
            && (self.answered, self.rejected) == (fresh.answered, fresh.rejected)
            && self.over
                == lookup.is_over(|a, b| {
                    lookup.attempts[a]
                        .question
                        .same_as(&lookup.attempts[b].question)
                })
    }

    fn scan(&self) -> Scan {
        Scan {
            label: self.label,
            queries: self.queries,
            sealed: match self.over {
                true => self.distinct_questions().unwrap_or_default(),
                false => [0; 4],
            },
        }
    }

    /// The questions a repeat of which concerns the lookup: those pending,
    /// or any while an answer waits to be moved on from. Of a resolver
    /// that retries with the query's id, an attempt still waiting for its
    /// answer concerns only a query with its id (which `Index::waiting`
    /// tells) or over TCP: left out here.
    fn repeat_filter(&self) -> u64 {
        match (self.unmoved, self.waiting) {
            (true, _) => u64::MAX,
            (false, 0) => self.pending,
            // Every attempt pending without a response is in `waiting`.
            (false, _) => self.pending_answered,
        }
    }

    /// `repeat_filter` for a query that may be a retry of any attempt.
    fn repeat_filter_with_retries(&self) -> u64 {
        if self.unmoved { u64::MAX } else { self.pending }
    }
}

/// Of a summary before its refresh: the attempts it had summed up (those
/// after are new to the index), the attempts it had waiting, and whether
/// it counted among the lookups with drops.
struct BeforeRefresh {
    attempts: usize,
    waiting: u64,
    dropped: bool,
}

/// What a message is looked up by, hashed once per message.
pub struct Keys {
    label: u64,
    question: u64,
    identity: u64,
    socket: u64,
    query: u64,
    query_key: u64,
    asked_key: u64,
}

impl Keys {
    pub fn new(name: &str, question: Option<&Question>, socket_cookie: u64, id: u16) -> Self {
        let identity = question.map(question_identity);
        let query_key = query_key(socket_cookie, id);
        Self {
            label: label_key(name),
            question: identity.map_or(0, bit),
            identity: identity.unwrap_or(0),
            socket: bit(socket_cookie),
            query: bit(query_key),
            query_key,
            asked_key: identity.map_or(0, |identity| asked_key(identity, id)),
        }
    }
}

impl Open {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn front(&self) -> Option<&Lookup> {
        self.entries.front().map(|entry| &entry.lookup)
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Lookup> {
        self.entries.iter().map(|entry| &entry.lookup)
    }

    pub fn get(&self, index: usize) -> &Lookup {
        &self.entries[index].lookup
    }

    /// Opens `lookup`, begun by the query whose keys are `keys`: its
    /// question is hashed once, for both.
    pub fn push_back(&mut self, lookup: Lookup, keys: &Keys) {
        let identity = (keys.identity != 0).then_some(keys.identity);
        let summary = Summary::of(&lookup, identity);
        self.append(Box::new(Entry { lookup, summary }));
    }

    /// Puts `entry` last, with its filters and its keys in the index.
    fn append(&mut self, entry: Box<Entry>) {
        let summary = &entry.summary;
        self.with_drops += usize::from(summary.dropped);
        let scan = summary.scan();
        self.index.add(&scan, &entry.lookup.attempts);
        (self.index).wait(&entry.lookup, summary, summary.waiting, 0);
        push_growing_by_half(&mut self.scans, scan);
        push_growing_by_half(&mut self.repeats, summary.repeat_filter());
        push_growing_by_half(
            &mut self.retry_repeats,
            summary.repeat_filter_with_retries(),
        );
        push_growing_by_half(&mut self.entries, entry);
    }

    pub fn pop_front(&mut self) -> Option<Box<Lookup>> {
        let Entry { lookup, summary } = *self.entries.pop_front()?;
        self.with_drops -= usize::from(summary.dropped);
        let scan = self.scans.pop_front()?;
        self.repeats.pop_front();
        self.retry_repeats.pop_front();
        self.index.remove(&scan, &lookup.attempts);
        (self.index).wait(&lookup, &summary, 0, summary.waiting);
        Some(Box::new(lookup))
    }

    /// Changes the lookup at `index`, and its summary with it.
    pub fn change<R>(&mut self, index: usize, change: impl FnOnce(&mut Lookup) -> R) -> R {
        let Entry { lookup, summary } = &mut *self.entries[index];
        let result = change(lookup);
        let before = summary.before_refresh();
        summary.refresh(lookup);
        self.changed(index, before);
        result
    }

    /// Adds `attempt` to the lookup at `index`, sent at `now`, and names
    /// the lookup `shorter` if given; `keys` are its query's.
    pub fn add_query(
        &mut self,
        index: usize,
        keys: &Keys,
        shorter: Option<String>,
        now: u64,
        attempt: Attempt,
    ) {
        let Entry { lookup, summary } = &mut *self.entries[index];
        lookup.last_monotonic_ns = now;
        lookup.attempts.push(attempt);
        if let Some(name) = shorter {
            lookup.rename(&name);
        }
        let before = summary.before_refresh();
        match keys.identity {
            0 => summary.refresh(lookup),
            identity => summary.refresh_after_query(lookup, identity),
        }
        self.changed(index, before);
    }

    /// Gives attempt `at` of the lookup at `index` its response.
    pub fn receive(&mut self, index: usize, at: usize, response: Response) {
        let Entry { lookup, summary } = &mut *self.entries[index];
        let first = lookup.attempts[at].response.is_none();
        lookup.attempts[at].receive(response);
        let before = summary.before_refresh();
        match first {
            true => summary.refresh_after_response(lookup, at),
            false => summary.refresh(lookup),
        }
        self.changed(index, before);
    }

    /// Brings the filters and the index up to date with the summary at
    /// `index`, refreshed since `before`.
    fn changed(&mut self, index: usize, before: BeforeRefresh) {
        let BeforeRefresh {
            attempts: added,
            waiting,
            dropped,
        } = before;
        let Entry { lookup, summary } = &*self.entries[index];
        // Attempts are only ever added, their socket and id never change.
        let (old, new) = (self.scans[index], summary.scan());
        if (old.label, old.sealed) != (new.label, new.sealed) {
            self.index.remove(&old, &[]);
            self.index.add(&new, &[]);
        }
        self.index.add_queries(&lookup.attempts[added..]);
        let (started, ended) = (summary.waiting & !waiting, waiting & !summary.waiting);
        self.index.wait(lookup, summary, started, ended);
        #[cfg(debug_assertions)]
        debug_assert!(
            summary.is_true_of(lookup),
            "a summary fell behind its lookup"
        );
        self.with_drops = self.with_drops - usize::from(dropped) + usize::from(summary.dropped);
        self.scans[index] = new;
        self.repeats[index] = summary.repeat_filter();
        self.retry_repeats[index] = summary.repeat_filter_with_retries();
    }

    /// Judges every lookup by time at `now` with `judge`, oldest first
    /// (but for those it would leave alone until later), then takes out
    /// those `settled` says are done, in order.
    pub fn settle(
        &mut self,
        now: u64,
        mut judge: impl FnMut(&mut Lookup) -> Judged,
        settled: impl Fn(&Lookup) -> bool,
        mut out: impl FnMut(Box<Lookup>),
    ) {
        // Rebuilt, not cleared: a burst's room is not kept.
        let entries = std::mem::take(&mut self.entries);
        self.scans = VecDeque::new();
        self.repeats = VecDeque::new();
        self.retry_repeats = VecDeque::new();
        self.with_drops = 0;
        self.index = Index::default();
        for mut entry in entries {
            let Entry { lookup, summary } = &mut *entry;
            if now >= summary.quiet_until {
                let judged = judge(lookup);
                if judged.decided {
                    summary.refresh(lookup);
                }
                summary.quiet_until = judged.quiet_until;
            } else {
                // What is left alone would not have been decided.
                #[cfg(debug_assertions)]
                debug_assert!(
                    !judge(&mut lookup.clone()).decided,
                    "a lookup left alone until {} was decided at {now}",
                    summary.quiet_until
                );
            }
            if settled(lookup) {
                out(Box::new(entry.lookup));
                continue;
            }
            #[cfg(debug_assertions)]
            debug_assert!(
                summary.is_true_of(lookup),
                "a summary fell behind its lookup"
            );
            self.append(entry);
        }
    }

    /// Whether some attempt has a packet the kernel dropped.
    pub fn has_drops(&self) -> bool {
        self.with_drops > 0
    }

    pub fn into_lookups(self) -> impl Iterator<Item = Box<Lookup>> {
        self.entries.into_iter().map(|entry| Box::new(entry.lookup))
    }

    /// `Lookup::is_over` of the lookup at `index`.
    pub fn is_over(&self, index: usize) -> bool {
        self.entries[index].summary.over
    }

    /// `Lookup::retries_on_fresh_socket` of the lookup at `index`.
    pub fn retries_on_fresh_socket(&self, index: usize) -> Option<bool> {
        let cached = &self.entries[index].summary.fresh_socket_retries;
        match cached.get() {
            Some(retries) => retries,
            None => {
                let retries = self.entries[index].lookup.retries_on_fresh_socket();
                cached.set(Some(retries));
                retries
            }
        }
    }

    /// The newest lookup that `continues` a query named as `keys` says,
    /// of those whose name shares its first label (no other can), and
    /// that the query would not start over from: `continues` must hold
    /// that a lookup over starts over at a query (not a copy of one of its
    /// own) of a question it asked.
    pub fn newest_continued(
        &self,
        keys: &Keys,
        continues: impl FnMut(usize) -> bool,
    ) -> Option<usize> {
        if self.index.none_continued(keys) {
            #[cfg(debug_assertions)]
            {
                let mut rebuilt = Index::default();
                for (scan, entry) in self.scans.iter().zip(&self.entries) {
                    rebuilt.add(scan, &entry.lookup.attempts);
                    rebuilt.wait(&entry.lookup, &entry.summary, entry.summary.waiting, 0);
                }
                debug_assert_eq!(self.index, rebuilt, "the index fell behind the lookups");
            }
            #[cfg(debug_assertions)]
            debug_assert!(
                self.scan_continued(keys, continues).is_none(),
                "the index passed over a lookup that would have been continued"
            );
            return None;
        }
        self.scan_continued(keys, continues)
    }

    /// `newest_continued`, by a pass over the lookups.
    fn scan_continued(
        &self,
        keys: &Keys,
        mut continues: impl FnMut(usize) -> bool,
    ) -> Option<usize> {
        for (index, scan) in self.scans.iter().enumerate().rev() {
            if scan.label != keys.label {
                continue;
            }
            if scan.sealed.contains(&keys.identity) && scan.queries & keys.query == 0 {
                #[cfg(debug_assertions)]
                debug_assert!(
                    !continues(index),
                    "a lookup ruled out would have been continued"
                );
                continue;
            }
            if continues(index) {
                return Some(index);
            }
        }
        None
    }

    /// Whether a query may be a retry of an attempt that waits for its
    /// answer, of a resolver that retries with the query's id: one with
    /// the question and id of such an attempt, or over TCP.
    pub fn may_be_a_retry(&self, keys: &Keys, over_tcp: bool) -> bool {
        over_tcp || self.index.waiting.contains(&keys.asked_key)
    }

    /// The first lookup from `from` on that a repeat of the query's
    /// question may concern: one with an attempt pending with that
    /// question, or with a response that a query about another name would
    /// move on from. `retry`: `may_be_a_retry`.
    pub fn next_maybe_repeated(&self, from: usize, keys: &Keys, retry: bool) -> Option<usize> {
        let filters = match retry {
            true => &self.retry_repeats,
            false => &self.repeats,
        };
        first_overlapping(filters, from, keys.question)
    }

    /// Whether the lookup at `index` may have asked the query's question.
    pub fn may_have_asked(&self, index: usize, keys: &Keys) -> bool {
        self.entries[index].summary.asked & keys.question != 0
    }

    /// Whether the lookup at `index` may have sent a query from the
    /// message's socket, with its id.
    pub fn may_have_sent(&self, index: usize, keys: &Keys) -> bool {
        self.entries[index].summary.queries & keys.query != 0
    }

    /// The place (lookup, attempt) of the newest attempt that `fits`, of
    /// the lookups `may` lets through.
    pub fn newest(
        &self,
        may: impl Fn(usize) -> bool,
        fits: impl Fn(&Attempt) -> bool,
    ) -> Option<(usize, usize)> {
        (0..self.len())
            .rev()
            .filter(|&index| may(index))
            .find_map(|index| {
                Some((
                    index,
                    self.entries[index]
                        .lookup
                        .attempts
                        .iter()
                        .rposition(&fits)?,
                ))
            })
    }

    /// Whether the lookup at `index` may have sent from the message's
    /// socket.
    fn may_use_socket(&self, index: usize, keys: &Keys) -> bool {
        self.entries[index].summary.sockets & keys.socket != 0
    }

    /// The attempts of lookups that may have used the message's socket,
    /// oldest first.
    pub fn attempts_on_socket<'a>(&'a self, keys: &'a Keys) -> impl Iterator<Item = &'a Attempt> {
        (0..self.len())
            .filter(|&index| self.may_use_socket(index, keys))
            .flat_map(|index| self.entries[index].lookup.attempts.iter())
    }
}

/// Pushes onto one of a process's deques, whose room grows by half (up
/// to the cap of a process's lookups), not double: past a power of two,
/// doubling left up to half of every deque of a busy process unused.
fn push_growing_by_half<T>(deque: &mut VecDeque<T>, value: T) {
    let len = deque.len();
    if len == deque.capacity() {
        let room = (len + len / 2).clamp(4, MAX_LOOKUPS_PER_PROCESS.max(len + 1));
        deque.reserve_exact(room - len);
    }
    deque.push_back(value);
}

/// The first of `filters` from `from` on that shares a bit with `mask`.
/// Every query passes over all of a busy process's hundreds, and nearly
/// all fail: eight at a time, with no branch among them.
fn first_overlapping(filters: &VecDeque<u64>, from: usize, mask: u64) -> Option<usize> {
    let in_slice = |filters: &[u64], from: usize| {
        let filters = filters.get(from..)?;
        let (chunks, rest) = filters.as_chunks::<8>();
        let hit = |filter: &u64| filter & mask != 0;
        let chunk = (chunks.iter())
            .position(|chunk| chunk.iter().fold(0, |any, filter| any | filter) & mask != 0);
        match chunk {
            Some(chunk) => (chunks[chunk].iter().position(hit)).map(|at| from + chunk * 8 + at),
            None => (rest.iter().position(hit)).map(|at| from + chunks.len() * 8 + at),
        }
    };
    let (front, back) = filters.as_slices();
    match from < front.len() {
        true => in_slice(front, from).or_else(|| in_slice(back, 0).map(|at| front.len() + at)),
        false => in_slice(back, from - front.len()).map(|at| front.len() + at),
    }
}

/// One bit of 64, picked by the top bits of a multiplicative hash.
fn bit(key: u64) -> u64 {
    1 << (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58)
}

/// A word at a time, each byte with its 0x20 bit set: a letter's cases
/// hash alike, as names compare without case (other bytes that differ in
/// that bit alone collide, which a Bloom filter allows).
fn fold(bytes: &[u8]) -> u64 {
    bytes.chunks(8).fold(bytes.len() as u64, |hash, chunk| {
        let mut word = [0x20; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        let word = u64::from_le_bytes(word) | 0x2020_2020_2020_2020;
        (hash.rotate_left(5) ^ word).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    })
}

fn label_key(name: &str) -> u64 {
    fold(super::first_label(name).as_bytes())
}

/// Which question it is, names without case, by a hash keyed afresh at
/// each start so that no tenant can make two questions collide. Never 0.
fn question_identity(question: &Question) -> u64 {
    static KEY: LazyLock<RandomState> = LazyLock::new(RandomState::new);
    let mut hasher = KEY.build_hasher();
    let mut lower = [0; 64];
    for chunk in question.name.as_bytes().chunks(lower.len()) {
        let lower = &mut lower[..chunk.len()];
        lower.copy_from_slice(chunk);
        lower.make_ascii_lowercase();
        hasher.write(lower);
    }
    hasher.write_u16(question.qtype);
    hasher.finish().max(1)
}

fn query_key(socket_cookie: u64, id: u16) -> u64 {
    socket_cookie.rotate_left(16) ^ u64::from(id)
}

/// A question (`question_identity`) and an id.
fn asked_key(identity: u64, id: u16) -> u64 {
    identity.rotate_left(16) ^ u64::from(id)
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    /// The chunked scan finds what a plain one finds, from every start,
    /// in a ring wrapped at every place.
    #[test]
    fn the_first_overlapping_filter_is_found_wherever_the_ring_wraps() {
        let mut ring: VecDeque<u64> = (0..37u64)
            .map(|n| if n % 5 == 3 { 1 << (n % 3) } else { 0 })
            .collect();
        let mut wrapped = 0;
        for _ in 0..ring.len() {
            // Its head moves one place on; its end wraps to the start.
            let first = ring.pop_front().unwrap();
            ring.push_back(first);
            wrapped += usize::from(!ring.as_slices().1.is_empty());
            let filters: Vec<u64> = ring.iter().copied().collect();
            for mask in [0, 1, 2, 4, 6, u64::MAX] {
                for from in 0..=filters.len() + 1 {
                    let plain = (from..filters.len()).find(|&at| filters[at] & mask != 0);
                    assert_eq!(
                        super::first_overlapping(&ring, from, mask),
                        plain,
                        "{mask} {from} {filters:?}"
                    );
                }
            }
        }
        assert!(wrapped > 30, "the ring wrapped {wrapped} times");
    }

    /// What the bench's memory budget counts on (docs/benchmarks.md): an
    /// open lookup with its first attempt and summary in one allocation of
    /// 392 bytes.
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn an_open_lookup_is_one_allocation_of_392_bytes() {
        assert_eq!(std::mem::size_of::<super::Entry>(), 392);
    }

    /// Opens a lookup of one pending query, sent at `at`, as `on_query`
    /// opens one.
    fn open_pending(open: &mut super::Open, client: &crate::message::Client, at: u64) {
        use super::super::{
            attempt::Outcome,
            tests::{attempt, lookup},
        };
        let lookup = lookup(
            "db.test",
            vec![attempt(client, 1, 1, Outcome::Pending, at, None)],
            at,
        );
        let first = &lookup.attempts[0];
        let keys = super::Keys::new(
            lookup.name(),
            Some(&first.question),
            first.socket_cookie,
            first.id,
        );
        open.push_back(lookup, &keys);
    }

    /// A process's deques grow by half: 262 lookups open (as the bench's
    /// processes hold at its memory peak) take room for 316, not 512, and
    /// no deque takes more than the cap of a process's lookups.
    #[test]
    fn room_for_lookups_grows_by_half_up_to_the_cap() {
        use super::super::{MAX_LOOKUPS_PER_PROCESS, tests::client};
        let client = client(7, "busy");
        let mut open = super::Open::default();
        let rooms = |open: &super::Open| {
            [
                open.entries.capacity(),
                open.scans.capacity(),
                open.repeats.capacity(),
                open.retry_repeats.capacity(),
            ]
        };
        for at in 0..MAX_LOOKUPS_PER_PROCESS as u64 {
            open_pending(&mut open, &client, at);
            if open.len() == 262 {
                assert_eq!(rooms(&open), [316; 4]);
            }
        }
        assert_eq!(rooms(&open), [MAX_LOOKUPS_PER_PROCESS; 4]);
    }

    /// Once a burst of lookups has settled, what is left takes room for
    /// what is left, not for the burst.
    #[test]
    fn a_burst_settled_leaves_no_room_behind() {
        use super::super::{Judged, tests::client};
        let client = client(7, "burst");
        let mut open = super::Open::default();
        for at in 0..512 {
            open_pending(&mut open, &client, at);
        }
        let mut settled = Vec::new();
        let judge = |_: &mut _| Judged {
            decided: false,
            quiet_until: u64::MAX,
        };
        let all_but_the_last = |lookup: &super::Lookup| lookup.first_monotonic_ns() < 511;
        open.settle(0, judge, all_but_the_last, |lookup| settled.push(lookup));
        assert_eq!((settled.len(), open.len()), (511, 1));
        assert!(settled.iter().map(|l| l.first_monotonic_ns()).eq(0..511));
        let room = (open.entries.capacity(), open.scans.capacity());
        assert!(
            room.0 < 64
                && room.1 < 64
                && open.repeats.capacity() < 64
                && open.retry_repeats.capacity() < 64,
            "{room:?}"
        );
    }
}
