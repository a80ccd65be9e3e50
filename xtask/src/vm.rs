//! `cargo xtask vm`: the same static release binary of dnstrace, booted in a
//! VM on Debian 12's stock 6.1 kernel (qemu, TCG), must capture DNS with
//! every backend that kernel offers and be refused, with a reason, by the
//! others. See docs/vm.md.
//!
//! The host side lives here: fetch the kernel, build the binaries, pack the
//! initramfs, boot, and judge the verdicts the guest (`src/bin/vm-guest`)
//! prints on the serial console.

mod bounded;
mod cpio;
mod kernel;
mod protocol;

use std::{
    fs::{self, File},
    io::{BufWriter, Read as _, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Args;

use self::protocol::{AUTO, DONE, Expect, Step, Verdict};
use crate::command::{self, workspace_root};

/// What Debian 12's 6.1 kernel does with each backend, in the order
/// `--backend auto` tries them (dnstrace/src/capture/mod.rs): `None` when
/// it captures, else what the reason dnstrace gives must contain. A new
/// backend is one more line; the guest derives what `auto` must pick.
const DEBIAN_6_1: &[(&str, Option<&str>)] = &[
    // The verifier knows no current-task helpers in cgroup_skb on 6.1.
    ("cgroup-skb", Some("unknown func")),
    ("cgroup-sockaddr", None),
];

/// Lines of the console log shown when the VM fails.
const LOG_TAIL: usize = 60;

#[derive(Args)]
pub struct Options {
    // Defaults live in `Default` too, for `cargo xtask test`.
    /// Kill the VM after this many seconds (a passing run needs about 10).
    #[arg(long, default_value_t = DEFAULT_TIMEOUT_SECS)]
    timeout: u64,
    /// Boot this build of Debian 12's kernel (a linux-image-6.1.0-N-amd64
    /// package) instead of the newest one apt lists.
    #[arg(long, value_name = "PACKAGE")]
    kernel_package: Option<String>,
}

const DEFAULT_TIMEOUT_SECS: u64 = 300;

impl Default for Options {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT_SECS,
            kernel_package: None,
        }
    }
}

/// Returns how many backend checks passed.
pub fn run(options: &Options) -> anyhow::Result<usize> {
    let started = Instant::now();
    let cache = workspace_root().join("target/vm");
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;

    let kernel = kernel::ensure(&cache, options.kernel_package.as_deref())?;
    let fetched = started.elapsed();

    let agent = command::build_static_agent()?;
    let guest = command::build_static("xtask", "vm-guest")?;
    let initramfs = cache.join("initramfs.cpio");
    write_initramfs(&initramfs, &guest, &agent, &kernel.modules)?;
    let built = started.elapsed();

    let plan: Vec<Step> = DEBIAN_6_1
        .iter()
        .map(|&(backend, refusal)| Step {
            backend: backend.to_owned(),
            expect: refusal.map_or(Expect::Captures, |reason| Expect::Refused(reason.into())),
        })
        .collect();
    let log = cache.join("console.log");
    eprintln!(
        "vm: booting {} with {} (console: {})",
        kernel.package,
        agent.display(),
        log.display()
    );
    let console = boot(
        &kernel.vmlinuz,
        &initramfs,
        &plan,
        &log,
        Duration::from_secs(options.timeout),
    );
    let booted = started.elapsed();

    if let Err(error) = console.and_then(|console| judge(&console, &plan)) {
        print_tail(&log);
        return Err(error.context(format!("the VM test failed (full log: {})", log.display())));
    }
    eprintln!(
        "vm: PASS on {}: kernel {:.0} s, build {:.0} s, VM {:.0} s, total {:.0} s",
        kernel.package,
        fetched.as_secs_f64(),
        (built - fetched).as_secs_f64(),
        (booted - built).as_secs_f64(),
        booted.as_secs_f64()
    );
    Ok(plan.len() + 1)
}

