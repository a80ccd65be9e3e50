//! Errors that end dnstrace, each with one line for the user and an exit code.

use std::fmt;

/// Exit status when tracing cannot start: usage, privileges, kernel, output.
pub const EXIT_SETUP: u8 = 2;
/// Exit status when tracing started but its output could not be written.
pub const EXIT_RUNTIME: u8 = 1;

/// A failure the user can act on. `Display` is the whole message.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub exit_code: u8,
}

impl Failure {
    pub fn setup(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            exit_code: EXIT_SETUP,
        }
    }

    pub fn runtime(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            exit_code: EXIT_RUNTIME,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}
