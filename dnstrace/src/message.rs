//! The event model: one DNS message seen on one socket of one process,
//! with what the enrich stage learned about that process. Every output
//! renders this; correlation builds on it. A leaf: it imports no stage.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, LazyLock},
};

use crate::{
    decode::{self, DnsSummary},
    resolver::ResolverContext,
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
    /// What the enrich stage learned about the process; shared by all of
    /// its messages.
    pub facts: Arc<Facts>,
}

/// What is known about a process besides what the kernel said with each
/// message: its resolver and its container. Gathered off the event thread
/// by `enrich`, or read back from a file by `analyze`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    pub resolver: Arc<ResolverContext>,
    /// `None` for a process in no container (or not known to be in one).
    pub container: Option<Container>,
    /// The Kubernetes pod the container belongs to.
    pub pod: Option<Pod>,
}

impl Facts {
    /// Nothing known: one shared value, as most messages of a file and
    /// every message of an unknown process carry it.
    pub fn unknown() -> Arc<Self> {
        static UNKNOWN: LazyLock<Arc<Facts>> = LazyLock::new(Arc::default);
        Arc::clone(&UNKNOWN)
    }

    /// `namespace/pod/container`, when the pod's name is known.
    pub fn pod_path(&self) -> Option<String> {
        let pod = self.pod.as_ref()?;
        let name = pod.name.as_deref()?;
        let namespace = pod.namespace.as_deref().unwrap_or("?");
        let container = self
            .container
            .as_ref()
            .and_then(|c| c.name.as_deref())
            .unwrap_or("?");
        Some(format!("{namespace}/{name}/{container}"))
    }
}

/// A container, as its cgroup and its runtime's state tell it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    /// The runtime's id (64 hex digits for containerd, CRI-O, Docker, podman).
    pub id: String,
    pub runtime: Option<Runtime>,
    /// From the runtime's state; `None` when it could not be read.
    pub name: Option<String>,
    pub image: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Runtime {
    Containerd,
    CriO,
    Docker,
    Podman,
}

impl Runtime {
    pub const ALL: [Self; 4] = [Self::Containerd, Self::CriO, Self::Docker, Self::Podman];

    pub fn name(self) -> &'static str {
        match self {
            Self::Containerd => "containerd",
            Self::CriO => "cri-o",
            Self::Docker => "docker",
            Self::Podman => "podman",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|runtime| runtime.name() == name)
    }
}

/// A Kubernetes pod, from its container's runtime state (its uid also from
/// the cgroup path).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub uid: Option<String>,
}

impl Pod {
    /// `namespace/name`, as the text output names a pod.
    pub fn path(&self) -> String {
        format!(
            "{}/{}",
            self.namespace.as_deref().unwrap_or("?"),
            self.name.as_deref().unwrap_or("?")
        )
    }
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
    /// What is known about the process; `None` for an address.
    pub facts: Option<Arc<Facts>>,
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

    /// How a person knows the process: `namespace/pod/container` in a
    /// pod, its thread name otherwise.
    pub fn name(&self) -> String {
        self.facts
            .as_deref()
            .and_then(Facts::pod_path)
            .unwrap_or_else(|| self.comm.as_deref().unwrap_or("").to_string())
    }
}

/// `getent (pid 4242)`, `shop/web-7f9c4-x2k8p/app (pid 4242)` for a
/// process in a pod, or `client 10.0.0.5`: how diagnoses name a client.
impl std::fmt::Display for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.id {
            ClientId::Pid(pid) => write!(f, "{} (pid {pid})", self.name()),
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
            facts: self
                .envelope
                .process
                .as_ref()
                .map(|process| process.facts.clone()),
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

/// A DNS packet the kernel dropped (`skb:kfree_skb`).
#[derive(Clone, Debug)]
pub struct Dropped {
    /// The packet as a message: its process, addresses and DNS, with
    /// `direction` seen from the client (send: a query on its way out).
    pub message: Message,
    /// The kernel's name for the reason, such as `NETFILTER_DROP`.
    pub reason: Arc<str>,
    /// The kernel function that dropped it, such as `nf_hook_slow+0x8d`.
    pub location: Arc<str>,
    /// Inode of the network namespace it was dropped in.
    pub netns: Option<u64>,
    /// For a netfilter drop: how conntrack's failure counters in that
    /// namespace moved since dnstrace started (or first looked there).
    pub conntrack: Option<ConntrackChange>,
}

/// Growth of conntrack's `insert_failed` and `drop` counters
/// (/proc/net/stat/nf_conntrack, summed over CPUs): when they grow with a
/// netfilter drop, conntrack failed to confirm the packet's entry, the race
/// between two packets of one new UDP flow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConntrackChange {
    pub insert_failed: u64,
    pub drop: u64,
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
