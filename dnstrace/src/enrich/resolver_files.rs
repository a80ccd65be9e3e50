//! A process's resolver, read from its files: resolv.conf from its own
//! root, and its C library from what it maps (docs/resolvers.md).

use std::{collections::HashMap, fs, io::Read, path::Path};

use super::{
    confined::{RegularFile, Root},
    elf,
};
use crate::resolver::{Library, ResolvConf, ResolverContext};

/// A resolv.conf is a few lines; glibc reads at most a few KiB of it.
const MAX_RESOLV_CONF: u64 = 64 << 10;
/// /proc/PID/maps of a process with very many mappings is not read whole.
const MAX_MAPS: u64 = 4 << 20;
/// glibc's version marker sits within its first 2 MiB.
const MAX_LIBC_SCAN: u64 = 16 << 20;
/// Files whose library is remembered, by device and inode.
const MAX_KNOWN_FILES: usize = 1024;

/// What was learned about each C library and executable file: every
/// process of a container maps the same ones.
#[derive(Default)]
pub struct Libraries {
    by_file: HashMap<(u64, u64), Option<Library>>,
    pub evicted: u64,
}

impl Libraries {
    fn remember(&mut self, file: (u64, u64), library: Option<Library>) -> Option<Library> {
        if self.by_file.len() >= MAX_KNOWN_FILES {
            self.evicted += self.by_file.len() as u64;
            self.by_file.clear();
        }
        self.by_file.insert(file, library.clone());
        library
    }
}

/// The process's resolv.conf (`None` when it cannot be read) and library.
pub fn read_context(pid: u32, libraries: &mut Libraries) -> ResolverContext {
    let root = Root::of_process(pid).ok();
    let conf = root
        .as_ref()
        .and_then(|root| root.read("/etc/resolv.conf", MAX_RESOLV_CONF).ok())
        .map(|bytes| ResolvConf::parse(&String::from_utf8_lossy(&bytes)));
    ResolverContext {
        conf,
        library: root.and_then(|root| library_of(pid, &root, libraries)),
    }
}

/// Go's own resolver, by its executable's build info (a Go binary built
/// with cgo maps glibc too, and still resolves with Go's), else from the C
/// library mapped into the process.
fn library_of(pid: u32, root: &Root, libraries: &mut Libraries) -> Option<Library> {
    let executable = RegularFile::open_kernel_link(Path::new(&format!("/proc/{pid}/exe")));
    if executable.is_ok_and(|executable| is_go(&executable, libraries)) {
        return Some(Library::Go);
    }
    let mut maps = String::new();
    fs::File::open(format!("/proc/{pid}/maps"))
        .ok()?
        .take(MAX_MAPS)
        .read_to_string(&mut maps)
        .ok()?;
    for path in maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
    {
        let file = path.rsplit('/').next().unwrap_or(path);
        if file.starts_with("ld-musl-") || file.starts_with("libc.musl-") {
            return Some(Library::Musl);
        }
        // Before 2.34 the file carries the version: libc-2.19.so.
        if let Some(version) = file
            .strip_prefix("libc-")
            .and_then(|v| v.strip_suffix(".so"))
        {
            return parse_glibc_version(version);
        }
        if file == "libc.so.6" {
            let libc = root.open_regular(path).ok()?;
            return match libraries.by_file.get(&libc.identity) {
                Some(known) => known.clone(),
                None => {
                    let identity = libc.identity;
                    let found = glibc_version_in(libc);
                    libraries.remember(identity, found)
                }
            };
        }
    }
    None
}

/// Whether `executable` is a Go program: Go keeps its build info in a
/// section of its own, even in a stripped binary.
fn is_go(executable: &RegularFile, libraries: &mut Libraries) -> bool {
    if let Some(known) = libraries.by_file.get(&executable.identity) {
        return *known == Some(Library::Go);
    }
    let go = elf::has_section(
        |offset, len| executable.read_at(offset, len),
        b".go.buildinfo",
    )
    .unwrap_or(false);
    libraries.remember(executable.identity, go.then_some(Library::Go));
    go
}

/// glibc embeds "release version 2.36" in libc.so.6.
fn glibc_version_in(libc: RegularFile) -> Option<Library> {
    let after = libc.find(b"release version ", 8, MAX_LIBC_SCAN).ok()??;
    glibc_version_after_marker(&after)
}

fn glibc_version_after_marker(after: &[u8]) -> Option<Library> {
    let version: String = after
        .iter()
        .take_while(|b| b.is_ascii_digit() || **b == b'.')
        .map(|b| *b as char)
        .collect();
    parse_glibc_version(version.trim_end_matches('.'))
}

fn parse_glibc_version(version: &str) -> Option<Library> {
    let mut parts = version.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some(Library::Glibc { major, minor })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_glibc_version_markers() {
        assert_eq!(
            glibc_version_after_marker(b"2.36.\n junk"),
            Some(Library::Glibc {
                major: 2,
                minor: 36
            })
        );
        assert_eq!(
            parse_glibc_version("2.19"),
            Some(Library::Glibc {
                major: 2,
                minor: 19
            })
        );
        assert_eq!(glibc_version_after_marker(b"x"), None);
    }

    #[test]
    fn identifies_our_own_library_once_per_file() {
        let mut libraries = Libraries::default();
        let context = read_context(std::process::id(), &mut libraries);
        assert!(
            matches!(context.library, Some(Library::Glibc { major: 2, .. })),
            "{context:?}"
        );
        assert_eq!(
            libraries.by_file.len(),
            2,
            "the executable (not Go) and libc.so.6 remembered"
        );
        assert_eq!(
            read_context(std::process::id(), &mut libraries).library,
            context.library
        );
    }
}
