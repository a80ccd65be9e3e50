//! Debian 12's stock kernel: the newest `linux-image-6.1.0-N-amd64` apt
//! knows, downloaded once and cached under target/ (only its /boot: the VM
//! needs no modules, everything it uses is built in).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail, ensure};

use super::bounded;

/// apt and dpkg run against a mirror and a 70 MB package; give them time,
/// but not forever.
const APT_TIMEOUT: Duration = Duration::from_secs(600);

pub struct Kernel {
    pub package: String,
    pub vmlinuz: PathBuf,
}

/// The kernel to boot: `package` if given, else the newest generic 6.1 one.
/// Downloads and unpacks it unless `cache` already holds it.
pub fn ensure(cache: &Path, package: Option<&str>) -> anyhow::Result<Kernel> {
    let package = match package {
        Some(package) => package.to_owned(),
        None => newest_package()?,
    };
    let release = package
        .strip_prefix("linux-image-")
        .with_context(|| format!("{package} is not a linux-image-* package"))?;
    let dir = cache.join(&package);
    let vmlinuz = dir.join(format!("boot/vmlinuz-{release}"));
    if vmlinuz.is_file() {
        return Ok(Kernel { package, vmlinuz });
    }

    eprintln!("vm: downloading {package}");
    // Unpack beside the final place and rename, so an interrupted run never
    // leaves a half-filled cache entry behind.
    let partial = cache.join(format!("{package}.partial"));
    if partial.exists() {
        fs::remove_dir_all(&partial).with_context(|| format!("removing {}", partial.display()))?;
    }
    fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
    bounded::run(
        Command::new("apt-get")
            .args(["download", &package])
            .current_dir(&partial),
        APT_TIMEOUT,
    )?;
    let deb = single_deb(&partial)?;
    unpack_boot(&deb, &partial, release)?;
    fs::remove_file(&deb).with_context(|| format!("removing {}", deb.display()))?;
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::rename(&partial, &dir)
        .with_context(|| format!("renaming {} to {}", partial.display(), dir.display()))?;
    ensure!(
        vmlinuz.is_file(),
        "{package} unpacked, but holds no {}",
        vmlinuz.display()
    );
    Ok(Kernel { package, vmlinuz })
}

/// The highest N among the `linux-image-6.1.0-N-amd64` packages apt lists
/// (not -rt, not -cloud: the stock kernel of a Debian 12 machine).
fn newest_package() -> anyhow::Result<String> {
    let mut newest = search()?;
    if newest.is_none() {
        // A fresh machine may have no package lists yet.
        eprintln!("vm: apt knows no 6.1 kernel; running apt-get update");
        bounded::run(Command::new("apt-get").arg("update"), APT_TIMEOUT)?;
        newest = search()?;
    }
    newest
        .map(|(_, package)| package)
        .context("apt-cache lists no linux-image-6.1.0-N-amd64 package (is this Debian 12?)")
}

fn search() -> anyhow::Result<Option<(u32, String)>> {
    let output = bounded::output(
        Command::new("apt-cache").args([
            "search",
            "--names-only",
            r"^linux-image-6\.1\.0-[0-9]+-amd64$",
        ]),
        APT_TIMEOUT,
    )?;
    Ok(output
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|package| {
            let abi = package
                .strip_prefix("linux-image-6.1.0-")?
                .strip_suffix("-amd64")?;
            Some((abi.parse().ok()?, package.to_owned()))
        })
        .max())
}

fn single_deb(dir: &Path) -> anyhow::Result<PathBuf> {
    let mut debs = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "deb") {
            debs.push(path);
        }
    }
    match <[PathBuf; 1]>::try_from(debs) {
        Ok([deb]) => Ok(deb),
        Err(debs) => bail!(
            "expected one .deb in {} after apt-get download, found {debs:?}",
            dir.display()
        ),
    }
}

/// Extracts only ./boot/vmlinuz-RELEASE from the package's data tarball.
fn unpack_boot(deb: &Path, into: &Path, release: &str) -> anyhow::Result<()> {
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting dpkg-deb")?;
    let tarball = dpkg.stdout.take().context("dpkg-deb's stdout")?;
    let extracted = bounded::run(
        Command::new("tar")
            .args(["-x", "-C"])
            .arg(into)
            .arg(format!("./boot/vmlinuz-{release}"))
            .stdin(tarball),
        APT_TIMEOUT,
    );
    let unpacked = bounded::wait(&mut dpkg, "dpkg-deb --fsys-tarfile", APT_TIMEOUT)?;
    extracted?;
    ensure!(
        unpacked.success(),
        "dpkg-deb --fsys-tarfile {} failed: {unpacked}",
        deb.display()
    );
    Ok(())
}
