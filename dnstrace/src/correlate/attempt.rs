//! One query and the response that matches it.

use std::{net::SocketAddr, sync::Arc};

use crate::{
    clock::UnalignedWallNs,
    decode::{Flags, HeaderSummary, Question},
    message::{Client, ConntrackChange, Message, Pod, Transport},
};

/// How an attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Still open: no response yet, or a response whose fate is not known.
    Pending,
    /// A response came and the process used it.
    Answered,
    /// No response within the process's resolver timeout, or the process
    /// moved on without one.
    Timeout,
    /// A response reached the process, and it asked the same question again,
    /// asked another server, or switched transport instead of using it.
    Rejected(Rejection),
    /// The response came after the process had moved on.
    Late,
    /// The process stopped waiting for this query for another reason than
    /// time: a copy sent to another server at once was answered (musl asks
    /// every server), or it moved to TCP at once after a truncated answer to
    /// the other query of its pair. Too soon to be any resolver's timeout.
    Superseded,
    /// A response that fits no query: wrong id, question or source.
    Mismatched(Mismatch),
    /// Not judged: messages of its lookup may have been lost.
    Incomplete,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    AskedAgain,
    NextServer,
    SwitchedToTcp,
    /// The same answer as one it had just thrown away, and then nothing:
    /// the process gave up.
    GaveUp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mismatch {
    /// The socket waits for other ids.
    Id,
    /// The id fits, the question does not.
    Question,
    /// The id and question fit, but it came from another address.
    Source,
    /// The socket has no query outstanding.
    Unsolicited,
}

impl Outcome {
    /// The stable name in JSON (docs/json.md).
    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Answered => "answered",
            Self::Timeout => "timeout",
            Self::Rejected(_) => "rejected",
            Self::Late => "late",
            Self::Superseded => "superseded",
            Self::Mismatched(_) => "mismatched",
            Self::Incomplete => "incomplete",
        }
    }

    pub fn detail(self) -> Option<&'static str> {
        match self {
            Self::Rejected(Rejection::AskedAgain) => Some("asked again"),
            Self::Rejected(Rejection::NextServer) => Some("asked the next server"),
            Self::Rejected(Rejection::SwitchedToTcp) => Some("switched to TCP"),
            Self::Rejected(Rejection::GaveUp) => Some("gave up after the same answer"),
            Self::Mismatched(Mismatch::Id) => Some("wrong id"),
            Self::Mismatched(Mismatch::Question) => Some("wrong question"),
            Self::Mismatched(Mismatch::Source) => Some("wrong source"),
            Self::Mismatched(Mismatch::Unsolicited) => Some("no query outstanding"),
            Self::Incomplete => Some("messages may have been lost"),
            _ => None,
        }
    }
}

/// What a response looked like: what resolvers judge an answer by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    pub rcode: u16,
    pub flags: Flags,
    pub answers: u16,
    pub authority: u16,
    pub additional: u16,
}

impl Shape {
    pub fn of(header: &HeaderSummary) -> Self {
        Self {
            rcode: header.rcode,
            flags: header.flags,
            answers: header.answers,
            authority: header.authority,
            additional: header.additional,
        }
    }

    /// An answer that gives the process addresses (or whatever it asked).
    pub fn is_positive(&self) -> bool {
        self.rcode == 0 && self.answers > 0
    }

    /// A server telling the client to go elsewhere.
    pub fn is_server_failure(&self) -> bool {
        matches!(self.rcode, 2 | 4 | 5)
    }

