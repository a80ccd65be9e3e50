//! Captured frames → the DNS messages in them: link layer, IPv4/IPv6, then
//! UDP, or TCP with DNS's length framing.

use std::{
    collections::VecDeque,
    hash::{DefaultHasher, Hash, Hasher},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use super::{Packet, ReadOptions, monotonic_of};
use crate::{
    framing::{Framed, TcpStreams},
    identity::Identity,
    message::{Direction, Envelope, Message, Transport},
};

/// Link-layer header types (tcpdump.org/linktypes.html) this reads.
const LINKTYPE_NULL: u32 = 0;
const LINKTYPE_ETHERNET: u32 = 1;
const LINKTYPE_RAW: u32 = 101;
const LINKTYPE_LOOP: u32 = 108;
const LINKTYPE_LINUX_SLL: u32 = 113;
const LINKTYPE_IPV4: u32 = 228;
const LINKTYPE_IPV6: u32 = 229;
const LINKTYPE_LINUX_SLL2: u32 = 276;
/// Some systems write these numbers for raw IP.
const DLT_RAW_ALIASES: [u32; 2] = [12, 14];

pub fn link_type_supported(link_type: u32) -> bool {
    matches!(
        link_type,
        LINKTYPE_NULL
            | LINKTYPE_ETHERNET
            | LINKTYPE_RAW
            | LINKTYPE_LOOP
            | LINKTYPE_LINUX_SLL
            | LINKTYPE_IPV4
            | LINKTYPE_IPV6
            | LINKTYPE_LINUX_SLL2
    ) || DLT_RAW_ALIASES.contains(&link_type)
}

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: [u16; 2] = [0x8100, 0x88a8];
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// One captured frame.
pub struct Frame<'a> {
    pub link_type: u32,
    pub data: &'a [u8],
    pub wall_time_ns: i128,
    /// What dnstrace wrote about the packet, in its own files.
    pub identity: Option<Identity>,
}

/// Turns frames into messages, keeping TCP streams between frames.
pub struct Dissector {
    options: ReadOptions,
    streams: TcpStreams,
    /// Messages found and not yet handed out: a TCP segment may hold
    /// several.
    pub ready: VecDeque<Message>,
}

/// What the transport layer carried.
struct Segment<'a> {
    transport: Transport,
    source: SocketAddr,
    destination: SocketAddr,
    payload: &'a [u8],
    /// The payload's length on the wire (UDP says; TCP's is what came).
    wire_len: u32,
}

impl Dissector {
    pub fn new(options: ReadOptions) -> Self {
        Self {
            options,
            streams: TcpStreams::default(),
            ready: VecDeque::new(),
        }
    }

    /// Queues the DNS messages in `frame`. Frames that are not DNS are
    /// passed over; `Err` says why a frame is damaged.
    pub fn frame(&mut self, frame: Frame<'_>) -> Result<(), String> {
        let Some((version, ip)) = network_layer(frame.link_type, frame.data)? else {
            return Ok(());
        };
        let Some(segment) = transport_layer(version, ip)? else {
            return Ok(());
        };
        let ports = &self.options.ports;
        if !ports.contains(&segment.source.port()) && !ports.contains(&segment.destination.port()) {
            return Ok(());
        }
        match frame.identity {
            Some(identity) => self.with_identity(segment, identity, frame.wall_time_ns),
            None => self.without_process(segment, frame.wall_time_ns),
        }
        Ok(())
    }

    /// A packet from dnstrace's own pcapng: the process as it was traced.
    fn with_identity(&mut self, segment: Segment<'_>, identity: Identity, wall_time_ns: i128) {
        let (local, remote) = match identity.direction {
            Direction::Send => (segment.source, segment.destination),
            Direction::Recv => (segment.destination, segment.source),
        };
        let sending = identity.direction == Direction::Send;
        for framed in self.messages_in(&segment, identity.socket_cookie, sending) {
            let envelope = Envelope {
                wall_time_ns,
                monotonic_ns: monotonic_of(wall_time_ns),
                process: identity.process.clone(),
                socket_cookie: identity.socket_cookie,
                direction: identity.direction,
                transport: segment.transport,
                local,
                remote,
                // Files do not say whether a response was read.
                response_number: None,
            };
            let size = identity.size.unwrap_or(framed.len);
            let message =
                Message::decoded(envelope, framed.bytes, size, self.options.keep_payloads);
            self.ready.push_back(message);
        }
    }

