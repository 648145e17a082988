//! Switchyard ingest: takes events in over HTTP, from signed webhooks and by polling,
//! and stores them in the INGEST stream.
//!
//! `POST /v1/events/{source}?type=<event_type>` (API key when the source has keys) and
//! `POST /webhooks/{source}` (signature checked per source) answer 202 with the event
//! id only after JetStream has acknowledged the event, so an accepted event is
//! durable. A repeated idempotency key answers 200 with the first event's id and
//! `duplicate: true`. Every rejection — unknown source, bad signature, bad JSON, too
//! large, over the source's rate, against its schema — publishes nothing.

#![forbid(unsafe_code)]

mod admit;
mod batch;
mod cdc;
mod observe;
mod outbox;
mod pgoutput;
mod poll;
mod postgres;
mod problem;
mod publish;
mod readers;
mod replication;
mod sources;
mod verify;

use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    body::Body,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use switchyard_core::{
    catalog::{CatalogStore, OnInvalid, validate_event_type},
    config::Settings,
    nats::{self, Nats},
    outbound::Guard,
    secrets::SecretSource,
    shutdown::Shutdown,
    topology,
};
use tokio::{net::TcpListener, sync::watch};

pub use crate::problem::Problem;
use crate::{
    observe::observe_request,
    publish::{Outgoing, publish},
    sources::{Lookup, Ready, Sources},
};

/// Errors that stop the ingest service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// NATS, topology or catalog set-up failed.
    #[error(transparent)]
    Core(#[from] switchyard_core::Error),
    /// The HTTP server failed.
    #[error("HTTP server: {0}")]
    Http(#[from] std::io::Error),
    /// A source cannot be served as configured (e.g. a secret is missing).
    #[error("{0}")]
    Source(String),
}

/// Seconds a client is told to wait when the event could not be stored.
const RETRY_AFTER_SECS: u64 = 1;
/// Longest accepted `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY: usize = 200;

struct Ingest {
    nats: Nats,
    sources: watch::Receiver<Arc<Sources>>,
    max_body_bytes: usize,
    max_batch_events: usize,
    publish_timeout: Duration,
    /// Places for requests being served at once (`ingest.max_in_flight`).
    in_flight: tokio::sync::Semaphore,
}

/// Serves the ingest API on `listener`, and runs the pollers, until `shutdown`.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<(), Error> {
    let nats = nats::connect(&settings.nats, "ingest").await?;
    topology::ensure_topology(&nats.jetstream, &settings.topology).await?;
    let catalog = CatalogStore::open(&nats.jetstream)
        .await?
        .watch(&shutdown)
        .await?;
    let secrets = SecretSource::new(&settings.secrets.dir);
    let guard = Guard::new(&settings.outbound)?;
    let sources = sources::track(catalog, secrets, guard, &shutdown).map_err(Error::Source)?;
    let state = Arc::new(Ingest {
        nats,
        sources,
        max_body_bytes: settings.ingest.max_body_bytes,
        max_batch_events: settings.ingest.max_batch_events,
        publish_timeout: settings.ingest.publish_timeout,
        in_flight: tokio::sync::Semaphore::new(settings.ingest.max_in_flight),
    });
    outbox::check_at_start(&state)
        .await
        .map_err(Error::Source)?;
    cdc::check_at_start(&state).await.map_err(Error::Source)?;
    poll::start(state.clone(), &settings, &shutdown);
    outbox::start(state.clone(), &settings, &shutdown);
    cdc::start(state.clone(), &settings, &shutdown);
    tracing::info!(address = %listener.local_addr()?, "ingest listening");
    switchyard_core::http::serve(
        listener,
        router(state),
        &settings.ingest.http,
        "ingest",
        shutdown,
    )
    .await?;
    Ok(())
}

