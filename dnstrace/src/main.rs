//! dnstrace: which process is failing DNS, and why.
//!
//! The agent reads as its pipeline: `capture` (kernel programs, one backend
//! per file) → `decode` → `message` (the event model) → `correlate`
//! (attempts, lookups) → `diagnose` (one rule per file) → `output` (one
//! module per format). `pipeline` joins the last three, `agent` feeds it
//! live; this file only wires the parts.

mod agent;
mod capture;
mod cli;
mod clock;
mod correlate;
mod decode;
mod diagnose;
mod failure;
mod framing;
mod message;
mod output;
mod pipeline;
mod process;
mod resolver;
mod selection;

use std::{io::IsTerminal, process::ExitCode, time::Duration};

use clap::Parser;

use crate::{
    capture::{Capture, CaptureRequest},
    cli::{Args, ColorChoice, Format},
    failure::Failure,
    output::{
        Destination, Output, json::JsonOutput, pcapng::PcapngOutput, rotation::Policy,
        text::TextOutput,
    },
    pipeline::Pipeline,
};

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("dnstrace: {failure}");
            ExitCode::from(failure.exit_code)
        }
    }
}

fn run(args: Args) -> Result<(), Failure> {
    if !args.ring_buffer_mib.is_power_of_two() || args.ring_buffer_mib > 1024 {
        return Err(Failure::setup(
            "--ring-buffer-mib must be a power of two up to 1024",
        ));
    }
    let request = CaptureRequest {
        config: selection::capture_config(&args)?,
        pids: args.pids.clone(),
        backend: args.backend,
        ring_buffer_bytes: args.ring_buffer_mib << 20,
    };
    // Open the output before loading anything, so a bad path fails fast.
    let rotation = Policy {
        max_bytes: args.rotate_size,
        max_age: args
            .rotate_interval
            .filter(|s| *s > 0)
            .map(Duration::from_secs),
        keep: args.rotate_keep,
    };
    let destination = Destination::open(args.output.as_deref(), rotation)?;
    let output: Box<dyn Output> = match args.format {
        Format::Json => Box::new(JsonOutput::new(destination)),
        Format::Text => {
            let color = match args.color {
                ColorChoice::Always => true,
                ColorChoice::Never => false,
                ColorChoice::Auto => destination.is_terminal && std::io::stderr().is_terminal(),
            };
            Box::new(
                TextOutput::new(destination, color, args.verbose)
                    .map_err(|e| Failure::setup(format!("cannot write output: {e}")))?,
            )
        }
    };

    let mut outputs = vec![output];
    if let Some(path) = &args.pcapng {
        let file = output::create_private(path)?;
        let pcapng = PcapngOutput::new(file)
            .map_err(|e| Failure::setup(format!("cannot write {}: {e}", path.display())))?;
        outputs.push(Box::new(pcapng));
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::setup(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async {
        let capture = Capture::start(&request)?;
        for (backend, reason) in &capture.passed_over {
            eprintln!("dnstrace: backend {} passed over: {reason}", backend.name());
        }
        eprintln!("dnstrace: attached, backend {}", capture.backend.name());
        let summary = agent::run(
            capture,
            Pipeline::new(outputs),
            args.duration.map(Duration::from_secs),
            args.summary_interval
                .filter(|s| *s > 0)
                .map(Duration::from_secs),
        )
        .await?;
        eprintln!("dnstrace: {}", summary.line());
        Ok(())
    })
}
