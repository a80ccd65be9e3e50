//! What dnstrace leaves behind and how it refuses to start: nothing stays
//! attached after it is killed, and missing privileges or a missing cgroup
//! v2 hierarchy end it with one line and exit code 2.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader},
    process::{Child, ChildStderr, Command, Stdio},
    sync::{
        Mutex,
        mpsc::{self, RecvTimeoutError},
    },
    time::{Duration, Instant},
};

use dnstrace_tests::trace::dnstrace_bin;

/// The attachment test reads the cgroup's program list, which another
/// dnstrace started by this file would change under it.
static CGROUP_PROGRAMS: Mutex<()> = Mutex::new(());

/// The root of the cgroup v2 hierarchy, as dnstrace attaches to it.
fn cgroup2_root() -> String {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut fields = left.split_whitespace().skip(3);
            let (root, mount_point) = (fields.next()?, fields.next()?);
            (right.starts_with("cgroup2 ") && root == "/").then(|| mount_point.to_string())
        })
        .min_by_key(String::len)
        .expect("a cgroup v2 mount")
}

/// Ids of the dnstrace programs attached to the cgroup v2 root, by bpftool.
fn attached_dnstrace_programs() -> BTreeSet<u64> {
    let output = Command::new("bpftool")
        .args(["cgroup", "show", &cgroup2_root()])
        .output()
        .expect("bpftool (scripts/setup.sh installs it)");
    assert!(output.status.success(), "bpftool failed: {output:?}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.contains("dns_"))
        .filter_map(|line| line.split_whitespace().next()?.parse().ok())
        .collect()
}

/// Ids of the bpf links `pid` holds open, from its fds' fdinfo.
fn links_held_by(pid: u32) -> BTreeSet<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .expect("the agent's fdinfo")
        .flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("link_id:"))
                .and_then(|id| id.trim().parse().ok())
        })
        .collect()
}

/// Ids of the links on the `sock_recv_length` tracepoint (dnstrace's read
/// program), by bpftool.
fn read_links() -> BTreeSet<u64> {
    let output = Command::new("bpftool")
        .args(["link", "show", "--json"])
        .output()
        .expect("bpftool (scripts/setup.sh installs it)");
    assert!(output.status.success(), "bpftool failed: {output:?}");
    let links: Vec<serde_json::Value> =
        serde_json::from_slice(&output.stdout).expect("bpftool's JSON");
    links
        .iter()
        .filter(|link| link["tp_name"] == "sock_recv_length")
        .filter_map(|link| link["id"].as_u64())
        .collect()
}

/// Starts dnstrace with its default backend choice, writing JSON nowhere,
/// and returns it once attached with what it said until then.
fn start_attached() -> (Child, Vec<String>) {
    let mut agent = Command::new(dnstrace_bin())
        .args(["--format", "json", "-o", "/dev/null"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("start dnstrace");
    let stderr = agent.stderr.take();
    match stderr.map(read_until_attached) {
        Some(Ok(said)) => (agent, said),
        problem => {
            let _ = agent.kill();
            let _ = agent.wait();
            panic!("{problem:?}");
        }
    }
}

/// Lines of dnstrace's stderr up to `dnstrace: attached`, read on a
/// thread so that an agent that hangs without a word still fails within
/// the deadline; the rest is read and dropped, so that dnstrace's later
/// lines never meet a closed pipe.
fn read_until_attached(stderr: ChildStderr) -> Result<Vec<String>, String> {
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            // The test stops listening once attached; read on regardless.
            let _ = lines.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut said = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match received.recv_timeout(left) {
            Ok(line) => {
                let attached = line.starts_with("dnstrace: attached");
                said.push(line);
                if attached {
                    return Ok(said);
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                return Err(format!("not attached within 30 s: {said:?}"));
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(format!("dnstrace exited before attaching: {said:?}"));
            }
        }
    }
}

/// `auto` falls back to cgroup-sockaddr silently but for one line, so a
/// program that grows past what the verifier takes (its stack, say) would
/// pass every other test on the weaker backend. Only a kernel whose
/// cgroup_skb programs may not ask for the current task (Debian 12's 6.1, see
/// docs/vm.md) is a reason to pass cgroup-skb over.
#[test]
fn auto_picks_cgroup_skb_unless_the_kernel_lacks_what_it_needs() {
    let _serial = CGROUP_PROGRAMS.lock().unwrap_or_else(|e| e.into_inner());
    let (mut agent, said) = start_attached();
    agent.kill().expect("SIGKILL");
    agent.wait().expect("reap dnstrace");
    let passed_over = said
        .iter()
        .find(|line| line.starts_with("dnstrace: backend cgroup-skb passed over"));
    match passed_over {
        None => assert!(
            said.iter()
                .any(|line| line == "dnstrace: attached, backend cgroup-skb"),
            "{said:#?}"
        ),
        Some(reason) => assert!(
            reason.contains("unknown func bpf_get_current_pid_tgid"),
            "cgroup-skb was refused for a reason of dnstrace's making: {reason}"
        ),
    }
}

#[test]
fn killing_the_agent_leaves_no_program_attached() {
    let _serial = CGROUP_PROGRAMS.lock().unwrap_or_else(|e| e.into_inner());
    let before = attached_dnstrace_programs();
    let (mut agent, _) = start_attached();
    let ours: BTreeSet<u64> = attached_dnstrace_programs()
        .difference(&before)
        .copied()
        .collect();
    assert_eq!(
        ours.len(),
        2,
        "egress and ingress programs attached: {ours:?}"
    );
    // The agent's own links, so that another tracer on the host cannot
    // count.
    let our_read_links: BTreeSet<u64> = links_held_by(agent.id())
        .intersection(&read_links())
        .copied()
        .collect();
    assert_eq!(
        our_read_links.len(),
        1,
        "the read program attached (this kernel has sock_recv_length): {our_read_links:?}"
    );

    agent.kill().expect("SIGKILL");
    agent.wait().expect("reap dnstrace");
    // The kernel releases links when their last fd closes; give it a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<u64> = attached_dnstrace_programs()
            .intersection(&ours)
            .chain(read_links().intersection(&our_read_links))
            .copied()
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "programs or links still attached 10 s after SIGKILL: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs dnstrace through `wrapper` (a command that changes its world) and
/// returns its exit code and stderr.
fn refused(wrapper: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(wrapper[0])
        .args(&wrapper[1..])
        .arg(dnstrace_bin())
        .args(["--duration", "1"])
        .output()
        .expect("run dnstrace");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn without_privileges_it_says_so_in_one_line_and_exits_2() {
    let (code, stderr) = refused(&[
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("dnstrace: not permitted"), "{stderr}");
    assert!(
        stderr.contains("CAP_BPF"),
        "names what is missing: {stderr}"
    );
}

#[test]
fn without_a_cgroup_v2_hierarchy_it_says_so_and_exits_2() {
    // A private mount namespace with every cgroup2 mount taken away; the
    // host's mounts are untouched.
    let script = "for m in $(findmnt -rn -t cgroup2 -o TARGET | sort -r); do \
                  umount -l \"$m\" || exit 99; done; exec \"$0\" \"$@\"";
    let (code, stderr) = refused(&[
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("no cgroup v2 hierarchy is mounted"),
        "{stderr}"
    );
}
