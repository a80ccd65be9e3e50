//! The chain of attempts one process makes to resolve one name: retries,
//! the next server, the A/AAAA pair, the TCP fallback, the search list.

use std::{fmt, sync::Arc};

use smallvec::SmallVec;

use super::{
    attempt::{Attempt, Outcome, Shape},
    behaviour,
};
use crate::{
    message::{Client, Pod},
    resolver::ResolverContext,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LookupOutcome {
    Resolved,
    NxDomain,
    NoData,
    Failed,
    /// Some of its messages may have been lost (a full ring buffer, or
    /// correlation paused while the agent was behind): nothing is judged.
    Incomplete,
}

impl LookupOutcome {
    pub fn name(self) -> &'static str {
        match self {
            Self::Resolved => "resolved",
            Self::NxDomain => "nxdomain",
            Self::NoData => "nodata",
            Self::Failed => "failed",
            Self::Incomplete => "incomplete",
        }
    }
}

/// A lookup's name: where it begins one of its queries' names (nearly
/// always, as the name as asked is their lowercase start), that query and
/// the name's length instead of a copy of its own.
#[derive(Clone)]
enum Name {
    InQuery { attempt: u8, len: u16 },
    Copy(Box<str>),
}

impl Name {
    fn of(name: &str, attempts: &[Attempt]) -> Self {
        let found = (attempts.iter()).rposition(|a| a.question.name.starts_with(name));
        match (found.map(u8::try_from), u16::try_from(name.len())) {
            (Some(Ok(attempt)), Ok(len)) => Self::InQuery { attempt, len },
            _ => Self::Copy(name.into()),
        }
    }
}

#[derive(Clone)]
pub struct Lookup {
    /// The name as the process asked for it, search suffixes taken off.
    name: Name,
    pub context: Arc<ResolverContext>,
    /// Never empty ([`Lookup::new`]), and only ever added to: the first is
    /// the query that began the lookup. Inline: most lookups make one.
    pub attempts: SmallVec<[Attempt; 1]>,
    pub last_monotonic_ns: u64,
    /// Set by [`Lookup::mark_incomplete`].
    pub incomplete: bool,
}

/// With its name as read, not where it is kept.
impl fmt::Debug for Lookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lookup")
            .field("name", &self.name())
            .field("context", &self.context)
            .field("attempts", &self.attempts)
            .field("last_monotonic_ns", &self.last_monotonic_ns)
            .field("incomplete", &self.incomplete)
            .finish()
    }
}

impl Lookup {
    /// A lookup begun by the query `first`, of the name its resolver
    /// asked it for.
    pub fn new(context: Arc<ResolverContext>, first: Attempt) -> Self {
        let name = context.name_as_asked(&first.question.name);
        let name = Name::of(&name, std::slice::from_ref(&first));
        Self {
            name,
            context,
            last_monotonic_ns: first.sent_monotonic_ns.unwrap_or_default(),
            attempts: SmallVec::from_buf([first]),
            incomplete: false,
        }
    }

    /// The name as the process asked for it, search suffixes taken off.
    pub fn name(&self) -> &str {
        match &self.name {
            Name::InQuery { attempt, len } => {
                &self.attempts[usize::from(*attempt)].question.name[..usize::from(*len)]
            }
            Name::Copy(name) => name,
        }
    }

    /// Gives the lookup another name: the shortest tried is the one the
    /// process asked for.
    pub fn rename(&mut self, name: &str) {
        self.name = Name::of(name, &self.attempts);
    }

    /// The query that began the lookup.
    fn first(&self) -> &Attempt {
        &self.attempts[0]
    }

    /// The process, as its first query showed it.
    pub fn client(&self) -> &Client {
        &self.first().client
    }

    /// When the first query left.
    pub fn first_monotonic_ns(&self) -> u64 {
        self.first().sent_monotonic_ns.unwrap_or_default()
    }

    /// When the first query left, by the wall clock.
    pub fn first_wall_time_ns(&self) -> i128 {
        self.first().sent_wall_time_ns().unwrap_or_default()
    }

