//! Replays: stored INGEST events re-run through the current routes and mapping
//! versions.
//!
//! A replay reads INGEST with an ordered consumer of its own (the `transform`
//! consumer is not touched), runs each event through the same [`Routing::outputs`]
//! as transform, and publishes what comes out under message ids of its own, so the
//! stream's duplicate window does not swallow it. Before publishing a delivery it
//! asks the delivery ledger: a delivery the provider already took is left out unless
//! the caller asks to redeliver, and then it carries `Switchyard-Redelivery` and gets
//! an idempotency key of its own. A delivery that never succeeded gets a fresh retry
//! budget.

use async_nats::jetstream::{
    self,
    consumer::{DeliverPolicy, pull::OrderedConfig},
    context::PublishAckFuture,
};
use futures::StreamExt;
use switchyard_core::{
    canary::Stopped,
    catalog::CatalogStore,
    event, headers,
    ledger::{self, Ledger},
    topology,
};
use time::OffsetDateTime;
use tokio::sync::mpsc;

use switchyard_transform::Routing;

use super::Reporter;
use crate::error::ApiError;

/// What to replay.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// The source whose events are replayed (implied by `route` when empty).
    pub source: String,
    /// Only this route, when not empty.
    pub route: String,
    /// First INGEST sequence (0: not by sequence).
    pub from_sequence: u64,
    /// Last INGEST sequence (0: the last stored when the replay starts).
    pub to_sequence: u64,
    /// First event by storage time.
    pub from_time: Option<OffsetDateTime>,
    /// Events stored after this are not replayed.
    pub to_time: Option<OffsetDateTime>,
    /// Also replay deliveries the provider already took.
    pub redeliver: bool,
    /// Count only.
    pub dry_run: bool,
}

/// How far a replay has got.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// Identifies the replay in headers and idempotency keys.
    pub replay_id: String,
    /// INGEST events read.
    pub scanned: u64,
    /// Events of the source from the start of the range to the newest stored.
    pub total: u64,
    /// Deliveries published (or that would be, on a dry run).
    pub published: u64,
    /// Deliveries left out because the provider already took them.
    pub already_delivered: u64,
    /// Events a route dead-lettered.
    pub dead_lettered: u64,
    /// Events no route took.
    pub not_routed: u64,
    /// INGEST sequence of the last event read.
    pub last_sequence: u64,
    /// The replay is over.
    pub done: bool,
    /// Nothing was published.
    pub dry_run: bool,
}

/// Publish acks awaited at once before reading further.
const ACK_BATCH: usize = 256;

