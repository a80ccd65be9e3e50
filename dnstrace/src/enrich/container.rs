//! Which container and pod a process runs in: its cgroup path names the
//! container, and the runtime's own state on the node names the pod
//! (docs/architecture.md). No API server is asked.

use std::{
    collections::HashMap,
    fs,
    io::Read,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use super::confined::Root;
use crate::message::{Container, Pod, Runtime};

/// Where the runtimes keep their state (configurable: in a DaemonSet they
/// are host paths mounted elsewhere).
#[derive(Clone, Debug)]
pub struct StateRoots {
    /// containerd's task bundles: `<root>/<namespace>/<id>/config.json`.
    pub containerd: PathBuf,
    /// CRI-O's containers: `<root>/<id>/userdata/config.json`.
    pub crio: PathBuf,
}

/// A container as its cgroup path names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupContainer {
    pub id: String,
    pub runtime: Option<Runtime>,
    /// The pod's uid, when the path holds it (`pod<uid>`).
    pub pod_uid: Option<String>,
}

/// The container named by a cgroup path, looking at its ancestors too (a
/// process may sit in a child cgroup of its container's).
pub fn recognise(path: &str) -> Option<CgroupContainer> {
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let pod_uid = components.iter().find_map(|c| pod_uid_in(c));
    components
        .iter()
        .rev()
        .enumerate()
        .find_map(|(depth, component)| {
            let parent = components
                .len()
                .checked_sub(depth + 2)
                .map(|i| components[i]);
            container_in(component, parent).map(|(id, runtime)| CgroupContainer {
                id: id.to_string(),
                runtime,
                pod_uid: pod_uid.clone(),
            })
        })
}

/// One path component: `cri-containerd-<id>.scope`, `crio-<id>.scope`,
/// `docker-<id>.scope`, `libpod-<id>.scope`, `…:cri-containerd:<id>`, or
/// a bare id under `pod<uid>` (the cgroupfs driver).
fn container_in<'a>(
    component: &'a str,
    parent: Option<&str>,
) -> Option<(&'a str, Option<Runtime>)> {
    const SCOPES: [(&str, Runtime); 4] = [
        ("cri-containerd-", Runtime::Containerd),
        ("crio-", Runtime::CriO),
        ("docker-", Runtime::Docker),
        ("libpod-", Runtime::Podman),
    ];
    if let Some((_, id)) = component.rsplit_once(":cri-containerd:") {
        return is_container_id(id).then_some((id, Some(Runtime::Containerd)));
    }
    if let Some((_, id)) = component.rsplit_once(":crio:") {
        return is_container_id(id).then_some((id, Some(Runtime::CriO)));
    }
    let name = component.strip_suffix(".scope").unwrap_or(component);
    for (prefix, runtime) in SCOPES {
        // conmon, the monitor CRI-O and podman start beside a container,
        // is not the container: its id follows `crio-conmon-`.
        if let Some(id) = name.strip_prefix(prefix)
            && is_container_id(id)
        {
            return Some((id, Some(runtime)));
        }
    }
    // The cgroupfs driver: /kubepods/<qos>/pod<uid>/<id>, runtime unknown
    // until its state is found.
    (parent.is_some_and(|p| pod_uid_in(p).is_some()) && is_container_id(component))
        .then_some((component, None))
}

/// `pod<uid>` (cgroupfs) or `kubepods-<qos>-pod<uid_with_underscores>.slice`
/// (systemd).
fn pod_uid_in(component: &str) -> Option<String> {
    let component = component.split(':').next().unwrap_or(component);
    let name = component.strip_suffix(".slice").unwrap_or(component);
    let uid = name
        .rsplit_once("-pod")
        .map_or_else(|| name.strip_prefix("pod"), |(_, uid)| Some(uid))?;
    let uid = uid.replace('_', "-");
    let looks_like_uid = uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    looks_like_uid.then_some(uid)
}

