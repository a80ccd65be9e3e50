//! dnstrace: which process is failing DNS, and why.
//!
//! The agent reads as its pipeline: `capture` (kernel programs, one backend
//! per file) → `decode` → `message` (the event model) → `correlate`
//! (attempts, lookups) → `diagnose` (one rule per file) → `output` (one
//! module per format). `pipeline` joins the last three, `agent` feeds it
//! live; this file only wires the parts. The binary (main.rs) only calls
//! `run`; the library exists so the fuzz targets (fuzz/) reach the parsers
//! and the pipeline bench (benches/pipeline.rs) its replay (`bench`).

mod agent;
mod analyze;
#[doc(hidden)]
pub mod bench;
mod capture;
mod cli;
mod clock;
mod correlate;
mod decode;
mod diagnose;
mod dnstap;
mod drop_owners;
mod endpoints;
mod enrich;
mod failure;
mod framing;
mod gaps;
mod identity;
mod message;
mod output;
mod pipeline;
mod privileges;
mod process;
mod resolver;
mod selection;
mod shedding;
mod tally;
mod terminal;

/// Entry points for the fuzz targets in fuzz/; built only by cargo-fuzz.
#[cfg(fuzzing)]
pub mod fuzz;

use std::{collections::BTreeSet, process::ExitCode, sync::Arc, time::Duration};

use clap::Parser;

use crate::{
    capture::{Capture, CaptureRequest},
    cli::{Args, Command, OutputArgs, TraceArgs},
    endpoints::Health,
    failure::Failure,
    output::{Output, metrics::MetricsOutput},
    pipeline::Pipeline,
    selection::pods::{PodFilter, Scan, Scanner},
};

/// The command line, parsed from the process's arguments.
pub fn run() -> ExitCode {
    let args = Args::parse();
    let result = match &args.command {
        Some(Command::Analyze(analyze)) => analyze::run(analyze),
        None => trace(&args.trace, &args.output),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            terminal::eprint_line(&failure.message);
            ExitCode::from(failure.exit_code)
        }
    }
}

fn trace(args: &TraceArgs, output_args: &OutputArgs) -> Result<(), Failure> {
    if let Some(note) = capture::foreign_pid_namespace() {
        terminal::eprint_line(&note);
    }
    if !args.ring_buffer_mib.is_power_of_two() || args.ring_buffer_mib > 1024 {
        return Err(Failure::setup(
            "--ring-buffer-mib must be a power of two up to 1024",
        ));
    }
    let state_roots = enrich::StateRoots {
        containerd: args.containerd_state.clone(),
        crio: args.crio_state.clone(),
    };
    let (mut pod_scanner, initial_cgroups) = match PodFilter::from_args(args)? {
        Some(filter) => {
            let mount = capture::cgroup2_root(args.cgroup_root.as_deref())?;
            let mut scanner = Scanner::new(filter, state_roots.clone(), mount);
            let scan = scanner.scan();
            say_what_pods_match(scanner.filter(), &scan);
            (Some(scanner), scan.selected)
        }
        None => (None, BTreeSet::new()),
    };
    let request = CaptureRequest {
        config: selection::capture_config(args)?,
        pids: args.pids.clone(),
        cgroups: initial_cgroups.iter().copied().collect(),
        backend: args.backend,
        ring_buffer_bytes: args.ring_buffer_mib << 20,
        cgroup_root: args.cgroup_root.clone(),
    };
    // Open the outputs before loading anything, so a bad path fails fast.
    let mut outputs = output::open_all(output_args)?;
    let metrics = MetricsOutput::open(&output_args.metrics, args.metrics.is_some())?;
    let listener = args.metrics.map(endpoints::bind).transpose()?;
    let registry = metrics.as_ref().map(MetricsOutput::registry);
    outputs.extend(metrics.map(|metrics| Box::new(metrics) as Box<dyn Output>));
    let health = Arc::new(Health::default());

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::setup(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async {
        if let (Some(listener), Some(registry)) = (listener, registry) {
            endpoints::spawn(listener, registry, health.clone())?;
        }
        let mut capture = Capture::start(&request)?;
        let kept = match output::writes_after_start(output_args) {
            true => privileges::TRACING | privileges::WRITING_LATER,
            false => privileges::TRACING,
        };
        let kept = privileges::keep_only(kept).map_err(Failure::setup)?;
        eprintln!(
            "dnstrace: capabilities kept: {}; no_new_privs set",
            privileges::names(kept)
        );
        for lost in privileges::losses(kept) {
            eprintln!("dnstrace: {lost}");
        }
        // Started after the capabilities are dropped, so it holds no more.
        let _watcher = match pod_scanner.take() {
            Some(scanner) => {
                let map = capture.take_selected_cgroups().map_err(Failure::setup)?;
                let watcher = selection::pods::follow(scanner, map, initial_cgroups)
                    .map_err(|e| Failure::setup(format!("cannot start the pod watcher: {e}")))?;
                Some(watcher)
            }
            None => None,
        };
        health.set_attached(true);
        for (backend, reason) in &capture.passed_over {
            eprintln!("dnstrace: backend {} passed over: {reason}", backend.name());
        }
        let watch_drops = match capture.drops_watched() {
            Ok(()) => {
                eprintln!(
                    "dnstrace: kernel drops of DNS packets watched (tracepoint skb:kfree_skb)"
                );
                true
            }
            Err(reason) => {
                eprintln!("dnstrace: kernel drops of DNS packets not watched: {reason}");
                false
            }
        };
        let pipeline = match capture.take_read_counts() {
            Ok(counts) => {
                eprintln!(
                    "dnstrace: reads of responses tracked (tracepoint sock:sock_recv_length)"
                );
                Pipeline::new(outputs).with_read_counts(Box::new(counts))
            }
            Err(reason) => {
                eprintln!("dnstrace: reads of responses not tracked: {reason}");
                Pipeline::new(outputs)
            }
        };
        let pipeline = match watch_drops {
            true => pipeline.watching_drops(),
            false => pipeline,
        };
        let summary = agent::run(
            capture,
            pipeline,
            args.duration.map(Duration::from_secs),
            args.summary_interval
                .filter(|s| *s > 0)
                .map(Duration::from_secs),
            &health,
            state_roots,
        )
        .await?;
        eprintln!("dnstrace: {}", summary.line());
        Ok(())
    })
}

/// Says at start what the pod filters select now. A filter that matches
/// nothing yet is not an error: following pods that start later is what
/// it is for.
fn say_what_pods_match(filter: &PodFilter, scan: &Scan) {
    let filter = filter.describe();
    if scan.new.is_empty() {
        terminal::eprint_line(&format!(
            "{filter} matches no container on this node now; pods that start later are followed"
        ));
        return;
    }
    terminal::eprint_line(&format!(
        "{filter} matches {} now; pods that start later are followed",
        scan.new.join(", ")
    ));
}
