//! The kernel programs' cost, from the kernel's BPF run-time statistics:
//! each program's total run time and run count, counted only while
//! statistics are enabled (they add two clock reads to every run, so the
//! bench enables them for a window in the middle of each traced run).

use std::{
    collections::BTreeMap,
    fs,
    os::fd::{FromRawFd as _, OwnedFd},
    process::Command,
};

use anyhow::Context as _;

/// `BPF_ENABLE_STATS` and `BPF_STATS_RUN_TIME` from the kernel's UAPI.
const BPF_ENABLE_STATS: libc::c_long = 32;
const BPF_STATS_RUN_TIME: u32 = 0;

/// Run-time statistics on for as long as this lives. The kernel counts
/// the descriptor as one reason to keep them on and drops it when the
/// descriptor closes, however the bench ends, so the machine's own
/// setting (`kernel.bpf_stats_enabled`) is left as it was.
pub struct StatsEnabled {
    _descriptor: OwnedFd,
}

impl StatsEnabled {
    pub fn new() -> anyhow::Result<Self> {
        // `union bpf_attr` for this command is `{ __u32 type; }`; the rest
        // the kernel checks to be zero.
        let mut attr = [0u32; 4];
        attr[0] = BPF_STATS_RUN_TIME;
        // SAFETY: the bpf syscall reads `size_of_val(&attr)` bytes from a
        // buffer we own and returns a new descriptor or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_ENABLE_STATS,
                attr.as_mut_ptr(),
                std::mem::size_of_val(&attr),
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("BPF_ENABLE_STATS");
        }
        let fd = i32::try_from(fd).context("BPF_ENABLE_STATS gave a bad descriptor")?;
        // SAFETY: the kernel just gave us this descriptor; nothing else owns it.
        Ok(Self {
            _descriptor: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }
}

/// Run time and count of one program.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    pub run_time_ns: u64,
    pub runs: u64,
}

/// The programs a process holds, by program id, from the fdinfo of its
/// BPF program descriptors.
pub fn read(pid: u32) -> anyhow::Result<BTreeMap<u32, Counts>> {
    let mut programs = BTreeMap::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fdinfo"))?.flatten() {
        let Ok(info) = fs::read_to_string(entry.path()) else {
            continue;
        };
        let value = |key: &str| {
            info.lines()
                .find_map(|line| line.strip_prefix(key)?.trim().parse::<u64>().ok())
        };
        if let (Some(id), Some(run_time_ns), Some(runs)) =
            (value("prog_id:"), value("run_time_ns:"), value("run_cnt:"))
        {
            // A program may be held through several descriptors.
            let id = u32::try_from(id)?;
            programs.insert(id, Counts { run_time_ns, runs });
        }
    }
    Ok(programs)
}

/// What ran between two reads of the same process's programs.
pub fn delta(
    before: &BTreeMap<u32, Counts>,
    after: &BTreeMap<u32, Counts>,
) -> BTreeMap<u32, Counts> {
    after
        .iter()
        .map(|(id, end)| {
            let start = before.get(id).copied().unwrap_or_default();
            let counts = Counts {
                run_time_ns: end.run_time_ns.saturating_sub(start.run_time_ns),
                runs: end.runs.saturating_sub(start.runs),
            };
            (*id, counts)
        })
        .collect()
}

/// Program names by id, from bpftool (the kernel keeps their first 15
/// bytes); `prog ID` for any bpftool does not name.
pub fn names(ids: impl IntoIterator<Item = u32>) -> BTreeMap<u32, String> {
    let listed: Vec<serde_json::Value> = Command::new("bpftool")
        .args(["--json", "prog", "show"])
        .output()
        .ok()
        .and_then(|output| serde_json::from_slice(&output.stdout).ok())
        .unwrap_or_default();
    ids.into_iter()
        .map(|id| {
            let name = listed
                .iter()
                .find(|program| program["id"].as_u64() == Some(u64::from(id)))
                .and_then(|program| program["name"].as_str())
                .map_or_else(|| format!("prog {id}"), str::to_string);
            (id, name)
        })
        .collect()
}
