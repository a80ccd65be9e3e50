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
    // Said once SIGINT and SIGTERM end the run cleanly: before, they kill it.
    eprintln!("dnstrace: attached, backend {}", capture.backend.name());
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
    let mut losses = Losses::default();
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
                if let Some(line) = losses.update(capture.lost_per_cpu()) {
                    eprintln!("dnstrace: {line}");
                }
                pipeline.publish_state(monotonic_now_ns(), losses.per_cpu.clone());
                health.tick();
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
    if let Some(line) = losses.update(capture.lost_per_cpu()) {
        eprintln!("dnstrace: {line}");
    }
    pipeline.summary.lost_per_cpu = losses.per_cpu;
    pipeline.finish();
    if let Some(error) = pipeline.take_write_error() {
        return Err(Failure::runtime(format!("writing output failed: {error}")));
    }
    Ok(pipeline.summary.clone())
}

/// The kernel's loss counters as last read. A read that fails (the bpf
/// syscall can fail for a moment, as under memory pressure) keeps the last
/// counts and is said once until a read works again: it never ends the run.
#[derive(Debug, Default)]
struct Losses {
    per_cpu: Vec<u64>,
    reported: u64,
    failing: bool,
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
