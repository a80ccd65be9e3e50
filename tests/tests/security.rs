//! What another user or process on the node can put in dnstrace's way
//! (docs/security.md): links and files where its outputs go, names and
//! thread names made to steer a terminal, and what the agent itself keeps
//! once attached: its capabilities, and whether it sees the host's pids.

use std::{
    fs,
    os::unix::fs::{PermissionsExt, symlink},
    process::{Command, Stdio},
};

use dnstrace_tests::{
    dnstap::Collector,
    netns::{Family, Topology},
    process::{Daemon, run},
    servers::{DnsServer, ServerKind, ZONE},
    trace::{Tracer, dnstrace_bin},
    unique_name,
};

/// The options that create output files, each with the file's name.
const OUTPUT_FILES: [(&str, &str); 4] = [
    ("-o", "trace.txt"),
    ("--json", "trace.jsonl"),
    ("-w", "trace.pcapng"),
    ("--dnstap", "trace.dnstap"),
];

/// A link placed where an output goes is refused before anything starts,
/// and the file it points at keeps its bytes and its mode.
#[test]
fn a_link_where_an_output_file_goes_is_refused_and_never_followed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let victim = dir.path().join("victim");
    fs::write(&victim, "precious").expect("write victim");
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o644)).expect("chmod");
    for (option, name) in OUTPUT_FILES {
        let link = dir.path().join(name);
        symlink(&victim, &link).expect("symlink");
        let output = Command::new(dnstrace_bin())
            .arg(option)
            .arg(&link)
            .args(["--duration", "1"])
            .output()
            .expect("run dnstrace");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{option}: {stderr}");
        assert!(
            stderr.starts_with("dnstrace: ") && stderr.contains("symbolic link"),
            "{option}: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{option}: {stderr}");
        assert_eq!(fs::read_to_string(&victim).expect("read"), "precious");
        let mode = fs::metadata(&victim).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o644, "{option} left the target's mode alone");
        fs::remove_file(&link).expect("remove link");
    }
}

/// Files left by an earlier run, or made by hand, readable by all: every
/// output is private once dnstrace has written it.
#[test]
fn every_output_file_is_private_whatever_existed_before() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut command = Command::new(dnstrace_bin());
    for (option, name) in OUTPUT_FILES {
        let path = dir.path().join(name);
        fs::write(&path, "an earlier run").expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        command.arg(option).arg(&path);
    }
    command.args(["--duration", "1"]);
    let (status, stderr) = Daemon::spawn("dnstrace", &mut command).wait();
    assert!(status.success(), "{status}: {stderr:?}");
    for (_, name) in OUTPUT_FILES {
        let path = dir.path().join(name);
        let mode = fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{name} is private");
        let bytes = fs::read(&path).expect("read");
        assert!(
            !bytes.starts_with(b"an earlier run"),
            "{name} was written afresh"
        );
    }
}

