//! Sending Frame Streams to a collector (`unix:PATH`, `tcp:HOST:PORT`) from
//! a thread of its own, so that a slow or absent collector never holds up
//! capture. Frames wait in a bounded queue; when it is full, new frames are
//! dropped and counted. The thread connects with the bidirectional handshake
//! and reconnects with exponential backoff whenever the collector goes away.

use std::{
    collections::VecDeque,
    fmt,
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream},
    os::unix::net::UnixStream,
    path::PathBuf,
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use super::{
    CONTENT_TYPE,
    frame_streams::{ControlFrame, ControlType, read_control},
};

/// Frames kept while the collector is away or slow...
pub const MAX_QUEUED_FRAMES: usize = 10_000;
/// ...and the bytes they may hold together.
pub const MAX_QUEUED_BYTES: usize = 4 << 20;
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A connect, handshake step or write that takes longer means the
/// collector is stuck: the connection is dropped and made again.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// At exit, how long buffered frames may take to reach the collector.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Frames written with one write call.
const BATCH: usize = 256;
/// How often an idle connection is checked for a collector that left.
const IDLE_CHECK: Duration = Duration::from_millis(500);

/// Where a collector listens.
#[derive(Debug)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(Vec<SocketAddr>),
}

/// How delivery went, for the line at exit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delivery {
    pub sent: u64,
    /// Dropped because the queue was full.
    pub dropped_full: u64,
    /// Still queued when the grace at exit ran out.
    pub undelivered: u64,
}

impl Delivery {
    pub fn dropped(&self) -> u64 {
        self.dropped_full + self.undelivered
    }
}

#[derive(Default)]
struct Queue {
    frames: VecDeque<Vec<u8>>,
    bytes: usize,
    sent: u64,
    dropped_full: u64,
    /// Set once no more frames will come; the thread delivers what it
    /// holds until this plus [`CLOSE_GRACE`], then ends.
    closing_since: Option<Instant>,
    /// The thread has ended.
    finished: bool,
}

impl Queue {
    fn delivery(&self) -> Delivery {
        Delivery {
            sent: self.sent,
            dropped_full: self.dropped_full,
            undelivered: self.frames.len() as u64,
        }
    }
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // The queue stays consistent between statements, so a panic
        // elsewhere leaves nothing half done.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait_until<'a>(
        &'a self,
        queue: MutexGuard<'a, Queue>,
        until: Instant,
    ) -> MutexGuard<'a, Queue> {
        let timeout = until.saturating_duration_since(Instant::now());
        self.changed
            .wait_timeout(queue, timeout)
            .unwrap_or_else(PoisonError::into_inner)
            .0
    }
}

/// The capture side's handle on the sending thread.
pub struct Stream {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Stream {
    /// Starts the sending thread; it connects in the background.
    pub fn start(endpoint: Endpoint, name: String) -> io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let sender = Sender {
            endpoint,
            name,
            shared: Arc::clone(&shared),
        };
        let thread = thread::Builder::new()
            .name("dnstap".into())
            .spawn(move || sender.run())?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Queues a whole data frame; drops it when the queue is full.
    pub fn send(&self, frame: Vec<u8>) {
        let mut queue = self.shared.lock();
        if queue.frames.len() >= MAX_QUEUED_FRAMES || queue.bytes + frame.len() > MAX_QUEUED_BYTES {
            queue.dropped_full += 1;
            return;
        }
        let was_empty = queue.frames.is_empty();
        queue.bytes += frame.len();
        queue.frames.push_back(frame);
        drop(queue);
        // The thread only sleeps on an empty queue.
        if was_empty {
            self.shared.changed.notify_all();
        }
    }

    pub fn dropped_so_far(&self) -> u64 {
        self.shared.lock().dropped_full
    }

