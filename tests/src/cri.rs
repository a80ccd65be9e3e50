//! A Kubernetes node without an API server: Debian's containerd with its CRI
//! plugin, runc, and CNI's bridge plugin, driven through the CRI gRPC API
//! the way kubelet drives it. containerd then writes the real
//! `io.kubernetes.cri.*` annotations and puts each pod where kubelet's
//! cgroupfs driver would (`/kubepods/besteffort/pod<uid>/<container id>`).
//!
//! Everything lives in a temporary directory: containerd's root, state and
//! socket, its image store, the CNI configuration and the pods' logs. Pods
//! share a bridge with no address, so they reach each other and nothing
//! else. Images are built from scratch with buildah from binaries on this
//! host, and imported with `ctr`: nothing is pulled from a registry.

use std::{
    collections::HashMap,
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    sync::{Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use k8s_cri::v1::{self as cri, runtime_service_client::RuntimeServiceClient as Client};
use tempfile::TempDir;
use tonic::transport::{Channel, Endpoint};

use crate::{
    process::{Daemon, PATIENCE, run},
    unique_name,
};

/// The image every pod's sandbox runs: a static `pause`.
const PAUSE_IMAGE: &str = "localhost/dnstrace-test/pause:1";

pub struct Node {
    dir: TempDir,
    containerd: Option<Daemon>,
    runtime: tokio::runtime::Runtime,
    client: Client<Channel>,
    sandboxes: Vec<String>,
    _exclusive: MutexGuard<'static, ()>,
}

static NODES: Mutex<()> = Mutex::new(());

/// What kubelet would take from a pod's spec for its sandbox.
pub struct PodSpec<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    /// `hostPID: true`.
    pub host_pid: bool,
    /// The pod's resolv.conf: nameservers, search domains, options.
    pub dns: Option<cri::DnsConfig>,
}

pub struct Pod {
    pub id: String,
    /// CreateContainer takes it again, as kubelet sends it.
    config: cri::PodSandboxConfig,
    pub uid: String,
    pub ip: Ipv4Addr,
    /// The network namespace CNI made for it (`/var/run/netns/cni-…`).
    pub netns: PathBuf,
    host_pid: bool,
    log_dir: PathBuf,
}

/// What kubelet would take from a container's spec.
#[derive(Default)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub args: Vec<String>,
    pub envs: Vec<(String, String)>,
    /// Host path, container path, read-only.
    pub mounts: Vec<(String, String, bool)>,
    pub add_capabilities: Vec<String>,
    pub drop_capabilities: Vec<String>,
    pub privileged: bool,
    pub readonly_rootfs: bool,
    pub run_as_user: Option<i64>,
    /// The runtime's default seccomp profile, as `RuntimeDefault` asks.
    pub seccomp_runtime_default: bool,
}

pub struct Container {
    pub id: String,
    pub log: PathBuf,
}

