//! The enrich worker: a thread of its own that reads what is known about a
//! process (its files, its cgroup, its container's state), so that a slow
//! or hostile file can delay only that process's facts.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, Sender},
    },
};

use super::{
    container::{self, CgroupContainer, StateRoots},
    resolver_files::{self, Libraries},
};
use crate::{
    message::{Container, Facts, Pod},
    process::Namespaces,
    resolver::ResolvConf,
};

pub enum Request {
    /// What is known about `pid`, whose message came from cgroup
    /// `cgroup_id` and network namespace `netns_cookie`.
    Facts {
        pid: u32,
        cgroup_id: u64,
        netns_cookie: u64,
    },
    /// Which of these processes are gone.
    Sweep(Vec<u32>),
}

pub enum Reply {
    Facts {
        pid: u32,
        cgroup_id: u64,
        netns_cookie: u64,
        /// The namespace's inode, when a socket inside it could tell.
        netns: Option<u64>,
        facts: Arc<Facts>,
    },
    Gone(Vec<u32>),
}

/// Everything the worker remembers between requests, each part bounded.
pub struct Gatherer {
    pub cgroup_mount: Option<PathBuf>,
    pub roots: StateRoots,
    pub namespaces: Namespaces,
    libraries: Libraries,
    /// Each cgroup's v2 path, so the hierarchy is searched once per cgroup.
    paths: HashMap<u64, Option<String>>,
    /// Each container's names, read once from its runtime's state.
    containers: HashMap<String, (Container, Option<Pod>)>,
    /// The last resolv.conf read in each network namespace: the fallback
    /// for a process that exited before it could be read (in a pod, every
    /// process shares one).
    conf_by_netns: HashMap<u64, ResolvConf>,
    /// Entries dropped because a cache was full.
    evicted: Arc<AtomicU64>,
}

/// Cgroups, containers and namespaces remembered; past this a cache starts
/// over (and counts what it dropped).
const MAX_ENTRIES: usize = 4096;

impl Gatherer {
    pub fn new(
        cgroup_mount: Option<PathBuf>,
        roots: StateRoots,
        namespaces: Namespaces,
        evicted: Arc<AtomicU64>,
    ) -> Self {
        Self {
            cgroup_mount,
            roots,
            namespaces,
            libraries: Libraries::default(),
            paths: HashMap::new(),
            containers: HashMap::new(),
            conf_by_netns: HashMap::new(),
            evicted,
        }
    }

    /// Serves requests until the stage that sends them is dropped.
    pub fn serve(mut self, requests: Receiver<Request>, replies: Sender<Reply>) {
        for request in requests {
            let reply = match request {
                Request::Facts {
                    pid,
                    cgroup_id,
                    netns_cookie,
                } => self.facts(pid, cgroup_id, netns_cookie),
                Request::Sweep(pids) => Reply::Gone(self.sweep(pids)),
            };
            if replies.send(reply).is_err() {
                return;
            }
        }
    }

    pub fn facts(&mut self, pid: u32, cgroup_id: u64, netns_cookie: u64) -> Reply {
        let mut resolver = resolver_files::read_context(pid, &mut self.libraries);
        match &resolver.conf {
            Some(conf) if netns_cookie != 0 => {
                bounded_insert(
                    &mut self.conf_by_netns,
                    netns_cookie,
                    conf.clone(),
                    &self.evicted,
                );
            }
            None => resolver.conf = self.conf_by_netns.get(&netns_cookie).cloned(),
            Some(_) => {}
        }
        let (container, pod) = match self.container(pid, cgroup_id) {
            Some((container, pod)) => (Some(container), pod),
            None => (None, None),
        };
        let netns = self.namespaces.inode(netns_cookie);
        self.evicted.fetch_add(
            std::mem::take(&mut self.libraries.evicted),
            Ordering::Relaxed,
        );
        Reply::Facts {
            pid,
            cgroup_id,
            netns_cookie,
            netns,
            facts: Arc::new(Facts {
                resolver: Arc::new(resolver),
                container,
                pod,
            }),
        }
    }

    /// The container of cgroup `cgroup_id`, from its v2 path; or, where
    /// that path names none (a runtime that only uses the v1 hierarchies
    /// of a hybrid host), from the other paths the process lists.
    fn container(&mut self, pid: u32, cgroup_id: u64) -> Option<(Container, Option<Pod>)> {
        let listed = container::proc_cgroup_paths(pid);
        let v2_path = match (&self.cgroup_mount, self.paths.get(&cgroup_id)) {
            (_, Some(known)) => known.clone(),
            (None, None) => None,
            (Some(mount), None) => {
                let hint = listed.first().map(String::as_str);
                let path = container::cgroup_path(mount, cgroup_id, hint);
                bounded_insert(&mut self.paths, cgroup_id, path.clone(), &self.evicted);
                path
            }
        };
        let found = v2_path
            .iter()
            .chain(listed.iter())
            .find_map(|path| container::recognise(path))?;
        Some(self.describe(found))
    }

    fn describe(&mut self, found: CgroupContainer) -> (Container, Option<Pod>) {
        if let Some(known) = self.containers.get(&found.id) {
            return known.clone();
        }
        let described = container::describe(&found, &self.roots);
        bounded_insert(
            &mut self.containers,
            found.id,
            described.clone(),
            &self.evicted,
        );
        described
    }

    /// The processes among `pids` that exited; forgets cgroups that were
    /// removed, and with them containers that are gone.
    fn sweep(&mut self, pids: Vec<u32>) -> Vec<u32> {
        if let Some(mount) = &self.cgroup_mount {
            self.paths.retain(|_, path| {
                path.as_ref()
                    .is_some_and(|path| mount.join(path.trim_start_matches('/')).is_dir())
            });
            let live: Vec<String> = self
                .paths
                .values()
                .flatten()
                .filter_map(|path| container::recognise(path).map(|c| c.id))
                .collect();
            self.containers.retain(|id, _| live.contains(id));
        }
        pids.into_iter()
            .filter(|pid| !crate::process::is_alive(*pid))
            .collect()
    }
}

/// Inserts, first dropping everything (and counting it) when full.
fn bounded_insert<K: std::hash::Hash + Eq, V>(
    map: &mut HashMap<K, V>,
    key: K,
    value: V,
    evicted: &AtomicU64,
) {
    if map.len() >= MAX_ENTRIES && !map.contains_key(&key) {
        evicted.fetch_add(map.len() as u64, Ordering::Relaxed);
        map.clear();
    }
    map.insert(key, value);
}
