//! One ring buffer record → header and payload, checked against its
//! length → messages (decode).

use std::{
    collections::HashMap,
    mem::size_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use dnstrace_common::{
    DROP_PAYLOAD, DropHeader, EVENT_OWNER_KNOWN, EventHeader, FAMILY_V4, Hook, MAX_PAYLOAD,
    PROTO_TCP,
};

use super::DropNames;
use crate::{
    clock::WallClock,
    message::{Direction, Dropped, Envelope, Facts, Message, Process, Transport},
};

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

/// Turns the kernel's records into messages, keeping what one record
/// shares with the next: the clock, thread names. The network
/// namespace and everything else about the process is left to `enrich`.
pub struct RecordDecoder {
    pub clock: WallClock,
    pub thread_names: ThreadNames,
    /// Whether an output writes payloads, so messages must keep them.
    pub keep_payloads: bool,
}

impl RecordDecoder {
    /// The record's message. The kernel frames TCP
    /// (dnstrace-ebpf/src/tcp.rs): a TCP record is one message too, without
    /// its length prefix.
    pub fn message(&mut self, raw: &RawMessage<'_>) -> Message {
        let header = &raw.header;
        let envelope = self.envelope(header);
        Message::decoded(
            envelope,
            raw.payload,
            header.payload_len,
            self.keep_payloads,
        )
    }

    /// Where, when and by whom a record was sent or received.
    fn envelope(&mut self, header: &EventHeader) -> Envelope {
        let process = (header.flags & EVENT_OWNER_KNOWN != 0).then(|| Process {
            pid: header.pid,
            tid: header.tid,
            comm: self.thread_names.name(&header.comm.0),
            uid: header.uid,
            cgroup_id: header.cgroup_id,
            netns: None,
            facts: Facts::unknown(),
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
            transport: if header.protocol == PROTO_TCP {
                Transport::Tcp
            } else {
                Transport::Udp
            },
            local: socket_addr(header.family, &header.local_addr, header.local_port),
            remote: socket_addr(header.family, &header.remote_addr, header.remote_port),
            response_number: (header.response_number > 0).then_some(header.response_number),
        }
    }

    /// A drop record as a dropped message, with its reason and place named.
    pub fn dropped(&mut self, raw: &RawDrop<'_>, names: &mut DropNames) -> Dropped {
        let header = &raw.header.event;
        let envelope = self.envelope(header);
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
            conntrack: None,
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
