//! DNS packets the kernel dropped, with the reason: a tp_btf program on
//! `skb:kfree_skb` (the reason came with Linux 5.17). The tracepoint fires
//! for every packet dropped on the host, DNS or not, so other packets leave
//! after one or two reads. The skb is read through offsets looked up in the
//! running kernel's BTF at load time (`DROP_CONFIG`): aya's Rust programs
//! have no CO-RE relocations, and offsets from one kernel read garbage on
//! another.

use core::hint::black_box;

use aya_ebpf::{
    EbpfContext as _,
    bindings::BPF_RB_NO_WAKEUP,
    helpers::{
        bpf_probe_read_kernel,
        generated::{self, bpf_ktime_get_ns},
    },
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use dnstrace_common::{
    DROP_PAYLOAD, Direction, DropHeader, EVENT_OWNER_FROM_SOCKET, EVENT_OWNER_KNOWN, FAMILY_V4,
    FAMILY_V6, Hook, PROTO_TCP, PROTO_UDP,
};

use crate::{
    emit::{count_lost, set_owner},
    maps::{CONFIG, DROP_CONFIG, DROP_SCRATCH, DropBuffer, EVENTS},
    owner,
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
/// `network_header` of an skb that never had one set.
const UNSET_HEADER: u16 = 0xffff;

#[btf_tracepoint(function = "kfree_skb")]
pub fn dns_kfree_skb(ctx: BtfTracePointContext) -> i32 {
    let _ = handle(&ctx);
    0
}

/// A kernel value at `address`.
#[inline(always)]
fn read<T>(address: u64) -> Result<T, i64> {
    // SAFETY: the helper checks the address and fails rather than fault.
    unsafe { bpf_probe_read_kernel(address as *const T) }.map_err(i64::from)
}

#[inline(always)]
fn handle(ctx: &BtfTracePointContext) -> Result<(), i64> {
    let offsets = DROP_CONFIG.load();
    // (struct sk_buff *skb, void *location, enum skb_drop_reason reason[,
    // struct sock *rx_sk])
    let reason: u32 = ctx.arg(2);
    if reason == offsets.consumed_reason {
        return Ok(());
    }
    let skb: u64 = ctx.arg(0);
    // protocol and network_header in one read: most packets leave here.
    let headers: u64 = read(skb + u64::from(offsets.skb_headers))?;
    let protocol = u16::from_be((headers >> offsets.protocol_shift) as u16);
    let network = (headers >> offsets.network_shift) as u16;
    if (protocol != ETH_P_IP && protocol != ETH_P_IPV6) || network == UNSET_HEADER {
        return Ok(());
    }
    let head: u64 = read(skb + u64::from(offsets.skb_head))?;
    let ip = head + u64::from(network);
    // Enough for an IPv6 header, or an IPv4 one without options.
    let ip_header: [u8; 40] = read(ip)?;
    let (family, protocol, l4_offset, total_len) = match ip_header[0] >> 4 {
        4 => {
            // Later fragments carry no transport header.
            if u16::from_be_bytes([ip_header[6], ip_header[7]]) & 0x1fff != 0 {
                return Ok(());
            }
            let ihl = u32::from(ip_header[0] & 0x0f) * 4;
            let total = u32::from(u16::from_be_bytes([ip_header[2], ip_header[3]]));
            (FAMILY_V4, ip_header[9], ihl, total)
        }
        6 => {
            let payload = u32::from(u16::from_be_bytes([ip_header[4], ip_header[5]]));
            (FAMILY_V6, ip_header[6], 40, payload + 40)
        }
        _ => return Ok(()),
    };
    if protocol != PROTO_UDP && protocol != PROTO_TCP {
        return Ok(());
    }
    let l4 = ip + u64::from(l4_offset);
    // Ports, UDP length, and TCP's data offset (byte 12).
    let transport: [u8; 16] = read(l4)?;
    let source_port = u16::from_be_bytes([transport[0], transport[1]]);
    let destination_port = u16::from_be_bytes([transport[2], transport[3]]);
    let config = CONFIG.load();
    // The client's side is the one whose port is not a DNS port.
    let direction = if config.is_dns_port(destination_port) {
        Direction::Send
    } else if config.is_dns_port(source_port) {
        Direction::Recv
    } else {
        return Ok(());
    };
    let (payload_offset, payload_len) = if protocol == PROTO_UDP {
        let udp_len = u32::from(u16::from_be_bytes([transport[4], transport[5]]));
        (l4_offset + 8, udp_len.saturating_sub(8))
    } else {
        let header_len = u32::from(transport[12] >> 4) * 4;
        let data = total_len.saturating_sub(l4_offset + header_len);
        // Handshakes and bare ACKs carry no message.
        if data == 0 {
            return Ok(());
        }
        (l4_offset + header_len, data)
    };

    // A DNS packet: who it belongs to, and where it was dropped.
    let mut sock: u64 = read(skb + u64::from(offsets.skb_sk)).unwrap_or(0);
    if sock == 0 && offsets.has_rx_sk != 0 {
        // SAFETY: the fourth argument exists on kernels that set
        // has_rx_sk; the read-only value lets the verifier prune this
        // elsewhere, and the volatile read keeps the load behind the test.
        sock = unsafe { core::ptr::read_volatile((ctx.as_ptr() as *const u64).add(3)) };
    }
    let cookie: u64 = if sock != 0 {
        read(sock + u64::from(offsets.sock_cookie)).unwrap_or(0)
    } else {
        0
    };
    let owner = if cookie != 0 {
        owner::recorded(cookie)
    } else {
        None
    };
    let selected = match &owner {
        Some(owner) => owner.selected != 0,
        None => config.filters == 0,
    };
    if !selected {
        return Ok(());
    }
    let net: u64 = if sock != 0 {
        read(sock + u64::from(offsets.sock_net)).unwrap_or(0)
    } else {
        let device: u64 = read(skb + u64::from(offsets.skb_dev)).unwrap_or(0);
        if device != 0 {
            read(device + u64::from(offsets.dev_net)).unwrap_or(0)
        } else {
            0
        }
    };
    let netns_inode: u32 = if net != 0 {
        read(net + u64::from(offsets.net_inum)).unwrap_or(0)
    } else {
        0
    };

    let Some(buffer) = DROP_SCRATCH.get_ptr_mut(0) else {
        return Ok(());
    };
    // SAFETY: this CPU's slot, which no other run of this program uses
    // while this one does (see DROP_SCRATCH).
    let buffer = unsafe { &mut *buffer };
    let DropBuffer { header, payload } = buffer;
    let DropHeader {
        event,
        location,
        reason: reason_field,
        netns_inode: netns_field,
    } = header;
    // SAFETY: a helper without arguments.
    event.timestamp_ns = unsafe { bpf_ktime_get_ns() };
    event.socket_cookie = cookie;
    event.response_number = 0;
    event.payload_len = payload_len;
    event.family = family;
    event.protocol = protocol;
    event.direction = direction as u8;
    event.hook = Hook::KfreeSkb as u8;
    let (mut source, mut destination) = ([0u32; 4], [0u32; 4]);
    if family == FAMILY_V4 {
        source[0] =
            u32::from_ne_bytes([ip_header[12], ip_header[13], ip_header[14], ip_header[15]]);
        destination[0] =
            u32::from_ne_bytes([ip_header[16], ip_header[17], ip_header[18], ip_header[19]]);
    } else {
        source = read(ip + 8)?;
        destination = read(ip + 24)?;
    }
    let (local, remote, local_port, remote_port) = match direction {
        Direction::Send => (source, destination, source_port, destination_port),
        Direction::Recv => (destination, source, destination_port, source_port),
    };
    event.local_addr = local;
    event.remote_addr = remote;
    event.local_port = local_port;
    event.remote_port = remote_port;
    set_owner(
        event,
        owner.as_ref(),
        EVENT_OWNER_KNOWN | EVENT_OWNER_FROM_SOCKET,
    );
    *location = ctx.arg(1);
    *reason_field = reason;
    *netns_field = netns_inode;

    // The copy never reaches past the packet's linear data.
    let tail: u32 = read(skb + u64::from(offsets.skb_tail)).unwrap_or(0);
    let start = u32::from(network) + payload_offset;
    let wanted = payload_len
        .min(tail.saturating_sub(start))
        .min(DROP_PAYLOAD as u32);
    let mut captured = 0;
    if wanted > 0 {
        // A length the verifier can prove lies in [1, DROP_PAYLOAD].
        let len = ((black_box(wanted) - 1) & (DROP_PAYLOAD as u32 - 1)) + 1;
        // SAFETY: the destination holds DROP_PAYLOAD bytes and len is at
        // most that; the helper checks the source.
        let copied = unsafe {
            generated::bpf_probe_read_kernel(
                payload.as_mut_ptr().cast(),
                len,
                (head + u64::from(start)) as *const _,
            )
        };
        if copied == 0 {
            captured = len;
        }
    }
    event.captured_len = captured;

    let size = size_of::<DropHeader>() + captured as usize;
    // SAFETY: the buffer holds the header and DROP_PAYLOAD bytes, and size
    // is within that.
    let record =
        unsafe { core::slice::from_raw_parts((buffer as *const DropBuffer).cast::<u8>(), size) };
    // Drops are rare: the reader finds them at its next poll.
    if EVENTS.output(record, u64::from(BPF_RB_NO_WAKEUP)).is_err() {
        count_lost();
    }
    Ok(())
}
