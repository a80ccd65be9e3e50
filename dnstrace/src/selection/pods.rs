//! `--pod`, `--k8s-namespace` and `--container`: which containers to trace,
//! read from the runtimes' state on the node and turned into the cgroup ids
//! the kernel programs select by (`SELECTED_CGROUPS`, matched against a
//! process's cgroup and its ancestors). A watcher thread reads the state
//! again every `RESCAN` and keeps the map in step as pods start and stop.

use std::{
    collections::{BTreeSet, HashMap},
    io,
    os::unix::fs::MetadataExt,
    path::PathBuf,
    sync::mpsc::{self, RecvTimeoutError, Sender},
    time::Duration,
};

use aya::maps::{HashMap as BpfHashMap, MapData};

use crate::{
    cli::TraceArgs,
    enrich::{
        StateRoots,
        container::{self, StateEntry, Stated},
    },
    failure::Failure,
    terminal,
};

/// How often the runtimes' state is read again for new pods. A pod's
/// sandbox starts before its containers (CNI sets up its network in
/// between), and a pod filter selects the pod's cgroup, so its containers
/// are selected from their first packet unless they start within this
/// long of the sandbox.
pub const RESCAN: Duration = Duration::from_millis(50);
/// Containers looked at per scan; more are not followed (said once).
const MAX_CONTAINERS: usize = 8192;
/// Scans a container waits for its state to be readable and its cgroup to
/// exist (a runtime writes them in turn) before it is given up on: 10 s.
const PENDING_SCANS: u32 = 200;

/// What a container must match: every option given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodFilter {
    namespace: Option<String>,
    pod: Option<String>,
    container: Option<String>,
}

impl PodFilter {
    /// The filter the options ask for, if any; a malformed one is a usage
    /// error.
    pub fn from_args(args: &TraceArgs) -> Result<Option<Self>, Failure> {
        let mut filter = Self::default();
        if let Some(pod) = &args.pod {
            let (namespace, name) = match pod.split_once('/') {
                Some((namespace, name)) => (Some(namespace), name),
                None => (None, pod.as_str()),
            };
            if !is_name(name, 253) || namespace.is_some_and(|n| !is_name(n, 63)) {
                return Err(Failure::setup(format!(
                    "--pod {}: not [NAMESPACE/]NAME (lowercase letters, digits, '-' and '.')",
                    terminal::escape(pod)
                )));
            }
            filter.pod = Some(name.to_string());
            filter.namespace = namespace.map(String::from);
        }
        if let Some(namespace) = &args.k8s_namespace {
            if !is_name(namespace, 63) {
                return Err(Failure::setup(format!(
                    "--k8s-namespace {}: not a namespace name (lowercase letters, digits and '-')",
                    terminal::escape(namespace)
                )));
            }
            if filter.namespace.as_ref().is_some_and(|n| n != namespace) {
                return Err(Failure::setup(format!(
                    "--pod {} and --k8s-namespace {} name two namespaces",
                    terminal::escape(args.pod.as_deref().unwrap_or_default()),
                    terminal::escape(namespace)
                )));
            }
            filter.namespace = Some(namespace.clone());
        }
        if let Some(container) = &args.container {
            if !is_name(container, 253) {
                return Err(Failure::setup(format!(
                    "--container {}: not a container name or id",
                    terminal::escape(container)
                )));
            }
            filter.container = Some(container.clone());
        }
        Ok((filter != Self::default()).then_some(filter))
    }

    /// The options, as the user gave them, for messages.
    pub fn describe(&self) -> String {
        let mut words = Vec::new();
        match (&self.namespace, &self.pod) {
            (Some(namespace), Some(pod)) => words.push(format!("--pod {namespace}/{pod}")),
            (None, Some(pod)) => words.push(format!("--pod {pod}")),
            (Some(namespace), None) => words.push(format!("--k8s-namespace {namespace}")),
            (None, None) => {}
        }
        if let Some(container) = &self.container {
            words.push(format!("--container {container}"));
        }
        words.join(" ")
    }

