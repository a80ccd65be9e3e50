//! DNS payload → the fields dnstrace reports: the header and the first
//! question are read by hand for the common shapes, with hickory-proto for
//! any other question; the rest is walked for framing and the OPT record.
//!
//! Never fails: a malformed or cut-short payload still yields whatever the
//! header and question give, plus a `decode_error` saying what went wrong.

use std::borrow::Cow;

use hickory_proto::{
    op::Query,
    rr::RecordType,
    serialize::binary::{BinDecodable, BinDecoder},
};

/// DNS header flag bits that dnstrace reports, in the order it prints them.
pub const FLAG_NAMES: [&str; 6] = ["aa", "tc", "rd", "ra", "ad", "cd"];

/// Header flags as a small bit set, indexed like [`FLAG_NAMES`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flags(u8);

impl Flags {
    pub const AA: Self = Self(1 << 0);
    pub const TC: Self = Self(1 << 1);
    pub const RD: Self = Self(1 << 2);
    pub const RA: Self = Self(1 << 3);
    pub const AD: Self = Self(1 << 4);
    pub const CD: Self = Self(1 << 5);

    /// From the header's third and fourth bytes.
    fn from_header(bits: u8, more_bits: u8) -> Self {
        let mut flags = Self::default();
        for (set, flag) in [
            (bits & 0x04, Self::AA),
            (bits & 0x02, Self::TC),
            (bits & 0x01, Self::RD),
            (more_bits & 0x80, Self::RA),
            (more_bits & 0x20, Self::AD),
            (more_bits & 0x10, Self::CD),
        ] {
            if set != 0 {
                flags.0 |= flag.0;
            }
        }
        flags
    }

    /// The set as a number below 64, one bit per [`FLAG_NAMES`] entry.
    pub fn bits(self) -> u8 {
        self.0
    }

    /// The set that [`Flags::bits`] gives as `bits` (higher bits ignored).
    pub fn from_bits(bits: u8) -> Self {
        Self(bits & ((1 << FLAG_NAMES.len()) - 1))
    }

    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// The flags named, as `names` writes them; `None` for an unknown name.
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<Self> {
        let mut flags = Self::default();
        for name in names {
            let bit = FLAG_NAMES.iter().position(|known| *known == name)?;
            flags.0 |= 1 << bit;
        }
        Some(flags)
    }

    /// The names of the flags that are set, in [`FLAG_NAMES`] order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        FLAG_NAMES
            .iter()
            .enumerate()
            .filter(move |(bit, _)| self.0 & (1 << bit) != 0)
            .map(|(_, name)| *name)
    }
}

