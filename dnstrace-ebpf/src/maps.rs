//! Maps, load-time configuration and counters shared by every program.

use aya_ebpf::{
    Global,
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use dnstrace_common::{CaptureConfig, EventHeader, MAX_PAYLOAD, ReadCounts, SocketOwner};

#[unsafe(no_mangle)]
pub static CONFIG: Global<CaptureConfig> = Global::new(CaptureConfig::default_dns());

/// DNS messages out to userspace. Userspace sizes it at load time.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// Messages dropped because `EVENTS` was full, per CPU.
#[map]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Socket cookie to the process that last sent from it.
#[map]
pub static SOCKETS: LruHashMap<u64, SocketOwner> = LruHashMap::with_max_entries(65_536, 0);

/// Socket cookie to the responses it received and the reads that followed
/// (see `read`).
#[map]
pub static RESPONSES: LruHashMap<u64, ReadCounts> = LruHashMap::with_max_entries(65_536, 0);

/// tgids chosen with `--pid`.
#[map]
pub static SELECTED_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);

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

#[map]
pub static SCRATCH: PerCpuArray<EventBuffer> = PerCpuArray::with_max_entries(1, 0);

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
