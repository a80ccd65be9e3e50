//! Builds the kernel programs with the pinned nightly and bpf-linker, so the
//! agent can embed them (see scripts/toolchains.env for the pins).
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

/// Keep in step with EBPF_TOOLCHAIN in scripts/toolchains.env.
const EBPF_TOOLCHAIN: &str = "nightly-2026-08-15";

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|package| package.name.as_str() == "dnstrace-ebpf")
        .ok_or_else(|| anyhow!("dnstrace-ebpf is not in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("dnstrace-ebpf has no manifest directory"))?;
    aya_build::build_ebpf(
        [Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::Custom(EBPF_TOOLCHAIN),
    )
}
