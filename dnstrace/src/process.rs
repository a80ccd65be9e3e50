//! What /proc tells about the processes and namespaces behind events.

use std::{
    collections::{HashMap, HashSet},
    fs::{self, File},
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    time::{Duration, Instant},
};

/// Maps the kernel's network namespace cookies to the inode numbers users
/// know (`ip netns identify`, `ls -l /proc/PID/ns/net`).
///
/// Only a socket inside a namespace can tell its cookie, so each namespace on
/// the host is entered once and asked. Going through the pid of an event
/// instead would race: short-lived clients have exited by the time their
/// message is read, and their pid may already belong to another namespace.
pub struct Namespaces {
    inode_by_cookie: HashMap<u64, u64>,
    /// The last cookie found and its inode: messages come in runs from one
    /// namespace, and this is asked for every message.
    last: Option<(u64, u64)>,
    asked: HashSet<u64>,
    last_scan: Option<Instant>,
}

/// A cookie that is still unknown after a scan (its namespace is gone)
/// triggers at most one rescan per this interval.
const RESCAN_INTERVAL: Duration = Duration::from_millis(200);

impl Namespaces {
    /// Starts with the namespaces found at start-up (cookie → inode), when
    /// the existing sockets were looked for in each.
    pub fn found(inode_by_cookie: HashMap<u64, u64>) -> Self {
        Self {
            asked: inode_by_cookie.values().copied().collect(),
            inode_by_cookie,
            last: None,
            last_scan: Some(Instant::now()),
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
        if self
            .last_scan
            .is_some_and(|at| at.elapsed() < RESCAN_INTERVAL)
        {
            return None;
        }
        self.scan();
        self.inode_by_cookie.get(&cookie).copied()
    }

    /// Asks each namespace not asked before for its cookie.
    fn scan(&mut self) {
        self.last_scan = Some(Instant::now());
        for (namespace, inode) in all_network_namespaces() {
            if !self.asked.insert(inode) {
                continue;
            }
            if let Ok(cookie) = netns_cookie_of(&namespace) {
                self.inode_by_cookie.insert(cookie, inode);
            }
        }
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
        // A cookie not found at start is looked for again, once the last
        // look is old enough.
        let mut namespaces = Namespaces::found(HashMap::new());
        assert_eq!(namespaces.inode(cookie), None, "too soon to look again");
        std::thread::sleep(RESCAN_INTERVAL);
        assert_eq!(namespaces.inode(cookie), Some(inode));
    }
}