/// The guest is /init itself: it mounts what it needs, loads the modules
/// and powers off, so the initramfs holds nothing but it, dnstrace, the
/// modules and the console node.
fn write_initramfs(
    path: &Path,
    guest: &Path,
    agent: &Path,
    modules: &[PathBuf],
) -> anyhow::Result<()> {
    let read = |path: &Path| fs::read(path).with_context(|| format!("reading {}", path.display()));
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut archive = cpio::Archive::new(BufWriter::new(file));
    for dir in ["bin", "dev", "lib", "lib/modules", "proc", "sys", "tmp"] {
        archive.dir(dir)?;
    }
    // The guest loads them in file name order: number them.
    for (index, module) in modules.iter().enumerate() {
        let name = module.file_name().context("a module path without a name")?;
        let name = format!("lib/modules/{index:02}-{}", name.to_string_lossy());
        archive.file(&name, 0o644, &read(module)?)?;
    }
    // The kernel opens /dev/console for /init's standard streams before
    // anything could mount devtmpfs.
    archive.char_device("dev/console", 0o600, 5, 1)?;
    archive.file("init", 0o755, &read(guest)?)?;
    archive.file("bin/dnstrace", 0o755, &read(agent)?)?;
    archive
        .finish()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Boots the VM with no network device, copies its console into `log` (and
/// the guest's own lines to our standard error as they come), and returns
/// the whole console once the guest powers off.
fn boot(
    vmlinuz: &Path,
    initramfs: &Path,
    plan: &[Step],
    log: &Path,
    timeout: Duration,
) -> anyhow::Result<String> {
    // Quoted, because a reason may hold spaces; the kernel strips the quotes.
    let plan: Vec<String> = plan.iter().map(|step| format!("\"{step}\"")).collect();
    // panic=-1 reboots at once if /init dies, and -no-reboot turns that
    // reboot into qemu's exit, so a crashed guest ends the run too.
    let cmdline = format!("console=ttyS0 panic=-1 quiet -- {}", plan.join(" "));
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-accel", "tcg", "-m", "1024", "-nographic", "-no-reboot"])
        .args(["-nic", "none"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", &cmdline])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut qemu = qemu
        .spawn()
        .context("starting qemu-system-x86_64 (is qemu-system-x86 installed?)")?;
    let mut serial = qemu.stdout.take().context("qemu's stdout")?;
    let mut log_file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let copier = thread::spawn(move || -> std::io::Result<String> {
        let mut console = Vec::new();
        let mut buffer = [0; 4096];
        let mut shown = 0;
        loop {
            let n = serial.read(&mut buffer)?;
            if n == 0 {
                return Ok(String::from_utf8_lossy(&console).into_owned());
            }
            log_file.write_all(&buffer[..n])?;
            console.extend_from_slice(&buffer[..n]);
            // Echo each complete guest line once.
            while let Some(end) = console[shown..].iter().position(|&b| b == b'\n') {
                let line = String::from_utf8_lossy(&console[shown..shown + end]);
                // From the marker on: the firmware's terminal escapes may
                // share the guest's first line.
                if let Some(start) = line.find("DNSTRACE-VM") {
                    eprintln!("vm| {}", line[start..].trim_end());
                }
                shown += end + 1;
            }
        }
    });
    let status = bounded::wait(&mut qemu, "qemu", timeout);
    // qemu is gone either way, so the copier sees the end of its output.
    let console = copier
        .join()
        .map_err(|_| anyhow::anyhow!("copying the console panicked"))?
        .with_context(|| format!("copying the console to {}", log.display()))?;
    let status = status?;
    if !status.success() {
        bail!("qemu failed: {status}");
    }
    Ok(console)
}

/// Every step of the plan, and `auto`, must have exactly one passing
/// verdict, and the guest must have reached its end.
fn judge(console: &str, plan: &[Step]) -> anyhow::Result<()> {
    let verdicts: Vec<Verdict> = console
        .lines()
        .filter_map(|line| line.parse().ok())
        .collect();
    let mut problems = Vec::new();
    let expected = plan.iter().map(|step| step.backend.as_str()).chain([AUTO]);
    for backend in expected {
        let mine: Vec<&Verdict> = verdicts.iter().filter(|v| v.backend == backend).collect();
        match mine.as_slice() {
            [] => problems.push(format!("no verdict for backend {backend}")),
            [verdict] if !verdict.pass => {
                problems.push(format!("backend {backend} failed: {}", verdict.detail));
            }
            [_] => {}
            _ => problems.push(format!("{} verdicts for backend {backend}", mine.len())),
        }
    }
    if !console.lines().any(|line| line.contains(DONE)) {
        problems.push("the guest did not finish its plan".to_owned());
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    Ok(())
}

fn print_tail(log: &Path) {
    let Ok(text) = fs::read(log) else {
        return;
    };
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    eprintln!("--- last {LOG_TAIL} lines of {} ---", log.display());
    for line in &lines[lines.len().saturating_sub(LOG_TAIL)..] {
        eprintln!("{}", line.trim_end());
    }
    eprintln!("---");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Vec<Step> {
        vec![
            Step {
                backend: "a".into(),
                expect: Expect::Refused("no".into()),
            },
            Step {
                backend: "b".into(),
                expect: Expect::Captures,
            },
        ]
    }

    #[test]
    fn every_backend_and_auto_must_pass() {
        let console = "DNSTRACE-VM-RESULT backend=a PASS refused\r\n\
                       DNSTRACE-VM-RESULT backend=b PASS 24 messages\r\n\
                       DNSTRACE-VM-RESULT backend=auto PASS picked b\r\n\
                       DNSTRACE-VM-DONE\r\n";
        judge(console, &plan()).unwrap();
    }

    #[test]
    fn a_missing_or_failing_verdict_fails() {
        let console = "DNSTRACE-VM-RESULT backend=a PASS refused\n\
                       DNSTRACE-VM-RESULT backend=b FAIL lost 3\n";
        let error = judge(console, &plan()).unwrap_err().to_string();
        assert!(error.contains("backend b failed: lost 3"), "{error}");
        assert!(error.contains("no verdict for backend auto"), "{error}");
        assert!(error.contains("did not finish"), "{error}");
    }
}
