//! JSON Lines: one object per message, field names stable (docs/json.md).

use std::{
    borrow::Cow,
    collections::BTreeSet,
    fmt::Display,
    io::{self, Write},
    net::{IpAddr, SocketAddr},
    sync::{Arc, LazyLock},
};

use serde::{Serialize, Serializer};

use super::{Destination, Output, Summary, WRITE_BUFFER_BYTES};
use crate::{
    cli::JsonKind,
    clock::Rfc3339,
    correlate::{
        attempt::{Attempt, Shape},
        lookup::Lookup,
    },
    decode::{FLAG_NAMES, Flags, opcode_name, qtype_name, rcode_name},
    diagnose::Diagnosis,
    message::{Client, Direction, Dropped, Envelope, Facts, Message, Pod, Process, Transport},
    resolver::Library,
};

/// One DNS message. Field order and names are the documented schema.
#[derive(Serialize)]
pub struct MessageRecord<'a> {
    /// Always `"message"`.
    pub kind: Mnemonic,
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
    /// The process's container; null for a process in none.
    pub container: Option<ContainerRecord<'a>>,
    /// The container's Kubernetes pod; null outside one.
    pub pod: Option<PodRecord<'a>>,
    /// The kernel's socket cookie: one value per socket for the whole boot.
    pub socket_cookie: u64,
    /// `"send"` or `"recv"`, seen from the process.
    pub direction: Mnemonic,
    /// `"udp"` or `"tcp"`.
    pub proto: Mnemonic,
    /// This side of the socket, `ip:port` (`[v6]:port`).
    pub local: SocketAddr,
    /// The other side, `ip:port`.
    pub remote: SocketAddr,
    /// DNS header fields; null when the payload is shorter than a header.
    pub id: Option<u16>,
    pub qr: Option<bool>,
    pub opcode: Option<Mnemonic>,
    /// Set flags among `aa`, `tc`, `rd`, `ra`, `ad`, `cd`.
    pub flags: FlagNames,
    /// Response code mnemonic, extended by EDNS when present.
    pub rcode: Option<Mnemonic>,
    /// First question's name, with the trailing dot.
    pub qname: Option<&'a str>,
    /// First question's type mnemonic.
    pub qtype: Option<Mnemonic>,
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
        let envelope = &message.envelope;
        let process = envelope.process.as_ref();
        let header = message.dns.header.as_ref();
        let question = message.dns.question.as_ref();
        Self {
            kind: Mnemonic("message".into()),
            ts: Rfc3339(envelope.wall_time_ns),
            pid: process.map(|p| p.pid),
            tid: process.map(|p| p.tid),
            comm: process.map(|p| &*p.comm),
            uid: process.map(|p| p.uid),
            cgroup_id: process.map(|p| p.cgroup_id),
            netns: process.and_then(|p| p.netns),
            container: process.and_then(|p| ContainerRecord::of(&p.facts)),
            pod: process.and_then(|p| PodRecord::of(&p.facts)),
            socket_cookie: envelope.socket_cookie,
            direction: Mnemonic(envelope.direction.name().into()),
            proto: Mnemonic(envelope.transport.name().into()),
            local: envelope.local,
            remote: envelope.remote,
            id: header.map(|h| h.id),
            qr: header.map(|h| h.is_response),
            opcode: header.map(|h| Mnemonic(opcode_name(h.opcode))),
            flags: FlagNames(header.map(|h| h.flags).unwrap_or_default()),
            rcode: header.map(|h| Mnemonic(rcode_name(h.rcode))),
            qname: question.map(|q| q.name.as_str()),
            qtype: question.map(|q| Mnemonic(qtype_name(q.qtype))),
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

/// `,"key":value` for each field named, in order; keys are the field
/// names, as serde writes them.
macro_rules! write_fields {
    ($out:ident, $record:ident: $($key:ident),+) => {
        $(
            $out.extend_from_slice(concat!(",\"", stringify!($key), "\":").as_bytes());
            $record.$key.write_json($out);
        )+
    };
}

impl MessageRecord<'_> {
    /// Appends the record as one line of JSON, byte for byte what serde_json
    /// writes for it (a test holds the two equal), without serde's
    /// per-field machinery: this runs for every message. `owner` is what
    /// [`MessageRecord::write_owner`] wrote for the same process, if kept.
    fn write_json(&self, out: &mut Vec<u8>, times: &mut TimeCache, kept: Kept<'_>) {
        self.write_fields(out, times, kept);
        out.push(b'}');
    }

    /// The record without its closing brace, for a drop's to follow.
    fn write_fields(&self, out: &mut Vec<u8>, times: &mut TimeCache, kept: Kept<'_>) {
        let record = self;
        open_record(out, times, &record.kind, &record.ts);
        match kept.owner {
            Some(owner) => out.extend_from_slice(owner),
            None => record.write_owner(out),
        }
        match kept.socket {
            Some(socket) => out.extend_from_slice(socket),
            None => record.write_socket(out),
        }
        write_fields!(out, record: id, qr, opcode, flags, rcode, qname, qtype, answers, authority,
            additional, edns_udp_size, size, truncated_capture, decode_error);
    }

    /// The fields that describe the process, `pid` to `pod`: the same for
    /// every message of a thread.
    fn write_owner(&self, out: &mut Vec<u8>) {
        let record = self;
        write_fields!(out, record: pid, tid, comm, uid, cgroup_id, netns, container, pod);
    }

    /// The fields that describe the socket and the way, `socket_cookie`
    /// to `remote`: the same for every message one way on a socket to one
    /// peer.
    fn write_socket(&self, out: &mut Vec<u8>) {
        let record = self;
        write_fields!(out, record: socket_cookie, direction, proto, local, remote);
    }
}

/// What [`MessageRecord::write_owner`] and [`MessageRecord::write_socket`]
/// wrote before for the same process and socket, where kept.
#[derive(Clone, Copy, Default)]
struct Kept<'a> {
    owner: Option<&'a [u8]>,
    socket: Option<&'a [u8]>,
}

/// The `pid` to `pod` and `socket_cookie` to `remote` fields of message
/// lines, as written for the threads and sockets seen last: messages come
/// in runs from a few threads and sockets, and comparing what the fields
/// say costs less than writing five integers and a name, or two addresses.
#[derive(Default)]
struct KeptFields {
    owners: KeptTexts<OwnerKey>,
    sockets: KeptTexts<SocketKey>,
}

