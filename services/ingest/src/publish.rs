//! The one way an event enters INGEST (or, when it broke its source's contract, the
//! source's dead-letter subject): its headers and message id, then the publish and the
//! wait for JetStream's ack. Nothing is accepted without the ack.

use std::time::Duration;

use switchyard_core::{
    contract::Violation,
    event, headers,
    metrics::{self, SourceLabels},
    nats::Nats,
    outcome::FailureCategory,
    telemetry, topology,
};
use tracing::Instrument;

use crate::Accepted;

/// An event on its way into INGEST (or, when it broke its schema, the DLQ).
pub(crate) struct Outgoing<'a> {
    pub(crate) source: &'a str,
    pub(crate) event_type: &'a str,
    pub(crate) key: Option<&'a str>,
    pub(crate) body: bytes::Bytes,
    pub(crate) revision: u64,
    pub(crate) violations: Option<Vec<Violation>>,
}

/// Publishes the event and waits, at most `timeout`, for JetStream to store it.
/// Errors say why it was not stored; nothing is accepted without the ack.
pub(crate) async fn publish(
    nats: &Nats,
    timeout: Duration,
    event: Outgoing<'_>,
) -> Result<Accepted, String> {
    let deadline = tokio::time::Instant::now() + timeout;
    send(nats, event, None, deadline, timeout)
        .await?
        .confirm(deadline, timeout)
        .await
}

/// Fails, saying why `what` could not be stored, while NATS is not connected.
pub(crate) fn connected(nats: &Nats, what: &str) -> Result<(), String> {
    let state = nats.client.connection_state();
    if state == async_nats::connection::State::Connected {
        Ok(())
    } else {
        Err(format!(
            "{what} could not be stored: NATS is {state}; retry later"
        ))
    }
}

/// What the events of one batch share: one publish span (the OpenTelemetry
/// conventions' batch send), its trace context and the time they were received. The
/// batch's sends and confirms run inside [`Batch::span`].
pub(crate) struct Batch {
    pub(crate) span: tracing::Span,
    context: async_nats::HeaderMap,
    received_at: String,
}

impl Batch {
    pub(crate) fn new(source: &str, count: usize) -> Self {
        let span = telemetry::batch_publish_span(source, count);
        let mut context = async_nats::HeaderMap::new();
        headers::inject_span(&span, &mut context);
        Self {
            span,
            context,
            received_at: event::now_rfc3339(),
        }
    }
}

/// An event handed to the server, its ack not yet read.
pub(crate) struct Pending {
    event_id: String,
    source: String,
    dead_lettered: bool,
    /// Its own publish span; none for a batch member, which runs in its batch's.
    span: Option<tracing::Span>,
    ack: async_nats::jetstream::context::PublishAckFuture,
}

