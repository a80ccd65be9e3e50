//! Live tracing: capture → decode → the pipeline, until a signal, the
//! duration, or an output error ends it.

use std::time::Duration;

use tokio::{
    signal::unix::{SignalKind, signal},
    time::{Instant, MissedTickBehavior, interval_at, sleep},
};

use crate::{
    capture::{
        Capture, ConntrackCounters, DropNames, KernelReadCounts, RecordDecoder, ThreadNames,
        is_drop, parse_drop, parse_record,
    },
    clock::{WallClock, monotonic_now_ns},
    correlate::reads::ReadCounter,
    endpoints::Health,
    enrich::{Enricher, Sources, StateRoots},
    failure::Failure,
    message::Message,
    output::Summary,
    pipeline::Pipeline,
    shedding::{Change, Shedding},
};

/// How often outputs are flushed, time advances in correlation, and the
/// loss counters are read.
const TICK: Duration = Duration::from_secs(1);
/// How often the ring is drained when the kernel has not woken us.
const POLL: Duration = Duration::from_millis(dnstrace_common::POLL_INTERVAL_MS);
/// How often exited processes are forgotten.
const FORGET_EVERY_TICKS: u64 = 30;

/// Correlation settles reads with the kernel's counts; capture knows
/// nothing of correlation, so the two meet here.
impl ReadCounter for KernelReadCounts {
    fn reads(&mut self, socket_cookie: u64, number: u64) -> Option<u64> {
        KernelReadCounts::reads(self, socket_cookie, number)
    }
}

/// The stages between the ring buffer and the pipeline: decode, enrich.
struct Stages {
    decoder: RecordDecoder,
    enricher: Enricher,
    /// Names for drop records; `None` when drops are not watched.
    drop_names: Option<DropNames>,
    conntrack: ConntrackCounters,
    shedding: Shedding,
}

impl Stages {
    /// One ring buffer record, into the pipeline (some of its messages
    /// perhaps later, once their process's facts are known).
    fn record(&mut self, bytes: &[u8], backlog: usize, pipeline: &mut Pipeline) {
        match self.shedding.observe(backlog) {
            Some(Change::Behind(percent)) => {
                eprintln!(
                    "dnstrace: behind: the ring buffer is {percent}% full; correlation paused until it drains (lookups meanwhile are reported incomplete)"
                );
                pipeline.set_shedding(true);
            }
            Some(Change::CaughtUp) => {
                pipeline.set_shedding(false);
                eprintln!(
                    "dnstrace: caught up: correlation resumed; {} messages not correlated so far",
                    pipeline.summary.shed
                );
            }
            None => {}
        }
        if is_drop(bytes) {
            return self.drop_record(bytes, pipeline);
        }
        let Some(raw) = parse_record(bytes) else {
            pipeline.summary.malformed_records += 1;
            return;
        };
        let netns_cookie = raw.header.netns_cookie;
        let message = self.decoder.message(&raw);
        self.enricher
            .admit(message, netns_cookie, &mut |m: Message| {
                pipeline.message(&m)
            });
    }

    /// A drop record: decoded, given what is known now of its process (a
    /// drop is not held for facts, as messages are), into the pipeline.
    fn drop_record(&mut self, bytes: &[u8], pipeline: &mut Pipeline) {
        let (Some(raw), Some(names)) = (parse_drop(bytes), self.drop_names.as_mut()) else {
            pipeline.summary.malformed_records += 1;
            return;
        };
        let mut dropped = self.decoder.dropped(&raw, names);
        self.enricher
            .known_now(&mut dropped.message, raw.header.event.netns_cookie);
        if &*dropped.reason == "NETFILTER_DROP"
            && let Some(netns) = dropped.netns
        {
            let pid = dropped.message.envelope.process.as_ref().map(|p| p.pid);
            dropped.conntrack = self.conntrack.change(netns, pid);
        }
        pipeline.dropped(dropped);
    }

    /// Drains the ring, then lets through what enrichment released.
    fn drain(&mut self, capture: &mut Capture, pipeline: &mut Pipeline) {
        capture.drain(|bytes, backlog| self.record(bytes, backlog, pipeline));
        self.enricher
            .poll(monotonic_now_ns(), &mut |m: Message| pipeline.message(&m));
    }
}

