//! The dnstrace binary under test, run from the host namespace with JSON
//! output, and its output read back: messages, and the attempts, lookups and
//! diagnoses correlation makes of them.

use std::{
    collections::BTreeMap,
    ffi::OsStr,
    fs,
    net::{IpAddr, SocketAddr},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde::Deserialize;
use tempfile::TempDir;

use crate::{
    clients::NOBODY,
    process::{Daemon, PATIENCE, as_nobody},
    workspace_dir,
};

/// How long loading and attaching may take on a busy machine.
const ATTACH_PATIENCE: Duration = Duration::from_secs(20);

/// No filter: the tracer sees every process on the host. Assertions then
/// pick a test's own messages by their unique names.
pub const EVERYTHING: [&str; 0] = [];

/// `DNSTRACE_BIN`, or the static release build that `cargo xtask test`
/// makes.
pub fn dnstrace_bin() -> PathBuf {
    std::env::var_os("DNSTRACE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join("target/x86_64-unknown-linux-gnu/release/dnstrace"))
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
        Self::spawn(args, ["--format", "json", "-o"], None)
    }

    /// Starts dnstrace with its text output on standard output, sent to
    /// `stdout`, and the JSON Lines that [`Tracer::stop`] parses written
    /// alongside with `--json`.
    pub fn start_printing<I, S>(args: I, stdout: &Path) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Self::spawn(args, ["--json"], Some(stdout))
    }

    fn spawn<I, S>(
        args: I,
        json_option: impl IntoIterator<Item = &'static str>,
        stdout: Option<&Path>,
    ) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let bin = dnstrace_bin();
        assert!(
            bin.is_file(),
            "no dnstrace binary at {}: run the tests with `cargo xtask test` or set DNSTRACE_BIN",
            bin.display()
        );
        let dir = tempfile::tempdir().expect("trace dir");
        let output = dir.path().join("trace.jsonl");
        let mut command = Command::new(bin);
        command.args(args).args(json_option).arg(&output);
        let stdout = match stdout {
            Some(path) => Stdio::from(
                fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display())),
            ),
            None => Stdio::null(),
        };
        let mut daemon = Daemon::spawn_with_stdout("dnstrace", &mut command, stdout);
        daemon.wait_for_stderr("dnstrace: attached", ATTACH_PATIENCE);
        Self {
            daemon,
            output,
            _dir: dir,
        }
    }

    /// Waits until each process's queries are all in attempt lines: dnstrace
    /// has then reported all its lookups (it does so once nothing happened
    /// in one for a second, looked at once a second). Call it once the
    /// traced clients have exited, so that no query is still to come, with
    /// a filter that keeps other processes out.
    pub fn wait_until_settled(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            self.daemon.assert_running();
            // dnstrace flushes once a second, so the last line may be partial.
            let text = fs::read_to_string(&self.output).unwrap_or_default();
            // Per pid: queries sent, and attempts reported.
            let mut counts: BTreeMap<u64, (u32, u32)> = BTreeMap::new();
            for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
                let line: serde_json::Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("output line is not JSON ({e}): {line}"));
                let Some(pid) = line["pid"].as_u64() else {
                    continue;
                };
                let (queries, attempts) = counts.entry(pid).or_default();
                match line["kind"].as_str() {
                    Some("message") if line["direction"] == "send" && line["qr"] == false => {
                        *queries += 1
                    }
                    Some("attempt") if line["outcome"] != "mismatched" => *attempts += 1,
                    _ => {}
                }
            }
            let unsettled: Vec<_> = counts
                .iter()
                .filter(|(_, (queries, attempts))| attempts < queries)
                .collect();
            if counts.values().any(|(queries, _)| *queries > 0) && unsettled.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "dnstrace reported fewer attempts than queries within {PATIENCE:?}; per pid \
                 (queries, attempts): {unsettled:?}"
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// The agent's pid, to look at it in /proc.
    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// Waits until dnstrace prints a stderr line starting with `prefix`.
    pub fn wait_for_stderr(&mut self, prefix: &str, timeout: Duration) {
        self.daemon.wait_for_stderr(prefix, timeout);
    }

    /// Waits until the output holds a line for which `wanted` is true
    /// (`what` names it in the panic when none comes).
    pub fn wait_for_line(&mut self, what: &str, wanted: impl Fn(&serde_json::Value) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            self.daemon.assert_running();
            let text = fs::read_to_string(&self.output).unwrap_or_default();
            let found = text
                .split_inclusive('\n')
                .filter(|line| line.ends_with('\n'))
                .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
                .any(|line| wanted(&line));
            if found {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no output line for {what} within {PATIENCE:?}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the tracer with SIGINT, as a user would, and reads its output.
    pub fn stop(self) -> Trace {
        self.stop_with(libc::SIGINT)
    }

    /// Stops the tracer as [`Tracer::stop`] does, and keeps a copy of its
    /// JSON output at `keep` (for `dnstrace analyze`).
    pub fn stop_keeping(self, keep: &Path) -> Trace {
        let (status, stderr) = self.daemon.stop(libc::SIGINT);
        fs::copy(&self.output, keep)
            .unwrap_or_else(|e| panic!("copy the output to {}: {e}", keep.display()));
        read_trace(status, stderr, &self.output)
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

/// A line as the struct of its kind.
fn typed<'a, T: Deserialize<'a>>(line: &'a serde_json::Value) -> T {
    T::deserialize(line).unwrap_or_else(|e| panic!("{} line {line}: {e}", line["kind"]))
}

/// "ip:port" and "[ipv6]:port", exactly as std formats them.
fn socket_addr<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(serde::de::Error::custom)
}

/// One `"kind":"attempt"` line: a query and the response that matched it,
/// or a response that matched none (`outcome` `mismatched`).
#[derive(Clone, Debug, Deserialize)]
pub struct Attempt {
    pub ts: String,
    pub pid: Pid,
    pub comm: Option<String>,
    /// The client's address when no process is known (`analyze` of a
    /// capture without processes).
    #[serde(default)]
    pub client: Option<IpAddr>,
    pub socket_cookie: u64,
    pub proto: String,
    pub server: SocketAddr,
    pub qname: String,
    pub qtype: String,
    pub id: u16,
    pub outcome: String,
    pub outcome_detail: Option<String>,
    pub latency_us: Option<u64>,
    pub response_rcode: Option<String>,
    pub response_flags: Option<Vec<String>>,
    pub response_answers: Option<u16>,
    pub response_authority: Option<u16>,
    pub response_additional: Option<u16>,
    pub response_read: Option<bool>,
    /// `query` or `response`: which the kernel dropped.
    #[serde(default)]
    pub dropped: Option<String>,
    #[serde(default)]
    pub drop_reason: Option<String>,
}

/// One `"kind":"lookup"` line: every attempt one process made for one name.
/// (Not `Lookup`, which is what a client is asked to look up.)
#[derive(Clone, Debug, Deserialize)]
pub struct TracedLookup {
    pub ts: String,
    pub pid: Pid,
    pub comm: Option<String>,
    #[serde(default)]
    pub client: Option<IpAddr>,
    /// As asked: without search suffixes or trailing dot.
    pub name: String,
    pub names_tried: Vec<String>,
    pub outcome: String,
    pub total_us: u64,
    pub attempts: u32,
    pub wasted_queries: u32,
    pub resolver: Option<String>,
}

/// One `"kind":"diagnosis"` line.
#[derive(Clone, Debug, Deserialize)]
pub struct Diagnosis {
    pub pid: Pid,
    pub comm: Option<String>,
    #[serde(default)]
    pub client: Option<IpAddr>,
    pub cause: String,
    pub server: Option<SocketAddr>,
    pub names: Vec<String>,
    pub count: u64,
    pub first_ts: String,
    pub last_ts: String,
    /// DNS ids of the messages that show it.
    pub evidence: Vec<u16>,
    pub explanation: String,
    pub fix: String,
    pub rejected_shape: Option<Shape>,
    pub accepted_shape: Option<Shape>,
}

/// The process of an attempt, lookup or diagnosis: null in `analyze` output
/// of a file that names no process. Compares with a plain pid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(transparent)]
pub struct Pid(pub Option<u32>);

impl PartialEq<u32> for Pid {
    fn eq(&self, pid: &u32) -> bool {
        self.0 == Some(*pid)
    }
}

/// A response's shape, as `answer_rejected` compares them.
#[derive(Clone, Debug, Deserialize)]
pub struct Shape {
    pub flags: Vec<String>,
    pub rcode: String,
    pub answers: u16,
    pub authority: u16,
    pub additional: u16,
}

/// One `"kind":"drop"` line: a DNS packet the kernel dropped.
#[derive(Clone, Debug, Deserialize)]
pub struct Drop {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub socket_cookie: u64,
    pub direction: String,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub id: Option<u16>,
    pub qr: Option<bool>,
    pub qname: Option<String>,
    pub qtype: Option<String>,
    pub reason: String,
    pub location: String,
    pub drop_netns: Option<u64>,
}

/// The last line.
#[derive(Clone, Debug, Deserialize)]
pub struct Summary {
    pub messages: u64,
    pub lost: u64,
    pub undecodable: u64,
    /// `dnstrace analyze`: damaged input records skipped.
    #[serde(default)]
    pub skipped_records: u64,
    /// DNS packets the kernel dropped, and per reason.
    #[serde(default)]
    pub drops: u64,
    #[serde(default)]
    pub drops_by_reason: BTreeMap<String, u64>,
    /// TCP stream directions the kernel stopped framing.
    pub unframed_tcp_streams: u64,
}

/// Everything one tracer run wrote.
#[derive(Debug)]
pub struct Trace {
    pub messages: Vec<Message>,
    pub attempts: Vec<Attempt>,
    pub lookups: Vec<TracedLookup>,
    /// Every diagnosis line; see [`Trace::diagnoses_of`] for the totals.
    pub diagnoses: Vec<Diagnosis>,
    /// DNS packets the kernel dropped.
    pub drops: Vec<Drop>,
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
        let mut trace = Self {
            messages: Vec::new(),
            attempts: Vec::new(),
            lookups: Vec::new(),
            diagnoses: Vec::new(),
            drops: Vec::new(),
            summary,
            lines: Vec::new(),
            stderr,
        };
        for line in messages {
            match line["kind"].as_str() {
                Some("message") => trace.messages.push(typed(line)),
                Some("attempt") => trace.attempts.push(typed(line)),
                Some("lookup") => trace.lookups.push(typed(line)),
                Some("diagnosis") => trace.diagnoses.push(typed(line)),
                Some("drop") => trace.drops.push(typed(line)),
                _ => panic!("unknown kind of line, or a summary before the last line: {line}"),
            }
        }
        trace.lines = lines;
        trace
    }

    /// `pid`'s diagnoses, each as its last line, which holds the totals.
    pub fn diagnoses_of(&self, pid: u32) -> Vec<&Diagnosis> {
        let mut last = BTreeMap::new();
        for diagnosis in self.diagnoses.iter().filter(|d| d.pid == pid) {
            last.insert((&diagnosis.cause, diagnosis.server), diagnosis);
        }
        last.into_values().collect()
    }

    /// The diagnoses of `client`, a client address (for traces without
    /// processes), each as its last line.
    pub fn diagnoses_of_client(&self, client: IpAddr) -> Vec<&Diagnosis> {
        let mut last = BTreeMap::new();
        for diagnosis in self.diagnoses.iter().filter(|d| d.client == Some(client)) {
            last.insert((&diagnosis.cause, diagnosis.server), diagnosis);
        }
        last.into_values().collect()
    }

    /// `pid`'s attempt, lookup and diagnosis lines, for failure messages.
    pub fn correlation_of(&self, pid: u32) -> String {
        self.lines
            .iter()
            .filter(|line| line["pid"] == pid && line["kind"] != "message")
            .map(|line| format!("{line}\n"))
            .collect()
    }
}

/// What one `dnstrace analyze` run did: its exit status, stderr and output.
#[derive(Debug)]
pub struct Analysis {
    pub status: ExitStatus,
    pub stderr: Vec<String>,
    /// The JSON Lines it wrote; empty when it wrote nothing.
    pub output: String,
}

impl Analysis {
    /// The output as a trace; panics unless it is whole, summary last.
    pub fn trace(&self) -> Trace {
        Trace::parse(&self.output, self.stderr.clone())
    }

    /// Panics if dnstrace panicked.
    pub fn assert_no_panic(&self) {
        assert!(
            self.stderr.iter().all(|line| !line.contains("panicked")),
            "dnstrace analyze panicked; stderr:\n{}",
            self.stderr.join("\n")
        );
    }
}

/// Runs [`analyze`] on `files` and checks that it read them whole: exit 0,
/// no damaged record, no panic.
pub fn analyzed_whole<P: AsRef<Path>>(files: &[P]) -> Trace {
    let analysis = analyze(files, &[]);
    analysis.assert_no_panic();
    assert!(
        analysis.status.success(),
        "dnstrace analyze exited with {}; stderr:\n{}",
        analysis.status,
        analysis.stderr.join("\n")
    );
    assert!(
        analysis.stderr.iter().all(|l| !l.contains("skipped")),
        "a whole file has no damaged record: {:?}",
        analysis.stderr
    );
    let trace = analysis.trace();
    assert_eq!(trace.summary.skipped_records, 0, "{:?}", trace.summary);
    trace
}

/// Runs `dnstrace analyze FILES... --format json` as nobody, without
/// capabilities (it needs no privileges), with `args` added. The files
/// must be readable by nobody: see [`readable_by_all`].
pub fn analyze<P: AsRef<Path>>(files: &[P], args: &[&str]) -> Analysis {
    let dir = tempfile::tempdir().expect("analysis dir");
    std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY))
        .expect("give the analysis dir to nobody");
    let output = dir.path().join("analysis.jsonl");
    let mut command = as_nobody();
    command
        .arg(dnstrace_bin())
        .arg("analyze")
        .args(files.iter().map(AsRef::as_ref))
        .args(["--format", "json", "-o"])
        .arg(&output)
        .args(args);
    let (status, stderr) = Daemon::spawn("dnstrace analyze", &mut command).wait();
    Analysis {
        status,
        stderr,
        output: fs::read_to_string(&output).unwrap_or_default(),
    }
}

/// Lets anyone read `file` and pass through its directory, for
/// [`analyze`] run as nobody. (dnstrace writes its files private.)
pub fn readable_by_all(file: &Path) {
    let dir = file.parent().expect("a file in a directory");
    for (path, mode) in [(dir, 0o755), (file, 0o644)] {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
    }
}
