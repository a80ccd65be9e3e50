//! pcapng (`-w FILE`): every message as a packet Wireshark and tshark open,
//! with real IPv4/IPv6 and UDP or TCP headers, its true addresses and ports,
//! a nanosecond timestamp, and the process in the packet's comment
//! (docs/formats.md).

use std::{
    borrow::Cow,
    collections::HashMap,
    fs::File,
    io::{self, BufWriter, Write},
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use pcap_file::{
    DataLink,
    pcapng::{
        PcapNgWriter,
        blocks::{
            enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption},
            interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
        },
    },
};

use super::{Output, Summary};
use crate::{
    identity::Identity,
    message::{Direction, Dropped, Message, Transport},
};

pub struct PcapngOutput {
    writer: PcapNgWriter<BufWriter<File>>,
    /// Next TCP sequence number per socket and direction, so that
    /// Wireshark can follow each stream.
    tcp_sequence: HashMap<(u64, bool), u32>,
}

const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

impl PcapngOutput {
    /// Writes the section and interface headers: raw IP packets, with
    /// nanosecond timestamps.
    pub fn new(file: File) -> io::Result<Self> {
        let mut writer = PcapNgWriter::new(BufWriter::new(file)).map_err(to_io)?;
        let interface = InterfaceDescriptionBlock {
            linktype: DataLink::RAW,
            snaplen: 0,
            options: vec![
                InterfaceDescriptionOption::IfName(Cow::Borrowed("dnstrace")),
                InterfaceDescriptionOption::IfDescription(Cow::Borrowed(
                    "DNS messages of every process, captured by dnstrace's eBPF probes",
                )),
                InterfaceDescriptionOption::IfTsResol(9),
            ],
        };
        writer.write_pcapng_block(interface).map_err(to_io)?;
        Ok(Self {
            writer,
            tcp_sequence: HashMap::new(),
        })
    }

    fn packet(&mut self, message: &Message) -> Vec<u8> {
        let (source, destination) = match message.envelope.direction {
            Direction::Send => (message.envelope.local, message.envelope.remote),
            Direction::Recv => (message.envelope.remote, message.envelope.local),
        };
        let mut transport = match message.envelope.transport {
            Transport::Udp => udp_header(source, destination, message.payload.len()),
            Transport::Tcp => {
                let key = (
                    message.envelope.socket_cookie,
                    message.envelope.direction == Direction::Send,
                );
                let sequence = self.tcp_sequence.entry(key).or_insert(1);
                let header = tcp_header(source, destination, *sequence);
                *sequence = sequence.wrapping_add(message.payload.len() as u32 + 2);
                header
            }
        };
        if message.envelope.transport == Transport::Tcp {
            transport.extend_from_slice(&(message.payload.len() as u16).to_be_bytes());
        }
        transport.extend_from_slice(&message.payload);
        let protocol = match message.envelope.transport {
            Transport::Udp => PROTO_UDP,
            Transport::Tcp => PROTO_TCP,
        };
        let checksum = transport_checksum(source.ip(), destination.ip(), protocol, &transport);
        let at = if protocol == PROTO_UDP { 6 } else { 16 };
        transport[at..at + 2].copy_from_slice(&checksum.to_be_bytes());
        let mut packet = ip_header(source.ip(), destination.ip(), protocol, transport.len());
        packet.extend_from_slice(&transport);
        packet
    }
}

impl PcapngOutput {
    /// One message as a packet, with `comment` (tshark's `frame.comment`).
    fn write(&mut self, message: &Message, comment: String) -> io::Result<()> {
        let data = self.packet(message);
        let missing = (message.size as usize).saturating_sub(message.payload.len());
        let block = EnhancedPacketBlock {
            interface_id: 0,
            timestamp: Duration::from_nanos(
                u64::try_from(message.envelope.wall_time_ns).unwrap_or(0),
            ),
            original_len: (data.len() + missing) as u32,
            data: Cow::Owned(data),
            // tshark shows it as `frame.comment`, as with ptcpdump's files.
            options: vec![EnhancedPacketOption::Comment(Cow::Owned(comment))],
        };
        self.writer.write_pcapng_block(block).map_err(to_io)?;
        Ok(())
    }
}

impl Output for PcapngOutput {
    fn message(&mut self, message: &Message) -> io::Result<()> {
        self.write(message, Identity::of(message).to_text())
    }

