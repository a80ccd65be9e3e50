//! Files a tenant controls, which dnstrace reads as root to learn a
//! process's resolver: a FIFO bind-mounted over its resolv.conf, a link to
//! /dev/zero, a link out of its root. Made by an unprivileged user in a
//! user and mount namespace of its own, as anyone on a node can. dnstrace
//! must keep capturing and writing, stop on SIGINT, and write everything.

use std::{fs, os::unix::fs::PermissionsExt, process::Command};

use dnstrace_tests::{
    loopback,
    process::{self, Daemon, PATIENCE},
    trace::{EVERYTHING, Trace, Tracer},
    unique_name, workspace_dir,
};

/// Runs `setup` (shell) as nobody in new user and mount namespaces, then
/// execs a query for `qname` from there (so the attacker's pid is the
/// querying one), as `exec_prefix` asks (`chroot DIR`, or nothing).
fn attacker(setup: &str, exec_prefix: &str, qname: &str) -> Daemon {
    let query = loopback::query_then_stay(qname);
    let script = format!("set -e\n{setup}\nexec {exec_prefix} \"$@\"");
    let mut command = process::as_nobody();
    command
        .args([
            "unshare",
            "--user",
            "--map-root-user",
            "--mount",
            "sh",
            "-c",
        ])
        .arg(script)
        .arg("attacker")
        .args(query)
        .env("TMPDIR", "/tmp");
    Daemon::spawn("attacker", &mut command)
}

/// What the tracer's memory peaked at: far below this, whatever a tenant
/// puts in its files (a trace this short needs a few tens of MiB).
const MAX_PEAK_RSS_KIB: u64 = 256 << 10;

/// Traces while `attacker` queries `qname`: dnstrace writes the query while
/// it runs, without reading what it must not (its memory stays bounded),
/// stops on SIGINT, and its output is whole and holds the query and the
/// lookup, attributed to the attacker.
fn trace_surviving(qname: &str, start: impl FnOnce() -> Daemon) -> (Trace, u32) {
    let mut tracer = Tracer::start(EVERYTHING);
    let attacker = start();
    let pid = attacker.pid();
    tracer.wait_for_line("the attacker's query, written while it runs", |line| {
        line["kind"] == "message" && line["qname"] == qname
    });
    let peak = peak_rss_kib(tracer.pid());
    assert!(
        peak < MAX_PEAK_RSS_KIB,
        "dnstrace's memory peaked at {peak} KiB"
    );
    // Stops with SIGINT, within the fixtures' patience, with a summary.
    let trace = tracer.stop();
    drop(attacker);
    let query = trace
        .messages
        .iter()
        .find(|m| m.qname.as_deref() == Some(qname))
        .expect("the query is in the output");
    assert_eq!(query.pid, Some(pid), "the query is the attacker's");
    assert!(
        trace.lookups.iter().any(|l| l.pid.0 == Some(pid)),
        "the attacker's lookup is reported at exit: {}",
        trace.correlation_of(pid)
    );
    (trace, pid)
}

/// VmHWM, the process's peak resident memory.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in:\n{status}"))
}

#[test]
fn a_fifo_over_resolv_conf_does_not_freeze_the_agent() {
    let qname = format!("{}.example.test.", unique_name("fifo"));
    trace_surviving(&qname, || {
        attacker(
            "d=$(mktemp -d); mkfifo $d/f; mount --bind $d/f /etc/resolv.conf",
            "",
            &qname,
        )
    });
}

#[test]
fn a_resolv_conf_linked_to_dev_zero_is_not_read() {
    let qname = format!("{}.example.test.", unique_name("zero"));
    // A link cannot be bind-mounted itself: the attacker mounts over /etc
    // a directory whose resolv.conf is one (python needs nothing else there).
    trace_surviving(&qname, || {
        attacker(
            "d=$(mktemp -d); ln -s /dev/zero $d/resolv.conf; mount --bind $d /etc",
            "",
            &qname,
        )
    });
}

