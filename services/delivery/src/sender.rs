//! Sends one delivery and classifies the answer.
//!
//! The classification is made once, here: delivered (2xx); deferred (429 or 503 with
//! `Retry-After`: the whole provider pauses and the message's retry budget is not
//! spent); retryable (timeouts, connection errors, and the statuses in the provider's
//! `retry_on`, by default 408, 425, 429 and 5xx); unauthorized (401, retried once with
//! fresh OAuth2 credentials); rejected (anything else, and a request the outbound
//! guard blocked, which no retry can change). It alone decides between ack,
//! NAK with a delay and the dead-letter queue.

use std::time::{Duration, Instant};

use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use switchyard_core::{
    catalog::{self, Provider, RetryPolicy},
    headers,
    outbound::{Failure, FailureKind},
    outcome::ErrorKind,
    secrets::{ExposeSecret, SecretSource},
    telemetry,
};

use crate::Error;

/// Bytes of a failed response kept for the outcome record and the dead letter.
const RESPONSE_EXCERPT: usize = 512;

/// What the provider answered to one request.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    /// The HTTP status, when the provider answered.
    pub status: Option<u16>,
    /// What went wrong before any answer (timeout, connection, TLS, blocked,
    /// credentials).
    pub failure: Option<Failure>,
    /// The request was never sent (its credentials could not be obtained).
    pub not_sent: bool,
    /// `Retry-After`, as a delay from now.
    pub retry_after: Option<Duration>,
    /// Requests the provider still takes before its limit resets, and when it resets.
    pub budget: Option<(u64, Duration)>,
    /// The start of the response body of a failed request, one bounded line.
    pub excerpt: String,
    /// Where a 3xx pointed.
    pub location: Option<String>,
    /// Time from sending to the answer (or failure).
    pub latency: Duration,
    /// The response body, when the request asked to keep it (batch results).
    pub body: Option<bytes::Bytes>,
    /// What the provider said about this one event of a batch.
    pub detail: Option<String>,
}

impl Answer {
    /// The kind of failure for metrics and outcome records.
    pub fn error_kind(&self) -> ErrorKind {
        match (self.status, &self.failure) {
            (Some(status), _) => ErrorKind::of_status(status),
            (None, _) if self.not_sent => ErrorKind::Credentials,
            (None, Some(failure)) => failure.kind.into(),
            (None, None) => ErrorKind::Other,
        }
    }

    /// Records the answer on the request's client span: the status, and for a status
    /// of 400 or more or no answer at all, an error with its type (`503`, `timeout`).
    pub fn trace(&self, span: &tracing::Span) {
        match self.status {
            Some(status) => {
                span.record("http.response.status_code", i64::from(status));
                if status >= 400 {
                    telemetry::record_error(span, &status.to_string());
                }
            }
            None => telemetry::record_error(
                span,
                match self.error_kind() {
                    ErrorKind::Other => "_OTHER",
                    kind => kind.as_str(),
                },
            ),
        }
    }
}

/// What to do after an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The provider accepted the delivery.
    Delivered,
    /// The provider asked for a pause; nothing is counted.
    Deferred(Duration),
    /// A later attempt may succeed; counts against the retry budget.
    Retryable,
    /// The credentials were refused.
    Unauthorized,
    /// No attempt can succeed.
    Rejected,
}

/// Classifies `answer` under `retry`.
pub fn classify(answer: &Answer, retry: &RetryPolicy) -> Verdict {
    let Some(status) = answer.status else {
        return match &answer.failure {
            Some(failure) if failure.kind == FailureKind::Blocked => Verdict::Rejected,
            _ => Verdict::Retryable,
        };
    };
    match (status, answer.retry_after) {
        (200..=299, _) => Verdict::Delivered,
        (429 | 503, Some(delay)) => Verdict::Deferred(delay),
        (401, _) if !retry.retries_status(401) => Verdict::Unauthorized,
        (status, _) if retry.retries_status(status) => Verdict::Retryable,
        _ => Verdict::Rejected,
    }
}

impl Answer {
    /// Why this attempt did not succeed, for logs, outcome records and dead letters.
    pub fn reason(&self) -> Option<String> {
        if let Some(failure) = &self.failure {
            return Some(failure.message.clone());
        }
        let status = self.status?;
        if (200..300).contains(&status) {
            return None;
        }
        let location = self
            .location
            .as_ref()
            .map(|to| format!(" (redirect to {to}; update the provider URL)"))
            .unwrap_or_default();
        let detail = self
            .detail
            .as_ref()
            .map(|detail| format!(": {detail}"))
            .unwrap_or_default();
        Some(format!("HTTP {status}{location}{detail}"))
    }
}

/// A provider's endpoint with its static headers resolved, ready to send.
pub struct Sender {
    client: reqwest::Client,
    method: reqwest::Method,
    url: reqwest::Url,
    /// The URL without user name or password, for spans.
    url_shown: String,
    headers: HeaderMap,
}

