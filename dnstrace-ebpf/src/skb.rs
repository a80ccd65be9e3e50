//! cgroup_skb egress and ingress: every IP packet of every socket in every
//! network namespace passes here. Non-DNS packets leave after a header peek.

use aya_ebpf::{
    EbpfContext as _,
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use dnstrace_common::{
    Direction, EVENT_OWNER_FROM_SOCKET, EVENT_OWNER_KNOWN, FAMILY_V4, FAMILY_V6, FILTER_NETNS,
    PROTO_TCP, PROTO_UDP,
};

use crate::{emit, maps::CONFIG, owner};

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

/// Where the DNS message sits in the packet, and between whom.
pub struct Datagram {
    pub family: u8,
    pub protocol: u8,
    pub source: [u8; 16],
    pub destination: [u8; 16],
    pub source_port: u16,
    pub destination_port: u16,
    pub payload_offset: u32,
    pub payload_len: u32,
}

#[inline(always)]
fn handle(ctx: &SkBuffContext, direction: Direction) -> Result<(), i64> {
    let config = CONFIG.load();
    let datagram = parse(ctx)?;
    let (local_port, remote_port) = match direction {
        Direction::Send => (datagram.source_port, datagram.destination_port),
        Direction::Recv => (datagram.destination_port, datagram.source_port),
    };
    if !config.is_dns_port(local_port) && !config.is_dns_port(remote_port) {
        return Ok(());
    }
    // SAFETY: the context is the program's own skb.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };

    let attribution = if direction == Direction::Send && config.skb_task_helpers != 0 {
        // SAFETY: as above; the read-only config proves this kernel allows it.
        let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
        let current = owner::current_task(&config, netns_cookie);
        emit::Attribution {
            cookie,
            owner: Some(current),
            flags: EVENT_OWNER_KNOWN,
            // A process seen for the first time is woken for at once: its
            // resolver settings are read from /proc, and short-lived
            // clients exit within milliseconds.
            wake_now: owner::remember(cookie, &current),
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

#[inline(always)]
fn parse(ctx: &SkBuffContext) -> Result<Datagram, i64> {
    let version_ihl: u8 = ctx.load(0)?;
    let mut datagram = Datagram {
        family: 0,
        protocol: 0,
        source: [0; 16],
        destination: [0; 16],
        source_port: 0,
        destination_port: 0,
        payload_offset: 0,
        payload_len: 0,
    };
    // (offset of the transport header, bytes from there to the packet's end)
    let (l4_offset, l4_len): (u32, u32) = match version_ihl >> 4 {
        4 => {
            // Later fragments carry no UDP header; the first one does.
            let fragment: u16 = u16::from_be(ctx.load(6)?);
            if fragment & 0x1fff != 0 {
                return Err(0);
            }
            datagram.family = FAMILY_V4;
            datagram.protocol = ctx.load(9)?;
            // Fixed-size loads: the verifier rejects a copy that may be empty.
            let source: [u8; 4] = ctx.load(12)?;
            let destination: [u8; 4] = ctx.load(16)?;
            datagram.source[..4].copy_from_slice(&source);
            datagram.destination[..4].copy_from_slice(&destination);
            let header_len = u32::from(version_ihl & 0x0f) * 4;
            let total_len = u32::from(u16::from_be(ctx.load(2)?));
            (header_len, total_len.saturating_sub(header_len))
        }
        6 => {
            // Extension headers before UDP are not followed: DNS never uses them.
            datagram.family = FAMILY_V6;
            datagram.protocol = ctx.load(6)?;
            datagram.source = ctx.load(8)?;
            datagram.destination = ctx.load(24)?;
            (40, u32::from(u16::from_be(ctx.load(4)?)))
        }
        _ => return Err(0),
    };
    let offset = l4_offset as usize;
    match datagram.protocol {
        PROTO_UDP => {
            let udp_len = u32::from(u16::from_be(ctx.load(offset + 4)?));
            datagram.payload_offset = l4_offset + 8;
            datagram.payload_len = udp_len.saturating_sub(8);
        }
        PROTO_TCP => {
            // The segment's data; DNS over TCP prefixes each message with
            // its length, which userspace reads. Segments without data
            // (handshake, ACKs) are not messages.
            let data_offset: u8 = ctx.load(offset + 12)?;
            let header_len = u32::from(data_offset >> 4) * 4;
            datagram.payload_offset = l4_offset + header_len;
            datagram.payload_len = l4_len.saturating_sub(header_len);
            if datagram.payload_len == 0 {
                return Err(0);
            }
        }
        _ => return Err(0),
    }
    datagram.source_port = u16::from_be(ctx.load(offset)?);
    datagram.destination_port = u16::from_be(ctx.load(offset + 2)?);
    Ok(datagram)
}
