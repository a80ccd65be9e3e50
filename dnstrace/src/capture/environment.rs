//! What the host must offer before any program loads: privileges and a
//! cgroup v2 hierarchy. Each lack becomes one line the user can act on.

use std::{fs, os::unix::fs::MetadataExt, path::PathBuf};

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

/// Where the cgroup v2 hierarchy is mounted: programs attached at its root
/// see every socket on the host.
pub fn cgroup2_root() -> Result<PathBuf, Failure> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Failure::setup(format!("cannot read /proc/self/mountinfo: {e}")))?;
    cgroup2_root_in(&mountinfo).ok_or_else(|| {
        Failure::setup(
            "no cgroup v2 hierarchy is mounted (try: mount -t cgroup2 none /sys/fs/cgroup)",
        )
    })
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
