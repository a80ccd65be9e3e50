//! Rotation of the main output file by size and by age, between whole
//! lines, as logrotate names them: FILE, FILE.1 (newest), FILE.2, …
//!
//! Everything happens relative to the directory held open since the start,
//! and the new file must be new (`O_EXCL`): a link or a file that someone
//! put at one of the names is renamed or removed as a name, never followed
//! or emptied.

use std::{
    ffi::OsString,
    fs,
    io::{self, BufWriter, Write},
    path::Path,
    time::{Duration, Instant},
};

use rustix::{fs::AtFlags, io::Errno};

use super::{Creation, OutputPath, open_private};

/// When to start a new file, and how many old ones to keep.
#[derive(Clone, Copy, Debug, Default)]
pub struct Policy {
    pub max_bytes: Option<u64>,
    pub max_age: Option<Duration>,
    /// Rotated files kept besides the current one.
    pub keep: usize,
}

impl Policy {
    pub fn rotates(&self) -> bool {
        self.max_bytes.is_some() || self.max_age.is_some()
    }
}

pub struct RotatingFile {
    place: OutputPath,
    policy: Policy,
    file: BufWriter<fs::File>,
    written: u64,
    opened: Instant,
}

impl RotatingFile {
    /// Opens the current file (emptied if this user's from an earlier run).
    pub fn create(path: &Path, policy: Policy) -> io::Result<Self> {
        let place = OutputPath::new(path)?;
        let file = open_private(&place.dir, &place.name, Creation::Reuse)?;
        Ok(Self {
            place,
            policy,
            file: BufWriter::with_capacity(super::WRITE_BUFFER_BYTES, file),
            written: 0,
            opened: Instant::now(),
        })
    }

    /// Called between lines: starts a new file when the current one is full
    /// or old enough.
    pub fn line_written(&mut self) -> io::Result<()> {
        let full = self.policy.max_bytes.is_some_and(|max| self.written >= max);
        let old = self
            .policy
            .max_age
            .is_some_and(|max| self.opened.elapsed() >= max);
        if full || old { self.rotate() } else { Ok(()) }
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        let dir = &self.place.dir;
        let current = &self.place.name;
        let numbered = |n: usize| {
            let mut name = OsString::from(current);
            name.push(format!(".{n}"));
            name
        };
        let absent_is_fine = |result: rustix::io::Result<()>| match result {
            Err(Errno::NOENT) => Ok(()),
            other => other,
        };
        if self.policy.keep == 0 {
            absent_is_fine(rustix::fs::unlinkat(dir, current, AtFlags::empty()))?;
        } else {
            // Drop the oldest, shift the rest up by one, the current to .1.
            absent_is_fine(rustix::fs::unlinkat(
                dir,
                numbered(self.policy.keep),
                AtFlags::empty(),
            ))?;
            for n in (1..self.policy.keep).rev() {
                absent_is_fine(rustix::fs::renameat(dir, numbered(n), dir, numbered(n + 1)))?;
            }
            absent_is_fine(rustix::fs::renameat(dir, current, dir, numbered(1)))?;
        }
        let file = open_private(dir, current, Creation::New)?;
        self.file = BufWriter::with_capacity(super::WRITE_BUFFER_BYTES, file);
        self.written = 0;
        self.opened = Instant::now();
        Ok(())
    }
}

