//! What the host must offer before any program loads: privileges and a
//! cgroup v2 hierarchy. Each lack becomes one line the user can act on.

use std::{
    fs::{self, File},
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use crate::failure::Failure;

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Loading needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN, which older
/// kernels ask for), and attaching to a cgroup needs CAP_NET_ADMIN.
pub fn check_privileges() -> Result<(), Failure> {
    let status = fs::read_to_string("/proc/self/status")
        .map_err(|e| Failure::setup(format!("cannot read /proc/self/status: {e}")))?;
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| effective & (1 << cap) != 0;
    let can_load = has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON));
    if can_load && has(CAP_NET_ADMIN) {
        return Ok(());
    }
    Err(Failure::setup(
        "not permitted: dnstrace needs root, or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN \
         (try: sudo dnstrace)",
    ))
}

/// The inode of the host's (initial) PID namespace, fixed by the kernel
/// (`PROC_PID_INIT_INO`).
const HOST_PID_NAMESPACE_INODE: u64 = 0xEFFF_FFFC;

/// Why the pids the kernel gives (the host's) are not the pids this process
/// sees in /proc, or `None` when they are. In a pod without `hostPID`, or
/// under `unshare --pid`, /proc shows another namespace: the details of
/// each process (thread names, resolv.conf, libc) would be looked up under
/// the wrong pid, and `--pid` would name pids of that namespace.
pub fn foreign_pid_namespace() -> Option<String> {
    let inode = fs::metadata("/proc/self/ns/pid").ok().map(|m| m.ino());
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let levels = status
        .lines()
        .find_map(|line| line.strip_prefix("NSpid:"))
        .map_or(1, |pids| pids.split_whitespace().count());
    foreign_pid_namespace_in(inode, levels)
}

fn foreign_pid_namespace_in(inode: Option<u64>, levels: usize) -> Option<String> {
    let why = match inode {
        Some(inode) if inode != HOST_PID_NAMESPACE_INODE => format!("pid:[{inode}]"),
        // /proc of the host's namespace, seen from a namespace below it.
        _ if levels > 1 => format!("{levels} levels deep"),
        _ => return None,
    };
    Some(format!(
        "not in the host's PID namespace ({why}): the kernel reports the host's pids, which \
         this /proc does not show, so processes' names, resolv.conf and libc may be missing \
         or wrong, and --pid takes the host's pids (run with the host's PID namespace: \
         hostPID: true in Kubernetes)"
    ))
}

/// Where the cgroup v2 hierarchy is: `requested` (`--cgroup-root`), or the
/// cgroup2 mount of its root. Programs attached there see every socket on
/// the host, so a cgroup namespace of our own, whose mounts show only our
/// own subtree, is refused unless the host's hierarchy is named.
pub fn cgroup2_root(requested: Option<&Path>) -> Result<PathBuf, Failure> {
    if let Some(path) = requested {
        return cgroup2_hierarchy_at(path);
    }
    if in_own_cgroup_namespace() {
        return Err(Failure::setup(
            "dnstrace runs in a cgroup namespace of its own (a container), where the \
             cgroup2 mount is its own subtree: mount the host's /sys/fs/cgroup and name it \
             with --cgroup-root",
        ));
    }
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Failure::setup(format!("cannot read /proc/self/mountinfo: {e}")))?;
    cgroup2_root_in(&mountinfo).ok_or_else(|| {
        Failure::setup(
            "no cgroup v2 hierarchy is mounted (try: mount -t cgroup2 none /sys/fs/cgroup)",
        )
    })
}

/// `path` itself, or on a host with both hierarchies its `unified`
/// directory, as long as it is cgroup2.
fn cgroup2_hierarchy_at(path: &Path) -> Result<PathBuf, Failure> {
    let failure = |why: String| Failure::setup(format!("--cgroup-root {}: {why}", path.display()));
    for candidate in [path.to_path_buf(), path.join("unified")] {
        let Ok(dir) = File::open(&candidate) else {
            continue;
        };
        if is_cgroup2(&dir).map_err(|e| failure(e.to_string()))? {
            return Ok(candidate);
        }
    }
    Err(failure(
        "neither it nor its unified/ directory is a cgroup v2 hierarchy".into(),
    ))
}

/// Whether an open directory lies in a cgroup v2 hierarchy.
pub fn is_cgroup2(dir: &File) -> std::io::Result<bool> {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    // SAFETY: fstatfs writes into the zeroed struct we own; the fd is open.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(dir.as_raw_fd(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stat.f_type as i64 == CGROUP2_SUPER_MAGIC)
}

/// Whether our cgroup namespace is not init's. Unknown (no host pids to
/// compare with) counts as not: the PID namespace check says that.
fn in_own_cgroup_namespace() -> bool {
    let namespace = |pid: &str| fs::metadata(format!("/proc/{pid}/ns/cgroup")).map(|m| m.ino());
    matches!((namespace("self"), namespace("1")), (Ok(own), Ok(init)) if own != init)
}

/// The cgroup2 mount whose root is the hierarchy's root; the shortest path
/// wins when there are several.
fn cgroup2_root_in(mountinfo: &str) -> Option<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            // Fields: id parent major:minor root mount-point options ... - fstype source ...
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            let mut fields = left.split_whitespace().skip(3);
            let root = fields.next()?;
            let mount_point = fields.next()?;
            (fstype == "cgroup2" && root == "/").then(|| PathBuf::from(mount_point))
        })
        .min_by_key(|path| path.as_os_str().len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_hybrid_unified_mount() {
        let mountinfo = "\
25 1 0:23 / /sys/fs/cgroup rw - tmpfs tmpfs rw
26 25 0:24 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
27 25 0:25 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu";
        assert_eq!(
            cgroup2_root_in(mountinfo),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn a_named_root_is_taken_only_if_it_is_cgroup2() {
        // A pure v2 host mounts it at /sys/fs/cgroup; a hybrid one (like
        // the one CI runs on) under unified/.
        let root = cgroup2_hierarchy_at(Path::new("/sys/fs/cgroup")).expect("a cgroup2 root");
        assert!(is_cgroup2(&File::open(&root).unwrap()).unwrap());
        let error = cgroup2_hierarchy_at(Path::new("/tmp")).unwrap_err();
        assert_eq!(error.exit_code, crate::failure::EXIT_SETUP);
        assert!(error.message.starts_with("--cgroup-root /tmp: "), "{error}");
    }

    #[test]
    fn ignores_a_cgroup2_mount_of_a_subtree() {
        let mountinfo = "40 1 0:30 /kubepods /host/cgroup rw - cgroup2 cgroup2 rw";
        assert_eq!(cgroup2_root_in(mountinfo), None);
    }

    #[test]
    fn a_pid_namespace_other_than_the_hosts_is_named() {
        assert_eq!(
            foreign_pid_namespace_in(Some(HOST_PID_NAMESPACE_INODE), 1),
            None
        );
        assert_eq!(foreign_pid_namespace_in(None, 1), None);
        let pod = foreign_pid_namespace_in(Some(4026532211), 1).unwrap();
        assert!(
            pod.starts_with("not in the host's PID namespace (pid:[4026532211])"),
            "{pod}"
        );
        let nested = foreign_pid_namespace_in(Some(HOST_PID_NAMESPACE_INODE), 2).unwrap();
        assert!(nested.contains("2 levels deep"), "{nested}");
    }
}
