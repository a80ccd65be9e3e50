//! Frame Streams, the framing dnstap travels in. A data frame is a 32-bit
//! big-endian length and that many bytes. A length of zero escapes a control
//! frame: its own length, a 32-bit type, then fields (type, length, bytes),
//! of which only the content type is defined.
//!
//! A file holds START, data frames, STOP. A socket adds a handshake: the
//! writer sends READY, the reader answers ACCEPT, and after STOP the reader
//! answers FINISH.

use std::io::{self, Read};

/// Control frames are small; fstrm refuses longer ones, and so do we.
pub const MAX_CONTROL_LEN: u32 = 512;
/// The field type of a content type in a control frame.
const FIELD_CONTENT_TYPE: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlType {
    Accept,
    Start,
    Stop,
    Ready,
    Finish,
}

impl ControlType {
    fn code(self) -> u32 {
        match self {
            Self::Accept => 1,
            Self::Start => 2,
            Self::Stop => 3,
            Self::Ready => 4,
            Self::Finish => 5,
        }
    }

    fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            1 => Self::Accept,
            2 => Self::Start,
            3 => Self::Stop,
            4 => Self::Ready,
            5 => Self::Finish,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Accept => "ACCEPT",
            Self::Start => "START",
            Self::Stop => "STOP",
            Self::Ready => "READY",
            Self::Finish => "FINISH",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlFrame {
    pub kind: ControlType,
    pub content_types: Vec<Vec<u8>>,
}

impl ControlFrame {
    pub fn new(kind: ControlType, content_type: Option<&str>) -> Self {
        Self {
            kind,
            content_types: content_type
                .map(|t| vec![t.as_bytes().to_vec()])
                .unwrap_or_default(),
        }
    }

    /// The whole frame as it goes on the wire: escape, length, body.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = self.kind.code().to_be_bytes().to_vec();
        for content_type in &self.content_types {
            body.extend_from_slice(&FIELD_CONTENT_TYPE.to_be_bytes());
            body.extend_from_slice(&(content_type.len() as u32).to_be_bytes());
            body.extend_from_slice(content_type);
        }
        let mut frame = 0u32.to_be_bytes().to_vec();
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        frame
    }

    /// Parses a control frame's body (what follows its length).
    pub fn decode(body: &[u8]) -> Result<Self, String> {
        let (code, mut fields) = split_u32(body).ok_or("control frame shorter than its type")?;
        let kind = ControlType::from_code(code)
            .ok_or_else(|| format!("unknown control frame type {code}"))?;
        let mut content_types = Vec::new();
        while !fields.is_empty() {
            let (field, rest) = split_u32(fields).ok_or("control field cut short")?;
            let (len, rest) = split_u32(rest).ok_or("control field cut short")?;
            let value = rest
                .get(..len as usize)
                .ok_or("control field longer than its frame")?;
            // Other field types are not defined; they are passed over.
            if field == FIELD_CONTENT_TYPE {
                content_types.push(value.to_vec());
            }
            fields = &rest[len as usize..];
        }
        Ok(Self {
            kind,
            content_types,
        })
    }

    /// Whether the frame names `content_type`; one that names none carries
    /// anything.
    pub fn allows(&self, content_type: &str) -> bool {
        self.content_types.is_empty()
            || self
                .content_types
                .iter()
                .any(|t| t.as_slice() == content_type.as_bytes())
    }
}

/// A data frame: length, then the bytes.
pub fn data_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// Reads one control frame, escape included, from a socket during a
/// handshake.
pub fn read_control(reader: &mut impl Read) -> io::Result<ControlFrame> {
    let invalid = |reason: String| io::Error::new(io::ErrorKind::InvalidData, reason);
    let mut header = [0u8; 8];
    reader.read_exact(&mut header)?;
    let (escape, rest) = split_u32(&header).ok_or_else(|| invalid("short header".into()))?;
    let (len, _) = split_u32(rest).ok_or_else(|| invalid("short header".into()))?;
    if escape != 0 {
        return Err(invalid("expected a control frame, got a data frame".into()));
    }
    if len > MAX_CONTROL_LEN {
        return Err(invalid(format!("control frame of {len} bytes")));
    }
    let mut body = vec![0u8; len as usize];
    reader.read_exact(&mut body)?;
    ControlFrame::decode(&body).map_err(invalid)
}

fn split_u32(bytes: &[u8]) -> Option<(u32, &[u8])> {
    let (head, rest) = bytes.split_first_chunk::<4>()?;
    Some((u32::from_be_bytes(*head), rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DNSTAP: &str = "protobuf:dnstap.Dnstap";

    #[test]
    fn control_frames_round_trip() {
        for kind in [
            ControlType::Accept,
            ControlType::Start,
            ControlType::Stop,
            ControlType::Ready,
            ControlType::Finish,
        ] {
            for content_type in [None, Some(DNSTAP)] {
                let frame = ControlFrame::new(kind, content_type);
                let bytes = frame.encode();
                assert_eq!(&bytes[..4], &[0, 0, 0, 0], "escape");
                let decoded = read_control(&mut bytes.as_slice()).expect("decodes");
                assert_eq!(decoded, frame);
            }
        }
    }

    #[test]
    fn start_with_a_content_type_has_the_published_layout() {
        let bytes = ControlFrame::new(ControlType::Start, Some(DNSTAP)).encode();
        let mut expected = vec![0, 0, 0, 0, 0, 0, 0, 34, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 22];
        expected.extend_from_slice(DNSTAP.as_bytes());
        assert_eq!(bytes, expected);
    }

    #[test]
    fn data_frames_carry_their_length() {
        assert_eq!(data_frame(b"abc"), [0, 0, 0, 3, b'a', b'b', b'c']);
    }

    #[test]
    fn broken_control_frames_are_refused() {
        assert!(ControlFrame::decode(&[0, 0]).is_err(), "no type");
        assert!(
            ControlFrame::decode(&9u32.to_be_bytes()).is_err(),
            "unknown type"
        );
        let mut long_field = 2u32.to_be_bytes().to_vec();
        long_field.extend_from_slice(&[0, 0, 0, 1, 0, 0, 1, 0, b'x']);
        assert!(ControlFrame::decode(&long_field).is_err(), "field overruns");
        let mut cut = 2u32.to_be_bytes().to_vec();
        cut.extend_from_slice(&[0, 0, 0, 1, 0, 0]);
        assert!(ControlFrame::decode(&cut).is_err(), "field header cut");

        let data = data_frame(b"not control");
        assert!(read_control(&mut data.as_slice()).is_err(), "a data frame");
        let mut huge = vec![0, 0, 0, 0];
        huge.extend_from_slice(&(MAX_CONTROL_LEN + 1).to_be_bytes());
        assert!(read_control(&mut huge.as_slice()).is_err(), "too long");
    }

    #[test]
    fn unknown_fields_are_passed_over() {
        let mut body = 4u32.to_be_bytes().to_vec();
        body.extend_from_slice(&[0, 0, 0, 7, 0, 0, 0, 2, 1, 2]);
        body.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, b'x']);
        let frame = ControlFrame::decode(&body).expect("decodes");
        assert_eq!(frame.kind, ControlType::Ready);
        assert_eq!(frame.content_types, vec![b"x".to_vec()]);
        assert!(frame.allows("x") && !frame.allows(DNSTAP));
        assert!(ControlFrame::new(ControlType::Accept, None).allows(DNSTAP));
    }
}