impl Sender {
    /// Builds the sender for `provider` with `client`, reading secret header values.
    pub fn new(
        provider: &Provider,
        secrets: &SecretSource,
        client: reqwest::Client,
    ) -> Result<Self, Error> {
        let invalid = |what: String| Error::Provider {
            provider: provider.name.clone(),
            reason: what,
        };
        let mut resolved = HeaderMap::new();
        for (name, value) in &provider.headers {
            let header_name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| invalid(format!("headers.{name} is not a valid header name")))?;
            let header_value = match value {
                catalog::HeaderValue::Literal(text) => HeaderValue::from_str(text)
                    .map_err(|_| invalid(format!("headers.{name} is not a valid header value")))?,
                catalog::HeaderValue::Secret(reference) => {
                    let secret = secrets.read(&reference.secret)?;
                    let mut value = HeaderValue::from_str(&format!(
                        "{}{}",
                        reference.prefix,
                        secret.expose_secret()
                    ))
                    .map_err(|_| {
                        invalid(format!(
                            "secret {} does not make a valid value for header {name}",
                            reference.secret
                        ))
                    })?;
                    value.set_sensitive(true);
                    value
                }
            };
            resolved.insert(header_name, header_value);
        }
        let url: reqwest::Url = provider
            .url
            .parse()
            .map_err(|err| invalid(format!("url: {err}")))?;
        let mut shown = url.clone();
        // Both fail only for URLs that cannot have credentials.
        let _ = shown.set_username("");
        let _ = shown.set_password(None);
        Ok(Self {
            client,
            method: reqwest::Method::from_bytes(provider.method.as_str().as_bytes())
                .expect("catalog methods are valid"),
            url,
            url_shown: shown.to_string(),
            headers: resolved,
        })
    }

    /// The client span of one request, by the OpenTelemetry HTTP conventions (named
    /// after the method); `resends` counts the delivery's earlier attempts, `batch`
    /// the events of a batch request. A batch request starts a trace of its own,
    /// linked to each member's.
    pub fn span(&self, resends: u32, batch: Option<usize>) -> tracing::Span {
        let parent = if batch.is_some() {
            None
        } else {
            tracing::Span::current().id()
        };
        tracing::info_span!(
            parent: parent,
            "send",
            otel.name = self.method.as_str(),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
            http.request.method = self.method.as_str(),
            http.request.resend_count = (resends > 0).then_some(i64::from(resends)),
            http.response.status_code = tracing::field::Empty,
            url.full = self.url_shown,
            server.address = self.url.host_str(),
            server.port = self.url.port_or_known_default().map(i64::from),
            messaging.batch.message_count = batch.map(|count| count as i64),
        )
    }

    /// Sends `body` with `extra` headers (metadata, trace context, authentication);
    /// with `keep_body`, up to that many bytes of the response body are kept.
    pub async fn send(
        &self,
        body: bytes::Bytes,
        extra: HeaderMap,
        keep_body: Option<usize>,
    ) -> Answer {
        let request = self
            .client
            .request(self.method.clone(), self.url.clone())
            .headers(self.headers.clone())
            .headers(extra)
            .body(body);
        let started = Instant::now();
        let result = request.send().await;
        let mut answer = Answer::default();
        match result {
            Ok(response) => {
                let status = response.status().as_u16();
                answer.status = Some(status);
                let found = response.headers();
                answer.retry_after = found
                    .get(header::RETRY_AFTER)
                    .and_then(|value| value.to_str().ok())
                    .and_then(switchyard_core::ratelimit::parse_retry_after);
                answer.budget = rate_limit_budget(found);
                answer.location = found
                    .get(header::LOCATION)
                    .and_then(|value| value.to_str().ok())
                    .map(str::to_owned);
                let success = response.status().is_success();
                match keep_body {
                    Some(limit) => {
                        let kept = read_up_to(response, limit).await;
                        if !success {
                            answer.excerpt = excerpt_of(&kept);
                        }
                        answer.body = Some(kept.into());
                    }
                    None if !success => {
                        answer.excerpt = excerpt_of(&read_up_to(response, RESPONSE_EXCERPT).await);
                    }
                    None => {}
                }
            }
            Err(err) => answer.failure = Some(Failure::of(&err)),
        }
        answer.latency = started.elapsed();
        answer
    }
}