    /// A packet from tcpdump and the like: seen from its client's side.
    fn without_process(&mut self, segment: Segment<'_>, wall_time_ns: i128) {
        // A TCP segment may continue a message: its first bytes say nothing
        // about QR, so only the ports tell which way it goes.
        let from_client = self
            .options
            .is_from_client(segment.source, segment.destination, None);
        let (client, server) = match from_client {
            true => (segment.source, segment.destination),
            false => (segment.destination, segment.source),
        };
        let mut hasher = DefaultHasher::new();
        (client, server).hash(&mut hasher);
        for framed in self.messages_in(&segment, hasher.finish(), from_client) {
            let message = self.options.client_view(Packet {
                wall_time_ns,
                transport: segment.transport,
                source: segment.source,
                destination: segment.destination,
                payload: framed.bytes,
                size: framed.len,
            });
            self.ready.push_back(message);
        }
    }

    /// The DNS messages a segment holds: a UDP datagram's payload; for TCP,
    /// those that start in the segment, on the stream `stream` in the
    /// direction `sending` (UDP needs neither).
    fn messages_in<'a>(
        &mut self,
        segment: &Segment<'a>,
        stream: u64,
        sending: bool,
    ) -> impl Iterator<Item = Framed<'a>> + use<'a> {
        // A datagram is one message: no vector for it.
        let (datagram, from_stream) = match segment.transport {
            Transport::Udp => (
                Some(Framed {
                    bytes: segment.payload,
                    len: segment.wire_len,
                }),
                Vec::new(),
            ),
            Transport::Tcp => (
                None,
                self.streams
                    .frame(stream, sending, segment.wire_len, segment.payload),
            ),
        };
        datagram.into_iter().chain(from_stream)
    }
}

/// The IP packet in a frame, and its version; `None` for other protocols.
fn network_layer(link_type: u32, data: &[u8]) -> Result<Option<(u8, &[u8])>, String> {
    let short = || {
        format!(
            "a {} byte frame is shorter than its link header",
            data.len()
        )
    };
    let (ethertype, ip) = match link_type {
        LINKTYPE_ETHERNET => {
            let mut at = 12;
            let mut ethertype = read_u16(data, at).ok_or_else(short)?;
            while ETHERTYPE_VLAN.contains(&ethertype) {
                at += 4;
                ethertype = read_u16(data, at).ok_or_else(short)?;
            }
            (Some(ethertype), data.get(at + 2..).ok_or_else(short)?)
        }
        LINKTYPE_LINUX_SLL => (
            Some(read_u16(data, 14).ok_or_else(short)?),
            data.get(16..).ok_or_else(short)?,
        ),
        LINKTYPE_LINUX_SLL2 => (
            Some(read_u16(data, 0).ok_or_else(short)?),
            data.get(20..).ok_or_else(short)?,
        ),
        // A four-byte address family in either byte order: the IP version
        // nibble says the same more simply.
        LINKTYPE_NULL | LINKTYPE_LOOP => (None, data.get(4..).ok_or_else(short)?),
        _ => (None, data),
    };
    match ethertype {
        Some(ETHERTYPE_IPV4) | Some(ETHERTYPE_IPV6) | None => {}
        Some(_) => return Ok(None),
    }
    let Some(first) = ip.first() else {
        return Err("a frame with no IP header".into());
    };
    match first >> 4 {
        4 | 6 => Ok(Some((first >> 4, ip))),
        // Raw IP link types may carry anything; Ethernet said IP.
        _ if ethertype.is_none() => Ok(None),
        version => Err(format!("IP version {version} in an IP frame")),
    }
}

