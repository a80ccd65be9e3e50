//! `dnstrace analyze`: traces written earlier, by dnstrace or by other
//! tools, through the same pipeline as live tracing. One reader per format;
//! their messages are merged by time, so files can be given in any order.
//! Nothing here needs privileges or touches /proc.

mod dissect;
pub mod dnstap;
pub mod jsonl;
pub mod packets;

use std::{
    fmt,
    fs::File,
    hash::{DefaultHasher, Hash, Hasher},
    io::{self, BufReader, Read},
    net::SocketAddr,
    path::{Path, PathBuf},
};

use crate::{
    cli::AnalyzeArgs,
    failure::Failure,
    message::{Direction, Envelope, Message, Transport},
    output::{self, Output, metrics::MetricsOutput},
    pipeline::Pipeline,
};

/// How often, in the files' own time, correlation is told that time passed
/// (timeouts and settled lookups are decided then).
const ADVANCE_EVERY_NS: u64 = 100_000_000;

/// A place in a file and what is wrong there.
#[derive(Debug)]
pub struct InputError {
    pub offset: u64,
    pub reason: String,
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "offset {}: {}", self.offset, self.reason)
    }
}

/// Damaged records a reader stepped over.
#[derive(Debug, Default)]
pub struct Skipped {
    pub count: u64,
    /// The first one, for the warning.
    pub first: Option<InputError>,
}

impl Skipped {
    pub fn record(&mut self, offset: u64, reason: impl Into<String>) {
        self.count += 1;
        if self.first.is_none() {
            self.first = Some(InputError {
                offset,
                reason: reason.into(),
            });
        }
    }
}

/// One file's messages, in file order.
pub trait Reader {
    /// The next message, or `None` at the end of the file. A damaged record
    /// is skipped and counted in `skipped`; an error means nothing more can
    /// be read from this file.
    fn next_message(&mut self) -> Result<Option<Message>, InputError>;
    fn skipped(&self) -> &Skipped;
}

/// What readers need to know besides the bytes.
#[derive(Clone)]
pub struct ReadOptions {
    /// Server ports: in a packet without a process, the side on one of
    /// these is the server.
    pub ports: Vec<u16>,
    /// Keep payloads, for outputs that write packets.
    pub keep_payloads: bool,
}

impl ReadOptions {
    /// A message as its client saw it, for packets and dnstap frames that
    /// carry no process: queries go out, responses come in. The socket is
    /// named by its two ends, which stand for a cookie.
    pub fn client_view(&self, packet: Packet<'_>) -> Message {
        let Packet {
            wall_time_ns,
            transport,
            source,
            destination,
            payload,
            size,
        } = packet;
        let from_client = self.is_from_client(source, destination, Some(is_response(payload)));
        let (client, server, direction) = if from_client {
            (source, destination, Direction::Send)
        } else {
            (destination, source, Direction::Recv)
        };
        // A UDP socket is its local address and port: an answer from another
        // server address still arrives on it (and is judged a mismatch, as
        // when tracing). A TCP connection is both ends.
        let mut hasher = DefaultHasher::new();
        match transport {
            Transport::Udp => (transport.name(), client).hash(&mut hasher),
            Transport::Tcp => (transport.name(), client, server).hash(&mut hasher),
        }
        let envelope = Envelope {
            wall_time_ns,
            monotonic_ns: monotonic_of(wall_time_ns),
            process: None,
            socket_cookie: hasher.finish(),
            direction,
            transport,
            local: client,
            remote: server,
            // Files do not say whether a response was read.
            response_number: None,
        };
        Message::decoded(envelope, payload, size, self.keep_payloads)
    }
}

impl ReadOptions {
    /// Whether a message went from client to server. The server is the side
    /// on a DNS port; between two DNS ports (or none), the QR bit decides
    /// when it is known.
    pub fn is_from_client(
        &self,
        source: SocketAddr,
        destination: SocketAddr,
        is_response: Option<bool>,
    ) -> bool {
        let to_server = self.ports.contains(&destination.port());
        let from_server = self.ports.contains(&source.port());
        match (to_server, from_server) {
            (true, false) => true,
            (false, true) => false,
            _ => !is_response.unwrap_or(false),
        }
    }
}

