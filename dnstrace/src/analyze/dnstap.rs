//! dnstap files (Frame Streams): dnstrace's own, whose `extra` restores the
//! process and the message as it was traced, and any DNS server's (BIND,
//! Knot, Unbound), read as packets with the query side as the client.

use std::{
    io::{self, Read},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use prost::Message as _;

use super::{InputError, Packet, ReadOptions, Reader, Skipped, monotonic_of};
use crate::{
    dnstap::{
        CONTENT_TYPE,
        frame_streams::{ControlFrame, ControlType, MAX_CONTROL_LEN},
        proto,
    },
    identity::ParsedTexts,
    message::{Envelope, Message, Transport},
};

/// Larger than any dnstap record of two 64 KiB DNS messages: a longer
/// frame length means the framing is lost.
const MAX_DATA_FRAME: u32 = 1 << 20;

pub struct DnstapReader<R> {
    input: R,
    /// Bytes read so far: where the next frame starts.
    offset: u64,
    options: ReadOptions,
    skipped: Skipped,
    ended: bool,
    texts: ParsedTexts,
}

/// One frame, and where it began.
enum Frame {
    Data(u64, Vec<u8>),
    Control(u64, ControlFrame),
    /// The file ends inside this frame.
    Cut(u64),
    /// The file ends between frames.
    End,
}

impl<R: Read> DnstapReader<R> {
    /// Reads the START frame; the file must carry dnstap.
    pub fn open(input: R, options: &ReadOptions) -> Result<Self, InputError> {
        let mut reader = Self {
            input,
            offset: 0,
            options: options.clone(),
            skipped: Skipped::default(),
            ended: false,
            texts: ParsedTexts::default(),
        };
        match reader.read_frame()? {
            Frame::Control(at, start) => reader.check_start(at, &start)?,
            Frame::Data(at, _) | Frame::Cut(at) => {
                return Err(InputError {
                    offset: at,
                    reason: "a Frame Streams file must begin with a START control frame".into(),
                });
            }
            Frame::End => {
                return Err(InputError {
                    offset: 0,
                    reason: "the file is empty".into(),
                });
            }
        }
        Ok(reader)
    }

    fn check_start(&self, at: u64, frame: &ControlFrame) -> Result<(), InputError> {
        if frame.kind != ControlType::Start {
            return Err(InputError {
                offset: at,
                reason: format!("expected a START control frame, got {}", frame.kind.name()),
            });
        }
        if !frame.allows(CONTENT_TYPE) {
            let named: Vec<String> = frame
                .content_types
                .iter()
                .map(|t| String::from_utf8_lossy(t).into_owned())
                .collect();
            return Err(InputError {
                offset: at,
                reason: format!("Frame Streams of {}, not {CONTENT_TYPE}", named.join(", ")),
            });
        }
        Ok(())
    }

    /// Reads up to `buf.len()` bytes; fewer only at the end of the file.
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, InputError> {
        let mut have = 0;
        while have < buf.len() {
            match self.input.read(&mut buf[have..]) {
                Ok(0) => break,
                Ok(n) => {
                    have += n;
                    self.offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(InputError {
                        offset: self.offset,
                        reason: format!("cannot read: {e}"),
                    });
                }
            }
        }
        Ok(have)
    }

    /// Reads `len` bytes, or `None` if the file ends first.
    fn bytes(&mut self, len: u32) -> Result<Option<Vec<u8>>, InputError> {
        let mut bytes = vec![0u8; len as usize];
        let have = self.fill(&mut bytes)?;
        Ok((have == bytes.len()).then_some(bytes))
    }

    fn read_frame(&mut self) -> Result<Frame, InputError> {
        let at = self.offset;
        let mut len = [0u8; 4];
        match self.fill(&mut len)? {
            0 => return Ok(Frame::End),
            4 => {}
            _ => return Ok(Frame::Cut(at)),
        }
        let len = u32::from_be_bytes(len);
        if len == 0 {
            let mut control_len = [0u8; 4];
            if self.fill(&mut control_len)? < 4 {
                return Ok(Frame::Cut(at));
            }
            let control_len = u32::from_be_bytes(control_len);
            if control_len > MAX_CONTROL_LEN {
                return Err(InputError {
                    offset: at,
                    reason: format!(
                        "control frame of {control_len} bytes (at most {MAX_CONTROL_LEN}): the \
                         framing is broken"
                    ),
                });
            }
            let Some(body) = self.bytes(control_len)? else {
                return Ok(Frame::Cut(at));
            };
            let frame = ControlFrame::decode(&body).map_err(|reason| InputError {
                offset: at,
                reason: format!("broken control frame: {reason}"),
            })?;
            return Ok(Frame::Control(at, frame));
        }
        if len > MAX_DATA_FRAME {
            return Err(InputError {
                offset: at,
                reason: format!("data frame of {len} bytes: the framing is broken"),
            });
        }
        Ok(match self.bytes(len)? {
            Some(bytes) => Frame::Data(at, bytes),
            None => Frame::Cut(at),
        })
    }

    /// One record as a message, or why it cannot be one.
    fn message(&mut self, bytes: &[u8]) -> Result<Message, String> {
        let record =
            proto::Dnstap::decode(bytes).map_err(|e| format!("not a dnstap record: {e}"))?;
        let dns = record.message.ok_or("a dnstap record without a message")?;
        let kind = proto::MessageType::try_from(dns.r#type)
            .map_err(|_| format!("unknown dnstap message type {}", dns.r#type))?;
        // Queries have odd type values, responses even ones.
        let is_query = dns.r#type % 2 == 1;
        let (seconds, nanos, payload) = match is_query {
            true => (dns.query_time_sec, dns.query_time_nsec, dns.query_message),
            false => (
                dns.response_time_sec,
                dns.response_time_nsec,
                dns.response_message,
            ),
        };
        let payload = payload.ok_or("no DNS message in the record")?;
        let seconds = seconds.ok_or("the record has no time")?;
        let wall_time_ns = i128::from(seconds) * 1_000_000_000 + i128::from(nanos.unwrap_or(0));
        let transport = match dns.socket_protocol.map(proto::SocketProtocol::try_from) {
            Some(Ok(
                proto::SocketProtocol::Tcp
                | proto::SocketProtocol::Dot
                | proto::SocketProtocol::Doh
                | proto::SocketProtocol::DnsCryptTcp,
            )) => Transport::Tcp,
            _ => Transport::Udp,
        };
        // dnstap.proto leaves addresses out of its minimal records (a
        // server's CLIENT_* need none): a missing one reads as unspecified.
        let unspecified = match dns.socket_family.map(proto::SocketFamily::try_from) {
            Some(Ok(proto::SocketFamily::Inet6)) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        };
        let query_side = socket_addr(dns.query_address, dns.query_port, "query", unspecified)?;
        let response_side = socket_addr(
            dns.response_address,
            dns.response_port,
            "response",
            unspecified,
        )?;

        let identity = record
            .extra
            .as_deref()
            .and_then(|extra| std::str::from_utf8(extra).ok())
            .and_then(|text| self.texts.parse(text));
        let Some(identity) = identity else {
            let (source, destination) = match is_query {
                true => (query_side, response_side),
                false => (response_side, query_side),
            };
            return Ok(self.options.client_view(Packet {
                wall_time_ns,
                transport,
                source,
                destination,
                payload: &payload,
                size: payload.len() as u32,
            }));
        };
        // dnstrace's own record: CLIENT_* when the process was the server.
        let process_is_server = matches!(
            kind,
            proto::MessageType::ClientQuery | proto::MessageType::ClientResponse
        );
        let (local, remote) = match process_is_server {
            true => (response_side, query_side),
            false => (query_side, response_side),
        };
        let envelope = Envelope {
            wall_time_ns,
            monotonic_ns: monotonic_of(wall_time_ns),
            process: identity.process,
            socket_cookie: identity.socket_cookie,
            direction: identity.direction,
            transport,
            local,
            remote,
            // Files do not say whether a response was read.
            response_number: None,
        };
        let size = identity.size.unwrap_or(payload.len() as u32);
        Ok(Message::decoded(
            envelope,
            &payload,
            size,
            self.options.keep_payloads,
        ))
    }
}

/// An address field of 4 or 16 octets (`unspecified` when absent) and its
/// port (0 when absent).
fn socket_addr(
    address: Option<Vec<u8>>,
    port: Option<u32>,
    side: &str,
    unspecified: IpAddr,
) -> Result<SocketAddr, String> {
    let port = u16::try_from(port.unwrap_or(0)).map_err(|_| format!("{side} port out of range"))?;
    let Some(address) = address else {
        return Ok(SocketAddr::new(unspecified, port));
    };
    let ip = match <[u8; 4]>::try_from(address.as_slice()) {
        Ok(v4) => IpAddr::V4(Ipv4Addr::from(v4)),
        Err(_) => match <[u8; 16]>::try_from(address.as_slice()) {
            Ok(v6) => IpAddr::V6(Ipv6Addr::from(v6)),
            Err(_) => {
                return Err(format!(
                    "{side} address of {} bytes, neither IPv4 nor IPv6",
                    address.len()
                ));
            }
        },
    };
    Ok(SocketAddr::new(ip, port))
}

impl<R: Read> Reader for DnstapReader<R> {
    fn next_message(&mut self) -> Result<Option<Message>, InputError> {
        while !self.ended {
            match self.read_frame()? {
                Frame::Data(at, bytes) => match self.message(&bytes) {
                    Ok(message) => return Ok(Some(message)),
                    Err(reason) => self.skipped.record(at, reason),
                },
                Frame::Control(at, frame) => match frame.kind {
                    // Files written one after another may follow a STOP.
                    ControlType::Stop => {}
                    ControlType::Start => self.check_start(at, &frame)?,
                    other => {
                        return Err(InputError {
                            offset: at,
                            reason: format!(
                                "a {} control frame has no place in a file",
                                other.name()
                            ),
                        });
                    }
                },
                Frame::Cut(at) => {
                    self.skipped.record(
                        at,
                        "the last frame is cut short (the writer stopped mid-frame)",
                    );
                    self.ended = true;
                }
                // Without STOP the writer was killed, but between frames:
                // nothing is lost.
                Frame::End => self.ended = true,
            }
        }
        Ok(None)
    }

    fn skipped(&self) -> &Skipped {
        &self.skipped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        dnstap::frame_streams::data_frame,
        identity::Identity,
        message::{Direction, Process},
    };

    /// A query for example.test. A, id 0x1234.
    fn query() -> Vec<u8> {
        let mut payload = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        payload.extend_from_slice(b"\x07example\x04test\x00\x00\x01\x00\x01");
        payload
    }

    fn options() -> ReadOptions {
        ReadOptions {
            ports: vec![53],
            keep_payloads: true,
        }
    }

    fn start() -> Vec<u8> {
        ControlFrame::new(ControlType::Start, Some(CONTENT_TYPE)).encode()
    }

    /// A server's record of a query it received: no extra.
    fn server_record(client: &str) -> proto::Dnstap {
        let client: SocketAddr = client.parse().expect("addr");
        proto::Dnstap {
            identity: Some(b"ns1".to_vec()),
            version: Some(b"BIND 9".to_vec()),
            extra: None,
            message: Some(proto::Message {
                r#type: proto::MessageType::AuthQuery as i32,
                socket_family: Some(proto::SocketFamily::Inet as i32),
                socket_protocol: Some(proto::SocketProtocol::Udp as i32),
                query_address: Some(match client.ip() {
                    IpAddr::V4(ip) => ip.octets().to_vec(),
                    IpAddr::V6(ip) => ip.octets().to_vec(),
                }),
                response_address: Some(vec![10, 0, 0, 1]),
                query_port: Some(client.port().into()),
                response_port: Some(53),
                query_time_sec: Some(1_700_000_000),
                query_time_nsec: Some(5),
                query_message: Some(query()),
                ..Default::default()
            }),
            r#type: proto::DnstapType::Message as i32,
        }
    }

    fn read_all(bytes: &[u8]) -> (Vec<Message>, Skipped, Option<InputError>) {
        let mut reader = DnstapReader::open(bytes, &options()).expect("opens");
        let mut messages = Vec::new();
        loop {
            match reader.next_message() {
                Ok(Some(message)) => messages.push(message),
                Ok(None) => return (messages, reader.skipped, None),
                Err(error) => return (messages, reader.skipped, Some(error)),
            }
        }
    }

    #[test]
    fn a_servers_query_is_its_clients_send() {
        let mut file = start();
        file.extend(data_frame(&server_record("10.0.0.2:40000").encode_to_vec()));
        file.extend(ControlFrame::new(ControlType::Stop, None).encode());
        let (messages, skipped, error) = read_all(&file);
        assert!(error.is_none() && skipped.count == 0);
        let [message] = messages.as_slice() else {
            panic!("one message: {messages:?}");
        };
        assert_eq!(message.envelope.direction, Direction::Send);
        assert_eq!(message.envelope.local.to_string(), "10.0.0.2:40000");
        assert_eq!(message.envelope.remote.to_string(), "10.0.0.1:53");
        assert_eq!(message.envelope.wall_time_ns, 1_700_000_000_000_000_005);
        assert!(message.envelope.process.is_none());
        assert_eq!(
            message.dns.question.as_ref().map(|q| q.name.as_str()),
            Some("example.test.")
        );
    }

    #[test]
    fn dnstraces_own_records_restore_the_process() {
        let process = Process {
            pid: 9,
            tid: 10,
            comm: "a b=c".into(),
            uid: 1,
            cgroup_id: 2,
            netns: None,
            facts: crate::message::Facts::unknown(),
        };
        let identity = Identity {
            process: Some(process.clone()),
            socket_cookie: 77,
            direction: Direction::Send,
            size: Some(4000),
        };
        let mut record = server_record("10.0.0.2:40000");
        record.extra = Some(identity.to_text().into_bytes());
        if let Some(dns) = record.message.as_mut() {
            dns.r#type = proto::MessageType::StubQuery as i32;
        }
        let mut file = start();
        file.extend(data_frame(&record.encode_to_vec()));
        let (messages, _, error) = read_all(&file);
        assert!(error.is_none());
        let [message] = messages.as_slice() else {
            panic!("one message: {messages:?}");
        };
        assert_eq!(message.envelope.process, Some(process));
        assert_eq!(message.envelope.socket_cookie, 77);
        assert_eq!(message.envelope.local.to_string(), "10.0.0.2:40000");
        assert_eq!(message.size, 4000);
        assert!(message.truncated_capture);
    }

    #[test]
    fn a_record_without_addresses_reads_as_unspecified() {
        let mut minimal = server_record("10.0.0.2:1");
        if let Some(dns) = minimal.message.as_mut() {
            dns.query_address = None;
            dns.query_port = None;
        }
        let mut file = start();
        file.extend(data_frame(&minimal.encode_to_vec()));
        let (messages, skipped, error) = read_all(&file);
        assert!(error.is_none());
        assert_eq!(skipped.count, 0);
        let [message] = messages.as_slice() else {
            panic!("one message: {messages:?}");
        };
        assert_eq!(message.envelope.local.to_string(), "0.0.0.0:0");
    }

    #[test]
    fn damaged_records_are_skipped_and_counted() {
        let mut file = start();
        file.extend(data_frame(b"\xff\xff\xff not protobuf"));
        let mut odd_address = server_record("10.0.0.2:1");
        if let Some(dns) = odd_address.message.as_mut() {
            dns.query_address = Some(vec![10, 0, 0]);
        }
        file.extend(data_frame(&odd_address.encode_to_vec()));
        let mut no_payload = server_record("10.0.0.2:2");
        if let Some(dns) = no_payload.message.as_mut() {
            dns.query_message = None;
        }
        file.extend(data_frame(&no_payload.encode_to_vec()));
        file.extend(data_frame(&server_record("10.0.0.2:3").encode_to_vec()));
        let last = data_frame(&server_record("10.0.0.2:4").encode_to_vec());
        file.extend(&last[..last.len() - 3]);

        let (messages, skipped, error) = read_all(&file);
        assert!(error.is_none(), "a cut last frame is no error: {error:?}");
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].envelope.local.port(), 3);
        assert_eq!(skipped.count, 4, "3 damaged records and the cut one");
        let first = skipped.first.expect("first recorded");
        assert_eq!(first.offset, start().len() as u64);
        assert!(
            first.reason.contains("not a dnstap record"),
            "{}",
            first.reason
        );
    }

    #[test]
    fn broken_framing_is_an_error() {
        let mut file = start();
        file.extend(data_frame(&server_record("10.0.0.2:3").encode_to_vec()));
        let broken_at = file.len() as u64;
        file.extend([0x7f, 0, 0, 0, 1, 2, 3]);
        let (messages, _, error) = read_all(&file);
        assert_eq!(messages.len(), 1);
        assert_eq!(error.map(|e| e.offset), Some(broken_at));
    }

    #[test]
    fn only_dnstap_frame_streams_open() {
        let other = ControlFrame::new(ControlType::Start, Some("protobuf:other")).encode();
        let error = DnstapReader::open(other.as_slice(), &options())
            .err()
            .expect("refused");
        assert!(error.reason.contains("protobuf:other"), "{}", error.reason);
        let no_start = data_frame(b"x");
        assert!(DnstapReader::open(no_start.as_slice(), &options()).is_err());
        let cut = &start()[..10];
        assert!(DnstapReader::open(cut, &options()).is_err());
    }
}
