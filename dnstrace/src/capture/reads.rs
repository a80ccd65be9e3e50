//! The read program: counts each DNS client socket's reads, where the
//! kernel has the `sock:sock_recv_length` tracepoint (6.3 and later).
//! Whether the tracepoint exists is read from the kernel's BTF before the
//! probes load, and ingress numbers responses only then. (Should the
//! program still fail to attach, the numbers go unused and
//! `response_read` is null.)

use aya::{
    Btf, Ebpf,
    maps::{HashMap, MapData},
    programs::BtfTracePoint,
};
use dnstrace_common::{ReadCounts, names};

use super::cgroup::{explain, program};

/// The counts the read program keeps, by socket cookie, and the last
/// count read of each socket: a look at the map is a system call, and a
/// busy socket's count read for one response already covers the
/// responses before it.
pub struct KernelReadCounts {
    map: HashMap<MapData, u64, ReadCounts>,
    known: std::collections::HashMap<u64, u64>,
}

/// Sockets whose last count is kept; all are forgotten at once past it.
const KNOWN_SOCKETS: usize = 16_384;

impl KernelReadCounts {
    /// The socket's reads, or its last count read when that already
    /// reaches `number` (counts only grow, and a cookie names one socket
    /// for the whole boot); `None` when the map has no counts for it.
    pub fn reads(&mut self, socket_cookie: u64, number: u64) -> Option<u64> {
        if let Some(&known) = self.known.get(&socket_cookie)
            && known >= number
        {
            return Some(known);
        }
        let reads = self.map.get(&socket_cookie, 0).ok()?.read;
        if self.known.len() >= KNOWN_SOCKETS {
            self.known.clear();
        }
        self.known.insert(socket_cookie, reads);
        Some(reads)
    }
}

/// The kernel's BTF `btf`, when the read program can attach to it;
/// otherwise why not.
pub fn supported(btf: &Btf) -> Result<&Btf, String> {
    // Each tracepoint has a typedef `btf_trace_NAME` in the kernel's BTF.
    let typedef = format!("btf_trace_{}", names::SOCK_RECV_LENGTH_TRACEPOINT);
    btf.id_by_type_name_kind(&typedef, aya_obj::btf::BtfKind::Typedef)
        .map_err(|_| {
            format!(
                "this kernel has no {} tracepoint (Linux 6.3 added it)",
                names::SOCK_RECV_LENGTH_TRACEPOINT
            )
        })?;
    Ok(btf)
}

pub fn attach(ebpf: &mut Ebpf, btf: &Btf) -> Result<KernelReadCounts, String> {
    let name = names::SOCK_RECV_LENGTH;
    let program: &mut BtfTracePoint = program(ebpf, name)?;
    program
        .load(names::SOCK_RECV_LENGTH_TRACEPOINT, btf)
        .map_err(|e| explain(name, e))?;
    program.attach().map_err(|e| explain(name, e))?;
    let map = ebpf
        .take_map(names::RESPONSES)
        .ok_or("the probes lack the response map")?;
    HashMap::try_from(map)
        .map(|map| KernelReadCounts {
            map,
            known: std::collections::HashMap::new(),
        })
        .map_err(|e| format!("response map: {e}"))
}