pub async fn run(
    mut capture: Capture,
    mut pipeline: Pipeline,
    duration: Option<Duration>,
    summary_interval: Option<Duration>,
    health: &Health,
    state_roots: StateRoots,
) -> Result<Summary, Failure> {
    let signal_failure = |e: std::io::Error| Failure::setup(format!("cannot watch signals: {e}"));
    let mut interrupt = signal(SignalKind::interrupt()).map_err(signal_failure)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(signal_failure)?;
    // Said once SIGINT and SIGTERM end the run cleanly: before, they kill it.
    eprintln!("dnstrace: attached, backend {}", capture.backend.name());
    let deadline = sleep(duration.unwrap_or(Duration::MAX / 4));
    tokio::pin!(deadline);
    let mut ticks = interval_at(Instant::now() + TICK, TICK);
    let mut polls = interval_at(Instant::now() + POLL, POLL);
    polls.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let report_every = summary_interval.unwrap_or(Duration::MAX / 4);
    let mut reports = interval_at(Instant::now() + report_every, report_every);
    let enricher = Enricher::start(Sources {
        cgroup_mount: Some(capture.cgroup_root.clone()),
        state_roots,
        namespaces: capture.take_namespaces(),
    })
    .map_err(|e| Failure::setup(format!("cannot start the enrich thread: {e}")))?;
    let mut stages = Stages {
        decoder: RecordDecoder {
            clock: WallClock::new(),
            thread_names: ThreadNames::default(),
            keep_payloads: pipeline.needs_payloads(),
        },
        enricher,
        drop_names: capture.take_drop_names().ok(),
        conntrack: ConntrackCounters::at_start(),
        shedding: Shedding::new(capture.ring_bytes()),
    };
    let mut losses = Losses::default();
    let mut tick_count = 0u64;
    // Waiting on the ring's readiness can fail (the poller): the run then
    // drains it every POLL, as it does anyway, and says so once.
    let mut wakeups = true;

    loop {
        tokio::select! {
            biased;
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            _ = &mut deadline, if duration.is_some() => break,
            ready = capture.wait(), if wakeups => {
                if let Err(error) = ready {
                    eprintln!("dnstrace: cannot wait for the ring buffer ({error}); reading it every {} ms instead", POLL.as_millis());
                    wakeups = false;
                }
            }
            _ = polls.tick() => {}
            _ = ticks.tick() => {
                tick_count += 1;
                stages.drain(&mut capture, &mut pipeline);
                // Losses first: lookups that settle now are judged knowing
                // whether messages of theirs may be missing.
                read_losses(&mut losses, &capture, &mut pipeline);
                pipeline.advance(monotonic_now_ns());
                capture.flush_kernel_log();
                pipeline.flush();
                if tick_count.is_multiple_of(FORGET_EVERY_TICKS) {
                    pipeline.forget_exited();
                    stages.enricher.sweep();
                }
                pipeline.publish_state(monotonic_now_ns(), losses.per_cpu.clone());
                health.tick();
            }
            _ = reports.tick(), if summary_interval.is_some() => pipeline.report(),
        }
        stages.drain(&mut capture, &mut pipeline);
        if let Some(error) = pipeline.take_write_error() {
            return Err(Failure::runtime(format!("writing output failed: {error}")));
        }
    }

    capture.detach();
    health.set_attached(false);
    stages.drain(&mut capture, &mut pipeline);
    stages
        .enricher
        .finish(&mut |m: Message| pipeline.message(&m));
    pipeline.summary.unenriched = stages.enricher.counts.unenriched;
    pipeline.summary.evicted_facts = stages.enricher.counts.evicted;
    capture.flush_kernel_log();
    read_losses(&mut losses, &capture, &mut pipeline);
    pipeline.summary.lost_per_cpu = losses.per_cpu;
    match capture.unframed_tcp_streams() {
        Ok(count) => pipeline.summary.unframed_tcp_streams = count,
        Err(error) => eprintln!("dnstrace: {error}"),
    }
    pipeline.finish();
    if let Some(error) = pipeline.take_write_error() {
        return Err(Failure::runtime(format!("writing output failed: {error}")));
    }
    Ok(pipeline.summary.clone())
}

/// Reads the kernel's loss counters and tells the pipeline when messages
/// may be missing.
fn read_losses(losses: &mut Losses, capture: &Capture, pipeline: &mut Pipeline) {
    let now = monotonic_now_ns();
    let read = capture.lost_per_cpu();
    let ok = read.is_ok();
    let before = losses.per_cpu.iter().sum::<u64>();
    if let Some(line) = losses.update(read) {
        eprintln!("dnstrace: {line}");
    }
    if ok {
        let rose = losses.per_cpu.iter().sum::<u64>() > before;
        pipeline.losses_read(now, rose.then_some(losses.read_at_ns));
        losses.read_at_ns = now;
    }
}

/// The kernel's loss counters as last read. A read that fails (the bpf
/// syscall can fail for a moment, as under memory pressure) keeps the last
/// counts and is said once until a read works again: it never ends the run.
#[derive(Debug, Default)]
struct Losses {
    per_cpu: Vec<u64>,
    reported: u64,
    failing: bool,
    /// When they were last read (0 before the first read: losses then
    /// may be from any time before).
    read_at_ns: u64,
}

impl Losses {
    /// Takes a read of the counters; the line to print, if any.
    fn update(&mut self, read: Result<Vec<u64>, String>) -> Option<String> {
        match read {
            Ok(per_cpu) => {
                self.failing = false;
                self.per_cpu = per_cpu;
                let lost: u64 = self.per_cpu.iter().sum();
                (lost > self.reported).then(|| {
                    self.reported = lost;
                    format!(
                        "{lost} messages lost so far: the ring buffer was full (try --ring-buffer-mib)"
                    )
                })
            }
            Err(error) if !self.failing => {
                self.failing = true;
                Some(format!("{error}; the counts read last are kept"))
            }
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Losses;

    #[test]
    fn a_failed_read_of_the_loss_counters_keeps_the_last_counts() {
        let mut losses = Losses::default();
        assert_eq!(losses.update(Ok(vec![0, 0])), None);
        let line = losses.update(Ok(vec![0, 3])).unwrap();
        assert!(line.starts_with("3 messages lost so far"), "{line}");
        let error = || Err("cannot read the lost-event counters: EAGAIN".to_string());
        let line = losses.update(error()).unwrap();
        assert!(line.ends_with("the counts read last are kept"), "{line}");
        assert_eq!(losses.update(error()), None, "said once");
        assert_eq!(losses.per_cpu, [0, 3]);
        assert_eq!(losses.update(Ok(vec![0, 3])), None, "nothing new");
        assert!(losses.update(error()).is_some(), "a new failure is said");
        let line = losses.update(Ok(vec![2, 3])).unwrap();
        assert!(line.starts_with("5 messages lost"), "{line}");
    }
}
