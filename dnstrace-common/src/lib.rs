//! Types shared by dnstrace's kernel programs and its userspace agent.
//!
//! Everything here is `#[repr(C)]` plain data with a layout both sides agree
//! on. The kernel half writes [`EventHeader`] followed by the captured DNS
//! payload into one ring buffer record; the userspace half reads it back.
#![no_std]

/// Bytes of DNS payload copied per message. At least 1,232 so that an EDNS
/// answer at the recommended UDP size is whole; a power of two so the verifier
/// can bound the copy with a mask.
pub const MAX_PAYLOAD: usize = 2048;

/// The kernel wakes the reader once about this many bytes wait in the ring;
/// below it, the reader finds them on its next poll (`POLL_INTERVAL_MS`).
/// Small next to the ring, so a burst never fills it before the reader
/// wakes.
pub const WAKEUP_BYTES: u64 = 256 * 1024;

/// Each CPU looks at how much waits in the ring only each time it has
/// written another this many bytes, as looking reads cache lines that every
/// CPU writes; it wakes the reader when what waits has crossed another
/// multiple of `WAKEUP_BYTES` since its last look. (Waking at every look
/// while much waits would cost an interrupt each while the reader is awake
/// but behind.) A power of two, so the division is a shift.
pub const WAKEUP_CHECK_BYTES: u64 = 16 * 1024;

/// How often userspace drains the ring without being woken, in ms: the
/// longest a message waits before it is shown.
pub const POLL_INTERVAL_MS: u64 = 20;

/// How many DNS ports `--port` may name.
pub const MAX_PORTS: usize = 8;

/// Length of a task's comm, as the kernel defines it.
pub const COMM_LEN: usize = 16;

/// A task's name, NUL padded. Aligned like the words around it so that the
/// kernel side copies it in two moves rather than sixteen.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Comm(pub [u8; COMM_LEN]);

impl Comm {
    /// Whether the name is `other`, compared as two words: comparing the
    /// arrays would call memcmp, a BPF function whose stack adds to the
    /// caller's, which is short.
    #[inline(always)]
    pub fn is(&self, other: &[u8; COMM_LEN]) -> bool {
        let words = |bytes: &[u8; COMM_LEN]| {
            let (low, high) = bytes.split_at(8);
            let word = |half: &[u8]| {
                let mut word = [0; 8];
                word.copy_from_slice(half);
                u64::from_ne_bytes(word)
            };
            (word(low), word(high))
        };
        words(&self.0) == words(other)
    }
}

/// Which way a message went, seen from the process that owns the socket.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Send = 0,
    Recv = 1,
}

/// Transport protocol numbers, as in the IP header.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Address family of `local_addr`/`remote_addr`.
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// Which kernel program produced an event.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    CgroupSkbEgress = 0,
    CgroupSkbIngress = 1,
    /// A packet the kernel dropped (`skb:kfree_skb`): the record is a
    /// [`DropHeader`] and its payload.
    KfreeSkb = 2,
}

/// Per client UDP socket, how many DNS responses arrived and how many the
/// process read: ingress counts the first and stamps each response with it
/// ([`EventHeader::response_number`]); the read program counts the second,
/// only while it is behind the first. Userspace reads the map to tell
/// which responses were read: a socket hands out datagrams in order, so
/// response N was read once `read >= N`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ReadCounts {
    pub received: u64,
    pub read: u64,
}

/// [`EventHeader::flags`]: the process fields are known (from the sending task,
/// or from the socket's owner recorded earlier).
pub const EVENT_OWNER_KNOWN: u8 = 1 << 0;
/// [`EventHeader::flags`]: the process fields came from the socket's recorded
/// owner rather than from the current task.
pub const EVENT_OWNER_FROM_SOCKET: u8 = 1 << 1;

/// Fixed part of every ring buffer record; `captured_len` payload bytes follow.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    /// `bpf_ktime_get_ns`: CLOCK_MONOTONIC.
    pub timestamp_ns: u64,
    pub socket_cookie: u64,
    pub cgroup_id: u64,
    /// `bpf_get_netns_cookie`, or 0 where the kernel cannot give it.
    pub netns_cookie: u64,
    /// For a response reaching a UDP socket while reads are tracked: its
    /// number among the responses the socket received, from 1 (see
    /// [`ReadCounts`]). 0 otherwise.
    pub response_number: u64,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    /// Length of the DNS message on the wire.
    pub payload_len: u32,
    /// How many payload bytes follow this header (at most [`MAX_PAYLOAD`]).
    pub captured_len: u32,
    pub local_port: u16,
    pub remote_port: u16,
    /// As in the packet (network byte order), in words; IPv4 addresses use
    /// the first.
    pub local_addr: [u32; 4],
    pub remote_addr: [u32; 4],
    pub comm: Comm,
    pub family: u8,
    pub direction: u8,
    pub protocol: u8,
    pub hook: u8,
    pub flags: u8,
    pub _padding: [u8; 3],
}