/// A DNS message seen on the wire, without its process.
pub struct Packet<'a> {
    pub wall_time_ns: i128,
    pub transport: Transport,
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub payload: &'a [u8],
    /// Length on the wire; more than `payload` holds when the capture was
    /// cut short.
    pub size: u32,
}

fn is_response(payload: &[u8]) -> bool {
    payload.get(2).is_some_and(|flags| flags & 0x80 != 0)
}

/// Files carry wall-clock time only; correlation measures intervals on it.
pub fn monotonic_of(wall_time_ns: i128) -> u64 {
    u64::try_from(wall_time_ns).unwrap_or(0)
}

/// A file's reader and its next message, for the merge.
struct Input {
    path: PathBuf,
    reader: Box<dyn Reader>,
    next: Option<Message>,
    broken: Option<InputError>,
}

impl Input {
    fn pull(&mut self) {
        self.next = match self.reader.next_message() {
            Ok(message) => message,
            Err(error) => {
                self.broken = Some(error);
                None
            }
        };
    }
}

/// The pipeline that `args` asks for, its outputs open.
pub fn open_pipeline(args: &AnalyzeArgs) -> Result<Pipeline, Failure> {
    refuse_overwriting_inputs(args)?;
    let mut outputs = output::open_all(&args.output)?;
    if let Some(metrics) = MetricsOutput::open(&args.output.metrics, false)? {
        outputs.push(Box::new(metrics) as Box<dyn Output>);
    }
    Ok(Pipeline::offline(outputs))
}

/// Hands messages in time order to the pipeline, telling it each time a
/// file's clock has moved on by `ADVANCE_EVERY_NS`.
#[derive(Default)]
pub struct Feed {
    advanced_to: u64,
}

impl Feed {
    pub fn message(&mut self, pipeline: &mut Pipeline, message: &Message) {
        let now = message.envelope.monotonic_ns;
        if now >= self.advanced_to.saturating_add(ADVANCE_EVERY_NS) {
            pipeline.advance(now);
            self.advanced_to = now;
        }
        pipeline.message(message);
    }
}

pub fn run(args: &AnalyzeArgs) -> Result<(), Failure> {
    let mut pipeline = open_pipeline(args)?;
    let options = ReadOptions {
        ports: args.ports.clone(),
        keep_payloads: pipeline.needs_payloads(),
    };
    let mut inputs = Vec::new();
    for path in &args.files {
        let mut input = Input {
            path: path.clone(),
            reader: open(path, &options)?,
            next: None,
            broken: None,
        };
        input.pull();
        inputs.push(input);
    }

    let mut feed = Feed::default();
    while let Some(input) = inputs
        .iter_mut()
        .filter(|input| input.next.is_some())
        .min_by_key(|input| input.next.as_ref().map(|m| m.envelope.wall_time_ns))
    {
        let message = input.next.take().expect("filtered on next");
        input.pull();
        feed.message(&mut pipeline, &message);
        if let Some(error) = pipeline.take_write_error() {
            // Still close what can be closed (a dnstap file's STOP frame).
            pipeline.finish();
            return Err(Failure::runtime(format!("writing output failed: {error}")));
        }
    }
    pipeline.summary.skipped_records = inputs
        .iter()
        .map(|input| input.reader.skipped().count)
        .sum();
    // Whatever was still open has waited as long as it ever will.
    pipeline.finish();
    if let Some(error) = pipeline.take_write_error() {
        return Err(Failure::runtime(format!("writing output failed: {error}")));
    }

    let mut broken = Vec::new();
    for input in &inputs {
        let skipped = input.reader.skipped();
        if let Some(first) = &skipped.first {
            crate::terminal::eprint_line(&format!(
                "{}: skipped {} damaged record(s), the first at {first}",
                input.path.display(),
                skipped.count
            ));
        }
        if let Some(error) = &input.broken {
            broken.push(format!("{}: {error}", input.path.display()));
        }
    }
    eprintln!(
        "dnstrace: {} file(s) read: {}",
        inputs.len(),
        pipeline.summary.files_line()
    );
    match broken.is_empty() {
        true => Ok(()),
        false => Err(Failure::runtime(format!(
            "{}; the rest of the file was not read",
            broken.join("; ")
        ))),
    }
}

