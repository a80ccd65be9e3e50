//! `--rotate-size` and `--rotate-keep`: the JSON Lines output rotates
//! between whole lines, every file is private, and nothing is lost across
//! the files.

use std::{
    fs,
    io::{BufRead, BufReader},
    os::unix::fs::PermissionsExt,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use dnstrace_tests::{
    clients::{Client, Lookup},
    netns::{Family, Topology},
    servers::{DnsServer, ServerKind},
    trace::dnstrace_bin,
};

#[test]
fn json_output_rotates_by_size_without_splitting_or_losing_a_line() {
    let net = Topology::new();
    let server = DnsServer::start(ServerKind::Dnsmasq, &net);
    let dir = tempfile::tempdir().expect("temp dir");
    let current = dir.path().join("trace.jsonl");
    let mut agent = Command::new(dnstrace_bin())
        .args(["--netns", net.client.name(), "--format", "json", "-o"])
        .arg(&current)
        .args(["--rotate-size", "4K", "--rotate-keep", "1000"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("start dnstrace");
    let mut stderr = BufReader::new(agent.stderr.take().expect("stderr")).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !stderr
        .next()
        .expect("dnstrace exited before attaching")
        .expect("stderr")
        .starts_with("dnstrace: attached")
    {
        assert!(Instant::now() < deadline, "not attached within 30 s");
    }
    Client::Python { lookups: 20 }.run(&net, &Lookup::new("rotation", server.socket(Family::V4)));
    // SAFETY: signalling our own child, not yet reaped.
    unsafe { libc::kill(agent.id() as i32, libc::SIGINT) };
    assert!(agent.wait().expect("wait").success());

    // Oldest first: the highest number down to .1, then the current file.
    let mut files = Vec::new();
    for n in (1..=1000).rev() {
        let rotated = dir.path().join(format!("trace.jsonl.{n}"));
        if rotated.exists() {
            files.push(rotated);
        }
    }
    files.push(current);
    assert!(
        files.len() >= 3,
        "20 lookups fill several 4 KiB files: {files:?}"
    );
    let mut lines = Vec::new();
    for file in &files {
        let mode = fs::metadata(file).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} is private", file.display());
        let text = fs::read_to_string(file).expect("read");
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "{} ends with a whole line",
            file.display()
        );
        if file != files.last().expect("current file") {
            assert!(
                text.len() < 4096 + 2048,
                "{} rotated near 4 KiB: {}",
                file.display(),
                text.len()
            );
        }
        for line in text.lines() {
            let value: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: {e}: {line}", file.display()));
            lines.push(value);
        }
    }
    let (summary, rest) = lines.split_last().expect("lines");
    assert_eq!(summary["kind"], "summary", "the summary is last: {summary}");
    let messages = rest.iter().filter(|l| l["kind"] == "message").count() as u64;
    assert_eq!(
        Some(messages),
        summary["messages"].as_u64(),
        "no message lost across files"
    );
    assert!(
        messages >= 80,
        "20 lookups of A and AAAA, sent and answered: {messages}"
    );
}
