//! One ring buffer record → header and payload, checked against its length.

use std::mem::size_of;

use dnstrace_common::{DROP_PAYLOAD, DropHeader, EventHeader, Hook, MAX_PAYLOAD};

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

/// A drop record as the kernel wrote it.
pub struct RawDrop<'a> {
    pub header: DropHeader,
    pub payload: &'a [u8],
}

/// Whether a record is a drop record rather than a message.
pub fn is_drop(record: &[u8]) -> bool {
    let hook = std::mem::offset_of!(EventHeader, hook);
    record.get(hook) == Some(&(Hook::KfreeSkb as u8))
}

/// Splits a drop record, as `parse_record` a message.
pub fn parse_drop(record: &[u8]) -> Option<RawDrop<'_>> {
    let header_len = size_of::<DropHeader>();
    if record.len() < header_len {
        return None;
    }
    // SAFETY: as in parse_record, for DropHeader.
    let header: DropHeader = unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) };
    let captured = header.event.captured_len as usize;
    if captured > DROP_PAYLOAD || record.len() < header_len + captured {
        return None;
    }
    Some(RawDrop {
        header,
        payload: &record[header_len..header_len + captured],
    })
}