/// The provider's remaining budget from `RateLimit-Remaining`/`RateLimit-Reset`, their
/// `X-RateLimit-` forms, or the combined `RateLimit: remaining=…, reset=…` header. A
/// reset above a billion is a Unix time, as some providers send.
pub fn rate_limit_budget(found: &HeaderMap) -> Option<(u64, Duration)> {
    let number = |name: &str| {
        found
            .get(name)
            .and_then(|value| value.to_str().ok())
            .and_then(|text| text.trim().parse::<u64>().ok())
    };
    let (remaining, reset) = match (
        number("ratelimit-remaining").or_else(|| number("x-ratelimit-remaining")),
        number("ratelimit-reset").or_else(|| number("x-ratelimit-reset")),
    ) {
        (Some(remaining), Some(reset)) => (remaining, reset),
        _ => {
            let combined = found.get("ratelimit")?.to_str().ok()?;
            let param = |key: &str| {
                combined.split([',', ';']).find_map(|part| {
                    let (k, v) = part.trim().split_once('=')?;
                    (k.trim() == key)
                        .then(|| v.trim().parse::<u64>().ok())
                        .flatten()
                })
            };
            (param("remaining")?, param("reset")?)
        }
    };
    let reset = if reset > 1_000_000_000 {
        let now = time::OffsetDateTime::now_utc().unix_timestamp() as u64;
        reset.saturating_sub(now)
    } else {
        reset
    };
    Some((remaining, Duration::from_secs(reset)))
}

/// The response body, or its first `limit` bytes.
async fn read_up_to(mut response: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    while bytes.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            _ => break,
        }
    }
    bytes.truncate(limit);
    bytes
}

/// The start of a response body as one bounded line.
fn excerpt_of(body: &[u8]) -> String {
    let start = &body[..body.len().min(RESPONSE_EXCERPT)];
    headers::sanitize_value(&String::from_utf8_lossy(start))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, retry_after: Option<u64>) -> Answer {
        Answer {
            status: Some(status),
            retry_after: retry_after.map(Duration::from_secs),
            ..Default::default()
        }
    }

    #[test]
    fn answers_are_classified_once() {
        let retry = RetryPolicy::default();
        assert_eq!(classify(&answer(204, None), &retry), Verdict::Delivered);
        assert_eq!(
            classify(&answer(429, Some(3)), &retry),
            Verdict::Deferred(Duration::from_secs(3))
        );
        assert_eq!(
            classify(&answer(503, Some(0)), &retry),
            Verdict::Deferred(Duration::ZERO)
        );
        assert_eq!(classify(&answer(429, None), &retry), Verdict::Retryable);
        for status in [408, 425, 500, 502, 504] {
            assert_eq!(
                classify(&answer(status, None), &retry),
                Verdict::Retryable,
                "{status}"
            );
        }
        assert_eq!(classify(&answer(401, None), &retry), Verdict::Unauthorized);
        for status in [301, 400, 404, 409, 422] {
            assert_eq!(
                classify(&answer(status, None), &retry),
                Verdict::Rejected,
                "{status}"
            );
        }
        let failed = |kind| Answer {
            failure: Some(Failure {
                kind,
                message: "…".into(),
            }),
            ..Default::default()
        };
        for kind in [
            FailureKind::Timeout,
            FailureKind::Connect,
            FailureKind::Tls,
            FailureKind::Other,
        ] {
            assert_eq!(
                classify(&failed(kind), &retry),
                Verdict::Retryable,
                "{kind:?}"
            );
        }
        assert_eq!(
            classify(&failed(FailureKind::Blocked), &retry),
            Verdict::Rejected
        );
        assert_eq!(
            failed(FailureKind::Blocked).error_kind(),
            ErrorKind::Blocked
        );
        assert_eq!(failed(FailureKind::Tls).error_kind(), ErrorKind::Tls);
    }

    #[test]
    fn the_classification_is_configurable() {
        let retry: RetryPolicy = serde_json::from_str(r#"{"retry_on": [409, "503"]}"#).unwrap();
        assert_eq!(classify(&answer(409, None), &retry), Verdict::Retryable);
        assert_eq!(classify(&answer(500, None), &retry), Verdict::Rejected);
    }

    #[test]
    fn rate_limit_headers_in_their_common_forms() {
        let mut found = HeaderMap::new();
        found.insert("ratelimit-remaining", HeaderValue::from_static("3"));
        found.insert("ratelimit-reset", HeaderValue::from_static("10"));
        assert_eq!(
            rate_limit_budget(&found),
            Some((3, Duration::from_secs(10)))
        );

        let mut found = HeaderMap::new();
        found.insert(
            "ratelimit",
            HeaderValue::from_static("limit=100, remaining=0, reset=7"),
        );
        assert_eq!(rate_limit_budget(&found), Some((0, Duration::from_secs(7))));

        let mut found = HeaderMap::new();
        let reset = time::OffsetDateTime::now_utc().unix_timestamp() + 20;
        found.insert("x-ratelimit-remaining", HeaderValue::from_static("5"));
        found.insert(
            "x-ratelimit-reset",
            HeaderValue::from_str(&reset.to_string()).unwrap(),
        );
        let (remaining, until) = rate_limit_budget(&found).unwrap();
        assert_eq!(remaining, 5);
        assert!(until >= Duration::from_secs(19) && until <= Duration::from_secs(20));
        assert_eq!(rate_limit_budget(&HeaderMap::new()), None);
    }
}
