//! JSON Lines: one object per message, field names stable (docs/json.md).

use std::{
    borrow::Cow,
    collections::BTreeSet,
    fmt::Display,
    io::{self, Write},
    net::SocketAddr,
};

use serde::{Serialize, Serializer};

use super::{Destination, Output, Summary};
use crate::{
    clock::Rfc3339,
    correlate::{
        attempt::{Attempt, Shape},
        lookup::Lookup,
    },
    decode::{opcode_name, qtype_name, rcode_name},
    diagnose::Diagnosis,
    message::Message,
    resolver::Library,
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

/// One attempt: a query and the response that matched it (or a response
/// that matched none).
#[derive(Serialize)]
pub struct AttemptRecord<'a> {
    /// Always `"attempt"`.
    pub kind: &'static str,
    /// When the query left (for a stray response, when it came).
    #[serde(serialize_with = "as_display")]
    pub ts: Rfc3339,
    pub pid: u32,
    pub comm: &'a str,
    pub socket_cookie: u64,
    pub proto: &'static str,
    /// Where the query went, `ip:port`.
    pub server: SocketAddr,
    pub qname: &'a str,
    pub qtype: Cow<'static, str>,
    pub id: u16,
    /// `answered`, `timeout`, `rejected`, `late` or `mismatched`.
    pub outcome: &'static str,
    /// Why, for `rejected` and `mismatched`.
    pub outcome_detail: Option<&'static str>,
    /// Query to response, or to when the process gave up; null for a stray.
    pub latency_us: Option<u64>,
    pub response_rcode: Option<Cow<'static, str>>,
    pub response_flags: Option<Vec<&'static str>>,
    pub response_answers: Option<u16>,
    pub response_authority: Option<u16>,
    pub response_additional: Option<u16>,
}

impl<'a> AttemptRecord<'a> {
    pub fn new(attempt: &'a Attempt) -> Self {
        let response = attempt.response.as_ref();
        let shape = response.map(|r| r.shape);
        Self {
            kind: "attempt",
            ts: Rfc3339(
                attempt
                    .sent_wall_time_ns
                    .or(response.map(|r| r.wall_time_ns))
                    .unwrap_or_default(),
            ),
            pid: attempt.pid,
            comm: &attempt.comm,
            socket_cookie: attempt.socket_cookie,
            proto: attempt.transport.name(),
            server: attempt.server,
            qname: &attempt.question.name,
            qtype: qtype_name(attempt.question.qtype),
            id: attempt.id,
            outcome: attempt.outcome.name(),
            outcome_detail: attempt.outcome.detail(),
            latency_us: attempt.latency_ns().map(|ns| ns / 1_000),
            response_rcode: shape.map(|s| rcode_name(s.rcode)),
            response_flags: shape.map(|s| s.flags.names().collect()),
            response_answers: shape.map(|s| s.answers),
            response_authority: shape.map(|s| s.authority),
            response_additional: shape.map(|s| s.additional),
        }
    }
}

/// One lookup: every attempt a process made to resolve one name.
#[derive(Serialize)]
pub struct LookupRecord<'a> {
    /// Always `"lookup"`.
    pub kind: &'static str,
    /// When its first query left.
    #[serde(serialize_with = "as_display")]
    pub ts: Rfc3339,
    pub pid: u32,
    pub comm: &'a str,
    /// The name as the process asked for it (search suffixes taken off).
    pub name: &'a str,
    /// Query names in the order they were tried.
    pub names_tried: Vec<&'a str>,
    /// `resolved`, `nxdomain`, `nodata` or `failed`.
    pub outcome: &'static str,
    pub total_us: u64,
    pub attempts: usize,
    /// Queries that did not give the result.
    pub wasted_queries: usize,
    /// The process's C library, when known (`glibc 2.36`, `musl`, `Go resolver`).
    pub resolver: Option<String>,
}

impl<'a> LookupRecord<'a> {
    pub fn new(lookup: &'a Lookup) -> Self {
        Self {
            kind: "lookup",
            ts: Rfc3339(lookup.first_wall_time_ns),
            pid: lookup.pid,
            comm: &lookup.comm,
            name: &lookup.name,
            names_tried: lookup.names_tried(),
            outcome: lookup.outcome().name(),
            total_us: lookup.total_ns() / 1_000,
            attempts: lookup.queries(),
            wasted_queries: lookup.wasted_queries(),
            resolver: lookup.context.library.as_ref().map(Library::describe),
        }
    }
}

/// A response's flags, rcode and counts.
#[derive(Serialize)]
pub struct ShapeRecord {
    pub flags: Vec<&'static str>,
    pub rcode: Cow<'static, str>,
    pub answers: u16,
    pub authority: u16,
    pub additional: u16,
}

impl ShapeRecord {
    fn new(shape: &Shape) -> Self {
        Self {
            flags: shape.flags.names().collect(),
            rcode: rcode_name(shape.rcode),
            answers: shape.answers,
            authority: shape.authority,
            additional: shape.additional,
        }
    }
}

