//! Outputs: each renders the same messages its own way (one module each),
//! like ripgrep's printers.

pub mod dnstap;
pub mod json;
pub mod pcapng;
pub mod rotation;
pub mod text;

use std::{
    fs::{File, OpenOptions},
    io::{self, BufWriter, IsTerminal, Write},
    os::unix::fs::OpenOptionsExt,
    path::Path,
    time::Duration,
};

use self::{
    dnstap::DnstapOutput,
    json::JsonOutput,
    pcapng::PcapngOutput,
    rotation::{Policy, RotatingFile},
    text::TextOutput,
};
use crate::{
    cli::{ColorChoice, Format, OutputArgs},
    correlate::{attempt::Attempt, lookup::Lookup},
    diagnose::Diagnosis,
    failure::Failure,
    message::{Client, Message},
};

/// Opens every output the arguments ask for: the main one (text or JSON)
/// and the extra files (--json, -w, --dnstap).
pub fn open_all(args: &OutputArgs) -> Result<Vec<Box<dyn Output>>, Failure> {
    let rotation = Policy {
        max_bytes: args.rotate_size,
        max_age: args
            .rotate_interval
            .filter(|s| *s > 0)
            .map(Duration::from_secs),
        keep: args.rotate_keep,
    };
    if rotation.rotates() && args.output.is_none() && args.json.is_none() {
        return Err(Failure::setup(
            "--rotate-size and --rotate-interval need -o FILE or --json FILE",
        ));
    }
    let destination = Destination::open(args.output.as_deref(), rotation)?;
    let main: Box<dyn Output> = match args.format {
        Format::Json => Box::new(JsonOutput::new(destination)),
        Format::Text => {
            let color = match args.color {
                ColorChoice::Always => true,
                ColorChoice::Never => false,
                ColorChoice::Auto => destination.is_terminal && io::stderr().is_terminal(),
            };
            Box::new(
                TextOutput::new(destination, color, args.verbose)
                    .map_err(|e| Failure::setup(format!("cannot write output: {e}")))?,
            )
        }
    };
    let mut outputs = vec![main];
    if let Some(path) = &args.json {
        let destination = Destination::open(Some(path), rotation)?;
        outputs.push(Box::new(JsonOutput::new(destination)));
    }
    if let Some(path) = &args.pcapng {
        let file = create_private(path)?;
        let pcapng = PcapngOutput::new(file)
            .map_err(|e| Failure::setup(format!("cannot write {}: {e}", path.display())))?;
        outputs.push(Box::new(pcapng));
    }
    if let Some(target) = &args.dnstap {
        outputs.push(Box::new(DnstapOutput::open(target)?));
    }
    Ok(outputs)
}

/// Bytes gathered before one write: at full rate an 8 KiB buffer meant a
/// write call every 20 lines. Everything is flushed every second anyway.
pub const WRITE_BUFFER_BYTES: usize = 64 << 10;

/// What a run saw, for the exit summary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub messages: u64,
    pub undecodable: u64,
    /// Dropped in the kernel because the ring buffer was full, per CPU.
    pub lost_per_cpu: Vec<u64>,
    /// Records whose layout did not parse (a bug if ever non-zero).
    pub malformed_records: u64,
    /// Lookups reported before they settled, because the correlation state
    /// reached its bounds.
    pub evicted_lookups: u64,
    /// Client messages whose process was not known, left out of
    /// correlation.
    pub unattributed: u64,
    /// Client messages of processes too busy to correlate.
    pub uncorrelated: u64,
    /// Diagnoses not kept because too many were.
    pub dropped_diagnoses: u64,
    /// `analyze`: damaged records of the input files, skipped.
    pub skipped_records: u64,
    /// Messages passed on before their process's facts (resolver,
    /// container) were known.
    pub unenriched: u64,
    /// Facts about processes, cgroups and containers dropped because the
    /// enrich caches were full.
    pub evicted_facts: u64,
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
        line.push_str(&self.details());
        line
    }

    /// One line for stderr after `dnstrace analyze`: files lose nothing in
    /// a ring buffer, so there is no lost count.
    pub fn files_line(&self) -> String {
        format!(
            "{} messages, {} undecodable{}",
            self.messages,
            self.undecodable,
            self.details()
        )
    }

    /// What else the run counted, each only when it happened.
    fn details(&self) -> String {
        let mut line = String::new();
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
        if self.evicted_lookups > 0 {
            line.push_str(&format!(
                ", {} lookups reported early (state full)",
                self.evicted_lookups
            ));
        }
        if self.uncorrelated > 0 {
            line.push_str(&format!(
                ", {} messages of processes above {} messages/s not correlated",
                self.uncorrelated,
                crate::correlate::MAX_MESSAGES_PER_SECOND
            ));
        }
        if self.unattributed > 0 {
            line.push_str(&format!(
                ", {} client messages of unknown processes not correlated",
                self.unattributed
            ));
        }
        if self.dropped_diagnoses > 0 {
            line.push_str(&format!(
                ", {} diagnoses not kept (too many)",
                self.dropped_diagnoses
            ));
        }
        if self.skipped_records > 0 {
            line.push_str(&format!(
                ", {} damaged record(s) skipped",
                self.skipped_records
            ));
        }
        if self.unenriched > 0 {
            line.push_str(&format!(
                ", {} messages passed on before their process was known",
                self.unenriched
            ));
        }
        if self.evicted_facts > 0 {
            line.push_str(&format!(
                ", {} process facts forgotten early (cache full)",
                self.evicted_facts
            ));
        }
        if self.malformed_records > 0 {
            line.push_str(&format!(", {} malformed records", self.malformed_records));
        }
        line
    }
}

