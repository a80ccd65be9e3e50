//! Who a dropped packet was for, when the kernel could not say: a response
//! dropped before it reached a socket (no socket any more, or none found)
//! carries none. The client's query went out on the same addresses and
//! ports in the same namespace, so the process that sent it is the one
//! the response was for. A packet dropped in another namespace than its
//! sender's (a pod's query dropped on the node, where it has lost its
//! socket) is matched by its addresses and ports alone.

use std::{
    collections::{HashMap, VecDeque},
    hash::{BuildHasher, Hash, RandomState},
    net::SocketAddr,
    sync::LazyLock,
};

use crate::{
    message::{Direction, Dropped, Envelope, Message, Process, Transport},
    tally::Tally,
};

/// Past this many sockets the memory starts over rather than grow.
const MAX_SOCKETS: usize = 65_536;

/// (TCP or not, local, remote) of a client socket, in any namespace.
pub type Addresses = (bool, SocketAddr, SocketAddr);

/// (network namespace inode, addresses) of a client socket.
type Key = (u64, Addresses);

/// Places in `QueryOwners::recent`.
const RECENT: usize = 16;

/// The process and socket behind each client socket's last query.
#[derive(Default)]
pub struct QueryOwners {
    /// By the digest of the socket's `Key`.
    by_socket: HashMap<u64, (Process, u64), foldhash::fast::RandomState>,
    /// The namespace of the last query on each client's addresses, in
    /// any namespace, by their digest: `by_socket` has its owner under
    /// that key. (Owners in both maps cost 64 bytes a socket more.)
    by_addresses: HashMap<u64, u64, foldhash::fast::RandomState>,
    /// Queries whose owner the maps hold (in `by_socket`, and as the last
    /// on their addresses), one per place picked by socket: every query is
    /// asked about, nearly all from a socket that asked before, and
    /// comparing costs less than hashing the key.
    recent: [Option<(Key, u32, u64)>; RECENT],
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
        let seen = (key, process.pid, envelope.socket_cookie);
        let place = (envelope.socket_cookie % RECENT as u64) as usize;
        if self.recent[place] == Some(seen) {
            return;
        }
        let (netns, addresses) = key;
        let socket = digest(&key);
        let known = self
            .by_socket
            .get(&socket)
            .map(|(p, cookie)| (p.pid, *cookie))
            == Some((process.pid, envelope.socket_cookie));
        if !known {
            if self.by_socket.len() >= MAX_SOCKETS {
                self.by_socket.clear();
                self.by_addresses.clear();
                self.recent = Default::default();
            }
            (self.by_socket).insert(socket, (process.clone(), envelope.socket_cookie));
        }
        let moved = self.by_addresses.insert(digest(&addresses), netns) != Some(netns);
        if !known || moved {
            // What is remembered of these addresses elsewhere (another
            // owner of the key, the last asker in another namespace) is
            // true no more.
            for recent in &mut self.recent {
                if recent.is_some_and(|((_, kept), ..)| kept == addresses) {
                    *recent = None;
                }
            }
        }
        self.recent[place] = Some(seen);
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
        let owner = self.by_socket.get(&digest(&key)).or_else(|| {
            let netns = self.by_addresses.get(&digest(&key.1))?;
            self.by_socket.get(&digest(&(*netns, key.1)))
        });
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
    counts: Tally<K>,
    /// What a drop waits for; `None` for one no message can be for.
    key: fn(&Dropped) -> Option<K>,
}

impl<K: Hash + Eq> WaitingDrops<K> {
    pub fn new(key: fn(&Dropped) -> Option<K>) -> Self {
        Self {
            drops: VecDeque::new(),
            counts: Tally::default(),
            key,
        }
    }

    pub fn len(&self) -> usize {
        self.drops.len()
    }

