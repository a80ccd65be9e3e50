//! The `dnstrace` command; everything is in the library (lib.rs).

fn main() -> std::process::ExitCode {
    dnstrace::run()
}
