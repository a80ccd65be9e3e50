//! Enrich: between decode and correlate, attaches to each message what is
//! known about its process (resolver, network namespace, container, pod),
//! shared, so that correlation and diagnosis only read messages.
//!
//! The facts are read by a worker thread (`worker.rs`), never on the event
//! thread. A process's first message asks for them; that process's messages
//! are then held, in order, until they come or `HOLD_NS` passes, when they
//! go on without them (counted as `unenriched`). Other processes' messages
//! are not held. Facts are kept per process and asked again when a process
//! shows up in another cgroup or network namespace; processes that exited
//! are forgotten at each sweep. A worker stuck on a file is replaced
//! (`STUCK_NS`). See docs/architecture.md.

mod confined;
pub mod container;
mod elf;
mod resolver_files;
mod worker;

use std::{
    collections::{HashMap, VecDeque},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError},
    },
    time::Duration,
};

pub use self::container::StateRoots;
use self::worker::{Gatherer, Reply, Request};
use crate::{
    message::{Facts, Message},
    process::Namespaces,
};

/// How long a process's messages wait for its facts before going on
/// without them. Reading them takes a few milliseconds; a network
/// namespace made since the last look may take up to 200 ms more, and a
/// stuck worker `STUCK_NS` before the request goes to a new one.
pub const HOLD_NS: u64 = 1_000_000_000;
/// Messages held per process, and in all; past either, messages go on
/// without facts rather than pile up.
const MAX_HELD_PER_PROCESS: usize = 1024;
const MAX_HELD: usize = 65_536;
/// Processes whose facts are kept; past this the oldest half is dropped
/// (and counted).
const MAX_PROCESSES: usize = 4096;
/// Requests the worker may have queued.
const MAX_REQUESTS: usize = 1024;
/// A worker that has not answered for this long while asked is stuck on a
/// file that never answers (a FUSE filesystem a tenant mounted): it is
/// left behind and a new one takes the other requests, while fewer than
/// `MAX_STUCK_WORKERS` left behind are still stuck.
pub const STUCK_NS: u64 = 500_000_000;
const MAX_STUCK_WORKERS: u64 = 4;

/// What enrichment counted, for the summary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EnrichCounts {
    /// Messages passed on before their process's facts were known.
    pub unenriched: u64,
    /// Cache entries dropped because a cache was full.
    pub evicted: u64,
    /// Workers left behind, stuck reading a process's files.
    pub stuck_workers: u64,
}

/// Facts of one process, or the wait for them.
enum Entry {
    Known {
        facts: Arc<Facts>,
        cgroup_id: u64,
        netns_cookie: u64,
        /// Order of arrival, for eviction.
        serial: u64,
    },
    Asked {
        since_ns: u64,
        /// Held messages, in order, each with its namespace cookie. Empty
        /// once the hold expired: then messages go on until the facts come.
        held: Vec<(Message, u64)>,
        expired: bool,
        /// What was known before, for messages that go on meanwhile.
        previous: Arc<Facts>,
    },
}

/// A process let through lately with its facts, in a place picked by its
/// pid: this is asked for every message, and messages come from a few
/// processes in turn (a client and the server on the node answering it).
struct LastHit {
    pid: u32,
    cgroup_id: u64,
    netns_cookie: u64,
    facts: Arc<Facts>,
    netns: Option<u64>,
}

/// Starts a worker, and gives the channels to it.
type StartWorker = Box<dyn FnMut() -> std::io::Result<(SyncSender<Request>, Receiver<Reply>)>>;

/// A request for facts the worker has not answered yet.
struct Outstanding {
    pid: u32,
    cgroup_id: u64,
    netns_cookie: u64,
    sent_ns: u64,
}

/// Places in `Enricher::recent`.
const RECENT: usize = 8;

