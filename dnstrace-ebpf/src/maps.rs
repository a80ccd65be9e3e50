//! Maps, load-time configuration and counters shared by every program.

use aya_ebpf::{
    Global,
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use dnstrace_common::{
    CaptureConfig, DROP_PAYLOAD, DropConfig, DropHeader, EventHeader, MAX_PAYLOAD,
    MAX_SELECTED_CGROUPS, ReadCounts, SocketOwner,
};

#[unsafe(no_mangle)]
pub static CONFIG: Global<CaptureConfig> = Global::new(CaptureConfig::default_dns());

/// Kernel struct offsets for the drop program, from the running kernel's
/// BTF (see `drop`).
#[unsafe(no_mangle)]
pub static DROP_CONFIG: Global<DropConfig> = Global::new(DropConfig {
    skb_head: 0,
    skb_headers: 0,
    protocol_shift: 0,
    network_shift: 0,
    skb_tail: 0,
    skb_sk: 0,
    skb_dev: 0,
    sock_cookie: 0,
    sock_net: 0,
    dev_net: 0,
    net_inum: 0,
    // Not zero, so the global lands in read-only data with the rest.
    consumed_reason: u32::MAX,
    has_rx_sk: 0,
    _padding: 0,
});

/// See `dnstrace_common::names::TCP_MESSAGES_PER_SEGMENT`.
#[unsafe(no_mangle)]
pub static TCP_MESSAGES_PER_SEGMENT: Global<u32> = Global::new(1);

/// DNS messages out to userspace. Userspace sizes it at load time.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// Messages dropped because `EVENTS` was full, per CPU.
#[map]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// TCP streams whose framing was given up (see `tcp`), per CPU.
#[map]
pub static UNFRAMED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Socket cookie to the process that last sent from it.
#[map]
pub static SOCKETS: LruHashMap<u64, SocketOwner> = LruHashMap::with_max_entries(65_536, 0);

/// Socket cookie to the responses it received and the reads that followed
/// (see `read`).
#[map]
pub static RESPONSES: LruHashMap<u64, ReadCounts> = LruHashMap::with_max_entries(65_536, 0);

/// One direction of a TCP socket.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct StreamKey {
    pub cookie: u64,
    /// `Direction` as a word, so the key has no padding.
    pub direction: u64,
}

/// Where a TCP stream's next DNS message begins (see `tcp`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Stream {
    /// Sequence number of the byte `wait` waits for.
    pub next: u32,
    /// The message's length when the body is awaited; the prefix's first
    /// byte when its second is.
    pub len: u16,
    /// `tcp::WAIT_*`.
    pub wait: u8,
    pub _padding: u8,
}

/// TCP streams being framed. A stream evicted mid-message starts again at
/// its next segment as if a message began there.
#[map]
pub static TCP_STREAMS: LruHashMap<StreamKey, Stream> = LruHashMap::with_max_entries(65_536, 0);

/// tgids chosen with `--pid`.
#[map]
pub static SELECTED_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);

/// Cgroup ids chosen with `--pod`, `--k8s-namespace` and `--container`
/// (a pod's or a container's); userspace adds them as pods start.
#[map]
pub static SELECTED_CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(MAX_SELECTED_CGROUPS, 0);

/// Where the pod filter's ancestor walk keeps the cgroup id it looks up:
/// a key in map memory takes none of the stack, which the egress program
/// and the filter's function share (512 bytes for both).
#[map]
pub static TREE_KEY: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// One record under construction: too big for the 512-byte stack.
#[repr(C)]
pub struct EventBuffer {
    pub header: EventHeader,
    pub payload: [u8; MAX_PAYLOAD],
    /// Bytes of records this CPU has written to the ring, and how many
    /// waited in it when it last looked: for the wakeups (see `emit`).
    pub written: u64,
    pub waiting: u64,
}

/// Records under construction, one per nesting level: an ingress program
/// in softirq can interrupt an egress program on the same CPU, and must
/// not write into the record that one is building.
#[map]
pub static SCRATCH: PerCpuArray<EventBuffer> = PerCpuArray::with_max_entries(SCRATCH_LEVELS, 0);

/// Process context, and a softirq interrupting it.
pub const SCRATCH_LEVELS: u32 = 2;

/// A drop record under construction. One per CPU is enough: a tracing
/// program never interrupts itself (the kernel skips the nested run).
#[repr(C)]
pub struct DropBuffer {
    pub header: DropHeader,
    pub payload: [u8; DROP_PAYLOAD],
}

#[map]
pub static DROP_SCRATCH: PerCpuArray<DropBuffer> = PerCpuArray::with_max_entries(1, 0);

/// How many programs on this CPU are building a record now: the next one
/// takes the slot at that level. Plain loads and stores are enough: a
/// program that interrupts another on the same CPU runs to its end before
/// the other goes on, and leaves the count as it found it.
#[map]
pub static NESTING: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Adds `value` to `*counter` in one instruction (BPF_ATOMIC): a program
/// that interrupts this one on the same CPU, or runs on another CPU, never
/// loses the add. Rust offers no atomic add on this target (it lacks
/// compare-and-swap), hence the intrinsic; the old value is not returned,
/// as fetching it needs BPF CPU v3.
///
/// # Safety
/// `counter` must point at a live map value.
#[inline(always)]
pub unsafe fn add(counter: *mut u64, value: u64) {
    use core::intrinsics::{AtomicOrdering, atomic_xadd};
    // SAFETY: the caller's pointer is to a live map value.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, value) };
}

/// The socket's counts, created at the first response, when reads are
/// tracked.
#[inline(always)]
pub fn response_counts(cookie: u64) -> Option<*mut ReadCounts> {
    if CONFIG.load().track_reads == 0 {
        return None;
    }
    if let Some(counts) = RESPONSES.get_ptr_mut(&cookie) {
        return Some(counts);
    }
    // A full LRU map evicts its oldest entry, so this cannot fail for lack
    // of room.
    let _ = RESPONSES.insert(&cookie, &ReadCounts::default(), 0);
    RESPONSES.get_ptr_mut(&cookie)
}
