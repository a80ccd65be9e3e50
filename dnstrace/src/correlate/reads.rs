//! Which responses a process read, settled when its lookup is reported.
//! The kernel numbers each response reaching a client's UDP socket and
//! counts the socket's reads (`dnstrace-ebpf/src/read.rs`); a socket hands
//! out datagrams in the order they came, so response N was read once the
//! count reaches N.

use super::{SETTLE_NS, attempt::ReadState, lookup::Lookup};

/// The kernel's count of a socket's reads.
pub trait ReadCounter {
    /// The socket's reads, or a count from before when that already
    /// reaches `number` (counts only grow); `None` when the socket has no
    /// counts: never numbered, or evicted.
    fn reads(&mut self, socket_cookie: u64, number: u64) -> Option<u64>;
}

/// Decides the read state of each numbered response in `lookup` at `now`
/// (CLOCK_MONOTONIC ns); without counts (`None`), nothing can be known. A
/// response younger than `SETTLE_NS` that was not read yet (a lookup
/// reported early: at exit, or to make room) is not known either: its
/// process may not have had the time.
pub fn settle(lookup: &mut Lookup, mut counts: Option<&mut (dyn ReadCounter + '_)>, now: u64) {
    for attempt in &mut lookup.attempts {
        let cookie = attempt.socket_cookie;
        let Some(response) = attempt.response.as_mut() else {
            continue;
        };
        let (Some(number), ReadState::Pending) = (response.number, response.read) else {
            continue;
        };
        let reads = counts.as_deref_mut().and_then(|c| c.reads(cookie, number));
        let settled = now.saturating_sub(response.monotonic_ns) >= SETTLE_NS;
        response.read = match reads {
            Some(reads) if reads >= number => ReadState::Read,
            Some(_) if settled => ReadState::Unread,
            _ => ReadState::Unknown,
        };
    }
}