impl Node {
    /// Starts containerd on a socket of its own and imports the pause image.
    pub fn start() -> Self {
        clean_up_stale_nodes();
        let dir = tempfile::Builder::new()
            .prefix(&unique_name("node"))
            .tempdir_in("/tmp")
            .expect("node directory");
        // One node at a time per test process: they would share a bridge.
        let exclusive = NODES.lock().unwrap_or_else(PoisonError::into_inner);
        // A bridge name is at most 15 bytes; the pid makes it ours alone.
        let bridge = format!("dtcni{}", std::process::id());
        fs::write(dir.path().join("bridge"), &bridge).unwrap();
        let cni = dir.path().join("cni");
        fs::create_dir_all(&cni).unwrap();
        fs::write(
            cni.join("10-dnstrace-test.conflist"),
            serde_json::json!({
                "cniVersion": "0.4.0",
                "name": "dnstrace-test",
                "plugins": [
                    {
                        "type": "bridge",
                        "bridge": bridge,
                        "isGateway": false,
                        "ipMasq": false,
                        "ipam": {
                            "type": "host-local",
                            "dataDir": dir.path().join("ipam"),
                            "ranges": [[{"subnet": "10.253.200.0/24"}]],
                        },
                    },
                    {"type": "loopback"},
                ],
            })
            .to_string(),
        )
        .unwrap();
        let socket = dir.path().join("containerd.sock");
        let config = dir.path().join("config.toml");
        fs::write(
            &config,
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  disable_apparmor = true
  # Lowering a sandbox's oom_score_adj (kubelet asks -998) takes
  # CAP_SYS_RESOURCE, which a CI sandbox may not grant.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
"#,
                root = dir.path().join("root").display(),
                state = dir.path().join("state").display(),
                socket = socket.display(),
                cni = cni.display(),
            ),
        )
        .unwrap();
        let containerd = Daemon::spawn(
            "containerd",
            Command::new("containerd").arg("--config").arg(&config),
        );
        let deadline = Instant::now() + PATIENCE;
        while !socket.exists() {
            assert!(Instant::now() < deadline, "containerd made no socket");
            std::thread::sleep(Duration::from_millis(50));
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = runtime.block_on(connect(&socket));
        let node = Self {
            dir,
            containerd: Some(containerd),
            runtime,
            client,
            sandboxes: Vec::new(),
            _exclusive: exclusive,
        };
        let pause = node.dir.path().join("pause");
        run(Command::new("musl-gcc")
            .args(["-static", "-Os", "-x", "c", "-o"])
            .arg(&pause)
            .arg(node.write("pause.c", PAUSE_SOURCE)));
        node.build_image(PAUSE_IMAGE, &[(&pause, "/pause")], &["/pause"]);
        node
    }

    /// containerd's state directory: what `/run/containerd` is on a node.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Where containerd keeps each running task's bundle (config.json):
    /// what dnstrace's `--containerd-state` names.
    pub fn task_state_root(&self) -> PathBuf {
        self.state_dir().join("io.containerd.runtime.v2.task")
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        fs::write(&path, contents).unwrap();
        path
    }

    fn ctr(&self) -> Command {
        let mut command = Command::new("ctr");
        command
            .arg("--address")
            .arg(self.dir.path().join("containerd.sock"))
            .args(["--namespace", "k8s.io"]);
        command
    }

    /// Imports an OCI archive (`cargo xtask image` writes one).
    pub fn import_image(&self, archive: &Path) {
        run(self
            .ctr()
            .args(["images", "import", "--all-platforms"])
            .arg(archive));
    }

    /// Builds an image `reference` from scratch holding `files` (host path,
    /// path in the image) and the shared libraries they link, then imports
    /// it.
    pub fn build_image(&self, reference: &str, files: &[(&Path, &str)], entrypoint: &[&str]) {
        let storage = self.dir.path().join("buildah");
        let buildah = || {
            let mut command = Command::new("buildah");
            command
                .arg("--storage-driver=vfs")
                .arg("--root")
                .arg(storage.join("root"))
                .arg("--runroot")
                .arg(storage.join("run"));
            command
        };
        let container = run(buildah().args(["from", "scratch"])).trim().to_owned();
        let mut copies: HashMap<PathBuf, String> = HashMap::new();
        for (host, inside) in files {
            copies.insert(host.to_path_buf(), (*inside).to_owned());
            for library in shared_libraries(host) {
                let inside = library.display().to_string();
                copies.insert(library, inside);
            }
        }
        for (host, inside) in &copies {
            run(buildah().arg("copy").arg(&container).arg(host).arg(inside));
        }
        run(buildah()
            .arg("config")
            .arg("--entrypoint")
            .arg(serde_json::to_string(entrypoint).unwrap())
            .arg(&container));
        run(buildah().args(["commit", "--quiet", &container, reference]));
        let archive = self
            .dir
            .path()
            .join(format!("{}.tar", reference.replace(['/', ':'], "_")));
        run(buildah()
            .arg("push")
            .arg(reference)
            .arg(format!("oci-archive:{}:{reference}", archive.display())));
        run(buildah().args(["rm", &container]));
        self.import_image(&archive);
    }