    /// The packet as it was when dropped, with why and where in its
    /// comment.
    fn dropped(&mut self, dropped: &Dropped) -> io::Result<()> {
        let comment = format!(
            "{} dropped={} location={}",
            Identity::of(&dropped.message).to_text(),
            dropped.reason,
            dropped.location
        );
        self.write(&dropped.message, comment)
    }

    fn needs_payload(&self) -> bool {
        true
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer.get_mut().flush()
    }

    fn finish(&mut self, _summary: &Summary) -> io::Result<()> {
        self.flush()
    }
}

fn to_io(error: pcap_file::PcapError) -> io::Error {
    match error {
        pcap_file::PcapError::IoError(error) => error,
        other => io::Error::other(other.to_string()),
    }
}

fn ip_header(source: IpAddr, destination: IpAddr, protocol: u8, payload_len: usize) -> Vec<u8> {
    match (source, destination) {
        (IpAddr::V4(source), IpAddr::V4(destination)) => {
            let mut header = vec![0u8; 20];
            header[0] = 0x45;
            header[2..4].copy_from_slice(&((20 + payload_len) as u16).to_be_bytes());
            header[6] = 0x40; // don't fragment
            header[8] = 64;
            header[9] = protocol;
            header[12..16].copy_from_slice(&source.octets());
            header[16..20].copy_from_slice(&destination.octets());
            let checksum = ones_complement(&header);
            header[10..12].copy_from_slice(&checksum.to_be_bytes());
            header
        }
        (source, destination) => {
            let mut header = vec![0u8; 40];
            header[0] = 0x60;
            header[4..6].copy_from_slice(&(payload_len as u16).to_be_bytes());
            header[6] = protocol;
            header[7] = 64;
            header[8..24].copy_from_slice(&ipv6_octets(source));
            header[24..40].copy_from_slice(&ipv6_octets(destination));
            header
        }
    }
}

fn ipv6_octets(address: IpAddr) -> [u8; 16] {
    match address {
        IpAddr::V6(address) => address.octets(),
        IpAddr::V4(address) => address.to_ipv6_mapped().octets(),
    }
}

/// Checksum left zero; filled in once the payload is appended.
fn udp_header(source: SocketAddr, destination: SocketAddr, payload_len: usize) -> Vec<u8> {
    let mut header = vec![0u8; 8];
    header[0..2].copy_from_slice(&source.port().to_be_bytes());
    header[2..4].copy_from_slice(&destination.port().to_be_bytes());
    header[4..6].copy_from_slice(&((8 + payload_len) as u16).to_be_bytes());
    header
}

/// A PSH|ACK segment; the checksum is filled in later.
fn tcp_header(source: SocketAddr, destination: SocketAddr, sequence: u32) -> Vec<u8> {
    let mut header = vec![0u8; 20];
    header[0..2].copy_from_slice(&source.port().to_be_bytes());
    header[2..4].copy_from_slice(&destination.port().to_be_bytes());
    header[4..8].copy_from_slice(&sequence.to_be_bytes());
    header[12] = 5 << 4;
    header[13] = 0x18;
    header[14..16].copy_from_slice(&65535u16.to_be_bytes());
    header
}

/// The UDP/TCP checksum over the pseudo-header and the segment.
fn transport_checksum(source: IpAddr, destination: IpAddr, protocol: u8, segment: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(40 + segment.len());
    match (source, destination) {
        (IpAddr::V4(source), IpAddr::V4(destination)) => {
            pseudo.extend_from_slice(&source.octets());
            pseudo.extend_from_slice(&destination.octets());
            pseudo.extend_from_slice(&[0, protocol]);
            pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
        }
        (source, destination) => {
            pseudo.extend_from_slice(&ipv6_octets(source));
            pseudo.extend_from_slice(&ipv6_octets(destination));
            pseudo.extend_from_slice(&(segment.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, protocol]);
        }
    }
    pseudo.extend_from_slice(segment);
    match ones_complement(&pseudo) {
        // UDP sends an all-zero checksum as all ones.
        0 if protocol == PROTO_UDP => 0xffff,
        sum => sum,
    }
}

fn ones_complement(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ipv4_header_checksum_verifies() {
        let header = ip_header(
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            PROTO_UDP,
            30,
        );
        assert_eq!(ones_complement(&header), 0, "a valid header sums to zero");
    }
}