fn router(state: Arc<Ingest>) -> Router {
    let counted = Router::new()
        .route("/v1/events/{source}", post(accept_event))
        .route("/v1/events/{source}/batch", post(batch::accept_batch))
        .route("/webhooks/{source}", post(accept_webhook))
        .layer(axum::middleware::from_fn(observe_request))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            admit::admit,
        ));
    Router::new()
        .merge(counted)
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(switchyard_core::admin::ready))
        .with_state(state)
}

#[derive(Debug, Deserialize)]
struct EventQuery {
    #[serde(rename = "type")]
    event_type: Option<String>,
}

/// The answer to an accepted event.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Accepted {
    /// The event's id; for a duplicate, the id of the first event with that key.
    pub event_id: String,
    /// Whether an event with the same idempotency key was already accepted.
    pub duplicate: bool,
    /// The event broke its source's schema and was stored in the DLQ, not INGEST.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dead_lettered: bool,
}

async fn accept_event(
    State(state): State<Arc<Ingest>>,
    Path(source): Path<String>,
    Query(query): Query<EventQuery>,
    request_headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let (ready, revision) = admit(&state, &source)?;
    authorize(&ready, &request_headers)?;
    let event_type = query.event_type.ok_or_else(|| {
        Problem::bad_request("the query parameter `type` (the event type) is required")
    })?;
    validate_event_type(&event_type).map_err(Problem::bad_request)?;
    check_content_type(&request_headers)?;
    let body = read_body(body, &request_headers, state.max_body_bytes).await?;
    // Parsed into a document only when a schema needs it; the body is stored as sent.
    let document = match ready.has_schema(&event_type) {
        true => Some(parse_json(&body)?),
        false => check_json(&body).map(|()| None)?,
    };
    let key = idempotency_key(
        request_headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok()),
        "the Idempotency-Key header",
    )?;
    store(
        &state,
        &ready,
        revision,
        &event_type,
        key,
        body,
        document.as_ref(),
    )
    .await
}

async fn accept_webhook(
    State(state): State<Arc<Ingest>>,
    Path(source): Path<String>,
    Query(query): Query<EventQuery>,
    request_headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let (ready, revision) = admit(&state, &source)?;
    let (Some(webhook), Some(verifier)) = (&ready.config.webhook, &ready.verifier) else {
        return Err(Problem::not_a_webhook_source(&source));
    };
    check_content_type(&request_headers)?;
    let body = read_body(body, &request_headers, state.max_body_bytes).await?;
    // The raw bytes are verified before anything parses them.
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    verifier
        .verify(&request_headers, &body, now)
        .map_err(|rejection| Problem::unauthorized(rejection.to_string()))?;
    let document = parse_json(&body)?;
    let from = webhook
        .event_type
        .clone()
        .or_else(|| webhook.verify.default_event_type());
    let event_type = from
        .as_ref()
        .and_then(|from| sources::extract(from, &request_headers, &document))
        .or(query.event_type)
        .map(|name| sources::normalize_event_type(&name))
        .ok_or_else(|| {
            Problem::bad_request(match &from {
                Some(from) => format!(
                    "the event type was not found in {}",
                    sources::describe(from)
                ),
                None => "the query parameter `type` (the event type) is required".to_owned(),
            })
        })?;
    validate_event_type(&event_type).map_err(Problem::bad_request)?;
    let from = webhook
        .idempotency_key
        .clone()
        .unwrap_or_else(|| webhook.verify.default_idempotency_key());
    let key = match sources::extract(&from, &request_headers, &document) {
        Some(key) => idempotency_key(Some(&key), &sources::describe(&from))?,
        None => idempotency_key(
            request_headers
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok()),
            "the Idempotency-Key header",
        )?,
    };
    store(
        &state,
        &ready,
        revision,
        &event_type,
        key,
        body,
        Some(&document),
    )
    .await
}

/// Finds the source and takes one event from its rate limit.
fn admit(state: &Ingest, source: &str) -> Result<(Arc<Ready>, u64), Problem> {
    let (ready, revision) = find(state, source)?;
    ready
        .limiter
        .try_acquire()
        .map_err(|wait| Problem::rate_limited(source, wait))?;
    Ok((ready, revision))
}

