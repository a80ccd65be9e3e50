//! `cargo xtask image`: the OCI image a Kubernetes node runs. It holds the
//! static release binary and nothing else (`FROM scratch`), is built with
//! Debian's buildah (no registry is pulled from), and is written as an OCI
//! archive under target/ that `ctr images import`, `podman load` and
//! `skopeo copy` take (docs/kubernetes.md).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::command::{self, workspace_root};

#[derive(Args, Default)]
pub struct Options {
    /// Where to write the OCI archive (default target/dnstrace-VERSION.oci.tar).
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// The image's name; its tag is the crate's version.
pub const IMAGE_NAME: &str = "dnstrace";

/// The name the archive carries, fully qualified: kubelet and the CRI
/// resolve the DaemonSet's `dnstrace:VERSION` to it, so an archive imported
/// with `ctr -n k8s.io images import` is found under the name the
/// DaemonSet uses.
pub fn tag() -> String {
    format!(
        "docker.io/library/{IMAGE_NAME}:{}",
        env!("CARGO_PKG_VERSION")
    )
}

/// Builds the image and returns the archive's path.
pub fn run(options: &Options) -> anyhow::Result<PathBuf> {
    let agent = command::build_static_agent()?;
    let archive = options.output.clone().unwrap_or_else(|| {
        workspace_root().join(format!(
            "target/{IMAGE_NAME}-{}.oci.tar",
            env!("CARGO_PKG_VERSION")
        ))
    });
    build(&agent, &archive)?;
    println!("xtask: image {} written to {}", tag(), archive.display());
    Ok(archive)
}

fn build(agent: &Path, archive: &Path) -> anyhow::Result<()> {
    let storage = workspace_root().join("target/buildah");
    // vfs works wherever the build runs (a container has no overlayfs to
    // nest); the image is one small layer, so its copies cost nothing.
    let buildah = || {
        let mut command = Command::new("buildah");
        command
            .arg("--storage-driver=vfs")
            .arg("--root")
            .arg(storage.join("root"))
            .arg("--runroot")
            .arg(storage.join("run"));
        command
    };
    let container = output(buildah().args(["from", "scratch"]))?;
    let result = (|| {
        command::run(
            buildah()
                .arg("copy")
                .arg(&container)
                .arg(agent)
                .arg("/dnstrace"),
        )?;
        command::run(buildah().args([
            "config",
            "--entrypoint",
            r#"["/dnstrace"]"#,
            "--cmd",
            "",
            "--label",
            &format!(
                "org.opencontainers.image.version={}",
                env!("CARGO_PKG_VERSION")
            ),
            "--label",
            "org.opencontainers.image.title=dnstrace",
            "--label",
            "org.opencontainers.image.description=eBPF DNS tracer: which process is failing DNS, and why",
            &container,
        ]))?;
        command::run(buildah().args(["commit", "--quiet", &container, &tag()]))?;
        if archive.exists() {
            std::fs::remove_file(archive)
                .with_context(|| format!("cannot replace {}", archive.display()))?;
        }
        command::run(buildah().arg("push").arg(tag()).arg(format!(
            "oci-archive:{}:{}",
            archive.display(),
            tag()
        )))
    })();
    command::run(buildah().args(["rm", &container]))?;
    result
}

/// A command's standard output, trimmed; a non-zero exit is an error.
fn output(command: &mut Command) -> anyhow::Result<String> {
    let output = command
        .output()
        .with_context(|| format!("failed to start {command:?} (is buildah installed?)"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}
