//! Live tracing: capture → decode → the pipeline, until a signal, the
//! duration, or an output error ends it.

use std::time::Duration;

use tokio::{
    signal::unix::{SignalKind, signal},
    time::{Instant, MissedTickBehavior, interval_at, sleep},
};

use crate::{
    capture::{Capture, KernelReadCounts, RecordDecoder, ThreadNames, cgroup2_root, parse_record},
    clock::{WallClock, monotonic_now_ns},
    correlate::reads::ReadCounter,
    enrich::{Enricher, Sources, StateRoots},
    failure::Failure,
    framing::TcpStreams,
    message::Message,
    output::Summary,
    pipeline::Pipeline,
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
    fn reads(&mut self, socket_cookie: u64) -> Option<u64> {
        KernelReadCounts::reads(self, socket_cookie)
    }
}

/// The stages between the ring buffer and the pipeline: decode, enrich.
struct Stages {
    decoder: RecordDecoder,
    enricher: Enricher,
}

impl Stages {
    /// One ring buffer record, into the pipeline (some of its messages
    /// perhaps later, once their process's facts are known).
    fn record(&mut self, bytes: &[u8], pipeline: &mut Pipeline) {
        let Some(raw) = parse_record(bytes) else {
            pipeline.summary.malformed_records += 1;
            return;
        };
        let netns_cookie = raw.header.netns_cookie;
        let enricher = &mut self.enricher;
        self.decoder.messages(&raw, |message| {
            enricher.admit(message, netns_cookie, &mut |m: Message| {
                pipeline.message(&m)
            })
        });
    }

    /// Drains the ring, then lets through what enrichment released.
    fn drain(&mut self, capture: &mut Capture, pipeline: &mut Pipeline) {
        capture.drain(|bytes| self.record(bytes, pipeline));
        self.enricher
            .poll(monotonic_now_ns(), &mut |m: Message| pipeline.message(&m));
    }
}

pub async fn run(
    mut capture: Capture,
    mut pipeline: Pipeline,
    duration: Option<Duration>,
    summary_interval: Option<Duration>,
    state_roots: StateRoots,
) -> Result<Summary, Failure> {
    let signal_failure = |e: std::io::Error| Failure::setup(format!("cannot watch signals: {e}"));
    let mut interrupt = signal(SignalKind::interrupt()).map_err(signal_failure)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(signal_failure)?;
    let deadline = sleep(duration.unwrap_or(Duration::MAX / 4));
    tokio::pin!(deadline);
    let mut ticks = interval_at(Instant::now() + TICK, TICK);
    let mut polls = interval_at(Instant::now() + POLL, POLL);
    polls.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let report_every = summary_interval.unwrap_or(Duration::MAX / 4);
    let mut reports = interval_at(Instant::now() + report_every, report_every);
    let enricher = Enricher::start(Sources {
        cgroup_mount: cgroup2_root().ok(),
        state_roots,
        namespaces: capture.take_namespaces(),
    })
    .map_err(|e| Failure::setup(format!("cannot start the enrich thread: {e}")))?;
    let mut stages = Stages {
        decoder: RecordDecoder {
            clock: WallClock::new(),
            streams: TcpStreams::default(),
            thread_names: ThreadNames::default(),
            keep_payloads: pipeline.needs_payloads(),
        },
        enricher,
    };
    let mut reported_lost = 0;
    let mut tick_count = 0u64;

    loop {
        tokio::select! {
            biased;
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            _ = &mut deadline, if duration.is_some() => break,
            ready = capture.wait() => {
                ready.map_err(|e| Failure::runtime(format!("reading the ring buffer failed: {e}")))?;
            }
            _ = polls.tick() => {}
            _ = ticks.tick() => {
                tick_count += 1;
                stages.drain(&mut capture, &mut pipeline);
                pipeline.advance(monotonic_now_ns());
                capture.flush_kernel_log();
                pipeline.flush();
                if tick_count.is_multiple_of(FORGET_EVERY_TICKS) {
                    pipeline.forget_exited();
                    stages.enricher.sweep();
                }
                let lost: u64 = capture.lost_per_cpu().map_err(Failure::runtime)?.into_iter().sum();
                if lost > reported_lost {
                    eprintln!("dnstrace: {lost} messages lost so far: the ring buffer was full (try --ring-buffer-mib)");
                    reported_lost = lost;
                }
            }
            _ = reports.tick(), if summary_interval.is_some() => pipeline.report(),
        }
        stages.drain(&mut capture, &mut pipeline);
        if let Some(error) = pipeline.take_write_error() {
            return Err(Failure::runtime(format!("writing output failed: {error}")));
        }
    }

    capture.detach();
    stages.drain(&mut capture, &mut pipeline);
    stages
        .enricher
        .finish(&mut |m: Message| pipeline.message(&m));
    pipeline.summary.unenriched = stages.enricher.counts.unenriched;
    pipeline.summary.evicted_facts = stages.enricher.counts.evicted;
    capture.flush_kernel_log();
    pipeline.summary.lost_per_cpu = capture.lost_per_cpu().map_err(Failure::runtime)?;
    pipeline.finish();
    if let Some(error) = pipeline.take_write_error() {
        return Err(Failure::runtime(format!("writing output failed: {error}")));
    }
    Ok(pipeline.summary.clone())
}