pub fn is_container_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The cgroup v2 path of cgroup `id` (its directory's inode), relative to
/// the hierarchy's root `mount`, or `None` when it is gone.
pub fn cgroup_path(mount: &Path, id: u64, hint: Option<&str>) -> Option<String> {
    /// A host with more cgroups than this is not searched further.
    const MAX_DIRECTORIES: usize = 100_000;
    if let Some(hint) = hint {
        let candidate = mount.join(hint.trim_start_matches('/'));
        if fs::metadata(&candidate).is_ok_and(|m| m.ino() == id) {
            return Some(hint.to_string());
        }
    }
    let mut pending = vec![mount.to_path_buf()];
    let mut seen = 0;
    while let Some(directory) = pending.pop() {
        for entry in fs::read_dir(&directory).into_iter().flatten().flatten() {
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            if !metadata.is_dir() {
                continue;
            }
            if metadata.ino() == id {
                let relative = entry.path();
                let relative = relative.strip_prefix(mount).ok()?;
                return Some(format!("/{}", relative.display()));
            }
            seen += 1;
            if seen >= MAX_DIRECTORIES {
                return None;
            }
            pending.push(entry.path());
        }
    }
    None
}

/// The cgroup paths `/proc/PID/cgroup` lists: the v2 one (`0::…`) first,
/// then the v1 ones, where a runtime on a hybrid host may have put the
/// container alone.
pub fn proc_cgroup_paths(pid: u32) -> Vec<String> {
    let mut text = String::new();
    let read = fs::File::open(format!("/proc/{pid}/cgroup"))
        .and_then(|file| file.take(64 << 10).read_to_string(&mut text));
    if read.is_err() {
        return Vec::new();
    }
    let mut paths: Vec<(bool, String)> = text
        .lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ':');
            let hierarchy = fields.next()?;
            let path = fields.nth(1)?;
            Some((hierarchy != "0", path.to_string()))
        })
        .collect();
    paths.sort_by_key(|(v1, _)| *v1);
    paths.into_iter().map(|(_, path)| path).collect()
}

/// What dnstrace reads of a runtime's state: the OCI spec's annotations,
/// and where the container's cgroup is (for the pod filters).
#[derive(Deserialize)]
struct Spec {
    #[serde(default)]
    annotations: HashMap<String, String>,
    #[serde(default)]
    linux: Option<LinuxSpec>,
}

#[derive(Deserialize)]
struct LinuxSpec {
    #[serde(rename = "cgroupsPath", default)]
    cgroups_path: Option<String>,
}

/// A container as its runtime's state describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stated {
    pub id: String,
    pub runtime: Runtime,
    /// The container's name (`None` for a pod's sandbox).
    pub name: Option<String>,
    pub pod: Pod,
    /// Its cgroup v2 directory, relative to the hierarchy's mount.
    pub cgroup: Option<String>,
}

/// Where one container's state is: the runtime and the config.json's path
/// inside that runtime's root.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StateEntry {
    pub id: String,
    pub runtime: Runtime,
    path: String,
}

/// The containers whose state is in `roots` now, at most `cap` of them.
pub fn list_state(roots: &StateRoots, cap: usize) -> Vec<StateEntry> {
    let mut found = Vec::new();
    if let Ok(root) = Root::open(&roots.containerd) {
        for namespace in root.list("/", MAX_NAMESPACES).unwrap_or_default() {
            let left = cap.saturating_sub(found.len());
            for id in root
                .list(&format!("/{namespace}"), left)
                .unwrap_or_default()
            {
                if is_container_id(&id) {
                    let path = format!("/{namespace}/{id}/config.json");
                    let runtime = Runtime::Containerd;
                    found.push(StateEntry { id, runtime, path });
                }
            }
        }
    }
    if let Ok(root) = Root::open(&roots.crio) {
        let left = cap.saturating_sub(found.len());
        for id in root.list("/", left).unwrap_or_default() {
            if is_container_id(&id) {
                let path = format!("/{id}/userdata/config.json");
                found.push(StateEntry {
                    id,
                    runtime: Runtime::CriO,
                    path,
                });
            }
        }
    }
    found
}

