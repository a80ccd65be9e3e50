//! pcap and pcapng files: from tcpdump, tshark, Wireshark, or `dnstrace -w`
//! (whose packet comments carry the process). Records are cut out of the
//! file here, so damage is found at a known offset; pcap-file parses the
//! pcapng blocks but packets, which are read here.

use std::io::{self, Read};

use pcap_file::pcapng::{
    Block, PcapNgParser, blocks::interface_description::InterfaceDescriptionOption,
};

use super::{
    InputError, ReadOptions, Reader, Skipped,
    dissect::{Dissector, Frame, link_type_supported},
    read_up_to,
};
use crate::{identity::ParsedTexts, message::Message};

/// Larger records are not packets but a broken length field.
const MAX_RECORD: usize = 16 << 20;

fn io_error(offset: u64, error: io::Error) -> InputError {
    InputError {
        offset,
        reason: format!("read failed: {error}"),
    }
}

pub struct PcapReader<R> {
    input: R,
    offset: u64,
    big_endian: bool,
    nanoseconds: bool,
    link_type: u32,
    dissector: Dissector,
    skipped: Skipped,
}

impl<R: Read> PcapReader<R> {
    pub fn open(mut input: R, options: &ReadOptions) -> Result<Self, InputError> {
        let mut header = [0u8; 24];
        let read = read_up_to(&mut input, &mut header).map_err(|e| io_error(0, e))?;
        if read < header.len() {
            return Err(InputError {
                offset: read as u64,
                reason: "the pcap file header is cut short".into(),
            });
        }
        let (big_endian, nanoseconds) = match header[..4] {
            [0xa1, 0xb2, 0xc3, 0xd4] => (true, false),
            [0xd4, 0xc3, 0xb2, 0xa1] => (false, false),
            [0xa1, 0xb2, 0x3c, 0x4d] => (true, true),
            [0x4d, 0x3c, 0xb2, 0xa1] => (false, true),
            _ => {
                return Err(InputError {
                    offset: 0,
                    reason: "not a pcap file".into(),
                });
            }
        };
        let number = |at: usize| read_u32(&header[at..at + 4], big_endian);
        // The upper bits may hold FCS information.
        let link_type = number(20) & 0x0fff_ffff;
        if !link_type_supported(link_type) {
            return Err(InputError {
                offset: 20,
                reason: format!("link-layer type {link_type} is not one dnstrace reads"),
            });
        }
        Ok(Self {
            input,
            offset: 24,
            big_endian,
            nanoseconds,
            link_type,
            dissector: Dissector::new(options.clone()),
            skipped: Skipped::default(),
        })
    }
}

impl<R: Read> Reader for PcapReader<R> {
    fn next_message(&mut self) -> Result<Option<Message>, InputError> {
        loop {
            if let Some(message) = self.dissector.ready.pop_front() {
                return Ok(Some(message));
            }
            let at = self.offset;
            let mut header = [0u8; 16];
            let read = read_up_to(&mut self.input, &mut header).map_err(|e| io_error(at, e))?;
            if read == 0 {
                return Ok(None);
            }
            if read < header.len() {
                self.skipped.record(at, "the last record is cut short");
                return Ok(None);
            }
            let number = |at: usize| read_u32(&header[at..at + 4], self.big_endian);
            let captured = number(8) as usize;
            if captured > MAX_RECORD {
                return Err(InputError {
                    offset: at + 8,
                    reason: format!("a record length of {captured} bytes"),
                });
            }
            let fraction = i128::from(number(4)) * if self.nanoseconds { 1 } else { 1000 };
            let wall_time_ns = i128::from(number(0)) * 1_000_000_000 + fraction;
            let mut data = vec![0u8; captured];
            let read = read_up_to(&mut self.input, &mut data).map_err(|e| io_error(at, e))?;
            self.offset = at + 16 + read as u64;
            if read < captured {
                self.skipped.record(at, "the last record is cut short");
                return Ok(None);
            }
            let frame = Frame {
                link_type: self.link_type,
                data: &data,
                wall_time_ns,
                identity: None,
            };
            if let Err(reason) = self.dissector.frame(frame) {
                self.skipped.record(at, reason);
            }
        }
    }