    /// RunPodSandbox, then its status for the address CNI gave it.
    pub fn run_pod(&mut self, spec: &PodSpec<'_>) -> Pod {
        // A UUID, as the API server gives: dnstrace looks for one in the
        // cgroup path. The test's pid makes it unique across runs.
        let uid = format!(
            "{:08x}-0000-4000-8000-{:012x}",
            std::process::id(),
            self.sandboxes.len()
        );
        let log_dir = self.dir.path().join("pods").join(&uid);
        fs::create_dir_all(&log_dir).unwrap();
        let node_or_pod = |host| {
            if host {
                cri::NamespaceMode::Node as i32
            } else {
                cri::NamespaceMode::Pod as i32
            }
        };
        let config = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: spec.name.into(),
                uid: uid.clone(),
                namespace: spec.namespace.into(),
                attempt: 0,
            }),
            hostname: spec.name.into(),
            log_directory: log_dir.display().to_string(),
            dns_config: spec.dns.clone(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: format!("/kubepods/besteffort/pod{uid}"),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: cri::NamespaceMode::Pod as i32,
                        pid: node_or_pod(spec.host_pid),
                        ipc: cri::NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut client = self.client.clone();
        let id = self
            .runtime
            .block_on(client.run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            }))
            .unwrap_or_else(|e| panic!("RunPodSandbox {}: {e}", spec.name))
            .into_inner()
            .pod_sandbox_id;
        self.sandboxes.push(id.clone());
        append_line(&self.dir.path().join("pod-uids"), &uid);
        let status = self
            .runtime
            .block_on(client.pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.clone(),
                verbose: true,
            }))
            .expect("PodSandboxStatus")
            .into_inner();
        let info: serde_json::Value =
            serde_json::from_str(status.info.get("info").expect("verbose status has info"))
                .expect("info is JSON");
        let netns = info["runtimeSpec"]["linux"]["namespaces"]
            .as_array()
            .expect("the sandbox's namespaces")
            .iter()
            .find(|namespace| namespace["type"] == "network")
            .and_then(|namespace| namespace["path"].as_str())
            .map(PathBuf::from)
            .expect("the sandbox has a network namespace of its own");
        append_line(&self.dir.path().join("netns"), &netns.display().to_string());
        let status = status.status.expect("a sandbox status");
        let ip = status.network.map(|network| network.ip).unwrap_or_default();
        let ip = ip
            .parse()
            .unwrap_or_else(|e| panic!("pod {} has no IPv4 address ({ip:?}): {e}", spec.name));
        Pod {
            id,
            config,
            uid,
            ip,
            netns,
            host_pid: spec.host_pid,
            log_dir,
        }
    }

    /// CreateContainer and StartContainer in `pod`.
    pub fn start_container(&self, pod: &Pod, spec: &ContainerSpec) -> Container {
        let log = format!("{}.log", spec.name);
        let seccomp = spec.seccomp_runtime_default.then(|| cri::SecurityProfile {
            profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
            localhost_ref: String::new(),
        });
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: spec.name.clone(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: spec.image.clone(),
                ..Default::default()
            }),
            args: spec.args.clone(),
            envs: spec
                .envs
                .iter()
                .map(|(key, value)| cri::KeyValue {
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect(),
            mounts: spec
                .mounts
                .iter()
                .map(|(host, inside, readonly)| cri::Mount {
                    host_path: host.clone(),
                    container_path: inside.clone(),
                    readonly: *readonly,
                    ..Default::default()
                })
                .collect(),
            log_path: log.clone(),
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext {
                    capabilities: Some(cri::Capability {
                        add_capabilities: spec.add_capabilities.clone(),
                        drop_capabilities: spec.drop_capabilities.clone(),
                        add_ambient_capabilities: Vec::new(),
                    }),
                    privileged: spec.privileged,
                    namespace_options: Some(cri::NamespaceOption {
                        network: cri::NamespaceMode::Pod as i32,
                        pid: if pod.host_pid {
                            cri::NamespaceMode::Node as i32
                        } else {
                            cri::NamespaceMode::Container as i32
                        },
                        ipc: cri::NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    run_as_user: spec.run_as_user.map(|value| cri::Int64Value { value }),
                    readonly_rootfs: spec.readonly_rootfs,
                    seccomp,
                    ..Default::default()
                }),
                // containerd 1.6 reads these without checking that they
                // are there; kubelet always sends them.
                resources: Some(cri::LinuxContainerResources::default()),
            }),
            ..Default::default()
        };
        let mut client = self.client.clone();
        let id = self
            .runtime
            .block_on(client.create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.id.clone(),
                config: Some(config),
                sandbox_config: Some(pod.config.clone()),
            }))
            .unwrap_or_else(|e| panic!("CreateContainer {}: {e}", spec.name))
            .into_inner()
            .container_id;
        self.runtime
            .block_on(client.start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            }))
            .unwrap_or_else(|e| panic!("StartContainer {}: {e}", spec.name));
        Container {
            id,
            log: pod.log_dir.join(log),
        }
    }

    /// The container's host pid, from the runtime's status.
    pub fn pid_of(&self, container: &Container) -> u32 {
        let mut client = self.client.clone();
        let info = self
            .runtime
            .block_on(client.container_status(cri::ContainerStatusRequest {
                container_id: container.id.clone(),
                verbose: true,
            }))
            .expect("ContainerStatus")
            .into_inner()
            .info;
        let info: serde_json::Value =
            serde_json::from_str(info.get("info").expect("verbose status has info"))
                .expect("info is JSON");
        info["pid"].as_u64().expect("a running container has a pid") as u32
    }

    /// Waits until the container exits; returns its exit code.
    pub fn wait_exit(&self, container: &Container, patience: Duration) -> i32 {
        let deadline = Instant::now() + patience;
        let mut client = self.client.clone();
        loop {
            let status = self
                .runtime
                .block_on(client.container_status(cri::ContainerStatusRequest {
                    container_id: container.id.clone(),
                    verbose: false,
                }))
                .expect("ContainerStatus")
                .into_inner()
                .status
                .expect("a container status");
            if status.state == cri::ContainerState::ContainerExited as i32 {
                return status.exit_code;
            }
            assert!(
                Instant::now() < deadline,
                "container {} still runs after {patience:?}; its log:\n{}",
                container.id,
                log_lines(container).join("\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// StopContainer: SIGTERM, then SIGKILL after `grace`.
    pub fn stop_container(&self, container: &Container, grace: Duration) {
        let mut client = self.client.clone();
        self.runtime
            .block_on(client.stop_container(cri::StopContainerRequest {
                container_id: container.id.clone(),
                timeout: grace.as_secs() as i64,
            }))
            .expect("StopContainer");
    }
}

/// What the container wrote, one entry per line, without the CRI log
/// format's timestamp, stream and tag.
pub fn log_lines(container: &Container) -> Vec<String> {
    fs::read_to_string(&container.log)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.splitn(4, ' ').nth(3).map(str::to_owned))
        .collect()
}

impl Drop for Node {
    fn drop(&mut self) {
        let mut client = self.client.clone();
        for id in self.sandboxes.drain(..) {
            let stopped =
                self.runtime
                    .block_on(client.stop_pod_sandbox(cri::StopPodSandboxRequest {
                        pod_sandbox_id: id.clone(),
                    }));
            let removed =
                self.runtime
                    .block_on(client.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                        pod_sandbox_id: id.clone(),
                    }));
            if let Err(error) = stopped.and(removed) {
                eprintln!("cri: pod {id} not removed: {error}");
            }
        }
        drop(self.containerd.take());
        clean_up(self.dir.path());
    }
}