    /// An error instead of an answer: a server failure, or FORMERR (which
    /// Go and musl take as one too).
    pub fn is_error(&self) -> bool {
        self.is_server_failure() || self.rcode == 1
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Response {
    pub monotonic_ns: u64,
    pub wall_time_ns: i128,
    pub from: SocketAddr,
    pub shape: Shape,
    /// Its number among its socket's responses, when reads are tracked.
    pub number: Option<u64>,
    pub read: ReadState,
}

/// Whether the process read a response from its socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadState {
    /// Reads are not tracked: a kernel without the tracepoint, TCP, a
    /// trace read from a file, or a socket whose counts were evicted.
    Unknown,
    /// Numbered by the kernel, to be settled against its count of the
    /// socket's reads when the lookup is reported.
    Pending,
    Unread,
    Read,
}

impl ReadState {
    /// `true`, `false`, or `None` when not known: as JSON shows it.
    pub fn was_read(self) -> Option<bool> {
        match self {
            Self::Unknown | Self::Pending => None,
            Self::Unread => Some(false),
            Self::Read => Some(true),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Attempt {
    pub client: Client,
    /// The thread that sent the query, as the kernel tells it: over UDP
    /// the sending thread, over TCP the socket's first sender.
    pub tid: Option<u32>,
    pub socket_cookie: u64,
    pub transport: Transport,
    pub server: SocketAddr,
    /// The socket's own address, where the query left from: with `id` and
    /// the question, what the server's side of the exchange shows alike.
    pub local: SocketAddr,
    /// The pod whose process answered, when this node's trace shows it
    /// answering (`servers.rs`).
    pub server_pod: Option<Arc<Pod>>,
    pub question: Question,
    pub id: u16,
    /// When the query left; `None` for a response that matched no query.
    pub sent_monotonic_ns: Option<u64>,
    /// When the query left, by the wall clock ([`Attempt::sent_wall_time_ns`]).
    pub sent_wall: Option<UnalignedWallNs>,
    /// Boxed: most of the attempts held at a time wait for theirs, and
    /// inline it took a quarter of each.
    pub response: Option<Box<Response>>,
    pub outcome: Outcome,
    /// Set when the process asked about another name after this response:
    /// a repeat of this question is then a new lookup, not a rejection.
    pub moved_on: bool,
    /// When the response came, or when the process gave up waiting.
    pub ended_monotonic_ns: Option<u64>,
    /// The kernel dropped the query or its response (`skb:kfree_skb`).
    pub drop: Option<Box<KernelDrop>>,
}

/// A packet of an attempt that the kernel dropped, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelDrop {
    pub packet: DroppedPacket,
    /// The kernel's drop reason, such as `NETFILTER_DROP`.
    pub reason: Arc<str>,
    /// The kernel function that dropped it, `symbol+0xoffset`.
    pub location: Arc<str>,
    /// From the query's sending to the drop.
    pub after_ns: u64,
    /// How conntrack's failure counters moved, for a netfilter drop;
    /// boxed, as most drops have none and inline they took a third.
    pub conntrack: Option<Box<ConntrackChange>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DroppedPacket {
    Query,
    Response,
}

impl DroppedPacket {
    /// The stable name in JSON (docs/json.md).
    pub fn name(self) -> &'static str {
        match self {
            Self::Query => "query",
            Self::Response => "response",
        }
    }
}

impl Attempt {
    /// An attempt by `client` with `question` and `id`, on the socket and
    /// between the addresses `message` went by: pending, nothing sent or
    /// received yet.
    pub fn of_message(message: &Message, client: Client, question: Question, id: u16) -> Self {
        Self {
            client,
            tid: None,
            socket_cookie: message.envelope.socket_cookie,
            transport: message.envelope.transport,
            server: message.envelope.remote,
            local: message.envelope.local,
            server_pod: None,
            question,
            id,
            sent_monotonic_ns: None,
            sent_wall: None,
            response: None,
            outcome: Outcome::Pending,
            moved_on: false,
            ended_monotonic_ns: None,
            drop: None,
        }
    }

    /// Takes its response: one that comes after the process gave up on it
    /// is late.
    pub fn receive(&mut self, response: Response) {
        self.outcome = match self.outcome {
            Outcome::Timeout => Outcome::Late,
            outcome => outcome,
        };
        if self.outcome == Outcome::Pending {
            self.ended_monotonic_ns = Some(response.monotonic_ns);
        }
        self.response = Some(Box::new(response));
    }

    /// When the query left, by the wall clock.
    pub fn sent_wall_time_ns(&self) -> Option<i128> {
        self.sent_wall.map(UnalignedWallNs::get)
    }

    /// Query to response, or to the moment the process gave up.
    pub fn latency_ns(&self) -> Option<u64> {
        Some(
            self.ended_monotonic_ns?
                .saturating_sub(self.sent_monotonic_ns?),
        )
    }
}