    fn skipped(&self) -> &Skipped {
        &self.skipped
    }
}

fn read_u32(bytes: &[u8], big_endian: bool) -> u32 {
    let array = [bytes[0], bytes[1], bytes[2], bytes[3]];
    if big_endian {
        u32::from_be_bytes(array)
    } else {
        u32::from_le_bytes(array)
    }
}

/// What a pcapng interface says about its packets.
struct Interface {
    link_type: u32,
    /// Nanoseconds per timestamp unit, as a multiplier and divisor.
    unit: (i128, i128),
}

const SECTION_HEADER: u32 = 0x0a0d_0d0a;
const INTERFACE_DESCRIPTION: u32 = 1;
/// The link type of an interface whose description did not parse: no link
/// type has this number, so its packets are refused.
const UNREADABLE_INTERFACE: u32 = u32::MAX;
const BYTE_ORDER_MAGIC: u32 = 0x1a2b_3c4d;

pub struct PcapngReader<R> {
    input: R,
    offset: u64,
    big_endian: bool,
    parser: PcapNgParser,
    interfaces: Vec<Interface>,
    dissector: Dissector,
    skipped: Skipped,
    texts: ParsedTexts,
    /// The block being read.
    block: Vec<u8>,
}

impl<R: Read> PcapngReader<R> {
    pub fn open(mut input: R, options: &ReadOptions) -> Result<Self, InputError> {
        let mut block = Vec::new();
        let big_endian = match read_block(&mut input, 0, None, &mut block)? {
            Some(BlockRead::Whole { big_endian }) => big_endian,
            _ => {
                return Err(InputError {
                    offset: 0,
                    reason: "the pcapng section header is cut short".into(),
                });
            }
        };
        let (_, parser) = PcapNgParser::new(&block).map_err(|e| InputError {
            offset: 0,
            reason: format!("a bad pcapng section header: {e}"),
        })?;
        Ok(Self {
            input,
            offset: block.len() as u64,
            big_endian,
            parser,
            interfaces: Vec::new(),
            dissector: Dissector::new(options.clone()),
            skipped: Skipped::default(),
            texts: ParsedTexts::default(),
            block,
        })
    }

    /// Feeds one whole block to the parser and the dissector.
    fn block(&mut self, bytes: &[u8]) -> Result<(), String> {
        if read_u32(bytes, self.big_endian) == ENHANCED_PACKET {
            let packet = EnhancedPacket::parse(bytes, self.big_endian)
                .map_err(|error| format!("a block that does not parse: {error}"))?;
            return self.packet(&packet);
        }
        let block = match self.parser.next_block(bytes) {
            Ok((_, block)) => block,
            Err(error) => {
                // Packets name their interface by its position: keep the
                // count right, and refuse that interface's packets.
                if read_u32(bytes, self.big_endian) == INTERFACE_DESCRIPTION {
                    self.interfaces.push(Interface {
                        link_type: UNREADABLE_INTERFACE,
                        unit: unit_of(6),
                    });
                }
                return Err(format!("a block that does not parse: {error}"));
            }
        };
        match block {
            Block::SectionHeader(_) => self.interfaces.clear(),
            Block::InterfaceDescription(interface) => {
                let resolution = interface.options.iter().find_map(|option| match option {
                    InterfaceDescriptionOption::IfTsResol(resolution) => Some(*resolution),
                    _ => None,
                });
                self.interfaces.push(Interface {
                    link_type: u32::from(interface.linktype),
                    unit: unit_of(resolution.unwrap_or(6)),
                });
            }
            Block::SimplePacket(_) | Block::Packet(_) => {
                return Err("a packet block without a usable timestamp".into());
            }
            _ => {}
        }
        Ok(())
    }
}

