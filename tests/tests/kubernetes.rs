//! The Kubernetes manifests in deploy/kubernetes: they validate strictly
//! against a current Kubernetes schema (offline, with the
//! `kubernetes-validate` package), the kustomization names each of them, and
//! the DaemonSet keeps the promises docs/kubernetes.md makes about it.

use std::{
    fs,
    path::PathBuf,
    process::{Command, Output},
};

use dnstrace_tests::kubernetes::{manifests_dir, yaml_as_json};

/// The Kubernetes version the manifests are checked against.
const KUBERNETES_VERSION: &str = "1.37.0";

/// The manifests `kubectl apply -k` applies: every YAML file but the
/// kustomization itself (examples/ holds resources of other projects' CRDs).
fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(manifests_dir())
        .expect("deploy/kubernetes exists")
        .map(|entry| entry.expect("readable directory").path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .filter(|path| path.file_name().is_some_and(|n| n != "kustomization.yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "too few manifests: {files:?}");
    files
}

fn validate(files: &[PathBuf]) -> Output {
    Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
        .args(files)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run kubernetes-validate ({e}); scripts/setup.sh installs it")
        })
}

#[test]
fn every_manifest_validates_strictly() {
    let files = manifests();
    let output = validate(&files);
    let report = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "validation failed:\n{report}");
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy();
        assert!(
            report
                .lines()
                .any(|line| line.contains(&*name) && line.contains("passed for resource")),
            "{name} was not validated against a schema:\n{report}"
        );
    }
}

/// The check above can fail: a field the schema does not know is refused.
#[test]
fn strict_validation_refuses_a_misspelt_field() {
    let daemonset = fs::read_to_string(manifests_dir().join("daemonset.yaml")).unwrap();
    let misspelt = daemonset.replacen("hostPID: true", "hostPid: true", 1);
    assert_ne!(daemonset, misspelt, "the DaemonSet sets hostPID");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("daemonset.yaml");
    fs::write(&file, misspelt).unwrap();
    let output = validate(&[file]);
    assert!(
        !output.status.success(),
        "an unknown field passed strict validation"
    );
}

#[test]
fn the_kustomization_applies_every_manifest() {
    let kustomization = yaml_as_json(&manifests_dir().join("kustomization.yaml"));
    let mut listed: Vec<&str> = kustomization["resources"]
        .as_array()
        .expect("resources is a list")
        .iter()
        .map(|r| r.as_str().expect("a file name"))
        .collect();
    listed.sort_unstable();
    let files = manifests();
    let present: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(listed, present);
}

#[test]
fn the_daemonset_is_not_privileged_and_adds_only_measured_capabilities() {
    let daemonset = yaml_as_json(&manifests_dir().join("daemonset.yaml"));
    let pod = &daemonset["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true);
    assert!(pod.get("hostNetwork").is_none(), "no host network needed");
    let [container] = pod["containers"].as_array().unwrap().as_slice() else {
        panic!("one container");
    };
    let security = &container["securityContext"];
    assert_eq!(security["privileged"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let added: Vec<&str> = security["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(added, dnstrace_tests::kubernetes::AGENT_CAPABILITIES);
    for mount in container["volumeMounts"].as_array().unwrap() {
        assert_eq!(mount["readOnly"], true, "{mount} is read-only");
    }
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(container[probe]["httpGet"]["port"], "metrics", "{probe}");
    }
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
}
