//! One ring buffer record → header and payload, checked against its length.

use std::mem::size_of;

use dnstrace_common::{EventHeader, MAX_PAYLOAD};

/// A record as the kernel wrote it.
pub struct RawMessage<'a> {
    pub header: EventHeader,
    pub payload: &'a [u8],
}

/// Splits a record; `None` when it is shorter than its header claims, which
/// would mean the two halves of dnstrace disagree on the layout.
pub fn parse_record(record: &[u8]) -> Option<RawMessage<'_>> {
    let header_len = size_of::<EventHeader>();
    if record.len() < header_len {
        return None;
    }
    // SAFETY: the record holds at least size_of::<EventHeader>() bytes, the
    // type is plain `repr(C)` data valid for any bit pattern, and
    // read_unaligned does not need the ring's alignment.
    let header: EventHeader = unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) };
    let captured = header.captured_len as usize;
    if captured > MAX_PAYLOAD || record.len() < header_len + captured {
        return None;
    }
    Some(RawMessage {
        header,
        payload: &record[header_len..header_len + captured],
    })
}