impl<R> PcapngReader<R> {
    fn packet(&mut self, packet: &EnhancedPacket<'_>) -> Result<(), String> {
        let interface = self
            .interfaces
            .get(packet.interface_id as usize)
            .ok_or_else(|| format!("a packet on undeclared interface {}", packet.interface_id))?;
        if interface.link_type == UNREADABLE_INTERFACE {
            return Err("a packet on an interface whose description did not parse".into());
        }
        if !link_type_supported(interface.link_type) {
            return Err(format!(
                "link-layer type {} is not one dnstrace reads",
                interface.link_type
            ));
        }
        let (multiply, divide) = interface.unit;
        let identity = packet.comment.and_then(|text| self.texts.parse(text));
        self.dissector.frame(Frame {
            link_type: interface.link_type,
            data: packet.data,
            wall_time_ns: i128::from(packet.units) * multiply / divide,
            identity,
        })
    }
}

/// The fields of an enhanced packet block that dnstrace uses, read by
/// hand: nearly every block of a file is one, and pcap-file's parse of it
/// (options into a fresh vector) was a third of reading a file. Options
/// other than the first comment are stepped over, not checked.
struct EnhancedPacket<'a> {
    interface_id: u32,
    /// Timestamp units since the epoch (the interface says their size).
    units: u64,
    data: &'a [u8],
    comment: Option<&'a str>,
}

const ENHANCED_PACKET: u32 = 6;
const OPTION_END: u16 = 0;
const OPTION_COMMENT: u16 = 1;

impl<'a> EnhancedPacket<'a> {
    /// `bytes` is the whole block, type and both lengths included.
    fn parse(bytes: &'a [u8], big_endian: bool) -> Result<Self, &'static str> {
        let body = bytes
            .get(8..bytes.len().saturating_sub(4))
            .filter(|body| body.len() >= 20)
            .ok_or("an enhanced packet block too short for its header")?;
        let word = |at: usize| read_u32(&body[at..at + 4], big_endian);
        let captured = word(12) as usize;
        let padded = captured.next_multiple_of(4);
        let data = body
            .get(20..20 + captured)
            .filter(|_| body.len() >= 20 + padded)
            .ok_or("a packet longer than its block")?;
        let mut options = &body[20 + padded..];
        let mut comment = None;
        while let [a, b, c, d, rest @ ..] = options {
            let (code, length) = match big_endian {
                true => (u16::from_be_bytes([*a, *b]), u16::from_be_bytes([*c, *d])),
                false => (u16::from_le_bytes([*a, *b]), u16::from_le_bytes([*c, *d])),
            };
            if code == OPTION_END {
                break;
            }
            let length = usize::from(length);
            let value = rest
                .get(..length)
                .filter(|_| rest.len() >= length.next_multiple_of(4))
                .ok_or("an option longer than its block")?;
            if code == OPTION_COMMENT && comment.is_none() {
                comment =
                    Some(std::str::from_utf8(value).map_err(|_| "a comment that is not UTF-8")?);
            }
            options = &rest[length.next_multiple_of(4)..];
        }
        Ok(Self {
            interface_id: word(0),
            units: u64::from(word(4)) << 32 | u64::from(word(8)),
            data,
            comment,
        })
    }
}

/// `if_tsresol`: 10^-n seconds, or 2^-n with the top bit set.
fn unit_of(resolution: u8) -> (i128, i128) {
    let exponent = u32::from(resolution & 0x7f);
    let per_second = if resolution & 0x80 == 0 {
        10i128.checked_pow(exponent)
    } else {
        2i128.checked_pow(exponent)
    };
    match per_second {
        Some(per_second) if per_second > 0 => (1_000_000_000, per_second),
        _ => (1_000, 1),
    }
}

enum BlockRead {
    /// The block is in the buffer, whole.
    Whole {
        big_endian: bool,
    },
    CutShort,
}

/// Reads one block at `at` into `bytes` (one buffer serves every block of
/// a file). A section header sets the byte order; other blocks use
/// `big_endian` of their section.
fn read_block(
    input: &mut impl Read,
    at: u64,
    big_endian: Option<bool>,
    bytes: &mut Vec<u8>,
) -> Result<Option<BlockRead>, InputError> {
    let mut head = [0u8; 12];
    let read = read_up_to(input, &mut head[..8]).map_err(|e| io_error(at, e))?;
    if read == 0 {
        return Ok(None);
    }
    if read < 8 {
        return Ok(Some(BlockRead::CutShort));
    }
    let mut have = 8;
    let little_type = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let big_endian = if little_type == SECTION_HEADER {
        // The byte-order magic follows the length.
        let read = read_up_to(input, &mut head[8..12]).map_err(|e| io_error(at, e))?;
        if read < 4 {
            return Ok(Some(BlockRead::CutShort));
        }
        have = 12;
        match (read_u32(&head[8..12], true), read_u32(&head[8..12], false)) {
            (BYTE_ORDER_MAGIC, _) => true,
            (_, BYTE_ORDER_MAGIC) => false,
            _ => {
                return Err(InputError {
                    offset: at + 8,
                    reason: "a section header with no byte-order magic".into(),
                });
            }
        }
    } else {
        big_endian.ok_or_else(|| InputError {
            offset: at,
            reason: "not a pcapng file: it does not start with a section header".into(),
        })?
    };
    let total = read_u32(&head[4..8], big_endian) as usize;
    if total < 12 || !total.is_multiple_of(4) || total > MAX_RECORD {
        return Err(InputError {
            offset: at + 4,
            reason: format!("a block length of {total} bytes"),
        });
    }
    bytes.clear();
    bytes.resize(total, 0);
    bytes[..have].copy_from_slice(&head[..have]);
    let read = read_up_to(input, &mut bytes[have..]).map_err(|e| io_error(at, e))?;
    if have + read < total {
        return Ok(Some(BlockRead::CutShort));
    }
    let trailer = read_u32(&bytes[total - 4..], big_endian) as usize;
    if trailer != total {
        return Err(InputError {
            offset: at + total as u64 - 4,
            reason: format!("a block of {total} bytes ends with a length of {trailer}"),
        });
    }
    Ok(Some(BlockRead::Whole { big_endian }))
}

impl<R: Read> Reader for PcapngReader<R> {
    fn next_message(&mut self) -> Result<Option<Message>, InputError> {
        loop {
            if let Some(message) = self.dissector.ready.pop_front() {
                return Ok(Some(message));
            }
            let at = self.offset;
            let mut bytes = std::mem::take(&mut self.block);
            let read = read_block(&mut self.input, at, Some(self.big_endian), &mut bytes);
            match read? {
                None => return Ok(None),
                Some(BlockRead::CutShort) => {
                    self.skipped.record(at, "the last block is cut short");
                    return Ok(None);
                }
                Some(BlockRead::Whole { big_endian }) => {
                    self.offset = at + bytes.len() as u64;
                    self.big_endian = big_endian;
                    if let Err(reason) = self.block(&bytes) {
                        self.skipped.record(at, reason);
                    }
                }
            }
            self.block = bytes;
        }
    }