/// Bytes of a dropped DNS message copied: the header and the question
/// (at most 12 + 255 + 4 bytes) fit. A power of two, for the verifier.
pub const DROP_PAYLOAD: usize = 512;

/// A DNS packet the kernel dropped: the fields of a message (with `hook`
/// [`Hook::KfreeSkb`]; local and remote seen from the client, the side
/// whose port is not a DNS port), then the drop's own; `captured_len`
/// payload bytes follow.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DropHeader {
    pub event: EventHeader,
    /// The kernel address that freed the packet (the tracepoint's
    /// `location`).
    pub location: u64,
    /// The kernel's `enum skb_drop_reason` value.
    pub reason: u32,
    /// Inode of the network namespace the packet was dropped in (of its
    /// socket, else of its device); 0 when neither is known.
    pub netns_inode: u32,
}

/// Offsets into the kernel's structs for the drop program, looked up in
/// the running kernel's BTF at load time: they differ between kernels,
/// and aya's Rust programs have no CO-RE relocations.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DropConfig {
    /// `sk_buff.head`.
    pub skb_head: u32,
    /// Start of 8 bytes of `sk_buff` holding `protocol` and
    /// `network_header`, read at once; each field's place in them, in
    /// bits from the low end.
    pub skb_headers: u32,
    pub protocol_shift: u32,
    pub network_shift: u32,
    /// `sk_buff.tail`: where the linear data ends, from `head`.
    pub skb_tail: u32,
    pub skb_sk: u32,
    pub skb_dev: u32,
    /// `sock_common.skc_cookie` and `.skc_net`, which request and
    /// time-wait sockets share with full ones.
    pub sock_cookie: u32,
    pub sock_net: u32,
    /// `net_device.nd_net`.
    pub dev_net: u32,
    /// `net.ns.inum`.
    pub net_inum: u32,
    /// `SKB_CONSUMED`, a packet freed after use rather than dropped (the
    /// kernels that have it send it to another tracepoint; u32::MAX when
    /// absent).
    pub consumed_reason: u32,
    /// 1 when the tracepoint passes the receiving socket (`rx_sk`, 6.13
    /// and later) as a fourth argument.
    pub has_rx_sk: u32,
    pub _padding: u32,
}

/// Who owns a socket: recorded when the socket sends, looked up when it
/// receives, because a receive runs in the sender's context, not the owner's.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SocketOwner {
    pub cgroup_id: u64,
    pub netns_cookie: u64,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    /// 1 when the owner passed the process filters. An owner that did not
    /// may have only its pid, tid and namespace filled in: nothing else of it
    /// is ever reported.
    pub selected: u32,
    /// Sends from the socket by this thread since its name, uid and cgroup
    /// were last asked of the kernel; at [`OWNER_REFRESH_SENDS`] they are
    /// asked again (see `dnstrace-ebpf/src/owner.rs`).
    pub sends: u32,
    pub _padding: u32,
    pub comm: Comm,
}

/// Load-time configuration, written into the program's read-only data.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CaptureConfig {
    /// DNS ports; entries past `port_count` are ignored.
    pub ports: [u16; MAX_PORTS],
    pub port_count: u32,
    /// `FILTER_*` bits.
    pub filters: u32,
    pub cgroup_id: u64,
    pub netns_cookie: u64,
    /// Process name to select, NUL padded, when `FILTER_COMM` is set.
    pub comm: [u8; COMM_LEN],
    /// 1 where cgroup_skb programs may call the current-task helpers
    /// (pid, comm, cgroup, netns). Debian 6.1 refuses them; the verifier
    /// prunes the dead branch because this value is read-only.
    pub skb_task_helpers: u32,
    /// 1 when the read program will be attached, so ingress counts
    /// responses for it.
    pub track_reads: u32,
}

/// Only processes whose tgid is in the `SELECTED_PIDS` map, or whose comm
/// matches `comm` (either selector admits a process).
pub const FILTER_PID: u32 = 1 << 0;
pub const FILTER_COMM: u32 = 1 << 1;
/// Only this cgroup (v2 id).
pub const FILTER_CGROUP: u32 = 1 << 2;
/// Only this network namespace (by netns cookie).
pub const FILTER_NETNS: u32 = 1 << 3;
/// Only processes whose cgroup, or one of its ancestors, is in the
/// `SELECTED_CGROUPS` map (pods and containers, which userspace keeps up to
/// date as they come and go).
pub const FILTER_CGROUP_TREE: u32 = 1 << 4;

/// Ancestors of a process's cgroup looked at for `FILTER_CGROUP_TREE`: a
/// Kubernetes container sits 4 levels down with the systemd driver
/// (`kubepods.slice/<qos>.slice/<pod>.slice/<container>.scope`).
pub const MAX_CGROUP_LEVELS: i32 = 16;