/// Texts by what they were written from, in a table indexed by a cheap
/// hash of it: a hit costs one comparison, and a miss replaces the one text
/// in its place. (Kept in order of arrival, eight of them, they were
/// replaced at nearly every message of a server answering many sockets in
/// turn.) A collision costs only a text written again.
struct KeptTexts<K> {
    places: Vec<Option<(K, Vec<u8>)>>,
}

impl<K> Default for KeptTexts<K> {
    fn default() -> Self {
        Self { places: Vec::new() }
    }
}

impl<K> KeptTexts<K> {
    const PLACES: usize = 64;

    /// The text kept for what `matches`, or else `write`'s, kept for `key`;
    /// `place` is a hash of what the key holds.
    fn text(
        &mut self,
        place: u64,
        matches: impl Fn(&K) -> bool,
        key: impl FnOnce() -> K,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> &[u8] {
        if self.places.is_empty() {
            self.places.resize_with(Self::PLACES, || None);
        }
        // The top six bits of a multiplicative hash: one of 64 places.
        let index = (place.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58) as usize;
        let slot = &mut self.places[index];
        if !slot.as_ref().is_some_and(|(kept, _)| matches(kept)) {
            let mut text = slot.take().map_or_else(
                || Vec::with_capacity(128),
                |(_, mut text)| {
                    text.clear();
                    text
                },
            );
            write(&mut text);
            *slot = Some((key(), text));
        }
        slot.as_ref().map_or(&[], |(_, text)| text.as_slice())
    }
}

/// Everything the `pid` to `pod` fields are written from. Name and facts
/// compare by what is written of them: a file read back gives each text a
/// fresh copy of them, so their pointers rarely match (the same facts'
/// pointer is the quick way).
struct OwnerKey {
    pid: u32,
    tid: u32,
    uid: u32,
    cgroup_id: u64,
    netns: Option<u64>,
    comm: Arc<str>,
    facts: Arc<Facts>,
}

impl OwnerKey {
    fn of(process: &Process) -> Self {
        Self {
            pid: process.pid,
            tid: process.tid,
            uid: process.uid,
            cgroup_id: process.cgroup_id,
            netns: process.netns,
            comm: Arc::clone(&process.comm),
            facts: Arc::clone(&process.facts),
        }
    }

    fn matches(&self, process: &Process) -> bool {
        self.pid == process.pid
            && self.tid == process.tid
            && self.uid == process.uid
            && self.cgroup_id == process.cgroup_id
            && self.netns == process.netns
            && self.comm == process.comm
            && (Arc::ptr_eq(&self.facts, &process.facts)
                || (self.facts.container == process.facts.container
                    && self.facts.pod == process.facts.pod))
    }
}

/// Everything the `socket_cookie` to `remote` fields are written from.
#[derive(Clone, Copy, PartialEq, Eq)]
struct SocketKey {
    cookie: u64,
    direction: Direction,
    transport: Transport,
    local: SocketAddr,
    remote: SocketAddr,
}

impl SocketKey {
    /// What tells one socket and peer from another, mixed into one word.
    fn place(&self) -> u64 {
        self.cookie.rotate_left(32)
            ^ u64::from(self.remote.port())
            ^ u64::from(self.local.port()) << 16
            ^ u64::from(self.direction == Direction::Recv) << 63
    }

    fn of(envelope: &Envelope) -> Self {
        Self {
            cookie: envelope.socket_cookie,
            direction: envelope.direction,
            transport: envelope.transport,
            local: envelope.local,
            remote: envelope.remote,
        }
    }
}

/// `{"kind":…,"ts":…`, which every hand-written record begins with.
fn open_record(out: &mut Vec<u8>, times: &mut TimeCache, kind: &impl WriteJson, ts: &Rfc3339) {
    out.extend_from_slice(b"{\"kind\":");
    kind.write_json(out);
    out.extend_from_slice(b",\"ts\":");
    times.write_json(out, ts.0);
}

/// One message's line, without its newline.
fn write_message(
    out: &mut Vec<u8>,
    times: &mut TimeCache,
    kept: &mut KeptFields,
    message: &Message,
) {
    let record = MessageRecord::new(message);
    let owner = (message.envelope.process.as_ref()).map(|process| {
        kept.owners.text(
            u64::from(process.pid) << 32 | u64::from(process.tid),
            |key| key.matches(process),
            || OwnerKey::of(process),
            |out| record.write_owner(out),
        )
    });
    let socket = SocketKey::of(&message.envelope);
    let socket = kept.sockets.text(
        socket.place(),
        |key| *key == socket,
        || socket,
        |out| record.write_socket(out),
    );
    record.write_json(
        out,
        times,
        Kept {
            owner,
            socket: Some(socket),
        },
    );
}

/// A DNS packet the kernel dropped: the fields of a message (with kind
/// `"drop"`), then why and where.
#[derive(Serialize)]
pub struct DropRecord<'a> {
    #[serde(flatten)]
    pub message: MessageRecord<'a>,
    /// The kernel's drop reason, such as `NETFILTER_DROP`.
    pub reason: &'a str,
    /// The kernel function that dropped the packet, `symbol+0xoffset`.
    pub location: &'a str,
    /// Inode of the network namespace the packet was dropped in.
    pub drop_netns: Option<u64>,
}

impl DropRecord<'_> {
    /// As serde writes it; a burst of drops comes at the rate of messages.
    fn write_json(&self, out: &mut Vec<u8>, times: &mut TimeCache) {
        let record = self;
        record.message.write_fields(out, times, Kept::default());
        write_fields!(out, record: reason, location, drop_netns);
        out.push(b'}');
    }
}

impl<'a> DropRecord<'a> {
    pub fn new(dropped: &'a Dropped) -> Self {
        let mut message = MessageRecord::new(&dropped.message);
        message.kind = Mnemonic("drop".into());
        Self {
            message,
            reason: &dropped.reason,
            location: &dropped.location,
            drop_netns: dropped.netns,
        }
    }
}

/// A container, as `container` fields write it.
#[derive(Serialize)]
pub struct ContainerRecord<'a> {
    /// The runtime's id.
    pub id: &'a str,
    /// `containerd`, `cri-o`, `docker` or `podman`; null when not known.
    pub runtime: Option<Mnemonic>,
    /// Its name, from the runtime's state; null when not read.
    pub name: Option<&'a str>,
    pub image: Option<&'a str>,
}

