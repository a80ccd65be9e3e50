//! The live pipeline: capture → decode → outputs, until a signal, the
//! duration, or an output error ends it.

use std::{io, time::Duration};

use tokio::{
    signal::unix::{SignalKind, signal},
    time::{Instant, MissedTickBehavior, interval_at, sleep},
};

use crate::{
    capture::{Capture, parse_record},
    clock::WallClock,
    failure::Failure,
    message::Message,
    output::{Output, Summary},
    process::Namespaces,
};

/// How often outputs are flushed and the loss counters read.
const TICK: Duration = Duration::from_secs(1);
/// How often the ring is drained when the kernel has not woken us.
const POLL: Duration = Duration::from_millis(dnstrace_common::POLL_INTERVAL_MS);

pub struct Pipeline {
    clock: WallClock,
    namespaces: Namespaces,
    outputs: Vec<Box<dyn Output>>,
    summary: Summary,
    /// The first output error; the run stops at the next check.
    write_error: Option<io::Error>,
}

impl Pipeline {
    pub fn new(outputs: Vec<Box<dyn Output>>) -> Self {
        Self {
            clock: WallClock::new(),
            namespaces: Namespaces::scanned(),
            outputs,
            summary: Summary::default(),
            write_error: None,
        }
    }

    fn record(&mut self, bytes: &[u8]) {
        let Some(raw) = parse_record(bytes) else {
            self.summary.malformed_records += 1;
            return;
        };
        let message = Message::from_raw(&raw, &self.clock, &mut self.namespaces);
        self.summary.messages += 1;
        if message.dns.decode_error.is_some() {
            self.summary.undecodable += 1;
        }
        self.each_output(|output| output.message(&message));
    }

    fn each_output(&mut self, mut act: impl FnMut(&mut dyn Output) -> io::Result<()>) {
        for output in &mut self.outputs {
            if let Err(error) = act(output.as_mut())
                && self.write_error.is_none()
            {
                self.write_error = Some(error);
            }
        }
    }

    fn check(&mut self) -> Result<(), Failure> {
        match self.write_error.take() {
            Some(error) => Err(Failure::runtime(format!("writing output failed: {error}"))),
            None => Ok(()),
        }
    }
}

pub async fn run(
    mut capture: Capture,
    mut pipeline: Pipeline,
    duration: Option<Duration>,
) -> Result<Summary, Failure> {
    let signal_failure = |e: io::Error| Failure::setup(format!("cannot watch signals: {e}"));
    let mut interrupt = signal(SignalKind::interrupt()).map_err(signal_failure)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(signal_failure)?;
    let deadline = sleep(duration.unwrap_or(Duration::MAX / 4));
    tokio::pin!(deadline);
    let mut ticks = interval_at(Instant::now() + TICK, TICK);
    let mut polls = interval_at(Instant::now() + POLL, POLL);
    polls.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut reported_lost = 0;

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
                pipeline.each_output(|output| output.flush());
                let lost: u64 = capture.lost_per_cpu().map_err(Failure::runtime)?.into_iter().sum();
                if lost > reported_lost {
                    eprintln!("dnstrace: {} messages lost so far: the ring buffer was full (try --ring-buffer-mib)", lost);
                    reported_lost = lost;
                }
            }
        }
        capture.drain(|record| pipeline.record(record));
        pipeline.check()?;
    }

    capture.detach();
    capture.drain(|record| pipeline.record(record));
    pipeline.summary.lost_per_cpu = capture.lost_per_cpu().map_err(Failure::runtime)?;
    let summary = pipeline.summary.clone();
    pipeline.each_output(|output| output.finish(&summary));
    pipeline.check()?;
    Ok(summary)
}
