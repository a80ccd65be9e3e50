//! Command-line interface, shaped after tcpdump: no arguments traces every
//! process on the host; options narrow it down.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
};

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "dnstrace",
    version,
    about = "Trace the DNS messages every process sends and receives, with eBPF",
    args_conflicts_with_subcommands = true,
    after_help = "Exit status: 0 after a clean run, 1 when output failed while tracing or an \
                  input file was damaged past a record, 2 for usage errors and when tracing \
                  cannot start (not root, missing kernel feature, unwritable output, unreadable \
                  input). See docs/cli.md."
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub trace: TraceArgs,

    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Correlate and diagnose traces written earlier: pcap and pcapng (from
    /// tcpdump, tshark, Wireshark or dnstrace -w), dnstap, and dnstrace's
    /// JSON Lines. Needs no privileges.
    Analyze(AnalyzeArgs),
}

#[derive(Debug, clap::Args)]
pub struct AnalyzeArgs {
    /// Files to read, in any order: their messages are merged by time.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,

    /// DNS server ports, to tell clients from servers in packets that carry
    /// no process (repeatable).
    #[arg(long = "port", value_name = "PORT", default_values_t = [53u16])]
    pub ports: Vec<u16>,

    #[command(flatten)]
    pub output: OutputArgs,
}

impl AnalyzeArgs {
    /// `dnstrace analyze`'s arguments, as from a command line after them.
    pub fn parse_from(args: &[&str]) -> Result<Self, String> {
        let args = Args::try_parse_from(["dnstrace", "analyze"].iter().chain(args))
            .map_err(|e| e.to_string())?;
        match args.command {
            Some(Command::Analyze(analyze)) => Ok(analyze),
            None => Err("not an analyze command line".into()),
        }
    }
}

/// What to trace.
#[derive(Debug, clap::Args)]
pub struct TraceArgs {
    /// Trace only this process and its threads (repeatable).
    #[arg(short, long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,

    /// Trace only threads with this name (as in /proc/PID/task/TID/comm).
    /// With --pid, a process matching either is traced.
    #[arg(long, value_name = "NAME")]
    pub comm: Option<String>,

    /// Trace only this network namespace: a name from /run/netns or a path
    /// such as /proc/PID/ns/net.
    #[arg(long, value_name = "NAME|PATH")]
    pub netns: Option<String>,

    /// Trace only this cgroup (v2): a directory under the cgroup2 mount.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,

    /// Trace only this Kubernetes pod, found in the runtimes' state on this
    /// node; pods that start later are followed (docs/kubernetes.md).
    #[arg(long, value_name = "[NAMESPACE/]NAME")]
    pub pod: Option<String>,

    /// Trace only pods of this Kubernetes namespace, those that start later
    /// too.
    #[arg(long, value_name = "NS")]
    pub k8s_namespace: Option<String>,

    /// Trace only containers with this name (as in the pod's spec) or id
    /// (at least 12 hex digits of it), those that start later too.
    #[arg(long, value_name = "NAME|ID")]
    pub container: Option<String>,

    /// DNS ports to capture (repeatable, at most 8).
    #[arg(long = "port", value_name = "PORT", default_values_t = [53u16])]
    pub ports: Vec<u16>,

    /// Stop after this many seconds.
    #[arg(short, long, value_name = "SECS")]
    pub duration: Option<u64>,

    /// Print the per-process summary every SECS seconds (it is always
    /// printed at exit).
    #[arg(long, value_name = "SECS")]
    pub summary_interval: Option<u64>,

    /// Capture backend.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,

    /// The host's cgroup v2 hierarchy, where the programs attach (found in
    /// /proc/self/mountinfo when not given). In a container, mount the
    /// host's /sys/fs/cgroup and name it here; on a host with both
    /// hierarchies its unified/ directory is taken.
    #[arg(long, value_name = "PATH")]
    pub cgroup_root: Option<PathBuf>,

    /// Ring buffer size in MiB (a power of two).
    #[arg(long, value_name = "MIB", default_value_t = 16)]
    pub ring_buffer_mib: u32,

    /// Serve Prometheus metrics at /metrics, with /healthz and /readyz, on
    /// HOST:PORT, or on 127.0.0.1 for a bare PORT (docs/metrics.md).
    #[arg(long, value_name = "ADDR", value_parser = parse_listen_address)]
    pub metrics: Option<SocketAddr>,

    /// containerd's task state, where each container's bundle (and its
    /// pod's names) is: DIR/NAMESPACE/ID/config.json.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/run/containerd/io.containerd.runtime.v2.task"
    )]
    pub containerd_state: PathBuf,

    /// CRI-O's container state: DIR/ID/userdata/config.json.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/run/containers/storage/overlay-containers"
    )]
    pub crio_state: PathBuf,
}

