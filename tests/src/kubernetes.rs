//! What the Kubernetes tests share: the manifests in deploy/kubernetes, and
//! the DaemonSet's pod spec translated to CRI as kubelet translates it.

use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

use crate::{cri::ContainerSpec, workspace_dir};

/// The capabilities the DaemonSet adds after dropping ALL, in its order:
/// what the agent was measured to need (docs/kubernetes.md).
pub const AGENT_CAPABILITIES: &[&str] = &["BPF", "PERFMON", "NET_ADMIN", "SYS_PTRACE"];

pub fn manifests_dir() -> PathBuf {
    workspace_dir().join("deploy/kubernetes")
}

/// A YAML file as JSON, through PyYAML (which kubernetes-validate brings).
pub fn yaml_as_json(file: &Path) -> Value {
    let output = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(file)
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "cannot read {}: {}",
        file.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("PyYAML writes JSON")
}

/// The image the kustomization gives the DaemonSet, `name:tag`.
pub fn agent_image() -> String {
    let kustomization = yaml_as_json(&manifests_dir().join("kustomization.yaml"));
    let [image] = kustomization["images"]
        .as_array()
        .expect("images")
        .as_slice()
    else {
        panic!("one image in the kustomization");
    };
    format!(
        "{}:{}",
        image["newName"].as_str().expect("newName"),
        image["newTag"].as_str().expect("newTag")
    )
}

/// The DaemonSet's one container as kubelet would hand it to the runtime
/// in a pod whose address is `pod_ip`: `$(VAR)` in its arguments expanded
/// from its environment, its hostPath volumes mounted where its
/// volumeMounts say, its security context as is. The test node's
/// containerd keeps its state in `containerd_state`, not /run/containerd,
/// so that volume's host path is that.
pub fn agent_container(pod_ip: Ipv4Addr, containerd_state: &Path) -> ContainerSpec {
    let daemonset = yaml_as_json(&manifests_dir().join("daemonset.yaml"));
    let pod = &daemonset["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let env: Vec<(String, String)> = container["env"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|var| {
            let name = var["name"].as_str().expect("env name").to_owned();
            let value = match var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some("status.podIP") => pod_ip.to_string(),
                Some(other) => panic!("no translation for fieldRef {other}"),
                None => var["value"].as_str().unwrap_or_default().to_owned(),
            };
            (name, value)
        })
        .collect();
    let expand = |arg: &str| {
        env.iter().fold(arg.to_owned(), |arg, (name, value)| {
            arg.replace(&format!("$({name})"), value)
        })
    };
    let strings = |value: &Value| -> Vec<String> {
        value
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|s| s.as_str().expect("a string").to_owned())
            .collect()
    };
    let volumes = pod["volumes"].as_array().expect("volumes");
    let mounts = container["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .map(|mount| {
            let volume = volumes
                .iter()
                .find(|v| v["name"] == mount["name"])
                .expect("each mount names a volume");
            let mut host = volume["hostPath"]["path"]
                .as_str()
                .expect("hostPath volumes only");
            if host == "/run/containerd" {
                host = containerd_state.to_str().expect("a UTF-8 path");
            }
            if volume["hostPath"]["type"] == "DirectoryOrCreate" {
                fs::create_dir_all(host).expect("kubelet creates DirectoryOrCreate paths");
            }
            (
                host.to_owned(),
                mount["mountPath"].as_str().expect("mountPath").to_owned(),
                mount["readOnly"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    let security = &container["securityContext"];
    ContainerSpec {
        name: container["name"].as_str().expect("a name").to_owned(),
        image: agent_image(),
        args: strings(&container["args"])
            .iter()
            .map(|a| expand(a))
            .collect(),
        envs: env.clone(),
        mounts,
        add_capabilities: strings(&security["capabilities"]["add"]),
        drop_capabilities: strings(&security["capabilities"]["drop"]),
        privileged: security["privileged"].as_bool().unwrap_or(false),
        readonly_rootfs: security["readOnlyRootFilesystem"]
            .as_bool()
            .unwrap_or(false),
        run_as_user: security["runAsUser"].as_i64(),
        seccomp_runtime_default: security["seccompProfile"]["type"] == "RuntimeDefault",
    }
}

/// Whether the DaemonSet's pod shares the host's pid namespace.
pub fn agent_host_pid() -> bool {
    let daemonset = yaml_as_json(&manifests_dir().join("daemonset.yaml"));
    daemonset["spec"]["template"]["spec"]["hostPID"] == true
}