/// What a node leaves behind when containerd could not remove its pods (a
/// test that panicked, or was killed): shims, their mounts, the bridge.
fn clean_up(dir: &Path) {
    let address = dir.join("containerd.sock").display().to_string();
    let config = dir.join("config.toml").display().to_string();
    let _ = Command::new("pkill")
        .args(["-KILL", "-f", &format!("containerd --config {config}")])
        .status();
    let _ = Command::new("pkill")
        .args([
            "-KILL",
            "-f",
            &format!("containerd-shim.* -address {address}"),
        ])
        .status();
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let prefix = format!("{}/", dir.display());
    let mut under: Vec<&str> = mounts
        .lines()
        .filter_map(|line| line.split(' ').nth(1))
        .filter(|point| point.starts_with(&prefix))
        .collect();
    // Deepest first.
    under.sort_by_key(|point| std::cmp::Reverse(point.len()));
    for point in under {
        let _ = Command::new("umount").args(["--lazy", point]).status();
    }
    // Pods' cgroups: their processes first (a pause whose shim died),
    // then the directories, deepest first, in every hierarchy.
    let pods = dir.join("pod-uids");
    for uid in fs::read_to_string(&pods).unwrap_or_default().lines() {
        for hierarchy in fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            for root in [hierarchy.path(), PathBuf::from("/sys/fs/cgroup")] {
                let pod = root.join(format!("kubepods/besteffort/pod{uid}"));
                remove_cgroup(&pod);
            }
        }
    }
    // containerd removes them with their pods; these are what it left.
    for netns in fs::read_to_string(dir.join("netns"))
        .unwrap_or_default()
        .lines()
        .filter(|netns| Path::new(netns).exists())
    {
        let _ = Command::new("umount")
            .args(["--lazy", netns])
            .stderr(std::process::Stdio::null())
            .status();
        let _ = fs::remove_file(netns);
    }
    let bridge = fs::read_to_string(dir.join("bridge")).unwrap_or_default();
    let _ = Command::new("ip")
        .args(["link", "delete", &bridge])
        .stderr(std::process::Stdio::null())
        .status();
    let _ = fs::remove_dir_all(dir);
}

