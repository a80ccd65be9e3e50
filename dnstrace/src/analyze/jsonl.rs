//! dnstrace's own JSON Lines (`-f json -o FILE`): its `message` lines hold
//! everything correlation needs (docs/json.md). Other kinds are results of
//! the run that wrote them and are worked out afresh.

use std::{
    io::{BufRead, Read},
    net::SocketAddr,
    sync::Arc,
};

use serde::Deserialize;

use super::{InputError, Reader, Skipped, monotonic_of};
use crate::{
    clock::Rfc3339,
    decode::{
        DnsSummary, Flags, HeaderSummary, Question, opcode_from_name, qtype_from_name,
        rcode_from_name,
    },
    message::{Container, Direction, Envelope, Facts, Message, Pod, Process, Runtime, Transport},
};

/// A `"kind":"message"` line, as `output::json::MessageRecord` writes it.
#[derive(Deserialize)]
struct MessageLine {
    kind: String,
    ts: String,
    pid: Option<u32>,
    tid: Option<u32>,
    comm: Option<String>,
    uid: Option<u32>,
    cgroup_id: Option<u64>,
    netns: Option<u64>,
    /// Absent in files written before dnstrace knew containers.
    #[serde(default)]
    container: Option<ContainerLine>,
    #[serde(default)]
    pod: Option<PodLine>,
    socket_cookie: u64,
    direction: String,
    proto: String,
    local: SocketAddr,
    remote: SocketAddr,
    id: Option<u16>,
    qr: Option<bool>,
    opcode: Option<String>,
    flags: Vec<String>,
    rcode: Option<String>,
    qname: Option<String>,
    qtype: Option<String>,
    answers: Option<u16>,
    authority: Option<u16>,
    additional: Option<u16>,
    edns_udp_size: Option<u16>,
    size: u32,
    truncated_capture: bool,
    decode_error: Option<String>,
}

/// A message line's `container`, as `output::json::ContainerRecord` writes it.
#[derive(Deserialize)]
struct ContainerLine {
    id: String,
    runtime: Option<String>,
    name: Option<String>,
    image: Option<String>,
}

/// A message line's `pod`, as `output::json::PodRecord` writes it.
#[derive(Deserialize)]
struct PodLine {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
}

/// Just enough of any line to tell its kind.
#[derive(Deserialize)]
struct AnyLine {
    kind: String,
}

pub struct JsonLinesReader<R> {
    input: R,
    offset: u64,
    line: Vec<u8>,
    skipped: Skipped,
}

impl<R: BufRead> JsonLinesReader<R> {
    pub fn new(input: R) -> Self {
        Self {
            input,
            offset: 0,
            line: Vec::new(),
            skipped: Skipped::default(),
        }
    }
}

/// Longer lines are not dnstrace's (a message line is under 1 KiB), and
/// are not held in memory whole.
const MAX_LINE: usize = 64 << 10;

impl<R: BufRead> JsonLinesReader<R> {
    /// Reads up to the next newline, at most `MAX_LINE` bytes of it.
    fn read_line(&mut self, at: u64) -> Result<usize, InputError> {
        self.line.clear();
        let read = (&mut self.input)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut self.line)
            .map_err(|e| InputError {
                offset: at,
                reason: format!("read failed: {e}"),
            })?;
        self.offset += read as u64;
        Ok(read)
    }
}

impl<R: BufRead> Reader for JsonLinesReader<R> {
    fn next_message(&mut self) -> Result<Option<Message>, InputError> {
        loop {
            let at = self.offset;
            let read = self.read_line(at)?;
            if read == 0 {
                return Ok(None);
            }
            let whole = self.line.ends_with(b"\n");
            if !whole && read == MAX_LINE {
                while self.read_line(at)? == MAX_LINE && !self.line.ends_with(b"\n") {}
                self.skipped
                    .record(at, format!("a line longer than {} KiB", MAX_LINE >> 10));
                continue;
            }
            let text = self.line.trim_ascii();
            if text.is_empty() {
                continue;
            }
            let kind = match serde_json::from_slice::<AnyLine>(text) {
                Ok(line) => line.kind,
                // A writer killed mid-line (kill -9) leaves the last line cut.
                Err(_) if !whole => {
                    self.skipped.record(at, "the last line is cut short");
                    return Ok(None);
                }
                Err(error) => {
                    self.skipped
                        .record(at, format!("not a dnstrace JSON line: {error}"));
                    continue;
                }
            };
            if kind != "message" {
                continue;
            }
            match serde_json::from_slice::<MessageLine>(text)
                .map_err(|e| e.to_string())
                .and_then(MessageLine::into_message)
            {
                Ok(message) => return Ok(Some(message)),
                Err(reason) => self
                    .skipped
                    .record(at, format!("a message line that does not read: {reason}")),
            }
        }
    }