/// Where and how results are written; tracing and `analyze` share these.
#[derive(Debug, clap::Args)]
pub struct OutputArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// Write the output to FILE instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Also write JSON Lines to FILE, whatever --format says: text on the
    /// terminal and JSON to a file at once. --rotate-* apply to it too.
    #[arg(long = "json", value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Start a new output file (-o) once it holds this many bytes (K, M
    /// and G suffixes count 1024s); the old one becomes FILE.1, FILE.1
    /// becomes FILE.2, and so on.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub rotate_size: Option<u64>,

    /// Start a new output file (-o) every SECS seconds.
    #[arg(long, value_name = "SECS")]
    pub rotate_interval: Option<u64>,

    /// Rotated files to keep besides the current one.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub rotate_keep: usize,

    /// JSON record kinds to write, comma-separated (default: all). A node's
    /// log pipeline wants lookups and diagnoses, not every message.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "KIND,...")]
    pub json_kinds: Vec<JsonKind>,

    /// Also write every message as a packet to this pcapng file (Wireshark,
    /// tshark), with the process in each packet's comment.
    #[arg(short = 'w', long = "write", value_name = "FILE.pcapng")]
    pub pcapng: Option<PathBuf>,

    /// Also write every message as dnstap (Frame Streams): to FILE, or to
    /// a collector at unix:PATH or tcp:HOST:PORT, reconnecting when it goes
    /// away.
    #[arg(long, value_name = "FILE|unix:PATH|tcp:HOST:PORT")]
    pub dnstap: Option<String>,

    /// Text output: print every message too, not only lookups.
    #[arg(short, long)]
    pub verbose: bool,

    /// When to colour text output.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,

    #[command(flatten)]
    pub metrics: MetricsArgs,
}

/// What the Prometheus metrics hold, and their bounds (docs/metrics.md).
#[derive(Debug, clap::Args)]
pub struct MetricsArgs {
    /// Write the Prometheus metrics to FILE at the end (text format), for
    /// offline comparisons.
    #[arg(long = "metrics-file", value_name = "FILE")]
    pub file: Option<PathBuf>,

    /// Clients (pod and container, or process name) whose lookups get
    /// series of their own; the rest are counted under `~other`.
    #[arg(long = "metrics-max-clients", value_name = "N", default_value_t = 500)]
    pub max_clients: usize,

    /// Servers with series of their own; the rest are `~other`.
    #[arg(long = "metrics-max-servers", value_name = "N", default_value_t = 32)]
    pub max_servers: usize,

    /// Seconds after its last lookup that a client's or server's series
    /// are removed.
    #[arg(long = "metrics-grace", value_name = "SECS", default_value_t = 300)]
    pub grace_secs: u64,

    /// Also count lookups by query name, for up to N names; the rest are
    /// `~other`. 0 (the default) puts no names in labels.
    #[arg(long = "metrics-top-names", value_name = "N", default_value_t = 0)]
    pub top_names: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// The JSON Lines record kinds (docs/json.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum JsonKind {
    Message,
    Attempt,
    Lookup,
    Diagnosis,
    Summary,
    /// DNS packets the kernel dropped.
    Drop,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// The best backend this kernel offers.
    Auto,
    /// cgroup_skb programs that ask the kernel who the sending task is.
    CgroupSkb,
    /// cgroup_skb programs plus connect/sendmsg hooks that record socket
    /// owners, for kernels whose cgroup_skb programs cannot ask (before 6.x).
    CgroupSockaddr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

/// `4096`, `512K`, `10M`, `1G`.
fn parse_size(text: &str) -> Result<u64, String> {
    let (digits, unit) = match text.char_indices().last() {
        Some((at, unit)) if unit.is_ascii_alphabetic() => (&text[..at], unit.to_ascii_uppercase()),
        _ => (text, 'B'),
    };
    let shift = match unit {
        'B' => 0,
        'K' => 10,
        'M' => 20,
        'G' => 30,
        other => return Err(format!("unknown size unit {other:?} (use K, M or G)")),
    };
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("not a size: {text:?}"))?;
    number
        .checked_mul(1 << shift)
        .filter(|bytes| *bytes > 0)
        .ok_or_else(|| format!("size out of range: {text:?}"))
}

/// `9464` (loopback), `0.0.0.0:9464`, `[::]:9464`.
fn parse_listen_address(text: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    text.parse()
        .map_err(|_| format!("not a PORT or HOST:PORT: {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::{parse_listen_address, parse_size};

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512k"), Ok(512 * 1024));
        assert_eq!(parse_size("10M"), Ok(10 << 20));
        assert!(parse_size("0").is_err());
        assert!(parse_size("3X").is_err());
        assert!(parse_size("M").is_err());
    }

    #[test]
    fn a_bare_metrics_port_listens_on_loopback_only() {
        assert_eq!(
            parse_listen_address("9464"),
            Ok("127.0.0.1:9464".parse().unwrap())
        );
        assert_eq!(
            parse_listen_address("[::]:9464"),
            Ok("[::]:9464".parse().unwrap())
        );
        assert!(parse_listen_address("localhost:9464").is_err());
        assert!(parse_listen_address("70000").is_err());
    }
}
