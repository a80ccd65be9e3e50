//! Where the DNS message lies in an IP packet, shared by the programs that
//! see packets: found with as few reads as possible, since most packets are
//! not DNS.

use core::hint::black_box;

use aya_ebpf::programs::SkBuffContext;
use dnstrace_common::{CaptureConfig, Direction, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP};

const TCP_SYN: u8 = 0x02;

/// Where the DNS message sits in the packet, and between whom.
#[derive(Clone, Copy)]
pub struct Datagram {
    pub family: u8,
    pub protocol: u8,
    /// As in the packet (network byte order), in words: copied whole, not
    /// byte by byte. IPv4 uses the first.
    pub source: [u32; 4],
    pub destination: [u32; 4],
    pub source_port: u16,
    pub destination_port: u16,
    pub payload_offset: u32,
    pub payload_len: u32,
    /// TCP: the sequence number of the segment's first data byte. 0 for UDP.
    pub sequence: u32,
}

/// Reads a `T` at `offset` in the packet: straight from its linear part
/// when the bytes lie there, which spares a helper call per field on every
/// packet; with bpf_skb_load_bytes when they do not. At least two bytes:
/// the verifier learns no bound from the check of a single one.
#[inline(always)]
fn read<T: Copy>(ctx: &SkBuffContext, offset: usize) -> Result<T, i64> {
    const { assert!(size_of::<T>() >= 2) };
    let at = ctx.data() + offset;
    // The end of the read is hidden from LLVM, which would otherwise
    // subtract from data_end instead, which the 6.1 verifier refuses.
    if black_box(at + size_of::<T>()) <= ctx.data_end() {
        // SAFETY: the bytes lie between data and data_end, which the
        // verifier checks from the comparison above; T is plain data.
        return Ok(unsafe { core::ptr::read_unaligned(at as *const T) });
    }
    ctx.load(offset)
}

/// The DNS message in a packet to or from a DNS port, or `Err` for any
/// other packet, found with as few reads as possible: most packets are not
/// DNS, and they leave once their ports are known.
#[inline(always)]
pub fn parse(
    ctx: &SkBuffContext,
    config: &CaptureConfig,
    direction: Direction,
) -> Result<Datagram, i64> {
    let [version_ihl, _]: [u8; 2] = read(ctx, 0)?;
    // (family, protocol, offset of the transport header)
    let (family, protocol, l4_offset) = match version_ihl >> 4 {
        4 => {
            // Later fragments carry no UDP header; the first one does.
            let fragment = u16::from_be(read(ctx, 6)?);
            if fragment & 0x1fff != 0 {
                return Err(0);
            }
            let [_ttl, protocol]: [u8; 2] = read(ctx, 8)?;
            (FAMILY_V4, protocol, usize::from(version_ihl & 0x0f) * 4)
        }
        // Extension headers before UDP are not followed: DNS never uses them.
        6 => {
            let [next_header, _hop_limit]: [u8; 2] = read(ctx, 6)?;
            (FAMILY_V6, next_header, 40)
        }
        _ => return Err(0),
    };
    if protocol != PROTO_UDP && protocol != PROTO_TCP {
        return Err(0);
    }
    // Both ports in one read.
    let ports = u32::from_be(read(ctx, l4_offset)?);
    let (source_port, destination_port) = ((ports >> 16) as u16, ports as u16);
    let (local_port, remote_port) = match direction {
        Direction::Send => (source_port, destination_port),
        Direction::Recv => (destination_port, source_port),
    };
    if !config.is_dns_port(local_port) && !config.is_dns_port(remote_port) {
        return Err(0);
    }

    let mut datagram = Datagram {
        family,
        protocol,
        source: [0; 4],
        destination: [0; 4],
        source_port,
        destination_port,
        payload_offset: 0,
        payload_len: 0,
        sequence: 0,
    };
    // Bytes from the transport header to the packet's end.
    let l4_len = if family == FAMILY_V4 {
        datagram.source[0] = read(ctx, 12)?;
        datagram.destination[0] = read(ctx, 16)?;
        u32::from(u16::from_be(read(ctx, 2)?)).saturating_sub(l4_offset as u32)
    } else {
        datagram.source = read(ctx, 8)?;
        datagram.destination = read(ctx, 24)?;
        u32::from(u16::from_be(read(ctx, 4)?))
    };
    if protocol == PROTO_UDP {
        let udp_len = u32::from(u16::from_be(read(ctx, l4_offset + 4)?));
        datagram.payload_offset = l4_offset as u32 + 8;
        datagram.payload_len = udp_len.saturating_sub(8);
    } else {
        // The segment's data, where `tcp` finds the messages. Segments
        // without data (handshake, ACKs) hold none.
        let [data_offset, flags]: [u8; 2] = read(ctx, l4_offset + 12)?;
        let header_len = u32::from(data_offset >> 4) * 4;
        datagram.payload_offset = l4_offset as u32 + header_len;
        datagram.payload_len = l4_len.saturating_sub(header_len);
        if datagram.payload_len == 0 {
            return Err(0);
        }
        // A SYN takes one sequence number before the data (fast open).
        let syn = u32::from(flags & TCP_SYN != 0);
        datagram.sequence = u32::from_be(read(ctx, l4_offset + 4)?).wrapping_add(syn);
    }
    Ok(datagram)
}