/// The UDP or TCP segment in an IP packet; `None` for other protocols and
/// for fragments after the first.
fn transport_layer(version: u8, ip: &[u8]) -> Result<Option<Segment<'_>>, String> {
    // `declared` is the transport segment's length by the IP header, which
    // a capture cut short (tcpdump -s) does not change.
    let (protocol, source, destination, body, declared) = if version == 4 {
        let header_len = usize::from(ip.first().copied().unwrap_or(0) & 0x0f) * 4;
        if header_len < 20 || ip.len() < header_len {
            return Err(format!("an IPv4 header of {header_len} bytes does not fit"));
        }
        let total_len = usize::from(read_u16(ip, 2).unwrap_or(0));
        let fragment_offset = read_u16(ip, 6).unwrap_or(0) & 0x1fff;
        if fragment_offset != 0 {
            return Ok(None);
        }
        let source = IpAddr::V4(Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]));
        let destination = IpAddr::V4(Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]));
        // Captured bytes past the total length are link padding.
        let end = total_len.clamp(header_len, ip.len());
        let declared = total_len.saturating_sub(header_len);
        (ip[9], source, destination, &ip[header_len..end], declared)
    } else {
        let fixed = ip
            .get(..40)
            .ok_or_else(|| format!("an IPv6 header cut at {} bytes", ip.len()))?;
        let mut octets = [0u8; 16];
        octets.copy_from_slice(&fixed[8..24]);
        let source = IpAddr::V6(Ipv6Addr::from(octets));
        octets.copy_from_slice(&fixed[24..40]);
        let destination = IpAddr::V6(Ipv6Addr::from(octets));
        let payload_len = usize::from(read_u16(ip, 4).unwrap_or(0));
        let end = (40 + payload_len).min(ip.len());
        let mut next = fixed[6];
        let mut at = 40;
        // Hop-by-hop, routing and destination options, then a fragment
        // header, may stand before the transport header.
        loop {
            match next {
                0 | 43 | 60 => {
                    let (Some(&following), Some(&len)) = (ip.get(at), ip.get(at + 1)) else {
                        return Err("an IPv6 extension header is cut short".into());
                    };
                    next = following;
                    at += (usize::from(len) + 1) * 8;
                }
                44 => {
                    let following = *ip.get(at).ok_or("an IPv6 fragment header is cut short")?;
                    let offset =
                        read_u16(ip, at + 2).ok_or("an IPv6 fragment header is cut short")?;
                    if offset >> 3 != 0 {
                        return Ok(None);
                    }
                    next = following;
                    at += 8;
                }
                _ => break,
            }
        }
        let body = ip
            .get(at..end.max(at))
            .ok_or("IPv6 extension headers run past the packet")?;
        let declared = (40 + payload_len).saturating_sub(at);
        (next, source, destination, body, declared)
    };
    match protocol {
        IPPROTO_UDP => {
            let header = body
                .get(..8)
                .ok_or_else(|| format!("a UDP header cut at {} bytes", body.len()))?;
            let udp_len = read_u16(header, 4).unwrap_or(0);
            if udp_len < 8 {
                return Err(format!("a UDP length of {udp_len}"));
            }
            let wire_len = u32::from(udp_len) - 8;
            let payload = &body[8..body.len().min(usize::from(udp_len))];
            Ok(Some(Segment {
                transport: Transport::Udp,
                source: SocketAddr::new(source, read_u16(header, 0).unwrap_or(0)),
                destination: SocketAddr::new(destination, read_u16(header, 2).unwrap_or(0)),
                payload,
                wire_len,
            }))
        }
        IPPROTO_TCP => {
            let header_len = usize::from(body.get(12).copied().unwrap_or(0) >> 4) * 4;
            if header_len < 20 || body.len() < header_len {
                return Err(format!("a TCP header of {header_len} bytes does not fit"));
            }
            let payload = &body[header_len..];
            // Offloading captures may show an IP length of 0: never less
            // than what is there.
            let wire_len = declared.saturating_sub(header_len).max(payload.len());
            if wire_len == 0 {
                return Ok(None);
            }
            Ok(Some(Segment {
                transport: Transport::Tcp,
                source: SocketAddr::new(source, read_u16(body, 0).unwrap_or(0)),
                destination: SocketAddr::new(destination, read_u16(body, 2).unwrap_or(0)),
                payload,
                wire_len: u32::try_from(wire_len).unwrap_or(u32::MAX),
            }))
        }
        _ => Ok(None),
    }
}

fn read_u16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}
