//! JSON Lines: one object per message, field names stable (docs/json.md).

use std::{
    borrow::Cow,
    fmt::Display,
    io::{self, Write},
    net::SocketAddr,
};

use serde::{Serialize, Serializer};

use super::{Destination, Output, Summary};
use crate::{
    clock::Rfc3339,
    decode::{opcode_name, qtype_name, rcode_name},
    message::Message,
};

/// One DNS message. Field order and names are the documented schema.
#[derive(Serialize)]
pub struct MessageRecord<'a> {
    /// Always `"message"`.
    pub kind: &'static str,
    /// Wall-clock time the kernel saw the message, RFC 3339 with nanoseconds.
    #[serde(serialize_with = "as_display")]
    pub ts: Rfc3339,
    /// Process id (tgid) owning the socket; null when unknown.
    pub pid: Option<u32>,
    /// Thread id that sent, or that owned the socket when it last sent.
    pub tid: Option<u32>,
    /// Thread name, as the kernel keeps it.
    pub comm: Option<&'a str>,
    pub uid: Option<u32>,
    /// cgroup v2 id of the process.
    pub cgroup_id: Option<u64>,
    /// Network namespace inode.
    pub netns: Option<u64>,
    /// The kernel's socket cookie: one value per socket for the whole boot.
    pub socket_cookie: u64,
    /// `"send"` or `"recv"`, seen from the process.
    pub direction: &'static str,
    /// `"udp"` or `"tcp"`.
    pub proto: &'static str,
    /// This side of the socket, `ip:port` (`[v6]:port`).
    pub local: SocketAddr,
    /// The other side, `ip:port`.
    pub remote: SocketAddr,
    /// DNS header fields; null when the payload is shorter than a header.
    pub id: Option<u16>,
    pub qr: Option<bool>,
    pub opcode: Option<Cow<'static, str>>,
    /// Set flags among `aa`, `tc`, `rd`, `ra`, `ad`, `cd`.
    pub flags: Vec<&'static str>,
    /// Response code mnemonic, extended by EDNS when present.
    pub rcode: Option<Cow<'static, str>>,
    /// First question's name, with the trailing dot.
    pub qname: Option<&'a str>,
    /// First question's type mnemonic.
    pub qtype: Option<Cow<'static, str>>,
    /// Section counts from the header (the OPT record counts as additional).
    pub answers: Option<u16>,
    pub authority: Option<u16>,
    pub additional: Option<u16>,
    /// The OPT record's UDP payload size, or null without EDNS.
    pub edns_udp_size: Option<u16>,
    /// DNS message length on the wire, in bytes.
    pub size: u32,
    /// Fewer bytes were captured than the message holds.
    pub truncated_capture: bool,
    /// Why the message did not decode whole, or null.
    pub decode_error: Option<&'a str>,
}

impl<'a> MessageRecord<'a> {
    pub fn new(message: &'a Message) -> Self {
        let process = message.process.as_ref();
        let header = message.dns.header.as_ref();
        let question = message.dns.question.as_ref();
        Self {
            kind: "message",
            ts: Rfc3339(message.wall_time_ns),
            pid: process.map(|p| p.pid),
            tid: process.map(|p| p.tid),
            comm: process.map(|p| p.comm.as_str()),
            uid: process.map(|p| p.uid),
            cgroup_id: process.map(|p| p.cgroup_id),
            netns: process.and_then(|p| p.netns),
            socket_cookie: message.socket_cookie,
            direction: message.direction.name(),
            proto: message.transport.name(),
            local: message.local,
            remote: message.remote,
            id: header.map(|h| h.id),
            qr: header.map(|h| h.is_response),
            opcode: header.map(|h| opcode_name(h.opcode)),
            flags: header
                .map(|h| h.flags.names().collect())
                .unwrap_or_default(),
            rcode: header.map(|h| rcode_name(h.rcode)),
            qname: question.map(|q| q.name.as_str()),
            qtype: question.map(|q| qtype_name(q.qtype)),
            answers: header.map(|h| h.answers),
            authority: header.map(|h| h.authority),
            additional: header.map(|h| h.additional),
            edns_udp_size: message.dns.edns_udp_size,
            size: message.size,
            truncated_capture: message.truncated_capture,
            decode_error: message.dns.decode_error.as_deref(),
        }
    }
}

fn as_display<S: Serializer>(value: &impl Display, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

/// The last line of a run.
#[derive(Serialize)]
pub struct SummaryRecord {
    /// Always `"summary"`.
    pub kind: &'static str,
    /// Messages captured and written.
    pub messages: u64,
    /// Messages the kernel dropped because the ring buffer was full.
    pub lost: u64,
    /// Messages that did not decode whole (they are still written).
    pub undecodable: u64,
}

pub struct JsonOutput {
    destination: Destination,
}

impl JsonOutput {
    pub fn new(destination: Destination) -> Self {
        Self { destination }
    }

    fn line(&mut self, value: &impl Serialize) -> io::Result<()> {
        let writer = &mut self.destination.writer;
        serde_json::to_writer(&mut *writer, value)?;
        writer.write_all(b"\n")
    }
}

impl Output for JsonOutput {
    fn message(&mut self, message: &Message) -> io::Result<()> {
        self.line(&MessageRecord::new(message))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.destination.writer.flush()
    }

    fn finish(&mut self, summary: &Summary) -> io::Result<()> {
        self.line(&SummaryRecord {
            kind: "summary",
            messages: summary.messages,
            lost: summary.lost(),
            undecodable: summary.undecodable,
        })?;
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::decode;

    /// docs/json.md must name every field the code writes.
    #[test]
    fn every_field_is_documented() {
        let docs = include_str!("../../../docs/json.md");
        let payload = [0u8; 12];
        let message = Message {
            wall_time_ns: 0,
            process: None,
            socket_cookie: 1,
            direction: crate::message::Direction::Send,
            transport: crate::message::Transport::Udp,
            local: "127.0.0.1:1".parse().unwrap(),
            remote: "127.0.0.1:53".parse().unwrap(),
            size: 12,
            truncated_capture: false,
            dns: decode(&payload, payload.len()),
        };
        let summary = SummaryRecord {
            kind: "summary",
            messages: 0,
            lost: 0,
            undecodable: 0,
        };
        for value in [
            serde_json::to_value(MessageRecord::new(&message)).unwrap(),
            serde_json::to_value(summary).unwrap(),
        ] {
            for key in value.as_object().unwrap().keys() {
                assert!(
                    docs.contains(&format!("| `{key}` |")),
                    "docs/json.md lacks `{key}`"
                );
            }
        }
    }

    #[test]
    fn addresses_and_times_serialize_as_documented() {
        let payload = [0u8; 12];
        let message = Message {
            wall_time_ns: 1_795_758_586_123_456_789,
            process: None,
            socket_cookie: 1,
            direction: crate::message::Direction::Recv,
            transport: crate::message::Transport::Udp,
            local: "[::1]:5353".parse().unwrap(),
            remote: "127.0.0.1:53".parse().unwrap(),
            size: 12,
            truncated_capture: false,
            dns: decode(&payload, payload.len()),
        };
        let value = serde_json::to_value(MessageRecord::new(&message)).unwrap();
        assert_eq!(value["ts"], "2026-11-27T05:49:46.123456789Z");
        assert_eq!(value["local"], "[::1]:5353");
        assert_eq!(value["remote"], "127.0.0.1:53");
        assert_eq!(value["direction"], "recv");
        assert_eq!(value["pid"], serde_json::Value::Null);
        assert_eq!(value["flags"], serde_json::json!([]));
    }
}