/// The source ready to serve, and the catalog revision it is served under.
fn find(state: &Ingest, source: &str) -> Result<(Arc<Ready>, u64), Problem> {
    let sources = state.sources.borrow().clone();
    match sources.get(source) {
        Lookup::Ready(ready) => Ok((ready, sources.revision)),
        Lookup::Broken(reason) => Err(Problem::unavailable(reason, 30)),
        Lookup::Unknown => Err(Problem::unknown_source(source)),
    }
}

/// Checks the API key when the source has keys.
fn authorize(ready: &Ready, request_headers: &HeaderMap) -> Result<(), Problem> {
    if ready.api_keys.required() {
        ready
            .api_keys
            .check(request_headers)
            .map_err(|rejection| Problem::unauthorized(rejection.to_string()))?;
    }
    Ok(())
}

fn parse_json(body: &[u8]) -> Result<Value, Problem> {
    serde_json::from_slice(body).map_err(not_json)
}

/// Checks that `body` is JSON without building its document: a fraction of
/// [`parse_json`]'s cost, which was a sixth of ingest's CPU per event.
fn check_json(body: &[u8]) -> Result<(), Problem> {
    serde_json::from_slice::<serde::de::IgnoredAny>(body)
        .map(|_| ())
        .map_err(not_json)
}

fn not_json(err: serde_json::Error) -> Problem {
    Problem::bad_request(format!("the body is not valid JSON: {err}"))
}

/// Checks the event against its schemas and stores it, answering 202 (or 200 for a
/// duplicate).
async fn store(
    state: &Ingest,
    ready: &Ready,
    revision: u64,
    event_type: &str,
    key: Option<String>,
    body: bytes::Bytes,
    document: Option<&Value>,
) -> Result<Response, Problem> {
    tracing::Span::current().record("event_type", event_type);
    let checked = document.map_or(Ok(()), |document| ready.check(event_type, document));
    let violations = match checked {
        Ok(()) => None,
        Err(violations) if ready.config.on_invalid == OnInvalid::Reject => {
            return Err(Problem::invalid(event_type, violations));
        }
        Err(violations) => Some(violations),
    };
    let event = Outgoing {
        source: &ready.config.name,
        event_type,
        key: key.as_deref(),
        body,
        revision,
        violations,
    };
    let accepted = publish(&state.nats, state.publish_timeout, event)
        .await
        .map_err(|reason| Problem::unavailable(reason, RETRY_AFTER_SECS))?;
    tracing::Span::current().record("event_id", accepted.event_id.as_str());
    let status = if accepted.duplicate {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(accepted)).into_response())
}

fn check_content_type(request_headers: &HeaderMap) -> Result<(), Problem> {
    match media_type(request_headers) {
        Some((text, media)) if !is_json(&media) => Err(Problem::unsupported_media_type(&text)),
        _ => Ok(()),
    }
}

/// The `Content-Type` as sent and its media type, lowercased without parameters.
fn media_type(request_headers: &HeaderMap) -> Option<(String, String)> {
    let text = request_headers
        .get(header::CONTENT_TYPE)?
        .to_str()
        .unwrap_or_default();
    let media = text
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    Some((text.to_owned(), media))
}

fn is_json(media: &str) -> bool {
    media == "application/json" || media.ends_with("+json")
}

async fn read_body(
    body: Body,
    request_headers: &HeaderMap,
    limit: usize,
) -> Result<bytes::Bytes, Problem> {
    let declared = request_headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(Problem::too_large(limit));
    }
    axum::body::to_bytes(body, limit).await.map_err(|err| {
        let err = err.into_inner();
        if err.is::<http_body_util::LengthLimitError>() {
            Problem::too_large(limit)
        } else if switchyard_core::http::is_body_timeout(err.as_ref()) {
            Problem::request_timeout(err.to_string())
        } else {
            Problem::bad_request(format!("the body could not be read: {err}"))
        }
    })
}

