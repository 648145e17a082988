//! Switchyard ingest: takes events in over HTTP and stores them in the INGEST stream.
//!
//! `POST /v1/events/{source}?type=<event_type>` answers 202 with the event id only
//! after JetStream has acknowledged the event, so an accepted event is durable. A
//! repeated `Idempotency-Key` answers with the first event's id and `duplicate: true`.
//! Every rejection (unknown source, bad JSON, too large) publishes nothing.

#![forbid(unsafe_code)]

mod problem;

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::stream::Stream;
use axum::{
    Json, Router,
    body::Body,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, Serialize};
use switchyard_core::{
    catalog::{CatalogStore, Snapshot, validate_event_type},
    config::Settings,
    event, headers,
    nats::{self, Nats},
    shutdown::Shutdown,
    topology,
};
use tokio::{net::TcpListener, sync::watch};
use tracing::Instrument;

pub use crate::problem::Problem;

/// Errors that stop the ingest service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// NATS, topology or catalog set-up failed.
    #[error(transparent)]
    Core(#[from] switchyard_core::Error),
    /// The HTTP server failed.
    #[error("HTTP server: {0}")]
    Http(#[from] std::io::Error),
}

/// Seconds a client is told to wait when the event could not be stored.
const RETRY_AFTER_SECS: u64 = 1;
/// Longest accepted `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY: usize = 200;

struct Ingest {
    nats: Nats,
    stream: Stream<()>,
    catalog: watch::Receiver<Arc<Snapshot>>,
    max_body_bytes: usize,
}

/// Serves the ingest API on `listener` until `shutdown` starts draining.
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
    let stream = nats
        .jetstream
        .get_stream_no_info(topology::INGEST)
        .await
        .map_err(switchyard_core::Error::nats)?;
    let state = Arc::new(Ingest {
        nats,
        stream,
        catalog,
        max_body_bytes: settings.ingest.max_body_bytes,
    });
    tracing::info!(address = %listener.local_addr()?, "ingest listening");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}

fn router(state: Arc<Ingest>) -> Router {
    Router::new()
        .route("/v1/events/{source}", post(accept_event))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(state)
}

async fn ready(State(state): State<Arc<Ingest>>) -> Response {
    match state.nats.client.connection_state() {
        async_nats::connection::State::Connected => "ready".into_response(),
        other => (StatusCode::SERVICE_UNAVAILABLE, format!("NATS is {other}")).into_response(),
    }
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
}

async fn accept_event(
    State(state): State<Arc<Ingest>>,
    Path(source): Path<String>,
    Query(query): Query<EventQuery>,
    request_headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let span = tracing::info_span!(
        "ingest receive",
        otel.kind = "server",
        source = %source,
        event_type = tracing::field::Empty,
        event_id = tracing::field::Empty,
    );
    async move {
        let revision = {
            let snapshot = state.catalog.borrow();
            if snapshot.catalog.source(&source).is_none() {
                return Err(Problem::unknown_source(&source));
            }
            snapshot.revision
        };
        let event_type = query.event_type.ok_or_else(|| {
            Problem::bad_request("the query parameter `type` (the event type) is required")
        })?;
        validate_event_type(&event_type).map_err(Problem::bad_request)?;
        tracing::Span::current().record("event_type", event_type.as_str());
        check_content_type(&request_headers)?;
        let body = read_body(body, &request_headers, state.max_body_bytes).await?;
        if let Err(err) = serde_json::from_slice::<serde::de::IgnoredAny>(&body) {
            return Err(Problem::bad_request(format!(
                "the body is not valid JSON: {err}"
            )));
        }
        let idempotency_key = idempotency_key(&request_headers)?;
        let accepted = publish(
            &state,
            &source,
            &event_type,
            idempotency_key,
            body,
            revision,
        )
        .await?;
        tracing::Span::current().record("event_id", accepted.event_id.as_str());
        let status = if accepted.duplicate {
            StatusCode::OK
        } else {
            StatusCode::ACCEPTED
        };
        Ok((status, Json(accepted)).into_response())
    }
    .instrument(span)
    .await
}