    fn skipped(&self) -> &Skipped {
        &self.skipped
    }
}

impl MessageLine {
    fn into_message(self) -> Result<Message, String> {
        debug_assert_eq!(self.kind, "message");
        let wall_time_ns =
            Rfc3339::parse(&self.ts).ok_or_else(|| format!("a bad time {:?}", self.ts))?;
        let direction = match self.direction.as_str() {
            "send" => Direction::Send,
            "recv" => Direction::Recv,
            other => return Err(format!("a bad direction {other:?}")),
        };
        let transport = match self.proto.as_str() {
            "udp" => Transport::Udp,
            "tcp" => Transport::Tcp,
            other => return Err(format!("a bad proto {other:?}")),
        };
        let facts = match (self.container, self.pod) {
            (None, None) => Facts::unknown(),
            (container, pod) => Arc::new(Facts {
                container: container.map(|c| Container {
                    id: c.id,
                    runtime: c.runtime.as_deref().and_then(Runtime::from_name),
                    name: c.name,
                    image: c.image,
                }),
                pod: pod.map(|p| Pod {
                    name: p.name,
                    namespace: p.namespace,
                    uid: p.uid,
                }),
                ..Facts::default()
            }),
        };
        let process = self.pid.map(|pid| Process {
            pid,
            tid: self.tid.unwrap_or(pid),
            comm: self.comm.unwrap_or_default().into(),
            uid: self.uid.unwrap_or(0),
            cgroup_id: self.cgroup_id.unwrap_or(0),
            netns: self.netns,
            facts,
        });
        let unknown = |what: &str, name: &str| format!("an unknown {what} {name:?}");
        let header = match self.id {
            None => None,
            Some(id) => {
                let opcode = self.opcode.as_deref().unwrap_or("QUERY");
                let rcode = self.rcode.as_deref().unwrap_or("NOERROR");
                Some(HeaderSummary {
                    id,
                    is_response: self.qr.unwrap_or(false),
                    opcode: opcode_from_name(opcode).ok_or_else(|| unknown("opcode", opcode))?,
                    flags: Flags::from_names(self.flags.iter().map(String::as_str))
                        .ok_or_else(|| format!("unknown flags {:?}", self.flags))?,
                    rcode: rcode_from_name(rcode).ok_or_else(|| unknown("rcode", rcode))?,
                    questions: u16::from(self.qname.is_some()),
                    answers: self.answers.unwrap_or(0),
                    authority: self.authority.unwrap_or(0),
                    additional: self.additional.unwrap_or(0),
                })
            }
        };
        let question = match (self.qname, self.qtype) {
            (Some(name), Some(qtype)) => Some(Question {
                name,
                qtype: qtype_from_name(&qtype).ok_or_else(|| unknown("qtype", &qtype))?,
            }),
            _ => None,
        };
        Ok(Message {
            envelope: Envelope {
                wall_time_ns,
                monotonic_ns: monotonic_of(wall_time_ns),
                process,
                socket_cookie: self.socket_cookie,
                direction,
                transport,
                local: self.local,
                remote: self.remote,
                // The JSON of a message does not say whether it was read.
                response_number: None,
            },
            size: self.size,
            truncated_capture: self.truncated_capture,
            dns: DnsSummary {
                header,
                question,
                edns_udp_size: self.edns_udp_size,
                decode_error: self.decode_error,
            },
            payload: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::json::MessageRecord;

    fn sample() -> Message {
        let payload = [
            0x12, 0x34, 0x85, 0x80, 0, 1, 0, 1, 0, 0, 0, 0, 1, b'a', 0, 0, 28, 0, 1, 0xc0, 12, 0,
            28, 0, 1, 0, 0, 0, 60, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
        ];
        Message {
            envelope: Envelope {
                wall_time_ns: 1_795_758_586_123_456_789,
                monotonic_ns: 5,
                process: Some(Process {
                    pid: 42,
                    tid: 43,
                    comm: "Web Content".into(),
                    uid: 1000,
                    cgroup_id: 7,
                    netns: Some(4_026_531_840),
                    facts: Arc::new(Facts {
                        container: Some(Container {
                            id: "ef".repeat(32),
                            runtime: Some(Runtime::Containerd),
                            name: Some("app".into()),
                            image: Some("web:1".into()),
                        }),
                        pod: Some(Pod {
                            name: Some("web-0".into()),
                            namespace: Some("shop".into()),
                            uid: None,
                        }),
                        ..Facts::default()
                    }),
                }),
                socket_cookie: 99,
                direction: Direction::Recv,
                transport: Transport::Udp,
                local: "10.0.0.2:40000".parse().unwrap(),
                remote: "10.0.0.1:53".parse().unwrap(),
                response_number: None,
            },
            size: payload.len() as u32,
            truncated_capture: false,
            dns: crate::decode::decode(&payload, payload.len()),
            payload: Vec::new(),
        }
    }

    fn read_all(text: &str) -> (Vec<Message>, Skipped) {
        let mut reader = JsonLinesReader::new(text.as_bytes());
        let mut messages = Vec::new();
        while let Some(message) = reader.next_message().unwrap() {
            messages.push(message);
        }
        (messages, reader.skipped)
    }

    #[test]
    fn written_messages_read_back_the_same() {
        let original = sample();
        let line = serde_json::to_string(&MessageRecord::new(&original)).unwrap();
        let (messages, skipped) = read_all(&format!("{line}\n{{\"kind\":\"summary\"}}\n"));
        assert_eq!(skipped.count, 0);
        let [read] = &messages[..] else {
            panic!("{} messages", messages.len())
        };
        assert_eq!(read.envelope.wall_time_ns, original.envelope.wall_time_ns);
        assert_eq!(read.envelope.process, original.envelope.process);
        assert_eq!(read.dns, original.dns);
        assert_eq!(
            (
                read.envelope.socket_cookie,
                read.envelope.local,
                read.envelope.remote,
                read.size
            ),
            (
                original.envelope.socket_cookie,
                original.envelope.local,
                original.envelope.remote,
                original.size
            )
        );
    }

    #[test]
    fn a_cut_last_line_is_skipped_and_counted() {
        let line = serde_json::to_string(&MessageRecord::new(&sample())).unwrap();
        let cut = &line[..line.len() / 2];
        let (messages, skipped) = read_all(&format!("{line}\n{cut}"));
        assert_eq!(messages.len(), 1);
        assert_eq!(skipped.count, 1);
        let first = skipped.first.unwrap();
        assert_eq!(first.offset, line.len() as u64 + 1);
        assert!(first.reason.contains("cut short"), "{}", first.reason);
    }

    #[test]
    fn an_endless_line_is_skipped_without_holding_it() {
        let line = serde_json::to_string(&MessageRecord::new(&sample())).unwrap();
        let endless = "x".repeat(3 * MAX_LINE + 5);
        let (messages, skipped) = read_all(&format!("{endless}\n{line}\n"));
        assert_eq!(messages.len(), 1);
        assert_eq!(skipped.count, 1);
        assert_eq!(skipped.first.unwrap().offset, 0);
    }

    #[test]
    fn a_damaged_line_in_the_middle_is_skipped_and_the_rest_read() {
        let line = serde_json::to_string(&MessageRecord::new(&sample())).unwrap();
        let bad_kind = line.replace("\"qtype\":\"AAAA\"", "\"qtype\":\"NOPE\"");
        let (messages, skipped) = read_all(&format!("{line}\n{{oops\n{bad_kind}\n{line}\n"));
        assert_eq!(messages.len(), 2);
        assert_eq!(skipped.count, 2);
    }
}
