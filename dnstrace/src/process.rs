//! What /proc tells about the processes and namespaces behind events (read
//! by the enrich worker, and at start by capture).

use std::{
    collections::{HashMap, HashSet},
    fs::{self, File},
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    time::{Duration, Instant},
};

/// Maps the kernel's network namespace cookies to the inode numbers users
/// know (`ip netns identify`, `ls -l /proc/PID/ns/net`).
///
/// Only a socket inside a namespace can tell its cookie, so the namespaces
/// on the host are entered and asked: at start, and again when a cookie
/// nobody knows shows up. Going through the pid of an event instead would
/// race: short-lived clients have exited by the time their message is read,
/// and their pid may already belong to another namespace. Every namespace
/// is asked again each time, as the kernel hands a dead namespace's inode
/// number to the next one it makes (pods come and go on a node).
pub struct Namespaces {
    inode_by_cookie: HashMap<u64, u64>,
    /// The last cookie found and its inode: messages come in runs from one
    /// namespace, and this is asked for every message.
    last: Option<(u64, u64)>,
    /// Cookies still unknown after a look that began once they had been
    /// seen: their namespaces are gone, and they are not looked for again.
    gone: HashSet<u64>,
    last_scan: Instant,
}

/// Looks at every namespace at most once per this interval.
const RESCAN_INTERVAL: Duration = Duration::from_millis(200);

/// Past this many gone cookies the list starts over, rather than grow.
const MAX_GONE: usize = 4096;

impl Namespaces {
    /// Starts with the namespaces found at start-up (cookie → inode), when
    /// the existing sockets were looked for in each.
    pub fn found(inode_by_cookie: HashMap<u64, u64>) -> Self {
        Self {
            inode_by_cookie,
            last: None,
            gone: HashSet::new(),
            last_scan: Instant::now(),
        }
    }

    pub fn inode(&mut self, cookie: u64) -> Option<u64> {
        if cookie == 0 {
            return None;
        }
        if let Some((last, inode)) = self.last
            && last == cookie
        {
            return Some(inode);
        }
        if let Some(&inode) = self.inode_by_cookie.get(&cookie) {
            self.last = Some((cookie, inode));
            return Some(inode);
        }
        if self.gone.contains(&cookie) {
            return None;
        }
        // This runs on the enrich worker, which may wait: a namespace made
        // just after the last look is then still found.
        std::thread::sleep(RESCAN_INTERVAL.saturating_sub(self.last_scan.elapsed()));
        self.scan();
        let inode = self.inode_by_cookie.get(&cookie).copied();
        if inode.is_none() {
            if self.gone.len() >= MAX_GONE {
                self.gone.clear();
            }
            self.gone.insert(cookie);
        }
        inode
    }

    /// Asks every namespace on the host for its cookie, afresh.
    fn scan(&mut self) {
        self.last_scan = Instant::now();
        self.last = None;
        self.inode_by_cookie = all_network_namespaces()
            .filter_map(|(namespace, inode)| Some((netns_cookie_of(&namespace).ok()?, inode)))
            .collect();
    }
}

/// Whether a process with this pid exists (it may be a new one under a
/// reused pid; callers only use this to release state).
pub fn is_alive(pid: u32) -> bool {
    fs::metadata(format!("/proc/{pid}")).is_ok()
}

/// Every network namespace on the host, once each: those of every process,
/// and those `ip netns add` keeps in /run/netns. Yields each open namespace
/// with its inode.
pub fn all_network_namespaces() -> impl Iterator<Item = (File, u64)> {
    let processes = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| {
            entry
                .file_name()
                .to_str()
                .is_some_and(|name| name.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(|entry| entry.path().join("ns/net"));
    let named = fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path());
    let mut seen = HashSet::new();
    processes.chain(named).filter_map(move |path| {
        let namespace = File::open(&path).ok()?;
        let inode = namespace.metadata().ok()?.ino();
        seen.insert(inode).then_some((namespace, inode))
    })
}

/// Runs `work` on a short-lived thread inside the network namespace
/// `namespace` (setns moves only the calling thread).
pub fn in_network_namespace<T: Send>(
    namespace: &File,
    work: impl FnOnce() -> Result<T, String> + Send,
) -> Result<T, String> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns on an open namespace fd affects only this
                // thread, which exits when `work` returns.
                if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(format!(
                        "not a network namespace, or cannot enter it: {}",
                        std::io::Error::last_os_error()
                    ));
                }
                work()
            })
            .join()
            .unwrap_or_else(|_| Err("the namespace thread failed".into()))
    })
}

/// The cookie of the network namespace `namespace` (an open
/// `/proc/PID/ns/net` or `/run/netns/NAME`): only a socket inside it can tell.
pub fn netns_cookie_of(namespace: &File) -> Result<u64, String> {
    in_network_namespace(namespace, current_netns_cookie)
}

pub fn current_netns_cookie() -> Result<u64, String> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let os_error = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
    // SAFETY: a plain socket call; the fd is closed below.
    let socket = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    if socket < 0 {
        return Err(os_error("socket"));
    }
    let mut cookie = 0u64;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` are valid for writes of the sizes given.
    let status = unsafe {
        libc::getsockopt(
            socket,
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    let result = if status == 0 {
        Ok(cookie)
    } else {
        Err(os_error(
            "this kernel cannot tell a namespace's cookie (SO_NETNS_COOKIE)",
        ))
    };
    // SAFETY: we own the socket.
    unsafe { libc::close(socket) };
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knows_our_own_namespace_by_its_cookie() {
        let own = File::open("/proc/self/ns/net").unwrap();
        let inode = own.metadata().unwrap().ino();
        let cookie = netns_cookie_of(&own).expect("needs root, as dnstrace does");
        let mut namespaces = Namespaces::found(HashMap::from([(cookie, inode)]));
        assert_eq!(namespaces.inode(cookie), Some(inode));
        assert_eq!(namespaces.inode(0), None, "0 means the kernel did not say");
        // A cookie not found at start is looked for again.
        let mut namespaces = Namespaces::found(HashMap::new());
        assert_eq!(namespaces.inode(cookie), Some(inode));
        // An inode number the kernel gave a dead namespace is asked again:
        // its new cookie is found, and the old one is not looked for again.
        let dead_cookie = cookie ^ 1;
        let mut namespaces = Namespaces::found(HashMap::from([(dead_cookie, inode)]));
        assert_eq!(namespaces.inode(cookie), Some(inode));
        assert_eq!(namespaces.inode(dead_cookie), None);
        assert!(namespaces.gone.contains(&dead_cookie));
    }
}