/// What `entry`'s state says, when it can be read.
pub fn read_state(entry: &StateEntry, roots: &StateRoots) -> Option<Stated> {
    let root = match entry.runtime {
        Runtime::CriO => &roots.crio,
        _ => &roots.containerd,
    };
    let bytes = Root::open(root).ok()?.read(&entry.path, MAX_CONFIG).ok()?;
    let spec = serde_json::from_slice::<Spec>(&bytes).ok()?;
    let names = Names::from_annotations(entry.runtime, &spec.annotations);
    Some(Stated {
        id: entry.id.clone(),
        runtime: entry.runtime,
        name: names.container,
        pod: names.pod,
        cgroup: spec
            .linux
            .and_then(|linux| linux.cgroups_path)
            .and_then(|path| cgroup_dir(&path)),
    })
}

/// The cgroup directory an OCI `cgroupsPath` names, relative to the v2
/// mount: a path (the cgroupfs driver), or `slice:prefix:name` (the
/// systemd driver), where slice `a-b-c.slice` sits in
/// `a.slice/a-b.slice/` and the container in `prefix-name.scope`. On a
/// hybrid host runc puts a container at the same path in v2.
pub fn cgroup_dir(cgroups_path: &str) -> Option<String> {
    let parts: Vec<&str> = cgroups_path.split(':').collect();
    let [slice, prefix, name] = parts[..] else {
        return (parts.len() == 1 && !cgroups_path.is_empty())
            .then(|| format!("/{}", cgroups_path.trim_start_matches('/')));
    };
    let mut dir = String::new();
    let slice = if slice.is_empty() {
        "system.slice"
    } else {
        slice
    };
    if slice != "-.slice" {
        let stem = slice.strip_suffix(".slice")?;
        let mut prefix_so_far = String::new();
        for part in stem.split('-') {
            if part.is_empty() {
                return None;
            }
            if !prefix_so_far.is_empty() {
                prefix_so_far.push('-');
            }
            prefix_so_far.push_str(part);
            dir.push_str(&format!("/{prefix_so_far}.slice"));
        }
    }
    let scope = match prefix {
        "" => format!("{name}.scope"),
        _ => format!("{prefix}-{name}.scope"),
    };
    if name.is_empty() || name.contains('/') || name.contains("..") {
        return None;
    }
    dir.push('/');
    dir.push_str(&scope);
    Some(dir)
}

/// Whether the last component of a cgroup path is a pod's cgroup.
pub fn is_pod_cgroup(path: &str) -> bool {
    path.rsplit('/')
        .next()
        .is_some_and(|c| pod_uid_in(c).is_some())
}

/// A config.json is tens of KiB; more is not a runtime's.
const MAX_CONFIG: u64 = 4 << 20;
/// containerd namespaces looked through (k8s.io, moby, default, …).
const MAX_NAMESPACES: usize = 64;

/// The container's names from its runtime's state, and its pod; what
/// cannot be read stays `None` (the id is still known).
pub fn describe(found: &CgroupContainer, roots: &StateRoots) -> (Container, Option<Pod>) {
    let runtimes: &[Runtime] = match found.runtime {
        Some(runtime) => &[runtime],
        None => &[Runtime::Containerd, Runtime::CriO],
    };
    let state = runtimes.iter().find_map(|&runtime| {
        let annotations = read_annotations(runtime, &found.id, roots)?;
        Some((runtime, annotations))
    });
    let mut container = Container {
        id: found.id.clone(),
        runtime: found.runtime,
        name: None,
        image: None,
    };
    let mut pod = found.pod_uid.as_ref().map(|uid| Pod {
        name: None,
        namespace: None,
        uid: Some(uid.clone()),
    });
    if let Some((runtime, annotations)) = state {
        let names = Names::from_annotations(runtime, &annotations);
        container.runtime = Some(runtime);
        container.name = names.container;
        container.image = names.image;
        if names.pod.name.is_some() || names.pod.uid.is_some() {
            pod = Some(Pod {
                uid: names.pod.uid.or(found.pod_uid.clone()),
                ..names.pod
            });
        }
    }
    (container, pod)
}

