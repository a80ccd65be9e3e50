//! Who a socket belongs to, and whether the process filters select it.

use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
    generated::bpf_get_current_cgroup_id,
};
use dnstrace_common::{CaptureConfig, FILTER_PID, SocketOwner};

use crate::maps::{SELECTED_PIDS, SOCKETS};

/// The current task as a socket owner. Callers pass the netns cookie because
/// the helper that gives it takes the program's context.
#[inline(always)]
pub fn current_task(config: &CaptureConfig, netns_cookie: u64) -> SocketOwner {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: a helper without arguments.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let mut owner = SocketOwner {
        cgroup_id,
        netns_cookie,
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        uid: bpf_get_current_uid_gid() as u32,
        selected: 0,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    owner.selected = is_selected(config, &owner) as u32;
    owner
}

#[inline(always)]
fn is_selected(config: &CaptureConfig, owner: &SocketOwner) -> bool {
    let by_pid = config.filters & FILTER_PID != 0
        // SAFETY: the value is a plain u8 that the map keeps alive for the call.
        && unsafe { SELECTED_PIDS.get(&owner.pid) }.is_some();
    config.selects(owner, by_pid)
}

/// Remembers the owner so the socket's receives can be attributed. Skips the
/// write when nothing changed: this runs for every DNS packet sent. Returns
/// whether the owner is new to this socket.
#[inline(always)]
pub fn remember(cookie: u64, owner: &SocketOwner) -> bool {
    // SAFETY: the map value is plain data; we only read it.
    let unchanged = unsafe { SOCKETS.get(&cookie) }.is_some_and(|known| {
        known.pid == owner.pid && known.tid == owner.tid && known.selected == owner.selected
    });
    if !unchanged {
        // A full LRU map evicts its oldest entry, so this cannot fail for lack of room.
        let _ = SOCKETS.insert(&cookie, owner, 0);
    }
    !unchanged
}

/// The recorded owner of a socket, if it ever sent DNS while we watched.
#[inline(always)]
pub fn recorded(cookie: u64) -> Option<SocketOwner> {
    // SAFETY: copied out at once; the entry may be evicted afterwards.
    unsafe { SOCKETS.get(&cookie) }.copied()
}