impl<'a> ContainerRecord<'a> {
    pub fn of(facts: &'a Facts) -> Option<Self> {
        let container = facts.container.as_ref()?;
        Some(Self {
            id: &container.id,
            runtime: container.runtime.map(|r| Mnemonic(r.name().into())),
            name: container.name.as_deref(),
            image: container.image.as_deref(),
        })
    }
}

/// `{"first":…,"next":…}`: the fields named, in order, as serde writes
/// them.
macro_rules! write_object {
    ($out:ident, $record:ident: $first:ident $(, $key:ident)*) => {
        $out.extend_from_slice(concat!("{\"", stringify!($first), "\":").as_bytes());
        $record.$first.write_json($out);
        $(
            $out.extend_from_slice(concat!(",\"", stringify!($key), "\":").as_bytes());
            $record.$key.write_json($out);
        )*
        $out.push(b'}');
    };
}

impl WriteJson for ContainerRecord<'_> {
    fn write_json(&self, out: &mut Vec<u8>) {
        let record = self;
        write_object!(out, record: id, runtime, name, image);
    }
}

/// A pod, as `pod` fields write it.
#[derive(Serialize)]
pub struct PodRecord<'a> {
    pub name: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub uid: Option<&'a str>,
}

impl<'a> PodRecord<'a> {
    pub fn of(facts: &'a Facts) -> Option<Self> {
        facts.pod.as_ref().map(Self::from_pod)
    }

    pub fn from_pod(pod: &'a Pod) -> Self {
        Self {
            name: pod.name.as_deref(),
            namespace: pod.namespace.as_deref(),
            uid: pod.uid.as_deref(),
        }
    }
}

impl WriteJson for PodRecord<'_> {
    fn write_json(&self, out: &mut Vec<u8>) {
        let record = self;
        write_object!(out, record: name, namespace, uid);
    }
}

/// A name this program makes up (`"message"`, `"udp"`, `"NXDOMAIN"`,
/// `"TYPE65280"`): letters, digits and dashes, which JSON never escapes.
#[derive(Serialize)]
#[serde(transparent)]
pub struct Mnemonic(pub Cow<'static, str>);

/// A message's flags, written as the array of their names without
/// collecting them first.
pub struct FlagNames(pub Flags);

impl Serialize for FlagNames {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.names())
    }
}

/// A value [`MessageRecord::write_json`] writes as serde_json would.
trait WriteJson {
    fn write_json(&self, out: &mut Vec<u8>);
}

impl<T: WriteJson> WriteJson for Option<T> {
    fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            Some(value) => value.write_json(out),
            None => out.extend_from_slice(b"null"),
        }
    }
}

impl WriteJson for bool {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(if *self { b"true" } else { b"false" });
    }
}

/// Integers through itoa, which writes two digits per step into a stack
/// buffer: this runs for a dozen fields of every message. The digits are
/// pushed one by one, as a copy of a few bytes whose count varies costs a
/// call to memmove.
macro_rules! integers_write_json {
    ($($integer:ty),+) => {
        $(
            impl WriteJson for $integer {
                fn write_json(&self, out: &mut Vec<u8>) {
                    for digit in itoa::Buffer::new().format(*self).bytes() {
                        out.push(digit);
                    }
                }
            }
        )+
    };
}
integers_write_json!(u64, u32, u16, u8, usize);

impl WriteJson for String {
    fn write_json(&self, out: &mut Vec<u8>) {
        self.as_str().write_json(out);
    }
}

impl<T: WriteJson> WriteJson for Vec<T> {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'[');
        for (index, value) in self.iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            value.write_json(out);
        }
        out.push(b']');
    }
}

/// Only in traces without processes: no need to be quick.
impl WriteJson for IpAddr {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'"');
        // Writing into a Vec cannot fail.
        let _ = write!(out, "{self}");
        out.push(b'"');
    }
}

impl WriteJson for &str {
    /// Escaped as serde_json escapes: quote, backslash and control bytes.
    fn write_json(&self, out: &mut Vec<u8>) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let bytes = self.as_bytes();
        out.push(b'"');
        if !needs_escape(bytes) {
            out.extend_from_slice(bytes);
            out.push(b'"');
            return;
        }
        let mut plain_from = 0;
        for (at, &byte) in bytes.iter().enumerate() {
            let short: &[u8] = match byte {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                b'\t' => b"\\t",
                0x08 => b"\\b",
                0x0c => b"\\f",
                0x00..=0x1f => &[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(byte >> 4)],
                    HEX[usize::from(byte & 0xf)],
                ],
                _ => continue,
            };
            out.extend_from_slice(&bytes[plain_from..at]);
            out.extend_from_slice(short);
            plain_from = at + 1;
        }
        out.extend_from_slice(&bytes[plain_from..]);
        out.push(b'"');
    }
}

/// Whether any byte is a quote, a backslash or a control byte. Nearly no
/// string has one, so this looks at eight bytes at a time.
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    // Whether any byte of `word` is below `n` (n at most 0x80).
    let any_below = |word: u64, n: u8| word.wrapping_sub(ONES * u64::from(n)) & !word & HIGH != 0;
    let (words, rest) = bytes.as_chunks::<8>();
    words.iter().any(|word| {
        let word = u64::from_ne_bytes(*word);
        any_below(word, 0x20)
            || any_below(word ^ (ONES * u64::from(b'"')), 1)
            || any_below(word ^ (ONES * u64::from(b'\\')), 1)
    }) || rest
        .iter()
        .any(|&byte| byte < 0x20 || byte == b'"' || byte == b'\\')
}

impl WriteJson for Mnemonic {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'"');
        out.extend_from_slice(self.0.as_bytes());
        out.push(b'"');
    }
}

impl WriteJson for FlagNames {
    /// Every message has one: the 64 arrays are written once, then copied.
    fn write_json(&self, out: &mut Vec<u8>) {
        static ARRAYS: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| {
            (0..1u8 << FLAG_NAMES.len())
                .map(|bits| {
                    let names = Flags::from_bits(bits)
                        .names()
                        .map(|name| format!("\"{name}\""));
                    format!("[{}]", names.collect::<Vec<_>>().join(",")).into_bytes()
                })
                .collect()
        });
        out.extend_from_slice(&ARRAYS[usize::from(self.0.bits())]);
    }
}