pub struct Enricher {
    recent: [Option<LastHit>; RECENT],
    requests: SyncSender<Request>,
    replies: Receiver<Reply>,
    start_worker: StartWorker,
    /// Oldest first: the worker answers in order.
    outstanding: VecDeque<Outstanding>,
    /// When the worker last answered, or was started (a poll's time): a
    /// worker that is only busy keeps answering.
    answered_ns: u64,
    /// Workers whose thread still runs: the current one, and those left
    /// behind that are still stuck.
    live_workers: Arc<AtomicU64>,
    by_pid: HashMap<u32, Entry, foldhash::fast::RandomState>,
    /// Network namespace cookies and their inodes (`None`: gone before it
    /// could be looked up).
    netns_by_cookie: HashMap<u64, Option<u64>, foldhash::fast::RandomState>,
    held: usize,
    serial: u64,
    worker_evicted: Arc<AtomicU64>,
    /// Entries this side dropped because it was full.
    evicted_here: u64,
    pub counts: EnrichCounts,
}

/// Where the worker looks.
pub struct Sources {
    /// The cgroup v2 hierarchy's mount point.
    pub cgroup_mount: Option<PathBuf>,
    pub state_roots: StateRoots,
    /// Network namespaces found at start (cookie → inode).
    pub namespaces: HashMap<u64, u64>,
}

impl Enricher {
    /// Starts the worker thread.
    pub fn start(sources: Sources) -> std::io::Result<Self> {
        let worker_evicted = Arc::new(AtomicU64::new(0));
        let live_workers = Arc::new(AtomicU64::new(0));
        let namespaces = sources.namespaces.clone();
        let evicted = Arc::clone(&worker_evicted);
        let live = Arc::clone(&live_workers);
        let start_worker = move || {
            let (requests, requests_in) = mpsc::sync_channel(MAX_REQUESTS);
            let (replies_out, replies) = mpsc::channel();
            let gatherer = Gatherer::new(
                sources.cgroup_mount.clone(),
                sources.state_roots.clone(),
                Namespaces::found(sources.namespaces.clone()),
                Arc::clone(&evicted),
            );
            let running = Arc::clone(&live);
            live.fetch_add(1, Ordering::Relaxed);
            let spawned = std::thread::Builder::new()
                .name("dnstrace-enrich".into())
                .spawn(move || {
                    gatherer.serve(requests_in, replies_out);
                    running.fetch_sub(1, Ordering::Relaxed);
                });
            if spawned.is_err() {
                live.fetch_sub(1, Ordering::Relaxed);
            }
            spawned.map(|_| (requests, replies))
        };
        Self::talking_to(
            Box::new(start_worker),
            namespaces,
            worker_evicted,
            live_workers,
        )
    }

    /// The event thread's side of the workers `start_worker` starts (and
    /// counts in `live_workers` while they run).
    fn talking_to(
        mut start_worker: StartWorker,
        namespaces: HashMap<u64, u64>,
        worker_evicted: Arc<AtomicU64>,
        live_workers: Arc<AtomicU64>,
    ) -> std::io::Result<Self> {
        let (requests, replies) = start_worker()?;
        Ok(Self {
            recent: Default::default(),
            requests,
            replies,
            start_worker,
            outstanding: VecDeque::new(),
            answered_ns: 0,
            live_workers,
            by_pid: HashMap::default(),
            netns_by_cookie: namespaces
                .into_iter()
                .map(|(cookie, inode)| (cookie, Some(inode)))
                .collect(),
            held: 0,
            serial: 0,
            worker_evicted,
            evicted_here: 0,
            counts: EnrichCounts::default(),
        })
    }

