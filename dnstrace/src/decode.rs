//! DNS payload → the fields dnstrace reports, with hickory-proto.
//!
//! Never fails: a malformed or cut-short payload still yields whatever the
//! header and question give, plus a `decode_error` saying what went wrong.

use hickory_proto::{
    op::{Header, Message, MessageType, Query, ResponseCode},
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

    fn from_header(header: &Header) -> Self {
        let m = &header.metadata;
        let mut flags = Self::default();
        for (set, flag) in [
            (m.authoritative, Self::AA),
            (m.truncation, Self::TC),
            (m.recursion_desired, Self::RD),
            (m.recursion_available, Self::RA),
            (m.authentic_data, Self::AD),
            (m.checking_disabled, Self::CD),
        ] {
            if set {
                flags.0 |= flag.0;
            }
        }
        flags
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

pub fn decode(payload: &[u8], wire_len: usize) -> DnsSummary {
    let mut summary = DnsSummary::default();
    let mut decoder = BinDecoder::new(payload);
    let header = match Header::read(&mut decoder) {
        Ok(header) => header,
        Err(_) => {
            summary.decode_error = Some(format!(
                "message of {wire_len} bytes is shorter than the 12-byte DNS header"
            ));
            return summary;
        }
    };
    let counts = header.counts;
    summary.header = Some(HeaderSummary {
        id: header.metadata.id,
        is_response: header.metadata.message_type == MessageType::Response,
        opcode: header.metadata.op_code.into(),
        flags: Flags::from_header(&header),
        rcode: u16::from(header.metadata.response_code),
        questions: counts.queries,
        answers: counts.answers,
        authority: counts.authorities,
        additional: counts.additionals,
    });

    match Message::from_vec(payload) {
        Ok(message) => {
            summary.question = message.queries.first().map(Question::from_query);
            if let Some(edns) = &message.edns {
                summary.edns_udp_size = Some(edns.max_payload());
                if let Some(header) = &mut summary.header {
                    header.rcode =
                        u16::from(ResponseCode::from(edns.rcode_high(), header.rcode as u8));
                }
            }
        }
        Err(error) => {
            // Fall back to the first question alone: enough to correlate.
            if counts.queries > 0 {
                summary.question = Query::read(&mut decoder)
                    .ok()
                    .map(|q| Question::from_query(&q));
            }
            summary.decode_error = Some(if payload.len() < wire_len {
                format!("captured {} of {wire_len} bytes: {error}", payload.len())
            } else {
                error.to_string()
            });
        }
    }
    summary
}

impl Question {
    fn from_query(query: &Query) -> Self {
        Self {
            name: query.name().to_ascii(),
            qtype: u16::from(query.query_type()),
        }
    }
}

/// The mnemonic of a response code, as dig and Wireshark print it.
pub fn rcode_name(rcode: u16) -> String {
    match rcode {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        6 => "YXDOMAIN".into(),
        7 => "YXRRSET".into(),
        8 => "NXRRSET".into(),
        9 => "NOTAUTH".into(),
        10 => "NOTZONE".into(),
        16 => "BADVERS".into(),
        23 => "BADCOOKIE".into(),
        other => format!("RCODE{other}"),
    }
}

/// The mnemonic of a record type ("A", "AAAA"), or `TYPE<n>` (RFC 3597).
pub fn qtype_name(qtype: u16) -> String {
    match RecordType::from(qtype) {
        RecordType::Unknown(code) => format!("TYPE{code}"),
        known => known.to_string(),
    }
}

/// The mnemonic of an opcode ("QUERY").
pub fn opcode_name(opcode: u8) -> String {
    match opcode {
        0 => "QUERY".into(),
        1 => "IQUERY".into(),
        2 => "STATUS".into(),
        4 => "NOTIFY".into(),
        5 => "UPDATE".into(),
        6 => "DSO".into(),
        other => format!("OPCODE{other}"),
    }
}

#[cfg(test)]
mod tests {
    use hickory_proto::{
        op::{Edns, Message, MessageType, OpCode, Query},
        rr::{Name, RData, Record, rdata::A},
    };

    use super::*;

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
        let error = summary.decode_error.unwrap();
        assert!(
            error.starts_with(&format!("captured {} of {}", captured.len(), bytes.len())),
            "{error}"
        );
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

    #[test]
    fn unknown_codes_have_rfc_style_names() {
        assert_eq!(rcode_name(15), "RCODE15");
        assert_eq!(qtype_name(65280), "TYPE65280");
        assert_eq!(qtype_name(28), "AAAA");
        assert_eq!(opcode_name(0), "QUERY");
    }
}
