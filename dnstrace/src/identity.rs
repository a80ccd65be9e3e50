//! The process behind a message as `key=value` text, for formats that only
//! have room for free text: pcapng packet comments and dnstap's `extra`.
//! `dnstrace analyze` parses it back, so a file written by dnstrace keeps
//! its processes.
//!
//! `pid=4242 tid=4243 comm=getent uid=0 cgroup_id=1 netns=4026531840
//! socket_cookie=8193 direction=send`, then `size=N` when the capture was cut
//! short. A process in a container adds `container_id=… runtime=…` and,
//! when known, `container=… image=…`; in a pod, `pod=… pod_namespace=…
//! pod_uid=…`, each after `netns`. Values never hold a space, `=` or `\`:
//! free text (the thread name, container and pod names) escapes them (and
//! anything unprintable) as `\xHH`.

use std::{collections::HashMap, fmt::Write, sync::Arc};

use crate::message::{Container, Direction, Facts, Message, Pod, Process, Runtime};

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
                write_workload(&mut text, &p.facts);
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
        let fields = Fields::parse(text)?;
        let number = |key: &str| fields.get(key)?.parse::<u64>().ok();
        let direction = match fields.get("direction")? {
            "send" => Direction::Send,
            "recv" => Direction::Recv,
            _ => return None,
        };
        let process = match fields.get("pid")? {
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
                facts: read_workload(&fields)?,
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

/// Texts already parsed, for a reader: a process's messages on one socket
/// carry the same text, and parsing it took a fifth of `analyze`'s time on
/// a busy trace. Bounded: emptied when full, and a text longer than any
/// dnstrace writes for a process outside a pod is not kept (a file may
/// hold a megabyte of comment per packet). foldhash, as SipHash over
/// each text cost as much as the rest of the lookup; its seed is random per
/// process, and the bound holds whatever a file's texts collide on.
#[derive(Default)]
pub struct ParsedTexts(HashMap<Box<str>, Option<Identity>, foldhash::fast::RandomState>);

impl ParsedTexts {
    const CAPACITY: usize = 4096;
    const LONGEST_KEPT: usize = 1024;

    /// [`Identity::parse`], remembered.
    pub fn parse(&mut self, text: &str) -> Option<Identity> {
        if text.len() > Self::LONGEST_KEPT {
            return Identity::parse(text);
        }
        if let Some(identity) = self.0.get(text) {
            return identity.clone();
        }
        if self.0.len() >= Self::CAPACITY {
            self.0.clear();
        }
        let identity = Identity::parse(text);
        self.0.insert(text.into(), identity.clone());
        identity
    }
}

/// The container and pod keys, those known.
fn write_workload(text: &mut String, facts: &Facts) {
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    if let Some(container) = &facts.container {
        pairs.push(("container_id", &container.id));
        pairs.push((
            "runtime",
            container.runtime.map_or("unknown", Runtime::name),
        ));
        pairs.extend(container.name.as_deref().map(|name| ("container", name)));
        pairs.extend(container.image.as_deref().map(|image| ("image", image)));
    }
    if let Some(pod) = &facts.pod {
        pairs.extend(pod.name.as_deref().map(|name| ("pod", name)));
        pairs.extend(pod.namespace.as_deref().map(|ns| ("pod_namespace", ns)));
        pairs.extend(pod.uid.as_deref().map(|uid| ("pod_uid", uid)));
    }
    for (key, value) in pairs {
        let _ = write!(text, "{key}={} ", escape(value));
    }
}

/// The `key=value` pairs of one text. A dozen at most, read once per
/// packet by `analyze`: a list searched in place is cheaper than hashing.
struct Fields<'a>(Vec<(&'a str, &'a str)>);

impl<'a> Fields<'a> {
    fn parse(text: &'a str) -> Option<Self> {
        let pairs = text
            .split(' ')
            .filter(|pair| !pair.is_empty())
            .map(|pair| pair.split_once('='))
            .collect::<Option<Vec<_>>>()?;
        Some(Self(pairs))
    }

    /// The value of `key`; the last one where it is given twice.
    fn get(&self, key: &str) -> Option<&'a str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
    }
}

/// What [`write_workload`] wrote; `None` when a value does not read.
fn read_workload(fields: &Fields<'_>) -> Option<Arc<Facts>> {
    /// Names and ids longer than this are not ones a runtime gave.
    const MAX_NAME: usize = 512;
    let text = |key: &str| -> Option<Option<String>> {
        match fields.get(key) {
            None => Some(None),
            Some(value) => unescape(value)
                .filter(|value| value.len() <= MAX_NAME)
                .map(Some),
        }
    };
    let container = match text("container_id")? {
        None => None,
        Some(id) => Some(Container {
            id,
            runtime: fields.get("runtime").and_then(Runtime::from_name),
            name: text("container")?,
            image: text("image")?,
        }),
    };
    let pod = Pod {
        name: text("pod")?,
        namespace: text("pod_namespace")?,
        uid: text("pod_uid")?,
    };
    let pod = (pod.name.is_some() || pod.namespace.is_some() || pod.uid.is_some()).then_some(pod);
    if container.is_none() && pod.is_none() {
        return Some(Facts::unknown());
    }
    Some(Arc::new(Facts {
        container,
        pod,
        ..Facts::default()
    }))
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
                facts: Facts::unknown(),
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
    fn remembered_texts_read_as_parsed_ones_even_past_the_bound() {
        let mut texts = ParsedTexts::default();
        for round in 0..2 {
            for cookie in 0..ParsedTexts::CAPACITY as u64 + 10 {
                let mut identity = identity("getent");
                identity.socket_cookie = cookie;
                let text = identity.to_text();
                assert_eq!(texts.parse(&text), Some(identity), "round {round}");
                assert_eq!(texts.parse("pid=1 not=dnstrace's"), None);
            }
            assert!(texts.0.len() <= ParsedTexts::CAPACITY);
        }
        // A long text is parsed, never kept.
        let mut long = identity(&"x".repeat(15));
        long.socket_cookie = 1;
        let text = format!("{} {}", long.to_text(), "pad=0 ".repeat(200));
        texts.0.clear();
        assert_eq!(texts.parse(&text), Some(long));
        assert!(texts.0.is_empty());
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
    fn containers_and_pods_read_back() {
        let mut in_pod = identity("getent");
        if let Some(process) = &mut in_pod.process {
            process.facts = Arc::new(Facts {
                container: Some(Container {
                    id: "ab".repeat(32),
                    runtime: Some(Runtime::Containerd),
                    name: Some("app".into()),
                    image: Some("registry.test/web app:1".into()),
                }),
                pod: Some(Pod {
                    name: Some("web-0".into()),
                    namespace: Some("shop".into()),
                    uid: Some("6f1c0e36-2b7a-4c1e-9a55-0e8a3b9d2f10".into()),
                }),
                ..Facts::default()
            });
        }
        let text = in_pod.to_text();
        assert!(
            text.contains(" container=app image=registry.test/web\\x20app:1 pod=web-0 "),
            "{text}"
        );
        assert_eq!(Identity::parse(&text), Some(in_pod));
        // A container whose state was not read: the id alone.
        let mut bare = identity("sh");
        if let Some(process) = &mut bare.process {
            process.facts = Arc::new(Facts {
                container: Some(Container {
                    id: "cd".repeat(32),
                    runtime: None,
                    name: None,
                    image: None,
                }),
                ..Facts::default()
            });
        }
        assert_eq!(Identity::parse(&bare.to_text()), Some(bare));
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