    pub fn push(&mut self, dropped: Dropped) {
        if let Some(key) = (self.key)(&dropped) {
            self.counts.add(key);
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

    /// Whether some drop waits for `key`: asked at every message.
    pub fn awaits(&self, key: &K) -> bool {
        self.counts.contains(key)
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
        if let Some(key) = (self.key)(dropped) {
            self.counts.take(&key);
        }
    }
}

/// Drops the kernel could not attribute, waiting for the query that names
/// their process: only a query on their client addresses can.
pub type OrphanDrops = WaitingDrops<Addresses>;

impl OrphanDrops {
    pub fn by_addresses() -> Self {
        Self::new(|dropped| Some(addresses(&dropped.message.envelope)))
    }

    /// Takes out those waiting drops `owners` can now name, oldest first,
    /// when `message` may have named some (a query on their addresses).
    pub fn named(&mut self, message: &Message, owners: &QueryOwners) -> Vec<Dropped> {
        if !self.awaits(&addresses(&message.envelope)) {
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
    (netns, addresses(envelope))
}

/// What the maps hold of a key: its hash, keyed afresh at each start so
/// that no tenant can make two keys collide (2^-64 for any two). The keys
/// themselves took 80 and 72 bytes, for each of up to 65,536 sockets.
fn digest(key: &impl Hash) -> u64 {
    static HASH_KEY: LazyLock<RandomState> = LazyLock::new(RandomState::new);
    HASH_KEY.hash_one(key)
}

/// A message's client addresses, as `QueryOwners` keys them.
fn addresses(envelope: &Envelope) -> Addresses {
    (
        envelope.transport == Transport::Tcp,
        envelope.local,
        envelope.remote,
    )
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::QueryOwners;
    use crate::{
        correlate::tests::{Socket, message, server},
        message::{Direction, Dropped, Message},
    };

    /// A message on one socket's addresses in namespace 1, from `pid`'s
    /// socket `cookie` (a port used again by another socket).
    fn on_the_addresses(direction: Direction, pid: u32, cookie: u64) -> Message {
        in_namespace(direction, pid, cookie, 1)
    }

    fn in_namespace(direction: Direction, pid: u32, cookie: u64, netns: u64) -> Message {
        let mut message = message(
            direction,
            Socket::new(pid, cookie, server(1)),
            1,
            "db.test.",
            1,
            0,
            None,
        );
        message.envelope.local = SocketAddr::from(([10, 0, 0, 1], 40_000));
        if let Some(process) = &mut message.envelope.process {
            process.netns = Some(netns);
        }
        message
    }

    /// The process a response dropped on the addresses is put down to.
    fn owner(owners: &QueryOwners) -> Option<u32> {
        owner_of_drop_in(owners, 1)
    }

    fn owner_of_drop_in(owners: &QueryOwners, netns: u64) -> Option<u32> {
        let mut response = on_the_addresses(Direction::Recv, 0, 0);
        response.envelope.process = None;
        let mut dropped = Dropped {
            message: response,
            reason: "NO_SOCKET".into(),
            location: "somewhere+0x1".into(),
            netns: Some(netns),
            conntrack: None,
        };
        owners.attribute(&mut dropped);
        dropped.message.envelope.process.map(|process| process.pid)
    }

    #[test]
    fn a_drop_goes_to_the_process_that_asked_last_on_its_addresses() {
        let mut owners = QueryOwners::default();
        assert_eq!(owner(&owners), None);
        for (pid, cookie) in [(7, 1), (7, 1), (8, 2), (7, 1), (7, 1), (8, 2)] {
            owners.message(&on_the_addresses(Direction::Send, pid, cookie));
            assert_eq!(owner(&owners), Some(pid), "after a query of {pid}'s");
        }
    }

    /// A pod's query dropped on the node has left its namespace: it goes
    /// to whoever asked last on its addresses, in any namespace.
    #[test]
    fn a_drop_in_another_namespace_goes_to_the_last_asker_anywhere() {
        let mut owners = QueryOwners::default();
        assert_eq!(owner_of_drop_in(&owners, 2), None);
        let asked = [(7, 1, 1), (9, 3, 3), (9, 3, 3), (7, 4, 1), (9, 3, 3)];
        for (pid, cookie, netns) in asked {
            owners.message(&in_namespace(Direction::Send, pid, cookie, netns));
            assert_eq!(owner_of_drop_in(&owners, 2), Some(pid), "after {pid}'s");
            assert_eq!(owner_of_drop_in(&owners, netns), Some(pid));
        }
    }
}