    fn matches(&self, stated: &Stated) -> bool {
        let same =
            |wanted: &Option<String>, actual: &Option<String>| wanted.is_none() || wanted == actual;
        let container = self.container.as_ref().is_none_or(|wanted| {
            stated.name.as_ref() == Some(wanted)
                || (wanted.len() >= 12
                    && wanted.bytes().all(|b| b.is_ascii_hexdigit())
                    && stated.id.starts_with(wanted.as_str()))
        });
        container
            && same(&self.namespace, &stated.pod.namespace)
            && same(&self.pod, &stated.pod.name)
    }
}

/// A Kubernetes name: lowercase letters, digits, '-' and '.', at most
/// `max` bytes. (Container ids are hex, so they pass too.)
fn is_name(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// What the scanner knows of one container.
enum Known {
    /// It matches; these cgroups select it.
    Selected(Vec<u64>),
    Unselected,
    /// Its state or its cgroup is not there yet, after this many scans.
    Pending(u32),
}

/// Reads the runtimes' state and says which cgroups the filter selects.
pub struct Scanner {
    filter: PodFilter,
    roots: StateRoots,
    /// The cgroup v2 hierarchy's mount.
    mount: PathBuf,
    known: HashMap<StateEntry, Known>,
    /// Whether `MAX_CONTAINERS` was reached and said.
    said_full: bool,
}

/// What one scan found.
pub struct Scan {
    pub selected: BTreeSet<u64>,
    /// Containers selected for the first time, as `namespace/pod/container`.
    pub new: Vec<String>,
}

impl Scanner {
    pub fn new(filter: PodFilter, roots: StateRoots, mount: PathBuf) -> Self {
        Self {
            filter,
            roots,
            mount,
            known: HashMap::new(),
            said_full: false,
        }
    }

    pub fn filter(&self) -> &PodFilter {
        &self.filter
    }

    pub fn scan(&mut self) -> Scan {
        let listed = container::list_state(&self.roots, MAX_CONTAINERS);
        if listed.len() >= MAX_CONTAINERS && !self.said_full {
            self.said_full = true;
            eprintln!(
                "dnstrace: more than {MAX_CONTAINERS} containers on this node: {} follows only the first",
                self.filter.describe()
            );
        }
        // Containers whose state is gone are forgotten.
        self.known.retain(|entry, _| listed.contains(entry));
        let mut new = Vec::new();
        for entry in listed {
            let scans = match self.known.get(&entry) {
                Some(Known::Selected(_) | Known::Unselected) => continue,
                Some(Known::Pending(scans)) => *scans,
                None => 0,
            };
            let known = match container::read_state(&entry, &self.roots) {
                Some(stated) if !self.filter.matches(&stated) => Known::Unselected,
                Some(stated) => match self.cgroups_of(&stated) {
                    Some(cgroups) => {
                        new.push(label(&stated));
                        Known::Selected(cgroups)
                    }
                    None => Known::Pending(scans + 1),
                },
                None => Known::Pending(scans + 1),
            };
            let known = match known {
                Known::Pending(scans) if scans >= PENDING_SCANS => Known::Unselected,
                known => known,
            };
            self.known.insert(entry, known);
        }
        let selected = self
            .known
            .values()
            .filter_map(|known| match known {
                Known::Selected(cgroups) => Some(cgroups),
                _ => None,
            })
            .flatten()
            .copied()
            .collect();
        Scan { selected, new }
    }

    /// The cgroups that select a matching container: its pod's, for the
    /// pod filters (the sandbox makes it before any container starts, so
    /// containers that start later are selected from their first packet),
    /// its own with `--container`. `None` while its cgroup is not there.
    fn cgroups_of(&self, stated: &Stated) -> Option<Vec<u64>> {
        let path = stated.cgroup.as_deref()?;
        let inode = |path: &str| {
            std::fs::metadata(self.mount.join(path.trim_start_matches('/')))
                .ok()
                .map(|m| m.ino())
        };
        let own = inode(path)?;
        let parent = path.rsplit_once('/').map(|(parent, _)| parent);
        match parent {
            Some(parent) if self.filter.container.is_none() && container::is_pod_cgroup(parent) => {
                Some(vec![inode(parent)?, own])
            }
            _ => Some(vec![own]),
        }
    }
}

/// `namespace/pod/container`, or the sandbox of a pod.
fn label(stated: &Stated) -> String {
    let pod = format!(
        "{}/{}",
        stated.pod.namespace.as_deref().unwrap_or("?"),
        stated.pod.name.as_deref().unwrap_or("?")
    );
    match &stated.name {
        Some(name) => format!("{pod}/{name}"),
        None => format!("{pod} (its sandbox)"),
    }
}

/// The watcher thread; dropping this ends it at its next scan.
pub struct Watcher {
    _stop: Sender<()>,
}

/// Keeps `map` in step with what `scanner` selects, from `current`, what
/// the map holds now.
pub fn follow(
    mut scanner: Scanner,
    mut map: BpfHashMap<MapData, u64, u8>,
    mut current: BTreeSet<u64>,
) -> io::Result<Watcher> {
    let (stop, stopped) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("dnstrace-pods".into())
        .spawn(move || {
            let mut said_full = false;
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(RESCAN) {
                let scan = scanner.scan();
                for id in scan.selected.difference(&current) {
                    if let Err(error) = map.insert(id, &1, 0)
                        && !said_full
                    {
                        said_full = true;
                        eprintln!(
                            "dnstrace: {}: cannot select another cgroup ({error}); pods that start now are not traced",
                            scanner.filter().describe()
                        );
                    }
                }
                for id in current.difference(&scan.selected) {
                    let _ = map.remove(id);
                }
                current = scan.selected;
                for label in scan.new {
                    terminal::eprint_line(&format!("following {label}"));
                }
            }
        })?;
    Ok(Watcher { _stop: stop })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Pod, Runtime};

    fn stated(namespace: &str, pod: &str, container: Option<&str>) -> Stated {
        Stated {
            id: "0123456789abcdef".repeat(4),
            runtime: Runtime::Containerd,
            name: container.map(String::from),
            pod: Pod {
                name: Some(pod.into()),
                namespace: Some(namespace.into()),
                uid: None,
            },
            cgroup: None,
        }
    }

    fn filter(args: &[&str]) -> Result<Option<PodFilter>, Failure> {
        use clap::Parser;
        let args = crate::cli::Args::try_parse_from(["dnstrace"].iter().chain(args)).unwrap();
        PodFilter::from_args(&args.trace)
    }

    #[test]
    fn every_option_given_must_match() {
        let web = stated("shop", "web-0", Some("app"));
        let sandbox = stated("shop", "web-0", None);
        let other = stated("kube-system", "web-0", Some("app"));
        for (args, matched) in [
            (&["--pod", "shop/web-0"][..], [true, true, false]),
            (&["--pod", "web-0"], [true, true, true]),
            (&["--k8s-namespace", "shop"], [true, true, false]),
            (
                &["--pod", "web-0", "--k8s-namespace", "shop"],
                [true, true, false],
            ),
            (&["--container", "app"], [true, false, true]),
            (&["--container", "0123456789ab"], [true, true, true]),
            (
                &["--k8s-namespace", "shop", "--container", "app"],
                [true, false, false],
            ),
        ] {
            let filter = filter(args).unwrap().unwrap();
            let got = [&web, &sandbox, &other].map(|s| filter.matches(s));
            assert_eq!(got, matched, "{args:?}");
        }
    }

    #[test]
    fn malformed_filters_are_usage_errors() {
        assert_eq!(filter(&[]).unwrap(), None);
        for args in [
            &["--pod", "shop/"][..],
            &["--pod", "/web"],
            &["--pod", "a/b/c"],
            &["--pod", "Web"],
            &["--k8s-namespace", "shop/x"],
            &["--pod", "shop/web", "--k8s-namespace", "other"],
            &["--container", ""],
        ] {
            let error = filter(args).unwrap_err();
            assert_eq!(error.exit_code, 2, "{args:?}");
        }
    }
}
