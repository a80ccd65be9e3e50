//! Copies one DNS message into the ring buffer, or counts it as lost.

use core::{
    hint::black_box,
    ptr::{read_volatile, write_volatile},
    sync::atomic::{Ordering, compiler_fence},
};

use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
use aya_ebpf::{
    EbpfContext as _,
    helpers::generated::{bpf_ktime_get_ns, bpf_skb_load_bytes},
    programs::SkBuffContext,
};
use aya_log_ebpf::warn;
use dnstrace_common::{
    COMM_LEN, Comm, Direction, EventHeader, Hook, MAX_PAYLOAD, PROTO_UDP, SocketOwner,
    WAKEUP_BYTES, WAKEUP_CHECK_BYTES,
};

use crate::{
    maps::{EVENTS, EventBuffer, LOST, NESTING, SCRATCH, SCRATCH_LEVELS, add, response_counts},
    packet::Datagram,
};

const HEADER_LEN: u32 = size_of::<EventHeader>() as u32;

/// Whose message it is, as far as the kernel side knows.
#[derive(Clone, Copy)]
pub struct Attribution {
    pub cookie: u64,
    pub owner: Option<SocketOwner>,
    /// `EVENT_OWNER_*` bits.
    pub flags: u8,
    /// Wake the reader at once rather than with the next batch.
    pub wake_now: bool,
}

#[inline(always)]
pub fn message(
    ctx: &SkBuffContext,
    datagram: &Datagram,
    direction: Direction,
    attribution: &Attribution,
) {
    let Some(nesting) = NESTING.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's own counter, a live map value. The fences keep
    // the claim before the slot is used and the release after.
    let level = unsafe { read_volatile(nesting) };
    unsafe { write_volatile(nesting, level + 1) };
    compiler_fence(Ordering::SeqCst);
    match SCRATCH.get_ptr_mut(level as u32) {
        // SAFETY: the slot of this nesting level, which no other program
        // on this CPU uses until this one has left it.
        Some(buffer) if level < u64::from(SCRATCH_LEVELS) => {
            build_and_send(ctx, datagram, direction, attribution, unsafe {
                &mut *buffer
            })
        }
        _ => count_lost(),
    }
    compiler_fence(Ordering::SeqCst);
    // SAFETY: as above.
    unsafe { write_volatile(nesting, level) };
}

/// The process fields of a record, from the socket's owner when known.
#[inline(always)]
pub fn set_owner(header: &mut EventHeader, owner: Option<&SocketOwner>, flags: u8) {
    match owner {
        Some(owner) => {
            header.pid = owner.pid;
            header.tid = owner.tid;
            header.uid = owner.uid;
            header.cgroup_id = owner.cgroup_id;
            header.netns_cookie = owner.netns_cookie;
            header.comm = owner.comm;
            header.flags = flags;
        }
        None => {
            header.pid = 0;
            header.tid = 0;
            header.uid = 0;
            header.cgroup_id = 0;
            header.netns_cookie = 0;
            header.comm = Comm([0; COMM_LEN]);
            header.flags = 0;
        }
    }
}

#[inline(always)]
pub fn count_lost() {
    if let Some(lost) = LOST.get_ptr_mut(0) {
        // SAFETY: this CPU's own counter, a live map value.
        unsafe { add(lost, 1) };
    }
}

