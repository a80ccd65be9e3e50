//! Once the programs are attached, dnstrace keeps only the capabilities its
//! run still uses, and sets no_new_privs, so that input crafted by another
//! process reaches code that holds as little as possible. docs/security.md
//! says what is kept and why.

use rustix::{
    io::Errno,
    thread::{self, CapabilitySet, CapabilitySets},
};

/// What every tracing run uses after attaching:
/// - SYS_ADMIN: entering each network namespace (setns) to learn its cookie
///   when a message comes from a namespace not seen yet. It also lets the
///   bpf syscall read the maps already open on kernels before 6.5 with
///   unprivileged BPF disabled; from 6.5 on reading them needs nothing.
/// - SYS_PTRACE: /proc/PID/root, exe, maps and ns/net of other users'
///   processes (ptrace read access).
/// - DAC_READ_SEARCH: reading a container's resolv.conf and libc through
///   directories that are not open to root's uid alone.
/// - BPF: the same map reads where SYS_ADMIN was never granted (the
///   DaemonSet adds BPF, PERFMON, NET_ADMIN and SYS_PTRACE only).
pub const TRACING: CapabilitySet = CapabilitySet::SYS_ADMIN
    .union(CapabilitySet::SYS_PTRACE)
    .union(CapabilitySet::DAC_READ_SEARCH)
    .union(CapabilitySet::BPF);

/// Added when the run creates files or connects to sockets after start
/// (rotation, a dnstap collector on a Unix socket), which may lie in
/// directories of other users.
pub const WRITING_LATER: CapabilitySet = CapabilitySet::DAC_OVERRIDE;

/// Keeps only `kept` (or less, if this thread had less) in this thread's
/// effective, permitted and bounding sets, clears the inheritable and
/// ambient sets, and sets no_new_privs; returns what it kept. Threads
/// started afterwards inherit this; threads started before keep what they
/// had, so call it before starting any, or in each.
pub fn keep_only(kept: CapabilitySet) -> Result<CapabilitySet, String> {
    let failure = |what: &str, errno: Errno| format!("cannot {what}: {errno}");
    thread::set_no_new_privs(true).map_err(|e| failure("set no_new_privs", e))?;
    thread::clear_ambient_capability_set().map_err(|e| failure("clear ambient capabilities", e))?;
    let current = thread::capabilities(None).map_err(|e| failure("read capabilities", e))?;
    let kept = kept & current.permitted;
    // Taking from the bounding set needs SETPCAP; without it nothing can
    // be gained anyway, as no_new_privs holds across exec.
    if current.effective.contains(CapabilitySet::SETPCAP) {
        for bit in 0..u64::BITS {
            let capability = CapabilitySet::from_bits_retain(1 << bit);
            if kept.contains(capability) {
                continue;
            }
            match thread::remove_capability_from_bounding_set(capability) {
                Ok(()) => {}
                // Past the last capability this kernel knows.
                Err(Errno::INVAL) => break,
                Err(errno) => return Err(failure("drop from the bounding set", errno)),
            }
        }
    }
    thread::set_capabilities(
        None,
        CapabilitySets {
            effective: kept,
            permitted: kept,
            inheritable: CapabilitySet::empty(),
        },
    )
    .map_err(|e| failure("drop capabilities", e))?;
    Ok(kept)
}

/// What a run that holds only `kept` of `TRACING` cannot do: a line for
/// each capability it lacks (docs/security.md).
pub fn losses(kept: CapabilitySet) -> Vec<&'static str> {
    let mut lost = Vec::new();
    if !kept.contains(CapabilitySet::SYS_PTRACE) {
        lost.push(
            "without cap_sys_ptrace, /proc/PID/root, exe and maps of other users' and \
             other containers' processes cannot be read: their lookups name no resolver \
             (\"resolver\": null) and their resolv.conf is not read",
        );
    }
    if !kept.contains(CapabilitySet::SYS_ADMIN) {
        lost.push(
            "without cap_sys_admin, other network namespaces cannot be entered: messages \
             from namespaces made after start carry no netns, and sockets opened before \
             start in other namespaces have no owner until they send",
        );
    }
    lost
}

/// The names of `set`, as capsh writes them (`cap_sys_admin`).
pub fn names(set: CapabilitySet) -> String {
    let names: Vec<String> = set
        .iter_names()
        .map(|(name, _)| format!("cap_{}", name.to_ascii_lowercase()))
        .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_keeps_only_what_it_was_told() {
        // On a thread of its own: the test harness's threads keep theirs.
        std::thread::spawn(|| {
            let before = thread::capabilities(None).unwrap();
            keep_only(CapabilitySet::SYS_PTRACE | CapabilitySet::NET_RAW).unwrap();
            let after = thread::capabilities(None).unwrap();
            let expected = (CapabilitySet::SYS_PTRACE | CapabilitySet::NET_RAW) & before.permitted;
            assert_eq!(after.effective, expected);
            assert_eq!(after.permitted, expected);
            assert_eq!(after.inheritable, CapabilitySet::empty());
            assert!(thread::no_new_privs().unwrap());
            if before.effective.contains(CapabilitySet::SETPCAP) {
                assert!(!thread::capability_is_in_bounding_set(CapabilitySet::SYS_ADMIN).unwrap());
                assert!(thread::capability_is_in_bounding_set(CapabilitySet::SYS_PTRACE).unwrap());
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    fn each_missing_capability_says_what_is_lost() {
        assert!(losses(TRACING).is_empty());
        let lost = losses(CapabilitySet::SYS_PTRACE | CapabilitySet::BPF);
        assert_eq!(lost.len(), 1);
        assert!(lost[0].starts_with("without cap_sys_admin"), "{lost:?}");
        assert_eq!(losses(CapabilitySet::empty()).len(), 2);
    }

    #[test]
    fn names_read_as_capsh_writes_them() {
        assert_eq!(
            names(TRACING),
            "cap_dac_read_search,cap_sys_ptrace,cap_sys_admin,cap_bpf"
        );
        assert_eq!(names(CapabilitySet::empty()), "none");
    }
}