    /// Query names in the order the process first tried them.
    pub fn names_tried(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for attempt in &self.attempts {
            let name = attempt.question.name.as_str();
            if !names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
                names.push(name);
            }
        }
        names
    }

    /// The pod that answered the lookup's last response, where this node's
    /// trace showed it answering.
    pub fn server_pod(&self) -> Option<&Pod> {
        self.attempts
            .iter()
            .rfind(|a| a.response.is_some())?
            .server_pod
            .as_deref()
    }

    /// Whether some answer gave the process what it asked for.
    pub fn has_accepted_positive(&self) -> bool {
        self.attempts.iter().any(|a| {
            a.outcome == Outcome::Answered
                && a.response.as_ref().is_some_and(|r| r.shape.is_positive())
        })
    }

    /// Whether some response so far answered what was asked, used or not
    /// yet judged: a repeat after it is the application asking again.
    pub fn has_positive_response(&self) -> bool {
        self.attempts.iter().any(|a| {
            matches!(a.outcome, Outcome::Pending | Outcome::Answered)
                && a.response.as_ref().is_some_and(|r| r.shape.is_positive())
        })
    }

    /// Whether the lookup is over for the program: every question it asked
    /// has had an answer its resolver keeps (docs/resolvers.md), or the
    /// same thrown-away answer twice, after which resolvers give up. A
    /// question asked again after that is the program looking up again.
    /// `same_question` tells whether two attempts, by index, asked the
    /// same question (`Question::same_as`, or what stands for it): an
    /// equivalence, as each question is judged at its first attempt only.
    pub fn is_over(&self, same_question: impl Fn(usize, usize) -> bool) -> bool {
        let library = self.context.library.as_ref();
        // Each question is judged once, at its first attempt: a busy
        // lookup has 32 attempts and one or two questions.
        let mut judged = [0usize; 8];
        let mut judged_len = 0;
        (0..self.attempts.len()).all(|asked| {
            if (judged[..judged_len].iter()).any(|&first| same_question(first, asked)) {
                return true;
            }
            if let Some(slot) = judged.get_mut(judged_len) {
                *slot = asked;
                judged_len += 1;
            }
            let mut answers = (self.attempts.iter().enumerate())
                .filter(|&(index, _)| same_question(index, asked))
                .map(|(_, a)| a)
                .filter(|a| !matches!(a.outcome, Outcome::Mismatched(_)))
                .filter_map(|a| Some((a.outcome, a.response.as_ref()?.shape)));
            let mut thrown_away: Vec<Shape> = Vec::new();
            answers.any(|(outcome, shape)| {
                let rejected = matches!(outcome, Outcome::Rejected(_));
                if !rejected && behaviour::rejects(library, &shape) == Some(false) {
                    return true;
                }
                let again = thrown_away.contains(&shape);
                thrown_away.push(shape);
                again
            })
        })
    }

    /// Whether some response so far, used or not yet judged, answers each
    /// question asked.
    pub fn every_question_answered(&self) -> bool {
        self.attempts.iter().all(|asked| {
            self.attempts.iter().any(|a| {
                a.question.same_as(&asked.question)
                    && a.response.is_some()
                    && matches!(a.outcome, Outcome::Pending | Outcome::Answered)
            })
        })
    }

    /// Whether the process's resolver asks again from a fresh socket to
    /// the same server (behaviour.rs). Where the library is not known, a
    /// socket that carried two questions (glibc's and musl's A/AAAA pair)
    /// tells a resolver that does not; Go uses a socket per query.
    pub fn retries_on_fresh_socket(&self) -> Option<bool> {
        behaviour::retries_on_fresh_socket(self.context.library.as_ref()).or_else(|| {
            // Two types on a socket: some attempt's differs from that of the
            // socket's first (a pass per socket, not per pair of attempts).
            let pairs = self.attempts.iter().enumerate().any(|(index, b)| {
                (self.attempts[..index].iter())
                    .find(|a| a.socket_cookie == b.socket_cookie)
                    .is_some_and(|first| first.question.qtype != b.question.qtype)
            });
            pairs.then_some(false)
        })
    }

    pub fn is_settled(&self) -> bool {
        self.attempts.iter().all(|a| a.outcome != Outcome::Pending)
    }

    /// Messages may be missing from its lifetime: what their absence
    /// would say (a timeout, a rejection) is not said.
    pub fn mark_incomplete(&mut self) {
        self.incomplete = true;
        for attempt in &mut self.attempts {
            if matches!(
                attempt.outcome,
                Outcome::Pending | Outcome::Timeout | Outcome::Rejected(_) | Outcome::Superseded
            ) {
                attempt.outcome = Outcome::Incomplete;
            }
        }
    }

    pub fn outcome(&self) -> LookupOutcome {
        if self.incomplete {
            return LookupOutcome::Incomplete;
        }
        if self.has_accepted_positive() {
            return LookupOutcome::Resolved;
        }
        let last_accepted = self
            .attempts
            .iter()
            .rev()
            .filter(|a| a.outcome == Outcome::Answered)
            .find_map(|a| a.response.as_ref());
        match last_accepted.map(|r| r.shape) {
            Some(shape) if shape.rcode == 3 => LookupOutcome::NxDomain,
            Some(shape) if shape.rcode == 0 => LookupOutcome::NoData,
            _ => LookupOutcome::Failed,
        }
    }

    /// The name that resolved, if one did.
    pub fn resolving_name(&self) -> Option<&str> {
        self.attempts
            .iter()
            .find(|a| {
                a.outcome == Outcome::Answered
                    && a.response.as_ref().is_some_and(|r| r.shape.is_positive())
            })
            .map(|a| a.question.name.as_str())
    }

    /// Queries that did not give the result: every query that was not
    /// answered, and those answered for another name than the one that gave
    /// the result (the name that resolved, or the last name answered).
    pub fn wasted_queries(&self) -> usize {
        let final_name = self.resolving_name().or_else(|| {
            self.attempts
                .iter()
                .rev()
                .find(|a| a.outcome == Outcome::Answered)
                .map(|a| a.question.name.as_str())
        });
        self.attempts
            .iter()
            .filter(|a| a.sent_monotonic_ns.is_some())
            .filter(|a| {
                a.outcome != Outcome::Answered
                    || final_name.is_none_or(|name| !a.question.name.eq_ignore_ascii_case(name))
            })
            .count()
    }

    pub fn total_ns(&self) -> u64 {
        let end = self
            .attempts
            .iter()
            .filter_map(|a| a.ended_monotonic_ns)
            .max()
            .unwrap_or(self.last_monotonic_ns);
        end.saturating_sub(self.first_monotonic_ns())
    }

    pub fn queries(&self) -> usize {
        self.attempts
            .iter()
            .filter(|a| a.sent_monotonic_ns.is_some())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{Lookup, Name};

    use crate::{
        correlate::{
            attempt::{Attempt, Outcome, Rejection},
            tests::{GOOD, LAME_NODATA, attempt, client, lookup},
        },
        resolver::{Library, ResolverContext},
    };

    /// An attempt on `socket` asking `qtype`, with `outcome` and, unless
    /// `answers` is `None`, a NOERROR response with that many answers
    /// (none: a lame one).
    fn on_socket(socket: u64, qtype: u16, outcome: Outcome, answers: Option<u16>) -> Attempt {
        let answer = answers.map(|answers| if answers > 0 { GOOD } else { LAME_NODATA });
        let mut attempt = attempt(&client(7, "client"), 1, qtype, outcome, 0, answer);
        attempt.socket_cookie = socket;
        attempt
    }

    /// Lookups of one to thirteen attempts, from a fixed sequence of
    /// choices.
    fn lookups() -> impl Iterator<Item = super::Lookup> {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let libraries = [
            None,
            Some(Library::Musl),
            Some(Library::Go),
            Some(Library::Glibc {
                major: 2,
                minor: 19,
            }),
        ];
        let outcomes = [
            Outcome::Pending,
            Outcome::Answered,
            Outcome::Rejected(Rejection::AskedAgain),
            Outcome::Timeout,
        ];
        (0..3_000).map(move |_| {
            let library = libraries[next(4) as usize].clone();
            // One in eight asks a type per attempt, more questions than
            // `is_over` keeps in place, each answered but maybe the last.
            let many_types = next(8) == 0;
            let last = next(13);
            let attempts = (0..=last)
                .map(|index| match many_types {
                    true => {
                        let answers = Some(u16::from(index < last || next(2) == 0));
                        on_socket(1, 1 + index as u16, Outcome::Answered, answers)
                    }
                    false => {
                        let answers = [None, Some(0), Some(1)][next(3) as usize];
                        let qtype = [1, 28][next(2) as usize];
                        on_socket(1 + next(3), qtype, outcomes[next(4) as usize], answers)
                    }
                })
                .collect();
            let mut lookup = lookup("db.test.", attempts, 0);
            lookup.context = Arc::new(ResolverContext {
                conf: None,
                library,
            });
            lookup
        })
    }

    /// Judging each question once, at its first attempt, and comparing
    /// each attempt with its socket's first, decide as the definitions do:
    /// every attempt judged, every pair of attempts compared.
    #[test]
    fn the_linear_passes_decide_as_the_pairwise_definitions() {
        let (mut over, mut many_questions) = (0, 0);
        for lookup in lookups() {
            let same = |a: usize, b: usize| {
                lookup.attempts[a]
                    .question
                    .same_as(&lookup.attempts[b].question)
            };
            let library = lookup.context.library.as_ref();
            let every_question_over = (0..lookup.attempts.len()).all(|asked| {
                let mut thrown_away = Vec::new();
                (lookup.attempts.iter().enumerate())
                    .filter(|&(index, a)| {
                        same(index, asked) && !matches!(a.outcome, Outcome::Mismatched(_))
                    })
                    .filter_map(|(_, a)| Some((a.outcome, a.response.as_ref()?.shape)))
                    .any(|(outcome, shape)| {
                        let rejected = matches!(outcome, Outcome::Rejected(_));
                        if !rejected && super::behaviour::rejects(library, &shape) == Some(false) {
                            return true;
                        }
                        let again = thrown_away.contains(&shape);
                        thrown_away.push(shape);
                        again
                    })
            });
            assert_eq!(
                lookup.is_over(same),
                every_question_over,
                "{:#?}",
                lookup.attempts
            );
            over += usize::from(every_question_over);
            many_questions +=
                usize::from(lookup.attempts.len() > 9 && lookup.attempts[9].question.qtype == 10);

            let pairs = lookup.attempts.iter().any(|a| {
                lookup.attempts.iter().any(|b| {
                    b.socket_cookie == a.socket_cookie && b.question.qtype != a.question.qtype
                })
            });
            let by_definition = super::behaviour::retries_on_fresh_socket(library)
                .or_else(|| pairs.then_some(false));
            assert_eq!(
                lookup.retries_on_fresh_socket(),
                by_definition,
                "{:#?}",
                lookup.attempts
            );
        }
        // Both answers came up often enough to tell, and lookups of more
        // than eight questions too.
        assert!((300..2_700).contains(&over), "{over} of 3,000 over");
        assert!(many_questions > 50, "{many_questions} with more than eight");
    }

    #[test]
    fn a_name_is_read_from_the_query_it_begins_or_kept_as_a_copy() {
        let client = client(7, "client");
        let asked = |name: &str| {
            let mut query = attempt(&client, 1, 1, Outcome::Pending, 0, None);
            query.question.name = name.into();
            query
        };
        let context = Arc::new(ResolverContext {
            conf: Some(crate::resolver::ResolvConf {
                search: vec!["ns.svc.cluster.local".into()],
                ..Default::default()
            }),
            library: None,
        });
        let mut lookup = Lookup::new(Arc::clone(&context), asked("db.ns.svc.cluster.local."));
        assert_eq!(lookup.name(), "db");
        assert!(matches!(lookup.name, Name::InQuery { attempt: 0, len: 2 }));
        // Another query's name, shorter: read from that query.
        lookup.attempts.push(asked("d."));
        lookup.rename("d");
        assert!(matches!(lookup.name, Name::InQuery { attempt: 1, len: 1 }));
        assert_eq!(lookup.name(), "d");
        // A name asked in capitals is the lowercase one, a copy.
        let lookup = Lookup::new(context, asked("DB.ns.svc.cluster.local."));
        assert!(matches!(lookup.name, Name::Copy(_)));
        assert_eq!(lookup.name(), "db");
    }
}
