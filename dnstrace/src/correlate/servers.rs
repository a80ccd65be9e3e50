//! Which pod on this node answered a query. A DNS server in a pod (a
//! CoreDNS replica) is traced like any process, and its side of an
//! exchange, the query it received and the response it sent, carries its
//! process's pod. The two sides are matched by what both see alike: the
//! client's address and port, the DNS id and the name. Not by the server's
//! address: a Service's DNAT shows the client the Service's address and
//! the server its own.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::Arc,
};

use super::lookup::Lookup;
use crate::message::{Direction, Message, Pod};

/// How long a server's side of an exchange is kept: lookups are matched
/// with it when they settle, a second or so after their last message.
const KEEP_NS: u64 = 30_000_000_000;
/// Exchanges kept; past this the oldest go first.
const MAX_EXCHANGES: usize = 65_536;

/// The client's address and port, the id, and the name in lowercase.
type Key = (SocketAddr, u16, String);

#[derive(Default)]
pub struct ServerPods {
    seen: HashMap<Key, (Arc<Pod>, u64), foldhash::fast::RandomState>,
    /// Keys in the order they were seen, with when: for expiry.
    order: VecDeque<(Key, u64)>,
}

impl ServerPods {
    /// Takes a server's side of an exchange (a query received, or a
    /// response sent, by a process in a pod); other messages are ignored.
    pub fn observe(&mut self, message: &Message, id: u16) {
        let Some(pod) = message
            .envelope
            .process
            .as_ref()
            .and_then(|process| process.facts.pod.as_ref())
        else {
            return;
        };
        let Some(question) = &message.dns.question else {
            return;
        };
        let server_side = match message.envelope.direction {
            Direction::Recv => message.dns.header.as_ref().is_some_and(|h| !h.is_response),
            Direction::Send => message.dns.header.as_ref().is_some_and(|h| h.is_response),
        };
        if !server_side {
            return;
        }
        let now = message.envelope.monotonic_ns;
        let key = (
            message.envelope.remote,
            id,
            question.name.to_ascii_lowercase(),
        );
        if self
            .seen
            .get(&key)
            .is_some_and(|(known, _)| **known == *pod)
        {
            return;
        }
        while self.order.len() >= MAX_EXCHANGES {
            self.forget_oldest();
        }
        self.order.push_back((key.clone(), now));
        self.seen.insert(key, (Arc::new(pod.clone()), now));
    }

    /// Names the pod that answered each attempt of `lookup` that had a
    /// response, where this node's trace showed it.
    pub fn name(&self, lookup: &mut Lookup) {
        // Off Kubernetes nothing is seen, and every lookup passes here.
        if self.seen.is_empty() {
            return;
        }
        for attempt in &mut lookup.attempts {
            if attempt.response.is_none() {
                continue;
            }
            let key = (
                attempt.local,
                attempt.id,
                attempt.question.name.to_ascii_lowercase(),
            );
            if let Some((pod, _)) = self.seen.get(&key) {
                attempt.server_pod = Some(Arc::clone(pod));
            }
        }
    }

    /// Forgets exchanges older than `KEEP_NS`.
    pub fn expire(&mut self, now_ns: u64) {
        while self
            .order
            .front()
            .is_some_and(|(_, seen)| now_ns.saturating_sub(*seen) > KEEP_NS)
        {
            self.forget_oldest();
        }
    }

    fn forget_oldest(&mut self) {
        if let Some((key, seen)) = self.order.pop_front()
            && self.seen.get(&key).is_some_and(|(_, at)| *at == seen)
        {
            self.seen.remove(&key);
        }
    }
}
