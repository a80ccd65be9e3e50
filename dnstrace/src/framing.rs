//! DNS over TCP: each message is prefixed by its length, and one message
//! may span several segments. The kernel hands over segments; this finds
//! where messages start.

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
    /// The message that starts in this segment, or `None` for a segment
    /// that only continues one. `segment_len` is the segment's data length;
    /// `captured` its first bytes.
    pub fn frame<'a>(
        &mut self,
        cookie: u64,
        sending: bool,
        segment_len: u32,
        captured: &'a [u8],
    ) -> Option<Framed<'a>> {
        let key = (cookie, sending);
        if let Some(remaining) = self.remaining.get_mut(&key) {
            if segment_len < *remaining {
                *remaining -= segment_len;
                return None;
            }
            // A message that starts after the end of the previous one in
            // the same segment is not looked for: resolvers send one
            // message per write.
            self.remaining.remove(&key);
            return None;
        }
        let (prefix, rest) = captured.split_first_chunk::<2>()?;
        let len = u32::from(u16::from_be_bytes(*prefix));
        let in_segment = segment_len.saturating_sub(2);
        if len > in_segment {
            if self.remaining.len() >= MAX_STREAMS {
                self.remaining.clear();
            }
            self.remaining.insert(key, len - in_segment);
        }
        let present = rest.len().min(len as usize);
        Some(Framed {
            bytes: &rest[..present],
            len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_in_one_segment_loses_its_prefix() {
        let mut streams = TcpStreams::default();
        let segment = [0, 3, b'a', b'b', b'c'];
        let framed = streams.frame(1, true, 5, &segment).unwrap();
        assert_eq!(
            framed,
            Framed {
                bytes: b"abc",
                len: 3
            }
        );
    }

    #[test]
    fn continuation_segments_are_not_messages() {
        let mut streams = TcpStreams::default();
        // A 3000-byte answer in segments of 1448 + 1448 + 106 bytes.
        let first = [0x0b, 0xb8, 1, 2, 3];
        let framed = streams.frame(7, false, 1448, &first).unwrap();
        assert_eq!(framed.len, 3000);
        assert_eq!(streams.frame(7, false, 1448, &[9; 8]), None);
        assert_eq!(streams.frame(7, false, 106, &[9; 8]), None);
        // The next message on the stream starts afresh.
        let next = [0, 1, 42];
        assert_eq!(streams.frame(7, false, 3, &next).unwrap().bytes, [42]);
        // The other direction of the same socket was never in a message.
        assert!(streams.frame(7, true, 3, &next).is_some());
    }

    #[test]
    fn a_segment_too_short_for_a_prefix_is_not_a_message() {
        let mut streams = TcpStreams::default();
        assert_eq!(streams.frame(1, true, 1, &[0]), None);
    }
}
