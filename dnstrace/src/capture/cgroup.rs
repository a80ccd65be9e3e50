//! The cgroup backends: cgroup_skb egress and ingress on the cgroup v2 root,
//! which sees every socket of every process in every network namespace, with
//! a stable UAPI context (no kernel struct offsets).
//!
//! `cgroup-skb` asks the kernel who the sending task is from the egress
//! program. `cgroup-sockaddr` is for kernels that refuse those helpers in
//! cgroup_skb (Debian's 6.1): connect and sendmsg hooks, which run in the
//! calling process, record each DNS socket's owner instead.
//!
//! Attaching also attaches the read program (`reads.rs`) first, where the
//! kernel has it, and seeds the owners of the DNS sockets that exist
//! already, found in one look into every network namespace.

use std::{collections::HashMap, fs::File, path::Path};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::HashMap as BpfHashMap,
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, ProgramError},
};
use dnstrace_common::{MAX_TCP_MESSAGES_PER_SEGMENT, SocketOwner, names};

use super::{
    Backend, CaptureRequest, PROBES,
    drops::{self, DropSupport},
    existing_sockets,
    reads::{self, KernelReadCounts},
};

/// What attaching a backend gives.
pub struct Attached {
    pub ebpf: Ebpf,
    /// The read counts, or why there are none.
    pub read_counts: Result<KernelReadCounts, String>,
    /// Whether the drop program is attached, or why not.
    pub drops: Result<(), String>,
    /// Network namespace cookies and their inodes, as found at start.
    pub namespaces: HashMap<u64, u64>,
}

/// Loads the probes for `backend` and attaches them to `cgroup_root`, with
/// the read program first where `read_support` has the kernel's BTF for
/// it: attached later, it would miss reads of responses ingress already
/// counted, and their sockets would stay a read behind. The error is the
/// reason this backend cannot run here.
pub fn attach(
    backend: Backend,
    request: &CaptureRequest,
    cgroup_root: &Path,
    kernel_btf: &Result<Btf, String>,
    read_support: &Result<&Btf, String>,
    drop_support: &Result<DropSupport, String>,
) -> Result<Attached, String> {
    let mut config = request.config;
    config.skb_task_helpers = u32::from(backend == Backend::CgroupSkb);
    config.track_reads = u32::from(read_support.is_ok());
    // The kernels that need cgroup-sockaddr have a verifier that gives up
    // on walking the emitting code more than once per program.
    let tcp_messages_per_segment: u32 = match backend {
        Backend::CgroupSkb => MAX_TCP_MESSAGES_PER_SEGMENT,
        Backend::CgroupSockaddr => 1,
    };
    let mut loader = EbpfLoader::new();
    // Parsed once for every use: the kernel's BTF takes tens of MiB.
    if let Ok(btf) = kernel_btf {
        loader.btf(btf);
    }
    loader
        .override_global(names::CONFIG, &config, true)
        .override_global(
            names::TCP_MESSAGES_PER_SEGMENT,
            &tcp_messages_per_segment,
            true,
        )
        .map_max_entries(names::EVENTS, request.ring_buffer_bytes);
    if let Ok(support) = drop_support {
        loader.override_global(names::DROP_CONFIG, &support.config, true);
    }
    let mut ebpf = loader
        .load(PROBES)
        .map_err(|e| format!("loading the probes failed: {e}"))?;

    select(&mut ebpf, names::SELECTED_PIDS, "pid", &request.pids)?;
    select(
        &mut ebpf,
        names::SELECTED_CGROUPS,
        "cgroup",
        &request.cgroups,
    )?;

    let read_counts = match read_support {
        Ok(btf) => reads::attach(&mut ebpf, btf),
        Err(reason) => Err(reason.clone()),
    };
    let drops = match drop_support {
        Ok(_) => (kernel_btf.as_ref())
            .map_err(Clone::clone)
            .and_then(|btf| drops::attach(&mut ebpf, btf)),
        Err(reason) => Err(reason.clone()),
    };
    let cgroup = File::open(cgroup_root)
        .map_err(|e| format!("cannot open {}: {e}", cgroup_root.display()))?;
    for (name, attach_type) in [
        (names::SKB_EGRESS, CgroupSkbAttachType::Egress),
        (names::SKB_INGRESS, CgroupSkbAttachType::Ingress),
    ] {
        let program: &mut CgroupSkb = program(&mut ebpf, name)?;
        program.load().map_err(|e| explain(name, e))?;
        program
            .attach(&cgroup, attach_type, CgroupAttachMode::Single)
            .map_err(|e| explain(name, e))?;
    }
    if backend == Backend::CgroupSockaddr {
        for name in [
            names::CONNECT4,
            names::CONNECT6,
            names::SENDMSG4,
            names::SENDMSG6,
        ] {
            let program: &mut CgroupSockAddr = program(&mut ebpf, name)?;
            program.load().map_err(|e| explain(name, e))?;
            program
                .attach(&cgroup, CgroupAttachMode::Single)
                .map_err(|e| explain(name, e))?;
        }
    }
    // Owners of sockets that existed before the programs were attached. A
    // socket that sent since keeps the owner the probes recorded (NOEXIST).
    const BPF_NOEXIST: u64 = 1;
    let mut sockets: BpfHashMap<_, u64, SocketOwner> = ebpf
        .map_mut(names::SOCKETS)
        .ok_or("the probes lack the socket map")?
        .try_into()
        .map_err(|e| format!("socket map: {e}"))?;
    let existing = existing_sockets::look(&config, request, cgroup_root);
    for (cookie, owner) in &existing.owners {
        let _ = sockets.insert(cookie, owner, BPF_NOEXIST);
    }

    Ok(Attached {
        ebpf,
        read_counts,
        drops,
        namespaces: existing.namespaces,
    })
}

pub(super) fn program<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P, String>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| format!("the probes lack program {name}"))?
        .try_into()
        .map_err(|e| format!("{name}: {e}"))
}

/// Puts `keys` in the selection map `map` (`what` names them in errors).
fn select<K: aya::Pod + std::fmt::Display>(
    ebpf: &mut Ebpf,
    map: &str,
    what: &str,
    keys: &[K],
) -> Result<(), String> {
    if keys.is_empty() {
        return Ok(());
    }
    let mut selected: BpfHashMap<_, K, u8> = ebpf
        .map_mut(map)
        .ok_or_else(|| format!("the probes lack the {what} map"))?
        .try_into()
        .map_err(|e| format!("{what} map: {e}"))?;
    for key in keys {
        selected
            .insert(key, &1, 0)
            .map_err(|e| format!("cannot select {what} {key}: {e}"))?;
    }
    Ok(())
}

/// A verifier rejection gives a long log; its last line says why.
pub(super) fn explain(name: &str, error: ProgramError) -> String {
    match &error {
        ProgramError::LoadError { verifier_log, .. } => {
            let log = verifier_log.to_string();
            // The log ends with statistics ("verification time", "stack
            // depth", "processed N insns"); the verdict is the line before.
            let reason = log
                .lines()
                .rev()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .find(|line| {
                    !["processed ", "verification time", "stack depth"]
                        .iter()
                        .any(|statistic| line.starts_with(statistic))
                })
                .unwrap_or("no reason given");
            format!("the kernel refused {name}: {reason}")
        }
        _ => format!("{name}: {error}"),
    }
}
