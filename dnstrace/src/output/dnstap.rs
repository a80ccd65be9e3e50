//! dnstap (`--dnstap FILE|unix:PATH|tcp:HOST:PORT`): every message as a
//! dnstap record in Frame Streams, to a file or to a collector, with the
//! process in `identity` and `extra` (docs/formats.md).

use std::{
    fs::File,
    io::{self, BufWriter, Write},
    net::{IpAddr, SocketAddr, ToSocketAddrs},
    path::PathBuf,
};

use prost::Message as _;

use super::{Output, Summary, create_private};
use crate::{
    dnstap::{
        CONTENT_TYPE,
        frame_streams::{ControlFrame, ControlType, data_frame},
        proto,
        stream::{Endpoint, MAX_QUEUED_BYTES, MAX_QUEUED_FRAMES, Stream},
    },
    failure::Failure,
    identity::Identity,
    message::{Direction, Message, Transport},
};

/// `version` in every record.
const VERSION: &str = concat!("dnstrace ", env!("CARGO_PKG_VERSION"));

pub struct DnstapOutput {
    sink: Sink,
}

enum Sink {
    /// Unidirectional Frame Streams: START, data frames, STOP.
    File(BufWriter<File>),
    Collector {
        stream: Stream,
        /// The target as given, for messages.
        name: String,
        reported_dropped: u64,
    },
}

impl DnstapOutput {
    /// Creates the file, or starts connecting to the collector, that
    /// `target` names.
    pub fn open(target: &str) -> Result<Self, Failure> {
        let bad = |why: &str| Failure::setup(format!("--dnstap {target}: {why}"));
        let endpoint = if let Some(path) = target.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad("no socket path after unix:"));
            }
            Endpoint::Unix(PathBuf::from(path))
        } else if let Some(address) = target.strip_prefix("tcp:") {
            let (host, port) = address
                .rsplit_once(':')
                .ok_or_else(|| bad("expected tcp:HOST:PORT"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port: u16 = port
                .parse()
                .map_err(|_| bad(&format!("not a port: {port:?}")))?;
            if host.is_empty() || port == 0 {
                return Err(bad("expected tcp:HOST:PORT"));
            }
            let addrs: Vec<SocketAddr> = (host, port)
                .to_socket_addrs()
                .map_err(|e| bad(&format!("cannot resolve {host}: {e}")))?
                .collect();
            Endpoint::Tcp(addrs)
        } else {
            let path = PathBuf::from(target);
            let mut file = BufWriter::new(create_private(&path)?);
            file.write_all(&ControlFrame::new(ControlType::Start, Some(CONTENT_TYPE)).encode())
                .map_err(|e| bad(&e.to_string()))?;
            return Ok(Self {
                sink: Sink::File(file),
            });
        };
        let stream = Stream::start(endpoint, target.to_string())
            .map_err(|e| bad(&format!("cannot start the sending thread: {e}")))?;
        Ok(Self {
            sink: Sink::Collector {
                stream,
                name: target.to_string(),
                reported_dropped: 0,
            },
        })
    }
}

impl Output for DnstapOutput {
    fn message(&mut self, message: &Message) -> io::Result<()> {
        let frame = data_frame(&record(message).encode_to_vec());
        match &mut self.sink {
            Sink::File(file) => file.write_all(&frame),
            Sink::Collector { stream, .. } => {
                stream.send(frame);
                Ok(())
            }
        }
    }

    fn needs_payload(&self) -> bool {
        true
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.sink {
            Sink::File(file) => file.flush(),
            Sink::Collector {
                stream,
                name,
                reported_dropped,
            } => {
                let dropped = stream.dropped_so_far();
                if dropped > *reported_dropped {
                    eprintln!(
                        "dnstrace: dnstap {name}: {dropped} frames dropped so far: the \
                         collector is away or slow and the buffer ({MAX_QUEUED_FRAMES} frames, \
                         {} MiB) is full",
                        MAX_QUEUED_BYTES >> 20
                    );
                    *reported_dropped = dropped;
                }
                Ok(())
            }
        }
    }

    fn finish(&mut self, _summary: &Summary) -> io::Result<()> {
        match &mut self.sink {
            Sink::File(file) => {
                file.write_all(&ControlFrame::new(ControlType::Stop, None).encode())?;
                file.flush()
            }
            Sink::Collector { stream, name, .. } => {
                eprintln!("dnstrace: dnstap {name}: {}", stream.close());
                Ok(())
            }
        }
    }
}