/// A client whose thread name and query name carry a terminal escape and a
/// right-to-left override: the text output shows both as escapes, live and
/// in `dnstrace analyze` of the JSON written meanwhile; so do names in a
/// JSON Lines file, and a file's name on stderr.
#[test]
fn thread_names_and_query_names_reach_the_terminal_escaped() {
    const HOSTILE_COMM: &str = "\x1b[2J\u{202e}gpj.exe";
    let net = Topology::new();
    // Knot leaves such names unanswered; this crate's server answers all.
    let shaping = DnsServer::start(ServerKind::Shaping, &net);
    let server = shaping.socket(Family::V4);
    let dir = tempfile::tempdir().expect("temp dir");
    let stdout = dir.path().join("stdout.txt");
    let tracer = Tracer::start_printing(["--netns", net.client.name(), "-v"], &stdout);
    let label = unique_name("esc");
    let script = dnstrace_tests::workspace_dir().join("tests/clients/rename.py");
    run(net.client.command("python3").arg(&script).args([
        server.ip().to_string(),
        server.port().to_string(),
        format!("{label}.{ZONE}"),
        // The kernel asks a busy socket's thread name again every 64 sends.
        "70".into(),
        HOSTILE_COMM.into(),
    ]));
    // A query whose name carries the same kind of bytes, sent once: no
    // server answers such a name.
    let hostile_label = format!("{label}\x1b]0;owned\x07\u{2066}");
    let mut query = vec![0x51, 0x51, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for part in std::iter::once(hostile_label.as_str()).chain(ZONE.split('.')) {
        query.push(u8::try_from(part.len()).expect("a label"));
        query.extend(part.as_bytes());
    }
    query.extend([0, 0, 1, 0, 1]);
    let hex: String = query.iter().map(|b| format!("{b:02x}")).collect();
    run(net.client.command("python3").args([
        "-c",
        "import socket, sys; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\
         .sendto(bytes.fromhex(sys.argv[1]), (sys.argv[2], int(sys.argv[3])))",
        &hex,
        &server.ip().to_string(),
        &server.port().to_string(),
    ]));
    let json = dir.path().join("trace.jsonl");
    let trace = tracer.stop_keeping(&json);
    let renamed = trace
        .messages
        .iter()
        .filter(|m| m.comm.as_deref() == Some(HOSTILE_COMM))
        .count();
    assert!(
        renamed > 0,
        "the kernel saw the new thread name: {:?}",
        trace.messages
    );

    assert!(
        trace.messages.iter().any(|m| m
            .qname
            .as_deref()
            .is_some_and(|name| name.contains(&format!("{label}\\")))),
        "the hostile query was traced: {:?}",
        trace.messages
    );
    let live = fs::read_to_string(&stdout).expect("read stdout");
    assert_shown_escaped(&live, &label);
    let analyzed = Command::new(dnstrace_bin())
        .arg("analyze")
        .arg(&json)
        .args(["-v"])
        .stderr(Stdio::null())
        .output()
        .expect("run dnstrace analyze");
    assert!(analyzed.status.success(), "{analyzed:?}");
    assert_shown_escaped(&String::from_utf8_lossy(&analyzed.stdout), &label);

    // JSON Lines hold names as they were decoded: a file can carry any
    // text in them. Its name, too, is anyone's in a shared directory, and
    // stderr quotes it when a line is damaged.
    let text = fs::read_to_string(&json).expect("read the JSON");
    let line = text
        .lines()
        .find(|line| line.contains(r#""kind":"message""#) && line.contains(&label))
        .expect("a message line of the lookups");
    let hostile_line = line.replace(&label, &format!("{label}\\u001b[2J\\u202e"));
    let hostile_file = dir.path().join("trace\x1b[2J\u{202e}.jsonl");
    fs::write(&hostile_file, format!("{hostile_line}\nnot JSON\n")).expect("write");
    let analyzed = Command::new(dnstrace_bin())
        .arg("analyze")
        .arg(&hostile_file)
        .arg("-v")
        .output()
        .expect("run dnstrace analyze");
    let stdout = String::from_utf8_lossy(&analyzed.stdout);
    assert!(
        stdout.contains(&format!("{label}\\x1b[2J\\u{{202e}}")),
        "the name as escapes:\n{stdout}"
    );
    assert_no_raw_controls(&stdout);
    let stderr = String::from_utf8_lossy(&analyzed.stderr);
    assert!(
        stderr.contains("trace\\x1b[2J\\u{202e}.jsonl: skipped 1 damaged record"),
        "the file's name as escapes:\n{stderr}"
    );
    assert_no_raw_controls(&stderr);
}

fn assert_shown_escaped(text: &str, label: &str) {
    assert!(
        text.contains("\\x1b[2J\\u{202e}gpj.exe"),
        "the thread name as escapes:\n{text}"
    );
    assert!(text.contains(label), "the query's lines are there:\n{text}");
    assert_no_raw_controls(text);
}

fn assert_no_raw_controls(text: &str) {
    let raw: Vec<char> = text
        .chars()
        .filter(|c| {
            (c.is_control() && *c != '\n')
                || ('\u{2066}'..='\u{2069}').contains(c)
                || *c == '\u{202e}'
        })
        .collect();
    assert!(raw.is_empty(), "raw {raw:?} reached the terminal:\n{text}");
}

const DAC_OVERRIDE: u64 = 1 << 1;
const DAC_READ_SEARCH: u64 = 1 << 2;
const SYS_PTRACE: u64 = 1 << 19;
const SYS_ADMIN: u64 = 1 << 21;
const BPF: u64 = 1 << 39;
/// What docs/security.md says a tracing run keeps.
const TRACING: u64 = SYS_ADMIN | SYS_PTRACE | DAC_READ_SEARCH | BPF;

/// Once attached, every thread of the agent holds only what docs/security.md
/// lists, and can gain nothing back (no_new_privs, bounding set).
#[test]
fn the_agent_keeps_only_the_capabilities_it_still_uses() {
    let tracer = Tracer::start(dnstrace_tests::trace::EVERYTHING);
    for (tid, kept) in capabilities_of_each_thread(tracer.pid()) {
        assert_eq!(kept, TRACING, "thread {tid}");
    }
    let trace = tracer.stop();
    assert!(
        trace.stderr.iter().any(|line| line
            == "dnstrace: capabilities kept: cap_dac_read_search,cap_sys_ptrace,cap_sys_admin,cap_bpf; \
                no_new_privs set"),
        "{:?}",
        trace.stderr
    );
}

/// The dnstap sender starts before the programs attach, and drops what it
/// does not use itself: a Unix socket may need DAC_OVERRIDE to reconnect,
/// nothing else. The agent's own thread keeps DAC_OVERRIDE for the same.
#[test]
fn the_dnstap_sending_thread_keeps_only_what_reconnecting_needs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("collector.sock");
    let collector = Collector::unix(&socket, &dir.path().join("out.fstrm"));
    let target = format!("unix:{}", socket.display());
    let tracer = Tracer::start(["--dnstap", &target]);
    let threads = capabilities_of_each_thread(tracer.pid());
    assert!(threads.len() >= 2, "the sender is a thread: {threads:?}");
    let mut sender_seen = false;
    for (tid, kept) in threads {
        // The sender is named `dnstap`. Every other thread (the agent's, the
        // enrich worker, a short-lived one entering a network namespace) is
        // started by the agent's thread after the drop and has its set.
        let name = std::fs::read_to_string(format!("/proc/{}/task/{tid}/comm", tracer.pid()))
            .unwrap_or_default();
        let expected = match name.trim() == "dnstap" {
            true => DAC_OVERRIDE,
            false => TRACING | DAC_OVERRIDE,
        };
        sender_seen |= name.trim() == "dnstap";
        assert_eq!(kept, expected, "thread {tid} ({})", name.trim());
    }
    assert!(sender_seen, "the dnstap sender is a thread named dnstap");
    tracer.stop();
    collector.stop();
}

/// Each thread of `pid` with its effective capabilities, once checked that
/// it can gain none: permitted and bounding sets the same, inheritable and
/// ambient empty, no_new_privs set.
fn capabilities_of_each_thread(pid: u32) -> Vec<(u32, u64)> {
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).expect("tasks");
    let mut threads = Vec::new();
    for task in tasks {
        let task = task.expect("task");
        // A short-lived thread may have gone since the listing.
        let status = match fs::read_to_string(task.path().join("status")) {
            Ok(status) => status,
            Err(error)
                if error.kind() == std::io::ErrorKind::NotFound
                    || error.raw_os_error() == Some(libc::ESRCH) =>
            {
                continue;
            }
            Err(error) => panic!("{}: {error}", task.path().display()),
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .unwrap_or_else(|| panic!("{name} in {status}"))
                .trim()
                .to_string()
        };
        let mask = |name: &str| u64::from_str_radix(&field(name), 16).expect("hex");
        let effective = mask("CapEff:");
        assert_eq!(mask("CapPrm:"), effective, "permitted:\n{status}");
        assert_eq!(mask("CapBnd:"), effective, "bounding:\n{status}");
        assert_eq!(mask("CapInh:"), 0, "inheritable:\n{status}");
        assert_eq!(mask("CapAmb:"), 0, "ambient:\n{status}");
        assert_eq!(field("NoNewPrivs:"), "1", "{status}");
        let tid = task.file_name().to_string_lossy().parse().expect("tid");
        threads.push((tid, effective));
    }
    threads
}

/// In a PID namespace of its own (a pod without hostPID), the pids the
/// kernel gives are not the ones /proc shows: dnstrace says so at start,
/// and takes --pid as a host pid, which that /proc cannot confirm.
#[test]
fn a_pid_namespace_other_than_the_hosts_is_said_at_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let host_pid = std::process::id().to_string();
    let mut command = Command::new("unshare");
    command
        .args(["--pid", "--fork", "--mount-proc"])
        .arg(dnstrace_bin())
        .args(["--pid", &host_pid, "--duration", "1", "-o"])
        .arg(dir.path().join("trace.txt"));
    let (status, stderr) = Daemon::spawn("dnstrace", &mut command).wait();
    assert!(status.success(), "{status}: {stderr:?}");
    assert!(
        stderr.first().is_some_and(
            |line| line.starts_with("dnstrace: not in the host's PID namespace (pid:[")
        ),
        "said first: {stderr:?}"
    );
}