/// What one DNS message says, as far as it could be read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DnsSummary {
    /// `None` only when the payload is shorter than the 12-byte header.
    pub header: Option<HeaderSummary>,
    /// The first question, when it could be read.
    pub question: Option<Question>,
    /// The OPT record's UDP payload size, when the message carries one.
    pub edns_udp_size: Option<u16>,
    pub decode_error: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HeaderSummary {
    pub id: u16,
    pub is_response: bool,
    pub opcode: u8,
    pub flags: Flags,
    /// The full response code: the header's four bits, extended by EDNS.
    pub rcode: u16,
    /// Section counts as written in the header: the OPT record counts as
    /// additional, as it does on the wire and in resolvers' checks.
    pub questions: u16,
    pub answers: u16,
    pub authority: u16,
    pub additional: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Question {
    /// Fully qualified, with the trailing dot.
    pub name: String,
    pub qtype: u16,
}

const HEADER_LEN: usize = 12;

pub fn decode(payload: &[u8], wire_len: usize) -> DnsSummary {
    let mut summary = DnsSummary::default();
    let Some(header) = payload.first_chunk::<HEADER_LEN>() else {
        summary.decode_error = Some(format!(
            "message of {wire_len} bytes is shorter than the 12-byte DNS header"
        ));
        return summary;
    };
    let word = |at: usize| u16::from_be_bytes([header[at], header[at + 1]]);
    let mut header_summary = HeaderSummary {
        id: word(0),
        is_response: header[2] & 0x80 != 0,
        opcode: (header[2] >> 3) & 0x0f,
        flags: Flags::from_header(header[2], header[3]),
        rcode: u16::from(header[3] & 0x0f),
        questions: word(4),
        answers: word(6),
        authority: word(8),
        additional: word(10),
    };

    let body = if header_summary.questions > 0 {
        match read_question(payload) {
            Ok((question, end)) => {
                summary.question = Some(question);
                walk_sections(payload, end, &header_summary)
            }
            // The first question is at most 260 bytes past the header: the
            // capture cuts it only when it holds less.
            Err(error) if payload.len() < HEADER_LEN + 260 => Err(Fault::Cut(error)),
            Err(error) => Err(Fault::Malformed(error)),
        }
    } else {
        walk_sections(payload, HEADER_LEN, &header_summary)
    };
    match body {
        Ok(opt) => {
            if let Some(opt) = opt {
                summary.edns_udp_size = Some(opt.udp_size);
                header_summary.rcode |= u16::from(opt.rcode_high) << 4;
            }
        }
        // A message captured short runs out where the capture ends: that is
        // `truncated_capture`, not a fault of the message. A fault within
        // the bytes captured is still one.
        Err(Fault::Cut(_)) if payload.len() < wire_len => {}
        Err(Fault::Cut(error) | Fault::Malformed(error)) => {
            summary.decode_error = Some(if payload.len() < wire_len {
                format!("captured {} of {wire_len} bytes: {error}", payload.len())
            } else {
                error
            });
        }
    }
    summary.header = Some(header_summary);
    summary
}

/// Why a message did not read whole.
enum Fault {
    /// It runs past the bytes there are.
    Cut(String),
    /// Something within them is wrong.
    Malformed(String),
}

/// What the OPT pseudo-record adds to the header.
struct Opt {
    udp_size: u16,
    rcode_high: u8,
}

const TYPE_OPT: u16 = 41;

/// Checks the framing of every section after the first question and finds
/// the OPT record. Record data is skipped, not parsed: dnstrace reports
/// counts and flags, and a tracer has to keep up with a busy server.
fn walk_sections(
    payload: &[u8],
    start: usize,
    header: &HeaderSummary,
) -> Result<Option<Opt>, Fault> {
    let mut offset = start;
    for _ in 1..header.questions {
        skip_name(payload, &mut offset)?;
        take(payload, &mut offset, 4, "question")?;
    }
    let before_additional = usize::from(header.answers) + usize::from(header.authority);
    let records = before_additional + usize::from(header.additional);
    let mut opt = None;
    for index in 0..records {
        skip_name(payload, &mut offset)?;
        let fixed = take(payload, &mut offset, 10, "record header")?;
        let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let rdlength = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
        take(payload, &mut offset, rdlength, "record data")?;
        if rtype == TYPE_OPT && index >= before_additional {
            opt = Some(Opt {
                udp_size: u16::from_be_bytes([fixed[2], fixed[3]]),
                rcode_high: fixed[4],
            });
        }
    }
    Ok(opt)
}

fn take<'a>(
    payload: &'a [u8],
    offset: &mut usize,
    len: usize,
    what: &str,
) -> Result<&'a [u8], Fault> {
    let bytes = payload.get(*offset..*offset + len).ok_or_else(|| {
        Fault::Cut(format!(
            "{what} runs past the end of the message at offset {offset}"
        ))
    })?;
    *offset += len;
    Ok(bytes)
}

/// Skips a domain name: labels up to the root, or up to a compression pointer.
fn skip_name(payload: &[u8], offset: &mut usize) -> Result<(), Fault> {
    loop {
        let len = *take(payload, offset, 1, "name")?.first().unwrap_or(&0);
        match len {
            0 => return Ok(()),
            0xc0..=0xff => {
                take(payload, offset, 1, "name pointer")?;
                return Ok(());
            }
            0x40..=0xbf => {
                return Err(Fault::Malformed(format!(
                    "unknown label type {len:#04x} at offset {}",
                    *offset - 1
                )));
            }
            _ => {
                take(payload, offset, usize::from(len), "label")?;
            }
        }
    }
}

impl Question {
    /// Names compare without regard to case, as DNS does.
    pub fn same_as(&self, other: &Self) -> bool {
        self.qtype == other.qtype && self.name.eq_ignore_ascii_case(&other.name)
    }
}

/// The first question, and where it ends. Names as nearly every query
/// spells them are read here; hickory reads the rest (compression
/// pointers, characters it escapes, names near the length limit) and says
/// what is wrong with a bad one.
fn read_question(payload: &[u8]) -> Result<(Question, usize), String> {
    if let Some(plain) = plain_question(payload) {
        return Ok(plain);
    }
    let mut decoder = BinDecoder::new(payload);
    decoder
        .read_slice(HEADER_LEN)
        .and_then(|_| Query::read(&mut decoder))
        .map(|query| {
            let question = Question {
                name: query.name().to_ascii(),
                qtype: u16::from(query.query_type()),
            };
            (question, decoder.index())
        })
        .map_err(|error| error.to_string())
}

