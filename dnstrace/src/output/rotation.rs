//! Rotation of the main output file by size and by age, between whole
//! lines, as logrotate names them: FILE, FILE.1 (newest), FILE.2, …

use std::{
    fs,
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::create_private;

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
    path: PathBuf,
    policy: Policy,
    file: BufWriter<fs::File>,
    written: u64,
    opened: Instant,
}

impl RotatingFile {
    pub fn new(path: &Path, file: fs::File, policy: Policy) -> Self {
        Self {
            path: path.to_path_buf(),
            policy,
            file: BufWriter::with_capacity(super::WRITE_BUFFER_BYTES, file),
            written: 0,
            opened: Instant::now(),
        }
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
        let numbered = |n: usize| PathBuf::from(format!("{}.{n}", self.path.display()));
        if self.policy.keep == 0 {
            fs::remove_file(&self.path)?;
        } else {
            // Drop the oldest, shift the rest up by one, the current to .1.
            match fs::remove_file(numbered(self.policy.keep)) {
                Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
                _ => {}
            }
            for n in (1..self.policy.keep).rev() {
                match fs::rename(numbered(n), numbered(n + 1)) {
                    Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
                    _ => {}
                }
            }
            fs::rename(&self.path, numbered(1))?;
        }
        let file =
            create_private(&self.path).map_err(|failure| io::Error::other(failure.message))?;
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
    use std::os::unix::fs::PermissionsExt;

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
        let mut file = RotatingFile::new(&path, create_private(&path).unwrap(), policy);
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
}
