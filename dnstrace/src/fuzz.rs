//! What the fuzz targets in fuzz/ call: every parser of bytes that someone
//! else controls (the wire, a file handed to `analyze`), and correlation
//! fed any sequence of messages. Built only by cargo-fuzz (`cfg(fuzzing)`);
//! docs/fuzzing.md says how each input is laid out.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
};

use crate::{
    analyze::{
        ReadOptions, Reader, dnstap::DnstapReader, jsonl::JsonLinesReader, packets::PcapReader,
        packets::PcapngReader,
    },
    framing::TcpStreams,
    message::{Direction, Envelope, Facts, Message, Process, Transport},
    pipeline::Pipeline,
    resolver::{Library, ResolvConf, ResolverContext},
};

/// The DNS decoder. The first two bytes say how much longer than the
/// captured rest the message was on the wire (a capture cut short).
pub fn decode(data: &[u8]) {
    let Some((extra, payload)) = data.split_first_chunk::<2>() else {
        return;
    };
    let wire_len = payload.len() + usize::from(u16::from_be_bytes(*extra));
    crate::decode::decode(payload, wire_len);
}

/// TCP framing fed a sequence of segments, each: one byte of socket (low
/// three bits) and direction (bit 3), the segment's length (two bytes),
/// how many of its bytes were captured (one byte), then those bytes.
pub fn framing(mut data: &[u8]) {
    let mut streams = TcpStreams::default();
    while let Some((&[socket, high, low, captured], rest)) = data.split_first_chunk::<4>() {
        let segment_len = u32::from(u16::from_be_bytes([high, low]));
        let captured = rest.len().min(usize::from(captured));
        // The kernel never copies more than the segment holds.
        let captured = captured.min(segment_len as usize);
        let (bytes, rest) = rest.split_at(captured);
        for framed in streams.frame(u64::from(socket & 7), socket & 8 != 0, segment_len, bytes) {
            assert!(framed.bytes.len() <= framed.len as usize);
        }
        data = rest;
    }
}

fn read_options() -> ReadOptions {
    ReadOptions {
        ports: vec![53],
        keep_payloads: true,
    }
}

/// Reads every message a reader gives, as `analyze` does.
fn read_all(reader: &mut dyn Reader) {
    while let Ok(Some(_)) = reader.next_message() {}
}

pub fn pcap(data: &[u8]) {
    if let Ok(mut reader) = PcapReader::open(data, &read_options()) {
        read_all(&mut reader);
    }
}

pub fn pcapng(data: &[u8]) {
    if let Ok(mut reader) = PcapngReader::open(data, &read_options()) {
        read_all(&mut reader);
    }
}

pub fn dnstap(data: &[u8]) {
    if let Ok(mut reader) = DnstapReader::open(data, &read_options()) {
        read_all(&mut reader);
    }
}

pub fn json_lines(data: &[u8]) {
    read_all(&mut JsonLinesReader::new(data));
}

/// Names the correlator sees, a few so that queries and answers meet:
/// a search expansion of the first, and one that is not.
const NAMES: [&str; 4] = [
    "a.example.",
    "a.example.svc.cluster.local.",
    "b.example.",
    "c.",
];

/// Correlation and diagnosis (the pipeline without outputs) fed messages
/// made from the bytes, 9 a message: a time step (`time_step`), then
/// `message_of`'s fields, or with op[1] % 8 == 7 a pause of op[2] tenths
/// of a second. A first byte with
/// its low bit set reads as a file (no processes) instead of live tracing.
pub fn correlate(data: &[u8]) {
    let Some((&mode, mut data)) = data.split_first() else {
        return;
    };
    let mut pipeline = match mode & 1 {
        0 => Pipeline::new(Vec::new()),
        _ => Pipeline::offline(Vec::new()),
    };
    let facts = facts_choices();
    let mut now = 1_000_000_000u64;
    while let Some((op, rest)) = data.split_first_chunk::<9>() {
        data = rest;
        now = time_step(now, op[0]);
        match op[1] % 8 {
            // Nothing happens for a while: timeouts and settled lookups.
            7 => pipeline.advance(now.saturating_add(u64::from(op[2]) * 100_000_000)),
            _ => pipeline.message(&message_of(op, now, &facts)),
        }
    }
    pipeline.finish();
}

