//! Decoded messages → correlation → diagnosis → outputs. Knows nothing of
//! where messages come from, so live tracing and reading a file share it.

use std::{
    collections::{HashMap, VecDeque},
    io,
    net::SocketAddr,
};

use crate::{
    correlate::{
        Correlated, Correlator,
        attempt::Attempt,
        reads::{self, ReadCounter},
    },
    diagnose::Diagnoser,
    drop_owners::{OrphanDrops, QueryOwners, WaitingDrops},
    gaps::{Gaps, STRAY_LOOKBACK_NS},
    message::{ClientId, Direction, Dropped, Message},
    output::{AgentState, Output, ProcessReport, Summary},
};

/// Processes kept in the report; past this the least active are dropped.
const MAX_REPORTED_PROCESSES: usize = 4096;
/// Stray responses waiting for the loss counters before they are
/// diagnosed; past this the oldest is judged with what is known.
const MAX_HELD_STRAYS: usize = 4096;
/// Room for this many reports is kept between messages.
const RETAINED_CORRELATED: usize = 1024;

pub struct Pipeline {
    correlator: Correlator,
    diagnoser: Diagnoser,
    processes: HashMap<ClientId, ProcessReport>,
    outputs: Vec<Box<dyn Output>>,
    pub summary: Summary,
    /// The first output error; the caller stops at its next check.
    write_error: Option<io::Error>,
    /// What correlation reported, reused from message to message.
    correlated: Vec<Correlated>,
    read_counts: Option<Box<dyn ReadCounter>>,
    /// The latest time seen, CLOCK_MONOTONIC ns: a message's, or `advance`'s.
    now_ns: u64,
    /// Whether the kernel's drops are watched, so queries' senders are
    /// remembered for them.
    watch_drops: bool,
    query_owners: QueryOwners,
    /// Drops with no owner yet, oldest first: the query that names it may
    /// still wait for its process's facts in the enrich stage.
    orphan_drops: OrphanDrops,
    /// Dropped responses whose attempt is not open yet, for the same
    /// reason; their records are written already.
    /// Each waits for the query (id, server) its attempt opens with.
    unlinked_drops: WaitingDrops<(u16, SocketAddr)>,
    /// When messages may be missing: lookups and strays that meet a gap
    /// are not judged.
    gaps: Gaps,
    /// Correlation is paused: the agent is behind (`set_shedding`).
    shedding: bool,
    /// Live: stray responses wait to be diagnosed until the loss counters
    /// were read after them, since a lost query makes a response stray.
    /// `None` for files, which lose nothing.
    held_strays: Option<VecDeque<Box<Attempt>>>,
    /// When the loss counters were last read.
    losses_known_until: u64,
}

/// How long a drop waits for its query to name its owner (the enrich
/// stage's longest hold), and how many wait.
const ORPHAN_WAIT_NS: u64 = crate::enrich::HOLD_NS;
const MAX_ORPHAN_DROPS: usize = 1024;

impl Pipeline {
    pub fn new(outputs: Vec<Box<dyn Output>>) -> Self {
        Self {
            correlator: Correlator::default(),
            diagnoser: Diagnoser::default(),
            processes: HashMap::new(),
            outputs,
            summary: Summary::default(),
            write_error: None,
            correlated: Vec::new(),
            read_counts: None,
            now_ns: 0,
            watch_drops: false,
            query_owners: QueryOwners::default(),
            orphan_drops: OrphanDrops::by_addresses(),
            unlinked_drops: WaitingDrops::new(|dropped| query_of(&dropped.message)),
            gaps: Gaps::default(),
            shedding: false,
            held_strays: Some(VecDeque::new()),
            losses_known_until: 0,
        }
    }

    /// For traces read from files: the processes behind them ran elsewhere
    /// or earlier, so nothing is looked up in /proc.
    pub fn offline(outputs: Vec<Box<dyn Output>>) -> Self {
        Self {
            correlator: Correlator::offline(),
            held_strays: None,
            ..Self::new(outputs)
        }
    }

    /// The kernel's counts of reads, to tell which responses were read.
    pub fn with_read_counts(mut self, counts: Box<dyn ReadCounter>) -> Self {
        self.read_counts = Some(counts);
        self
    }

    /// Drops will come: remember who sent each query, to attribute the
    /// drops the kernel could not.
    pub fn watching_drops(mut self) -> Self {
        self.watch_drops = true;
        self
    }