fn read_annotations(
    runtime: Runtime,
    id: &str,
    roots: &StateRoots,
) -> Option<HashMap<String, String>> {
    let bytes = match runtime {
        Runtime::Containerd => {
            let root = Root::open(&roots.containerd).ok()?;
            root.list("/", MAX_NAMESPACES)
                .ok()?
                .into_iter()
                .find_map(|namespace| {
                    root.read(&format!("/{namespace}/{id}/config.json"), MAX_CONFIG)
                        .ok()
                })?
        }
        Runtime::CriO => Root::open(&roots.crio)
            .ok()?
            .read(&format!("/{id}/userdata/config.json"), MAX_CONFIG)
            .ok()?,
        Runtime::Docker | Runtime::Podman => return None,
    };
    serde_json::from_slice::<Spec>(&bytes)
        .ok()
        .map(|spec| spec.annotations)
}

/// What the annotations of one runtime say.
#[derive(Debug, PartialEq, Eq)]
struct Names {
    container: Option<String>,
    image: Option<String>,
    pod: Pod,
}

impl Names {
    fn from_annotations(runtime: Runtime, annotations: &HashMap<String, String>) -> Self {
        let keys: [&str; 5] = match runtime {
            Runtime::CriO => [
                "io.kubernetes.container.name",
                "io.kubernetes.cri-o.ImageName",
                "io.kubernetes.pod.name",
                "io.kubernetes.pod.namespace",
                "io.kubernetes.pod.uid",
            ],
            _ => [
                "io.kubernetes.cri.container-name",
                "io.kubernetes.cri.image-name",
                "io.kubernetes.cri.sandbox-name",
                "io.kubernetes.cri.sandbox-namespace",
                "io.kubernetes.cri.sandbox-uid",
            ],
        };
        // Kubernetes names are at most 253 bytes, images a few hundred:
        // longer values are not a runtime's, and are not kept.
        const MAX_VALUE: usize = 1024;
        let get = |key: &str| {
            annotations
                .get(key)
                .filter(|v| !v.is_empty() && v.len() <= MAX_VALUE)
                .cloned()
        };
        Self {
            container: get(keys[0]),
            image: get(keys[1]),
            pod: Pod {
                name: get(keys[2]),
                namespace: get(keys[3]),
                uid: get(keys[4]),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "6f1c0e36-2b7a-4c1e-9a55-0e8a3b9d2f10";

    fn found(runtime: Option<Runtime>, pod_uid: Option<&str>) -> Option<CgroupContainer> {
        Some(CgroupContainer {
            id: ID.into(),
            runtime,
            pod_uid: pod_uid.map(String::from),
        })
    }

    #[test]
    fn every_cgroup_path_form_names_its_container() {
        let systemd_uid = UID.replace('-', "_");
        for (path, expected) in [
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{systemd_uid}.slice/cri-containerd-{ID}.scope"
                ),
                found(Some(Runtime::Containerd), Some(UID)),
            ),
            (
                format!("/kubepods/burstable/pod{UID}/{ID}"),
                found(None, Some(UID)),
            ),
            (format!("/kubepods/pod{UID}/{ID}"), found(None, Some(UID))),
            (
                format!("/kubepods-burstable-pod{systemd_uid}.slice:cri-containerd:{ID}"),
                found(Some(Runtime::Containerd), Some(UID)),
            ),
            (
                format!("/kubepods.slice/kubepods-pod{systemd_uid}.slice/crio-{ID}.scope"),
                found(Some(Runtime::CriO), Some(UID)),
            ),
            (
                format!("/system.slice/docker-{ID}.scope"),
                found(Some(Runtime::Docker), None),
            ),
            (
                format!("/machine.slice/libpod-{ID}.scope"),
                found(Some(Runtime::Podman), None),
            ),
            // A child cgroup of the container's: the ancestor names it.
            (
                format!("/system.slice/docker-{ID}.scope/init.scope"),
                found(Some(Runtime::Docker), None),
            ),
            (
                format!("/machine.slice/libpod-{ID}.scope/container/sub"),
                found(Some(Runtime::Podman), None),
            ),
        ] {
            assert_eq!(recognise(&path), expected, "{path}");
        }
    }

    #[test]
    fn paths_without_a_container_name_none() {
        for path in [
            "/".to_string(),
            "/user.slice/user-1000.slice/session-2.scope".into(),
            "/system.slice/containerd.service".into(),
            format!("/kubepods.slice/kubepods-pod{UID}.slice/crio-conmon-{ID}.scope"),
            format!("/machine.slice/libpod-conmon-{ID}.scope"),
            format!("/system.slice/docker-{}.scope", &ID[..12]),
            // A bare id outside any pod is not taken for a container.
            format!("/{ID}"),
            format!("/kubepods/besteffort/pod{UID}"),
        ] {
            assert_eq!(recognise(&path), None, "{path}");
        }
    }

    fn annotations(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn cgroups_paths_of_both_drivers_name_the_directory() {
        let systemd_uid = UID.replace('-', "_");
        assert_eq!(
            cgroup_dir(&format!("/kubepods/besteffort/pod{UID}/{ID}")).as_deref(),
            Some(format!("/kubepods/besteffort/pod{UID}/{ID}").as_str())
        );
        assert_eq!(
            cgroup_dir(&format!(
                "kubepods-besteffort-pod{systemd_uid}.slice:cri-containerd:{ID}"
            )),
            Some(format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{systemd_uid}.slice/cri-containerd-{ID}.scope"
            ))
        );
        assert_eq!(
            cgroup_dir(&format!(":docker:{ID}")),
            Some(format!("/system.slice/docker-{ID}.scope"))
        );
        assert_eq!(cgroup_dir("a--b.slice:x:y"), None);
        assert_eq!(cgroup_dir("a.slice:x:../y"), None);
        assert_eq!(cgroup_dir(""), None);
        assert!(is_pod_cgroup(&format!("/kubepods/besteffort/pod{UID}")));
        assert!(!is_pod_cgroup(&format!(
            "/kubepods/besteffort/pod{UID}/{ID}"
        )));
    }

    #[test]
    fn containerd_and_crio_annotations_give_the_names() {
        let containerd = Names::from_annotations(
            Runtime::Containerd,
            &annotations(&[
                ("io.kubernetes.cri.container-type", "container"),
                ("io.kubernetes.cri.container-name", "app"),
                ("io.kubernetes.cri.image-name", "docker.io/library/web:1"),
                ("io.kubernetes.cri.sandbox-name", "web-7f9c4-x2k8p"),
                ("io.kubernetes.cri.sandbox-namespace", "shop"),
                ("io.kubernetes.cri.sandbox-uid", UID),
            ]),
        );
        assert_eq!(
            containerd,
            Names {
                container: Some("app".into()),
                image: Some("docker.io/library/web:1".into()),
                pod: Pod {
                    name: Some("web-7f9c4-x2k8p".into()),
                    namespace: Some("shop".into()),
                    uid: Some(UID.into()),
                },
            }
        );
        let crio = Names::from_annotations(
            Runtime::CriO,
            &annotations(&[
                ("io.kubernetes.container.name", "app"),
                ("io.kubernetes.cri-o.ImageName", "quay.io/web:1"),
                ("io.kubernetes.pod.name", "web-0"),
                ("io.kubernetes.pod.namespace", "shop"),
                ("io.kubernetes.pod.uid", UID),
            ]),
        );
        assert_eq!(crio.container.as_deref(), Some("app"));
        assert_eq!(crio.image.as_deref(), Some("quay.io/web:1"));
        assert_eq!(crio.pod.name.as_deref(), Some("web-0"));
        // A sandbox (pause) container has a pod but no container name.
        let sandbox = Names::from_annotations(
            Runtime::Containerd,
            &annotations(&[
                ("io.kubernetes.cri.container-type", "sandbox"),
                ("io.kubernetes.cri.sandbox-name", "web-0"),
            ]),
        );
        assert_eq!(sandbox.container, None);
        assert_eq!(sandbox.pod.name.as_deref(), Some("web-0"));
        // A value no runtime would write is not kept.
        let huge = "x".repeat(1 << 20);
        let odd = Names::from_annotations(
            Runtime::Containerd,
            &annotations(&[("io.kubernetes.cri.container-name", &huge)]),
        );
        assert_eq!(odd.container, None);
    }

    #[test]
    fn state_is_read_from_the_configured_roots_and_missing_state_keeps_the_id() {
        let dir = std::env::temp_dir().join(format!("dnstrace-state-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let containerd = dir.join("containerd");
        fs::create_dir_all(containerd.join(format!("k8s.io/{ID}"))).unwrap();
        fs::create_dir_all(containerd.join("moby")).unwrap();
        fs::write(
            containerd.join(format!("k8s.io/{ID}/config.json")),
            r#"{"ociVersion":"1.0.2","annotations":{"io.kubernetes.cri.container-name":"app",
               "io.kubernetes.cri.sandbox-name":"web-0","io.kubernetes.cri.sandbox-namespace":"shop"}}"#,
        )
        .unwrap();
        let roots = StateRoots {
            containerd,
            crio: dir.join("crio-missing"),
        };
        let (container, pod) = describe(&found(None, Some(UID)).unwrap(), &roots);
        assert_eq!(container.runtime, Some(Runtime::Containerd));
        assert_eq!(container.name.as_deref(), Some("app"));
        let pod = pod.unwrap();
        assert_eq!(
            (
                pod.namespace.as_deref(),
                pod.name.as_deref(),
                pod.uid.as_deref()
            ),
            (Some("shop"), Some("web-0"), Some(UID))
        );
        // CRI-O's state is not there: the id and runtime stay, no names.
        let (container, pod) = describe(&found(Some(Runtime::CriO), None).unwrap(), &roots);
        assert_eq!(
            container,
            Container {
                id: ID.into(),
                runtime: Some(Runtime::CriO),
                name: None,
                image: None
            }
        );
        assert_eq!(pod, None);
        // State that is not JSON, or a FIFO where config.json goes: no
        // names, the id stays, and nothing blocks.
        for (id, make) in [("1".repeat(64), "garbage"), ("2".repeat(64), "fifo")] {
            let bundle = roots.containerd.join(format!("k8s.io/{id}"));
            fs::create_dir_all(&bundle).unwrap();
            let config = bundle.join("config.json");
            match make {
                "garbage" => fs::write(&config, "{not json").unwrap(),
                _ => rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &config,
                    rustix::fs::FileType::Fifo,
                    rustix::fs::Mode::from_raw_mode(0o600),
                    0,
                )
                .unwrap(),
            }
            let found = CgroupContainer {
                id: id.clone(),
                runtime: Some(Runtime::Containerd),
                pod_uid: None,
            };
            let (container, pod) = describe(&found, &roots);
            assert_eq!(
                (container.id, container.name, pod),
                (id, None, None),
                "{make}"
            );
        }
        let _ = fs::remove_dir_all(&dir);
    }
}