    /// Takes a decoded message (from network namespace `netns_cookie`),
    /// and hands it to `next` now or later, with its process's facts.
    pub fn admit(
        &mut self,
        mut message: Message,
        netns_cookie: u64,
        next: &mut impl FnMut(Message),
    ) {
        let captured_ns = message.envelope.monotonic_ns;
        let Some(process) = &mut message.envelope.process else {
            return next(message);
        };
        let pid = process.pid;
        let cgroup_id = process.cgroup_id;
        let place = pid as usize % RECENT;
        if let Some(last) = &self.recent[place]
            && (last.pid, last.cgroup_id, last.netns_cookie) == (pid, cgroup_id, netns_cookie)
        {
            process.facts = Arc::clone(&last.facts);
            process.netns = last.netns;
            return next(message);
        }
        let netns_known = netns_cookie == 0 || self.netns_by_cookie.contains_key(&netns_cookie);
        let netns = self.netns_of(netns_cookie);
        let previous = match self.by_pid.get_mut(&pid) {
            Some(Entry::Known {
                facts,
                cgroup_id: known_cgroup,
                netns_cookie: known_netns,
                ..
            }) if *known_cgroup == cgroup_id && *known_netns == netns_cookie && netns_known => {
                process.facts = Arc::clone(facts);
                process.netns = netns;
                self.recent[place] = Some(LastHit {
                    pid,
                    cgroup_id,
                    netns_cookie,
                    facts: Arc::clone(facts),
                    netns,
                });
                return next(message);
            }
            Some(Entry::Asked {
                held,
                expired,
                previous,
                ..
            }) => {
                if !*expired && held.len() < MAX_HELD_PER_PROCESS && self.held < MAX_HELD {
                    held.push((message, netns_cookie));
                    self.held += 1;
                    return;
                }
                // Past a cap the process's messages stop waiting, those held
                // first: a response let through ahead of its held query
                // would read as unsolicited, the query as unanswered.
                *expired = true;
                let earlier = std::mem::take(held);
                process.facts = Arc::clone(previous);
                process.netns = netns;
                self.counts.unenriched += 1;
                self.release_unenriched(earlier, next);
                return next(message);
            }
            Some(Entry::Known { facts, .. }) => Arc::clone(facts),
            None => Facts::unknown(),
        };
        // New, or seen in another cgroup or namespace: ask.
        let request = Request::Facts {
            pid,
            cgroup_id,
            netns_cookie,
        };
        if self.held >= MAX_HELD || self.requests.try_send(request).is_err() {
            // The worker is behind (or gone): no hold.
            process.facts = previous;
            process.netns = netns;
            self.counts.unenriched += 1;
            return next(message);
        }
        self.outstanding.push_back(Outstanding {
            pid,
            cgroup_id,
            netns_cookie,
            sent_ns: captured_ns,
        });
        if self.by_pid.len() >= MAX_PROCESSES && !self.by_pid.contains_key(&pid) {
            self.evict_oldest_half();
        }
        self.held += 1;
        // Its next messages wait behind this one: its remembered place
        // would let them by.
        self.recent[place] = None;
        self.by_pid.insert(
            pid,
            Entry::Asked {
                since_ns: captured_ns,
                held: vec![(message, netns_cookie)],
                expired: false,
                previous,
            },
        );
    }

    /// Gives a message what is known now of its process, without holding
    /// it or asking: for the kernel's drops of DNS packets, rare and
    /// mostly of processes whose messages were seen before.
    pub fn known_now(&mut self, message: &mut Message, netns_cookie: u64) {
        let Some(process) = &mut message.envelope.process else {
            return;
        };
        process.netns = self.netns_of(netns_cookie);
        match self.by_pid.get(&process.pid) {
            Some(Entry::Known { facts, .. }) => process.facts = Arc::clone(facts),
            Some(Entry::Asked { previous, .. }) => process.facts = Arc::clone(previous),
            None => {}
        }
    }

