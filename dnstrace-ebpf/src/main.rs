//! dnstrace's kernel programs.
//!
//! `skb` sees every DNS packet a socket sends or receives, in every network
//! namespace, from cgroup_skb hooks on the cgroup v2 root. `sock_addr` records
//! socket owners from connect/sendmsg on kernels whose cgroup_skb programs may
//! not ask who the current task is. `read` tells whether a process read the
//! responses it received, where the kernel has the tracepoint for it. What
//! they share has files of its own, and no program file imports another:
//! `maps` (maps, configuration, counters), `packet` (finding the DNS
//! message in a packet), `tcp` (where DNS messages begin in a TCP stream),
//! `owner` (who owns a socket), `emit` (a message into the ring buffer).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Atomic adds: the BPF target has them, but Rust offers them only through
// the intrinsic, as the target has no compare-and-swap (see maps::add).
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[cfg(target_arch = "bpf")]
mod drop;
#[cfg(target_arch = "bpf")]
mod emit;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod owner;
#[cfg(target_arch = "bpf")]
mod packet;
#[cfg(target_arch = "bpf")]
mod read;
#[cfg(target_arch = "bpf")]
mod skb;
#[cfg(target_arch = "bpf")]
mod sock_addr;
#[cfg(target_arch = "bpf")]
mod tcp;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this.
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

// On the host (clippy, `cargo test`) this crate is an empty binary.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
