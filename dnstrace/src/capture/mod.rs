//! Capture: loads the kernel programs, attaches them, and hands out raw
//! records. `cgroup.rs` has both backends, and this module picks between
//! them; `reads.rs` is the read program, beside either.

mod cgroup;
mod conntrack;
mod drops;
mod environment;
mod existing_sockets;
mod kernel_log;
mod reads;
mod record;
mod ring;

use std::{
    collections::HashMap,
    os::fd::{AsFd as _, AsRawFd, RawFd},
    path::PathBuf,
};

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, Map, MapData, PerCpuArray},
};
use dnstrace_common::{CaptureConfig, names};
use tokio::io::unix::AsyncFd;

pub use self::{
    conntrack::ConntrackCounters,
    drops::DropNames,
    environment::{cgroup2_root, foreign_pid_namespace, is_cgroup2},
    reads::KernelReadCounts,
    record::{RecordDecoder, ThreadNames, is_drop, parse_drop, parse_record},
};
use crate::{cli::BackendChoice, failure::Failure};

/// The object file `dnstrace/build.rs` built from `dnstrace-ebpf`.
static PROBES: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dnstrace-probes"));

/// What the user asked the kernel side to capture.
pub struct CaptureRequest {
    pub config: CaptureConfig,
    pub pids: Vec<u32>,
    /// Cgroups the pod filters select at start (`FILTER_CGROUP_TREE`).
    pub cgroups: Vec<u64>,
    pub backend: BackendChoice,
    pub ring_buffer_bytes: u32,
    /// `--cgroup-root`: the host's cgroup v2 hierarchy, when not found.
    pub cgroup_root: Option<PathBuf>,
}

/// A backend that could run here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    CgroupSkb,
    CgroupSockaddr,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Self::CgroupSkb => "cgroup-skb",
            Self::CgroupSockaddr => "cgroup-sockaddr",
        }
    }
}

/// The ring buffer map, held for its descriptor, which polls readable when
/// records wait. Not aya's `RingBuf`: that maps the ring's data pages
/// twice in a row (32 MiB of resident set for the default 16 MiB ring),
/// and `ring::Ring` maps them once.
struct RingMap(MapData);

impl AsRawFd for RingMap {
    fn as_raw_fd(&self) -> RawFd {
        self.0.fd().as_fd().as_raw_fd()
    }
}

/// Attached programs and the maps userspace reads. Dropping it detaches
/// everything: the programs hang on bpf_links owned by `ebpf`, and the kernel
/// closes those when the process dies, however it dies.
pub struct Capture {
    ebpf: Ebpf,
    kernel_log: Option<aya_log::EbpfLogger<kernel_log::KernelLog>>,
    /// Registered for readiness only: `ring` reads the records.
    events: AsyncFd<RingMap>,
    ring: ring::Ring,
    lost: PerCpuArray<MapData, u64>,
    unframed: PerCpuArray<MapData, u64>,
    pub backend: Backend,
    /// Backends passed over, each with the reason.
    pub passed_over: Vec<(Backend, String)>,
    /// The kernel's counts of reads, or why there are none.
    reads: Result<reads::KernelReadCounts, String>,
    /// Network namespace cookies and their inodes, as found at start.
    namespaces: HashMap<u64, u64>,
    /// Names for the drop program's records, or why drops are not watched.
    drops: Result<DropNames, String>,
    /// The cgroup v2 hierarchy the programs are attached to, where a
    /// process's cgroup id is looked up.
    pub cgroup_root: PathBuf,
}