    fn skipped(&self) -> &Skipped {
        &self.skipped
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::message::{Direction, Transport};

    fn options() -> ReadOptions {
        ReadOptions {
            ports: vec![53],
            keep_payloads: false,
        }
    }

    /// A DNS header and one question for `a.` type A.
    fn dns(id: u16, response: bool) -> Vec<u8> {
        let mut bytes = id.to_be_bytes().to_vec();
        bytes.extend_from_slice(&[
            if response { 0x81 } else { 0x01 },
            0x80,
            0,
            1,
            0,
            0,
            0,
            0,
            0,
            0,
        ]);
        bytes.extend_from_slice(&[1, b'a', 0, 0, 1, 0, 1]);
        bytes
    }

    fn ipv4_udp(source: SocketAddr, destination: SocketAddr, payload: &[u8]) -> Vec<u8> {
        let ip = |address: SocketAddr| match address.ip() {
            std::net::IpAddr::V4(v4) => v4.octets(),
            std::net::IpAddr::V6(_) => unreachable!("IPv4 only"),
        };
        let total = (20 + 8 + payload.len()) as u16;
        let mut packet = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0];
        packet[2..4].copy_from_slice(&total.to_be_bytes());
        packet.extend_from_slice(&ip(source));
        packet.extend_from_slice(&ip(destination));
        packet.extend_from_slice(&source.port().to_be_bytes());
        packet.extend_from_slice(&destination.port().to_be_bytes());
        packet.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        packet.extend_from_slice(&[0, 0]);
        packet.extend_from_slice(payload);
        packet
    }

