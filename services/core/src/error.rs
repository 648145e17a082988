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
    /// NATS or JetStream failed; usually transient. The client's error is kept as the
    /// source, so a caller can look at its kind.
    #[error("NATS: {}", with_context(context.as_deref(), source))]
    Nats {
        /// What was being done, when it helps to say.
        context: Option<String>,
        /// The client's error.
        #[source]
        source: BoxError,
    },
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

/// Any error a client library returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

impl Error {
    /// Wraps a NATS client error.
    pub fn nats(err: impl Into<BoxError>) -> Self {
        Self::Nats {
            context: None,
            source: err.into(),
        }
    }

    /// Wraps a NATS client error met while doing `context`.
    pub fn nats_while(context: impl Into<String>, err: impl Into<BoxError>) -> Self {
        Self::Nats {
            context: Some(context.into()),
            source: err.into(),
        }
    }
}

fn with_context(context: Option<&str>, source: &BoxError) -> String {
    match context {
        Some(context) => format!("{context}: {source}"),
        None => source.to_string(),
    }
}