    /// Whether any output writes payloads, so decoding must keep them.
    pub fn needs_payloads(&self) -> bool {
        self.outputs.iter().any(|output| output.needs_payload())
    }

    pub fn message(&mut self, message: &Message) {
        self.now_ns = self.now_ns.max(message.envelope.monotonic_ns);
        self.summary.messages += 1;
        if message.dns.decode_error.is_some() {
            self.summary.undecodable += 1;
        }
        self.each_output(|output| output.message(message));
        if self.watch_drops {
            self.query_owners.message(message);
            self.adopt_orphan_drops(message);
        }
        // Behind, drops are not linked either (see `pass_drop`).
        if self.shedding {
            self.summary.shed += 1;
            self.gaps.extend_open(message.envelope.monotonic_ns);
            return;
        }
        let mut correlated = std::mem::take(&mut self.correlated);
        self.correlator.observe(message, &mut correlated);
        self.handle(&mut correlated);
        self.correlated = correlated;
        // A query may open the attempt a waiting drop belongs to.
        if message.envelope.direction == Direction::Send
            && message.dns.header.as_ref().is_some_and(|h| !h.is_response)
            && let Some(query) = query_of(message)
            && self.unlinked_drops.awaits(&query)
        {
            self.link_drops(|_| false);
        }
    }

    /// A DNS packet the kernel dropped: counted, to every output, and
    /// linked to the attempt it belongs to. One with no owner yet waits a
    /// little for the query that names it.
    pub fn dropped(&mut self, mut dropped: Dropped) {
        self.now_ns = self.now_ns.max(dropped.message.envelope.monotonic_ns);
        self.summary.count_drop(&dropped.reason);
        self.query_owners.attribute(&mut dropped);
        if dropped.message.envelope.process.is_none() && self.orphan_drops.len() < MAX_ORPHAN_DROPS
        {
            self.orphan_drops.push(dropped);
            return;
        }
        self.pass_drop(&dropped);
    }

    fn pass_drop(&mut self, dropped: &Dropped) {
        self.each_output(|output| output.dropped(dropped));
        // Behind, a drop is not linked, as a message is not correlated:
        // the lookup it belongs to is reported incomplete.
        if self.shedding {
            self.gaps.extend_open(dropped.message.envelope.monotonic_ns);
            return;
        }
        let mut correlated = std::mem::take(&mut self.correlated);
        let linked = self.correlator.dropped(dropped, &mut correlated);
        self.handle(&mut correlated);
        self.correlated = correlated;
        if !linked && self.unlinked_drops.len() < MAX_ORPHAN_DROPS {
            self.unlinked_drops.push(dropped.clone());
        }
    }

    /// Tries again to link the drops whose attempt was not open; those
    /// `expired` are given up.
    fn link_drops(&mut self, expired: impl Fn(&Dropped) -> bool) {
        let mut correlated = std::mem::take(&mut self.correlated);
        let correlator = &mut self.correlator;
        // Those linked or expired go; nothing more is owed for them.
        self.unlinked_drops
            .take(|dropped| correlator.dropped(dropped, &mut correlated) || expired(dropped));
        self.handle(&mut correlated);
        self.correlated = correlated;
    }

    /// Passes on the waiting drops a query now names.
    fn adopt_orphan_drops(&mut self, message: &Message) {
        for dropped in self.orphan_drops.named(message, &self.query_owners) {
            self.pass_drop(&dropped);
        }
    }

    /// Passes on, without an owner, the drops that waited long enough (or
    /// all of them, at exit).
    fn release_orphan_drops(&mut self, now: u64) {
        while let Some(oldest) = self.orphan_drops.oldest()
            && now.saturating_sub(oldest.message.envelope.monotonic_ns) >= ORPHAN_WAIT_NS
        {
            let dropped = self.orphan_drops.pop_oldest().expect("checked");
            self.pass_drop(&dropped);
        }
    }

    /// The agent fell behind (`on`) or caught up: while behind, messages
    /// are written but not correlated, and lookups they would belong to
    /// are reported incomplete.
    pub fn set_shedding(&mut self, on: bool) {
        self.shedding = on;
        if !on {
            self.gaps.close();
        }
    }

