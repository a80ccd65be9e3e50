//! dnstrace on a Kubernetes node: pods made through containerd's CRI API,
//! as kubelet makes them. The case behind the project, in pods: a DNS pod
//! that answers like CoreDNS before 1.5.1 (cached answers without AA), and
//! a client pod whose resolver throws those answers away.

use std::{ffi::OsStr, time::Duration};

use dnstrace_tests::{
    clients::go_client,
    cri::{ContainerSpec, Node, Pod, PodSpec},
    servers::shaping_server_binary,
    trace::Tracer,
};
use k8s_cri::v1::DnsConfig;

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
            name: "coredns",
            image: DNS_IMAGE,
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
            name: "app",
            image: CLIENT_IMAGE,
            args: ["-n", "3", "-every", "1s", NAME].map(String::from).to_vec(),
            ..Default::default()
        },
    );
    let pid = node.pid_of(&app);
    let code = node.wait_exit(&app, Duration::from_secs(60));
    assert_eq!(code, 0, "the Go client resolves the name in the end");
    pid
}

#[test]
fn a_pod_that_throws_away_cached_answers_is_named_by_the_host_tracer() {
    let mut node = Node::start();
    let dns = cluster(&mut node);
    let client = client_pod(&mut node, &dns, "web-7f9c4-x2k8p");
    let mut tracer = Tracer::start([OsStr::new("--netns"), client.netns.as_os_str()]);
    let pid = resolve_three_times(&node, &client);
    tracer.wait_until_settled();
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
}