/// The dnstap record of one message. The process's end of the exchange
/// decides the type: a client's messages are STUB_QUERY and STUB_RESPONSE,
/// a server's CLIENT_QUERY and CLIENT_RESPONSE (the server's view of its
/// client). The query side, the client, is always `query_address`.
fn record(message: &Message) -> proto::Dnstap {
    // A payload too short for a header counts as a query.
    let is_response = message.dns.header.as_ref().is_some_and(|h| h.is_response);
    let process_is_client = (message.envelope.direction == Direction::Send) != is_response;
    let kind = match (process_is_client, is_response) {
        (true, false) => proto::MessageType::StubQuery,
        (true, true) => proto::MessageType::StubResponse,
        (false, false) => proto::MessageType::ClientQuery,
        (false, true) => proto::MessageType::ClientResponse,
    };
    let (client, server) = match process_is_client {
        true => (message.envelope.local, message.envelope.remote),
        false => (message.envelope.remote, message.envelope.local),
    };
    let family = match client.ip() {
        IpAddr::V4(_) => proto::SocketFamily::Inet,
        IpAddr::V6(_) => proto::SocketFamily::Inet6,
    };
    let protocol = match message.envelope.transport {
        Transport::Udp => proto::SocketProtocol::Udp,
        Transport::Tcp => proto::SocketProtocol::Tcp,
    };
    let seconds =
        u64::try_from(message.envelope.wall_time_ns.div_euclid(1_000_000_000)).unwrap_or(0);
    let nanos = message.envelope.wall_time_ns.rem_euclid(1_000_000_000) as u32;
    let payload = Some(message.payload.clone());
    let mut dns = proto::Message {
        r#type: kind as i32,
        socket_family: Some(family as i32),
        socket_protocol: Some(protocol as i32),
        query_address: Some(address_octets(client)),
        response_address: Some(address_octets(server)),
        query_port: Some(client.port().into()),
        response_port: Some(server.port().into()),
        ..Default::default()
    };
    if is_response {
        dns.response_time_sec = Some(seconds);
        dns.response_time_nsec = Some(nanos);
        dns.response_message = payload;
    } else {
        dns.query_time_sec = Some(seconds);
        dns.query_time_nsec = Some(nanos);
        dns.query_message = payload;
    }
    let identity = match &message.envelope.process {
        Some(process) => format!("{}[{}]", process.comm, process.pid),
        None => "unknown process".to_string(),
    };
    proto::Dnstap {
        identity: Some(identity.into_bytes()),
        version: Some(VERSION.as_bytes().to_vec()),
        extra: Some(Identity::of(message).to_text().into_bytes()),
        message: Some(dns),
        r#type: proto::DnstapType::Message as i32,
    }
}

fn address_octets(address: SocketAddr) -> Vec<u8> {
    match address.ip() {
        IpAddr::V4(ip) => ip.octets().to_vec(),
        IpAddr::V6(ip) => ip.octets().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Envelope, Process};

    /// example.test. A IN, with RD.
    const QUERY: [u8; 30] = [
        0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 7, b'e', b'x', b'a', b'm', b'p', b'l',
        b'e', 4, b't', b'e', b's', b't', 0, 0, 1, 0, 1,
    ];

    fn message(direction: Direction, response: bool) -> Message {
        let mut payload = QUERY.to_vec();
        if response {
            payload[2] |= 0x80;
        }
        let envelope = Envelope {
            wall_time_ns: 1_700_000_000_123_456_789,
            monotonic_ns: 5,
            process: Some(Process {
                pid: 42,
                tid: 43,
                comm: "get ent".into(),
                uid: 0,
                cgroup_id: 1,
                netns: Some(2),
                facts: crate::message::Facts::unknown(),
            }),
            socket_cookie: 7,
            direction,
            transport: Transport::Udp,
            local: "10.0.0.2:40000".parse().expect("addr"),
            remote: "10.0.0.1:53".parse().expect("addr"),
            response_number: None,
        };
        let size = payload.len() as u32;
        Message::decoded(envelope, &payload, size, true)
    }

    #[test]
    fn the_process_end_decides_the_type_and_the_client_is_the_query_side() {
        for (direction, response, kind, client) in [
            (
                Direction::Send,
                false,
                proto::MessageType::StubQuery,
                "10.0.0.2:40000",
            ),
            (
                Direction::Recv,
                true,
                proto::MessageType::StubResponse,
                "10.0.0.2:40000",
            ),
            (
                Direction::Recv,
                false,
                proto::MessageType::ClientQuery,
                "10.0.0.1:53",
            ),
            (
                Direction::Send,
                true,
                proto::MessageType::ClientResponse,
                "10.0.0.1:53",
            ),
        ] {
            let message = message(direction, response);
            let record = record(&message);
            let dns = record.message.expect("a message");
            assert_eq!(dns.r#type, kind as i32, "{direction:?} response={response}");
            let client: SocketAddr = client.parse().expect("addr");
            assert_eq!(dns.query_address, Some(address_octets(client)));
            assert_eq!(dns.query_port, Some(u32::from(client.port())));
            let time = match response {
                true => (dns.response_time_sec, dns.response_time_nsec),
                false => (dns.query_time_sec, dns.query_time_nsec),
            };
            assert_eq!(time, (Some(1_700_000_000), Some(123_456_789)));
            let payload = match response {
                true => dns.response_message,
                false => dns.query_message,
            };
            assert_eq!(payload.as_deref(), Some(message.payload.as_slice()));
            assert_eq!(record.identity.as_deref(), Some(&b"get ent[42]"[..]));
            let extra = String::from_utf8(record.extra.expect("extra")).expect("UTF-8");
            assert_eq!(Identity::parse(&extra), Some(Identity::of(&message)));
        }
    }
}
