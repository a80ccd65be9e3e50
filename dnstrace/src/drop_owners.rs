//! Who a dropped packet was for, when the kernel could not say: a response
//! dropped before it reached a socket (no socket any more, or none found)
//! carries none. The client's query went out on the same addresses and
//! ports in the same namespace, so the process that sent it is the one
//! the response was for. A packet dropped in another namespace than its
//! sender's (a pod's query dropped on the node, where it has lost its
//! socket) is matched by its addresses and ports alone.

use std::{
    collections::{HashMap, VecDeque},
    hash::Hash,
    net::SocketAddr,
};

use crate::message::{Direction, Dropped, Envelope, Message, Process, Transport};

/// Past this many sockets the memory starts over rather than grow.
const MAX_SOCKETS: usize = 65_536;

/// (network namespace inode, TCP or not, local, remote) of a client socket.
type Key = (u64, bool, SocketAddr, SocketAddr);

/// (TCP or not, local, remote) of a client socket, in any namespace.
pub type Addresses = (bool, SocketAddr, SocketAddr);

/// The process and socket behind each client socket's last query.
#[derive(Default)]
pub struct QueryOwners {
    by_socket: HashMap<Key, (Process, u64)>,
    by_addresses: HashMap<Addresses, (Process, u64)>,
}

impl QueryOwners {
    /// Remembers the sender of a query.
    pub fn message(&mut self, message: &Message) {
        let envelope = &message.envelope;
        let is_query = message.dns.header.as_ref().is_some_and(|h| !h.is_response);
        let Some(process) = &envelope.process else {
            return;
        };
        let Some(netns) = process.netns else {
            return;
        };
        if envelope.direction != Direction::Send || !is_query {
            return;
        }
        let key = socket_key(netns, envelope);
        if self.by_socket.get(&key).map(|(p, cookie)| (p.pid, *cookie))
            == Some((process.pid, envelope.socket_cookie))
        {
            return;
        }
        if self.by_socket.len() >= MAX_SOCKETS {
            self.by_socket.clear();
            self.by_addresses.clear();
        }
        let owner = (process.clone(), envelope.socket_cookie);
        self.by_addresses
            .insert((key.1, key.2, key.3), owner.clone());
        self.by_socket.insert(key, owner);
    }

    /// Fills in the process of a drop the kernel could not attribute, from
    /// the query that went out on the same addresses in the namespace
    /// where it was dropped.
    pub fn attribute(&self, dropped: &mut Dropped) {
        let envelope = &mut dropped.message.envelope;
        if envelope.process.is_some() {
            return;
        }
        let Some(netns) = dropped.netns else {
            return;
        };
        let key = socket_key(netns, envelope);
        let owner = self
            .by_socket
            .get(&key)
            .or_else(|| self.by_addresses.get(&(key.1, key.2, key.3)));
        if let Some((process, cookie)) = owner {
            envelope.process = Some(process.clone());
            if envelope.socket_cookie == 0 {
                envelope.socket_cookie = *cookie;
            }
        }
    }
}

/// Drops waiting for some message, oldest first, with a count per key
/// (what each waits for), so that a message can tell at once whether any
/// waits for it: looking through them all at every message cost the agent
/// its pace when many drops wait.
pub struct WaitingDrops<K> {
    drops: VecDeque<Dropped>,
    counts: HashMap<K, usize>,
    /// What a drop waits for; `None` for one no message can be for.
    key: fn(&Dropped) -> Option<K>,
}

impl<K: Hash + Eq> WaitingDrops<K> {
    pub fn new(key: fn(&Dropped) -> Option<K>) -> Self {
        Self {
            drops: VecDeque::new(),
            counts: HashMap::new(),
            key,
        }
    }

    pub fn len(&self) -> usize {
        self.drops.len()
    }

    pub fn push(&mut self, dropped: Dropped) {
        if let Some(key) = (self.key)(&dropped) {
            *self.counts.entry(key).or_default() += 1;
        }
        self.drops.push_back(dropped);
    }

    pub fn oldest(&self) -> Option<&Dropped> {
        self.drops.front()
    }

    pub fn pop_oldest(&mut self) -> Option<Dropped> {
        let dropped = self.drops.pop_front()?;
        self.forget(&dropped);
        Some(dropped)
    }

    /// Whether some drop waits for `key`. Asked at every message, and
    /// nearly always with none waiting: that is told without hashing.
    pub fn awaits(&self, key: &K) -> bool {
        !self.counts.is_empty() && self.counts.contains_key(key)
    }

    /// Takes out the drops `take` says, oldest first; the others keep
    /// their order.
    pub fn take(&mut self, mut take: impl FnMut(&mut Dropped) -> bool) -> Vec<Dropped> {
        let mut taken = Vec::new();
        for _ in 0..self.drops.len() {
            let Some(mut dropped) = self.drops.pop_front() else {
                break;
            };
            if take(&mut dropped) {
                self.forget(&dropped);
                taken.push(dropped);
            } else {
                self.drops.push_back(dropped);
            }
        }
        taken
    }

    fn forget(&mut self, dropped: &Dropped) {
        let Some(key) = (self.key)(dropped) else {
            return;
        };
        if let Some(count) = self.counts.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                self.counts.remove(&key);
            }
        }
    }
}

/// Drops the kernel could not attribute, waiting for the query that names
/// their process: only a query on their client addresses can.
pub type OrphanDrops = WaitingDrops<Addresses>;

impl OrphanDrops {
    pub fn by_addresses() -> Self {
        Self::new(|dropped| Some(addresses(&dropped.message)))
    }

    /// Takes out those waiting drops `owners` can now name, oldest first,
    /// when `message` may have named some (a query on their addresses).
    pub fn named(&mut self, message: &Message, owners: &QueryOwners) -> Vec<Dropped> {
        if !self.awaits(&addresses(message)) {
            return Vec::new();
        }
        self.take(|dropped| {
            owners.attribute(dropped);
            dropped.message.envelope.process.is_some()
        })
    }
}

/// A client socket's key, from a message of its in `netns`.
fn socket_key(netns: u64, envelope: &Envelope) -> Key {
    (
        netns,
        envelope.transport == Transport::Tcp,
        envelope.local,
        envelope.remote,
    )
}

/// A message's client addresses, as `QueryOwners` keys them.
fn addresses(message: &Message) -> Addresses {
    let (_, tcp, local, remote) = socket_key(0, &message.envelope);
    (tcp, local, remote)
}
