//! cgroup_skb egress and ingress: every IP packet of every socket in every
//! network namespace passes here. Non-DNS packets leave after a header peek.

use aya_ebpf::{
    EbpfContext as _,
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use dnstrace_common::{Direction, EVENT_OWNER_FROM_SOCKET, EVENT_OWNER_KNOWN, FILTER_NETNS};

use crate::{emit, maps::CONFIG, owner, packet};

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
    let datagram = packet::parse(ctx, &config, direction)?;
    // SAFETY: the context is the program's own skb.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };

    let attribution = if direction == Direction::Send && config.skb_task_helpers != 0 {
        let (current, new) = owner::sender(&config, cookie, || {
            // SAFETY: as above; the read-only config proves this kernel allows it.
            unsafe { bpf_get_netns_cookie(ctx.as_ptr()) }
        });
        emit::Attribution {
            cookie,
            owner: Some(current),
            flags: EVENT_OWNER_KNOWN,
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
            // SAFETY: the context is the program's own skb; the read-only
            // config proves this kernel allows the helper here.
            let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
            netns_cookie == config.netns_cookie
        }
        None => config.filters == 0,
    };
    if !selected {
        return Ok(());
    }
    emit::message(ctx, &datagram, direction, &attribution);
    Ok(())
}
