//! Outputs: each renders the same messages its own way (one module each),
//! like ripgrep's printers.

pub mod dnstap;
pub mod json;
pub mod metrics;
pub mod pcapng;
pub mod rotation;
pub mod text;

use std::{
    ffi::{OsStr, OsString},
    fs::File,
    io::{self, BufWriter, IsTerminal, Write},
    os::fd::OwnedFd,
    path::Path,
    time::Duration,
};

use rustix::{
    fs::{FileType, Mode, OFlags},
    io::Errno,
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
    message::{Client, Dropped, Message},
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
        Format::Json => Box::new(JsonOutput::new(destination, &args.json_kinds)),
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
        outputs.push(Box::new(JsonOutput::new(destination, &args.json_kinds)));
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

/// Whether the run creates files or connects to a Unix socket after it
/// started (rotation, reconnecting to a dnstap collector), and so keeps
/// the privilege to do so in directories of other users.
pub fn writes_after_start(args: &OutputArgs) -> bool {
    args.rotate_size.is_some()
        || args.rotate_interval.is_some_and(|secs| secs > 0)
        || args
            .dnstap
            .as_deref()
            .is_some_and(|target| target.starts_with("unix:"))
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
    /// Messages not correlated because the agent was behind.
    pub shed: u64,
    /// Lookups reported incomplete: messages may have been lost in them.
    pub incomplete_lookups: u64,
    /// TCP streams (a connection's direction) whose later messages the
    /// kernel could not frame, and so did not report.
    pub unframed_tcp_streams: u64,
    /// Diagnoses not kept because too many were.
    pub dropped_diagnoses: u64,
    /// `analyze`: damaged records of the input files, skipped.
    pub skipped_records: u64,
    /// DNS packets the kernel dropped, and how many for each reason (the
    /// kernel's names: a small enum, so the map stays small).
    pub drops: u64,
    pub drops_by_reason: std::collections::BTreeMap<String, u64>,
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

    pub fn count_drop(&mut self, reason: &str) {
        self.drops += 1;
        match self.drops_by_reason.get_mut(reason) {
            Some(count) => *count += 1,
            None => {
                self.drops_by_reason.insert(reason.to_string(), 1);
            }
        }
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
        if self.drops > 0 {
            let reasons: Vec<String> = self
                .drops_by_reason
                .iter()
                .map(|(reason, count)| format!("{reason} {count}"))
                .collect();
            line.push_str(&format!(
                ", {} DNS packets dropped by the kernel ({})",
                self.drops,
                reasons.join(", ")
            ));
        }
        if self.evicted_lookups > 0 {
            line.push_str(&format!(
                ", {} lookups reported early (state full)",
                self.evicted_lookups
            ));
        }
        if self.shed > 0 {
            line.push_str(&format!(
                ", {} messages not correlated while behind",
                self.shed
            ));
        }
        if self.incomplete_lookups > 0 {
            line.push_str(&format!(
                ", {} lookups incomplete (messages may have been lost)",
                self.incomplete_lookups
            ));
        }
        if self.unframed_tcp_streams > 0 {
            line.push_str(&format!(
                ", {} TCP streams not framed further (their later messages not seen)",
                self.unframed_tcp_streams
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
    /// A DNS packet the kernel dropped.
    fn dropped(&mut self, _dropped: &Dropped) -> io::Result<()> {
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
    /// The agent's own state, once a tick while tracing live.
    fn state(&mut self, _state: &AgentState) -> io::Result<()> {
        Ok(())
    }
    /// Makes everything written so far visible (a tick, or the end).
    fn flush(&mut self) -> io::Result<()>;
    fn finish(&mut self, summary: &Summary) -> io::Result<()>;
}

/// What the agent holds and has counted, for outputs that report on
/// dnstrace itself (metrics).
pub struct AgentState<'a> {
    /// CLOCK_MONOTONIC nanoseconds, as message timestamps are.
    pub now_ns: u64,
    /// The counts so far, losses included.
    pub summary: &'a Summary,
    /// Lookups not yet settled.
    pub open_lookups: usize,
    /// Processes in the per-process report.
    pub processes: usize,
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
    /// Lookups that may have lost messages, not judged.
    pub incomplete: u64,
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
            incomplete: 0,
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
            LookupOutcome::Incomplete => self.incomplete += 1,
        }
        self.queries += lookup.queries() as u64;
        self.wasted_queries += lookup.wasted_queries() as u64;
        // A file can put a lookup's messages centuries apart.
        self.total_ns = self.total_ns.saturating_add(lookup.total_ns());
    }
}

/// Creates (or empties) an output file with mode 0600: traces carry names
/// that processes looked up. See [`open_private`].
pub fn create_private(path: &Path) -> Result<File, Failure> {
    let failure = |e: io::Error| Failure::setup(format!("cannot write {}: {e}", path.display()));
    let place = OutputPath::new(path).map_err(failure)?;
    open_private(&place.dir, &place.name, Creation::Reuse).map_err(failure)
}

/// Where an output file goes: its directory, held open, and its name in
/// it. Rotation renames and creates relative to the directory it started
/// in, so a directory renamed or swapped for a link meanwhile cannot send
/// it elsewhere.
pub struct OutputPath {
    pub dir: OwnedFd,
    pub name: OsString,
}

impl OutputPath {
    pub fn new(path: &Path) -> io::Result<Self> {
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::other("not a file name"))?
            .to_owned();
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let dir = rustix::fs::open(
            dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self { dir, name })
    }
}

/// Whether an existing file may be taken over, or the name must be new.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Creation {
    /// `-o FILE` over a file this user owns, as from an earlier run.
    Reuse,
    /// A rotation's new file: whatever appeared under the name since the
    /// old one was renamed is someone else's, and is left alone.
    New,
}

/// Opens `name` in `dir` for writing, empty and with mode 0600 whatever
/// it was before. Another user may have placed something at that name in
/// a shared directory, so it never follows a symbolic link, never blocks
/// on a FIFO, and takes over only a regular file of this user with no
/// other hard link (emptying a linked file would empty the other name
/// too). A character device (`/dev/null`) is written as it is.
pub fn open_private(dir: &OwnedFd, name: &OsStr, creation: Creation) -> io::Result<File> {
    let mut flags =
        OFlags::WRONLY | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    if creation == Creation::New {
        flags |= OFlags::EXCL;
    }
    let fd =
        rustix::fs::openat(dir, name, flags, Mode::RUSR | Mode::WUSR).map_err(
            |errno| match errno {
                Errno::LOOP => io::Error::other(
                    "it is a symbolic link, which dnstrace never follows for output (name the file itself)",
                ),
                Errno::EXIST => io::Error::other(
                    "something else appeared under that name while rotating (left alone)",
                ),
                Errno::NXIO => io::Error::other("it is a FIFO or a socket, not a file"),
                errno => errno.into(),
            },
        )?;
    let stat = rustix::fs::fstat(&fd)?;
    match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile => {
            let owner = rustix::process::geteuid().as_raw();
            if stat.st_uid != owner {
                return Err(io::Error::other(format!(
                    "it belongs to uid {}, not to this user (remove it first)",
                    stat.st_uid
                )));
            }
            if stat.st_nlink > 1 {
                return Err(io::Error::other(
                    "it has other hard links, which emptying it would empty too",
                ));
            }
            rustix::fs::ftruncate(&fd, 0)?;
            rustix::fs::fchmod(&fd, Mode::RUSR | Mode::WUSR)?;
        }
        FileType::CharacterDevice => {}
        _ => return Err(io::Error::other("it is not a regular file")),
    }
    rustix::fs::fcntl_setfl(&fd, OFlags::empty())?;
    Ok(File::from(fd))
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
                let writer = if rotation.rotates() {
                    Sink::Rotating(RotatingFile::create(path, rotation).map_err(|e| {
                        Failure::setup(format!("cannot write {}: {e}", path.display()))
                    })?)
                } else {
                    let file = create_private(path)?;
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn lookups_lasting_centuries_add_up_without_overflow() {
        // Found by the correlate fuzz target (docs/fuzzing.md): a file's
        // times can put a lookup's first and last messages u64::MAX apart.
        let client = Client {
            id: crate::message::ClientId::Pid(1),
            comm: None,
            facts: None,
        };
        let mut first = crate::correlate::tests::attempt(
            &client,
            1,
            1,
            crate::correlate::attempt::Outcome::Pending,
            0,
            None,
        );
        first.ended_monotonic_ns = None;
        let mut lookup = Lookup::new(Default::default(), first);
        lookup.last_monotonic_ns = u64::MAX;
        let mut report = ProcessReport::new(client);
        report.add(&lookup);
        report.add(&lookup);
        assert_eq!((report.lookups, report.total_ns), (2, u64::MAX));
    }

    #[test]
    fn a_link_where_the_output_goes_is_refused_and_its_target_kept() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let output = dir.path().join("trace.jsonl");
        symlink(&victim, &output).unwrap();
        let failure = create_private(&output).unwrap_err();
        assert!(failure.message.contains("symbolic link"), "{failure}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(mode(&victim), 0o644);
    }

    #[test]
    fn an_existing_file_is_emptied_and_made_private() {
        let dir = tempfile::tempdir().unwrap();
        let output = dir.path().join("trace.jsonl");
        std::fs::write(&output, "old run").unwrap();
        std::fs::set_permissions(&output, std::fs::Permissions::from_mode(0o644)).unwrap();
        create_private(&output).unwrap();
        assert_eq!(mode(&output), 0o600);
        assert_eq!(std::fs::read(&output).unwrap(), b"");
    }

    #[test]
    fn a_fifo_hard_link_or_file_of_another_user_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            FileType::Fifo,
            Mode::from_raw_mode(0o666),
            0,
        )
        .unwrap();
        // Would block forever without O_NONBLOCK: no one reads the FIFO.
        assert!(create_private(&fifo).is_err());

        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let linked = dir.path().join("linked");
        std::fs::hard_link(&victim, &linked).unwrap();
        let failure = create_private(&linked).unwrap_err();
        assert!(failure.message.contains("hard links"), "{failure}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");

        if rustix::process::geteuid().is_root() {
            let theirs = dir.path().join("theirs");
            std::fs::write(&theirs, "their data").unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
            let failure = create_private(&theirs).unwrap_err();
            assert!(failure.message.contains("uid 65534"), "{failure}");
            assert_eq!(std::fs::read_to_string(&theirs).unwrap(), "their data");
            assert_eq!(std::fs::metadata(&theirs).unwrap().uid(), 65534);
        }
    }

    #[test]
    fn dev_null_is_written_as_it_is() {
        create_private(Path::new("/dev/null")).unwrap();
        assert_eq!(
            FileType::from_raw_mode(rustix::fs::stat("/dev/null").unwrap().st_mode),
            FileType::CharacterDevice
        );
    }
}
