//! Sends one delivery to the provider and classifies the answer.
//!
//! The classification is made once, here: delivered (2xx), retryable (timeouts,
//! connection errors, 408, 425, 429, 5xx) or rejected (any other answer). It alone
//! decides between ack, NAK with a delay and the dead-letter queue.

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use reqwest::header::{self, HeaderName, HeaderValue};
use switchyard_core::{
    catalog::{self, Provider},
    headers,
    secrets::{ExposeSecret, SecretSource},
};

use crate::Error;

/// Bytes of a failed response kept for the outcome record and the dead letter.
const RESPONSE_EXCERPT: usize = 512;

/// What became of one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The provider accepted the delivery.
    Delivered,
    /// A later attempt may succeed.
    Retryable,
    /// No attempt can succeed.
    Rejected,
}

/// One attempt and its result.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The classification.
    pub verdict: Verdict,
    /// The HTTP status, when the provider answered.
    pub status: Option<u16>,
    /// Why it did not succeed, with a bounded excerpt of the response.
    pub reason: Option<String>,
    /// Time from sending to the answer (or failure).
    pub latency: Duration,
}

/// A provider's endpoint with its headers resolved, ready to send.
pub struct Sender {
    client: reqwest::Client,
    method: reqwest::Method,
    url: reqwest::Url,
    headers: header::HeaderMap,
}

impl Sender {
    /// Builds the sender for `provider`, reading its secrets.
    pub fn new(provider: &Provider, secrets: &SecretSource) -> Result<Self, Error> {
        let invalid = |what: String| Error::Provider {
            provider: provider.name.clone(),
            reason: what,
        };
        let mut resolved = header::HeaderMap::new();
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
        let client = reqwest::Client::builder()
            .timeout(provider.timeout)
            .connect_timeout(provider.timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("switchyard/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| invalid(format!("HTTP client: {err}")))?;
        Ok(Self {
            client,
            method: reqwest::Method::from_bytes(provider.method.as_str().as_bytes())
                .expect("catalog methods are valid"),
            url: provider
                .url
                .parse()
                .map_err(|err| invalid(format!("url: {err}")))?,
            headers: resolved,
        })
    }

    /// Sends `body` with the delivery's metadata headers and classifies the answer.
    pub async fn send(
        &self,
        body: bytes::Bytes,
        message_headers: Option<&HeaderMap>,
        idempotency_key: &str,
        attempt: u32,
        trace: &HeaderMap,
    ) -> Attempt {
        let mut request = self
            .client
            .request(self.method.clone(), self.url.clone())
            .headers(self.headers.clone())
            .header(
                header::CONTENT_TYPE,
                headers::get(message_headers, headers::CONTENT_TYPE).unwrap_or("application/json"),
            )
            .header("Idempotency-Key", idempotency_key)
            .header("Switchyard-Attempt", attempt);
        for name in [
            headers::EVENT_ID,
            headers::SOURCE,
            headers::EVENT_TYPE,
            headers::ROUTE,
            headers::MAPPING,
        ] {
            if let Some(value) = headers::get(message_headers, name) {
                request = request.header(name, value);
            }
        }
        for name in ["traceparent", "tracestate"] {
            if let Some(value) = headers::get(Some(trace), name) {
                request = request.header(name, value);
            }
        }
        let started = Instant::now();
        let result = request.body(body).send().await;
        let attempt = |verdict, status, reason| Attempt {
            verdict,
            status,
            reason,
            latency: started.elapsed(),
        };
        match result {
            Ok(response) => {
                let status = response.status();
                let code = status.as_u16();
                if status.is_success() {
                    return attempt(Verdict::Delivered, Some(code), None);
                }
                let verdict = if matches!(code, 408 | 425 | 429) || status.is_server_error() {
                    Verdict::Retryable
                } else {
                    Verdict::Rejected
                };
                let location = response
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|value| value.to_str().ok())
                    .map(|to| format!(" (redirect to {to}; update the provider URL)"))
                    .unwrap_or_default();
                let excerpt = excerpt(response).await;
                let reason = format!("HTTP {code}{location}: {excerpt}");
                attempt(verdict, Some(code), Some(reason))
            }
            Err(err) => {
                let kind = if err.is_timeout() {
                    "timed out"
                } else if err.is_connect() {
                    "connection failed"
                } else {
                    "request failed"
                };
                let reason = format!("{kind}: {}", error_chain(&err));
                attempt(Verdict::Retryable, None, Some(reason))
            }
        }
    }
}

/// The start of the response body, cut to a bounded length.
async fn excerpt(mut response: reqwest::Response) -> String {
    let mut bytes = Vec::new();
    while bytes.len() < RESPONSE_EXCERPT {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            _ => break,
        }
    }
    bytes.truncate(RESPONSE_EXCERPT);
    headers::sanitize_value(&String::from_utf8_lossy(&bytes))
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}
