//! The kernel's drops of DNS packets, linked to the attempts they belong
//! to. A dropped query is still a query the process sent and waits for
//! (a query dropped on its way out was never seen as a message, so the
//! drop opens its attempt); a dropped response is the answer that attempt
//! never got. A response dropped for want of a socket came after the
//! process had closed it: a late answer it never saw.

use std::sync::Arc;

use super::{
    Correlated, Correlator,
    attempt::{Attempt, DroppedPacket, KernelDrop, Outcome, ReadState, Response, Shape},
    open::Keys,
};
use crate::message::{ClientId, Direction, Dropped, Message};

/// A query's drop belongs to an attempt sent at most this long before.
const QUERY_DROP_WINDOW_NS: u64 = 1_000_000_000;

impl Correlator {
    /// Links a drop to its attempt; `false` when a dropped response has
    /// no attempt yet (its query may still wait in the enrich stage).
    pub fn dropped(&mut self, dropped: &Dropped, out: &mut Vec<Correlated>) -> bool {
        let message = &dropped.message;
        let (Some(header), Some(question)) = (&message.dns.header, &message.dns.question) else {
            return true;
        };
        let client_side = match message.envelope.direction {
            Direction::Send => !header.is_response,
            Direction::Recv => header.is_response,
        };
        if !client_side || (message.envelope.process.is_none() && !self.by_address) {
            return true;
        }
        let now = message.envelope.monotonic_ns;
        let cookie = message.envelope.socket_cookie;
        let server = message.envelope.remote;
        let id = header.id;
        let same = move |a: &Attempt| {
            a.drop.is_none()
                && a.id == id
                && a.server == server
                && a.question.same_as(question)
                && (cookie == 0 || a.socket_cookie == cookie)
        };
        let drop = |packet, sent: Option<u64>| KernelDrop {
            packet,
            reason: Arc::clone(&dropped.reason),
            location: Arc::clone(&dropped.location),
            after_ns: sent.map_or(0, |sent| now.saturating_sub(sent)),
            conntrack: dropped.conntrack.map(Box::new),
        };
        let client = message.client_id();
        if !header.is_response {
            // Seen leaving before it was dropped further on, or not at all.
            let seen = |a: &Attempt| {
                same(a)
                    && a.response.is_none()
                    && a.sent_monotonic_ns
                        .is_some_and(|sent| now.saturating_sub(sent) <= QUERY_DROP_WINDOW_NS)
            };
            let open = self.lookups.get(&client);
            if open.and_then(|open| open.newest(|_| true, seen)).is_none() {
                self.observe(message, out);
            }
            self.change_newest(
                client,
                |a| same(a) && a.response.is_none(),
                |attempt| {
                    attempt.drop = Some(Box::new(drop(
                        DroppedPacket::Query,
                        attempt.sent_monotonic_ns,
                    )));
                },
            );
            return true;
        }
        // The kernel's socket programs see a response before the socket's
        // buffer takes it: one dropped there may have been given to its
        // attempt already, and the process never had it.
        let fits = |a: &Attempt| {
            same(a)
                && a.sent_monotonic_ns.is_some()
                && a.response.as_ref().is_none_or(|r| r.monotonic_ns <= now)
        };
        let linked = self.change_newest(client, fits, |attempt| {
            attempt.drop = Some(Box::new(drop(
                DroppedPacket::Response,
                attempt.sent_monotonic_ns,
            )));
            // Judged on a response the process never had: judged again.
            if attempt.response.take().is_some()
                && matches!(
                    attempt.outcome,
                    Outcome::Pending | Outcome::Answered | Outcome::Rejected(_)
                )
            {
                attempt.outcome = Outcome::Pending;
                attempt.ended_monotonic_ns = None;
            }
            if &*dropped.reason == "NO_SOCKET"
                && matches!(attempt.outcome, Outcome::Pending | Outcome::Timeout)
            {
                attempt.response = Some(Box::new(Response {
                    monotonic_ns: now,
                    wall_time_ns: message.envelope.wall_time_ns,
                    from: server,
                    shape: Shape::of(header),
                    number: None,
                    read: ReadState::Unread,
                }));
                attempt.outcome = Outcome::Late;
                attempt.ended_monotonic_ns.get_or_insert(now);
            }
        });
        linked.is_some()
    }

    /// Whether a response is the one its attempt's drop says the kernel
    /// dropped after its socket program saw it (the drop came first): the
    /// process never had it.
    pub(super) fn response_was_dropped(&mut self, message: &Message, id: u16) -> bool {
        let Some(question) = &message.dns.question else {
            return false;
        };
        let envelope = &message.envelope;
        let Some(open) = self.lookups.get(&message.client_id()) else {
            return false;
        };
        // Only an attempt with a drop can say so.
        if !open.has_drops() {
            return false;
        }
        let keys = Keys::new("", None, envelope.socket_cookie, id);
        open.newest(
            |index| open.may_have_sent(index, &keys),
            |a| {
                a.socket_cookie == envelope.socket_cookie
                    && a.id == id
                    && a.server == envelope.remote
                    && a.question.same_as(question)
                    && a.sent_monotonic_ns.is_some()
                    && a.response.is_none()
            },
        )
        .is_some_and(|(index, at)| {
            open.get(index).attempts[at]
                .drop
                .as_ref()
                .is_some_and(|d| d.packet == DroppedPacket::Response)
        })
    }

    /// Whether a query is the one a drop already opened an attempt for:
    /// the drop came first when the query waited for its process's facts
    /// in the enrich stage. The attempt then takes the query's own times.
    pub(super) fn query_was_dropped(&mut self, message: &Message, id: u16) -> bool {
        let Some(question) = &message.dns.question else {
            return false;
        };
        let envelope = &message.envelope;
        let keys = Keys::new("", None, envelope.socket_cookie, id);
        let fits = |a: &Attempt| {
            a.socket_cookie == envelope.socket_cookie
                && a.id == id
                && a.server == envelope.remote
                && a.question.same_as(question)
                && a.response.is_none()
        };
        let dropped_query = |a: &Attempt| {
            a.drop
                .as_ref()
                .is_some_and(|d| d.packet == DroppedPacket::Query)
                && a.sent_monotonic_ns.is_some_and(|sent| {
                    sent >= envelope.monotonic_ns
                        && sent - envelope.monotonic_ns <= QUERY_DROP_WINDOW_NS
                })
        };
        let Some(open) = self.lookups.get_mut(&message.client_id()) else {
            return false;
        };
        if !open.has_drops() {
            return false;
        }
        let Some((index, at)) = open.newest(|index| open.may_have_sent(index, &keys), fits) else {
            return false;
        };
        if !dropped_query(&open.get(index).attempts[at]) {
            return false;
        }
        open.change(index, |lookup| {
            let attempt = &mut lookup.attempts[at];
            if let (Some(drop), Some(sent)) = (attempt.drop.as_mut(), attempt.sent_monotonic_ns) {
                drop.after_ns += sent - envelope.monotonic_ns;
            }
            attempt.sent_monotonic_ns = Some(envelope.monotonic_ns);
            attempt.sent_wall = Some(envelope.wall_time_ns.into());
        });
        true
    }

    /// Changes the client's newest open attempt that `fits`.
    fn change_newest<R>(
        &mut self,
        client: ClientId,
        fits: impl Fn(&Attempt) -> bool,
        change: impl FnOnce(&mut Attempt) -> R,
    ) -> Option<R> {
        let open = self.lookups.get_mut(&client)?;
        let (index, at) = open.newest(|_| true, fits)?;
        Some(open.change(index, |lookup| change(&mut lookup.attempts[at])))
    }
}