impl Write for RotatingFile {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let written = self.file.write(bytes)?;
        self.written += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt, symlink};

    use super::*;

    #[test]
    fn rotates_by_size_between_lines_and_keeps_the_newest() {
        let dir = std::env::temp_dir().join(format!("dnstrace-rotation-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("trace.jsonl");
        let policy = Policy {
            max_bytes: Some(10),
            max_age: None,
            keep: 2,
        };
        let mut file = RotatingFile::create(&path, policy).unwrap();
        for n in 0..5 {
            writeln!(file, "line number {n}").unwrap();
            file.line_written().unwrap();
        }
        file.flush().unwrap();
        // Five lines of 14 bytes, each filling a file: the current one is
        // empty, .1 and .2 hold the last two, the older ones are gone.
        assert_eq!(fs::read_to_string(&path).unwrap(), "");
        assert_eq!(
            fs::read_to_string(dir.join("trace.jsonl.1")).unwrap(),
            "line number 4\n"
        );
        assert_eq!(
            fs::read_to_string(dir.join("trace.jsonl.2")).unwrap(),
            "line number 3\n"
        );
        assert!(!dir.join("trace.jsonl.3").exists());
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        fs::remove_dir_all(&dir).unwrap();
    }

    fn by_size(keep: usize) -> Policy {
        Policy {
            max_bytes: Some(1),
            max_age: None,
            keep,
        }
    }

    fn write_line(file: &mut RotatingFile, text: &str) -> io::Result<()> {
        writeln!(file, "{text}")?;
        file.line_written()
    }

    /// Links put at every name rotation renames or creates, pointing at a
    /// file of value: each is moved or removed as a name, never followed.
    #[test]
    fn links_at_the_rotated_names_are_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, "precious").unwrap();
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o644)).unwrap();
        let path = dir.path().join("trace.jsonl");
        let mut file = RotatingFile::create(&path, by_size(2)).unwrap();
        for n in 1..=3 {
            let _ = fs::remove_file(dir.path().join(format!("trace.jsonl.{n}")));
            symlink(&victim, dir.path().join(format!("trace.jsonl.{n}"))).unwrap();
        }
        // The current file swapped for a link after it was opened.
        fs::remove_file(&path).unwrap();
        symlink(&victim, &path).unwrap();
        for n in 0..3 {
            write_line(&mut file, &format!("line {n}")).unwrap();
        }
        file.flush().unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(
            fs::metadata(&victim).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert!(fs::symlink_metadata(&path).unwrap().file_type().is_file());
        assert_eq!(
            fs::read_to_string(dir.path().join("trace.jsonl.1")).unwrap(),
            "line 2\n"
        );
    }

    /// The name taken again between the rename and the new file (the race
    /// rotation could lose): the new file must be new, so the run reports
    /// an error rather than write through the link.
    #[test]
    fn a_link_planted_after_the_rename_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, "precious").unwrap();
        let path = dir.path().join("trace.jsonl");
        let mut file = RotatingFile::create(&path, by_size(1)).unwrap();
        symlink(&victim, dir.path().join("elsewhere")).unwrap();
        // What an attacker does between the two steps, done in order here.
        rustix::fs::renameat(
            &file.place.dir,
            "trace.jsonl",
            &file.place.dir,
            "trace.jsonl.1",
        )
        .unwrap();
        fs::rename(dir.path().join("elsewhere"), &path).unwrap();
        let error = open_private(&file.place.dir, &file.place.name, Creation::New).unwrap_err();
        assert!(error.to_string().contains("appeared"), "{error}");
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        // A rotation after that renames the link away and starts afresh.
        write_line(&mut file, "line").unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
    }

    /// The directory renamed and a link to another put in its place: the
    /// files stay in the directory the run started in.
    #[test]
    fn rotation_stays_in_the_directory_it_started_in() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("traces");
        let other = base.path().join("other");
        fs::create_dir(&dir).unwrap();
        fs::create_dir(&other).unwrap();
        let mut file = RotatingFile::create(&dir.join("trace.jsonl"), by_size(1)).unwrap();
        let moved = base.path().join("moved");
        fs::rename(&dir, &moved).unwrap();
        symlink(&other, &dir).unwrap();
        write_line(&mut file, "line").unwrap();
        assert_eq!(fs::read_dir(&other).unwrap().count(), 0);
        assert_eq!(
            fs::read_to_string(moved.join("trace.jsonl.1")).unwrap(),
            "line\n"
        );
        assert!(moved.join("trace.jsonl").exists());
    }
}
