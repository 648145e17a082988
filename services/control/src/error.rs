//! The one place where control's errors become gRPC statuses.
//!
//! The services' work returns [`ApiError`] (a core error converts into it), and `?`
//! turns it into a `Status`; which `tonic::Code` an error gets is decided here, by
//! whose fault it is:
//! invalid input is the caller's, a conflict means read again, NATS trouble is
//! transient (`UNAVAILABLE`), and the rest is ours (`INTERNAL`).

use switchyard_core::Error as CoreError;
use tonic::Status;

/// Why a request of the control API failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is contradictory or incomplete.
    #[error("{0}")]
    Invalid(String),
    /// What it names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The catalog, NATS or the topology failed.
    #[error(transparent)]
    Core(#[from] CoreError),
    /// Whoever asked for it stopped listening.
    #[error("the request was cancelled")]
    Cancelled,
}

impl ApiError {
    /// A NATS client error.
    pub fn nats(err: impl Into<switchyard_core::BoxError>) -> Self {
        Self::Core(CoreError::nats(err))
    }

    /// A NATS client error met while doing `context`.
    pub fn nats_while(
        context: impl Into<String>,
        err: impl Into<switchyard_core::BoxError>,
    ) -> Self {
        Self::Core(CoreError::nats_while(context, err))
    }
}

impl From<ApiError> for Status {
    fn from(err: ApiError) -> Self {
        match err {
            ApiError::Invalid(message) => Status::invalid_argument(message),
            ApiError::NotFound(message) => Status::not_found(message),
            ApiError::Cancelled => Status::cancelled("the request was cancelled"),
            ApiError::Core(err) => match err {
                CoreError::Invalid(errors) => Status::invalid_argument(errors.to_string()),
                CoreError::Conflict { .. } => Status::aborted(err.to_string()),
                CoreError::Nats { .. } => Status::unavailable(err.to_string()),
                other => Status::internal(other.to_string()),
            },
        }
    }
}
