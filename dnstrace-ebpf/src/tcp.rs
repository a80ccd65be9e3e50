//! DNS over TCP: which messages begin in a segment. Each message is
//! prefixed by its 2-byte length; a segment may hold several messages or a
//! piece of one, and may come twice (retransmitted) or early (reordered).
//! Each stream, a socket's direction, keeps the sequence number where its
//! next length prefix lies, so a message is framed once, from the segment
//! that holds its prefix, wherever in the segment that is: over a veth a
//! segment can be 64 KB, far past the bytes copied out.

use aya_ebpf::{
    EbpfContext as _, bindings::__sk_buff, helpers::generated::bpf_tcp_sock,
    programs::SkBuffContext,
};
use dnstrace_common::Direction;

use crate::{
    maps::{Stream, StreamKey, TCP_STREAMS, UNFRAMED, add},
    packet::Datagram,
};

/// The stream waits for a length prefix at `next`.
const WAIT_PREFIX: u8 = 0;
/// ... for the prefix's second byte (the first ended a segment).
const WAIT_LOW_BYTE: u8 = 1;
/// ... for the body of a message of known length (the prefix ended a segment).
const WAIT_BODY: u8 = 2;
/// The bytes at `next` went by before `next` was known (a segment that came
/// before the one holding an earlier prefix): where messages begin is lost,
/// and nothing more is framed rather than a length read from the middle of
/// a record.
const WAIT_LOST: u8 = 3;

const TCP_LISTEN: u32 = 10;

/// The messages that begin in one segment, one at a time: a cursor over
/// the segment, and the stream's state, written back by `finish`.
pub struct Framer {
    state: Stream,
    /// Whether the state goes back into the map (not for a listener's).
    kept: bool,
    /// Where the segment's data begins in the packet, and its sequence
    /// number and length.
    data_offset: u32,
    sequence: u32,
    len: u32,
    /// Offset in the segment's data of the byte the state waits for.
    at: u32,
}

impl Framer {
    /// `None` when no message can begin in this segment: it lies before the
    /// stream's next prefix (a retransmission, the middle of a long
    /// message), or after it (a segment lost or reordered), or the stream
    /// is lost. Keeps the stream's state up to date all the same.
    #[inline(always)]
    pub fn new(
        ctx: &SkBuffContext,
        segment: &Datagram,
        direction: Direction,
        cookie: u64,
    ) -> Option<Self> {
        let key = StreamKey {
            cookie,
            direction: direction as u64,
        };
        // (state, whether it is kept, whether it is new)
        let (mut state, kept, new) = match TCP_STREAMS.get_ptr_mut(&key) {
            // SAFETY: the map value lives while this program runs; copied
            // out, and written back once at the end.
            Some(stream) => (unsafe { *stream }, true, false),
            None => match start(ctx, segment, direction) {
                Start::Here(next) => (waiting_for_prefix(next), true, true),
                Start::Alone => (waiting_for_prefix(segment.sequence), false, true),
                Start::Unknown => return None,
            },
        };
        let at = state.next.wrapping_sub(segment.sequence);
        if state.wait == WAIT_LOST || at >= segment.payload_len {
            // `next` lies past this segment, which then holds nothing new,
            // or before it: its bytes have not come yet, or they went by
            // unframed.
            let lost =
                state.wait != WAIT_LOST && (at as i32) < 0 && went_by(ctx, &state, direction);
            if lost {
                state.wait = WAIT_LOST;
                count_unframed();
            }
            if (lost || new) && kept {
                store(&key, &state);
            }
            return None;
        }
        Some(Self {
            state,
            kept,
            data_offset: segment.payload_offset,
            sequence: segment.sequence,
            len: segment.payload_len,
            at,
        })
    }

    /// The next message that begins in the segment: the offset of its body
    /// in the packet (past the prefix) and its length. `None` once the
    /// segment holds no more (then a prefix or body it ends with is kept
    /// for the next segment).
    #[inline(always)]
    pub fn next(&mut self, ctx: &SkBuffContext) -> Option<(u32, u32)> {
        if self.at >= self.len {
            return None;
        }
        let offset = self.at;
        let at = (self.data_offset + offset) as usize;
        let (len, body) = match self.state.wait {
            WAIT_BODY => (self.state.len, offset),
            WAIT_LOW_BYTE => (
                self.state.len | u16::from(ctx.load::<u8>(at).ok()?),
                offset + 1,
            ),
            _ if offset + 1 == self.len => {
                // The prefix's first byte ends the segment.
                let high = ctx.load::<u8>(at).ok()?;
                self.wait_at(self.len, u16::from(high) << 8, WAIT_LOW_BYTE);
                return None;
            }
            _ => (
                u16::from_be_bytes(ctx.load::<[u8; 2]>(at).ok()?),
                offset + 2,
            ),
        };
        if body >= self.len {
            // The body begins in the next segment: framed there, so that
            // the copy begins with its header.
            self.wait_at(body, len, WAIT_BODY);
            return None;
        }
        self.wait_at(body + u32::from(len), 0, WAIT_PREFIX);
        Some((self.data_offset + body, u32::from(len)))
    }

