//! Sockets that existed before dnstrace started: a DNS server's listening
//! socket receives its first query before it ever sends, so the kernel side
//! has no owner to attribute it to. Each network namespace is asked for its
//! UDP sockets on DNS ports (sock_diag, as `ss -u` does), each socket is
//! traced to its process through /proc/PID/fd, and the owner is written
//! into the probes' socket map.

use std::{collections::HashMap, fs, mem::size_of, os::fd::FromRawFd, path::Path};

use dnstrace_common::{COMM_LEN, CaptureConfig, Comm, OWNER_REFRESH_SENDS, SocketOwner};

use super::CaptureRequest;
use crate::process::{all_network_namespaces, current_netns_cookie, in_network_namespace};

/// One socket sock_diag reported.
struct DiagSocket {
    cookie: u64,
    inode: u64,
    uid: u32,
    netns_cookie: u64,
}

/// What a look into every network namespace at start-up found.
pub struct Existing {
    /// Owners of the DNS sockets that exist now, by socket cookie.
    pub owners: Vec<(u64, SocketOwner)>,
    /// Each namespace's cookie, and its inode: entering a namespace costs a
    /// thread, so the agent takes its map of namespaces from this one look.
    pub namespaces: HashMap<u64, u64>,
}

pub fn look(config: &CaptureConfig, request: &CaptureRequest, cgroup_root: &Path) -> Existing {
    let mut sockets = Vec::new();
    let mut namespaces = HashMap::new();
    for (namespace, inode) in all_network_namespaces() {
        let here = in_network_namespace(&namespace, || {
            let cookie = current_netns_cookie()?;
            Ok((cookie, dns_sockets_here(config, cookie)))
        });
        if let Ok((cookie, found)) = here {
            namespaces.insert(cookie, inode);
            sockets.extend(found.unwrap_or_default());
        }
    }
    Existing {
        owners: owners(sockets, config, request, cgroup_root),
        namespaces,
    }
}

fn owners(
    sockets: Vec<DiagSocket>,
    config: &CaptureConfig,
    request: &CaptureRequest,
    cgroup_root: &Path,
) -> Vec<(u64, SocketOwner)> {
    if sockets.is_empty() {
        return Vec::new();
    }
    let pid_by_inode = socket_inode_owners();
    sockets
        .into_iter()
        .filter_map(|socket| {
            let pid = *pid_by_inode.get(&socket.inode)?;
            let cgroups = cgroup_ids_of(pid, cgroup_root);
            let mut owner = SocketOwner {
                cgroup_id: cgroups.first().copied().unwrap_or(0),
                netns_cookie: socket.netns_cookie,
                pid,
                tid: pid,
                uid: socket.uid,
                selected: 0,
                // Guessed from /proc: the first send asks the kernel.
                sends: OWNER_REFRESH_SENDS,
                _padding: 0,
                comm: Comm(comm_of(pid)?),
            };
            let by_pid = request.pids.contains(&pid);
            let by_tree = cgroups.iter().any(|id| request.cgroups.contains(id));
            owner.selected = u32::from(config.selects(&owner, by_pid, by_tree));
            Some((socket.cookie, owner))
        })
        .collect()
}

/// UDP sockets of this thread's network namespace (whose cookie is
/// `netns_cookie`) whose local or remote port is a DNS port.
fn dns_sockets_here(config: &CaptureConfig, netns_cookie: u64) -> Result<Vec<DiagSocket>, String> {
    let mut found = Vec::new();
    for family in [libc::AF_INET, libc::AF_INET6] {
        for socket in dump_udp(family as u8)? {
            if config.is_dns_port(socket.local_port) || config.is_dns_port(socket.remote_port) {
                found.push(DiagSocket {
                    cookie: socket.cookie,
                    inode: socket.inode,
                    uid: socket.uid,
                    netns_cookie,
                });
            }
        }
    }
    Ok(found)
}

struct DumpedSocket {
    local_port: u16,
    remote_port: u16,
    cookie: u64,
    inode: u64,
    uid: u32,
}

// sock_diag's UAPI (linux/inet_diag.h, linux/sock_diag.h).
const SOCK_DIAG_BY_FAMILY: u16 = 20;

#[repr(C)]
#[derive(Clone, Copy)]
struct InetDiagSockId {
    sport: [u8; 2],
    dport: [u8; 2],
    src: [u32; 4],
    dst: [u32; 4],
    interface: u32,
    cookie: [u32; 2],
}

