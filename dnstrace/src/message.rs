//! The event model: one DNS message seen on one socket of one process.
//! Every output (text, JSON) renders this; correlation builds on it.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use dnstrace_common::{EVENT_OWNER_KNOWN, EventHeader, FAMILY_V4, PROTO_TCP};

use crate::{
    capture::{DropNames, RawDrop, RawMessage},
    clock::WallClock,
    decode::{self, DnsSummary},
    framing::TcpStreams,
    process::Namespaces,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Send,
    Recv,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Self::Send => "send",
            Self::Recv => "recv",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
        }
    }
}

/// The process that owns the socket. Absent when the socket never sent DNS
/// while dnstrace watched and the kernel could not tell its owner otherwise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    pub tid: u32,
    /// The thread's name, as the kernel keeps it (15 bytes at most);
    /// shared, as every message of a thread carries the same one.
    pub comm: Arc<str>,
    pub uid: u32,
    pub cgroup_id: u64,
    /// Network namespace inode, as `ls -l /proc/PID/ns/net` shows it.
    pub netns: Option<u64>,
}

/// Who a lookup belongs to: the process, when the trace knows it;
/// otherwise (a packet capture) the client's address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClientId {
    Pid(u32),
    Address(IpAddr),
}

/// A client and the name it goes by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Client {
    pub id: ClientId,
    /// The process's thread name; `None` for an address.
    pub comm: Option<Arc<str>>,
}

impl Client {
    pub fn pid(&self) -> Option<u32> {
        match self.id {
            ClientId::Pid(pid) => Some(pid),
            ClientId::Address(_) => None,
        }
    }

    pub fn address(&self) -> Option<IpAddr> {
        match self.id {
            ClientId::Pid(_) => None,
            ClientId::Address(address) => Some(address),
        }
    }
}