    /// Delivers what is queued, within [`CLOSE_GRACE`], and says how it
    /// went.
    pub fn close(&mut self) -> Delivery {
        let now = Instant::now();
        // A write stuck until its timeout may hold the thread past the grace.
        let deadline = now + CLOSE_GRACE + IO_TIMEOUT + Duration::from_secs(1);
        let mut queue = self.shared.lock();
        queue.closing_since = Some(now);
        self.shared.changed.notify_all();
        while !queue.finished && Instant::now() < deadline {
            queue = self.shared.wait_until(queue, deadline);
        }
        let delivery = queue.delivery();
        let finished = queue.finished;
        drop(queue);
        if finished && let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        delivery
    }
}

/// A connected socket of either kind.
enum Connection {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Connection {
    fn open(endpoint: &Endpoint) -> io::Result<Self> {
        let connection = match endpoint {
            Endpoint::Unix(path) => Self::Unix(UnixStream::connect(path)?),
            Endpoint::Tcp(addrs) => {
                let mut last_error = io::Error::other("no address");
                let mut connected = None;
                for addr in addrs {
                    match TcpStream::connect_timeout(addr, IO_TIMEOUT) {
                        Ok(stream) => {
                            connected = Some(stream);
                            break;
                        }
                        Err(error) => last_error = error,
                    }
                }
                let stream = connected.ok_or(last_error)?;
                stream.set_nodelay(true)?;
                Self::Tcp(stream)
            }
        };
        connection.set_timeouts(Some(IO_TIMEOUT))?;
        Ok(connection)
    }

    fn set_timeouts(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Self::Unix(s) => {
                s.set_read_timeout(timeout)?;
                s.set_write_timeout(timeout)
            }
            Self::Tcp(s) => {
                s.set_read_timeout(timeout)?;
                s.set_write_timeout(timeout)
            }
        }
    }

    fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        match self {
            Self::Unix(s) => s.set_nonblocking(nonblocking),
            Self::Tcp(s) => s.set_nonblocking(nonblocking),
        }
    }

    /// A collector sends nothing between ACCEPT and FINISH, so anything
    /// readable (end of stream included) means it is gone or confused.
    fn collector_left(&mut self) -> bool {
        if self.set_nonblocking(true).is_err() {
            return true;
        }
        let mut byte = [0u8; 1];
        let left = !matches!(self.read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        left || self.set_nonblocking(false).is_err()
    }

    /// READY → ACCEPT → START.
    fn handshake(&mut self) -> io::Result<()> {
        self.write_all(&ControlFrame::new(ControlType::Ready, Some(CONTENT_TYPE)).encode())?;
        let answer = read_control(self)?;
        if answer.kind != ControlType::Accept {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the collector answered {}, not ACCEPT", answer.kind.name()),
            ));
        }
        if !answer.allows(CONTENT_TYPE) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the collector does not accept {CONTENT_TYPE}"),
            ));
        }
        self.write_all(&ControlFrame::new(ControlType::Start, Some(CONTENT_TYPE)).encode())
    }

    /// STOP, then FINISH from the collector; a collector that does not
    /// answer has everything anyway.
    fn stop(&mut self) {
        if self
            .write_all(&ControlFrame::new(ControlType::Stop, None).encode())
            .is_ok()
        {
            let _ = read_control(self);
        }
    }
}

