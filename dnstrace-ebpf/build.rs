// Rebuild the probes when bpf-linker changes: cargo cannot see that it is an
// input, and a stale object linked by an old LLVM fails at load time.
fn main() {
    let linker = std::path::Path::new("/opt/dnstrace-toolchain/bin/bpf-linker");
    if linker.exists() {
        println!("cargo::rerun-if-changed={}", linker.display());
    } else if let Ok(path) = which::which("bpf-linker") {
        println!("cargo::rerun-if-changed={}", path.display());
    }
}