/// Kills what is left in a cgroup and its children, then removes them.
fn remove_cgroup(cgroup: &Path) {
    let Ok(children) = fs::read_dir(cgroup) else {
        return;
    };
    for child in children.flatten().filter(|c| c.path().is_dir()) {
        remove_cgroup(&child.path());
    }
    for pid in fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|pid| pid.parse::<i32>().ok())
    {
        // SAFETY: a plain kill of a process the test's runtime started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    crate::process::poll_until("a killed pod's processes to go", PATIENCE, || {
        fs::read_to_string(cgroup.join("cgroup.procs")).is_ok_and(|procs| procs.trim().is_empty())
            || !cgroup.exists()
    });
    let _ = fs::remove_dir(cgroup);
}

/// Nodes of test runs that were killed before they could clean up.
fn clean_up_stale_nodes() {
    for entry in fs::read_dir("/tmp").into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        // unique_name("node") plus tempfile's random suffix.
        let Some(at) = name.find("-node") else {
            continue;
        };
        if crate::is_stale_name(&name[..at + "-node".len()]) {
            clean_up(&entry.path());
        }
    }
}

async fn connect(socket: &Path) -> Client<Channel> {
    let socket = socket.to_path_buf();
    // The URI is a placeholder: every connection goes to the socket.
    let channel = Endpoint::try_from("http://[::1]:50051")
        .expect("a valid placeholder URI")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .expect("connect to containerd's CRI socket");
    Client::new(channel)
}

/// Notes what [`clean_up`] must remove if containerd cannot.
fn append_line(file: &Path, line: &str) {
    use std::io::Write as _;
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .expect("note for clean-up");
    writeln!(file, "{line}").expect("note for clean-up");
}

/// The shared libraries `binary` loads, with the loader, as ldd lists
/// them; none for a static binary.
fn shared_libraries(binary: &Path) -> Vec<PathBuf> {
    let output = Command::new("ldd").arg(binary).output().expect("ldd runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            line.split_whitespace()
                .find(|word| word.starts_with('/'))
                .map(PathBuf::from)
        })
        .collect()
}

const PAUSE_SOURCE: &str = r#"#include <signal.h>
#include <unistd.h>
static void stop(int signal) { (void)signal; _exit(0); }
int main(void) {
    signal(SIGTERM, stop);
    signal(SIGINT, stop);
    for (;;) pause();
}
"#;
