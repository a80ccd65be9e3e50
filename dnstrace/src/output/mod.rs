//! Outputs: each renders the same messages its own way (one module each),
//! like ripgrep's printers.

pub mod json;
pub mod text;

use std::{
    fs::OpenOptions,
    io::{self, BufWriter, IsTerminal, Write},
    os::unix::fs::OpenOptionsExt,
    path::Path,
};

use crate::{failure::Failure, message::Message};

/// What a run saw, for the exit summary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub messages: u64,
    pub undecodable: u64,
    /// Dropped in the kernel because the ring buffer was full, per CPU.
    pub lost_per_cpu: Vec<u64>,
    /// Records whose layout did not parse (a bug if ever non-zero).
    pub malformed_records: u64,
}

impl Summary {
    pub fn lost(&self) -> u64 {
        self.lost_per_cpu.iter().sum()
    }

    /// One line for stderr.
    pub fn line(&self) -> String {
        let mut line = format!(
            "{} messages seen, {} lost, {} undecodable",
            self.messages,
            self.lost(),
            self.undecodable
        );
        if self.lost() > 0 {
            let per_cpu: Vec<String> = self
                .lost_per_cpu
                .iter()
                .enumerate()
                .filter(|(_, lost)| **lost > 0)
                .map(|(cpu, lost)| format!("cpu{cpu}: {lost}"))
                .collect();
            line.push_str(&format!(" ({})", per_cpu.join(", ")));
        }
        if self.malformed_records > 0 {
            line.push_str(&format!(", {} malformed records", self.malformed_records));
        }
        line
    }
}

pub trait Output {
    fn message(&mut self, message: &Message) -> io::Result<()>;
    /// Makes everything written so far visible (a tick, or the end).
    fn flush(&mut self) -> io::Result<()>;
    fn finish(&mut self, summary: &Summary) -> io::Result<()>;
}

/// Where output goes. Files are created with mode 0600: traces carry names
/// that processes looked up.
pub struct Destination {
    pub writer: BufWriter<Box<dyn Write>>,
    pub is_terminal: bool,
}

impl Destination {
    pub fn open(path: Option<&Path>) -> Result<Self, Failure> {
        match path {
            None => {
                let stdout = io::stdout();
                let is_terminal = stdout.is_terminal();
                Ok(Self {
                    writer: BufWriter::new(Box::new(stdout)),
                    is_terminal,
                })
            }
            Some(path) => {
                let file = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| Failure::setup(format!("cannot write {}: {e}", path.display())))?;
                Ok(Self {
                    writer: BufWriter::new(Box::new(file)),
                    is_terminal: false,
                })
            }
        }
    }
}