/// Cgroups `SELECTED_CGROUPS` can hold.
pub const MAX_SELECTED_CGROUPS: u32 = 8192;

impl CaptureConfig {
    pub const fn default_dns() -> Self {
        let mut ports = [0; MAX_PORTS];
        ports[0] = 53;
        Self {
            ports,
            port_count: 1,
            filters: 0,
            cgroup_id: 0,
            netns_cookie: 0,
            comm: [0; COMM_LEN],
            skb_task_helpers: 1,
            track_reads: 0,
        }
    }

    /// Whether the filters select a socket's owner. `pid_selected` says
    /// whether its tgid is among the `--pid` choices, `tree_selected`
    /// whether its cgroup or an ancestor is in `SELECTED_CGROUPS` (map
    /// lookups on the kernel side). Process selectors (pid, comm) admit a
    /// process if either matches; the cgroup, cgroup tree and netns filters
    /// must all hold.
    #[inline(always)]
    pub fn selects(&self, owner: &SocketOwner, pid_selected: bool, tree_selected: bool) -> bool {
        let filters = self.filters;
        if filters & (FILTER_PID | FILTER_COMM) != 0 {
            let by_pid = filters & FILTER_PID != 0 && pid_selected;
            let by_comm = filters & FILTER_COMM != 0 && owner.comm.is(&self.comm);
            if !by_pid && !by_comm {
                return false;
            }
        }
        if filters & FILTER_CGROUP != 0 && owner.cgroup_id != self.cgroup_id {
            return false;
        }
        if filters & FILTER_NETNS != 0 && owner.netns_cookie != self.netns_cookie {
            return false;
        }
        if filters & FILTER_CGROUP_TREE != 0 && !tree_selected {
            return false;
        }
        true
    }

    /// Whether `port` is one of the configured DNS ports. A fixed-bound loop,
    /// so the kernel half can use it too; it stops at `port_count`, as this
    /// runs twice for every packet.
    #[inline(always)]
    pub fn is_dns_port(&self, port: u16) -> bool {
        let mut i = 0;
        while i < MAX_PORTS && (i as u32) < self.port_count {
            if self.ports[i] == port {
                return true;
            }
            i += 1;
        }
        false
    }
}

/// The most DNS messages the kernel frames from one TCP segment, where the
/// verifier allows more than one (see `names::TCP_MESSAGES_PER_SEGMENT`).
pub const MAX_TCP_MESSAGES_PER_SEGMENT: u32 = 4;

/// How many sends from one socket by one thread share one asking of the
/// kernel for the thread's name, uid and cgroup ([`SocketOwner::sends`]).
pub const OWNER_REFRESH_SENDS: u32 = 64;

/// Names shared by both halves, so a rename cannot split them.
pub mod names {
    pub const CONFIG: &str = "CONFIG";
    /// A read-only global of its own (the config is copied to the stack,
    /// which is short): DNS messages framed from one TCP segment; a segment
    /// with more gives its stream up. Each costs the verifier a walk through
    /// the code that emits one, which an older verifier (Debian's 6.1)
    /// cannot afford more than once.
    pub const TCP_MESSAGES_PER_SEGMENT: &str = "TCP_MESSAGES_PER_SEGMENT";
    pub const EVENTS: &str = "EVENTS";
    pub const LOST: &str = "LOST";
    pub const UNFRAMED: &str = "UNFRAMED";
    pub const SOCKETS: &str = "SOCKETS";
    pub const SELECTED_PIDS: &str = "SELECTED_PIDS";
    pub const SELECTED_CGROUPS: &str = "SELECTED_CGROUPS";
    pub const RESPONSES: &str = "RESPONSES";
    pub const DROP_CONFIG: &str = "DROP_CONFIG";
    pub const KFREE_SKB: &str = "dns_kfree_skb";
    /// The kernel tracepoint the drop program attaches to.
    pub const KFREE_SKB_TRACEPOINT: &str = "kfree_skb";
    pub const SKB_EGRESS: &str = "dns_skb_egress";
    pub const SKB_INGRESS: &str = "dns_skb_ingress";
    pub const CONNECT4: &str = "dns_connect4";
    pub const CONNECT6: &str = "dns_connect6";
    pub const SENDMSG4: &str = "dns_sendmsg4";
    pub const SENDMSG6: &str = "dns_sendmsg6";
    pub const SOCK_RECV_LENGTH: &str = "dns_sock_recv_length";
    /// The kernel tracepoint the read program attaches to (6.3 and later).
    pub const SOCK_RECV_LENGTH_TRACEPOINT: &str = "sock_recv_length";
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain `repr(C)` data with explicit padding fields; every bit
    // pattern is valid.
    unsafe impl aya::Pod for super::EventHeader {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SocketOwner {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CaptureConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ReadCounts {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DropConfig {}
}