#[inline(always)]
fn build_and_send(
    ctx: &SkBuffContext,
    datagram: &Datagram,
    direction: Direction,
    attribution: &Attribution,
    buffer: &mut EventBuffer,
) {
    let Attribution {
        cookie,
        owner,
        flags: owner_flags,
        wake_now,
    } = *attribution;
    let hook = match direction {
        Direction::Send => Hook::CgroupSkbEgress,
        Direction::Recv => Hook::CgroupSkbIngress,
    };
    let header = &mut buffer.header;
    // SAFETY: a helper without arguments.
    header.timestamp_ns = unsafe { bpf_ktime_get_ns() };
    header.socket_cookie = cookie;
    header.payload_len = datagram.payload_len;
    header.family = datagram.family;
    header.protocol = datagram.protocol;
    header.direction = direction as u8;
    header.hook = hook as u8;
    let (local, remote, local_port, remote_port) = match direction {
        Direction::Send => (
            &datagram.source,
            &datagram.destination,
            datagram.source_port,
            datagram.destination_port,
        ),
        Direction::Recv => (
            &datagram.destination,
            &datagram.source,
            datagram.destination_port,
            datagram.source_port,
        ),
    };
    header.local_addr = *local;
    header.remote_addr = *remote;
    header.local_port = local_port;
    header.remote_port = remote_port;
    set_owner(header, owner.as_ref(), owner_flags);

    // The copy is never longer than what the skb holds past the header.
    let in_skb = ctx.len().saturating_sub(datagram.payload_offset);
    let wanted = datagram.payload_len.min(in_skb).min(MAX_PAYLOAD as u32);
    let mut captured = 0;
    if wanted > 0 {
        // The verifier needs a length it can prove lies in [1, MAX_PAYLOAD];
        // a plain clamp loses its lower bound after LLVM's rewrites.
        let len = ((black_box(wanted) - 1) & (MAX_PAYLOAD as u32 - 1)) + 1;
        // SAFETY: the destination holds MAX_PAYLOAD bytes and len is at most that.
        let loaded = unsafe {
            bpf_skb_load_bytes(
                ctx.as_ptr(),
                datagram.payload_offset,
                buffer.payload.as_mut_ptr().cast(),
                len,
            )
        };
        if loaded == 0 {
            captured = len;
        } else {
            // Should not happen: the length is within the skb. Say so
            // rather than send an empty payload without a word.
            warn!(
                ctx,
                "copying {} payload bytes at offset {} failed: error {}",
                len,
                datagram.payload_offset,
                loaded
            );
        }
    }
    buffer.header.captured_len = captured;
    // A response (QR set) reaching a client's UDP socket is numbered, for
    // the read program's count to be compared with. TCP reads do not map
    // to messages.
    let response_counts = if direction == Direction::Recv
        && datagram.protocol == PROTO_UDP
        && captured > 2
        && buffer.payload[2] & 0x80 != 0
    {
        response_counts(cookie)
    } else {
        None
    };
    buffer.header.response_number = match response_counts {
        // Counted even when the record is lost below: the process may read
        // the response all the same, and the numbers must keep step with
        // its reads. The add is atomic, so the count is right; two
        // responses for one socket on two CPUs at the same instant could
        // still take one number (taking it atomically needs BPF CPU v3),
        // and userspace would then find the second read one read early.
        // SAFETY: the map value lives while this program runs.
        Some(counts) => unsafe {
            let number = (*counts).received + 1;
            add(&raw mut (*counts).received, 1);
            number
        },
        None => 0,
    };

    let size = (HEADER_LEN + captured) as usize;
    // Waking the reader for every message would cost an interrupt and a
    // context switch each at high rates: it is woken once the ring holds a
    // batch, and polls on a short timer for the rest (see WAKEUP_BYTES and
    // WAKEUP_CHECK_BYTES in dnstrace-common).
    let written = buffer.written + size as u64;
    let look = written / WAKEUP_CHECK_BYTES != buffer.written / WAKEUP_CHECK_BYTES;
    buffer.written = written;
    let mut wake = wake_now;
    if look {
        let waiting = EVENTS.query(u64::from(BPF_RB_AVAIL_DATA));
        wake |= waiting / WAKEUP_BYTES > buffer.waiting / WAKEUP_BYTES;
        buffer.waiting = waiting;
    }
    let wakeup = if wake {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    // SAFETY: `buffer` holds HEADER_LEN + MAX_PAYLOAD bytes and size is within that.
    let record =
        unsafe { core::slice::from_raw_parts((buffer as *const EventBuffer).cast::<u8>(), size) };
    if EVENTS.output(record, u64::from(wakeup)).is_err() {
        count_lost();
    }
}
