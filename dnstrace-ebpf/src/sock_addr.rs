//! connect and sendmsg hooks that record who owns a DNS socket.
//!
//! Attached only where cgroup_skb programs may not call the current-task
//! helpers (Debian 6.1): these hooks run in the calling process, so the owner
//! they record lets the skb programs attribute both directions by cookie.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    },
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};

use crate::{maps::CONFIG, owner};

/// sock_addr programs return 1 to let the call proceed.
const ALLOW: i32 = 1;

#[cgroup_sock_addr(connect4)]
pub fn dns_connect4(ctx: SockAddrContext) -> i32 {
    record(&ctx)
}

#[cgroup_sock_addr(connect6)]
pub fn dns_connect6(ctx: SockAddrContext) -> i32 {
    record(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn dns_sendmsg4(ctx: SockAddrContext) -> i32 {
    record(&ctx)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn dns_sendmsg6(ctx: SockAddrContext) -> i32 {
    record(&ctx)
}

#[inline(always)]
fn record(ctx: &SockAddrContext) -> i32 {
    let config = CONFIG.load();
    // SAFETY: the kernel hands us a valid bpf_sock_addr for the whole run.
    let user_port = unsafe { (*ctx.sock_addr).user_port };
    // user_port holds the port in network byte order in its low 16 bits.
    let port = u16::from_be(user_port as u16);
    // A server replies from its DNS port to the client's ephemeral one.
    // SAFETY: sock_addr programs may read the fields of their socket, which
    // the kernel guarantees for the whole run.
    let local_port = unsafe { (*(*ctx.sock_addr).__bindgen_anon_1.sk).src_port } as u16;
    if !config.is_dns_port(port) && !config.is_dns_port(local_port) {
        return ALLOW;
    }
    // SAFETY: both helpers take the program's own context.
    let (cookie, netns_cookie) = unsafe {
        (
            bpf_get_socket_cookie(ctx.as_ptr()),
            bpf_get_netns_cookie(ctx.as_ptr()),
        )
    };
    let current = owner::current_task(&config, bpf_get_current_pid_tgid(), netns_cookie);
    let _ = owner::remember(cookie, owner::recorded(cookie).as_ref(), &current);
    ALLOW
}
