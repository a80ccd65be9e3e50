//! Fixtures for dnstrace's end-to-end tests: network namespaces, real DNS
//! servers and resolvers, a packet capture for ground truth, and the tracer.
//! Tests compose them and panic with context when something is off.

pub mod cgroup;
pub mod clients;
pub mod cri;
pub mod dnstap;
pub mod expect;
pub mod kubernetes;
pub mod loopback;
pub mod netns;
pub mod process;
pub mod servers;
pub mod trace;
pub mod wire;

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

/// The workspace root: the parent of this crate.
pub fn workspace_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives inside the workspace")
        .to_owned()
}

/// Cargo's target directory, where client builds are kept between runs.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join("target"))
}

/// A binary of this crate (`src/bin/`), which cargo builds next to the
/// test executables.
pub fn crate_binary(name: &str) -> PathBuf {
    let test_exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let bin = test_exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable in target/<profile>/deps")
        .join(name);
    assert!(
        bin.is_file(),
        "{} is missing; cargo test builds it",
        bin.display()
    );
    bin
}

/// A name no other test, in this process or another, is using: it carries
/// the process id and a counter.
pub fn unique_name(role: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("dt{}-{n}-{role}", std::process::id())
}

/// Whether `name` came from [`unique_name`] in a process that no longer
/// runs: a test run killed before its guards could clean up.
pub fn is_stale_name(name: &str) -> bool {
    let Some((pid, rest)) = name.strip_prefix("dt").and_then(|n| n.split_once('-')) else {
        return false;
    };
    let counted = rest.split_once('-').is_some_and(|(n, role)| {
        !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && !role.is_empty()
    });
    counted && pid.parse::<u32>().is_ok() && !std::path::Path::new("/proc").join(pid).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_this_process_are_not_stale() {
        assert!(!is_stale_name(&unique_name("client")));
    }

    #[test]
    fn only_our_names_of_dead_processes_are_stale() {
        // pid_max is at most 2^22, so this pid never runs.
        assert!(is_stale_name("dt4999999-3-client"));
        assert!(!is_stale_name("dt4999999-client"));
        assert!(!is_stale_name("dt4999999-x-client"));
        assert!(!is_stale_name("dtfoo-3-client"));
        assert!(!is_stale_name("docker-3-client"));
    }
}
