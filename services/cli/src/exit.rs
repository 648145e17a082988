//! How syctl ends: the exit codes scripts can rely on, and the failure that carries
//! one with its message.

use std::process::ExitCode;

/// syctl's exit codes (0 is success).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// The server refused the request: invalid input, a conflict, not found, denied.
    Refused = 1,
    /// The command line is wrong, or a file it names cannot be read.
    Usage = 2,
    /// The control API could not be reached or did not answer in time.
    Unreachable = 3,
    /// The command ran and its check failed: `mapping test` did not pass, or
    /// `dlq replay` kept dead letters that still fail.
    CheckFailed = 4,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit as u8)
    }
}

/// Why a command failed, and the exit code that says so.
#[derive(Debug)]
pub struct Failure {
    /// Printed after `error: `.
    pub message: String,
    /// The process's exit code.
    pub exit: Exit,
}

impl Failure {
    /// A failure with `exit`.
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            exit,
        }
    }
}

/// A wrong command line.
pub fn usage(message: impl Into<String>) -> Failure {
    Failure::new(Exit::Usage, message)
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        let exit = match status.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => Exit::Unreachable,
            _ => Exit::Refused,
        };
        Self::new(exit, format!("{:?}: {}", status.code(), status.message()))
    }
}