    /// The kernel's loss counters were read at `now`; `lost_since` is the
    /// read before, when they rose since. Losses are counted per CPU, but
    /// a lookup's messages come from any CPU (a process moves, a response
    /// is taken in on the CPU of the interrupt), so a loss on any CPU
    /// counts against every lookup it overlaps.
    pub fn losses_read(&mut self, now: u64, lost_since: Option<u64>) {
        if let Some(since) = lost_since {
            self.gaps.add(since, now);
        }
        self.losses_known_until = self.losses_known_until.max(now);
        let known = self.losses_known_until;
        while let Some(held) = &mut self.held_strays
            && held.front().is_some_and(|s| stray_time(s) <= known)
            && let Some(stray) = held.pop_front()
        {
            self.diagnose_stray(&stray);
        }
    }

    fn diagnose_stray(&mut self, stray: &Attempt) {
        let at = stray_time(stray);
        if !self.gaps.meet(at.saturating_sub(STRAY_LOOKBACK_NS), at) {
            self.diagnoser.stray(stray);
        }
    }

    /// Lets time decide what it decides (timeouts, settled lookups); `now`
    /// is CLOCK_MONOTONIC nanoseconds, as message timestamps are.
    pub fn advance(&mut self, now: u64) {
        self.now_ns = self.now_ns.max(now);
        self.release_orphan_drops(now);
        self.link_drops(|dropped| {
            now.saturating_sub(dropped.message.envelope.monotonic_ns) >= ORPHAN_WAIT_NS
        });
        let mut correlated = std::mem::take(&mut self.correlated);
        self.correlator.advance(now, &mut correlated);
        self.handle(&mut correlated);
        self.correlated = correlated;
        self.publish_diagnoses();
    }

    fn handle(&mut self, correlated: &mut Vec<Correlated>) {
        for item in correlated.drain(..) {
            match item {
                Correlated::Lookup(mut lookup) => {
                    self.correlator.servers.name(&mut lookup);
                    reads::settle(&mut lookup, self.read_counts.as_deref_mut(), self.now_ns);
                    if self.gaps.meet(lookup.first_monotonic_ns(), self.now_ns) {
                        lookup.mark_incomplete();
                    }
                    if lookup.incomplete {
                        self.summary.incomplete_lookups += 1;
                    }
                    self.diagnoser.lookup(&lookup);
                    if self.processes.len() >= MAX_REPORTED_PROCESSES
                        && !self.processes.contains_key(&lookup.client().id)
                    {
                        self.forget_least_active_process();
                    }
                    let report = self
                        .processes
                        .entry(lookup.client().id)
                        .or_insert_with(|| ProcessReport::new(lookup.client().clone()));
                    report.add(&lookup);
                    self.each_output(|output| output.lookup(&lookup));
                }
                Correlated::Stray(attempt) => {
                    self.each_output(|output| output.stray(&attempt));
                    match &mut self.held_strays {
                        Some(held) => {
                            held.push_back(attempt);
                            if held.len() > MAX_HELD_STRAYS
                                && let Some(oldest) = held.pop_front()
                            {
                                self.diagnose_stray(&oldest);
                            }
                        }
                        None => self.diagnose_stray(&attempt),
                    }
                }
            }
        }
        // A burst of timeouts reports tens of thousands at once: their
        // room is not kept for the rest of the run.
        correlated.shrink_to(RETAINED_CORRELATED);
    }

    fn publish_diagnoses(&mut self) {
        for (diagnosis, first) in self.diagnoser.take_changed() {
            self.each_output(|output| output.diagnosis(&diagnosis, first));
        }
    }

    fn forget_least_active_process(&mut self) {
        if let Some(pid) = self
            .processes
            .values()
            .min_by_key(|p| p.lookups)
            .map(|p| p.client.id)
        {
            self.processes.remove(&pid);
        }
    }

    /// The per-process report, to every output.
    pub fn report(&mut self) {
        let mut processes: Vec<ProcessReport> = self.processes.values().cloned().collect();
        processes.sort_by_key(|p| p.client.id);
        let processes: Vec<&ProcessReport> = processes.iter().collect();
        let diagnoses: Vec<_> = self.diagnoser.all().into_iter().cloned().collect();
        let diagnoses: Vec<_> = diagnoses.iter().collect();
        let mut outputs = std::mem::take(&mut self.outputs);
        for output in &mut outputs {
            let result = output.report(&processes, &diagnoses);
            self.keep_error(result);
        }
        self.outputs = outputs;
    }

    pub fn flush(&mut self) {
        self.each_output(|output| output.flush());
    }

