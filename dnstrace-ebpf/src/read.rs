//! Whether a process read the responses that reached its socket: a tp_btf
//! program on `sock:sock_recv_length`, which every receive call on a socket
//! passes (recvfrom, recvmsg, recvmmsg, read) once the data is copied out.
//! The tracepoint came with Linux 6.3; older kernels go without.

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_socket_cookie},
    },
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use dnstrace_common::{COMM_LEN, Comm, ReadCounts, SocketOwner};

use crate::{
    emit,
    maps::{CONFIG, RESPONSES},
    owner,
};

/// recv flags after which nothing was consumed, or no message was read.
const MSG_PEEK: i32 = 0x2;
const MSG_ERRQUEUE: i32 = 0x2000;

/// Counts a DNS response that reached a client socket, so that the read
/// program reports the reads that follow.
#[inline(always)]
pub fn response_arrived(cookie: u64) {
    if CONFIG.load().track_reads == 0 {
        return;
    }
    match RESPONSES.get_ptr_mut(&cookie) {
        // SAFETY: the map value lives while this program runs. Two
        // responses for one socket counted at the same instant on two CPUs
        // could count as one (the BPF target has no atomic add in Rust);
        // the read of the second would then go unreported.
        Some(counts) => unsafe { (*counts).received += 1 },
        None => {
            let counts = ReadCounts {
                received: 1,
                read: 0,
            };
            // A full LRU map evicts its oldest entry, so this cannot fail
            // for lack of room.
            let _ = RESPONSES.insert(&cookie, &counts, 0);
        }
    }
}

#[btf_tracepoint(function = "sock_recv_length")]
pub fn dns_sock_recv_length(ctx: BtfTracePointContext) -> i32 {
    // (struct sock *sk, int ret, int flags)
    let length: i32 = ctx.arg(1);
    let flags: i32 = ctx.arg(2);
    if length <= 0 || flags & (MSG_PEEK | MSG_ERRQUEUE) != 0 {
        return 0;
    }
    let sock: *mut core::ffi::c_void = ctx.arg(0);
    // SAFETY: the tracepoint's own socket, a pointer the verifier types
    // through BTF.
    let cookie = unsafe { bpf_get_socket_cookie(sock) };
    let Some(counts) = RESPONSES.get_ptr_mut(&cookie) else {
        return 0;
    };
    // SAFETY: as in `response_arrived`. Two threads reading one socket at
    // once could both pass the check; a read reported twice is matched to
    // nothing in userspace.
    unsafe {
        if (*counts).read >= (*counts).received {
            return 0;
        }
        (*counts).read += 1;
    }
    // The reader is the current task; its namespace is the socket's, as
    // recorded when the socket sent.
    let pid_tgid = bpf_get_current_pid_tgid();
    let mut reader = SocketOwner {
        // SAFETY: a helper without arguments.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        netns_cookie: owner::recorded(cookie).map_or(0, |owner| owner.netns_cookie),
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        uid: bpf_get_current_uid_gid() as u32,
        selected: 1,
        comm: Comm([0; COMM_LEN]),
    };
    // SAFETY: the helper writes at most COMM_LEN bytes into the buffer.
    unsafe { bpf_get_current_comm(reader.comm.0.as_mut_ptr().cast(), COMM_LEN as u32) };
    emit::read(cookie, &reader, length as u32);
    0
}
