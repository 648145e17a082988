//! RFC 9457 problem details: every rejection says what is wrong in a body a client can
//! parse, with a status that tells whose fault it is and whether retrying helps.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use switchyard_core::contract::Violation;

/// A rejected request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the kind of problem.
    pub title: &'static str,
    /// The HTTP status.
    pub status: u16,
    /// What exactly is wrong with this request.
    pub detail: String,
    /// Seconds after which a retry may succeed (sent as `Retry-After` too).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// For 422: every failing value, by JSON pointer.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<Violation>,
    /// The request body was not read to its end, so the connection cannot be reused.
    #[serde(skip)]
    pub close_connection: bool,
}

impl Problem {
    fn new(status: StatusCode, slug: &str, title: &'static str, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("https://switchyard.dev/problems/{slug}"),
            title,
            status: status.as_u16(),
            detail: detail.into(),
            retry_after: None,
            errors: Vec::new(),
            close_connection: false,
        }
    }

    /// 400: the request is malformed.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "malformed",
            "Malformed request",
            detail,
        )
    }

    /// 401: the request is not authentic (signature, timestamp or API key).
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Not authenticated",
            detail,
        )
    }

    /// 404: the source exists but takes no webhooks.
    pub fn not_a_webhook_source(source: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "unknown-source",
            "Unknown source",
            format!(
                "source {source:?} has no webhook settings; send its events to /v1/events/{source}"
            ),
        )
    }

    /// 422: the event breaks its source's JSON Schema.
    pub fn invalid(event_type: &str, errors: Vec<Violation>) -> Self {
        Self {
            errors,
            ..Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "schema",
                "Event breaks its schema",
                format!("the {event_type} event does not match the source's schema; see errors"),
            )
        }
    }

    /// 429: the source is over its own rate limit.
    pub fn rate_limited(source: &str, wait: std::time::Duration) -> Self {
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        Self {
            retry_after: Some(seconds.max(1)),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests",
                format!("source {source:?} is over its rate limit"),
            )
        }
    }

    /// 404: no such source.
    pub fn unknown_source(source: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "unknown-source",
            "Unknown source",
            format!("no source named {source:?} in the catalog"),
        )
    }

    /// 413: the body is over the limit. Answered before the body is read to its end,
    /// so the connection is closed after the answer.
    pub fn too_large(limit: usize) -> Self {
        Self {
            close_connection: true,
            ..Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-large",
                "Body too large",
                format!("the body exceeds the limit of {limit} bytes"),
            )
        }
    }

    /// 413: a batch holds more events than the limit. The body was read, so the
    /// connection stays open.
    pub fn too_many_events(count: usize, limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            "Batch too large",
            format!(
                "the batch holds {count} events; at most {limit} are accepted in one request (ingest.max_batch_events)"
            ),
        )
    }

    /// 408: the body did not arrive in time; nothing was stored.
    pub fn request_timeout(detail: impl Into<String>) -> Self {
        Self {
            close_connection: true,
            ..Self::new(
                StatusCode::REQUEST_TIMEOUT,
                "request-timeout",
                "Request body too slow",
                format!("{}; nothing was stored, send it again", detail.into()),
            )
        }
    }

    /// 415: the body is not JSON.
    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::unsupported(content_type, "application/json")
    }

    /// 415: the body is neither JSON nor NDJSON (batches).
    pub fn unsupported_batch_media_type(content_type: &str) -> Self {
        Self::unsupported(content_type, "application/json or application/x-ndjson")
    }

    fn unsupported(content_type: &str, accepted: &str) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            format!("content type {content_type:?} is not accepted; send {accepted}"),
        )
    }

    /// 503: the event could not be stored durably; retry after `seconds`.
    pub fn unavailable(detail: impl Into<String>, seconds: u64) -> Self {
        Self {
            retry_after: Some(seconds),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Temporarily unavailable",
                detail,
            )
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let (retry_after, close) = (self.retry_after, self.close_connection);
        let mut response = (status, axum::Json(self)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}
