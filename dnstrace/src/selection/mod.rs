//! Turns the CLI's filters into the kernel programs' configuration, so
//! unselected traffic is dropped before it reaches the ring buffer. The pod
//! filters, which change as pods come and go, are in `pods.rs`.

pub mod pods;

use std::{fs::File, os::unix::fs::MetadataExt, path::Path};

use dnstrace_common::{
    COMM_LEN, CaptureConfig, FILTER_CGROUP, FILTER_CGROUP_TREE, FILTER_COMM, FILTER_NETNS,
    FILTER_PID, MAX_PORTS,
};

use crate::{
    capture::{foreign_pid_namespace, is_cgroup2},
    cli::TraceArgs,
    failure::Failure,
    process::{is_alive, netns_cookie_of},
};

pub fn capture_config(args: &TraceArgs) -> Result<CaptureConfig, Failure> {
    let mut config = CaptureConfig::default_dns();
    if args.ports.len() > MAX_PORTS {
        return Err(Failure::setup(format!(
            "at most {MAX_PORTS} --port options"
        )));
    }
    if args.ports.contains(&0) {
        return Err(Failure::setup(
            "--port 0: not a port a DNS message can use (1 to 65535)",
        ));
    }
    config.ports = [0; MAX_PORTS];
    config.ports[..args.ports.len()].copy_from_slice(&args.ports);
    config.port_count = args.ports.len() as u32;

    // A pid that does not exist would select nothing, silently. The kernel
    // filters on the host's pids, which only the host's /proc can confirm.
    let checkable = foreign_pid_namespace().is_none();
    if let Some(pid) = args.pids.iter().find(|pid| checkable && !is_alive(**pid)) {
        return Err(Failure::setup(format!("--pid {pid}: no such process")));
    }
    if !args.pids.is_empty() {
        config.filters |= FILTER_PID;
    }
    if let Some(comm) = &args.comm {
        config.comm = comm_bytes(comm)?;
        config.filters |= FILTER_COMM;
    }
    if let Some(path) = &args.cgroup {
        config.cgroup_id = cgroup_id(path)?;
        config.filters |= FILTER_CGROUP;
    }
    if args.pod.is_some() || args.k8s_namespace.is_some() || args.container.is_some() {
        config.filters |= FILTER_CGROUP_TREE;
    }
    if let Some(netns) = &args.netns {
        config.netns_cookie = netns_cookie(netns)?;
        config.filters |= FILTER_NETNS;
    }
    Ok(config)
}

/// The kernel keeps 15 bytes of a thread's name; match what it keeps.
fn comm_bytes(comm: &str) -> Result<[u8; COMM_LEN], Failure> {
    if comm.is_empty() || comm.contains('\0') {
        return Err(Failure::setup("--comm needs a non-empty name"));
    }
    let mut bytes = [0; COMM_LEN];
    let kept = comm.len().min(COMM_LEN - 1);
    bytes[..kept].copy_from_slice(&comm.as_bytes()[..kept]);
    Ok(bytes)
}

/// A cgroup v2 directory's inode number is its cgroup id.
fn cgroup_id(path: &Path) -> Result<u64, Failure> {
    let failure = |why: String| Failure::setup(format!("--cgroup {}: {why}", path.display()));
    let dir = File::open(path).map_err(|e| failure(e.to_string()))?;
    if !is_cgroup2(&dir).map_err(|e| failure(e.to_string()))? {
        return Err(failure("not a directory of the cgroup v2 hierarchy".into()));
    }
    Ok(dir.metadata().map_err(|e| failure(e.to_string()))?.ino())
}

/// The kernel identifies a network namespace by a cookie; see
/// [`netns_cookie_of`].
fn netns_cookie(name_or_path: &str) -> Result<u64, Failure> {
    let path = if name_or_path.contains('/') {
        name_or_path.to_string()
    } else {
        format!("/run/netns/{name_or_path}")
    };
    let failure = |why: String| Failure::setup(format!("--netns {name_or_path}: {why}"));
    let namespace = File::open(&path).map_err(|e| failure(format!("{path}: {e}")))?;
    netns_cookie_of(&namespace).map_err(failure)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_keep_what_the_kernel_keeps() {
        let bytes = comm_bytes("a-very-long-thread-name").unwrap();
        assert_eq!(&bytes[..15], b"a-very-long-thr");
        assert_eq!(bytes[15], 0);
        assert!(comm_bytes("").is_err());
    }
}
