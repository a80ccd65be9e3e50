//! The read program: tells which received responses the process read,
//! where the kernel has the `sock:sock_recv_length` tracepoint (6.3 and
//! later). Whether it can run is known from the kernel's BTF before the
//! probes load, so the ingress programs count responses only when it will.

use aya::{Btf, Ebpf, programs::BtfTracePoint};
use dnstrace_common::names;

use super::cgroup::{explain, program};

/// The kernel's BTF, when the read program can attach to it; otherwise
/// why not.
pub fn supported() -> Result<Btf, String> {
    let btf = Btf::from_sys_fs().map_err(|e| format!("no kernel BTF: {e}"))?;
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

pub fn attach(ebpf: &mut Ebpf, btf: &Btf) -> Result<(), String> {
    let name = names::SOCK_RECV_LENGTH;
    let program: &mut BtfTracePoint = program(ebpf, name)?;
    program
        .load(names::SOCK_RECV_LENGTH_TRACEPOINT, btf)
        .map_err(|e| explain(name, e))?;
    program.attach().map_err(|e| explain(name, e))?;
    Ok(())
}