    /// Reports every open lookup as it stands, then the summary.
    pub fn finish(&mut self) {
        self.release_orphan_drops(u64::MAX);
        let mut correlated = std::mem::take(&mut self.correlated);
        self.gaps.close();
        self.correlator.finish(&mut correlated);
        self.handle(&mut correlated);
        for stray in self.held_strays.take().unwrap_or_default() {
            self.diagnose_stray(&stray);
        }
        self.publish_diagnoses();
        self.summary.evicted_lookups = self.correlator.evicted;
        self.summary.unattributed = self.correlator.unattributed;
        self.summary.dropped_diagnoses = self.diagnoser.dropped;
        self.report();
        let summary = self.summary.clone();
        self.each_output(|output| output.finish(&summary));
    }

    pub fn forget_exited(&mut self) {
        self.diagnoser.forget(|pid| !crate::process::is_alive(pid));
    }

    fn each_output(&mut self, mut act: impl FnMut(&mut dyn Output) -> io::Result<()>) {
        let mut outputs = std::mem::take(&mut self.outputs);
        for output in &mut outputs {
            let result = act(output.as_mut());
            self.keep_error(result);
        }
        self.outputs = outputs;
    }

    fn keep_error(&mut self, result: io::Result<()>) {
        if let Err(error) = result
            && self.write_error.is_none()
        {
            self.write_error = Some(error);
        }
    }

    pub fn take_write_error(&mut self) -> Option<io::Error> {
        self.write_error.take()
    }

    /// The agent's state, to outputs that report it (metrics), with the
    /// kernel's loss counts per CPU.
    pub fn publish_state(&mut self, now: u64, lost_per_cpu: Vec<u64>) {
        self.summary.lost_per_cpu = lost_per_cpu;
        self.summary.evicted_lookups = self.correlator.evicted;
        self.summary.unattributed = self.correlator.unattributed;
        self.summary.dropped_diagnoses = self.diagnoser.dropped;
        let summary = self.summary.clone();
        let state = AgentState {
            now_ns: now,
            summary: &summary,
            open_lookups: self.correlator.open_lookups(),
            processes: self.processes.len(),
        };
        self.each_output(|output| output.state(&state));
    }
}

/// When a stray response came.
fn stray_time(stray: &Attempt) -> u64 {
    stray.ended_monotonic_ns.unwrap_or_default()
}

/// The (id, server) of a client's query, or of the response to it: what a
/// dropped packet's attempt opens with. None without a header, for a drop
/// that links to nothing.
fn query_of(message: &Message) -> Option<(u16, SocketAddr)> {
    let header = message.dns.header.as_ref()?;
    Some((header.id, message.envelope.remote))
}

#[cfg(test)]
mod tests {
    use super::Pipeline;
    use crate::{
        correlate::tests::{NXDOMAIN, Socket, message, server},
        diagnose::Cause,
        message::{Direction, Dropped},
    };

    const MS: u64 = 1_000_000;
    const SECOND: u64 = 1_000 * MS;

    /// A query at 1 s that no response followed, then a read of the loss
    /// counters at 2 s that found new losses since 0 (`lost`) or none.
    fn unanswered_query(lost: bool) -> Pipeline {
        let mut pipeline = Pipeline::new(Vec::new());
        let socket = Socket::new(7, 1, server(1));
        pipeline.message(&message(
            Direction::Send,
            socket,
            1,
            "db.test.",
            1,
            SECOND,
            None,
        ));
        pipeline.losses_read(2 * SECOND, lost.then_some(0));
        pipeline.advance(30 * SECOND);
        pipeline
    }

    #[test]
    fn a_lookup_that_may_have_lost_messages_is_incomplete_not_a_timeout() {
        let pipeline = unanswered_query(true);
        assert_eq!(pipeline.summary.incomplete_lookups, 1);
        assert!(pipeline.diagnoser.all().is_empty());
        let pipeline = unanswered_query(false);
        assert_eq!(pipeline.summary.incomplete_lookups, 0);
        let causes: Vec<Cause> = pipeline.diagnoser.all().iter().map(|d| d.cause).collect();
        assert_eq!(causes, [Cause::Timeout], "the same without a loss");
    }