/// A question whose name is plain labels of letters, digits, `-` and `_`
/// (no `-` first), which hickory's `to_ascii` writes as they are; `None`
/// for any other.
fn plain_question(payload: &[u8]) -> Option<(Question, usize)> {
    let mut name = Vec::with_capacity(64);
    let mut at = HEADER_LEN;
    loop {
        let len = usize::from(*payload.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        // Longer is a pointer or a reserved label type.
        if len > 63 {
            return None;
        }
        let label = payload.get(at..at + len)?;
        let plain = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_';
        if !label.first().is_some_and(plain) || !label.iter().all(|b| plain(b) || *b == b'-') {
            return None;
        }
        name.extend_from_slice(label);
        name.push(b'.');
        at += len;
        // Well within hickory's limit of 255 bytes on the wire.
        if name.len() > 253 {
            return None;
        }
    }
    if name.is_empty() {
        name.push(b'.');
    }
    // ASCII, as checked above.
    let name = String::from_utf8(name).ok()?;
    let fixed = payload.get(at..at + 4)?;
    let qtype = u16::from_be_bytes([fixed[0], fixed[1]]);
    Some((Question { name, qtype }, at + 4))
}

/// The mnemonic of a response code, as dig and Wireshark print it.
pub fn rcode_name(rcode: u16) -> Cow<'static, str> {
    Cow::Borrowed(match rcode {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        6 => "YXDOMAIN",
        7 => "YXRRSET",
        8 => "NXRRSET",
        9 => "NOTAUTH",
        10 => "NOTZONE",
        16 => "BADVERS",
        23 => "BADCOOKIE",
        other => return Cow::Owned(format!("RCODE{other}")),
    })
}

/// The code `rcode_name` names.
pub fn rcode_from_name(name: &str) -> Option<u16> {
    name.strip_prefix("RCODE")
        .and_then(|code| code.parse().ok())
        .or_else(|| (0..=23).find(|&code| rcode_name(code) == name))
}

/// The type `qtype_name` names.
pub fn qtype_from_name(name: &str) -> Option<u16> {
    match name.strip_prefix("TYPE") {
        Some(code) => code.parse().ok(),
        // hickory writes these names but does not parse them.
        None => match name {
            "ZERO" => Some(0),
            "OPT" => Some(41),
            "IXFR" => Some(251),
            _ => name.parse::<RecordType>().ok().map(u16::from),
        },
    }
}

/// The opcode `opcode_name` names.
pub fn opcode_from_name(name: &str) -> Option<u8> {
    name.strip_prefix("OPCODE")
        .and_then(|code| code.parse().ok())
        .or_else(|| (0..=6).find(|&code| opcode_name(code) == name))
}

/// The mnemonic of a record type ("A", "AAAA"), or `TYPE<n>` (RFC 3597).
pub fn qtype_name(qtype: u16) -> Cow<'static, str> {
    match RecordType::from(qtype) {
        RecordType::Unknown(code) => Cow::Owned(format!("TYPE{code}")),
        known => Cow::Borrowed(known.into()),
    }
}

/// The mnemonic of an opcode ("QUERY").
pub fn opcode_name(opcode: u8) -> Cow<'static, str> {
    Cow::Borrowed(match opcode {
        0 => "QUERY",
        1 => "IQUERY",
        2 => "STATUS",
        4 => "NOTIFY",
        5 => "UPDATE",
        6 => "DSO",
        other => return Cow::Owned(format!("OPCODE{other}")),
    })
}

#[cfg(test)]
mod tests {
    use hickory_proto::{
        op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
        rr::{Name, RData, Record, rdata::A},
    };

    use super::*;

    #[test]
    fn every_name_reads_back_as_its_code() {
        let failing: Vec<_> = (0..=u16::MAX)
            .filter(|&qtype| qtype_from_name(&qtype_name(qtype)) != Some(qtype))
            .map(|qtype| (qtype, qtype_name(qtype)))
            .collect();
        assert!(failing.is_empty(), "{failing:?}");
        for rcode in 0..=4095 {
            assert_eq!(rcode_from_name(&rcode_name(rcode)), Some(rcode));
        }
        for opcode in 0..=15 {
            assert_eq!(opcode_from_name(&opcode_name(opcode)), Some(opcode));
        }
        let flags = Flags::from_names(["aa", "rd", "cd"]).unwrap();
        assert_eq!(flags.names().collect::<Vec<_>>(), ["aa", "rd", "cd"]);
        assert_eq!(Flags::from_names(["qq"]), None);
    }