/// `getent (pid 4242)`, or `client 10.0.0.5`: how diagnoses name a client.
impl std::fmt::Display for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.id {
            ClientId::Pid(pid) => write!(f, "{} (pid {pid})", self.comm.as_deref().unwrap_or("")),
            ClientId::Address(address) => write!(f, "client {address}"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Message {
    /// Where and when it was seen, and by whom.
    pub envelope: Envelope,
    /// Length of the DNS message on the wire.
    pub size: u32,
    /// Fewer bytes were captured than the message holds.
    pub truncated_capture: bool,
    pub dns: DnsSummary,
    /// The captured DNS message (without TCP's length prefix), kept only
    /// when an output writes packets: copying it costs every message.
    pub payload: Vec<u8>,
}

impl Message {
    /// The client this message belongs to, if it is seen from the client's
    /// side: the process, or without one, the local address.
    pub fn client(&self) -> Client {
        Client {
            id: self.client_id(),
            comm: self
                .envelope
                .process
                .as_ref()
                .map(|process| process.comm.clone()),
        }
    }

    /// [`Message::client`]'s id alone, without copying the name.
    pub fn client_id(&self) -> ClientId {
        match &self.envelope.process {
            Some(process) => ClientId::Pid(process.pid),
            None => ClientId::Address(self.envelope.local.ip()),
        }
    }
}

/// Turns the kernel's records into messages, keeping what one record
/// shares with the next: the clock, namespaces, TCP streams, thread names.
pub struct RecordDecoder {
    pub clock: WallClock,
    pub namespaces: Namespaces,
    pub streams: TcpStreams,
    pub thread_names: ThreadNames,
    /// Whether an output writes payloads, so messages must keep them.
    pub keep_payloads: bool,
}

impl RecordDecoder {
    /// Hands each message in a record to `each`: one for UDP; for TCP, those
    /// that start in the segment (none for a segment that only continues
    /// one).
    pub fn messages(&mut self, raw: &RawMessage<'_>, mut each: impl FnMut(Message)) {
        let header = &raw.header;
        let envelope = self.envelope(header);
        let direction = envelope.direction;
        let keep_payload = self.keep_payloads;
        if header.protocol == PROTO_TCP {
            let sending = direction == Direction::Send;
            for framed in self.streams.frame(
                header.socket_cookie,
                sending,
                header.payload_len,
                raw.payload,
            ) {
                let envelope = Envelope {
                    transport: Transport::Tcp,
                    ..envelope.clone()
                };
                each(Message::decoded(
                    envelope,
                    framed.bytes,
                    framed.len,
                    keep_payload,
                ));
            }
        } else {
            each(Message::decoded(
                envelope,
                raw.payload,
                header.payload_len,
                keep_payload,
            ));
        }
    }

    /// The part of a record every message of it shares.
    fn envelope(&mut self, header: &EventHeader) -> Envelope {
        let process = (header.flags & EVENT_OWNER_KNOWN != 0).then(|| Process {
            pid: header.pid,
            tid: header.tid,
            comm: self.thread_names.name(&header.comm.0),
            uid: header.uid,
            cgroup_id: header.cgroup_id,
            netns: self.namespaces.inode(header.netns_cookie),
        });
        let direction = if header.direction == dnstrace_common::Direction::Send as u8 {
            Direction::Send
        } else {
            Direction::Recv
        };
        Envelope {
            wall_time_ns: self.clock.wall_ns(header.timestamp_ns),
            monotonic_ns: header.timestamp_ns,
            process,
            socket_cookie: header.socket_cookie,
            direction,
            transport: Transport::Udp,
            local: socket_addr(header.family, &header.local_addr, header.local_port),
            remote: socket_addr(header.family, &header.remote_addr, header.remote_port),
            response_number: (header.response_number > 0).then_some(header.response_number),
        }
    }

    /// A drop record as a dropped message, with its reason and place named.
    pub fn dropped(&mut self, raw: &RawDrop<'_>, names: &DropNames) -> Dropped {
        let header = &raw.header.event;
        let envelope = Envelope {
            transport: if header.protocol == PROTO_TCP {
                Transport::Tcp
            } else {
                Transport::Udp
            },
            ..self.envelope(header)
        };
        // A TCP segment that starts a message begins with its length.
        let (payload, size) = match envelope.transport {
            Transport::Tcp => (
                raw.payload.get(2..).unwrap_or_default(),
                header.payload_len.saturating_sub(2),
            ),
            Transport::Udp => (raw.payload, header.payload_len),
        };
        Dropped {
            message: Message::decoded(envelope, payload, size, self.keep_payloads),
            reason: names.reason(raw.header.reason),
            location: names.location(raw.header.location),
            netns: (raw.header.netns_inode != 0).then_some(u64::from(raw.header.netns_inode)),
        }
    }
}

/// The kernel's thread names as shared strings, each made once: a thread
/// sends many messages, and copying its name for each one shows up at full
/// rate.
#[derive(Default)]
pub struct ThreadNames {
    by_bytes: HashMap<[u8; dnstrace_common::COMM_LEN], Arc<str>, foldhash::fast::RandomState>,
}

impl ThreadNames {
    /// Past this many names (a host that spawns threads with numbered
    /// names), the cache starts over rather than grow.
    const MAX: usize = 4096;

    pub fn name(&mut self, comm: &[u8; dnstrace_common::COMM_LEN]) -> Arc<str> {
        if let Some(name) = self.by_bytes.get(comm) {
            return Arc::clone(name);
        }
        if self.by_bytes.len() >= Self::MAX {
            self.by_bytes.clear();
        }
        let name: Arc<str> = comm_to_string(comm).into();
        self.by_bytes.insert(*comm, Arc::clone(&name));
        name
    }
}

/// A DNS packet the kernel dropped (`skb:kfree_skb`).
#[derive(Clone, Debug)]
pub struct Dropped {
    /// The packet as a message: its process, addresses and DNS, with
    /// `direction` seen from the client (send: a query on its way out).
    pub message: Message,
    /// The kernel's name for the reason, such as `NETFILTER_DROP`.
    pub reason: String,
    /// The kernel function that dropped it, such as `nf_hook_slow+0x8d`.
    pub location: String,
    /// Inode of the network namespace it was dropped in.
    pub netns: Option<u64>,
}

/// Everything about a message but its bytes: where and when it was seen.
#[derive(Clone, Debug)]
pub struct Envelope {
    /// Nanoseconds since the Unix epoch.
    pub wall_time_ns: i128,
    /// CLOCK_MONOTONIC nanoseconds, for intervals.
    pub monotonic_ns: u64,
    pub process: Option<Process>,
    pub socket_cookie: u64,
    pub direction: Direction,
    pub transport: Transport,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// For a response reaching a UDP socket while reads are tracked: its
    /// number among the responses the socket received, from 1. The
    /// kernel's count of the socket's reads tells whether it was read.
    pub response_number: Option<u64>,
}

impl Message {
    /// Decodes `payload` (of a message `size` bytes long on the wire).
    pub fn decoded(envelope: Envelope, payload: &[u8], size: u32, keep_payload: bool) -> Self {
        Self {
            envelope,
            size,
            truncated_capture: (payload.len() as u32) < size,
            dns: decode::decode(payload, size as usize),
            payload: if keep_payload {
                payload.to_vec()
            } else {
                Vec::new()
            },
        }
    }
}

/// An address as the kernel copied it: words in memory order, so their
/// native bytes are the packet's.
fn socket_addr(family: u8, words: &[u32; 4], port: u16) -> SocketAddr {
    let ip = if family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::from(words[0].to_ne_bytes()))
    } else {
        let bytes: [u8; 16] = std::array::from_fn(|i| words[i / 4].to_ne_bytes()[i % 4]);
        IpAddr::V6(Ipv6Addr::from(bytes))
    };
    SocketAddr::new(ip, port)
}

