//! The dnstrace binary under test, run from the host namespace with JSON
//! output, and its output read back.

use std::{
    ffi::OsStr,
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
    time::Duration,
};

use serde::Deserialize;
use tempfile::TempDir;

use crate::{process::Daemon, workspace_dir};

/// How long loading and attaching may take on a busy machine.
const ATTACH_PATIENCE: Duration = Duration::from_secs(20);

/// No filter: the tracer sees every process on the host. Assertions then
/// pick a test's own messages by their unique names.
pub const EVERYTHING: [&str; 0] = [];

/// `DNSTRACE_BIN`, or the workspace's release build.
pub fn dnstrace_bin() -> PathBuf {
    std::env::var_os("DNSTRACE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join("target/release/dnstrace"))
}

/// A running tracer; [`Tracer::stop`] ends it and parses its output.
pub struct Tracer {
    daemon: Daemon,
    output: PathBuf,
    _dir: TempDir,
}

impl Tracer {
    /// Starts dnstrace with `args` (filters) and waits until it is attached.
    pub fn start<I, S>(args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let bin = dnstrace_bin();
        assert!(
            bin.is_file(),
            "no dnstrace binary at {}: build it with `cargo build --release -p dnstrace` or set DNSTRACE_BIN",
            bin.display()
        );
        let dir = tempfile::tempdir().expect("trace dir");
        let output = dir.path().join("trace.jsonl");
        let mut command = Command::new(bin);
        command
            .args(args)
            .args(["--format", "json", "-o"])
            .arg(&output);
        let mut daemon = Daemon::spawn("dnstrace", &mut command);
        daemon.wait_for_stderr("dnstrace: attached", ATTACH_PATIENCE);
        Self {
            daemon,
            output,
            _dir: dir,
        }
    }

    /// Stops the tracer with SIGINT, as a user would, and reads its output.
    pub fn stop(self) -> Trace {
        self.stop_with(libc::SIGINT)
    }

    /// Stops the tracer with `signal`; it must exit cleanly and complete.
    pub fn stop_with(self, signal: libc::c_int) -> Trace {
        let (status, stderr) = self.daemon.stop(signal);
        read_trace(status, stderr, &self.output)
    }

    /// Starts dnstrace with `--duration secs` and waits for it to end alone.
    pub fn run_for(secs: u64) -> Trace {
        let tracer = Self::start(["--duration", &secs.to_string()]);
        let (status, stderr) = tracer.daemon.wait();
        read_trace(status, stderr, &tracer.output)
    }
}

fn read_trace(status: ExitStatus, stderr: Vec<String>, output: &Path) -> Trace {
    assert!(
        status.success(),
        "dnstrace exited with {status}; stderr:\n{}",
        stderr.join("\n")
    );
    let text =
        fs::read_to_string(output).unwrap_or_else(|e| panic!("read {}: {e}", output.display()));
    Trace::parse(&text, stderr)
}

/// One `"kind":"message"` line.
#[derive(Clone, Debug, Deserialize)]
pub struct Message {
    pub ts: String,
    pub pid: Option<u32>,
    pub tid: Option<u32>,
    pub comm: Option<String>,
    pub uid: Option<u32>,
    pub cgroup_id: Option<u64>,
    pub netns: Option<u64>,
    pub socket_cookie: u64,
    pub direction: Direction,
    pub proto: String,
    #[serde(deserialize_with = "socket_addr")]
    pub local: SocketAddr,
    #[serde(deserialize_with = "socket_addr")]
    pub remote: SocketAddr,
    pub id: Option<u16>,
    pub qr: Option<bool>,
    pub opcode: Option<String>,
    pub flags: Vec<String>,
    pub rcode: Option<String>,
    pub qname: Option<String>,
    pub qtype: Option<String>,
    pub answers: Option<u16>,
    pub authority: Option<u16>,
    pub additional: Option<u16>,
    pub edns_udp_size: Option<u16>,
    pub size: u32,
    pub truncated_capture: bool,
    pub decode_error: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Send,
    Recv,
}

/// "ip:port" and "[ipv6]:port", exactly as std formats them.
fn socket_addr<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(serde::de::Error::custom)
}

/// The last line.
#[derive(Clone, Copy, Debug, Deserialize)]
pub struct Summary {
    pub messages: u64,
    pub lost: u64,
    pub undecodable: u64,
}

/// Everything one tracer run wrote.
#[derive(Debug)]
pub struct Trace {
    pub messages: Vec<Message>,
    pub summary: Summary,
    /// Each line as plain JSON, for checks on the schema itself.
    pub lines: Vec<serde_json::Value>,
    pub stderr: Vec<String>,
}

impl Trace {
    fn parse(text: &str, stderr: Vec<String>) -> Self {
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("output line is not JSON ({e}): {line}"))
            })
            .collect();
        let (last, messages) = lines
            .split_last()
            .unwrap_or_else(|| panic!("empty output; stderr:\n{}", stderr.join("\n")));
        assert_eq!(
            last["kind"], "summary",
            "the last line is the summary: {last}"
        );
        let summary = Summary::deserialize(last).unwrap_or_else(|e| panic!("summary {last}: {e}"));
        // Correlation adds attempt, lookup and diagnosis lines; these tests
        // are about the messages.
        let messages = messages
            .iter()
            .filter(|line| {
                assert_ne!(
                    line["kind"], "summary",
                    "only the last line is a summary: {line}"
                );
                line["kind"] == "message"
            })
            .map(|line| {
                Message::deserialize(line).unwrap_or_else(|e| panic!("message {line}: {e}"))
            })
            .collect();
        Self {
            messages,
            summary,
            lines,
            stderr,
        }
    }
}
