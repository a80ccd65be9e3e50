//! Pod and container identity: a process in a cgroup named as containerd
//! names a container's, with that container's bundle config.json in a
//! runtime state root given by flag, is reported with its container and
//! pod, in JSON, text, pcapng and dnstap (read back by `dnstrace
//! analyze`). A container whose state is missing keeps its id; a host
//! process has none.

use std::{fs, path::Path, process::Command};

use dnstrace_tests::{
    cgroup::Cgroup,
    loopback,
    process::Daemon,
    trace::{Tracer, analyzed_whole, readable_by_all},
    unique_name,
};
use serde_json::{Value, json};

const POD_UID: &str = "6f1c0e36-2b7a-4c1e-9a55-0e8a3b9d2f10";

/// 64 hex digits no other test run uses, as runtimes' ids are.
fn container_id(role: &str) -> String {
    let hex: String = unique_name(role)
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{hex:a>64}")
}

/// A query for `qname` from a process that first moves itself into
/// `cgroup` (if any), so that its first packet is already the container's.
fn client(cgroup: Option<&Cgroup>, qname: &str) -> Daemon {
    let mut command = Command::new("sh");
    let procs = cgroup.map(|c| c.path().join("cgroup.procs"));
    command
        .arg("-c")
        .arg(r#"if [ -n "$0" ]; then echo $$ > "$0"; fi; exec "$@""#)
        .arg(procs.as_deref().unwrap_or(Path::new("")))
        .args(loopback::query_then_stay(qname));
    Daemon::spawn("client", &mut command)
}

/// containerd's bundle for a container of pod shop/web-0, as the CRI
/// plugin writes it.
fn write_containerd_bundle(root: &Path, id: &str) {
    let bundle = root.join("k8s.io").join(id);
    fs::create_dir_all(&bundle).expect("bundle dir");
    let config = json!({
        "ociVersion": "1.1.0",
        "process": {"args": ["/app"]},
        "annotations": {
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.container-name": "app",
            "io.kubernetes.cri.image-name": "registry.test/web:1",
            "io.kubernetes.cri.sandbox-id": "0".repeat(64),
            "io.kubernetes.cri.sandbox-name": "web-0",
            "io.kubernetes.cri.sandbox-namespace": "shop",
            "io.kubernetes.cri.sandbox-uid": POD_UID,
        }
    });
    fs::write(bundle.join("config.json"), config.to_string()).expect("config.json");
}

/// The identity fields of every line of `kind` for `pid`.
fn identities(lines: &[Value], kind: &str, pid: u32) -> Vec<(Value, Value)> {
    lines
        .iter()
        .filter(|line| line["kind"] == kind && line["pid"] == pid)
        .map(|line| (line["container"].clone(), line["pod"].clone()))
        .collect()
}

#[test]
fn processes_in_containers_are_named_by_container_and_pod() {
    let in_pod_id = container_id("pod");
    let stateless_id = container_id("stateless");
    let kubepods = Cgroup::new();
    let in_pod = kubepods.child(&format!("cri-containerd-{in_pod_id}.scope"));
    let stateless = kubepods.child(&format!("crio-{stateless_id}.scope"));
    let state = tempfile::tempdir().expect("state root");
    let containerd = state.path().join("containerd");
    write_containerd_bundle(&containerd, &in_pod_id);
    let files = tempfile::tempdir().expect("output dir");
    let text = files.path().join("text.out");
    let pcapng = files.path().join("trace.pcapng");
    let dnstap = files.path().join("trace.dnstap");

    let mut tracer = Tracer::start_printing(
        [
            "--containerd-state".as_ref(),
            containerd.as_os_str(),
            // CRI-O's state root does not exist: names stay unknown.
            "--crio-state".as_ref(),
            state.path().join("crio").as_os_str(),
            "-w".as_ref(),
            pcapng.as_os_str(),
            "--dnstap".as_ref(),
            dnstap.as_os_str(),
        ],
        &text,
    );
    let names: Vec<String> = ["in-pod", "stateless", "host"]
        .map(|role| format!("{}.example.test.", unique_name(role)))
        .into();
    let clients = [
        client(Some(&in_pod), &names[0]),
        client(Some(&stateless), &names[1]),
        client(None, &names[2]),
    ];
    let pids: Vec<u32> = clients.iter().map(Daemon::pid).collect();
    for name in &names {
        tracer.wait_for_line(name, |line| {
            line["kind"] == "message" && line["qname"] == name.as_str()
        });
    }
    let trace = tracer.stop();
    drop(clients);
    drop((stateless, in_pod));

    let in_pod_container = json!({
        "id": in_pod_id,
        "runtime": "containerd",
        "name": "app",
        "image": "registry.test/web:1",
    });
    let pod = json!({"name": "web-0", "namespace": "shop", "uid": POD_UID});
    let stateless_container = json!({
        "id": stateless_id,
        "runtime": "cri-o",
        "name": null,
        "image": null,
    });
    for (pid, expected) in [
        (pids[0], (in_pod_container.clone(), pod.clone())),
        (pids[1], (stateless_container, Value::Null)),
        (pids[2], (Value::Null, Value::Null)),
    ] {
        for kind in ["message", "attempt", "lookup"] {
            let found = identities(&trace.lines, kind, pid);
            assert!(!found.is_empty(), "no {kind} of pid {pid}");
            for identity in found {
                assert_eq!(identity, expected, "{kind} of pid {pid}");
            }
        }
    }
    // No error per message for the container whose state is missing.
    assert!(
        trace
            .stderr
            .iter()
            .all(|line| !line.contains(&stateless_id) && !line.contains("config.json")),
        "{:?}",
        trace.stderr
    );

    // Text names the process in the pod by namespace, pod and container.
    let printed = fs::read_to_string(&text).expect("text output");
    let lookup_line = format!("{:<7} shop/web-0/app ", pids[0]);
    assert!(
        printed.contains(&lookup_line),
        "{lookup_line:?} in:\n{printed}"
    );

    // pcapng comments and dnstap's extra carry the identity, and analyze
    // reads it back.
    for file in [&pcapng, &dnstap] {
        readable_by_all(file);
        let analyzed = analyzed_whole(&[file]);
        let read_back = identities(&analyzed.lines, "message", pids[0]);
        assert!(!read_back.is_empty(), "analyze of {file:?} lost the pid");
        for identity in read_back {
            assert_eq!(
                identity,
                (in_pod_container.clone(), pod.clone()),
                "{file:?}"
            );
        }
        let host = identities(&analyzed.lines, "lookup", pids[2]);
        assert!(
            !host.is_empty(),
            "analyze of {file:?} lost the host process"
        );
        assert!(
            host.iter()
                .all(|identity| *identity == (Value::Null, Value::Null))
        );
    }
}
