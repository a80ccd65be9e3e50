//! Reading files that someone else controls: another process's root
//! (`/proc/PID/root/etc/resolv.conf`, its C library) and the container
//! runtimes' state, whose content comes from whoever made the pod.
//!
//! A path is resolved inside its root (`openat2` with `RESOLVE_IN_ROOT`:
//! an absolute symlink or `..` cannot leave it, and no magic link of /proc
//! is followed), opened first without reading anything (`O_PATH`), and only
//! a regular file is then opened for reading, non-blocking, through the
//! same inode. A FIFO, a device or a directory is refused without being
//! opened; reads stop at a size cap. What is left, a file on a filesystem
//! that stalls (FUSE), can only hold up the worker thread, which is then
//! left behind (`STUCK_NS`), never capture.

use std::{
    fs::File,
    io::{self, Read},
    os::{
        fd::{AsFd, AsRawFd, OwnedFd},
        unix::fs::FileExt,
    },
    path::Path,
};

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};

/// A directory that paths are resolved inside of.
pub struct Root(OwnedFd);

impl Root {
    /// `/proc/PID/root`: the process's own root, whatever its mount
    /// namespace or chroot.
    pub fn of_process(pid: u32) -> io::Result<Self> {
        Self::open(Path::new(&format!("/proc/{pid}/root")))
    }

    pub fn open(path: &Path) -> io::Result<Self> {
        let fd = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self(fd))
    }

    /// Opens `path` (absolute or relative, always taken inside the root)
    /// for reading, if it is a regular file.
    pub fn open_regular(&self, path: &str) -> io::Result<RegularFile> {
        let located = rustix::fs::openat2(
            &self.0,
            path,
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )?;
        RegularFile::reopen(located)
    }

    /// Reads `path` whole, if it is a regular file of at most `cap` bytes.
    pub fn read(&self, path: &str, cap: u64) -> io::Result<Vec<u8>> {
        self.open_regular(path)?.read_capped(cap)
    }

    /// The names in directory `path` inside the root, at most `cap` of them.
    pub fn list(&self, path: &str, cap: usize) -> io::Result<Vec<String>> {
        let directory = rustix::fs::openat2(
            &self.0,
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )?;
        let mut names = Vec::new();
        for entry in rustix::fs::Dir::read_from(&directory)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy();
            if name != "." && name != ".." {
                names.push(name.into_owned());
            }
            if names.len() >= cap {
                break;
            }
        }
        Ok(names)
    }
}

/// A regular file open for reading, and which file it is.
pub struct RegularFile {
    file: File,
    /// Device and inode, to know a file already read.
    pub identity: (u64, u64),
}

impl RegularFile {
    /// A file the kernel itself names, such as `/proc/PID/exe`: the link
    /// is followed (it is the kernel's reference), the rest as above.
    pub fn open_kernel_link(path: &Path) -> io::Result<Self> {
        let located = rustix::fs::open(path, OFlags::PATH | OFlags::CLOEXEC, Mode::empty())?;
        Self::reopen(located)
    }

    /// Checks what `located` (an `O_PATH` descriptor) is, and opens that
    /// same inode for reading only if it is a regular file.
    fn reopen(located: OwnedFd) -> io::Result<Self> {
        let stat = rustix::fs::fstat(&located)?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        let fd = rustix::fs::open(
            format!("/proc/self/fd/{}", located.as_fd().as_raw_fd()),
            OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self {
            file: File::from(fd),
            identity: (stat.st_dev, stat.st_ino),
        })
    }

    /// `len` bytes from `offset`; fewer where the file ends sooner.
    pub fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut bytes = vec![0; len];
        let mut filled = 0;
        while filled < len {
            match self
                .file
                .read_at(&mut bytes[filled..], offset + filled as u64)
            {
                Ok(0) => break,
                Ok(read) => filled += read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        bytes.truncate(filled);
        Ok(bytes)
    }

    /// The whole file, if it holds at most `cap` bytes.
    pub fn read_capped(self, cap: u64) -> io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        self.file.take(cap + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > cap {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("larger than {cap} bytes"),
            ));
        }
        Ok(bytes)
    }

    /// The `after` bytes that follow the first `marker` in the first `cap`
    /// bytes of the file, read a block at a time (a C library or an
    /// executable is megabytes; holding it whole is not needed).
    pub fn find(self, marker: &[u8], after: usize, cap: u64) -> io::Result<Option<Vec<u8>>> {
        const BLOCK: usize = 64 << 10;
        let keep = marker.len() + after;
        let mut input = self.file.take(cap);
        let mut window: Vec<u8> = Vec::with_capacity(BLOCK + keep);
        let mut block = vec![0; BLOCK];
        loop {
            let read = match input.read(&mut block) {
                Ok(read) => read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            };
            window.extend_from_slice(&block[..read]);
            if let Some(at) = window.windows(marker.len()).position(|w| w == marker) {
                let start = at + marker.len();
                let end = (start + after).min(window.len());
                if end - start == after || read == 0 {
                    return Ok(Some(window[start..end].to_vec()));
                }
                // The bytes after the marker are still to come.
                continue;
            }
            if read == 0 {
                return Ok(None);
            }
            let drop = window.len().saturating_sub(keep);
            window.drain(..drop);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("dnstrace-confined-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        dir
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let dir = scratch("links");
        std::fs::write(dir.join("etc/real.conf"), "inside").unwrap();
        symlink("/etc/real.conf", dir.join("etc/absolute")).unwrap();
        symlink("../../../../../../etc/real.conf", dir.join("etc/climbing")).unwrap();
        let root = Root::open(&dir).unwrap();
        assert_eq!(root.read("/etc/absolute", 100).unwrap(), b"inside");
        assert_eq!(root.read("etc/climbing", 100).unwrap(), b"inside");
        // The host's /etc/hostname is not inside this root.
        assert!(root.read("/etc/hostname", 100).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_regular_files_of_bounded_size_are_read() {
        let dir = scratch("kinds");
        symlink("/dev/zero", dir.join("etc/zero")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            dir.join("etc/fifo"),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        std::fs::write(dir.join("etc/big"), vec![b'x'; 1000]).unwrap();
        let root = Root::open(&dir).unwrap();
        // /dev/zero inside this root does not exist; the host's is not used.
        assert!(root.read("/etc/zero", 100).is_err());
        let fifo = root.read("/etc/fifo", 100).unwrap_err();
        assert_eq!(fifo.kind(), io::ErrorKind::InvalidInput, "{fifo}");
        assert!(root.read("/etc", 100).is_err());
        assert_eq!(root.read("/etc/big", 1000).unwrap().len(), 1000);
        assert_eq!(
            root.read("/etc/big", 999).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        // A device reached through the kernel's own link is refused too.
        assert!(RegularFile::open_kernel_link(Path::new("/dev/zero")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_marker_is_found_across_blocks() {
        let dir = scratch("marker");
        let mut image = vec![0u8; (64 << 10) - 5];
        image.extend_from_slice(b"release version 2.36.\n");
        std::fs::write(dir.join("etc/libc"), &image).unwrap();
        let root = Root::open(&dir).unwrap();
        let find = |cap| {
            root.open_regular("/etc/libc")
                .unwrap()
                .find(b"release version ", 4, cap)
                .unwrap()
        };
        assert_eq!(find(1 << 20), Some(b"2.36".to_vec()));
        assert_eq!(find(1000), None, "past the cap");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