/// A cause, with its evidence and a fix. Written again whenever its count
/// grows: the last record per `pid`, `cause` and `server` is the total.
#[derive(Serialize)]
pub struct DiagnosisRecord<'a> {
    /// Always `"diagnosis"`.
    pub kind: &'static str,
    pub pid: u32,
    pub comm: &'a str,
    /// A stable cause code (docs/diagnoses.md).
    pub cause: &'static str,
    /// The server involved, `ip:port`, or null.
    pub server: Option<SocketAddr>,
    pub names: &'a BTreeSet<String>,
    pub count: u64,
    #[serde(serialize_with = "as_display")]
    pub first_ts: Rfc3339,
    #[serde(serialize_with = "as_display")]
    pub last_ts: Rfc3339,
    /// DNS ids of the messages that show it.
    pub evidence: &'a [u16],
    pub explanation: &'a str,
    pub fix: &'a str,
    /// For `answer_rejected`: the shape thrown away.
    pub rejected_shape: Option<ShapeRecord>,
    /// For `answer_rejected`: a shape the same process used.
    pub accepted_shape: Option<ShapeRecord>,
}

impl<'a> DiagnosisRecord<'a> {
    pub fn new(diagnosis: &'a Diagnosis) -> Self {
        Self {
            kind: "diagnosis",
            pid: diagnosis.pid,
            comm: &diagnosis.comm,
            cause: diagnosis.cause.code(),
            server: diagnosis.server,
            names: &diagnosis.names,
            count: diagnosis.count,
            first_ts: Rfc3339(diagnosis.first_wall_time_ns),
            last_ts: Rfc3339(diagnosis.last_wall_time_ns),
            evidence: &diagnosis.evidence,
            explanation: &diagnosis.explanation,
            fix: &diagnosis.fix,
            rejected_shape: diagnosis
                .shapes
                .map(|(rejected, _)| ShapeRecord::new(&rejected)),
            accepted_shape: diagnosis
                .shapes
                .and_then(|(_, accepted)| accepted.as_ref().map(ShapeRecord::new)),
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
        writer.write_all(b"\n")?;
        self.destination.line_written()
    }
}

impl Output for JsonOutput {
    fn message(&mut self, message: &Message) -> io::Result<()> {
        self.line(&MessageRecord::new(message))
    }

    fn lookup(&mut self, lookup: &Lookup) -> io::Result<()> {
        for attempt in &lookup.attempts {
            self.line(&AttemptRecord::new(attempt))?;
        }
        self.line(&LookupRecord::new(lookup))
    }

    fn stray(&mut self, attempt: &Attempt) -> io::Result<()> {
        self.line(&AttemptRecord::new(attempt))
    }

    fn diagnosis(&mut self, diagnosis: &Diagnosis, _first: bool) -> io::Result<()> {
        self.line(&DiagnosisRecord::new(diagnosis))
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

    /// A message of an all-zero header from an unknown process to
    /// 127.0.0.1:53.
    fn header_only(
        wall_time_ns: i128,
        local: &str,
        direction: crate::message::Direction,
    ) -> Message {
        let payload = [0u8; 12];
        Message {
            wall_time_ns,
            monotonic_ns: 0,
            process: None,
            socket_cookie: 1,
            direction,
            transport: crate::message::Transport::Udp,
            local: local.parse().unwrap(),
            remote: "127.0.0.1:53".parse().unwrap(),
            size: 12,
            truncated_capture: false,
            payload: Vec::new(),
            dns: decode(&payload, payload.len()),
        }
    }

    /// docs/json.md must name every field the code writes.
    #[test]
    fn every_field_is_documented() {
        let docs = include_str!("../../../docs/json.md");
        let message = header_only(0, "127.0.0.1:1", crate::message::Direction::Send);
        let summary = SummaryRecord {
            kind: "summary",
            messages: 0,
            lost: 0,
            undecodable: 0,
        };
        let attempt = Attempt {
            pid: 1,
            comm: "c".into(),
            socket_cookie: 1,
            transport: crate::message::Transport::Udp,
            server: "127.0.0.1:53".parse().unwrap(),
            question: crate::decode::Question {
                name: "x.".into(),
                qtype: 1,
            },
            id: 1,
            sent_monotonic_ns: Some(0),
            sent_wall_time_ns: Some(0),
            response: None,
            outcome: crate::correlate::attempt::Outcome::Timeout,
            moved_on: false,
            ended_monotonic_ns: Some(1),
        };
        let lookup = Lookup {
            pid: 1,
            comm: "c".into(),
            name: "x".into(),
            context: Default::default(),
            attempts: vec![attempt.clone()],
            first_monotonic_ns: 0,
            first_wall_time_ns: 0,
            last_monotonic_ns: 0,
        };
        let mut diagnoser = crate::diagnose::Diagnoser::default();
        diagnoser.lookup(&lookup);
        let diagnosis = diagnoser.all()[0].clone();
        for value in [
            serde_json::to_value(MessageRecord::new(&message)).unwrap(),
            serde_json::to_value(AttemptRecord::new(&attempt)).unwrap(),
            serde_json::to_value(LookupRecord::new(&lookup)).unwrap(),
            serde_json::to_value(DiagnosisRecord::new(&diagnosis)).unwrap(),
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
        let message = header_only(
            1_795_758_586_123_456_789,
            "[::1]:5353",
            crate::message::Direction::Recv,
        );
        let value = serde_json::to_value(MessageRecord::new(&message)).unwrap();
        assert_eq!(value["ts"], "2026-11-27T05:49:46.123456789Z");
        assert_eq!(value["local"], "[::1]:5353");
        assert_eq!(value["remote"], "127.0.0.1:53");
        assert_eq!(value["direction"], "recv");
        assert_eq!(value["pid"], serde_json::Value::Null);
        assert_eq!(value["flags"], serde_json::json!([]));
    }
}