    /// Takes the worker's answers and lets through what they or time
    /// released. Call it often (each pass of the event loop).
    pub fn poll(&mut self, now_ns: u64, next: &mut impl FnMut(Message)) {
        while let Ok(reply) = self.replies.try_recv() {
            self.on_reply(reply, next);
            self.answered_ns = now_ns;
        }
        let mut expired: Vec<(Message, u64)> = Vec::new();
        // Only entries holding messages expire; this runs often.
        let holding = if self.held > 0 { self.by_pid.len() } else { 0 };
        for entry in self.by_pid.values_mut().take(holding) {
            if let Entry::Asked {
                since_ns,
                held,
                expired: is_expired,
                ..
            } = entry
                && !*is_expired
                && now_ns.saturating_sub(*since_ns) >= HOLD_NS
            {
                *is_expired = true;
                expired.append(held);
            }
        }
        self.release_unenriched(expired, next);
        if self.outstanding.front().is_some_and(|oldest| {
            now_ns.saturating_sub(oldest.sent_ns.max(self.answered_ns)) >= STUCK_NS
        }) {
            self.leave_stuck_worker(now_ns, next);
        }
        self.counts.evicted = self.worker_evicted.load(Ordering::Relaxed) + self.evicted_here;
    }

    /// The worker has not answered for `STUCK_NS` while asked: the files
    /// of the process it reads for never answer. That process is known
    /// from now on as one nothing could be read about; the other requests
    /// go to a new worker (unless `MAX_STUCK_WORKERS` left behind are
    /// still stuck: then they wait on this one).
    fn leave_stuck_worker(&mut self, now_ns: u64, next: &mut impl FnMut(Message)) {
        if self.live_workers.load(Ordering::Relaxed) > MAX_STUCK_WORKERS {
            return;
        }
        let (requests, replies) = match (self.start_worker)() {
            Ok(channels) => channels,
            Err(error) => {
                eprintln!("dnstrace: cannot start another enrich thread: {error}");
                return;
            }
        };
        self.requests = requests;
        self.replies = replies;
        self.answered_ns = now_ns;
        self.counts.stuck_workers += 1;
        self.recent = Default::default();
        let stuck = self.outstanding.pop_front().expect("checked by poll");
        eprintln!(
            "dnstrace: reading pid {}'s files did not finish in {} ms; going on without them",
            stuck.pid,
            STUCK_NS / 1_000_000
        );
        self.serial += 1;
        let known = Entry::Known {
            facts: Facts::unknown(),
            cgroup_id: stuck.cgroup_id,
            netns_cookie: stuck.netns_cookie,
            serial: self.serial,
        };
        let mut released = Vec::new();
        if let Some(Entry::Asked { held, .. }) = self.by_pid.insert(stuck.pid, known) {
            released.extend(held);
        }
        self.release_unenriched(released, next);
        for waiting in &self.outstanding {
            let request = Request::Facts {
                pid: waiting.pid,
                cgroup_id: waiting.cgroup_id,
                netns_cookie: waiting.netns_cookie,
            };
            // A new worker's queue has room for what the old one held.
            let _ = self.requests.try_send(request);
        }
    }

