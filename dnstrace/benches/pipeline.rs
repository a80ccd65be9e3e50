//! The agent's work per message without the kernel: decode → correlate →
//! JSON over a trace held in memory, on one core (`cargo xtask bench` runs
//! it over the trace it records).
//!
//! `cargo bench -p dnstrace --bench pipeline -- [--runs N] ANALYZE-ARGS...`
//! takes `dnstrace analyze`'s arguments (one trace, the outputs) and prints
//! one line per run: `messages <count> cpu_ns <process CPU time>`.

use std::process::ExitCode;

use dnstrace::bench::Replay;
use rustix::time::{ClockId, clock_gettime};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("pipeline bench: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    // cargo bench passes `--bench` to every bench binary.
    let mut args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let mut runs = 3;
    if let Some(at) = args.iter().position(|a| a == "--runs") {
        let count = args.get(at + 1).ok_or("--runs needs a count")?;
        runs = count
            .parse()
            .map_err(|_| format!("--runs {count}: not a count"))?;
        args.drain(at..at + 2);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let replay = Replay::read(&args)?;
    for _ in 0..runs {
        let start = cpu_ns();
        replay.run()?;
        println!("messages {} cpu_ns {}", replay.messages(), cpu_ns() - start);
    }
    Ok(())
}

/// CPU time of the whole process (the pipeline starts no threads), in ns.
fn cpu_ns() -> u128 {
    let now = clock_gettime(ClockId::ProcessCPUTime);
    now.tv_sec as u128 * 1_000_000_000 + now.tv_nsec as u128
}