/// Runs `request`, sending progress on `progress` as it goes; returns the final
/// count. Stops with [`ApiError::Cancelled`] when `progress` is closed.
pub async fn replay(
    jetstream: &jetstream::Context,
    request: Request,
    progress: mpsc::Sender<Progress>,
) -> Result<Progress, ApiError> {
    let snapshot = CatalogStore::open(jetstream).await?.load().await?;
    let routing = Routing::build(
        &snapshot.catalog,
        snapshot.revision,
        &Routing::default(),
        &Stopped::read(jetstream).await?,
    )
    .map_err(|err| ApiError::Invalid(format!("the catalog does not compile: {err}")))?;
    let source = check(&request, &snapshot.catalog, &routing)?;
    let route = (!request.route.is_empty()).then_some(request.route.as_str());

    let mut stream = jetstream
        .get_stream(topology::INGEST)
        .await
        .map_err(ApiError::nats)?;
    let last_stored = stream
        .info()
        .await
        .map_err(ApiError::nats)?
        .state
        .last_sequence;
    let end = match request.to_sequence {
        0 => last_stored,
        to => to.min(last_stored),
    };
    let mut state = Progress {
        replay_id: event::new_event_id(),
        dry_run: request.dry_run,
        ..Progress::default()
    };
    tracing::info!(replay_id = %state.replay_id, source, route, ?request, "replay starting");
    if request.from_sequence > end {
        return finish(state, &Reporter::new(progress)).await;
    }
    let deliver_policy = match (request.from_sequence, request.from_time) {
        (0, None) => DeliverPolicy::All,
        (0, Some(start_time)) => DeliverPolicy::ByStartTime { start_time },
        (start_sequence, _) => DeliverPolicy::ByStartSequence { start_sequence },
    };
    let mut consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: topology::source_ingest_filter(source),
            deliver_policy,
            description: Some(format!("replay {}", state.replay_id)),
            ..Default::default()
        })
        .await
        .map_err(ApiError::nats)?;
    state.total = consumer.info().await.map_err(ApiError::nats)?.num_pending;
    if state.total == 0 {
        return finish(state, &Reporter::new(progress)).await;
    }
    let ledger = Ledger::open(jetstream).await?;
    let mut messages = consumer.messages().await.map_err(ApiError::nats)?;
    let mut acks: Vec<PublishAckFuture> = Vec::new();
    let mut reporter = Reporter::new(progress);
    while let Some(message) = messages.next().await {
        let message = message.map_err(ApiError::nats)?;
        let info = message.info().map_err(ApiError::nats)?;
        let (sequence, published, pending) = (info.stream_sequence, info.published, info.pending);
        if sequence > end || request.to_time.is_some_and(|to| published > to) {
            break;
        }
        state.scanned += 1;
        state.last_sequence = sequence;
        let event_id = event::event_id(message.headers.as_ref(), sequence, published);
        let Some(outputs) = switchyard_transform::outputs(
            &routing, &message, &event_id, sequence, published, route,
        ) else {
            state.not_routed += 1;
            continue;
        };
        if outputs.is_empty() {
            state.not_routed += 1;
        }
        for mut output in outputs {
            let message_id = if output.dead_letter {
                state.dead_lettered += 1;
                format!("{event_id}:{}:dlq:replay:{}", output.route, state.replay_id)
            } else {
                let key = Ledger::key(&ledger::delivery_key(&event_id, &output.route, None));
                let record = ledger.get(&key).await?;
                if record.delivered {
                    if !request.redeliver {
                        state.already_delivered += 1;
                        continue;
                    }
                    output
                        .headers
                        .insert(headers::REDELIVERY, state.replay_id.as_str());
                } else if !request.dry_run {
                    ledger.reset_attempts(&key).await?;
                }
                state.published += 1;
                format!("{event_id}:{}:replay:{}", output.route, state.replay_id)
            };
            if request.dry_run {
                continue;
            }
            output
                .headers
                .insert(headers::NATS_MSG_ID, message_id.as_str());
            acks.push(switchyard_transform::publish(jetstream, output).await?);
        }
        if acks.len() >= ACK_BATCH {
            await_acks(&mut acks).await?;
        }
        reporter.tick(&state).await?;
        if pending == 0 || sequence >= end {
            break;
        }
    }
    await_acks(&mut acks).await?;
    finish(state, &reporter).await
}

/// The source to read, after checking the request against the catalog.
fn check<'a>(
    request: &'a Request,
    catalog: &'a switchyard_core::catalog::Catalog,
    routing: &'a Routing,
) -> Result<&'a str, ApiError> {
    if request.from_sequence != 0 && request.from_time.is_some() {
        return Err(ApiError::Invalid(
            "from_sequence and from_time: give one start, not both".into(),
        ));
    }
    if request.to_sequence != 0 && request.to_sequence < request.from_sequence {
        return Err(ApiError::Invalid(format!(
            "to_sequence {} is before from_sequence {}",
            request.to_sequence, request.from_sequence
        )));
    }
    if let (Some(from), Some(to)) = (request.from_time, request.to_time)
        && to < from
    {
        return Err(ApiError::Invalid("to_time is before from_time".into()));
    }
    let source = if request.route.is_empty() {
        if request.source.is_empty() {
            return Err(ApiError::Invalid(
                "source or route: say which events to replay".into(),
            ));
        }
        request.source.as_str()
    } else {
        let route = routing.route(&request.route).ok_or_else(|| {
            ApiError::NotFound(format!("route: no route named {:?}", request.route))
        })?;
        if !request.source.is_empty() && request.source != route.route.source {
            return Err(ApiError::Invalid(format!(
                "source: route {:?} takes events of {:?}, not {:?}",
                request.route, route.route.source, request.source
            )));
        }
        route.route.source.as_str()
    };
    if catalog.source(source).is_none() {
        return Err(ApiError::NotFound(format!(
            "source: no source named {source:?}"
        )));
    }
    Ok(source)
}

async fn await_acks(acks: &mut Vec<PublishAckFuture>) -> Result<(), ApiError> {
    for ack in acks.drain(..) {
        ack.await.map_err(ApiError::nats)?;
    }
    Ok(())
}

async fn finish(mut state: Progress, reporter: &Reporter<Progress>) -> Result<Progress, ApiError> {
    state.done = true;
    tracing::info!(
        replay_id = %state.replay_id,
        scanned = state.scanned,
        published = state.published,
        already_delivered = state.already_delivered,
        dead_lettered = state.dead_lettered,
        not_routed = state.not_routed,
        dry_run = state.dry_run,
        "replay done"
    );
    reporter.finish(&state).await;
    Ok(state)
}
