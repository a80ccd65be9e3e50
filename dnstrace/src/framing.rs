//! DNS over TCP in a packet capture (`analyze`): each message is prefixed
//! by its length, and one message may span several segments. A capture
//! hands over segments; this finds where messages start. (Live capture is
//! framed in the kernel, by sequence number: dnstrace-ebpf/src/tcp.rs.)

use std::collections::HashMap;

/// Where one DNS message sits in a captured segment.
#[derive(Debug, PartialEq, Eq)]
pub struct Framed<'a> {
    /// The message's bytes present in this segment.
    pub bytes: &'a [u8],
    /// The message's full length, from its prefix.
    pub len: u32,
}

/// Bytes still to come of the message each stream is in, per socket and
/// direction.
#[derive(Default)]
pub struct TcpStreams {
    remaining: HashMap<(u64, bool), u32>,
}

/// Streams tracked at once; a full table is cleared (a stream in the middle
/// of a message then shows one undecodable message).
const MAX_STREAMS: usize = 65_536;

impl TcpStreams {
    /// The messages that start in this segment, in order; none for a
    /// segment that only continues one. glibc writes its A and AAAA queries
    /// in one segment. `segment_len` is the segment's data length,
    /// `captured` its first bytes.
    pub fn frame<'a>(
        &mut self,
        cookie: u64,
        sending: bool,
        segment_len: u32,
        captured: &'a [u8],
    ) -> Vec<Framed<'a>> {
        let key = (cookie, sending);
        let mut offset = 0u32;
        if let Some(remaining) = self.remaining.remove(&key) {
            if segment_len < remaining {
                self.remaining.insert(key, remaining - segment_len);
                return Vec::new();
            }
            offset = remaining;
        }
        let mut messages = Vec::new();
        while offset + 2 <= segment_len {
            let start = offset as usize;
            // A prefix past the captured bytes cannot be read: the stream is
            // lost until a segment starts with a message again.
            let Some(prefix) = captured.get(start..start + 2) else {
                break;
            };
            let len = u32::from(u16::from_be_bytes([prefix[0], prefix[1]]));
            let body = (start + 2).min(captured.len());
            let end = (start + 2 + len as usize).min(captured.len());
            messages.push(Framed {
                bytes: &captured[body..end],
                len,
            });
            let in_segment = segment_len - offset - 2;
            if len > in_segment {
                if self.remaining.len() >= MAX_STREAMS {
                    self.remaining.clear();
                }
                self.remaining.insert(key, len - in_segment);
                break;
            }
            offset += 2 + len;
        }
        messages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_in_one_segment_loses_its_prefix() {
        let mut streams = TcpStreams::default();
        let segment = [0, 3, b'a', b'b', b'c'];
        let framed = streams.frame(1, true, 5, &segment);
        assert_eq!(
            framed,
            [Framed {
                bytes: b"abc",
                len: 3
            }]
        );
    }

    #[test]
    fn continuation_segments_are_not_messages() {
        let mut streams = TcpStreams::default();
        // A 3000-byte answer in segments of 1448 + 1448 + 106 bytes.
        let first = [0x0b, 0xb8, 1, 2, 3];
        let framed = streams.frame(7, false, 1448, &first);
        assert_eq!(framed[0].len, 3000);
        assert_eq!(streams.frame(7, false, 1448, &[9; 8]), []);
        assert_eq!(streams.frame(7, false, 106, &[9; 8]), []);
        // The next message on the stream starts afresh.
        let next = [0, 1, 42];
        assert_eq!(streams.frame(7, false, 3, &next)[0].bytes, [42]);
        // The other direction of the same socket was never in a message.
        assert_eq!(streams.frame(7, true, 3, &next).len(), 1);
    }

    #[test]
    fn a_segment_too_short_for_a_prefix_is_not_a_message() {
        let mut streams = TcpStreams::default();
        assert_eq!(streams.frame(1, true, 1, &[0]), []);
    }

    #[test]
    fn two_queries_in_one_segment_are_two_messages() {
        let mut streams = TcpStreams::default();
        let segment = [0, 2, b'a', b'a', 0, 3, b'b', b'b', b'b'];
        let framed = streams.frame(3, true, 9, &segment);
        assert_eq!(
            framed,
            [
                Framed {
                    bytes: b"aa",
                    len: 2
                },
                Framed {
                    bytes: b"bbb",
                    len: 3
                }
            ]
        );
    }

    #[test]
    fn a_message_can_start_where_a_continued_one_ends() {
        let mut streams = TcpStreams::default();
        streams.frame(4, false, 4, &[0, 5, 1, 2]);
        // Three bytes finish the first message; then a whole second one.
        let segment = [3, 4, 5, 0, 1, 42];
        assert_eq!(
            streams.frame(4, false, 6, &segment),
            [Framed {
                bytes: &[42],
                len: 1
            }]
        );
    }
}
