//! cgroup_skb egress and ingress: every IP packet of every socket in every
//! network namespace passes here. Non-DNS packets leave after a header peek.

use core::hint::black_box;

use aya_ebpf::{
    EbpfContext as _,
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use dnstrace_common::{
    CaptureConfig, Direction, EVENT_OWNER_FROM_SOCKET, EVENT_OWNER_KNOWN, FILTER_NETNS,
    MAX_TCP_MESSAGES_PER_SEGMENT, PROTO_TCP,
};

use crate::{
    emit,
    maps::{CONFIG, TCP_MESSAGES_PER_SEGMENT},
    owner, packet, tcp,
};

/// cgroup_skb programs must return 1 to let the packet through.
const PASS: i32 = 1;

#[cgroup_skb(egress)]
pub fn dns_skb_egress(ctx: SkBuffContext) -> i32 {
    let _ = handle(&ctx, Direction::Send);
    PASS
}

#[cgroup_skb(ingress)]
pub fn dns_skb_ingress(ctx: SkBuffContext) -> i32 {
    let _ = handle(&ctx, Direction::Recv);
    PASS
}

#[inline(always)]
fn handle(ctx: &SkBuffContext, direction: Direction) -> Result<(), i64> {
    let config = CONFIG.load();
    let mut datagram = packet::parse(ctx, &config, direction)?;
    // SAFETY: the context is the program's own skb.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let mut framer = None;
    if datagram.protocol == PROTO_TCP {
        // Most segments begin no message: acknowledgements carry no data,
        // retransmissions nothing new.
        framer = Some(tcp::Framer::new(ctx, &datagram, direction, cookie).ok_or(0)?);
    }
    let Some(attribution) = attribute(ctx, &config, direction, cookie, datagram.protocol) else {
        if let Some(framer) = framer {
            framer.finish(direction, cookie, true);
        }
        return Ok(());
    };
    // Each message as a datagram of its own (the same one, reused: stack is
    // short). One place emits, in a loop LLVM may not unroll (the bound is
    // hidden from it; the verifier sees the constants): each copy of the
    // emitting code would take stack of its own. A segment with more
    // messages than the configured number gives its stream up.
    let mut n = 0;
    while n < black_box(MAX_TCP_MESSAGES_PER_SEGMENT) && n < TCP_MESSAGES_PER_SEGMENT.load() {
        match &mut framer {
            Some(framer) => {
                let Some((offset, len)) = framer.next(ctx) else {
                    break;
                };
                datagram.payload_offset = offset;
                datagram.payload_len = len;
            }
            None if n > 0 => break,
            None => {}
        }
        emit::message(ctx, &datagram, direction, &attribution);
        n += 1;
    }
    if let Some(framer) = framer {
        framer.finish(direction, cookie, false);
    }
    Ok(())
}

/// Whose message it is, or `None` when the filters leave it out.
#[inline(always)]
fn attribute(
    ctx: &SkBuffContext,
    config: &CaptureConfig,
    direction: Direction,
    cookie: u64,
    protocol: u8,
) -> Option<emit::Attribution> {
    let netns_cookie = || {
        // SAFETY: the context is the program's own skb; the read-only
        // config proves this kernel allows the helper here.
        unsafe { bpf_get_netns_cookie(ctx.as_ptr()) }
    };
    let attribution = if direction == Direction::Send && config.skb_task_helpers != 0 {
        let (owner, new) = if protocol == PROTO_TCP {
            owner::tcp_sender(config, cookie, netns_cookie)
        } else {
            let (current, new) = owner::sender(config, cookie, netns_cookie);
            (Some(current), new)
        };
        emit::Attribution {
            cookie,
            owner,
            flags: if new || protocol != PROTO_TCP {
                EVENT_OWNER_KNOWN
            } else {
                EVENT_OWNER_KNOWN | EVENT_OWNER_FROM_SOCKET
            },
            // A process seen for the first time is woken for at once: its
            // resolver settings are read from /proc, and short-lived
            // clients exit within milliseconds.
            wake_now: new,
        }
    } else {
        // Ingress runs in whatever task delivered the packet, often the
        // peer: only the socket's recorded owner can be trusted.
        emit::Attribution {
            cookie,
            owner: owner::recorded(cookie),
            flags: EVENT_OWNER_KNOWN | EVENT_OWNER_FROM_SOCKET,
            wake_now: false,
        }
    };
    let selected = match attribution.owner {
        Some(owner) => owner.selected != 0,
        // A socket nobody has sent from yet (a server's freshly accepted
        // TCP connection): the namespace alone can still be judged.
        None if config.filters == FILTER_NETNS && config.skb_task_helpers != 0 => {
            netns_cookie() == config.netns_cookie
        }
        None => config.filters == 0,
    };
    selected.then_some(attribution)
}
