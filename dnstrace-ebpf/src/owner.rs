//! Who a socket belongs to, and whether the process filters select it.

use aya_ebpf::helpers::{
    bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
    generated::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_current_comm,
    },
};
use dnstrace_common::{
    COMM_LEN, CaptureConfig, Comm, FILTER_CGROUP, FILTER_CGROUP_TREE, FILTER_COMM, FILTER_PID,
    MAX_CGROUP_LEVELS, OWNER_REFRESH_SENDS, SocketOwner,
};

use crate::maps::{SELECTED_CGROUPS, SELECTED_PIDS, SOCKETS, TREE_KEY};

/// The current task (`pid_tgid` from its helper) as a socket owner. Callers
/// pass the netns cookie because the helper that gives it takes the
/// program's context. What the filters
/// do not need is asked of the kernel only for a task they select: the rest
/// of an unselected owner is never reported.
#[inline(always)]
pub fn current_task(config: &CaptureConfig, pid_tgid: u64, netns_cookie: u64) -> SocketOwner {
    let mut owner = SocketOwner {
        cgroup_id: 0,
        netns_cookie,
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        uid: 0,
        selected: 0,
        sends: 0,
        _padding: 0,
        comm: Comm([0; COMM_LEN]),
    };
    // The config is read-only: the verifier drops the branches it rules out.
    let filters = config.filters;
    if filters & FILTER_COMM != 0 {
        read_comm(&mut owner.comm);
    }
    if filters & (FILTER_CGROUP | FILTER_CGROUP_TREE) != 0 {
        // SAFETY: a helper without arguments.
        owner.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    }
    if !is_selected(config, &owner) {
        return owner;
    }
    owner.selected = 1;
    if filters & FILTER_COMM == 0 {
        read_comm(&mut owner.comm);
    }
    if filters & (FILTER_CGROUP | FILTER_CGROUP_TREE) == 0 {
        // SAFETY: a helper without arguments.
        owner.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    }
    owner.uid = bpf_get_current_uid_gid() as u32;
    owner
}

/// The current task's name, straight into `comm` (zeros if it cannot be read).
#[inline(always)]
fn read_comm(comm: &mut Comm) {
    // SAFETY: the helper writes at most COMM_LEN bytes into the buffer, and
    // zeros it on failure.
    unsafe { bpf_get_current_comm(comm.0.as_mut_ptr().cast(), COMM_LEN as u32) };
}

/// Whether the filters select `owner`. Not inlined, nor is the ancestor
/// walk in it: a frame of their own adds the least to the egress program's
/// (512 bytes for both together).
#[inline(never)]
fn is_selected(config: &CaptureConfig, owner: &SocketOwner) -> bool {
    let by_pid = config.filters & FILTER_PID != 0
        // SAFETY: the value is a plain u8 that the map keeps alive for the call.
        && unsafe { SELECTED_PIDS.get(&owner.pid) }.is_some();
    let by_tree = config.filters & FILTER_CGROUP_TREE != 0 && in_selected_tree(owner.cgroup_id);
    config.selects(owner, by_pid, by_tree)
}

/// Whether the current task's cgroup (`cgroup_id`), or one of its
/// ancestors, is selected: a pod's cgroup selects every container in it,
/// and a container's the child cgroups a process in it may make. Its key
/// is kept in map memory, to keep the stack to the least.
#[inline(always)]
fn in_selected_tree(cgroup_id: u64) -> bool {
    let Some(key) = TREE_KEY.get_ptr_mut(0) else {
        return false;
    };
    if is_selected_cgroup(key, cgroup_id) {
        return true;
    }
    // Level 0 is the root, which no filter selects.
    let mut level = 1;
    while level < MAX_CGROUP_LEVELS {
        // SAFETY: a helper taking a plain integer; 0 past the task's own level.
        let ancestor = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if ancestor == 0 || ancestor == cgroup_id {
            return false;
        }
        if is_selected_cgroup(key, ancestor) {
            return true;
        }
        level += 1;
    }
    false
}