fn check_content_type(request_headers: &HeaderMap) -> Result<(), Problem> {
    let Some(value) = request_headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let text = value.to_str().unwrap_or_default();
    let media = text
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if media == "application/json" || media.ends_with("+json") {
        Ok(())
    } else {
        Err(Problem::unsupported_media_type(text))
    }
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
        } else {
            Problem::bad_request(format!("the body could not be read: {err}"))
        }
    })
}

fn idempotency_key(request_headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(value) = request_headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value.to_str().unwrap_or_default();
    let valid = !key.is_empty()
        && key.len() <= MAX_IDEMPOTENCY_KEY
        && key.bytes().all(|b| (0x21..=0x7e).contains(&b));
    if valid {
        Ok(Some(key.to_owned()))
    } else {
        Err(Problem::bad_request(format!(
            "Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} visible ASCII characters"
        )))
    }
}

/// Publishes the event and waits for JetStream to store it.
async fn publish(
    state: &Ingest,
    source: &str,
    event_type: &str,
    idempotency_key: Option<String>,
    body: bytes::Bytes,
    catalog_revision: u64,
) -> Result<Accepted, Problem> {
    let event_id = event::new_event_id();
    let mut message_headers = async_nats::HeaderMap::new();
    let message_id = match &idempotency_key {
        // Scoped by source so two sources using the same key never collide.
        Some(key) => format!("{source}:{key}"),
        None => event_id.clone(),
    };
    message_headers.insert(headers::NATS_MSG_ID, message_id.as_str());
    message_headers.insert(headers::EVENT_ID, event_id.as_str());
    message_headers.insert(headers::RECEIVED_AT, event::now_rfc3339().as_str());
    message_headers.insert(headers::CONTENT_TYPE, "application/json");
    message_headers.insert(
        headers::CATALOG_REVISION,
        catalog_revision.to_string().as_str(),
    );
    headers::inject_current(&mut message_headers);

    let subject = topology::ingest_subject(source, event_type);
    let publish_span = tracing::info_span!("ingest publish", otel.kind = "producer", messaging.destination.name = %subject);
    let ack = async {
        state
            .nats
            .jetstream
            .publish_with_headers(subject.clone(), message_headers, body)
            .await?
            .await
    }
    .instrument(publish_span)
    .await
    .map_err(|err| {
        tracing::warn!(error = %err, event_id, "event could not be stored");
        Problem::unavailable(
            "the event could not be stored durably; it was not accepted, retry later",
            RETRY_AFTER_SECS,
        )
    })?;
    if !ack.duplicate {
        return Ok(Accepted {
            event_id,
            duplicate: false,
        });
    }
    let first = first_event_id(&state.stream, ack.sequence).await?;
    tracing::info!(
        event_id = first,
        "duplicate idempotency key; not published again"
    );
    Ok(Accepted {
        event_id: first,
        duplicate: true,
    })
}

/// Reads the id of the event stored at `sequence` (the original of a duplicate).
async fn first_event_id(stream: &Stream<()>, sequence: u64) -> Result<String, Problem> {
    let lookup = tokio::time::timeout(Duration::from_secs(5), stream.get_raw_message(sequence));
    match lookup.await {
        Ok(Ok(message)) => Ok(event::event_id(
            Some(&message.headers),
            message.sequence,
            message.time,
        )),
        Ok(Err(err)) => Err(Problem::unavailable(
            format!("the event is a duplicate but the original could not be read: {err}"),
            RETRY_AFTER_SECS,
        )),
        Err(_) => Err(Problem::unavailable(
            "the event is a duplicate but reading the original timed out",
            RETRY_AFTER_SECS,
        )),
    }
}
