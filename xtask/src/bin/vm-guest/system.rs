//! What an init must do before dnstrace can run, done with system calls:
//! the initramfs holds no shell and no tools.

use std::{
    ffi::CString,
    fs::{self, File},
    io, mem,
    os::fd::AsRawFd as _,
};

use anyhow::{Context as _, bail};

/// The file systems dnstrace and its children use: /proc (process names,
/// namespaces), /sys, /dev (/dev/null), the cgroup v2 root the probes attach
/// to, and bpffs.
const MOUNTS: &[(&str, &str)] = &[
    ("proc", "/proc"),
    ("sysfs", "/sys"),
    ("devtmpfs", "/dev"),
    ("cgroup2", "/sys/fs/cgroup"),
    ("bpf", "/sys/fs/bpf"),
];

pub fn prepare() -> anyhow::Result<()> {
    // SAFETY: getpid has no preconditions.
    if unsafe { libc::getpid() } != 1 {
        // It mounts over /dev and powers the machine off: never on a host.
        bail!("vm-guest runs only as /init inside `cargo xtask vm`'s VM");
    }
    for &(fstype, target) in MOUNTS {
        mount(fstype, target).with_context(|| format!("mounting {fstype} on {target}"))?;
    }
    load_modules()?;
    loopback_up().context("bringing lo up")
}

/// Loads /lib/modules/*.ko in name order (the host numbers them in
/// dependency order), as modprobe would on demand on a full system.
fn load_modules() -> anyhow::Result<()> {
    let mut modules: Vec<_> = fs::read_dir("/lib/modules")
        .context("listing /lib/modules")?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<io::Result<_>>()
        .context("listing /lib/modules")?;
    modules.sort();
    for module in modules {
        let file = File::open(&module).with_context(|| format!("opening {}", module.display()))?;
        let params = CString::default();
        // SAFETY: finit_module reads the open file and a NUL-terminated
        // parameter string that outlives the call.
        let result =
            unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
        if result != 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EEXIST) {
                return Err(error).with_context(|| format!("loading {}", module.display()));
            }
        }
    }
    Ok(())
}

fn mount(fstype: &str, target: &str) -> io::Result<()> {
    let source = CString::new(fstype)?;
    let target = CString::new(target)?;
    // SAFETY: every pointer is a NUL-terminated string that outlives the call.
    let result = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            source.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets IFF_UP on lo; the kernel then gives it 127.0.0.1 and ::1.
fn loopback_up() -> io::Result<()> {
    // SAFETY: a plain socket call; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo") {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: both ioctls read and write the ifreq we own; flags is the
    // union member these requests use.
    let result = unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut request) == 0 {
            request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &request)
        } else {
            -1
        }
    };
    let error = io::Error::last_os_error();
    // SAFETY: we own fd and use it no more.
    unsafe { libc::close(fd) };
    if result != 0 {
        return Err(error);
    }
    Ok(())
}

/// `release version` as uname gives them, to name the kernel in the log.
pub fn kernel() -> String {
    // SAFETY: utsname is plain data, and uname fills it.
    let mut name: libc::utsname = unsafe { mem::zeroed() };
    // SAFETY: name is a valid utsname we own.
    if unsafe { libc::uname(&mut name) } != 0 {
        return format!("unknown ({})", io::Error::last_os_error());
    }
    let field = |chars: &[libc::c_char]| {
        let bytes: Vec<u8> = chars
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    format!("{} {}", field(&name.release), field(&name.version))
}

/// Names the calling thread, so dnstrace's `comm` tells client from server.
pub fn set_thread_name(name: &str) -> io::Result<()> {
    let name = CString::new(name)?;
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of up to 16 bytes.
    if unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Ends the VM: qemu exits when the guest powers off.
pub fn power_off() -> ! {
    // SAFETY: sync and reboot take no pointers; pid 1 may reboot.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    // Only reached if the kernel refused; panicking as init makes the
    // kernel panic, and panic=-1 with -no-reboot ends qemu all the same.
    panic!("power off failed: {}", io::Error::last_os_error());
}