#[test]
fn a_link_out_of_the_process_root_is_resolved_inside_it() {
    let label = unique_name("escape");
    let qname = format!("{label}.inside.test.");
    // The same path holds one search list inside the attacker's root and
    // another on the host; its resolv.conf links to that path.
    let host_dir = tempfile::tempdir_in("/tmp").expect("host dir");
    let shared = host_dir.path().to_str().expect("utf-8 path").to_owned();
    fs::write(format!("{shared}/resolv.conf"), "search escaped.test\n").expect("host file");
    fs::set_permissions(host_dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let setup = format!(
        "r=$(mktemp -d); mkdir -p $r/etc $r/usr $r/proc $r{shared}; \
         mount --bind /usr $r/usr; ln -s usr/lib $r/lib; ln -s usr/lib64 $r/lib64; \
         ln -s usr/bin $r/bin; echo 'search inside.test' > $r{shared}/resolv.conf; \
         ln -s {shared}/resolv.conf $r/etc/resolv.conf"
    );
    let (trace, pid) = trace_surviving(&qname, || attacker(&setup, "chroot $r", &qname));
    let lookup = trace
        .lookups
        .iter()
        .find(|l| l.pid.0 == Some(pid))
        .expect("checked");
    // With the root's own search list the suffix comes off the name; with
    // the host's (read through the link) it would not.
    assert_eq!(
        lookup.name,
        label,
        "the search list is the one inside the root: {}",
        trace.correlation_of(pid)
    );
}

/// A process whose resolv.conf is on a FUSE filesystem that never answers
/// (here mounted as root, since /dev/fuse is root's on this machine; a
/// tenant given /dev/fuse can do it in its own user namespace). No flag
/// makes such a read return: the worker reading it is left behind, and a
/// process that starts afterwards still gets its facts.
#[test]
fn a_file_that_never_answers_delays_only_its_own_process() {
    let stuck_name = format!("{}.example.test.", unique_name("stuck"));
    let mut tracer = Tracer::start(EVERYTHING);
    // In a pid namespace of its own, so the filesystem's server dies with
    // the querying process (its pid 1) when the test ends.
    let stall = workspace_dir().join("tests/clients/stalling-fuse.py");
    let script = format!(
        "python3 {} /etc/resolv.conf 60 &\n\
         for i in $(seq 200); do grep -q ' /etc/resolv.conf fuse' /proc/self/mounts && break; sleep 0.05; done\n\
         exec \"$@\"",
        stall.display()
    );
    let mut command = Command::new("unshare");
    command
        .args(["--mount", "--propagation", "private", "--pid", "--fork"])
        .args(["--kill-child", "sh", "-c", &script, "stuck"])
        .args(loopback::query_then_stay(&stuck_name));
    let stuck = Daemon::spawn("stuck client", &mut command);
    tracer.wait_for_line("the stuck client's query", |line| {
        line["kind"] == "message" && line["qname"] == stuck_name.as_str()
    });
    tracer.wait_for_stderr("dnstrace: reading pid ", PATIENCE);

    // A process that starts now has its resolv.conf read by a new worker.
    let label = unique_name("after");
    let name = format!("{label}.second.test.");
    let conf = tempfile::NamedTempFile::new().expect("resolv.conf");
    fs::write(conf.path(), "search second.test\n").expect("write resolv.conf");
    let script = "mount --bind \"$0\" /etc/resolv.conf && exec \"$@\"";
    let mut command = Command::new("unshare");
    command
        .args(["--mount", "--propagation", "private", "sh", "-c", script])
        .arg(conf.path())
        .args(loopback::query_then_stay(&name));
    let after = Daemon::spawn("client after", &mut command);
    let after_pid = after.pid();
    tracer.wait_for_line("the later client's query", |line| {
        line["kind"] == "message" && line["qname"] == name.as_str()
    });
    let trace = tracer.stop();
    drop((after, stuck));

    let stuck_pid = trace
        .messages
        .iter()
        .find(|m| m.qname.as_deref() == Some(stuck_name.as_str()))
        .and_then(|m| m.pid)
        .expect("the stuck client's query has its pid");
    assert!(
        trace
            .stderr
            .iter()
            .any(|line| line.starts_with(&format!("dnstrace: reading pid {stuck_pid}'s files"))),
        "{:?}",
        trace.stderr
    );
    let later = trace
        .lookups
        .iter()
        .find(|l| l.pid.0 == Some(after_pid))
        .unwrap_or_else(|| {
            panic!(
                "no lookup of {after_pid}: {}",
                trace.correlation_of(after_pid)
            )
        });
    assert_eq!(later.name, label, "its own search list was read");
}
