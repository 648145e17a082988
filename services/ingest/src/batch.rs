//! `POST /v1/events/{source}/batch`: many events in one request.
//!
//! A batch is only a transport. Faults of the whole request — authentication, an
//! unreadable body, too many events, an unknown source, the source's rate limit
//! (which counts events) — get the usual problem answer and store nothing. Otherwise
//! every item is checked like a single event (type, idempotency key, the source's
//! schemas) and stored on its own; the answer lists one result per item, in item
//! order, and is sent only once every stored item has been acknowledged by JetStream.
//! The items are handed to the server one after another without waiting, so their
//! acks come back pipelined and same-key items keep their order in the stream.

use std::sync::Arc;

use axum::{
    Json,
    body::Body,
    extract::{Path, State},
    http::HeaderMap,
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, value::RawValue};
use switchyard_core::{
    catalog::{OnInvalid, validate_event_type},
    contract::Violation,
};
use tracing::Instrument;

use crate::{
    Accepted, Ingest, Problem, RETRY_AFTER_SECS, authorize, find, idempotency_key, is_json,
    media_type,
    publish::{Batch, Outgoing, Pending, connected, send},
    read_body,
    sources::Ready,
};

/// One item of a batch as sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Item<'a> {
    /// The event type, e.g. `order.created`.
    #[serde(rename = "type")]
    event_type: String,
    /// Optional; a repeated key is answered as a duplicate.
    #[serde(default)]
    idempotency_key: Option<String>,
    /// The event's body, as sent (a slice of the request body).
    #[serde(borrow)]
    data: &'a RawValue,
}

/// The answer to a batch.
#[derive(Debug, Serialize)]
struct Answer {
    results: Vec<ItemResult>,
}

/// What became of one item.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum ItemResult {
    Stored(Accepted),
    Failed { error: ItemError },
}

/// Why one item was not stored: the status and detail it would have had alone.
#[derive(Debug, Serialize)]
struct ItemError {
    status: u16,
    detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<Violation>,
}

impl ItemResult {
    fn failed(index: usize, problem: Problem) -> Self {
        Self::Failed {
            error: ItemError {
                status: problem.status,
                detail: format!("events[{index}]: {}", problem.detail),
                errors: problem.errors,
            },
        }
    }
}

/// How the body lists its items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// `{"events": [...]}`.
    Json,
    /// One item per line.
    Ndjson,
}

pub(crate) async fn accept_batch(
    State(state): State<Arc<Ingest>>,
    Path(source): Path<String>,
    request_headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let (ready, revision) = find(&state, &source)?;
    authorize(&ready, &request_headers)?;
    let format = match media_type(&request_headers) {
        None => Format::Json,
        Some((_, media)) if is_json(&media) => Format::Json,
        Some((_, media))
            if matches!(
                media.as_str(),
                "application/x-ndjson" | "application/ndjson"
            ) =>
        {
            Format::Ndjson
        }
        Some((text, _)) => return Err(Problem::unsupported_batch_media_type(&text)),
    };
    let body = read_body(body, &request_headers, state.max_body_bytes).await?;
    let items = parse(&body, format)?;
    if items.len() > state.max_batch_events {
        return Err(Problem::too_many_events(
            items.len(),
            state.max_batch_events,
        ));
    }
    let count = u32::try_from(items.len()).unwrap_or(u32::MAX);
    ready
        .limiter
        .try_acquire_many(count)
        .map_err(|wait| Problem::rate_limited(&source, wait))?;
    connected(&state.nats, "the events")
        .map_err(|reason| Problem::unavailable(reason, RETRY_AFTER_SECS))?;
    tracing::Span::current().record("event_type", "batch");
    let batch = Batch::new(&ready.config.name, items.len());
    let span = batch.span.clone();
    let results = store(&state, &ready, revision, &body, items, &batch)
        .instrument(span)
        .await;
    Ok(Json(Answer { results }).into_response())
}

/// Checks and stores each item in one publish span, answering for each in item order
/// once every stored item is acknowledged.
async fn store(
    state: &Ingest,
    ready: &Ready,
    revision: u64,
    body: &bytes::Bytes,
    items: Vec<Result<Item<'_>, Problem>>,
    batch: &Batch,
) -> Vec<ItemResult> {
    let deadline = tokio::time::Instant::now() + state.publish_timeout;
    let mut sent: Vec<Result<Pending, ItemResult>> = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        let outgoing = match item.and_then(|item| check(ready, body, item)) {
            Ok(outgoing) => outgoing,
            Err(problem) => {
                sent.push(Err(ItemResult::failed(index, problem)));
                continue;
            }
        };
        let event = Outgoing {
            source: &ready.config.name,
            event_type: &outgoing.event_type,
            key: outgoing.key.as_deref(),
            body: outgoing.body,
            revision,
            violations: outgoing.violations,
        };
        let sent_item = send(
            &state.nats,
            event,
            Some(batch),
            deadline,
            state.publish_timeout,
        )
        .await;
        sent.push(sent_item.map_err(|reason| {
            ItemResult::failed(index, Problem::unavailable(reason, RETRY_AFTER_SECS))
        }));
    }
    let mut results = Vec::with_capacity(sent.len());
    for (index, item) in sent.into_iter().enumerate() {
        results.push(match item {
            Ok(pending) => match pending.confirm(deadline, state.publish_timeout).await {
                Ok(accepted) => ItemResult::Stored(accepted),
                Err(reason) => {
                    ItemResult::failed(index, Problem::unavailable(reason, RETRY_AFTER_SECS))
                }
            },
            Err(failed) => failed,
        });
    }
    results
}