/// Checks an idempotency key read from `from`.
fn idempotency_key(key: Option<&str>, from: &str) -> Result<Option<String>, Problem> {
    let Some(key) = key else {
        return Ok(None);
    };
    if is_valid_key(key) {
        Ok(Some(key.to_owned()))
    } else {
        Err(Problem::bad_request(format!(
            "the idempotency key in {from} must be 1-{MAX_IDEMPOTENCY_KEY} visible ASCII characters"
        )))
    }
}

fn is_valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_IDEMPOTENCY_KEY
        && key.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use switchyard_core::catalog::Extract;

    use super::*;

    fn with_content_type(value: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(header::CONTENT_TYPE, value.parse().unwrap());
        map
    }

    #[test]
    fn json_media_types_are_accepted_with_parameters_and_any_case() {
        for ok in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/cloudevents+json",
        ] {
            assert!(check_content_type(&with_content_type(ok)).is_ok(), "{ok}");
        }
        for refused in ["text/plain", "application/x-www-form-urlencoded", "json"] {
            let problem = check_content_type(&with_content_type(refused)).unwrap_err();
            assert_eq!(problem.status, 415);
            assert!(problem.detail.contains(refused));
        }
        assert!(check_content_type(&HeaderMap::new()).is_ok());
    }

    #[test]
    fn values_are_read_from_headers_json_pointers_or_fixed() {
        let mut request = HeaderMap::new();
        request.insert("x-shopify-topic", "orders/create".parse().unwrap());
        let body = serde_json::json!({"id": 42, "type": "invoice.paid", "nested": {"key": "k-1"}, "empty": ""});
        let header = Extract::header("X-Shopify-Topic");
        assert_eq!(
            sources::extract(&header, &request, &body).as_deref(),
            Some("orders/create")
        );
        assert_eq!(
            sources::normalize_event_type("orders/create"),
            "orders.create"
        );
        assert_eq!(
            sources::extract(&Extract::json("/id"), &request, &body).as_deref(),
            Some("42")
        );
        assert_eq!(
            sources::extract(&Extract::json("/nested/key"), &request, &body).as_deref(),
            Some("k-1")
        );
        assert_eq!(
            sources::extract(&Extract::json("/empty"), &request, &body),
            None
        );
        assert_eq!(
            sources::extract(&Extract::json("/nested"), &request, &body),
            None
        );
        assert_eq!(
            sources::extract(&Extract::json("/missing"), &request, &body),
            None
        );
        assert_eq!(
            sources::extract(&Extract::header("X-Missing"), &request, &body),
            None
        );
    }

    proptest! {
        /// Any content type, key or body is answered with a verdict, never a panic, and
        /// accepted keys are exactly the visible-ASCII ones up to 200 characters.
        #[test]
        fn parsing_arbitrary_input_never_panics(
            content_type in "[ -~]{0,80}",
            key in "\\PC{0,220}",
            body in proptest::collection::vec(any::<u8>(), 0..300),
            pointer in "(/[a-z0-9~]{0,5}){0,4}",
        ) {
            if let Ok(value) = content_type.parse() {
                let mut map = HeaderMap::new();
                map.insert(header::CONTENT_TYPE, value);
                let _ = check_content_type(&map);
            }
            let verdict = idempotency_key(Some(&key), "the Idempotency-Key header");
            let visible = !key.is_empty() && key.len() <= MAX_IDEMPOTENCY_KEY && key.bytes().all(|b| (0x21..=0x7e).contains(&b));
            prop_assert_eq!(verdict.is_ok(), visible);
            // Checking without a document agrees with parsing one.
            prop_assert_eq!(check_json(&body).is_ok(), parse_json(&body).is_ok());
            if let Ok(document) = parse_json(&body) {
                let _ = sources::extract(&Extract::json(&pointer), &HeaderMap::new(), &document);
            } else {
                prop_assert_eq!(parse_json(&body).unwrap_err().status, 400);
                prop_assert_eq!(check_json(&body).unwrap_err().status, 400);
            }
        }
    }
}
