//! Decoded messages → correlation → diagnosis → outputs. Knows nothing of
//! where messages come from, so live tracing and reading a file share it.

use std::{collections::HashMap, io};

use crate::{
    correlate::{
        Correlated, Correlator,
        reads::{self, ReadCounter},
    },
    diagnose::Diagnoser,
    message::{ClientId, Message},
    output::{AgentState, Output, ProcessReport, Summary},
};

/// Processes kept in the report; past this the least active are dropped.
const MAX_REPORTED_PROCESSES: usize = 4096;

pub struct Pipeline {
    correlator: Correlator,
    diagnoser: Diagnoser,
    processes: HashMap<ClientId, ProcessReport>,
    outputs: Vec<Box<dyn Output>>,
    pub summary: Summary,
    /// The first output error; the caller stops at its next check.
    write_error: Option<io::Error>,
    correlated: Vec<Correlated>,
    read_counts: Option<Box<dyn ReadCounter>>,
    /// The latest time seen, CLOCK_MONOTONIC ns: a message's, or `advance`'s.
    now_ns: u64,
}

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
        }
    }

    /// For traces read from files: the processes behind them ran elsewhere
    /// or earlier, so nothing is looked up in /proc.
    pub fn offline(outputs: Vec<Box<dyn Output>>) -> Self {
        Self {
            correlator: Correlator::offline(),
            ..Self::new(outputs)
        }
    }

    /// The kernel's counts of reads, to tell which responses were read.
    pub fn with_read_counts(mut self, counts: Box<dyn ReadCounter>) -> Self {
        self.read_counts = Some(counts);
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
        let mut correlated = std::mem::take(&mut self.correlated);
        self.correlator.observe(message, &mut correlated);
        self.handle(&mut correlated);
        self.correlated = correlated;
    }

    /// Lets time decide what it decides (timeouts, settled lookups); `now`
    /// is CLOCK_MONOTONIC nanoseconds, as message timestamps are.
    pub fn advance(&mut self, now: u64) {
        self.now_ns = self.now_ns.max(now);
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
                    self.diagnoser.lookup(&lookup);
                    if self.processes.len() >= MAX_REPORTED_PROCESSES
                        && !self.processes.contains_key(&lookup.client.id)
                    {
                        self.forget_least_active_process();
                    }
                    let report = self
                        .processes
                        .entry(lookup.client.id)
                        .or_insert_with(|| ProcessReport::new(lookup.client.clone()));
                    report.add(&lookup);
                    self.each_output(|output| output.lookup(&lookup));
                }
                Correlated::Stray(attempt) => {
                    self.diagnoser.stray(&attempt);
                    self.each_output(|output| output.stray(&attempt));
                }
            }
        }
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
        let mut correlated = std::mem::take(&mut self.correlated);
        self.correlator.finish(&mut correlated);
        self.handle(&mut correlated);
        self.publish_diagnoses();
        self.summary.evicted_lookups = self.correlator.evicted;
        self.summary.uncorrelated = self.correlator.uncorrelated;
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
        self.summary.uncorrelated = self.correlator.uncorrelated;
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