/// A message's time: mostly forward in steps of 10 ms (up to 1.27 s),
/// but files give any time in any order: backward too, or centuries ahead.
fn time_step(now: u64, step: u8) -> u64 {
    let by = u64::from(step & 0x7f) * 10_000_000;
    match step {
        0..0x80 => now.saturating_add(by),
        0x80..0xff => now.saturating_sub(by),
        0xff => u64::MAX - 1_000_000_000,
    }
}

/// Processes as enrich describes them: without resolver facts, glibc with
/// Kubernetes search domains, musl, Go.
fn facts_choices() -> [Arc<Facts>; 4] {
    let kubernetes = ResolvConf {
        search: vec!["svc.cluster.local".into(), "cluster.local".into()],
        ndots: 5,
        timeout_secs: 2,
        ..ResolvConf::default()
    };
    let with = |library: Library| {
        Arc::new(Facts {
            resolver: Arc::new(ResolverContext {
                conf: Some(kubernetes.clone()),
                library: Some(library),
            }),
            ..Facts::default()
        })
    };
    [
        Facts::unknown(),
        with(Library::Glibc {
            major: 2,
            minor: 36,
        }),
        with(Library::Musl),
        with(Library::Go),
    ]
}

/// One message: op[1] picks the process (bits 0-2, 4 and up for none),
/// direction (bit 3), transport (bit 4) and socket (bits 5-7); op[2] the
/// server (bit 0), the name (bits 1-2) and AAAA (bit 3), and is the
/// answer count (bits 4-7); op[3-4] the id, op[5-6] the flags word (QR,
/// opcode, TC, RCODE...), op[7] the EDNS size / 256 (0: no OPT record) and
/// op[8] how many bytes the capture keeps (255: all).
fn message_of(op: &[u8; 9], now: u64, facts: &[Arc<Facts>; 4]) -> Message {
    let process = (op[1] & 7 < 4).then(|| Process {
        pid: 100 + u32::from(op[1] & 3),
        tid: 100 + u32::from(op[1] & 3),
        comm: Arc::from("fuzz"),
        uid: 0,
        cgroup_id: 0,
        netns: None,
        facts: facts[usize::from(op[1] & 3)].clone(),
    });
    let socket = u64::from(op[1] >> 5);
    let envelope = Envelope {
        wall_time_ns: i128::from(now),
        monotonic_ns: now,
        process,
        socket_cookie: socket,
        direction: match op[1] & 8 {
            0 => Direction::Send,
            _ => Direction::Recv,
        },
        transport: match op[1] & 16 {
            0 => Transport::Udp,
            _ => Transport::Tcp,
        },
        local: SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1), 40_000 + socket as u16)),
        remote: SocketAddr::from((Ipv4Addr::new(10, 0, 0, 53 + (op[2] & 1)), 53)),
        response_number: None,
    };
    let payload = payload_of(op);
    let kept = payload.len().min(usize::from(op[8]));
    Message::decoded(envelope, &payload[..kept], payload.len() as u32, false)
}

/// The DNS message `message_of` describes, on the wire.
fn payload_of(op: &[u8; 9]) -> Vec<u8> {
    let answers = op[2] >> 4;
    let edns = op[7] != 0;
    let mut payload = vec![
        op[3],
        op[4],
        op[5],
        op[6],
        0,
        1,
        0,
        answers,
        0,
        0,
        0,
        u8::from(edns),
    ];
    let question_at = payload.len();
    for label in NAMES[usize::from(op[2] >> 1 & 3)].split_terminator('.') {
        payload.push(label.len() as u8);
        payload.extend_from_slice(label.as_bytes());
    }
    payload.push(0);
    let qtype: u16 = if op[2] & 8 == 0 { 1 } else { 28 };
    payload.extend_from_slice(&qtype.to_be_bytes());
    payload.extend_from_slice(&[0, 1]);
    for _ in 0..answers {
        // A compressed pointer to the question's name, then an A record.
        payload.extend_from_slice(&[0xc0, question_at as u8, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        payload.extend_from_slice(&[192, 0, 2, 1]);
    }
    if edns {
        payload.extend_from_slice(&[0, 0, 41, op[7], 0, 0, 0, 0, 0, 0, 0]);
    }
    payload
}