    #[inline(always)]
    fn wait_at(&mut self, at: u32, len: u16, wait: u8) {
        self.at = at;
        self.state = Stream {
            next: self.sequence.wrapping_add(at),
            len,
            wait,
            _padding: 0,
        };
    }

    /// Writes the stream's state back (the stream `new` was given). A
    /// segment that still holds messages (more than the caller took) loses
    /// its stream: where they end is not known. That is counted unless the
    /// caller took none on purpose (`skipped`: the filters leave the
    /// stream out), or the stream is a listener's, which is not kept.
    #[inline(always)]
    pub fn finish(mut self, direction: Direction, cookie: u64, skipped: bool) {
        if self.at < self.len {
            self.state.wait = WAIT_LOST;
            if self.kept && !skipped {
                count_unframed();
            }
        }
        if self.kept {
            let key = StreamKey {
                cookie,
                direction: direction as u64,
            };
            store(&key, &self.state);
        }
    }
}

/// A stream given up: userspace reports how many.
#[inline(always)]
fn count_unframed() {
    if let Some(count) = UNFRAMED.get_ptr_mut(0) {
        // SAFETY: this CPU's own counter, a live map value.
        unsafe { add(count, 1) };
    }
}

fn waiting_for_prefix(next: u32) -> Stream {
    Stream {
        next,
        len: 0,
        wait: WAIT_PREFIX,
        _padding: 0,
    }
}

#[inline(always)]
fn store(key: &StreamKey, state: &Stream) {
    // A full LRU map evicts its oldest entry, so this cannot fail for lack
    // of room.
    let _ = TCP_STREAMS.insert(key, state, 0);
}

/// Where a stream seen for the first time begins.
enum Start {
    /// Its next message begins at this sequence number.
    Here(u32),
    /// A listening socket's: data that completes a handshake, the
    /// connection's first, framed on its own (the new socket takes over).
    Alone,
    /// Joined in the middle, out of order: no segment start can be trusted.
    Unknown,
}

/// A sender sends new data in order, so the first segment seen begins the
/// stream, unless dnstrace started in the middle of it. A receiver can see
/// segments out of order: its socket says where the data begins while none
/// has been received.
#[inline(always)]
fn start(ctx: &SkBuffContext, segment: &Datagram, direction: Direction) -> Start {
    if direction == Direction::Send {
        return Start::Here(segment.sequence);
    }
    // SAFETY: the program's own skb; the verifier checks the socket
    // pointer, which may be null, before use.
    let sock = unsafe { (*ctx.as_ptr().cast::<__sk_buff>()).__bindgen_anon_2.sk };
    if sock.is_null() {
        return Start::Here(segment.sequence);
    }
    // SAFETY: a socket pointer from the skb, checked above.
    if unsafe { (*sock).state } == TCP_LISTEN {
        return Start::Alone;
    }
    // SAFETY: as above; the helper returns null for what is not a full
    // TCP socket.
    let tcp = unsafe { bpf_tcp_sock(sock) };
    if tcp.is_null() {
        return Start::Here(segment.sequence);
    }
    // SAFETY: checked for null above.
    let (expected, received) = unsafe { ((*tcp).rcv_nxt, (*tcp).bytes_received) };
    if received == 0 || expected == segment.sequence {
        Start::Here(expected)
    } else {
        Start::Unknown
    }
}

/// Whether the bytes at `state.next` already went through this socket,
/// unframed, which leaves the stream lost; else they are yet to come. Only
/// a receiver can tell (its socket's next expected byte); a sender sends
/// new data in order, so a gap means they went by.
#[inline(always)]
fn went_by(ctx: &SkBuffContext, state: &Stream, direction: Direction) -> bool {
    if direction == Direction::Send {
        return true;
    }
    // SAFETY: as in `start`.
    let sock = unsafe { (*ctx.as_ptr().cast::<__sk_buff>()).__bindgen_anon_2.sk };
    if sock.is_null() {
        return false;
    }
    // SAFETY: as in `start`.
    let tcp = unsafe { bpf_tcp_sock(sock) };
    if tcp.is_null() {
        return false;
    }
    // SAFETY: checked for null above.
    let expected = unsafe { (*tcp).rcv_nxt };
    (expected.wrapping_sub(state.next) as i32) > 0
}