pub trait Output {
    fn message(&mut self, message: &Message) -> io::Result<()>;
    /// Whether this output writes messages' payloads (packets).
    fn needs_payload(&self) -> bool {
        false
    }
    // Formats that carry only messages (pcapng) leave the rest alone.
    /// A lookup that settled, with its attempts.
    fn lookup(&mut self, _lookup: &Lookup) -> io::Result<()> {
        Ok(())
    }
    /// A response that matched no query.
    fn stray(&mut self, _attempt: &Attempt) -> io::Result<()> {
        Ok(())
    }
    /// A diagnosis that is new (`first` is set) or has grown.
    fn diagnosis(&mut self, _diagnosis: &Diagnosis, _first: bool) -> io::Result<()> {
        Ok(())
    }
    /// The per-process report: every `--summary-interval`, and at exit.
    fn report(
        &mut self,
        _processes: &[&ProcessReport],
        _diagnoses: &[&Diagnosis],
    ) -> io::Result<()> {
        Ok(())
    }
    /// Makes everything written so far visible (a tick, or the end).
    fn flush(&mut self) -> io::Result<()>;
    fn finish(&mut self, summary: &Summary) -> io::Result<()>;
}

/// One process's lookups so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessReport {
    pub client: Client,
    pub lookups: u64,
    pub resolved: u64,
    pub nxdomain: u64,
    pub nodata: u64,
    pub failed: u64,
    pub queries: u64,
    pub wasted_queries: u64,
    /// Sum of lookup durations, for the mean.
    pub total_ns: u64,
}

impl ProcessReport {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            lookups: 0,
            resolved: 0,
            nxdomain: 0,
            nodata: 0,
            failed: 0,
            queries: 0,
            wasted_queries: 0,
            total_ns: 0,
        }
    }

    pub fn add(&mut self, lookup: &Lookup) {
        use crate::correlate::lookup::LookupOutcome;
        self.lookups += 1;
        match lookup.outcome() {
            LookupOutcome::Resolved => self.resolved += 1,
            LookupOutcome::NxDomain => self.nxdomain += 1,
            LookupOutcome::NoData => self.nodata += 1,
            LookupOutcome::Failed => self.failed += 1,
        }
        self.queries += lookup.queries() as u64;
        self.wasted_queries += lookup.wasted_queries() as u64;
        self.total_ns += lookup.total_ns();
    }
}

/// Creates (or truncates) an output file with mode 0600: traces carry names
/// that processes looked up.
pub fn create_private(path: &Path) -> Result<File, Failure> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Failure::setup(format!("cannot write {}: {e}", path.display())))
}

/// Where the main output goes: standard output, a file, or a file that
/// rotates.
pub struct Destination {
    pub writer: Sink,
    pub is_terminal: bool,
}

pub enum Sink {
    Plain(BufWriter<Box<dyn Write>>),
    Rotating(RotatingFile),
}

impl Destination {
    pub fn open(path: Option<&Path>, rotation: Policy) -> Result<Self, Failure> {
        match path {
            None => {
                let stdout = io::stdout();
                let is_terminal = stdout.is_terminal();
                Ok(Self {
                    writer: Sink::Plain(BufWriter::with_capacity(
                        WRITE_BUFFER_BYTES,
                        Box::new(stdout),
                    )),
                    is_terminal,
                })
            }
            Some(path) => {
                let file = create_private(path)?;
                let writer = if rotation.rotates() {
                    Sink::Rotating(RotatingFile::new(path, file, rotation))
                } else {
                    Sink::Plain(BufWriter::with_capacity(WRITE_BUFFER_BYTES, Box::new(file)))
                };
                Ok(Self {
                    writer,
                    is_terminal: false,
                })
            }
        }
    }

    /// Whether the file rotates, and so must hear of each line.
    pub fn rotates(&self) -> bool {
        matches!(self.writer, Sink::Rotating(_))
    }

    /// Called after each whole line, so a rotation never splits one.
    pub fn line_written(&mut self) -> io::Result<()> {
        match &mut self.writer {
            Sink::Plain(_) => Ok(()),
            Sink::Rotating(file) => file.line_written(),
        }
    }
}

impl Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            Self::Plain(writer) => writer.write(bytes),
            Self::Rotating(file) => file.write(bytes),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Plain(writer) => writer.flush(),
            Self::Rotating(file) => file.flush(),
        }
    }
}