/// An item that passed its checks.
struct Checked {
    event_type: String,
    key: Option<String>,
    body: bytes::Bytes,
    violations: Option<Vec<Violation>>,
}

/// Checks one item as a single event would be checked.
fn check(ready: &Ready, body: &bytes::Bytes, item: Item<'_>) -> Result<Checked, Problem> {
    validate_event_type(&item.event_type)
        .map_err(|err| Problem::bad_request(format!("type: {err}")))?;
    let key = idempotency_key(item.idempotency_key.as_deref(), "idempotency_key")?;
    // Parsed only when a schema needs it; the body is stored as sent.
    let checked = match ready.has_schema(&item.event_type) {
        false => Ok(()),
        true => {
            let document: Value =
                serde_json::from_str(item.data.get()).expect("the item parsed as JSON");
            ready.check(&item.event_type, &document)
        }
    };
    let violations = match checked {
        Ok(()) => None,
        Err(violations) if ready.config.on_invalid == OnInvalid::Reject => {
            return Err(Problem::invalid(&item.event_type, violations));
        }
        Err(violations) => Some(violations),
    };
    Ok(Checked {
        body: body.slice_ref(item.data.get().as_bytes()),
        event_type: item.event_type,
        key,
        violations,
    })
}

/// The items of the body, each parsed or with why it could not be. A body that is
/// not a batch at all is a fault of the whole request.
fn parse(body: &[u8], format: Format) -> Result<Vec<Result<Item<'_>, Problem>>, Problem> {
    let item = |text, line: Option<usize>| {
        serde_json::from_str::<Item>(text).map_err(|err| {
            Problem::bad_request(match line {
                Some(line) if err.is_syntax() || err.is_eof() => {
                    format!("line {line} is not valid JSON: {err}")
                }
                _ => err.to_string(),
            })
        })
    };
    let items: Vec<_> = match format {
        Format::Json => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Envelope<'a> {
                #[serde(borrow)]
                events: Vec<&'a RawValue>,
            }
            let envelope: Envelope = serde_json::from_slice(body).map_err(|err| {
                Problem::bad_request(format!(
                    "the body is not a batch ({{\"events\": [...]}}): {err}"
                ))
            })?;
            envelope
                .events
                .into_iter()
                .map(|raw| item(raw.get(), None))
                .collect()
        }
        Format::Ndjson => {
            let text = std::str::from_utf8(body)
                .map_err(|err| Problem::bad_request(format!("the body is not UTF-8: {err}")))?;
            text.lines()
                .enumerate()
                .filter(|(_, line)| !line.trim().is_empty())
                .map(|(number, line)| item(line, Some(number + 1)))
                .collect()
        }
    };
    if items.is_empty() {
        return Err(Problem::bad_request("the batch holds no events"));
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_ndjson_list_the_same_items_and_bad_items_say_why() {
        let json = br#"{"events": [
            {"type": "order.created", "idempotency_key": "k-1", "data": {"id": 1}},
            {"type": "order.created", "data": {"id": 2}},
            {"data": {"id": 3}}
        ]}"#;
        let ndjson = b"{\"type\": \"order.created\", \"idempotency_key\": \"k-1\", \"data\": {\"id\": 1}}\n\
            {\"type\": \"order.created\", \"data\": {\"id\": 2}}\r\n\n{\"data\": {\"id\": 3}}\nnot json\n";
        let from_json = parse(json, Format::Json).unwrap();
        let from_ndjson = parse(ndjson, Format::Ndjson).unwrap();
        for items in [&from_json, &from_ndjson] {
            let first = items[0].as_ref().unwrap();
            assert_eq!(first.event_type, "order.created");
            assert_eq!(first.idempotency_key.as_deref(), Some("k-1"));
            assert!(items[1].as_ref().unwrap().idempotency_key.is_none());
            let missing = items[2].as_ref().unwrap_err();
            assert!(
                missing.detail.contains("missing field `type`"),
                "{missing:?}"
            );
        }
        assert_eq!(from_json.len(), 3);
        assert_eq!(from_ndjson.len(), 4);
        let bad_line = from_ndjson[3].as_ref().unwrap_err();
        assert!(
            bad_line.detail.contains("line 5 is not valid JSON"),
            "{bad_line:?}"
        );
        let typo = parse(br#"{"events": [{"type": "a.b", "dat": {}}]}"#, Format::Json).unwrap();
        assert!(
            typo[0]
                .as_ref()
                .unwrap_err()
                .detail
                .contains("unknown field `dat`")
        );
        for whole in [&b"[]"[..], b"{\"events\": []}", b"{\"events\": {}}", b"{"] {
            let problem = parse(whole, Format::Json).unwrap_err();
            assert_eq!(problem.status, 400, "{problem:?}");
        }
        assert_eq!(parse(b"\n\n", Format::Ndjson).unwrap_err().status, 400);
    }
}