    fn query_bytes(name: &str, qtype: RecordType, edns: bool) -> Vec<u8> {
        let mut message = Message::new(0x1234, MessageType::Query, OpCode::Query);
        message.metadata.recursion_desired = true;
        message.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        if edns {
            let mut opt = Edns::new();
            opt.set_max_payload(1232);
            message.set_edns(opt);
        }
        message.to_vec().unwrap()
    }

    #[test]
    fn a_query_with_edns_reads_whole() {
        let bytes = query_bytes("postgres.svc.cluster.local.", RecordType::AAAA, true);
        let summary = decode(&bytes, bytes.len());
        let header = summary.header.unwrap();
        assert_eq!(header.id, 0x1234);
        assert!(!header.is_response);
        assert_eq!(header.flags.names().collect::<Vec<_>>(), ["rd"]);
        assert_eq!(
            header.additional, 1,
            "OPT counts as additional, as on the wire"
        );
        assert_eq!(summary.edns_udp_size, Some(1232));
        let question = summary.question.unwrap();
        assert_eq!(question.name, "postgres.svc.cluster.local.");
        assert_eq!(qtype_name(question.qtype), "AAAA");
        assert_eq!(summary.decode_error, None);
    }

    #[test]
    fn a_response_reports_flags_rcode_and_counts() {
        let mut message = Message::new(7, MessageType::Response, OpCode::Query);
        message.metadata.authoritative = true;
        message.metadata.recursion_desired = true;
        let name = Name::from_ascii("db.test.").unwrap();
        message.add_query(Query::query(name.clone(), RecordType::A));
        message.add_answer(Record::from_rdata(name, 30, RData::A(A::new(192, 0, 2, 1))));
        let bytes = message.to_vec().unwrap();
        let header = decode(&bytes, bytes.len()).header.unwrap();
        assert!(header.is_response);
        assert_eq!(header.flags.names().collect::<Vec<_>>(), ["aa", "rd"]);
        assert_eq!(
            (header.answers, header.authority, header.additional),
            (1, 0, 0)
        );
        assert_eq!(rcode_name(header.rcode), "NOERROR");
    }

    #[test]
    fn a_cut_short_message_keeps_header_and_question() {
        let mut message = Message::new(9, MessageType::Response, OpCode::Query);
        let name = Name::from_ascii("cut.test.").unwrap();
        message.add_query(Query::query(name.clone(), RecordType::A));
        message.add_answer(Record::from_rdata(name, 30, RData::A(A::new(192, 0, 2, 1))));
        let bytes = message.to_vec().unwrap();
        let captured = &bytes[..bytes.len() - 3];
        let summary = decode(captured, bytes.len());
        assert_eq!(summary.header.unwrap().id, 9);
        assert_eq!(summary.question.unwrap().name, "cut.test.");
        // Running out where the capture ends is no fault of the message.
        assert_eq!(summary.decode_error, None);
        // A fault within the bytes captured still is one.
        let mut bad = captured.to_vec();
        // The answer: a name pointer, 10 bytes of header, 4 of address.
        bad[bytes.len() - 16] = 0x40;
        let error = decode(&bad, bytes.len()).decode_error.unwrap();
        assert!(
            error.starts_with(&format!("captured {} of {}", captured.len(), bytes.len())),
            "{error}"
        );
    }

    #[test]
    fn edns_extends_the_rcode() {
        let mut message = Message::new(3, MessageType::Response, OpCode::Query);
        message.add_query(Query::query(
            Name::from_ascii("x.test.").unwrap(),
            RecordType::A,
        ));
        // The encoder splits it: low four bits in the header, the rest in OPT.
        message.metadata.response_code = ResponseCode::BADVERS;
        let mut opt = Edns::new();
        opt.set_max_payload(4096);
        message.set_edns(opt);
        let bytes = message.to_vec().unwrap();
        assert_eq!(bytes[3] & 0x0f, 0, "header rcode alone reads NOERROR");
        let summary = decode(&bytes, bytes.len());
        assert_eq!(rcode_name(summary.header.unwrap().rcode), "BADVERS");
        assert_eq!(summary.edns_udp_size, Some(4096));
    }

    #[test]
    fn a_record_running_past_the_end_is_named() {
        let mut bytes = query_bytes("x.test.", RecordType::A, false);
        bytes[7] = 1; // ANCOUNT = 1, but no answer follows
        let error = decode(&bytes, bytes.len()).decode_error.unwrap();
        assert!(error.starts_with("name runs past the end"), "{error}");
    }

