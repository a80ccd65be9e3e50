//! Command-line interface, shaped after tcpdump: no arguments traces every
//! process on the host; options narrow it down.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "dnstrace",
    version,
    about = "Trace the DNS messages every process sends and receives, with eBPF",
    after_help = "Exit status: 0 after a clean run, 1 when output failed while tracing, \
                  2 for usage errors and when tracing cannot start (not root, missing kernel \
                  feature, unwritable output). See docs/cli.md."
)]
pub struct Args {
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

    /// DNS ports to capture (repeatable, at most 8).
    #[arg(long = "port", value_name = "PORT", default_values_t = [53u16])]
    pub ports: Vec<u16>,

    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// Write the output to FILE instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Also write every message as a packet to this pcapng file (Wireshark,
    /// tshark), with the process in each packet's comment.
    #[arg(short = 'w', long = "write", value_name = "FILE.pcapng")]
    pub pcapng: Option<PathBuf>,

    /// Stop after this many seconds.
    #[arg(short, long, value_name = "SECS")]
    pub duration: Option<u64>,

    /// Text output: print every message too, not only lookups.
    #[arg(short, long)]
    pub verbose: bool,

    /// Print the per-process summary every SECS seconds (it is always
    /// printed at exit).
    #[arg(long, value_name = "SECS")]
    pub summary_interval: Option<u64>,

    /// Capture backend.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,

    /// When to colour text output.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,

    /// Ring buffer size in MiB (a power of two).
    #[arg(long, value_name = "MIB", default_value_t = 16)]
    pub ring_buffer_mib: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
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