    fn ethernet(ip: &[u8]) -> Vec<u8> {
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&[0x81, 0x00, 0, 7]); // a VLAN tag
        frame.extend_from_slice(&[0x08, 0x00]);
        frame.extend_from_slice(ip);
        frame
    }

    /// A little-endian microsecond pcap of `frames`.
    fn pcap(link_type: u32, frames: &[Vec<u8>]) -> Vec<u8> {
        let mut file = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
        file.extend_from_slice(&[0; 8]);
        file.extend_from_slice(&65535u32.to_le_bytes());
        file.extend_from_slice(&link_type.to_le_bytes());
        for (index, frame) in frames.iter().enumerate() {
            file.extend_from_slice(&1_795_758_586u32.to_le_bytes());
            file.extend_from_slice(&(index as u32 * 1000).to_le_bytes());
            file.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            file.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            file.extend_from_slice(frame);
        }
        file
    }

    fn read_all(reader: &mut dyn Reader) -> Result<Vec<Message>, InputError> {
        let mut messages = Vec::new();
        while let Some(message) = reader.next_message()? {
            messages.push(message);
        }
        Ok(messages)
    }

    const CLIENT: &str = "10.0.0.2:40000";
    const SERVER: &str = "10.0.0.1:53";

    fn exchange() -> Vec<Vec<u8>> {
        let (client, server) = (CLIENT.parse().unwrap(), SERVER.parse().unwrap());
        vec![
            ethernet(&ipv4_udp(client, server, &dns(7, false))),
            ethernet(&ipv4_udp(server, client, &dns(7, true))),
        ]
    }

    #[test]
    fn a_tcpdump_capture_reads_from_the_clients_side() {
        let file = pcap(1, &exchange());
        let mut reader = PcapReader::open(&file[..], &options()).unwrap();
        let messages = read_all(&mut reader).unwrap();
        assert_eq!(messages.len(), 2);
        for (message, direction) in messages.iter().zip([Direction::Send, Direction::Recv]) {
            assert_eq!(message.envelope.direction, direction);
            assert_eq!(message.envelope.local, CLIENT.parse().unwrap());
            assert_eq!(message.envelope.remote, SERVER.parse().unwrap());
            assert_eq!(message.envelope.transport, Transport::Udp);
            assert_eq!(message.envelope.process, None);
            assert_eq!(message.dns.question.as_ref().unwrap().name, "a.");
        }
        assert_eq!(
            messages[0].envelope.socket_cookie,
            messages[1].envelope.socket_cookie
        );
        assert_eq!(messages[1].envelope.wall_time_ns, 1_795_758_586_001_000_000);
        assert_eq!(reader.skipped().count, 0);
    }

    #[test]
    fn an_answer_from_another_address_arrives_on_the_same_socket() {
        let (client, server) = (CLIENT.parse().unwrap(), SERVER.parse().unwrap());
        let other: SocketAddr = "10.0.0.9:53".parse().unwrap();
        let file = pcap(
            1,
            &[
                ethernet(&ipv4_udp(client, server, &dns(7, false))),
                ethernet(&ipv4_udp(other, client, &dns(7, true))),
            ],
        );
        let mut reader = PcapReader::open(&file[..], &options()).unwrap();
        let messages = read_all(&mut reader).unwrap();
        assert_eq!(messages.len(), 2);
        assert_eq!(
            messages[0].envelope.socket_cookie,
            messages[1].envelope.socket_cookie
        );
        assert_eq!(messages[1].envelope.remote, other);
    }