#[repr(C)]
struct InetDiagReqV2 {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: InetDiagSockId,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct InetDiagMsg {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: InetDiagSockId,
    expires: u32,
    rqueue: u32,
    wqueue: u32,
    uid: u32,
    inode: u32,
}

#[repr(C)]
struct Request {
    header: libc::nlmsghdr,
    body: InetDiagReqV2,
}

/// Dumps every UDP socket of one family in this namespace.
fn dump_udp(family: u8) -> Result<Vec<DumpedSocket>, String> {
    let os_error = |what: &str| format!("sock_diag {what}: {}", std::io::Error::last_os_error());
    // SAFETY: a plain socket call; the fd is owned by `socket` below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(os_error("socket"));
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let socket = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let request = Request {
        header: libc::nlmsghdr {
            nlmsg_len: size_of::<Request>() as u32,
            nlmsg_type: SOCK_DIAG_BY_FAMILY,
            nlmsg_flags: (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
            nlmsg_seq: 1,
            nlmsg_pid: 0,
        },
        body: InetDiagReqV2 {
            family,
            protocol: libc::IPPROTO_UDP as u8,
            ext: 0,
            pad: 0,
            states: u32::MAX,
            // SAFETY: all-zero is a valid id: match every socket.
            id: unsafe { std::mem::zeroed() },
        },
    };
    // SAFETY: sending the bytes of a repr(C) request we own.
    let sent = unsafe {
        libc::send(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            (&raw const request).cast(),
            size_of::<Request>(),
            0,
        )
    };
    if sent < 0 {
        return Err(os_error("send"));
    }
    let mut sockets = Vec::new();
    let mut buffer = vec![0u8; 32 * 1024];
    loop {
        // SAFETY: receiving into a buffer we own, up to its length.
        let received = unsafe {
            libc::recv(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                0,
            )
        };
        if received < 0 {
            return Err(os_error("recv"));
        }
        let mut rest = &buffer[..received as usize];
        while rest.len() >= size_of::<libc::nlmsghdr>() {
            // SAFETY: at least a header's worth of bytes; read unaligned.
            let header: libc::nlmsghdr = unsafe { std::ptr::read_unaligned(rest.as_ptr().cast()) };
            let len = header.nlmsg_len as usize;
            if len < size_of::<libc::nlmsghdr>() || len > rest.len() {
                return Err("sock_diag: malformed reply".into());
            }
            match i32::from(header.nlmsg_type) {
                libc::NLMSG_DONE => return Ok(sockets),
                libc::NLMSG_ERROR => return Err("sock_diag: the kernel refused the dump".into()),
                _ => {}
            }
            let body = &rest[size_of::<libc::nlmsghdr>()..len];
            if body.len() >= size_of::<InetDiagMsg>() {
                // SAFETY: the body holds a whole inet_diag_msg; read unaligned.
                let message: InetDiagMsg =
                    unsafe { std::ptr::read_unaligned(body.as_ptr().cast()) };
                sockets.push(DumpedSocket {
                    local_port: u16::from_be_bytes(message.id.sport),
                    remote_port: u16::from_be_bytes(message.id.dport),
                    cookie: u64::from(message.id.cookie[0]) | u64::from(message.id.cookie[1]) << 32,
                    inode: u64::from(message.inode),
                    uid: message.uid,
                });
            }
            // Netlink messages are 4-byte aligned.
            let advance = (len + 3) & !3;
            rest = rest.get(advance..).unwrap_or(&[]);
        }
    }
}

/// Socket inode → the first process holding it open.
fn socket_inode_owners() -> HashMap<u64, u32> {
    let mut owners = HashMap::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        for fd in fs::read_dir(entry.path().join("fd"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            let inode = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok());
            if let Some(inode) = inode {
                owners.entry(inode).or_insert(pid);
            }
        }
    }
    owners
}

fn comm_of(pid: u32) -> Option<[u8; COMM_LEN]> {
    let name = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    let name = name.trim_end_matches('\n').as_bytes();
    let mut comm = [0; COMM_LEN];
    let kept = name.len().min(COMM_LEN - 1);
    comm[..kept].copy_from_slice(&name[..kept]);
    Some(comm)
}

/// The id of a process's cgroup v2: the inode of its directory.
/// The ids of `pid`'s cgroup v2 and of its ancestors below the root, its
/// own first, as the kernel programs look at them.
fn cgroup_ids_of(pid: u32, cgroup_root: &Path) -> Vec<u64> {
    use std::os::unix::fs::MetadataExt;
    let Ok(cgroups) = fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return Vec::new();
    };
    let Some(path) = cgroups.lines().find_map(|line| line.strip_prefix("0::")) else {
        return Vec::new();
    };
    let mut directory = cgroup_root.join(path.trim_start_matches('/'));
    let mut ids = Vec::new();
    while directory.starts_with(cgroup_root) && directory != cgroup_root {
        match fs::metadata(&directory) {
            Ok(metadata) => ids.push(metadata.ino()),
            Err(_) if ids.is_empty() => return ids,
            Err(_) => break,
        }
        if !directory.pop() {
            break;
        }
    }
    ids
}
