//! dnstrace on a Kubernetes node: pods made through containerd's CRI API,
//! as kubelet makes them. The case behind the project, in pods: a DNS pod
//! that answers like CoreDNS before 1.5.1 (cached answers without AA), and
//! a client pod whose resolver throws those answers away.

use std::{
    collections::BTreeSet,
    ffi::OsStr,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use dnstrace_tests::{
    clients::go_client,
    cri::{Container, ContainerSpec, Node, Pod, PodSpec, log_lines},
    kubernetes::{AGENT_CAPABILITIES, agent_container, agent_host_pid},
    process::PATIENCE,
    servers::shaping_server_binary,
    trace::{Trace, Tracer},
};
use k8s_cri::v1::DnsConfig;
use serde_json::Value;

/// The shaping server answers names under `cache.example.test` as CoreDNS's
/// `cache 30` did (tests/src/bin/shaping-server.rs).
const NAME: &str = "postgres.cache.example.test.";
const DNS_IMAGE: &str = "localhost/dnstrace-test/dns:1";
const CLIENT_IMAGE: &str = "localhost/dnstrace-test/go-resolve:1";

/// A DNS pod in kube-system and the image of a client.
fn cluster(node: &mut Node) -> Pod {
    node.build_image(
        DNS_IMAGE,
        &[(&shaping_server_binary(), "/shaping-server")],
        &["/shaping-server"],
    );
    node.build_image(
        CLIENT_IMAGE,
        &[(go_client(), "/go-resolve")],
        &["/go-resolve"],
    );
    let dns = node.run_pod(&PodSpec {
        namespace: "kube-system",
        name: "coredns-5d78c9869d-q7x2m",
        host_pid: false,
        dns: None,
    });
    node.start_container(
        &dns,
        &ContainerSpec {
            name: "coredns".into(),
            image: DNS_IMAGE.into(),
            args: vec![format!("{}:53", dns.ip)],
            ..Default::default()
        },
    );
    dns
}

/// A client pod in `shop`, with the cluster's resolv.conf as kubelet
/// would give it.
fn client_pod(node: &mut Node, dns: &Pod, name: &str) -> Pod {
    node.run_pod(&PodSpec {
        namespace: "shop",
        name,
        host_pid: false,
        dns: Some(DnsConfig {
            servers: vec![dns.ip.to_string()],
            searches: vec![
                "shop.svc.cluster.local".into(),
                "svc.cluster.local".into(),
                "cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
        }),
    })
}

/// Looks [`NAME`] up three times in `client`; returns the client's pid.
fn resolve_three_times(node: &Node, client: &Pod) -> u32 {
    let app = node.start_container(
        client,
        &ContainerSpec {
            name: "app".into(),
            image: CLIENT_IMAGE.into(),
            args: ["-n", "3", "-every", "1s", NAME].map(String::from).to_vec(),
            ..Default::default()
        },
    );
    let pid = node.pid_of(&app);
    let code = node.wait_exit(&app, Duration::from_secs(60));
    assert_eq!(code, 0, "the Go client resolves the name in the end");
    pid
}

/// The host's tracer, with no filter so that it sees the DNS pod answer too,
/// names the client pod, and the DNS pod as the server that answered.
#[test]
fn a_pod_that_throws_away_cached_answers_is_named_by_the_host_tracer() {
    let mut node = Node::start();
    let dns = cluster(&mut node);
    let client = client_pod(&mut node, &dns, "web-7f9c4-x2k8p");
    let mut tracer = Tracer::start([
        OsStr::new("--containerd-state"),
        node.task_state_root().as_os_str(),
    ]);
    let pid = resolve_three_times(&node, &client);
    // The whole host is traced: other processes' lookups may never settle,
    // so wait for this one's diagnosis, written once its lookups settled.
    tracer.wait_for_line("the client pod's diagnosis", |line| {
        line["kind"] == "diagnosis" && line["pid"] == pid
    });
    let trace = tracer.stop();
    let rejected: Vec<_> = trace
        .diagnoses_of(pid)
        .into_iter()
        .filter(|d| d.cause == "answer_rejected")
        .collect();
    assert_eq!(
        rejected.len(),
        1,
        "one answer_rejected for the client pod's pid {pid}; its lines:\n{}",
        trace.correlation_of(pid)
    );
    let diagnosis = trace
        .lines
        .iter()
        .rfind(|line| line["kind"] == "diagnosis" && line["pid"] == pid)
        .expect("the diagnosis line");
    assert_names_the_client_pod(diagnosis);
    // The DNS pod answered: its side of each exchange names it.
    assert_eq!(
        diagnosis["server_pod"]["namespace"], "kube-system",
        "{diagnosis}"
    );
    assert_eq!(
        diagnosis["server_pod"]["name"], "coredns-5d78c9869d-q7x2m",
        "{diagnosis}"
    );
    let lookups: Vec<&Value> = trace
        .lines
        .iter()
        .filter(|line| line["kind"] == "lookup" && line["pid"] == pid)
        .collect();
    assert!(!lookups.is_empty());
    for lookup in lookups {
        assert_eq!(
            lookup["server_pod"]["name"], "coredns-5d78c9869d-q7x2m",
            "{lookup}"
        );
    }
}

/// The pids that have lines in `trace`.
fn pids_traced(trace: &Trace) -> BTreeSet<u64> {
    trace
        .lines
        .iter()
        .filter_map(|line| line["pid"].as_u64())
        .collect()
}

/// `pid` was traced whole: its lookups ended in the diagnosis, so none of
/// its queries was missed, the first one included.
fn assert_traced_whole(trace: &Trace, pid: u32, pod: &str) {
    let rejected = trace
        .diagnoses_of(pid)
        .into_iter()
        .filter(|d| d.cause == "answer_rejected")
        .count();
    assert_eq!(
        rejected,
        1,
        "one answer_rejected for {pod}'s pid {pid}; its lines:\n{}",
        trace.correlation_of(pid)
    );
    let first = trace
        .lines
        .iter()
        .find(|line| line["kind"] == "lookup" && line["pid"] == pid)
        .expect("a lookup line");
    assert_eq!(first["pod"]["name"], pod, "{first}");
}

/// `--pod` names a pod that does not exist yet: dnstrace says so and
/// starts, follows the pod once it starts, and traces its lookups (from
/// the first) and no other pod's: not another client's in the same
/// namespace, not the DNS pod's.
#[test]
fn the_pod_filter_follows_a_pod_started_later_and_traces_only_it() {
    let mut node = Node::start();
    let dns = cluster(&mut node);
    let mut tracer = Tracer::start([
        OsStr::new("--pod"),
        OsStr::new("shop/web-late"),
        OsStr::new("--containerd-state"),
        node.task_state_root().as_os_str(),
    ]);
    let other = client_pod(&mut node, &dns, "web-other");
    let late = client_pod(&mut node, &dns, "web-late");
    let other_pid = resolve_three_times(&node, &other);
    let pid = resolve_three_times(&node, &late);
    tracer.wait_until_settled();
    let trace = tracer.stop();
    let said = |wanted: &str| trace.stderr.iter().any(|line| line.starts_with(wanted));
    assert!(
        said("dnstrace: --pod shop/web-late matches no container on this node now"),
        "{:#?}",
        trace.stderr
    );
    assert!(
        said("dnstrace: following shop/web-late/app"),
        "{:#?}",
        trace.stderr
    );
    assert_eq!(
        pids_traced(&trace),
        BTreeSet::from([u64::from(pid)]),
        "only web-late's client (pid {pid}), not web-other's ({other_pid}) nor the DNS pod's"
    );
    assert_traced_whole(&trace, pid, "web-late");
}

/// `--k8s-namespace` selects the namespace's pods that run when dnstrace
/// starts and those that start later, and no pod of another namespace.
#[test]
fn the_namespace_filter_selects_its_pods_old_and_new_and_no_other() {
    let mut node = Node::start();
    let dns = cluster(&mut node);
    let early = client_pod(&mut node, &dns, "web-early");
    let mut tracer = Tracer::start([
        OsStr::new("--k8s-namespace"),
        OsStr::new("shop"),
        OsStr::new("--containerd-state"),
        node.task_state_root().as_os_str(),
    ]);
    let blog = node.run_pod(&PodSpec {
        namespace: "blog",
        name: "web-early",
        host_pid: false,
        dns: Some(DnsConfig {
            servers: vec![dns.ip.to_string()],
            ..Default::default()
        }),
    });
    let late = client_pod(&mut node, &dns, "api-late");
    let early_pid = resolve_three_times(&node, &early);
    let blog_pid = resolve_three_times(&node, &blog);
    let late_pid = resolve_three_times(&node, &late);
    tracer.wait_until_settled();
    let trace = tracer.stop();
    assert!(
        trace.stderr.iter().any(|line| line.starts_with(
            "dnstrace: --k8s-namespace shop matches shop/web-early (its sandbox) now"
        )),
        "{:#?}",
        trace.stderr
    );
    assert_eq!(
        pids_traced(&trace),
        BTreeSet::from([u64::from(early_pid), u64::from(late_pid)]),
        "shop's clients (pids {early_pid} and {late_pid}), not blog's ({blog_pid}) nor the DNS pod's"
    );
    assert_traced_whole(&trace, early_pid, "web-early");
    assert_traced_whole(&trace, late_pid, "api-late");
}

/// A line of the client pod's: named by namespace, pod and container, as
/// containerd's annotations say.
fn assert_names_the_client_pod(line: &Value) {
    assert_eq!(line["pod"]["namespace"], "shop", "{line}");
    assert_eq!(line["pod"]["name"], "web-7f9c4-x2k8p", "{line}");
    assert_eq!(line["container"]["name"], "app", "{line}");
    assert_eq!(line["container"]["runtime"], "containerd", "{line}");
}

/// The HTTP status the agent's `path` answers with on its pod address, asked
/// from inside the pod's network namespace (nothing outside reaches it).
fn http_status(pod: &Pod, path: &str) -> Option<u16> {
    let output = Command::new("nsenter")
        .arg(format!("--net={}", pod.netns.display()))
        .args([
            "python3",
            "-c",
            "import sys, urllib.request, urllib.error\n\
             try:\n    print(urllib.request.urlopen(sys.argv[1], timeout=5).status)\n\
             except urllib.error.HTTPError as e:\n    print(e.code)",
        ])
        .arg(format!("http://{}:9253{path}", pod.ip))
        .stderr(Stdio::null())
        .output()
        .expect("nsenter runs");
    String::from_utf8_lossy(&output.stdout).trim().parse().ok()
}

/// Retries `done` for a while; panics with the agent's log if it never is.
fn poll_agent(agent: &Container, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {PATIENCE:?}; the agent's log:\n{}",
            log_lines(agent).join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The resolvers the agent named in `pid`'s lookups (null when it could
/// not tell), each once.
fn resolvers_named(lines: &[Value], pid: u32) -> Vec<String> {
    let mut named: Vec<String> = lines
        .iter()
        .filter(|line| line["kind"] == "lookup" && line["pid"] == pid)
        .map(|line| line["resolver"].as_str().unwrap_or("null").to_owned())
        .collect();
    named.dedup();
    named
}

/// The agent's JSON lines so far.
fn agent_lines(agent: &Container) -> Vec<Value> {
    log_lines(agent)
        .iter()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// The DaemonSet's own pod spec, translated to CRI as kubelet would (host
/// pids, its capabilities and nothing more, read-only root and mounts, not
/// privileged), runs the agent from the image `cargo xtask image` built:
/// it gets ready, and names the cause of another pod's failing lookups in
/// its log.
#[test]
fn the_daemonset_pod_traces_and_diagnoses_another_pods_lookups() {
    let image = std::env::var_os("DNSTRACE_IMAGE").map(PathBuf::from).expect(
        "DNSTRACE_IMAGE names the OCI archive `cargo xtask image` writes (cargo xtask test sets it)",
    );
    let mut node = Node::start();
    node.import_image(&image);
    let dns = cluster(&mut node);
    let agent_pod = node.run_pod(&PodSpec {
        namespace: "dnstrace",
        name: "dnstrace-x7k2p",
        host_pid: agent_host_pid(),
        dns: None,
    });
    let agent = node.start_container(
        &agent_pod,
        &agent_container(agent_pod.ip, &node.state_dir()),
    );
    poll_agent(&agent, "the agent's /readyz to answer 200", || {
        http_status(&agent_pod, "/readyz") == Some(200)
    });
    assert_eq!(http_status(&agent_pod, "/healthz"), Some(200));
    let client = client_pod(&mut node, &dns, "web-7f9c4-x2k8p");
    let pid = resolve_three_times(&node, &client);
    let is_the_diagnosis = |line: &Value| {
        line["kind"] == "diagnosis" && line["cause"] == "answer_rejected" && line["pid"] == pid
    };
    poll_agent(
        &agent,
        "the agent to log answer_rejected for the client pod",
        || agent_lines(&agent).iter().any(is_the_diagnosis),
    );
    node.stop_container(&agent, Duration::from_secs(10));
    let log = log_lines(&agent);
    assert!(
        log.iter()
            .any(|line| line.contains("dnstrace: without cap_sys_admin, other network namespaces")),
        "the agent says once what it does without SYS_ADMIN:\n{}",
        log.join("\n")
    );
    let lines = agent_lines(&agent);
    // It read the client's resolver from /proc/PID/exe, another
    // container's file, which takes SYS_PTRACE.
    assert_eq!(resolvers_named(&lines, pid), ["Go resolver"]);
    let diagnosis = lines
        .iter()
        .rfind(|line| is_the_diagnosis(line))
        .expect("the diagnosis line");
    assert_names_the_client_pod(diagnosis);
    let summary = lines.last().expect("the agent logged lines");
    assert_eq!(summary["kind"], "summary", "the agent stopped cleanly");
    assert_eq!(summary["lost"], 0);
    for line in &lines {
        let kind = line["kind"].as_str().unwrap_or_default();
        assert!(
            ["lookup", "diagnosis", "summary"].contains(&kind),
            "the DaemonSet writes only lookups, diagnoses and the summary: {line}"
        );
    }
}

/// Each capability the DaemonSet adds is needed: without BPF, PERFMON or
/// NET_ADMIN the agent cannot attach and says so (exit 2); without
/// SYS_PTRACE it traces, but cannot read another container's files to tell
/// which resolver a client runs.
#[test]
fn each_capability_the_daemonset_adds_is_needed() {
    let image = std::env::var_os("DNSTRACE_IMAGE").map(PathBuf::from).expect(
        "DNSTRACE_IMAGE names the OCI archive `cargo xtask image` writes (cargo xtask test sets it)",
    );
    let mut node = Node::start();
    node.import_image(&image);
    let dns = cluster(&mut node);
    let client = client_pod(&mut node, &dns, "web-7f9c4-x2k8p");
    for &missing in AGENT_CAPABILITIES {
        let agent_pod = node.run_pod(&PodSpec {
            namespace: "dnstrace",
            name: &format!("dnstrace-without-{}", missing.to_lowercase()),
            host_pid: agent_host_pid(),
            dns: None,
        });
        let mut spec = agent_container(agent_pod.ip, &node.state_dir());
        spec.add_capabilities.retain(|cap| cap != missing);
        let agent = node.start_container(&agent_pod, &spec);
        if missing == "SYS_PTRACE" {
            poll_agent(&agent, "the agent's /readyz to answer 200", || {
                http_status(&agent_pod, "/readyz") == Some(200)
            });
            let pid = resolve_three_times(&node, &client);
            poll_agent(&agent, "the agent to log the client's lookups", || {
                !resolvers_named(&agent_lines(&agent), pid).is_empty()
            });
            node.stop_container(&agent, Duration::from_secs(10));
            assert_eq!(
                resolvers_named(&agent_lines(&agent), pid),
                ["null"],
                "without SYS_PTRACE the client's resolver cannot be read"
            );
            let log = log_lines(&agent);
            assert!(
                log.iter()
                    .any(|line| line.contains("dnstrace: without cap_sys_ptrace, /proc/PID/root")),
                "the agent says at start what it cannot read:\n{}",
                log.join("\n")
            );
        } else {
            let code = node.wait_exit(&agent, PATIENCE);
            let log = log_lines(&agent).join("\n");
            assert!(
                code == 2 && log.contains("dnstrace: not permitted"),
                "without {missing}: exit {code}, log:\n{log}"
            );
        }
    }
}