/// Hands the event to the server without waiting for its ack, so many events can be
/// in flight at once (a batch); [`Pending::confirm`] reads the ack. Events sent one
/// after another reach the stream in that order. Handing over waits at most until
/// `deadline` (the client's buffer is full while NATS is away).
pub(crate) async fn send(
    nats: &Nats,
    event: Outgoing<'_>,
    batch: Option<&Batch>,
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> Result<Pending, String> {
    connected(nats, "the event")?;
    let event_id = match event.key {
        Some(key) => event::keyed_event_id(event.source, key),
        None => event::new_event_id(),
    };
    let mut message_headers =
        batch.map_or_else(async_nats::HeaderMap::new, |batch| batch.context.clone());
    // Scoped by source so two sources using the same key never collide.
    let message_id = match event.key {
        Some(key) => format!("{}:{key}", event.source),
        None => event_id.clone(),
    };
    message_headers.insert(headers::NATS_MSG_ID, message_id.as_str());
    message_headers.insert(headers::EVENT_ID, event_id.as_str());
    match batch {
        Some(batch) => message_headers.insert(headers::RECEIVED_AT, batch.received_at.as_str()),
        None => message_headers.insert(headers::RECEIVED_AT, event::now_rfc3339().as_str()),
    }
    message_headers.insert(headers::CONTENT_TYPE, "application/json");
    message_headers.insert(
        headers::CATALOG_REVISION,
        event.revision.to_string().as_str(),
    );
    let subject = match &event.violations {
        None => topology::ingest_subject(event.source, event.event_type),
        Some(violations) => {
            message_headers.insert(headers::SOURCE, event.source);
            message_headers.insert(headers::EVENT_TYPE, event.event_type);
            message_headers.insert(headers::FAILURE_CATEGORY, FailureCategory::Schema.as_str());
            let reason = violations
                .iter()
                .map(Violation::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            message_headers.insert(
                headers::FAILURE_REASON,
                headers::sanitize_value(&reason).as_str(),
            );
            message_headers.insert(headers::ATTEMPTS, "0");
            topology::source_dlq_subject(event.source)
        }
    };
    let span = batch
        .is_none()
        .then(|| telemetry::publish_span(&subject, &mut message_headers, event.body.len()));
    let sent = nats
        .jetstream
        .publish_with_headers(subject, message_headers, event.body);
    let sent = match &span {
        Some(span) => tokio::time::timeout_at(deadline, sent.instrument(span.clone())).await,
        None => tokio::time::timeout_at(deadline, sent).await,
    };
    match sent {
        Err(_) => Err(timed_out(span.as_ref(), timeout)),
        Ok(Err(err)) => Err(not_stored(span.as_ref(), &err)),
        Ok(Ok(ack)) => Ok(Pending {
            event_id,
            source: event.source.to_owned(),
            dead_lettered: event.violations.is_some(),
            span,
            ack,
        }),
    }
}

impl Pending {
    /// Waits until `deadline` for JetStream to store the event.
    pub(crate) async fn confirm(
        self,
        deadline: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<Accepted, String> {
        let stored = match &self.span {
            Some(span) => {
                let ack = self.ack.into_future().instrument(span.clone());
                tokio::time::timeout_at(deadline, ack).await
            }
            None => tokio::time::timeout_at(deadline, self.ack.into_future()).await,
        };
        let ack = match stored {
            Ok(Ok(ack)) => ack,
            Ok(Err(err)) => return Err(not_stored(self.span.as_ref(), &err)),
            Err(_) => return Err(timed_out(self.span.as_ref(), timeout)),
        };
        if ack.duplicate {
            let span = self.span.unwrap_or_else(tracing::Span::current);
            span.in_scope(|| {
                tracing::info!(
                    event_id = self.event_id.as_str(),
                    "duplicate idempotency key; not published again"
                )
            });
        } else {
            metrics::metrics()
                .events_published
                .get_or_create(&SourceLabels {
                    source: self.source,
                })
                .inc();
        }
        Ok(Accepted {
            event_id: self.event_id,
            duplicate: ack.duplicate,
            dead_lettered: self.dead_lettered,
        })
    }
}

/// `span` is the event's own publish span, or none inside its batch's.
fn timed_out(span: Option<&tracing::Span>, timeout: Duration) -> String {
    let span = span.cloned().unwrap_or_else(tracing::Span::current);
    telemetry::record_error(&span, "timeout");
    span.in_scope(|| {
        tracing::warn!(
            timeout_ms = timeout.as_millis() as u64,
            "storing the event timed out"
        )
    });
    format!(
        "the event was not stored within {}ms; it was not accepted, retry later",
        timeout.as_millis()
    )
}

fn not_stored(span: Option<&tracing::Span>, err: &dyn std::fmt::Display) -> String {
    let span = span.cloned().unwrap_or_else(tracing::Span::current);
    telemetry::record_error(&span, "publish");
    span.in_scope(|| tracing::warn!(error = %err, "event could not be stored"));
    "the event could not be stored durably; it was not accepted, retry later".into()
}
