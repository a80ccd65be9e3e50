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
    endpoints::Health,
    failure::Failure,
    framing::TcpStreams,
    message::{RecordDecoder, ThreadNames},
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

/// One ring buffer record, into the pipeline.
fn record(decoder: &mut RecordDecoder, bytes: &[u8], pipeline: &mut Pipeline) {
    let Some(raw) = parse_record(bytes) else {
        pipeline.summary.malformed_records += 1;
        return;
    };
    decoder.messages(&raw, |message| pipeline.message(&message));
}

pub async fn run(
    mut capture: Capture,
    mut pipeline: Pipeline,
    duration: Option<Duration>,
    summary_interval: Option<Duration>,
    health: &Health,
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
    let mut decoder = RecordDecoder {
        clock: WallClock::new(),
        namespaces: Namespaces::found(capture.take_namespaces()),
        streams: TcpStreams::default(),
        thread_names: ThreadNames::default(),
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
                capture.drain(|bytes| record(&mut decoder, bytes, &mut pipeline));
                pipeline.advance(monotonic_now_ns());
                capture.flush_kernel_log();
                pipeline.flush();
                if tick_count.is_multiple_of(FORGET_EVERY_TICKS) {
                    pipeline.forget_exited();
                }
                let lost_per_cpu = capture.lost_per_cpu().map_err(Failure::runtime)?;
                let lost: u64 = lost_per_cpu.iter().sum();
                pipeline.publish_state(monotonic_now_ns(), lost_per_cpu);
                health.tick();
                if lost > reported_lost {
                    eprintln!("dnstrace: {lost} messages lost so far: the ring buffer was full (try --ring-buffer-mib)");
                    reported_lost = lost;
                }
            }
            _ = reports.tick(), if summary_interval.is_some() => pipeline.report(),
        }
        capture.drain(|bytes| record(&mut decoder, bytes, &mut pipeline));
        if let Some(error) = pipeline.take_write_error() {
            return Err(Failure::runtime(format!("writing output failed: {error}")));
        }
    }

    capture.detach();
    health.set_attached(false);
    capture.drain(|bytes| record(&mut decoder, bytes, &mut pipeline));
    capture.flush_kernel_log();
    pipeline.summary.lost_per_cpu = capture.lost_per_cpu().map_err(Failure::runtime)?;
    pipeline.finish();
    if let Some(error) = pipeline.take_write_error() {
        return Err(Failure::runtime(format!("writing output failed: {error}")));
    }
    Ok(pipeline.summary.clone())
}
