//! Whether a process read the responses that reached it: a tp_btf program
//! on `sock:sock_recv_length`, which every receive call on a socket passes
//! (recvfrom, recvmsg, each datagram of recvmmsg, read) once the data is
//! copied out. The tracepoint came with Linux 6.3; older kernels go
//! without. It only counts: userspace compares the count with the numbers
//! ingress gave the responses, so a read costs no event.

use crate::maps::{RESPONSES, add};
use aya_ebpf::{
    helpers::generated::bpf_get_socket_cookie, macros::btf_tracepoint,
    programs::BtfTracePointContext,
};

/// recv flags after which nothing was consumed, or no message was read.
const MSG_PEEK: i32 = 0x2;
const MSG_ERRQUEUE: i32 = 0x2000;

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
    // Sockets without counts (servers, and every socket that is not a DNS
    // client's) end here.
    if let Some(counts) = RESPONSES.get_ptr_mut(&cookie) {
        // SAFETY: the map value lives while this program runs. Never ahead
        // of the responses: a datagram that is not DNS read from the same
        // socket cannot make a later response look read. The add is atomic,
        // so two threads reading one socket at once count two reads.
        unsafe {
            if (*counts).read < (*counts).received {
                add(&raw mut (*counts).read, 1);
            }
        }
    }
    0
}