fn comm_to_string(comm: &[u8]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    match std::str::from_utf8(&comm[..end]) {
        Ok(name) => name.to_owned(),
        Err(_) => String::from_utf8_lossy(&comm[..end]).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comm_stops_at_the_first_nul() {
        assert_eq!(comm_to_string(b"getent\0\0\0\0\0\0\0\0\0\0"), "getent");
        assert_eq!(comm_to_string(b"0123456789abcdef"), "0123456789abcdef");
    }

    #[test]
    fn a_thread_name_is_made_once_and_shared() {
        let mut names = ThreadNames::default();
        let getent = *b"getent\0\0\0\0\0\0\0\0\0\0";
        let first = names.name(&getent);
        assert_eq!(&*first, "getent");
        assert!(Arc::ptr_eq(&first, &names.name(&getent)));
        // Bytes that are not UTF-8 still give a name.
        assert_eq!(&*names.name(&[0xff; 16]), "\u{fffd}".repeat(16));
        // Past the cap it starts over, and still answers right.
        for n in 0..ThreadNames::MAX as u32 {
            let mut comm = [b'w'; 16];
            comm[..4].copy_from_slice(&n.to_le_bytes());
            comm[4] = b'x';
            names.name(&comm);
        }
        assert!(names.by_bytes.len() <= ThreadNames::MAX);
        assert_eq!(&*names.name(&getent), "getent");
    }

    #[test]
    fn addresses_keep_their_family() {
        // As the kernel reads them from the packet, in memory order.
        let word = |bytes: [u8; 4]| u32::from_ne_bytes(bytes);
        let v4 = [word([127, 0, 0, 53]), 0, 0, 0];
        assert_eq!(socket_addr(FAMILY_V4, &v4, 53).to_string(), "127.0.0.53:53");
        let v6 = [
            word([0x20, 0x01, 0x0d, 0xb8]),
            0,
            word([0, 0, 0, 0x01]),
            word([0, 0x02, 0, 0x35]),
        ];
        assert_eq!(
            socket_addr(dnstrace_common::FAMILY_V6, &v6, 53).to_string(),
            "[2001:db8::1:2:35]:53"
        );
    }
}