impl WriteJson for SocketAddr {
    fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            SocketAddr::V4(v4) => {
                out.push(b'"');
                for (index, octet) in v4.ip().octets().into_iter().enumerate() {
                    if index > 0 {
                        out.push(b'.');
                    }
                    // Byte by byte: a copy whose length varies is a call.
                    let (digits, count) = &OCTETS[usize::from(octet)];
                    for digit in &digits[..usize::from(*count)] {
                        out.push(*digit);
                    }
                }
                out.push(b':');
                v4.port().write_json(out);
                out.push(b'"');
            }
            // Rarer, and harder to write: IPv6 compresses its zeros.
            SocketAddr::V6(_) => {
                out.push(b'"');
                // Writing into a Vec cannot fail.
                let _ = write!(out, "{self}");
                out.push(b'"');
            }
        }
    }
}

/// Each octet's decimal digits and how many there are: two addresses of
/// four octets go into every message line.
const OCTETS: [([u8; 3], u8); 256] = {
    let mut table = [([0; 3], 0); 256];
    let mut octet = 0;
    while octet < 256 {
        let digits = [
            (octet / 100) as u8,
            (octet / 10 % 10) as u8,
            (octet % 10) as u8,
        ];
        let count: usize = if octet >= 100 {
            3
        } else if octet >= 10 {
            2
        } else {
            1
        };
        let mut index = 0;
        while index < count {
            table[octet].0[index] = b'0' + digits[3 - count + index];
            index += 1;
        }
        table[octet].1 = count as u8;
        octet += 1;
    }
    table
};

/// RFC 3339 timestamps, with the date and time of day formatted once per
/// second: within a second only the nanoseconds change.
#[derive(Default)]
struct TimeCache {
    /// The start of the second `text` holds, in ns since the epoch.
    second_ns: Option<i128>,
    /// `"2026-11-27T05:49:46.000000000Z"`, quoted.
    text: Vec<u8>,
}

impl TimeCache {
    const SECOND: i128 = 1_000_000_000;

    fn write_json(&mut self, out: &mut Vec<u8>, wall_time_ns: i128) {
        // A subtraction tells whether the second is the cached one; a
        // 128-bit division costs more than the rest of the line.
        let nanos = match self.second_ns.map(|start| wall_time_ns - start) {
            Some(nanos) if (0..Self::SECOND).contains(&nanos) => nanos as u32,
            _ => {
                let second_ns = wall_time_ns.div_euclid(Self::SECOND) * Self::SECOND;
                self.second_ns = Some(second_ns);
                self.text.clear();
                Rfc3339(second_ns)
                    .to_string()
                    .as_str()
                    .write_json(&mut self.text);
                (wall_time_ns - second_ns) as u32
            }
        };
        out.extend_from_slice(&self.text);
        // Rfc3339 ends in nine digits of nanoseconds, then `Z"`. A leading
        // 1 makes itoa write the zeros that pad them.
        let mut padded = itoa::Buffer::new();
        let padded = padded.format(nanos + Self::SECOND as u32).as_bytes();
        let end = out.len().saturating_sub(2);
        let start = end.saturating_sub(9);
        out[start..end].copy_from_slice(&padded[1..]);
    }
}

/// Who an attempt, lookup or diagnosis belongs to: `pid`, `comm`,
/// `container`, `pod` and `client`, in that order, in each of those records.
#[derive(Serialize)]
pub struct ClientFields<'a> {
    /// Process id; null in a file without processes (see `client`).
    pub pid: Option<u32>,
    pub comm: Option<&'a str>,
    pub container: Option<ContainerRecord<'a>>,
    pub pod: Option<PodRecord<'a>>,
    /// The client's address, when the trace has no process to name.
    pub client: Option<IpAddr>,
}

impl ClientFields<'_> {
    /// `,"pid":…` to `"client":…`, as serde writes them flattened.
    fn write_fields(&self, out: &mut Vec<u8>) {
        let record = self;
        write_fields!(out, record: pid, comm, container, pod, client);
    }
}