    /// At exit: waits for facts already asked for, at most `HOLD_NS`, then
    /// lets every held message through.
    pub fn finish(&mut self, next: &mut impl FnMut(Message)) {
        let deadline = std::time::Instant::now() + Duration::from_nanos(HOLD_NS);
        while self.held > 0 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.replies.recv_timeout(left) {
                Ok(reply) => self.on_reply(reply, next),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        let held: Vec<(Message, u64)> = self
            .by_pid
            .values_mut()
            .flat_map(|entry| match entry {
                Entry::Asked { held, .. } => std::mem::take(held),
                Entry::Known { .. } => Vec::new(),
            })
            .collect();
        self.release_unenriched(held, next);
        self.counts.evicted = self.worker_evicted.load(Ordering::Relaxed) + self.evicted_here;
    }

    /// Asks the worker which known processes exited, to forget them at a
    /// later poll.
    pub fn sweep(&mut self) {
        let pids: Vec<u32> = self
            .by_pid
            .iter()
            .filter(|(_, entry)| matches!(entry, Entry::Known { .. }))
            .map(|(pid, _)| *pid)
            .collect();
        match self.requests.try_send(Request::Sweep(pids)) {
            Ok(()) | Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {}
        }
    }

    fn on_reply(&mut self, reply: Reply, next: &mut impl FnMut(Message)) {
        self.recent = Default::default();
        let Reply::Facts {
            pid,
            cgroup_id,
            netns_cookie,
            netns,
            facts,
        } = reply
        else {
            if let Reply::Gone(pids) = reply {
                for pid in pids {
                    if matches!(self.by_pid.get(&pid), Some(Entry::Known { .. })) {
                        self.by_pid.remove(&pid);
                    }
                }
            }
            return;
        };
        if self
            .outstanding
            .front()
            .is_some_and(|oldest| oldest.pid == pid)
        {
            self.outstanding.pop_front();
        }
        if netns_cookie != 0 {
            if self.netns_by_cookie.len() >= MAX_PROCESSES {
                self.evicted_here += self.netns_by_cookie.len() as u64;
                self.netns_by_cookie.clear();
            }
            self.netns_by_cookie.insert(netns_cookie, netns);
        }
        self.serial += 1;
        let known = Entry::Known {
            facts: Arc::clone(&facts),
            cgroup_id,
            netns_cookie,
            serial: self.serial,
        };
        let Some(Entry::Asked { held, .. }) = self.by_pid.insert(pid, known) else {
            return;
        };
        self.held -= held.len();
        for (mut message, cookie) in held {
            if let Some(process) = &mut message.envelope.process {
                process.facts = Arc::clone(&facts);
                process.netns = self.netns_of(cookie);
            }
            next(message);
        }
    }

    fn release_unenriched(&mut self, held: Vec<(Message, u64)>, next: &mut impl FnMut(Message)) {
        self.held -= held.len();
        self.counts.unenriched += held.len() as u64;
        for (mut message, cookie) in held {
            if let Some(process) = &mut message.envelope.process {
                process.netns = self.netns_of(cookie);
            }
            next(message);
        }
    }

    fn netns_of(&self, cookie: u64) -> Option<u64> {
        self.netns_by_cookie.get(&cookie).copied().flatten()
    }

    /// Drops the half of the known processes known longest; those waiting
    /// for facts are kept.
    fn evict_oldest_half(&mut self) {
        self.recent = Default::default();
        let mut serials: Vec<u64> = self
            .by_pid
            .values()
            .filter_map(|entry| match entry {
                Entry::Known { serial, .. } => Some(*serial),
                Entry::Asked { .. } => None,
            })
            .collect();
        serials.sort_unstable();
        let Some(&cut) = serials.get(serials.len() / 2) else {
            return;
        };
        let before = self.by_pid.len();
        self.by_pid
            .retain(|_, entry| !matches!(entry, Entry::Known { serial, .. } if *serial < cut));
        self.evicted_here += (before - self.by_pid.len()) as u64;
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, sync::mpsc::Sender};

    use super::*;
    use crate::{
        message::{Container, Direction, Envelope, Process, Transport},
        resolver::ResolverContext,
    };

    const MS: u64 = 1_000_000;

    fn message(pid: u32, at: u64) -> Message {
        let envelope = Envelope {
            wall_time_ns: i128::from(at),
            monotonic_ns: at,
            process: Some(Process {
                pid,
                tid: pid,
                comm: "client".into(),
                uid: 0,
                cgroup_id: 5,
                netns: None,
                facts: Facts::unknown(),
            }),
            socket_cookie: u64::from(pid),
            direction: Direction::Send,
            transport: Transport::Udp,
            local: "10.0.0.1:40000".parse().unwrap(),
            remote: "10.0.0.2:53".parse().unwrap(),
            response_number: None,
        };
        Message::decoded(envelope, &[0; 12], 12, false)
    }

    /// An enricher whose worker is the test: it sees the requests and
    /// sends the replies.
    fn enricher() -> (Enricher, Receiver<Request>, Sender<Reply>) {
        let (enricher, workers) = enricher_and_workers();
        let (requests, replies) = workers.recv().unwrap();
        (enricher, requests, replies)
    }

    /// The worker's ends of the channels of each worker started.
    type Workers = Receiver<(Receiver<Request>, Sender<Reply>)>;

    fn enricher_and_workers() -> (Enricher, Workers) {
        let (workers_out, workers) = mpsc::channel();
        let start = move || {
            let (requests, requests_in) = mpsc::sync_channel(MAX_REQUESTS);
            let (replies_out, replies) = mpsc::channel();
            let _ = workers_out.send((requests_in, replies_out));
            Ok((requests, replies))
        };
        let enricher = Enricher::talking_to(
            Box::new(start),
            HashMap::from([(77, 4_026_531_840)]),
            Arc::default(),
            Arc::default(),
        )
        .unwrap();
        (enricher, workers)
    }

    fn facts(container: &str) -> Arc<Facts> {
        Arc::new(Facts {
            resolver: Arc::new(ResolverContext::default()),
            container: Some(Container {
                id: container.into(),
                runtime: None,
                name: None,
                image: None,
            }),
            pod: None,
        })
    }

    /// The worker's answer for `pid`: in a container named `container`.
    fn answer(replies: &Sender<Reply>, pid: u32, netns: Option<u64>, container: &str) {
        let reply = Reply::Facts {
            pid,
            cgroup_id: 5,
            netns_cookie: 77,
            netns,
            facts: facts(container),
        };
        replies.send(reply).unwrap();
    }

    fn container_of(message: &Message) -> Option<String> {
        let process = message.envelope.process.as_ref()?;
        Some(process.facts.container.as_ref()?.id.clone())
    }

    #[test]
    fn a_new_process_waits_for_its_facts_and_others_do_not() {
        let (mut enricher, requests, replies) = enricher();
        let out: RefCell<Vec<Message>> = RefCell::default();
        let mut next = |m: Message| out.borrow_mut().push(m);
        enricher.admit(message(1, MS), 77, &mut next);
        enricher.admit(message(1, 2 * MS), 77, &mut next);
        let Ok(Request::Facts {
            pid: 1,
            cgroup_id: 5,
            netns_cookie: 77,
        }) = requests.try_recv()
        else {
            panic!("one request for pid 1");
        };
        assert!(requests.try_recv().is_err(), "asked once");
        enricher.poll(3 * MS, &mut next);
        assert!(out.borrow().is_empty(), "held until the facts come");
        answer(&replies, 1, Some(4_026_531_840), "c1");
        enricher.poll(4 * MS, &mut next);
        // Released in order, with the facts, shared, and the namespace.
        let times: Vec<u64> = out
            .borrow()
            .iter()
            .map(|m| m.envelope.monotonic_ns)
            .collect();
        assert_eq!(times, [MS, 2 * MS]);
        assert_eq!(container_of(&out.borrow()[0]).as_deref(), Some("c1"));
        {
            let out = out.borrow();
            let (first, second) = (&out[0].envelope.process, &out[1].envelope.process);
            assert!(Arc::ptr_eq(
                &first.as_ref().unwrap().facts,
                &second.as_ref().unwrap().facts
            ));
            assert_eq!(first.as_ref().unwrap().netns, Some(4_026_531_840));
        }
        // Known now: the next message goes straight through.
        enricher.admit(message(1, 5 * MS), 77, &mut next);
        assert_eq!(out.borrow().len(), 3);
        assert_eq!(container_of(&out.borrow()[2]).as_deref(), Some("c1"));
        assert_eq!(enricher.counts.unenriched, 0);
    }

    #[test]
    fn facts_that_do_not_come_in_time_are_not_waited_for() {
        let (mut enricher, _requests, replies) = enricher();
        let out: RefCell<Vec<Message>> = RefCell::default();
        let mut next = |m: Message| out.borrow_mut().push(m);
        enricher.admit(message(2, MS), 77, &mut next);
        // A message without a process never waits.
        let mut unowned = message(3, MS);
        unowned.envelope.process = None;
        enricher.admit(unowned, 77, &mut next);
        assert_eq!(out.borrow().len(), 1);
        // A worker busy with others' files, answering them meanwhile.
        replies.send(Reply::Gone(Vec::new())).unwrap();
        enricher.poll(MS + HOLD_NS - 1, &mut next);
        assert_eq!(out.borrow().len(), 1, "still within the hold");
        replies.send(Reply::Gone(Vec::new())).unwrap();
        enricher.poll(MS + HOLD_NS, &mut next);
        assert_eq!(out.borrow().len(), 2, "released without facts");
        assert_eq!(container_of(&out.borrow()[1]), None);
        // Until the facts come, the process's messages go on at once.
        enricher.admit(message(2, 2 * HOLD_NS), 77, &mut next);
        assert_eq!(out.borrow().len(), 3);
        assert_eq!(enricher.counts.unenriched, 2);
        answer(&replies, 2, None, "late");
        enricher.poll(3 * HOLD_NS, &mut next);
        enricher.admit(message(2, 3 * HOLD_NS), 77, &mut next);
        assert_eq!(container_of(&out.borrow()[3]).as_deref(), Some("late"));
    }

    /// A process seen in another namespace waits for its facts again, and
    /// its next messages wait behind the held one even where its facts
    /// for the first namespace are remembered.
    #[test]
    fn a_process_asked_about_again_keeps_its_messages_in_order() {
        let (mut enricher, _requests, replies) = enricher();
        let out: RefCell<Vec<Message>> = RefCell::default();
        let mut next = |m: Message| out.borrow_mut().push(m);
        for pid in [5, 6] {
            enricher.admit(message(pid, MS), 77, &mut next);
            answer(&replies, pid, None, "first");
        }
        enricher.poll(2 * MS, &mut next);
        enricher.admit(message(5, 3 * MS), 77, &mut next);
        enricher.admit(message(5, 4 * MS), 78, &mut next);
        enricher.admit(message(6, 5 * MS), 77, &mut next);
        enricher.admit(message(5, 6 * MS), 77, &mut next);
        enricher.poll(2 * HOLD_NS, &mut next);
        let times_of_5: Vec<u64> = (out.borrow().iter())
            .filter(|m| m.envelope.process.as_ref().is_some_and(|p| p.pid == 5))
            .map(|m| m.envelope.monotonic_ns / MS)
            .collect();
        assert_eq!(times_of_5, [1, 3, 4, 6]);
    }

    /// A process that sends more than can be held while its facts are
    /// read (a burst at start) stops waiting, but its messages still go on
    /// in the order they came: a response ahead of its query would read as
    /// unsolicited.
    #[test]
    fn a_process_past_the_hold_keeps_its_messages_in_order() {
        let (mut enricher, _requests, replies) = enricher();
        let out: RefCell<Vec<Message>> = RefCell::default();
        let mut next = |m: Message| out.borrow_mut().push(m);
        let sent = MAX_HELD_PER_PROCESS as u64 + 5;
        for n in 1..=sent {
            enricher.admit(message(4, n * MS), 77, &mut next);
        }
        answer(&replies, 4, None, "late");
        enricher.poll((sent + 1) * MS, &mut next);
        enricher.admit(message(4, (sent + 2) * MS), 77, &mut next);
        let times: Vec<u64> = (out.borrow().iter())
            .map(|m| m.envelope.monotonic_ns / MS)
            .collect();
        let expected: Vec<u64> = (1..=sent).chain([sent + 2]).collect();
        assert_eq!(times, expected);
        assert_eq!(enricher.counts.unenriched, sent);
        let last = out.borrow().last().map(container_of);
        assert_eq!(
            last,
            Some(Some("late".into())),
            "enriched once the facts came"
        );
    }

    #[test]
    fn at_exit_held_messages_go_out_even_without_a_worker() {
        let (mut enricher, requests, replies) = enricher();
        let out: RefCell<Vec<Message>> = RefCell::default();
        enricher.admit(message(4, MS), 77, &mut |m| out.borrow_mut().push(m));
        drop((requests, replies));
        enricher.finish(&mut |m| out.borrow_mut().push(m));
        assert_eq!(out.borrow().len(), 1);
        assert_eq!(enricher.counts.unenriched, 1);
    }

    #[test]
    fn a_process_seen_in_another_cgroup_is_asked_about_again() {
        let (mut enricher, requests, replies) = enricher();
        let out: RefCell<Vec<Message>> = RefCell::default();
        let mut next = |m: Message| out.borrow_mut().push(m);
        enricher.admit(message(5, MS), 77, &mut next);
        answer(&replies, 5, None, "before");
        enricher.poll(2 * MS, &mut next);
        let mut moved = message(5, 3 * MS);
        if let Some(process) = &mut moved.envelope.process {
            process.cgroup_id = 6;
        }
        enricher.admit(moved, 77, &mut next);
        assert_eq!(out.borrow().len(), 1, "held again");
        assert_eq!(requests.try_iter().count(), 2);
    }

    #[test]
    fn a_worker_stuck_on_a_file_is_left_behind_and_only_its_process_goes_without() {
        let (mut enricher, workers) = enricher_and_workers();
        let (stuck, _never_answered) = workers.recv().unwrap();
        let out: RefCell<Vec<Message>> = RefCell::default();
        let mut next = |m: Message| out.borrow_mut().push(m);
        enricher.admit(message(1, MS), 77, &mut next);
        enricher.admit(message(2, 2 * MS), 77, &mut next);
        assert_eq!(stuck.try_iter().count(), 2);
        enricher.poll(MS + STUCK_NS - 1, &mut next);
        assert_eq!(enricher.counts.stuck_workers, 0);
        assert!(out.borrow().is_empty());
        enricher.poll(MS + STUCK_NS, &mut next);
        assert_eq!(enricher.counts.stuck_workers, 1);
        assert_eq!(out.borrow().len(), 1, "the stuck process goes on without");
        assert_eq!(container_of(&out.borrow()[0]), None);
        // The other request goes to a new worker, within its hold.
        let (requests, replies) = workers.try_recv().expect("a new worker");
        let asked: Vec<u32> = requests
            .try_iter()
            .filter_map(|request| match request {
                Request::Facts { pid, .. } => Some(pid),
                Request::Sweep(_) => None,
            })
            .collect();
        assert_eq!(asked, [2]);
        answer(&replies, 2, None, "fresh");
        enricher.poll(MS + STUCK_NS + MS, &mut next);
        assert_eq!(out.borrow().len(), 2);
        assert_eq!(container_of(&out.borrow()[1]).as_deref(), Some("fresh"));
        // The stuck process is not asked about again.
        enricher.admit(message(1, HOLD_NS), 77, &mut next);
        assert_eq!(out.borrow().len(), 3);
        assert!(requests.try_recv().is_err());
        assert_eq!(enricher.counts.unenriched, 1);
    }

    #[test]
    fn a_worker_that_keeps_answering_is_not_stuck() {
        let (mut enricher, workers) = enricher_and_workers();
        let (_requests, replies) = workers.recv().unwrap();
        let mut next = |_: Message| {};
        enricher.admit(message(1, MS), 77, &mut next);
        enricher.admit(message(2, MS), 77, &mut next);
        answer(&replies, 1, None, "one");
        // Busy with pid 2 since it answered pid 1, later than pid 2 asked.
        enricher.poll(STUCK_NS - MS, &mut next);
        enricher.poll(2 * STUCK_NS - 2 * MS, &mut next);
        assert_eq!(enricher.counts.stuck_workers, 0);
        assert!(workers.try_recv().is_err(), "no new worker");
        enricher.poll(2 * STUCK_NS, &mut next);
        assert_eq!(enricher.counts.stuck_workers, 1);
    }
}