impl Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Unix(s) => s.read(buf),
            Self::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Connection {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Unix(s) => s.write(buf),
            Self::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The sending thread.
struct Sender {
    endpoint: Endpoint,
    /// The target as the user wrote it, for messages.
    name: String,
    shared: Arc<Shared>,
}

impl Sender {
    fn run(self) {
        // This thread only connects and writes; it was started before the
        // programs were attached, so it drops what it does not use itself.
        let kept = match self.endpoint {
            Endpoint::Unix(_) => crate::privileges::WRITING_LATER,
            Endpoint::Tcp(_) => rustix::thread::CapabilitySet::empty(),
        };
        if let Err(error) = crate::privileges::keep_only(kept) {
            eprintln!("dnstrace: dnstap {}: {error}", self.name);
        }
        let mut backoff = MIN_BACKOFF;
        // One line per outage, not one per attempt.
        let mut complained = false;
        let mut connected_before = false;
        loop {
            match Connection::open(&self.endpoint).and_then(|mut c| c.handshake().map(|()| c)) {
                Ok(mut connection) => {
                    let again = if connected_before { "re" } else { "" };
                    eprintln!("dnstrace: dnstap {}: {again}connected", self.name);
                    connected_before = true;
                    backoff = MIN_BACKOFF;
                    match self.pump(&mut connection) {
                        Ok(()) => {
                            connection.stop();
                            break;
                        }
                        Err(error) => {
                            eprintln!(
                                "dnstrace: dnstap {}: collector lost ({error}); reconnecting",
                                self.name
                            );
                            complained = true;
                        }
                    }
                }
                Err(error) => {
                    if !complained {
                        eprintln!(
                            "dnstrace: dnstap {}: cannot connect ({error}); retrying, \
                             keeping up to {MAX_QUEUED_FRAMES} frames meanwhile",
                            self.name
                        );
                        complained = true;
                    }
                }
            }
            if self.give_up_after(backoff) {
                break;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        self.shared.lock().finished = true;
        self.shared.changed.notify_all();
    }

    /// Waits `backoff` before the next attempt; says whether to stop trying
    /// because dnstrace is exiting and the grace ran out (or nothing is
    /// left to deliver).
    fn give_up_after(&self, backoff: Duration) -> bool {
        let mut until = Instant::now() + backoff;
        let mut queue = self.shared.lock();
        loop {
            if let Some(since) = queue.closing_since {
                let give_up_at = since + CLOSE_GRACE;
                if queue.frames.is_empty() || Instant::now() >= give_up_at {
                    return true;
                }
                until = until.min(give_up_at);
            }
            if Instant::now() >= until {
                return false;
            }
            queue = self.shared.wait_until(queue, until);
        }
    }

    /// Writes frames as they come. `Ok` once dnstrace is exiting and the
    /// queue is empty (or the grace ran out); an error when the collector
    /// went away, with every frame not fully written back in the queue.
    fn pump(&self, connection: &mut Connection) -> io::Result<()> {
        loop {
            let mut queue = self.shared.lock();
            while queue.frames.is_empty() {
                if queue.closing_since.is_some() {
                    return Ok(());
                }
                queue = self.shared.wait_until(queue, Instant::now() + IDLE_CHECK);
                if queue.frames.is_empty() && queue.closing_since.is_none() {
                    drop(queue);
                    if connection.collector_left() {
                        return Err(io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            "the collector closed the connection",
                        ));
                    }
                    queue = self.shared.lock();
                }
            }
            if queue
                .closing_since
                .is_some_and(|since| since.elapsed() >= CLOSE_GRACE)
            {
                return Ok(());
            }
            let count = queue.frames.len().min(BATCH);
            let batch: Vec<Vec<u8>> = queue.frames.drain(..count).collect();
            queue.bytes -= batch.iter().map(Vec::len).sum::<usize>();
            drop(queue);

            // A collector that left while we were busy would take this
            // batch into a dead socket.
            let written = if connection.collector_left() {
                Err((
                    0,
                    io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the collector closed the connection",
                    ),
                ))
            } else {
                write_batch(connection, &batch)
            };
            match written {
                Ok(()) => self.shared.lock().sent += batch.len() as u64,
                Err((whole, error)) => {
                    let mut queue = self.shared.lock();
                    queue.sent += whole as u64;
                    for frame in batch.into_iter().skip(whole).rev() {
                        queue.bytes += frame.len();
                        queue.frames.push_front(frame);
                    }
                    return Err(error);
                }
            }
        }
    }
}

/// Writes `frames` back to back; on failure, says how many went whole.
fn write_batch(connection: &mut Connection, frames: &[Vec<u8>]) -> Result<(), (usize, io::Error)> {
    let bytes = frames.concat();
    let mut written = 0;
    while written < bytes.len() {
        match connection.write(&bytes[written..]) {
            Ok(0) => {
                return Err((
                    whole_frames(frames, written),
                    io::ErrorKind::WriteZero.into(),
                ));
            }
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err((whole_frames(frames, written), error)),
        }
    }
    Ok(())
}

/// How many of `frames` lie whole within their first `written` bytes.
fn whole_frames(frames: &[Vec<u8>], written: usize) -> usize {
    let mut end = 0;
    frames
        .iter()
        .take_while(|frame| {
            end += frame.len();
            end <= written
        })
        .count()
}

impl fmt::Display for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} frames sent, {} dropped", self.sent, self.dropped())?;
        if self.dropped() > 0 {
            write!(
                f,
                " ({} while the buffer was full, {} still buffered at exit)",
                self.dropped_full, self.undelivered
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;
    use crate::dnstap::frame_streams::data_frame;

    /// A collector on loopback that accepts one connection, does the
    /// handshake, and returns the data frames it got before STOP.
    fn collector(listener: TcpListener) -> JoinHandle<Vec<Vec<u8>>> {
        thread::spawn(move || {
            let (mut socket, _) = listener.accept().expect("accept");
            socket
                .set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let ready = read_control(&mut socket).expect("READY");
            assert_eq!(ready.kind, ControlType::Ready);
            assert!(ready.allows(CONTENT_TYPE));
            socket
                .write_all(&ControlFrame::new(ControlType::Accept, Some(CONTENT_TYPE)).encode())
                .expect("ACCEPT");
            let start = read_control(&mut socket).expect("START");
            assert_eq!(start.kind, ControlType::Start);
            let mut frames = Vec::new();
            loop {
                let mut len = [0u8; 4];
                socket.read_exact(&mut len).expect("frame length");
                let len = u32::from_be_bytes(len) as usize;
                if len == 0 {
                    let mut control_len = [0u8; 4];
                    socket.read_exact(&mut control_len).expect("control length");
                    let mut body = vec![0u8; u32::from_be_bytes(control_len) as usize];
                    socket.read_exact(&mut body).expect("control body");
                    let stop = ControlFrame::decode(&body).expect("control frame");
                    assert_eq!(stop.kind, ControlType::Stop);
                    socket
                        .write_all(&ControlFrame::new(ControlType::Finish, None).encode())
                        .expect("FINISH");
                    return frames;
                }
                let mut frame = vec![0u8; len];
                socket.read_exact(&mut frame).expect("frame");
                frames.push(frame);
            }
        })
    }

    #[test]
    fn frames_reach_a_collector_in_order() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let collected = collector(listener);
        let mut stream = Stream::start(Endpoint::Tcp(vec![addr]), addr.to_string()).expect("start");
        for n in 0..1000u32 {
            stream.send(data_frame(&n.to_be_bytes()));
        }
        let delivery = stream.close();
        assert_eq!(
            delivery,
            Delivery {
                sent: 1000,
                dropped_full: 0,
                undelivered: 0
            }
        );
        let frames = collected.join().expect("collector");
        let numbers: Vec<u32> = frames
            .iter()
            .map(|f| u32::from_be_bytes(f[..4].try_into().expect("4 bytes")))
            .collect();
        assert_eq!(numbers, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn without_a_collector_frames_are_counted_as_dropped() {
        // Bound, then closed: nothing listens on the port any more.
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let mut stream = Stream::start(Endpoint::Tcp(vec![addr]), addr.to_string()).expect("start");
        let total = MAX_QUEUED_FRAMES as u64 + 25;
        for _ in 0..total {
            stream.send(data_frame(b"x"));
        }
        assert_eq!(stream.dropped_so_far(), 25);
        let started = Instant::now();
        let delivery = stream.close();
        assert!(started.elapsed() < CLOSE_GRACE + IO_TIMEOUT, "bounded exit");
        assert_eq!(delivery.sent, 0);
        assert_eq!(delivery.dropped_full, 25);
        assert_eq!(delivery.undelivered, MAX_QUEUED_FRAMES as u64);
        assert_eq!(delivery.dropped(), total);
        assert!(delivery.to_string().contains(&format!("{total} dropped")));
    }

    #[test]
    fn a_batch_cut_short_keeps_the_frames_not_written_whole() {
        let frames = vec![vec![0u8; 10], vec![0u8; 10], vec![0u8; 10]];
        assert_eq!(whole_frames(&frames, 0), 0);
        assert_eq!(whole_frames(&frames, 15), 1);
        assert_eq!(whole_frames(&frames, 20), 2);
        assert_eq!(whole_frames(&frames, 29), 2);
        assert_eq!(whole_frames(&frames, 30), 3);
    }
}