    #[test]
    fn linux_cooked_frames_read_like_ethernet() {
        let (client, server) = (CLIENT.parse().unwrap(), SERVER.parse().unwrap());
        let mut frame = vec![0x08, 0x00];
        frame.extend_from_slice(&[0; 18]);
        frame.extend_from_slice(&ipv4_udp(client, server, &dns(9, false)));
        let file = pcap(276, &[frame]);
        let mut reader = PcapReader::open(&file[..], &options()).unwrap();
        let messages = read_all(&mut reader).unwrap();
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].dns.header.unwrap().id, 9);
    }

    #[test]
    fn a_cut_last_record_is_skipped_and_a_broken_length_stops_the_file() {
        let file = pcap(1, &exchange());
        let cut = &file[..file.len() - 5];
        let mut reader = PcapReader::open(cut, &options()).unwrap();
        assert_eq!(read_all(&mut reader).unwrap().len(), 1);
        assert_eq!(reader.skipped().count, 1);

        let mut broken = file.clone();
        let second_record = 24 + 16 + exchange()[0].len();
        broken[second_record + 8..second_record + 12].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut reader = PcapReader::open(&broken[..], &options()).unwrap();
        assert_eq!(
            reader
                .next_message()
                .unwrap()
                .unwrap()
                .dns
                .header
                .unwrap()
                .id,
            7
        );
        let error = reader.next_message().unwrap_err();
        assert_eq!(error.offset, second_record as u64 + 8);
    }

    #[test]
    fn damaged_frames_are_skipped_and_others_passed_over() {
        let mut frames = exchange();
        // An IPv4 header claiming 60 bytes in a short frame.
        frames.insert(1, ethernet(&[0x4f, 0, 0, 20]));
        // ARP: not IP, not counted.
        let mut arp = vec![0u8; 12];
        arp.extend_from_slice(&[0x08, 0x06, 0, 1]);
        frames.insert(0, arp);
        let file = pcap(1, &frames);
        let mut reader = PcapReader::open(&file[..], &options()).unwrap();
        assert_eq!(read_all(&mut reader).unwrap().len(), 2);
        assert_eq!(reader.skipped().count, 1);
    }

    #[test]
    fn unknown_link_types_and_foreign_files_are_refused() {
        assert!(PcapReader::open(&pcap(147, &[])[..], &options()).is_err());
        assert!(PcapReader::open(&b"not a pcap at all, but long enough"[..], &options()).is_err());
        assert!(PcapngReader::open(&b"\x0a\x0d\x0d\x0a\x1c\0\0\0"[..], &options()).is_err());
    }

    #[test]
    fn dnstraces_own_pcapng_reads_back_with_its_processes() {
        use crate::output::{Output, pcapng::PcapngOutput};
        let path = std::env::temp_dir().join(format!("dnstrace-{}.pcapng", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        let mut output = PcapngOutput::new(file).unwrap();
        let payload = dns(11, true);
        let process = crate::message::Process {
            pid: 4242,
            tid: 4243,
            comm: "Web Content".into(),
            uid: 1000,
            cgroup_id: 5,
            netns: Some(4_026_531_840),
            facts: crate::message::Facts::unknown(),
        };
        let written = crate::message::Message::decoded(
            crate::message::Envelope {
                wall_time_ns: 1_795_758_586_123_456_789,
                monotonic_ns: 1,
                process: Some(process.clone()),
                socket_cookie: 77,
                direction: Direction::Recv,
                transport: Transport::Tcp,
                local: "[fd00::2]:40000".parse().unwrap(),
                remote: "[fd00::1]:53".parse().unwrap(),
                response_number: None,
            },
            &payload,
            payload.len() as u32,
            true,
        );
        output.message(&written).unwrap();
        output.flush().unwrap();
        drop(output);
        let bytes = std::fs::read(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let mut reader = PcapngReader::open(&bytes[..], &options()).unwrap();
        let messages = read_all(&mut reader).unwrap();
        let [read] = &messages[..] else {
            panic!("{} messages", messages.len())
        };
        assert_eq!(read.envelope.process, Some(process));
        assert_eq!(read.envelope.wall_time_ns, written.envelope.wall_time_ns);
        assert_eq!(
            (
                read.envelope.socket_cookie,
                read.envelope.direction,
                read.envelope.transport,
                read.envelope.local,
                read.envelope.remote
            ),
            (
                77,
                Direction::Recv,
                Transport::Tcp,
                written.envelope.local,
                written.envelope.remote
            )
        );
        assert_eq!(read.dns, written.dns);
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            let mut file = pcap(1, &exchange());
            for _ in 0..8 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let at = 24 + (seed as usize % (file.len() - 24));
                file[at] = (seed >> 32) as u8;
            }
            if let Ok(mut reader) = PcapReader::open(&file[..], &options()) {
                let _ = read_all(&mut reader);
            }
        }
    }

    /// pcap-file writes enhanced packet blocks, in both byte orders, with
    /// odd lengths and other options around the comment; the hand parse
    /// agrees with pcap-file's on each, and on every damaged copy that
    /// pcap-file still parses.
    #[test]
    fn enhanced_packets_read_by_hand_as_pcap_file_reads_them() {
        use std::{borrow::Cow, time::Duration};

        use byteorder::{BigEndian, LittleEndian};
        use pcap_file::pcapng::blocks::{
            PcapNgBlock,
            enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption},
        };

        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut agreed = 0;
        for case in 0..400u32 {
            let data: Vec<u8> = (0..case % 67).map(|at| at as u8).collect();
            let comment = format!("pid={case} comm=x{}", "y".repeat(case as usize % 5));
            let mut options = vec![EnhancedPacketOption::Flags(case)];
            if case % 3 != 0 {
                options.push(EnhancedPacketOption::Comment(Cow::Owned(comment.clone())));
            }
            options.push(EnhancedPacketOption::DropCount(u64::from(case)));
            let block = EnhancedPacketBlock {
                interface_id: case % 2,
                timestamp: Duration::from_nanos(1_795_758_586_123_456_789 + u64::from(case)),
                original_len: data.len() as u32 + case % 2,
                data: Cow::Owned(data),
                options,
            }
            .into_block();
            let big_endian = case % 2 == 1;
            let mut bytes = Vec::new();
            match big_endian {
                true => block.write_to::<BigEndian, _>(&mut bytes).unwrap(),
                false => block.write_to::<LittleEndian, _>(&mut bytes).unwrap(),
            };
            let mut damaged = bytes.clone();
            if case % 4 != 0 {
                for _ in 0..1 + case % 3 {
                    let at = 8 + next() as usize % (damaged.len() - 12);
                    damaged[at] = next() as u8;
                }
            }
            for bytes in [&bytes, &damaged] {
                let theirs = PcapNgParser::new(&section_header(big_endian))
                    .unwrap()
                    .1
                    .next_block(bytes);
                let Ok((_, Block::EnhancedPacket(theirs))) = theirs else {
                    continue;
                };
                let ours = EnhancedPacket::parse(bytes, big_endian).unwrap();
                let their_comment = theirs.options.iter().find_map(|option| match option {
                    EnhancedPacketOption::Comment(text) => Some(text.as_ref()),
                    _ => None,
                });
                assert_eq!(ours.interface_id, theirs.interface_id);
                assert_eq!(u128::from(ours.units), theirs.timestamp.as_nanos());
                assert_eq!(ours.data, theirs.data.as_ref());
                assert_eq!(ours.comment, their_comment);
                agreed += 1;
            }
        }
        assert!(agreed > 500, "only {agreed} blocks compared");
    }

    /// A section header with no options, in the given byte order.
    fn section_header(big_endian: bool) -> Vec<u8> {
        let words: [u32; 3] = [SECTION_HEADER, 28, BYTE_ORDER_MAGIC];
        let mut bytes = Vec::new();
        for word in words {
            bytes.extend(match big_endian {
                true => word.to_be_bytes(),
                false => word.to_le_bytes(),
            });
        }
        // Version 1.0, then an unknown section length.
        bytes.extend(match big_endian {
            true => [0, 1, 0, 0],
            false => [1, 0, 0, 0],
        });
        bytes.extend([0xff; 8]);
        bytes.extend(match big_endian {
            true => 28u32.to_be_bytes(),
            false => 28u32.to_le_bytes(),
        });
        bytes
    }
}