    /// A response at 1 s to a query never seen, then the loss counters
    /// read at 2 s.
    fn stray_response(lost: bool) -> Pipeline {
        let mut pipeline = Pipeline::new(Vec::new());
        let socket = Socket::new(7, 1, server(1));
        let response = message(
            Direction::Recv,
            socket,
            1,
            "db.test.",
            1,
            SECOND,
            Some(NXDOMAIN),
        );
        pipeline.message(&response);
        assert!(pipeline.diagnoser.all().is_empty(), "held for the counters");
        pipeline.losses_read(2 * SECOND, lost.then_some(0));
        pipeline
    }

    #[test]
    fn a_stray_response_after_a_loss_is_not_diagnosed() {
        assert!(stray_response(true).diagnoser.all().is_empty());
        let pipeline = stray_response(false);
        let causes: Vec<Cause> = pipeline.diagnoser.all().iter().map(|d| d.cause).collect();
        assert_eq!(causes, [Cause::MismatchedAnswer]);
    }

    #[test]
    fn lookups_met_while_behind_are_incomplete() {
        let mut pipeline = Pipeline::new(Vec::new());
        let socket = Socket::new(7, 1, server(1));
        pipeline.message(&message(
            Direction::Send,
            socket,
            1,
            "db.test.",
            1,
            SECOND,
            None,
        ));
        pipeline.set_shedding(true);
        // Its response, not correlated.
        let response = message(
            Direction::Recv,
            socket,
            1,
            "db.test.",
            1,
            SECOND + MS,
            Some(NXDOMAIN),
        );
        pipeline.message(&response);
        pipeline.set_shedding(false);
        assert_eq!(pipeline.summary.shed, 1);
        pipeline.losses_read(2 * SECOND, None);
        pipeline.advance(30 * SECOND);
        assert_eq!(pipeline.summary.incomplete_lookups, 1);
        assert!(pipeline.diagnoser.all().is_empty());
    }

    /// A drop the kernel could not attribute waits; only a query on its
    /// addresses names its process, and then it is passed on at once.
    #[test]
    fn a_drop_without_an_owner_waits_for_the_query_on_its_addresses() {
        let mut pipeline = Pipeline::new(Vec::new()).watching_drops();
        let query = |socket, id, name| {
            let mut query = message(Direction::Send, socket, id, name, 1, SECOND, None);
            if let Some(process) = &mut query.envelope.process {
                process.netns = Some(1);
            }
            query
        };
        let named = Socket::new(7, 1, server(1));
        let other = Socket::new(8, 2, server(1));
        let mut response = message(
            Direction::Recv,
            named,
            1,
            "db.test.",
            1,
            SECOND + MS,
            Some(NXDOMAIN),
        );
        response.envelope.process = None;
        pipeline.dropped(Dropped {
            message: response,
            reason: "NO_SOCKET".into(),
            location: "somewhere+0x1".into(),
            netns: Some(1),
            conntrack: None,
        });
        assert_eq!(pipeline.orphan_drops.len(), 1);
        pipeline.message(&query(other, 2, "other.test."));
        assert_eq!(
            pipeline.orphan_drops.len(),
            1,
            "other addresses name nothing"
        );
        pipeline.message(&query(named, 1, "db.test."));
        assert_eq!(pipeline.orphan_drops.len(), 0, "its query names it");
        assert_eq!(pipeline.summary.drops, 1);
    }

    #[test]
    fn a_drop_met_while_behind_is_counted_but_not_blamed() {
        let mut pipeline = Pipeline::new(Vec::new()).watching_drops();
        let socket = Socket::new(7, 1, server(1));
        pipeline.message(&message(
            Direction::Send,
            socket,
            1,
            "db.test.",
            1,
            SECOND,
            None,
        ));
        pipeline.set_shedding(true);
        let response = message(
            Direction::Recv,
            socket,
            1,
            "db.test.",
            1,
            SECOND + MS,
            Some(NXDOMAIN),
        );
        pipeline.dropped(Dropped {
            message: response,
            reason: "SOCKET_RCVBUFF".into(),
            location: "somewhere+0x1".into(),
            netns: Some(1),
            conntrack: None,
        });
        pipeline.set_shedding(false);
        pipeline.losses_read(2 * SECOND, None);
        pipeline.advance(30 * SECOND);
        assert_eq!(pipeline.summary.drops, 1);
        assert_eq!(pipeline.summary.incomplete_lookups, 1);
        assert!(
            pipeline.diagnoser.all().is_empty(),
            "neither kernel_drop nor timeout: the lookup was not followed"
        );
    }
}
