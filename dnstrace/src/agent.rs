//! Live tracing: capture → decode → the pipeline, until a signal, the
//! duration, or an output error ends it.

use std::time::Duration;

use tokio::{
    signal::unix::{SignalKind, signal},
    time::{Instant, MissedTickBehavior, interval_at, sleep},
};

use crate::{
    capture::{Capture, parse_record},
    clock::{WallClock, monotonic_now_ns},
    failure::Failure,
    framing::TcpStreams,
    message::Message,
    output::Summary,
    pipeline::Pipeline,
    process::Namespaces,
};

/// How often outputs are flushed, time advances in correlation, and the
/// loss counters are read.
const TICK: Duration = Duration::from_secs(1);
/// How often the ring is drained when the kernel has not woken us.
const POLL: Duration = Duration::from_millis(dnstrace_common::POLL_INTERVAL_MS);
/// How often exited processes are forgotten.
const FORGET_EVERY_TICKS: u64 = 30;

/// Turns ring buffer records into messages for the pipeline.
struct Decoder {
    clock: WallClock,
    namespaces: Namespaces,
    streams: TcpStreams,
    keep_payloads: bool,
}

impl Decoder {
    fn record(&mut self, bytes: &[u8], pipeline: &mut Pipeline) {
        let Some(raw) = parse_record(bytes) else {
            pipeline.summary.malformed_records += 1;
            return;
        };
        Message::from_raw(
            &raw,
            &self.clock,
            &mut self.namespaces,
            &mut self.streams,
            self.keep_payloads,
            |message| {
                pipeline.message(&message);
            },
        );
    }
}

pub async fn run(
    mut capture: Capture,
    mut pipeline: Pipeline,
    duration: Option<Duration>,
    summary_interval: Option<Duration>,
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
    let mut decoder = Decoder {
        clock: WallClock::new(),
        namespaces: Namespaces::scanned(),
        streams: TcpStreams::default(),
        keep_payloads: pipeline.needs_payloads(),
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
                capture.drain(|record| decoder.record(record, &mut pipeline));
                pipeline.advance(monotonic_now_ns());
                capture.flush_kernel_log();
                pipeline.flush();
                if tick_count.is_multiple_of(FORGET_EVERY_TICKS) {
                    pipeline.forget_exited();
                }
                let lost: u64 = capture.lost_per_cpu().map_err(Failure::runtime)?.into_iter().sum();
                if lost > reported_lost {
                    eprintln!("dnstrace: {lost} messages lost so far: the ring buffer was full (try --ring-buffer-mib)");
                    reported_lost = lost;
                }
            }
            _ = reports.tick(), if summary_interval.is_some() => pipeline.report(),
        }
        capture.drain(|record| decoder.record(record, &mut pipeline));
        if let Some(error) = pipeline.take_write_error() {
            return Err(Failure::runtime(format!("writing output failed: {error}")));
        }
    }

    capture.detach();
    capture.drain(|record| decoder.record(record, &mut pipeline));
    capture.flush_kernel_log();
    pipeline.summary.lost_per_cpu = capture.lost_per_cpu().map_err(Failure::runtime)?;
    pipeline.finish();
    if let Some(error) = pipeline.take_write_error() {
        return Err(Failure::runtime(format!("writing output failed: {error}")));
    }
    Ok(pipeline.summary.clone())
}
