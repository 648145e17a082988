//! The error type of the core crate.
//!
//! Each variant says whose fault it is: `Config` and `Invalid` are the operator's and a
//! retry cannot help; `Nats` is the infrastructure's and usually passes.

/// Errors raised by the core crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Settings that cannot be loaded or make no sense; fatal at start-up.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A catalog, mapping or other user input that fails validation.
    #[error("{0}")]
    Invalid(#[from] crate::catalog::ValidationErrors),
    /// NATS or JetStream failed; usually transient.
    #[error("NATS: {0}")]
    Nats(String),
    /// Existing streams or buckets differ from what this version needs in a way that
    /// cannot be updated in place.
    #[error("topology: {0}")]
    Topology(String),
    /// Another writer changed the catalog since it was read.
    #[error(
        "the catalog changed since revision {expected} (now {actual}); read it again and retry"
    )]
    Conflict {
        /// The revision the writer based its change on.
        expected: u64,
        /// The revision found in the store.
        actual: u64,
    },
    /// Tasks failed or did not stop in time during shutdown.
    #[error("shutdown: {0}")]
    Shutdown(String),
    /// A secret referenced by name could not be read.
    #[error("secret {name}: {reason}")]
    Secret {
        /// The secret's name (never its value).
        name: String,
        /// Why it could not be read.
        reason: String,
    },
}

impl Error {
    /// Wraps any NATS client error, keeping its text.
    pub fn nats(err: impl std::fmt::Display) -> Self {
        Self::Nats(err.to_string())
    }
}
