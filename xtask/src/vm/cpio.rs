//! The initramfs, written as a `newc` cpio archive (the format the kernel
//! unpacks). Written here rather than with cpio(1) so that /dev/console can
//! be a device node without root's mknod, and no host tool is needed.

use std::io::{self, Write};

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFCHR: u32 = 0o020_000;

pub struct Archive<W: Write> {
    out: W,
    next_inode: u32,
}

impl<W: Write> Archive<W> {
    pub fn new(out: W) -> Self {
        Self { out, next_inode: 1 }
    }

    pub fn dir(&mut self, path: &str) -> io::Result<()> {
        self.entry(path, S_IFDIR | 0o755, (0, 0), &[])
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        self.entry(path, S_IFREG | mode, (0, 0), data)
    }

    pub fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(path, S_IFCHR | mode, (major, minor), &[])
    }

    /// Writes the trailer the format requires and hands back the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.entry("TRAILER!!!", 0, (0, 0), &[])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn entry(&mut self, path: &str, mode: u32, rdev: (u32, u32), data: &[u8]) -> io::Result<()> {
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::other(format!("{path} is too large for cpio")))?;
        let name_size = path.len() as u32 + 1;
        let inode = self.next_inode;
        self.next_inode += 1;
        // magic, then ino mode uid gid nlink mtime filesize devmajor
        // devminor rdevmajor rdevminor namesize check, each 8 hex digits.
        let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
        let fields = [
            inode, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, name_size, 0,
        ];
        let mut header = String::from("070701");
        for field in fields {
            header.push_str(&format!("{field:08x}"));
        }
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(path.as_bytes())?;
        self.out.write_all(&[0])?;
        // The name (after the 110-byte header) and the data each end on a
        // 4-byte boundary.
        self.pad(110 + name_size as usize)?;
        self.out.write_all(data)?;
        self.pad(data.len())
    }

    fn pad(&mut self, written: usize) -> io::Result<()> {
        let padding = (4 - written % 4) % 4;
        self.out.write_all(&[0; 3][..padding])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_aligned_and_end_with_the_trailer() {
        let mut archive = Archive::new(Vec::new());
        archive.dir("dev").unwrap();
        archive.char_device("dev/console", 0o600, 5, 1).unwrap();
        archive.file("init", 0o755, b"hello").unwrap();
        let bytes = archive.finish().unwrap();
        assert_eq!(bytes.len() % 4, 0);
        let text = String::from_utf8_lossy(&bytes);
        assert_eq!(text.matches("070701").count(), 4);
        // "init" is entry 3: mode 0100755, size 5; its data follows the padded name.
        let init = text.find("070701000000030000").unwrap();
        assert_eq!(&text[init + 14..init + 22], "000081ed");
        assert_eq!(&text[init + 54..init + 62], "00000005");
        assert_eq!(&text[init + 116..init + 121], "hello");
        assert!(text.ends_with("TRAILER!!!\0\0\0\0"));
    }
}