    #[test]
    fn garbage_shorter_than_a_header_is_an_error_not_a_panic() {
        let summary = decode(&[0xde, 0xad, 0xbe], 3);
        assert_eq!(summary.header, None);
        assert!(
            summary
                .decode_error
                .unwrap()
                .contains("shorter than the 12-byte")
        );
    }

    #[test]
    fn random_bytes_never_panic() {
        // A fixed-seed xorshift, so a failure can be replayed.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..600 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            let _ = decode(&bytes, bytes.len());
        }
    }

    /// hickory's reading of the question at offset 12, for comparison.
    fn hickory_question(payload: &[u8]) -> Option<(Question, usize)> {
        let mut decoder = BinDecoder::new(payload);
        decoder.read_slice(HEADER_LEN).ok()?;
        let query = Query::read(&mut decoder).ok()?;
        let name = query.name().to_ascii();
        let qtype = u16::from(query.query_type());
        Some((Question { name, qtype }, decoder.index()))
    }

    #[test]
    fn plain_names_read_as_hickory_reads_them() {
        let alphabet = b"aZ09-_*.\\ \x00\xffq";
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = |bound: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % bound
        };
        let mut plain = 0;
        for _ in 0..20_000 {
            let mut payload = vec![0u8; HEADER_LEN];
            for _ in 0..next(6) {
                // Mostly short labels, sometimes long ones to near the limit.
                let len = if next(4) == 0 {
                    1 + next(63)
                } else {
                    1 + next(8)
                };
                payload.push(len as u8);
                for _ in 0..len {
                    // Mostly plain bytes, so that whole names often are.
                    let byte = if next(8) == 0 {
                        alphabet[next(alphabet.len() as u64) as usize]
                    } else {
                        b"ab-_9"[next(5) as usize]
                    };
                    payload.push(byte);
                }
            }
            payload.extend_from_slice(&[0, 0, 28, 0, 1]);
            payload.truncate(payload.len() - next(2) as usize);
            let ours = plain_question(&payload);
            if ours.is_some() {
                plain += 1;
                assert_eq!(ours, hickory_question(&payload), "{payload:?}");
            }
        }
        assert!(plain > 2_000, "only {plain} plain names");
    }

    #[test]
    fn headers_read_as_hickory_reads_them() {
        use hickory_proto::op::Header;
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..5_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut bytes = [0u8; HEADER_LEN];
            bytes[..8].copy_from_slice(&state.to_be_bytes());
            bytes[8..].copy_from_slice(&state.to_le_bytes()[..4]);
            bytes[4..6].copy_from_slice(&[0, 0]);
            let ours = decode(&bytes, bytes.len()).header.unwrap();
            let theirs = Header::read(&mut BinDecoder::new(&bytes)).unwrap();
            let m = &theirs.metadata;
            let flags: Vec<bool> = [
                Flags::AA,
                Flags::TC,
                Flags::RD,
                Flags::RA,
                Flags::AD,
                Flags::CD,
            ]
            .iter()
            .map(|flag| ours.flags.contains(*flag))
            .collect();
            assert_eq!(
                flags,
                [
                    m.authoritative,
                    m.truncation,
                    m.recursion_desired,
                    m.recursion_available,
                    m.authentic_data,
                    m.checking_disabled
                ]
            );
            assert_eq!(ours.id, m.id);
            assert_eq!(ours.is_response, m.message_type == MessageType::Response);
            assert_eq!(ours.opcode, u8::from(m.op_code));
            assert_eq!(ours.rcode & 0x0f, u16::from(m.response_code));
            let counts = theirs.counts;
            assert_eq!(
                (ours.answers, ours.authority, ours.additional),
                (counts.answers, counts.authorities, counts.additionals)
            );
        }
    }

    #[test]
    fn other_names_go_to_hickory() {
        // A compression pointer, a root name, an escaped character.
        let pointer = [0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1];
        assert_eq!(plain_question(&pointer), None);
        let root = [0u8, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 1];
        assert_eq!(plain_question(&root).unwrap().0.name, ".");
        assert_eq!(hickory_question(&root).unwrap().0.name, ".");
        let mut escaped = query_bytes("a.example.", RecordType::A, false);
        escaped[13] = b'*';
        assert_eq!(plain_question(&escaped), None);
        let summary = decode(&escaped, escaped.len());
        assert_eq!(summary.question.unwrap().name, "*.example.");
    }

    #[test]
    fn unknown_codes_have_rfc_style_names() {
        assert_eq!(rcode_name(15), "RCODE15");
        assert_eq!(qtype_name(65280), "TYPE65280");
        assert_eq!(qtype_name(28), "AAAA");
        assert_eq!(opcode_name(0), "QUERY");
    }
}
