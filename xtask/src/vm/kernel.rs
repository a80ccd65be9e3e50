//! Debian 12's stock kernel: the newest `linux-image-6.1.0-N-amd64` apt
//! knows, downloaded once and cached under target/. Only the kernel and the
//! few modules the test needs are kept.

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

/// Modules a stock Debian loads on demand when a program asks sock_diag
/// for UDP sockets (as `ss -u` and dnstrace do), in load order. The VM has
/// no modprobe to load them on demand, so the guest loads them at boot.
const MODULES: &[&str] = &["net/ipv4/inet_diag.ko", "net/ipv4/udp_diag.ko"];

pub struct Kernel {
    pub package: String,
    pub vmlinuz: PathBuf,
    /// In load order.
    pub modules: Vec<PathBuf>,
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
    let wanted = wanted_files(release);
    let kernel = Kernel {
        vmlinuz: dir.join(&wanted[0]),
        modules: wanted[1..].iter().map(|file| dir.join(file)).collect(),
        package: package.clone(),
    };
    if wanted.iter().all(|file| dir.join(file).is_file()) {
        return Ok(kernel);
    }

    eprintln!("vm: downloading {package}");
    // Unpack beside the final place and rename, so an interrupted run never
    // leaves a half-filled cache entry behind.
    let partial = cache.join(format!("{package}.partial"));
    if partial.exists() {
        fs::remove_dir_all(&partial).with_context(|| format!("removing {}", partial.display()))?;
    }
    let fetched = fetch(&package, &partial, &wanted);
    if fetched.is_err() {
        // Best effort: the next run clears it anyway.
        let _ = fs::remove_dir_all(&partial);
    }
    fetched?;
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::rename(&partial, &dir)
        .with_context(|| format!("renaming {} to {}", partial.display(), dir.display()))?;
    Ok(kernel)
}

/// Downloads `package` into `dir` and leaves only the `wanted` files there.
fn fetch(package: &str, dir: &Path, wanted: &[String]) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    bounded::run(
        Command::new("apt-get")
            .args(["download", package])
            .current_dir(dir),
        APT_TIMEOUT,
    )?;
    let deb = single_deb(dir)?;
    unpack(&deb, dir, wanted)?;
    fs::remove_file(&deb).with_context(|| format!("removing {}", deb.display()))?;
    for file in wanted {
        ensure!(dir.join(file).is_file(), "{package} holds no {file}");
    }
    Ok(())
}

/// The kernel, then the modules: paths inside the package.
fn wanted_files(release: &str) -> Vec<String> {
    let modules = MODULES
        .iter()
        .map(|module| format!("lib/modules/{release}/kernel/{module}"));
    [format!("boot/vmlinuz-{release}")]
        .into_iter()
        .chain(modules)
        .collect()
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

/// Extracts only the `wanted` files from the package's data tarball.
fn unpack(deb: &Path, into: &Path, wanted: &[String]) -> anyhow::Result<()> {
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
            .args(wanted.iter().map(|file| format!("./{file}")))
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
