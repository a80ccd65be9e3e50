//! How the command line ends a trace: `--duration`, SIGTERM, and a clear
//! failure with exit code 2 when the output cannot be written.

use std::process::Command;

use dnstrace_tests::{
    clients::{Client, Lookup},
    netns::{Family, Topology},
    servers::{DnsServer, ServerKind},
    trace::{Tracer, dnstrace_bin},
};

#[test]
fn duration_ends_the_trace_with_a_summary() {
    // run_for panics unless dnstrace exits by itself, cleanly, with a summary.
    let trace = Tracer::run_for(1);
    assert_eq!(
        trace.summary.messages,
        trace.messages.len() as u64,
        "{:?}",
        trace.summary
    );
}

#[test]
fn sigterm_flushes_every_message_and_the_summary() {
    let net = Topology::new();
    let server = DnsServer::start(ServerKind::Dnsmasq, &net);
    let tracer = Tracer::start(["--netns", net.client.name()]);
    let run = Client::Getent.run(&net, &Lookup::new("getent", server.socket(Family::V4)));
    let trace = tracer.stop_with(libc::SIGTERM);
    let messages = trace
        .messages
        .iter()
        .filter(|m| m.pid == Some(run.pid))
        .count();
    assert_eq!(
        messages, 4,
        "getent's A and AAAA queries and answers: {:?}",
        trace.messages
    );
}

#[test]
fn unwritable_output_fails_with_one_line_and_exit_code_2() {
    fails_at_setup(&[
        "--format",
        "json",
        "-o",
        "/nonexistent-dnstrace-test-dir/trace.jsonl",
    ]);
}

/// docs/cli.md: a filter naming something that does not exist exits 2.
/// The kernel keeps pids below 2^22, so this one never runs.
#[test]
fn a_pid_that_does_not_exist_fails_with_one_line_and_exit_code_2() {
    let stderr = fails_at_setup(&["--pid", "4194305", "--duration", "1"]);
    assert!(
        stderr.contains("--pid 4194305: no such process"),
        "{stderr}"
    );
}

/// Port 0 would select nothing: no DNS message is sent from or to it.
#[test]
fn port_0_fails_with_one_line_and_exit_code_2() {
    let stderr = fails_at_setup(&["--port", "53", "--port", "0", "--duration", "1"]);
    assert!(stderr.contains("--port 0"), "{stderr}");
}

/// Runs dnstrace with `args` (each bounded by --duration, should it start
/// after all) and requires exit code 2 with one line; that line.
fn fails_at_setup(args: &[&str]) -> String {
    let output = Command::new(dnstrace_bin())
        .args(args)
        .output()
        .expect("run dnstrace");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        output.status.code(),
        Some(2),
        "exit status; stderr:\n{stderr}"
    );
    assert_eq!(
        stderr.lines().count(),
        1,
        "one line, no backtrace:\n{stderr}"
    );
    assert!(stderr.starts_with("dnstrace: "), "names itself:\n{stderr}");
    stderr
}
