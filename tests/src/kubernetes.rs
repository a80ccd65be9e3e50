//! What the Kubernetes tests share: the DaemonSet's promises.

/// The capabilities the DaemonSet adds after dropping ALL, in its order:
/// what the agent was measured to need (docs/kubernetes.md).
pub const AGENT_CAPABILITIES: &[&str] = &[
    "BPF",
    "PERFMON",
    "NET_ADMIN",
    "SYS_ADMIN",
    "SYS_PTRACE",
    "DAC_READ_SEARCH",
];