/// Outputs are created empty, so one that is also an input would be lost
/// before it is read (`analyze run.jsonl --json run.jsonl`).
fn refuse_overwriting_inputs(args: &AnalyzeArgs) -> Result<(), Failure> {
    use std::os::unix::fs::MetadataExt;
    let identity = |path: &Path| {
        std::fs::metadata(path)
            .ok()
            .map(|metadata| (metadata.dev(), metadata.ino()))
    };
    let inputs: Vec<_> = args
        .files
        .iter()
        .filter_map(|path| identity(path))
        .collect();
    let outputs = &args.output;
    let dnstap_file = outputs
        .dnstap
        .as_deref()
        .filter(|target| !target.starts_with("unix:") && !target.starts_with("tcp:"))
        .map(Path::new);
    for path in [
        outputs.output.as_deref(),
        outputs.json.as_deref(),
        outputs.pcapng.as_deref(),
        outputs.metrics.file.as_deref(),
        dnstap_file,
    ]
    .into_iter()
    .flatten()
    {
        if identity(path).is_some_and(|output| inputs.contains(&output)) {
            return Err(Failure::setup(format!(
                "{} is an input; writing it would erase it first",
                path.display()
            )));
        }
    }
    Ok(())
}

/// Reads until `buffer` is full or the input ends; how much was read.
fn read_up_to(input: &mut impl Read, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match input.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Opens `path` with the reader its first bytes call for.
pub fn open(path: &Path, options: &ReadOptions) -> Result<Box<dyn Reader>, Failure> {
    let failure = |reason: String| Failure::setup(format!("{}: {reason}", path.display()));
    let mut file = File::open(path).map_err(|e| failure(format!("cannot read: {e}")))?;
    let mut magic = [0u8; 4];
    let have =
        read_up_to(&mut file, &mut magic).map_err(|e| failure(format!("cannot read: {e}")))?;
    // The bytes already read go first: a pipe (`<(zcat x.pcap.gz)`) cannot
    // be opened again from the start.
    let reader = BufReader::new(io::Cursor::new(magic[..have].to_vec()).chain(file));
    let opened: Result<Box<dyn Reader>, InputError> = match &magic[..have] {
        [0x0a, 0x0d, 0x0d, 0x0a] => {
            packets::PcapngReader::open(reader, options).map(|r| Box::new(r) as _)
        }
        [0xd4, 0xc3, 0xb2, 0xa1]
        | [0xa1, 0xb2, 0xc3, 0xd4]
        | [0x4d, 0x3c, 0xb2, 0xa1]
        | [0xa1, 0xb2, 0x3c, 0x4d] => {
            packets::PcapReader::open(reader, options).map(|r| Box::new(r) as _)
        }
        // Frame Streams begin with an escape: a zero frame length.
        [0, 0, 0, 0] => dnstap::DnstapReader::open(reader, options).map(|r| Box::new(r) as _),
        [b'{', ..] if options.keep_payloads => {
            return Err(failure(
                "JSON Lines hold no DNS payloads to write packets from (-w, --dnstap)".into(),
            ));
        }
        [b'{', ..] => Ok(Box::new(jsonl::JsonLinesReader::new(reader))),
        [] => Err(InputError {
            offset: 0,
            reason: "the file is empty".into(),
        }),
        _ => Err(InputError {
            offset: 0,
            reason: "not a pcap, pcapng, dnstap (Frame Streams) or dnstrace JSON Lines file".into(),
        }),
    };
    opened.map_err(|error| failure(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_input_is_never_also_an_output() {
        let path = std::env::temp_dir().join(format!("dnstrace-in-{}.jsonl", std::process::id()));
        let content = "{\"kind\":\"summary\"}\n";
        std::fs::write(&path, content).unwrap();
        let name = path.to_str().unwrap();
        for option in ["--json", "-o", "-w", "--dnstap", "--metrics-file"] {
            let error = run(&AnalyzeArgs::parse_from(&[name, option, name]).unwrap()).unwrap_err();
            assert!(error.message.contains("is an input"), "{option}: {error}");
            assert_eq!(std::fs::read_to_string(&path).unwrap(), content, "{option}");
        }
        let _ = std::fs::remove_file(&path);
    }
}