/// Gives back to the system what loading the programs freed: the two
/// parses of the kernel's BTF (the drop program's and aya's) take tens of
/// MiB, between allocations that last. glibc keeps freed memory in its
/// heap, where it would count against the agent for its whole run (and,
/// with the ring buffer's pages once those are mapped, in its peak);
/// musl returns it by itself.
fn return_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim takes no pointers; it only hands free pages of
    // the heap back to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl Capture {
    pub fn start(request: &CaptureRequest) -> Result<Self, Failure> {
        environment::check_privileges()?;
        let cgroup_root = environment::cgroup2_root(request.cgroup_root.as_deref())?;
        let candidates: &[Backend] = match request.backend {
            BackendChoice::Auto => &[Backend::CgroupSkb, Backend::CgroupSockaddr],
            BackendChoice::CgroupSkb => &[Backend::CgroupSkb],
            BackendChoice::CgroupSockaddr => &[Backend::CgroupSockaddr],
        };
        // First, so that its parse of the kernel's BTF is freed before
        // aya's: both at once were most of the agent's peak memory.
        let drop_support = drops::supported();
        let kernel_btf = aya::Btf::from_sys_fs().map_err(|e| format!("no kernel BTF: {e}"));
        let read_support = (kernel_btf.as_ref())
            .map_err(Clone::clone)
            .and_then(reads::supported);
        let mut passed_over = Vec::new();
        for &backend in candidates {
            let attached = cgroup::attach(
                backend,
                request,
                &cgroup_root,
                &kernel_btf,
                &read_support,
                &drop_support,
            );
            match attached {
                Ok(attached) => {
                    let drops = attached
                        .drops
                        .and(drop_support.map(|support| support.names));
                    drop(kernel_btf);
                    return_freed_memory();
                    return Self::from_ebpf(
                        attached.ebpf,
                        request.ring_buffer_bytes,
                        backend,
                        passed_over,
                    )
                    .map(|capture| Self {
                        reads: attached.read_counts,
                        namespaces: attached.namespaces,
                        drops,
                        cgroup_root,
                        ..capture
                    });
                }
                Err(reason) => passed_over.push((backend, reason)),
            }
        }
        let reasons: Vec<String> = passed_over
            .iter()
            .map(|(backend, reason)| format!("{}: {reason}", backend.name()))
            .collect();
        Err(Failure::setup(format!(
            "no capture backend works on this kernel ({})",
            reasons.join("; ")
        )))
    }

    fn from_ebpf(
        mut ebpf: Ebpf,
        ring_buffer_bytes: u32,
        backend: Backend,
        passed_over: Vec<(Backend, String)>,
    ) -> Result<Self, Failure> {
        let map = |ebpf: &mut Ebpf, name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| Failure::setup(format!("internal: the probes lack map {name}")))
        };
        let Map::RingBuf(events) = map(&mut ebpf, names::EVENTS)? else {
            return Err(Failure::setup(format!(
                "internal: {} is not a ring buffer",
                names::EVENTS
            )));
        };
        let lost = PerCpuArray::try_from(map(&mut ebpf, names::LOST)?)
            .map_err(|e| Failure::setup(format!("internal: {}: {e}", names::LOST)))?;
        let unframed = PerCpuArray::try_from(map(&mut ebpf, names::UNFRAMED)?)
            .map_err(|e| Failure::setup(format!("internal: {}: {e}", names::UNFRAMED)))?;
        let ring = ring::Ring::new(events.fd().as_fd(), ring_buffer_bytes as usize)
            .map_err(|e| Failure::setup(format!("cannot map the ring buffer: {e}")))?;
        // SAFETY: the MapData owns its map fd, keeps it open until it is
        // dropped, and always returns that same fd.
        let events = unsafe {
            AsyncFd::register_with_interest(RingMap(events), tokio::io::Interest::READABLE)
        }
        .map_err(|e| Failure::setup(format!("cannot poll the ring buffer: {e}")))?;
        Ok(Self {
            kernel_log: kernel_log::attach(&mut ebpf),
            ebpf,
            events,
            ring,
            lost,
            unframed,
            backend,
            passed_over,
            reads: Err("not attached".into()),
            namespaces: HashMap::new(),
            drops: Err("not attached".into()),
            cgroup_root: PathBuf::new(),
        })
    }

    /// The kernel's counts of each DNS client socket's reads, or why this
    /// kernel cannot keep them; once.
    pub fn take_read_counts(&mut self) -> Result<reads::KernelReadCounts, String> {
        std::mem::replace(&mut self.reads, Err("already taken".into()))
    }

    /// Whether the kernel's drops of DNS packets are watched, or why not.
    pub fn drops_watched(&self) -> Result<(), &str> {
        self.drops.as_ref().map(|_| ()).map_err(String::as_str)
    }

    /// Names for drop records, or why drops are not watched; once.
    pub fn take_drop_names(&mut self) -> Result<DropNames, String> {
        std::mem::replace(&mut self.drops, Err("already taken".into()))
    }

    /// The map of cgroups the pod filters select, for the watcher that
    /// keeps it up to date; once.
    pub fn take_selected_cgroups(&mut self) -> Result<BpfHashMap<MapData, u64, u8>, String> {
        let map = self
            .ebpf
            .take_map(names::SELECTED_CGROUPS)
            .ok_or("the probes lack the cgroup map")?;
        BpfHashMap::try_from(map).map_err(|e| format!("cgroup map: {e}"))
    }

    /// The network namespaces found at start (cookie → inode); once.
    pub fn take_namespaces(&mut self) -> HashMap<u64, u64> {
        std::mem::take(&mut self.namespaces)
    }

    /// Waits until the ring has records. Readiness is cleared before the
    /// caller drains, so a record written meanwhile wakes the next wait.
    pub async fn wait(&self) -> std::io::Result<()> {
        let mut guard = self.events.readable().await?;
        guard.clear_ready();
        Ok(())
    }

    /// Detaches every program, so that a following `drain` sees the last
    /// record: nothing can arrive between the two.
    pub fn detach(&mut self) {
        for (_, program) in self.ebpf.programs_mut() {
            // Unloading drops the program's links; an error means it was
            // never loaded, which leaves nothing to detach.
            let _ = match program {
                aya::programs::Program::CgroupSkb(program) => program.unload(),
                aya::programs::Program::CgroupSockAddr(program) => program.unload(),
                aya::programs::Program::BtfTracePoint(program) => program.unload(),
                _ => Ok(()),
            };
        }
    }

    /// Hands over every record already in the ring, without waiting, each
    /// with the ring's backlog in bytes.
    pub fn drain(&mut self, handle: impl FnMut(&[u8], usize)) {
        self.ring.drain(handle);
    }

    /// The ring buffer's size in bytes.
    pub fn ring_bytes(&self) -> usize {
        self.ring.size()
    }

    /// Prints what the kernel programs logged since the last call.
    pub fn flush_kernel_log(&mut self) {
        if let Some(log) = &mut self.kernel_log {
            log.flush();
        }
    }

    /// Records dropped in the kernel because the ring was full, per CPU.
    pub fn lost_per_cpu(&self) -> Result<Vec<u64>, String> {
        self.lost
            .get(&0, 0)
            .map(|values| values.iter().copied().collect())
            .map_err(|e| format!("cannot read the lost-event counters: {e}"))
    }

    /// TCP streams whose framing the kernel gave up, on every CPU.
    pub fn unframed_tcp_streams(&self) -> Result<u64, String> {
        self.unframed
            .get(&0, 0)
            .map(|values| values.iter().sum())
            .map_err(|e| format!("cannot read the unframed-stream counters: {e}"))
    }
}