/// Whether `SELECTED_CGROUPS` holds `id`, looked up through the per-CPU
/// `key` slot. Only a process-context send gets here (receives and TCP's
/// softirq sends use the socket's recorded owner), so no program on this
/// CPU writes the slot between our write and our lookup.
#[inline(always)]
fn is_selected_cgroup(key: *mut u64, id: u64) -> bool {
    // SAFETY: `key` points to this CPU's slot of TREE_KEY, valid while the
    // program runs.
    unsafe { *key = id };
    // SAFETY: the key points to map memory of the key's size; the value is
    // a plain u8 that the map keeps alive for the call.
    unsafe { SELECTED_CGROUPS.get(&*key) }.is_some()
}

/// The sending task as the socket's owner: the recorded owner while the
/// same thread keeps sending from the socket, else asked of the kernel
/// (`current_task`), and asked again every `OWNER_REFRESH_SENDS` sends.
/// Asking costs three helper calls on every DNS packet sent; a thread that
/// renames itself, changes uid or moves cgroup while it keeps one socket
/// shows the change within that many sends. Returns the owner and whether
/// it is new to the socket (a change of thread or of selection).
#[inline(always)]
pub fn sender(
    config: &CaptureConfig,
    cookie: u64,
    netns_cookie: impl FnOnce() -> u64,
) -> (SocketOwner, bool) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let recorded = SOCKETS.get_ptr_mut(&cookie);
    if let Some(recorded) = recorded {
        // SAFETY: the map value lives while this program runs. Another CPU
        // may write it meanwhile (the same socket sending from two
        // threads): read and written through the pointer, never borrowed,
        // a race costs at most a miscounted send.
        unsafe {
            let sends = (*recorded).sends;
            if (*recorded).pid == (pid_tgid >> 32) as u32
                && (*recorded).tid == pid_tgid as u32
                && sends + 1 < OWNER_REFRESH_SENDS
            {
                (*recorded).sends = sends + 1;
                return (recorded.read(), false);
            }
        }
    }
    // A socket never changes namespace: its recorded owner's spares a
    // helper call.
    let known = recorded.map(|recorded| {
        // SAFETY: as above.
        unsafe { recorded.read() }
    });
    let netns_cookie = known.map_or_else(netns_cookie, |known| known.netns_cookie);
    let current = current_task(config, pid_tgid, netns_cookie);
    let new = remember(cookie, known.as_ref(), &current);
    (current, new)
}

/// The owner of a TCP socket that sends: the one recorded, never the
/// current task once there is one. TCP also sends from softirq
/// (retransmissions, data the window held back until an ACK came), where
/// the current task is whatever the CPU was running: the idle task, or an
/// unrelated process. The owner is recorded from the first data the socket
/// sends, which the process's own write sends; never from the idle task.
/// Returns the owner and whether it is new to the socket.
#[inline(always)]
pub fn tcp_sender(
    config: &CaptureConfig,
    cookie: u64,
    netns_cookie: impl FnOnce() -> u64,
) -> (Option<SocketOwner>, bool) {
    if let Some(owner) = recorded(cookie) {
        return (Some(owner), false);
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    if pid_tgid >> 32 == 0 {
        return (None, false);
    }
    let current = current_task(config, pid_tgid, netns_cookie());
    let _ = remember(cookie, None, &current);
    (Some(current), true)
}

/// Remembers the owner so the socket's receives can be attributed. Skips the
/// write when `known`, what the map held, is the same owner: this runs for
/// every DNS packet sent. Returns whether the owner is new to this socket.
#[inline(always)]
pub fn remember(cookie: u64, known: Option<&SocketOwner>, owner: &SocketOwner) -> bool {
    let same_thread = known.is_some_and(|known| {
        known.pid == owner.pid && known.tid == owner.tid && known.selected == owner.selected
    });
    // Written also for the same thread when a field changed (the sock_addr
    // hooks ask at every call), or to restart the count of sends.
    let unchanged = same_thread
        && known.is_some_and(|known| {
            known.sends == 0
                && known.comm.is(&owner.comm.0)
                && known.uid == owner.uid
                && known.cgroup_id == owner.cgroup_id
        });
    if !unchanged {
        // A full LRU map evicts its oldest entry, so this cannot fail for lack of room.
        let _ = SOCKETS.insert(&cookie, owner, 0);
    }
    !same_thread
}

/// The recorded owner of a socket, if it ever sent DNS while we watched.
#[inline(always)]
pub fn recorded(cookie: u64) -> Option<SocketOwner> {
    // SAFETY: copied out at once; the entry may be evicted afterwards.
    unsafe { SOCKETS.get(&cookie) }.copied()
}
