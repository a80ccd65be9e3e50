//! Developer tasks: `cargo xtask <task>`. Each task lives in its own module.

mod bench;
mod command;
mod demo;
mod fuzz;
mod image;
mod run;
mod setup;
mod test;
mod vm;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "dnstrace developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need: Debian packages, the pinned
    /// toolchains, rust-src and bpf-linker (scripts/setup.sh).
    Setup,
    /// Build dnstrace in release mode and run it; arguments after `--` go to it.
    Run(run::Options),
    /// Every check CI runs: format, clippy, unit tests and the end-to-end
    /// tests against the real kernel.
    Test(test::Options),
    /// What tracing costs: throughput with and without it (knot + dnsperf
    /// in a namespace), CPU per message, and memory with queries outstanding.
    Bench(bench::Options),
    /// One sender of the bench's unanswered queries (run by the bench).
    #[command(hide = true)]
    BenchFlood(bench::FloodOptions),
    /// Reproduce the case behind dnstrace (a cache's answers without AA
    /// thrown away by a Go client) in namespaces, and show dnstrace naming it.
    Demo,
    /// Fuzz the decoder, the analyze readers, TCP framing and correlation
    /// with cargo-fuzz and the pinned nightly (docs/fuzzing.md).
    Fuzz(fuzz::Options),
    /// Build the OCI image (the static binary, from scratch) with buildah,
    /// tagged dnstrace:VERSION, and write it as an OCI archive under target/.
    Image(image::Options),
    /// Boot Debian 12's stock 6.1 kernel in qemu (TCG) and check that the
    /// static release binary captures there with every backend it offers.
    Vm(vm::Options),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Run(options) => run::run(&options),
        Task::Test(options) => test::run(&options),
        Task::Bench(options) => bench::run(&options),
        Task::BenchFlood(options) => bench::flood(&options),
        Task::Demo => demo::run(),
        Task::Fuzz(options) => fuzz::run(&options),
        Task::Image(options) => image::run(&options).map(drop),
        Task::Vm(options) => vm::run(&options).map(drop),
    }
}