impl<'a> ClientFields<'a> {
    fn of(client: &'a Client) -> Self {
        Self {
            pid: client.pid(),
            comm: client.comm.as_deref(),
            container: client.facts.as_deref().and_then(ContainerRecord::of),
            pod: client.facts.as_deref().and_then(PodRecord::of),
            client: client.address(),
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
    #[serde(flatten)]
    pub client: ClientFields<'a>,
    pub socket_cookie: u64,
    pub proto: &'static str,
    /// Where the query went, `ip:port`.
    pub server: SocketAddr,
    pub qname: &'a str,
    pub qtype: Mnemonic,
    pub id: u16,
    /// `answered`, `timeout`, `rejected`, `late`, `superseded` or `mismatched`.
    pub outcome: &'static str,
    /// Why, for `rejected` and `mismatched`.
    pub outcome_detail: Option<&'static str>,
    /// Query to response, or to when the process gave up; null for a stray.
    pub latency_us: Option<u64>,
    pub response_rcode: Option<Mnemonic>,
    pub response_flags: Option<FlagNames>,
    pub response_answers: Option<u16>,
    pub response_authority: Option<u16>,
    pub response_additional: Option<u16>,
    /// Whether the process read the response from its socket; null when
    /// that is not known (see docs/json.md).
    pub response_read: Option<bool>,
    /// `query` or `response`: which of the two the kernel dropped; null
    /// when neither (or drops are not watched).
    pub dropped: Option<&'static str>,
    /// The kernel's reason and place for that drop.
    pub drop_reason: Option<&'a str>,
    pub drop_location: Option<&'a str>,
    /// From the query's sending to the drop.
    pub drop_after_us: Option<u64>,
}

impl AttemptRecord<'_> {
    /// As serde writes it: a lookup's attempts come at the rate of queries.
    fn write_json(&self, out: &mut Vec<u8>, times: &mut TimeCache) {
        let record = self;
        open_record(out, times, &record.kind, &record.ts);
        record.client.write_fields(out);
        write_fields!(out, record: socket_cookie, proto, server, qname, qtype, id, outcome,
            outcome_detail, latency_us, response_rcode, response_flags, response_answers,
            response_authority, response_additional, response_read, dropped, drop_reason,
            drop_location, drop_after_us);
        out.push(b'}');
    }
}

impl<'a> AttemptRecord<'a> {
    pub fn new(attempt: &'a Attempt) -> Self {
        let response = attempt.response.as_ref();
        let shape = response.map(|r| r.shape);
        Self {
            kind: "attempt",
            ts: Rfc3339(
                attempt
                    .sent_wall_time_ns()
                    .or(response.map(|r| r.wall_time_ns))
                    .unwrap_or_default(),
            ),
            client: ClientFields::of(&attempt.client),
            socket_cookie: attempt.socket_cookie,
            proto: attempt.transport.name(),
            server: attempt.server,
            qname: &attempt.question.name,
            qtype: Mnemonic(qtype_name(attempt.question.qtype)),
            id: attempt.id,
            outcome: attempt.outcome.name(),
            outcome_detail: attempt.outcome.detail(),
            latency_us: attempt.latency_ns().map(|ns| ns / 1_000),
            response_rcode: shape.map(|s| Mnemonic(rcode_name(s.rcode))),
            response_flags: shape.map(|s| FlagNames(s.flags)),
            response_answers: shape.map(|s| s.answers),
            response_authority: shape.map(|s| s.authority),
            response_additional: shape.map(|s| s.additional),
            response_read: response.and_then(|r| r.read.was_read()),
            dropped: attempt.drop.as_ref().map(|d| d.packet.name()),
            drop_reason: attempt.drop.as_ref().map(|d| &*d.reason),
            drop_location: attempt.drop.as_ref().map(|d| &*d.location),
            drop_after_us: attempt.drop.as_ref().map(|d| d.after_ns / 1_000),
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
    #[serde(flatten)]
    pub client: ClientFields<'a>,
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
    /// The pod on this node whose process sent the lookup's last response,
    /// when the trace shows it answering; null otherwise.
    pub server_pod: Option<PodRecord<'a>>,
}

impl LookupRecord<'_> {
    /// As serde writes it: one for every lookup.
    fn write_json(&self, out: &mut Vec<u8>, times: &mut TimeCache) {
        let record = self;
        open_record(out, times, &record.kind, &record.ts);
        record.client.write_fields(out);
        write_fields!(out, record: name, names_tried, outcome, total_us, attempts, wasted_queries,
            resolver, server_pod);
        out.push(b'}');
    }
}

impl<'a> LookupRecord<'a> {
    pub fn new(lookup: &'a Lookup) -> Self {
        Self {
            kind: "lookup",
            ts: Rfc3339(lookup.first_wall_time_ns()),
            client: ClientFields::of(lookup.client()),
            name: lookup.name(),
            names_tried: lookup.names_tried(),
            outcome: lookup.outcome().name(),
            total_us: lookup.total_ns() / 1_000,
            attempts: lookup.queries(),
            wasted_queries: lookup.wasted_queries(),
            resolver: lookup.context.library.as_ref().map(Library::describe),
            server_pod: lookup.server_pod().map(PodRecord::from_pod),
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
    #[serde(flatten)]
    pub client: ClientFields<'a>,
    /// A stable cause code (docs/diagnoses.md).
    pub cause: &'static str,
    /// The server involved, `ip:port`, or null.
    pub server: Option<SocketAddr>,
    /// The pod on this node seen answering as that server (the last one,
    /// when several replicas did); null when the trace shows none.
    pub server_pod: Option<PodRecord<'a>>,
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
            client: ClientFields::of(&diagnosis.client),
            cause: diagnosis.cause.code(),
            server: diagnosis.server,
            server_pod: diagnosis.server_pod.as_ref().map(PodRecord::from_pod),
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
pub struct SummaryRecord<'a> {
    /// Always `"summary"`.
    pub kind: &'static str,
    /// Messages captured and written.
    pub messages: u64,
    /// Messages the kernel dropped because the ring buffer was full.
    pub lost: u64,
    /// Messages that did not decode whole (they are still written).
    pub undecodable: u64,
    /// `analyze`: damaged records of the input files, skipped.
    pub skipped_records: u64,
    /// DNS packets the kernel dropped (each also a `drop` record).
    pub drops: u64,
    /// The same, per drop reason.
    pub drops_by_reason: &'a std::collections::BTreeMap<String, u64>,
    /// Lookups reported before they settled: the correlator's memory
    /// budget was spent.
    pub evicted_lookups: u64,
    /// Messages not correlated because the agent was behind.
    pub shed: u64,
    /// Lookups reported incomplete.
    pub incomplete_lookups: u64,
    /// TCP streams the kernel stopped framing.
    pub unframed_tcp_streams: u64,
}

pub struct JsonOutput {
    destination: Destination,
    /// Whole lines not yet handed to the destination: each is written
    /// straight in here, and they go out together once `WRITE_BUFFER_BYTES`
    /// have gathered (at once, for a rotating file, which counts lines),
    /// sparing a copy of every line into the destination's own buffer.
    lines: Vec<u8>,
    times: TimeCache,
    kept: KeptFields,
    kinds: Kinds,
}

/// Which record kinds are written (`--json-kinds`).
struct Kinds {
    message: bool,
    attempt: bool,
    lookup: bool,
    diagnosis: bool,
    summary: bool,
    drop: bool,
}

impl Kinds {
    /// Every kind when none is named.
    fn from(named: &[JsonKind]) -> Self {
        let wanted = |kind| named.is_empty() || named.contains(&kind);
        Self {
            message: wanted(JsonKind::Message),
            attempt: wanted(JsonKind::Attempt),
            lookup: wanted(JsonKind::Lookup),
            diagnosis: wanted(JsonKind::Diagnosis),
            summary: wanted(JsonKind::Summary),
            drop: wanted(JsonKind::Drop),
        }
    }
}

impl JsonOutput {
    pub fn new(destination: Destination, kinds: &[JsonKind]) -> Self {
        Self {
            destination,
            lines: Vec::with_capacity(WRITE_BUFFER_BYTES + 1024),
            times: TimeCache::default(),
            kept: KeptFields::default(),
            kinds: Kinds::from(kinds),
        }
    }

    fn line(&mut self, value: &impl Serialize) -> io::Result<()> {
        let start = self.lines.len();
        if let Err(error) = serde_json::to_writer(&mut self.lines, value) {
            // No half line before the next.
            self.lines.truncate(start);
            return Err(error.into());
        }
        self.end_line()
    }

    fn end_line(&mut self) -> io::Result<()> {
        self.lines.push(b'\n');
        if self.destination.rotates() {
            self.write_lines()?;
            return self.destination.line_written();
        }
        if self.lines.len() >= WRITE_BUFFER_BYTES {
            self.write_lines()?;
        }
        Ok(())
    }

    fn write_lines(&mut self) -> io::Result<()> {
        let written = self.destination.writer.write_all(&self.lines);
        self.lines.clear();
        written
    }
}

/// Lines gathered when dnstrace stops on an error, which skips `finish`,
/// still go out.
impl Drop for JsonOutput {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

impl Output for JsonOutput {
    fn message(&mut self, message: &Message) -> io::Result<()> {
        if !self.kinds.message {
            return Ok(());
        }
        write_message(&mut self.lines, &mut self.times, &mut self.kept, message);
        self.end_line()
    }

    fn lookup(&mut self, lookup: &Lookup) -> io::Result<()> {
        if self.kinds.attempt {
            for attempt in &lookup.attempts {
                AttemptRecord::new(attempt).write_json(&mut self.lines, &mut self.times);
                self.end_line()?;
            }
        }
        if !self.kinds.lookup {
            return Ok(());
        }
        LookupRecord::new(lookup).write_json(&mut self.lines, &mut self.times);
        self.end_line()
    }

    fn stray(&mut self, attempt: &Attempt) -> io::Result<()> {
        if !self.kinds.attempt {
            return Ok(());
        }
        AttemptRecord::new(attempt).write_json(&mut self.lines, &mut self.times);
        self.end_line()
    }

    fn dropped(&mut self, dropped: &Dropped) -> io::Result<()> {
        if !self.kinds.drop {
            return Ok(());
        }
        DropRecord::new(dropped).write_json(&mut self.lines, &mut self.times);
        self.end_line()
    }

    fn diagnosis(&mut self, diagnosis: &Diagnosis, _first: bool) -> io::Result<()> {
        if !self.kinds.diagnosis {
            return Ok(());
        }
        self.line(&DiagnosisRecord::new(diagnosis))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_lines()?;
        self.destination.writer.flush()
    }

    fn finish(&mut self, summary: &Summary) -> io::Result<()> {
        if !self.kinds.summary {
            return self.flush();
        }
        self.line(&SummaryRecord {
            kind: "summary",
            messages: summary.messages,
            lost: summary.lost(),
            undecodable: summary.undecodable,
            skipped_records: summary.skipped_records,
            drops: summary.drops,
            drops_by_reason: &summary.drops_by_reason,
            evicted_lookups: summary.evicted_lookups,
            shed: summary.shed,
            incomplete_lookups: summary.incomplete_lookups,
            unframed_tcp_streams: summary.unframed_tcp_streams,
        })?;
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{FLAG_NAMES, decode};

    /// A message of an all-zero header from an unknown process to
    /// 127.0.0.1:53.
    fn header_only(
        wall_time_ns: i128,
        local: &str,
        direction: crate::message::Direction,
    ) -> Message {
        let payload = [0u8; 12];
        Message {
            envelope: crate::message::Envelope {
                wall_time_ns,
                monotonic_ns: 0,
                process: None,
                socket_cookie: 1,
                direction,
                transport: crate::message::Transport::Udp,
                local: local.parse().unwrap(),
                remote: "127.0.0.1:53".parse().unwrap(),
                response_number: None,
            },
            size: 12,
            truncated_capture: false,
            payload: Vec::new(),
            dns: decode(&payload, payload.len()),
        }
    }

    /// A process in a pod, with odd names (they are anyone's text).
    fn in_a_pod() -> std::sync::Arc<Facts> {
        use crate::message::{Container, Pod, Runtime};
        std::sync::Arc::new(Facts {
            container: Some(Container {
                id: "ab".repeat(32),
                runtime: Some(Runtime::CriO),
                name: Some("app\"\n".into()),
                image: None,
            }),
            pod: Some(Pod {
                name: Some("web-0".into()),
                namespace: None,
                uid: Some("u".into()),
            }),
            ..Facts::default()
        })
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
            skipped_records: 0,
            drops: 0,
            drops_by_reason: &Default::default(),
            evicted_lookups: 0,
            shed: 0,
            incomplete_lookups: 0,
            unframed_tcp_streams: 0,
        };
        let dropped = Dropped {
            message: message.clone(),
            reason: "NETFILTER_DROP".into(),
            location: "nf_hook_slow+0x8d".into(),
            netns: Some(1),
            conntrack: None,
        };
        let client = crate::message::Client {
            id: crate::message::ClientId::Pid(1),
            comm: Some("c".into()),
            facts: Some(in_a_pod()),
        };
        let attempt = Attempt {
            client: client.clone(),
            tid: None,
            socket_cookie: 1,
            transport: crate::message::Transport::Udp,
            server: "127.0.0.1:53".parse().unwrap(),
            local: "192.0.2.100:40000".parse().unwrap(),
            server_pod: None,
            question: crate::decode::Question {
                name: "x.".into(),
                qtype: 1,
            },
            id: 1,
            sent_monotonic_ns: Some(0),
            sent_wall: Some(0.into()),
            response: None,
            outcome: crate::correlate::attempt::Outcome::Timeout,
            moved_on: false,
            ended_monotonic_ns: Some(1),
            drop: None,
        };
        let lookup = Lookup::new(Default::default(), attempt.clone());
        let mut diagnoser = crate::diagnose::Diagnoser::default();
        diagnoser.lookup(&lookup);
        let diagnosis = diagnoser.all()[0].clone();
        for value in [
            serde_json::to_value(MessageRecord::new(&message)).unwrap(),
            serde_json::to_value(DropRecord::new(&dropped)).unwrap(),
            serde_json::to_value(AttemptRecord::new(&attempt)).unwrap(),
            serde_json::to_value(LookupRecord::new(&lookup)).unwrap(),
            serde_json::to_value(DiagnosisRecord::new(&diagnosis)).unwrap(),
            serde_json::to_value(summary).unwrap(),
        ] {
            for (key, value) in value.as_object().unwrap() {
                assert!(
                    docs.contains(&format!("| `{key}` |")),
                    "docs/json.md lacks `{key}`"
                );
                // The container's and pod's own fields, as `container.id`.
                for inner in value.as_object().into_iter().flat_map(|o| o.keys()) {
                    assert!(
                        docs.contains(&format!("| `{key}.{inner}` |")),
                        "docs/json.md lacks `{key}.{inner}`"
                    );
                }
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

    /// The fast writer and serde must agree byte for byte.
    fn assert_same_json(message: &Message, times: &mut TimeCache, owners: &mut KeptFields) {
        let mut fast = Vec::new();
        write_message(&mut fast, times, owners, message);
        let serde = serde_json::to_vec(&MessageRecord::new(message)).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&fast),
            String::from_utf8_lossy(&serde)
        );
    }

    #[test]
    fn the_fast_writer_writes_what_serde_writes() {
        use hickory_proto::{
            op::{Edns, Message as DnsMessage, MessageType, OpCode, Query},
            rr::{Name, RecordType},
        };
        let mut query = DnsMessage::new(0xbeef, MessageType::Query, OpCode::Query);
        query.metadata.recursion_desired = true;
        query.metadata.checking_disabled = true;
        query.add_query(Query::query(
            Name::from_ascii("x-y_z.example.").unwrap(),
            RecordType::AAAA,
        ));
        query.set_edns(Edns::new());
        let query = query.to_vec().unwrap();
        let mut times = TimeCache::default();
        let mut owners = KeptFields::default();
        let mut message = header_only(0, "10.0.0.7:40000", crate::message::Direction::Send);
        assert_same_json(&message, &mut times, &mut owners);
        message.envelope.process = Some(crate::message::Process {
            pid: 4242,
            tid: u32::MAX,
            comm: "we\"ird\\\n\u{1}\u{7f}é名".into(),
            uid: 0,
            cgroup_id: u64::MAX,
            netns: Some(4026531840),
            facts: in_a_pod(),
        });
        message.dns = decode(&query, query.len());
        for (ns, local, remote) in [
            (1_795_758_586_123_456_789, "10.0.0.7:40000", "127.0.0.53:53"),
            // The same second again, from the cache.
            (
                1_795_758_586_000_000_001,
                "255.255.255.255:65535",
                "0.0.0.0:0",
            ),
            (1_795_758_587_999_999_999, "[::1]:5353", "[2001:db8::1]:53"),
            (-1, "[::ffff:1.2.3.4]:1", "[fe80::1]:53"),
            (0, "1.2.3.4:5", "6.7.8.9:10"),
        ] {
            message.envelope.wall_time_ns = ns;
            message.envelope.local = local.parse().unwrap();
            message.envelope.remote = remote.parse().unwrap();
            assert_same_json(&message, &mut times, &mut owners);
        }
        // Cut short: a decode error, and flags but no question.
        message.dns = decode(&query[..20], query.len());
        message.truncated_capture = true;
        assert_same_json(&message, &mut times, &mut owners);
        message.envelope.process = None;
        message.dns = decode(&[], 0);
        assert_same_json(&message, &mut times, &mut owners);
    }

    /// A query and its response from a process in a pod, correlated into
    /// a lookup; with `answered` false the response never comes.
    fn correlated_lookup(answered: bool) -> Lookup {
        use crate::{
            correlate::{Correlated, Correlator},
            message::Direction,
        };
        use hickory_proto::{
            op::{Message as DnsMessage, MessageType, OpCode, Query},
            rr::{Name, RecordType},
        };
        let mut query = DnsMessage::new(7, MessageType::Query, OpCode::Query);
        query.add_query(Query::query(
            Name::from_labels([&b"we\"ird"[..], b"example"]).unwrap(),
            RecordType::AAAA,
        ));
        let mut response = query.clone();
        response.metadata.message_type = MessageType::Response;
        response.metadata.recursion_available = true;
        let process = Process {
            pid: 42,
            tid: 43,
            comm: "app\u{1}".into(),
            uid: 0,
            cgroup_id: 9,
            netns: None,
            facts: in_a_pod(),
        };
        let mut correlator = Correlator::default();
        let mut out = Vec::new();
        let mut sent = header_only(1_795_758_586_123_456_789, "10.0.0.7:40000", Direction::Send);
        sent.envelope.process = Some(process.clone());
        let bytes = query.to_vec().unwrap();
        sent.dns = decode(&bytes, bytes.len());
        correlator.observe(&sent, &mut out);
        if answered {
            let mut came = sent.clone();
            came.envelope.direction = Direction::Recv;
            came.envelope.monotonic_ns = 1_500_000;
            let bytes = response.to_vec().unwrap();
            came.dns = decode(&bytes, bytes.len());
            correlator.observe(&came, &mut out);
        }
        correlator.finish(&mut out);
        match out.pop() {
            Some(Correlated::Lookup(lookup)) => *lookup,
            _ => panic!("no lookup"),
        }
    }

    fn assert_same_text(fast: &[u8], serde: &[u8]) {
        assert_eq!(
            String::from_utf8_lossy(fast),
            String::from_utf8_lossy(serde)
        );
    }

    /// Attempts, lookups and drops are written by hand too; serde must
    /// agree byte for byte, whatever is set or not.
    #[test]
    fn attempts_lookups_and_drops_are_written_as_serde_writes_them() {
        use crate::{
            correlate::attempt::{DroppedPacket, KernelDrop},
            message::{Direction, Dropped, Pod},
            resolver::{Library, ResolverContext},
        };
        let mut times = TimeCache::default();
        for answered in [true, false] {
            let mut lookup = correlated_lookup(answered);
            for variant in 0..3 {
                if variant == 1 {
                    lookup.attempts[0].drop = Some(Box::new(KernelDrop {
                        packet: DroppedPacket::Response,
                        reason: "NETFILTER_DROP".into(),
                        location: "nf_hook_slow+0x8d".into(),
                        after_ns: 1_234_567,
                        conntrack: None,
                    }));
                    lookup.attempts[0].server_pod = Some(Arc::new(Pod {
                        name: Some("coredns-1".into()),
                        namespace: Some("kube-system".into()),
                        uid: None,
                    }));
                    lookup.context = Arc::new(ResolverContext {
                        conf: None,
                        library: Some(Library::Glibc {
                            major: 2,
                            minor: 19,
                        }),
                    });
                }
                if variant == 2 {
                    // A stray, as files without processes give it.
                    lookup.attempts[0].client = Client {
                        id: crate::message::ClientId::Address("2001:db8::1".parse().unwrap()),
                        comm: None,
                        facts: None,
                    };
                    lookup.attempts[0].sent_wall = None;
                    lookup.attempts[0].sent_monotonic_ns = None;
                }
                for attempt in &lookup.attempts {
                    let mut fast = Vec::new();
                    AttemptRecord::new(attempt).write_json(&mut fast, &mut times);
                    let serde = serde_json::to_vec(&AttemptRecord::new(attempt)).unwrap();
                    assert_same_text(&fast, &serde);
                }
                let mut fast = Vec::new();
                LookupRecord::new(&lookup).write_json(&mut fast, &mut times);
                assert_same_text(
                    &fast,
                    &serde_json::to_vec(&LookupRecord::new(&lookup)).unwrap(),
                );
            }
        }
        let mut message = header_only(-5, "[::1]:53", Direction::Send);
        for netns in [None, Some(4026531840)] {
            let dropped = Dropped {
                message: message.clone(),
                reason: "NO_SOCKET".into(),
                location: "__udp4_lib_rcv+0x9a".into(),
                netns,
                conntrack: None,
            };
            let mut fast = Vec::new();
            DropRecord::new(&dropped).write_json(&mut fast, &mut times);
            assert_same_text(
                &fast,
                &serde_json::to_vec(&DropRecord::new(&dropped)).unwrap(),
            );
            message.envelope.process = Some(Process {
                pid: 1,
                tid: 2,
                comm: "x".into(),
                uid: 3,
                cgroup_id: 4,
                netns: Some(5),
                facts: in_a_pod(),
            });
        }
    }

    /// The kept `pid` to `pod` fields change with any of what they say.
    #[test]
    fn kept_process_fields_follow_the_process() {
        use crate::message::Direction;
        let mut times = TimeCache::default();
        let mut owners = KeptFields::default();
        let mut message = header_only(0, "10.0.0.7:40000", Direction::Send);
        let process = Process {
            pid: 1,
            tid: 1,
            comm: "a".into(),
            uid: 0,
            cgroup_id: 1,
            netns: None,
            facts: Facts::unknown(),
        };
        type Change = Box<dyn Fn(&mut Process)>;
        let mut changes: Vec<Change> = vec![
            Box::new(|_| {}),
            Box::new(|p| p.pid = 2),
            Box::new(|p| p.tid = 3),
            Box::new(|p| p.comm = "b".into()),
            Box::new(|p| p.uid = 4),
            Box::new(|p| p.cgroup_id = 5),
            Box::new(|p| p.netns = Some(6)),
            Box::new(|p| p.facts = in_a_pod()),
        ];
        // Past the cache's size, so that entries are replaced.
        for n in 0..2 * KeptTexts::<OwnerKey>::PLACES as u32 {
            changes.push(Box::new(move |p| p.tid = 100 + n));
        }
        for change in &changes {
            // Each change alone, then all so far together, twice (the
            // second time from the cache).
            let mut alone = process.clone();
            change(&mut alone);
            message.envelope.process = Some(alone);
            assert_same_json(&message, &mut times, &mut owners);
            assert_same_json(&message, &mut times, &mut owners);
        }
        let mut all = process.clone();
        for change in &changes {
            change(&mut all);
            message.envelope.process = Some(all.clone());
            assert_same_json(&message, &mut times, &mut owners);
        }
    }

    /// The kept `socket_cookie` to `remote` fields change with any of
    /// what they say.
    #[test]
    fn kept_socket_fields_follow_the_socket() {
        let mut times = TimeCache::default();
        let mut kept = KeptFields::default();
        let mut message = header_only(0, "10.0.0.7:40000", Direction::Send);
        type Change = Box<dyn Fn(&mut Envelope)>;
        let mut changes: Vec<Change> = vec![
            Box::new(|_| {}),
            Box::new(|e| e.socket_cookie = 2),
            Box::new(|e| e.direction = Direction::Recv),
            Box::new(|e| e.transport = Transport::Tcp),
            Box::new(|e| e.local = "10.0.0.8:40000".parse().unwrap()),
            Box::new(|e| e.remote = "[::1]:53".parse().unwrap()),
        ];
        // Past the table's size, so that entries are replaced.
        for n in 0..2 * KeptTexts::<SocketKey>::PLACES as u16 {
            changes.push(Box::new(move |e| e.local.set_port(n)));
        }
        let first = message.envelope.clone();
        for change in &changes {
            // Each change alone, then all so far together, twice (the
            // second time kept).
            message.envelope = first.clone();
            change(&mut message.envelope);
            assert_same_json(&message, &mut times, &mut kept);
            assert_same_json(&message, &mut times, &mut kept);
        }
        message.envelope = first;
        for change in &changes {
            change(&mut message.envelope);
            assert_same_json(&message, &mut times, &mut kept);
        }
    }

    #[test]
    fn every_set_of_flags_is_written_as_serde_writes_it() {
        for bits in 0..1u8 << FLAG_NAMES.len() {
            let flags = FlagNames(Flags::from_bits(bits));
            let mut fast = Vec::new();
            flags.write_json(&mut fast);
            assert_eq!(fast, serde_json::to_vec(&flags).unwrap(), "{bits:#b}");
        }
    }

    #[test]
    fn mnemonics_need_no_escaping() {
        let names = (0..=u16::MAX)
            .map(qtype_name)
            .chain((0..4096).map(rcode_name))
            .chain((0..16).map(opcode_name))
            .chain(FLAG_NAMES.map(Cow::from))
            .chain(["message", "send", "recv", "udp", "tcp"].map(Cow::from));
        for name in names {
            assert!(!needs_escape(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn strings_are_escaped_as_serde_escapes_them() {
        let mut text: String = (0u8..=0x7f).map(char::from).collect();
        text.push_str("é名\u{10ffff}");
        let mut fast = Vec::new();
        text.as_str().write_json(&mut fast);
        assert_eq!(fast, serde_json::to_vec(&text).unwrap());
        // Each special byte at each place in a word, and in the tail.
        for special in (0u8..0x20).chain(*b"\"\\") {
            for at in 0..19 {
                let mut bytes = *b"abcdefghijklmnopqrs";
                bytes[at] = special;
                let text = String::from_utf8(bytes.to_vec()).unwrap();
                assert!(needs_escape(text.as_bytes()), "{text:?}");
                let mut fast = Vec::new();
                text.as_str().write_json(&mut fast);
                assert_eq!(fast, serde_json::to_vec(&text).unwrap());
            }
        }
        assert!(!needs_escape("plain text, ~ and \u{7f} é".as_bytes()));
    }

    #[test]
    fn numbers_are_written_as_serde_writes_them() {
        let mut n = 1u64;
        for value in (0..20)
            .flat_map(|_| {
                n = n.saturating_mul(10);
                [n - 1, n, n.saturating_add(1)]
            })
            .chain([0, 1, 9, u64::MAX])
        {
            let mut fast = Vec::new();
            value.write_json(&mut fast);
            assert_eq!(fast, serde_json::to_vec(&value).unwrap());
        }
    }
}
