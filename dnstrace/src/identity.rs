//! The process behind a message as `key=value` text, for formats that only
//! have room for free text: pcapng packet comments and dnstap's `extra`.
//! `dnstrace analyze` parses it back, so a file written by dnstrace keeps
//! its processes.
//!
//! `pid=4242 tid=4243 comm=getent uid=0 cgroup_id=1 netns=4026531840
//! socket_cookie=8193 direction=send`, then `size=N` when the capture was cut
//! short. Values never hold a space, `=` or `\`: the thread name, the only
//! free text, escapes them (and anything unprintable) as `\xHH`.

use std::fmt::Write;

use crate::message::{Direction, Message, Process};

/// The kernel keeps 15 bytes; a longer name is not one dnstrace wrote.
const MAX_COMM: usize = 64;

/// What the text carries about one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub process: Option<Process>,
    pub socket_cookie: u64,
    pub direction: Direction,
    /// The message's length on the wire, when more than was captured.
    pub size: Option<u32>,
}

impl Identity {
    pub fn of(message: &Message) -> Self {
        Self {
            process: message.envelope.process.clone(),
            socket_cookie: message.envelope.socket_cookie,
            direction: message.envelope.direction,
            size: message.truncated_capture.then_some(message.size),
        }
    }

    pub fn to_text(&self) -> String {
        let mut text = String::new();
        match &self.process {
            Some(p) => {
                let _ = write!(
                    text,
                    "pid={} tid={} comm={} uid={} cgroup_id={} netns={} ",
                    p.pid,
                    p.tid,
                    escape(&p.comm),
                    p.uid,
                    p.cgroup_id,
                    p.netns.map_or("unknown".to_string(), |n| n.to_string())
                );
            }
            None => text.push_str("pid=unknown "),
        }
        let _ = write!(
            text,
            "socket_cookie={} direction={}",
            self.socket_cookie,
            self.direction.name()
        );
        if let Some(size) = self.size {
            let _ = write!(text, " size={size}");
        }
        text
    }

    /// `None` unless the text is what `to_text` writes (a comment some
    /// other tool wrote is not an identity).
    pub fn parse(text: &str) -> Option<Self> {
        let mut fields = std::collections::HashMap::new();
        for pair in text.split(' ').filter(|pair| !pair.is_empty()) {
            let (key, value) = pair.split_once('=')?;
            fields.insert(key, value);
        }
        let number = |key: &str| fields.get(key)?.parse::<u64>().ok();
        let direction = match *fields.get("direction")? {
            "send" => Direction::Send,
            "recv" => Direction::Recv,
            _ => return None,
        };
        let process = match *fields.get("pid")? {
            "unknown" => None,
            pid => Some(Process {
                pid: pid.parse().ok()?,
                tid: u32::try_from(number("tid")?).ok()?,
                comm: unescape(fields.get("comm")?)
                    .filter(|comm| comm.len() <= MAX_COMM)?
                    .into(),
                uid: u32::try_from(number("uid")?).ok()?,
                cgroup_id: number("cgroup_id")?,
                netns: number("netns"),
            }),
        };
        Some(Self {
            process,
            socket_cookie: number("socket_cookie")?,
            direction,
            size: number("size").and_then(|size| u32::try_from(size).ok()),
        })
    }
}

fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_graphic() && byte != b'=' && byte != b'\\' {
            escaped.push(char::from(byte));
        } else {
            let _ = write!(escaped, "\\x{byte:02x}");
        }
    }
    escaped
}

fn unescape(text: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        if byte == b'\\' {
            let hex = tail.strip_prefix(b"x")?.get(..2)?;
            bytes.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            rest = &tail[3..];
        } else {
            bytes.push(byte);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(comm: &str) -> Identity {
        Identity {
            process: Some(Process {
                pid: 4242,
                tid: 4243,
                comm: comm.into(),
                uid: 1000,
                cgroup_id: 77,
                netns: Some(4_026_531_840),
            }),
            socket_cookie: 8193,
            direction: Direction::Recv,
            size: None,
        }
    }

    #[test]
    fn the_text_reads_back_whole() {
        let plain = identity("getent");
        assert_eq!(
            plain.to_text(),
            "pid=4242 tid=4243 comm=getent uid=1000 cgroup_id=77 netns=4026531840 \
             socket_cookie=8193 direction=recv"
        );
        assert_eq!(Identity::parse(&plain.to_text()), Some(plain));
    }

    #[test]
    fn thread_names_with_spaces_and_equals_signs_survive() {
        let odd = identity("Web Content=\\é");
        let text = odd.to_text();
        assert!(
            text.contains(r"comm=Web\x20Content\x3d\x5c\xc3\xa9 "),
            "{text}"
        );
        assert_eq!(Identity::parse(&text), Some(odd));
    }

    #[test]
    fn unknown_processes_and_cut_messages_read_back() {
        let unknown = Identity {
            process: None,
            socket_cookie: 1,
            direction: Direction::Send,
            size: Some(1500),
        };
        assert_eq!(Identity::parse(&unknown.to_text()), Some(unknown));
    }

    #[test]
    fn other_comments_are_not_identities() {
        for text in [
            "",
            "captured on eth0",
            "pid=1",
            "pid=x tid=1 comm=a uid=0 cgroup_id=0 netns=1 socket_cookie=1 direction=send",
            "pid=1 tid=1 comm=a\\x2 uid=0 cgroup_id=0 netns=1 socket_cookie=1 direction=send",
            "pid=1 tid=1 comm=a uid=0 cgroup_id=0 netns=1 socket_cookie=1 direction=sideways",
        ] {
            assert_eq!(Identity::parse(text), None, "{text:?}");
        }
    }
}
