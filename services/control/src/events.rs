//! `switchyard.v1.EventService`: one event and its lineage across every hop.
//!
//! JetStream has no index by event id, so the stores are scanned: INGEST from the
//! time inside a UUIDv7 event id (ids minted by ingest), or from its start for ids
//! derived from a source key; then OUTCOMES and DLQ from the time the event was
//! received, and DELIVER whole (it holds only what is still owed). Each scan stops at
//! a time limit and the answer says when one did. The delivery ledger says what the
//! provider took.

use std::{collections::BTreeMap, time::Duration};

use async_nats::{
    HeaderMap,
    jetstream::{
        self,
        consumer::{DeliverPolicy, pull::OrderedConfig},
    },
};
use futures::StreamExt;
use switchyard_core::{
    catalog::CatalogStore,
    config::Scope,
    event, headers,
    ledger::{self, Ledger},
    outcome::{Outcome, OutcomeRecord},
    topology::{self, DeadLetterOwner},
    verdict::{Facts, Failed},
};
use time::OffsetDateTime;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::{
    auth,
    error::ApiError,
    explain::Explainer,
    proto::convert::{timestamp, timestamp_of},
    proto::{self, GetEventRequest, RouteLineage, event_service_server::EventService},
};

/// How long one store is scanned at most.
const SCAN_LIMIT: Duration = Duration::from_secs(5);
/// How far before a UUIDv7's time the INGEST scan starts, and how far after it ends.
const CLOCK_SLACK: Duration = Duration::from_secs(60);

/// Event lookups over the streams in `jetstream`.
#[derive(Clone)]
pub struct EventApi {
    jetstream: jetstream::Context,
    store: CatalogStore,
    explainer: Explainer,
}

impl EventApi {
    /// Looks events up in the streams of `jetstream`, explaining failed attempts with
    /// `explainer`.
    pub fn new(jetstream: jetstream::Context, store: CatalogStore, explainer: Explainer) -> Self {
        Self {
            jetstream,
            store,
            explainer,
        }
    }
}

/// A stored message a scan found.
struct Found {
    sequence: u64,
    subject: String,
    headers: Option<HeaderMap>,
    payload: bytes::Bytes,
    published: OffsetDateTime,
}

/// Messages of `stream` on `subject` from `start` that `wanted` picks, until the end
/// of the stream, `until` (by publish time), or [`SCAN_LIMIT`]; and whether it got to
/// the end.
async fn scan(
    jetstream: &jetstream::Context,
    stream: &str,
    subject: &str,
    start: Option<OffsetDateTime>,
    until: Option<OffsetDateTime>,
    mut wanted: impl FnMut(&jetstream::Message) -> bool,
) -> Result<(Vec<Found>, bool), Status> {
    let unavailable =
        |err: async_nats::Error| ApiError::nats_while(format!("stream {stream}"), err);
    let stream = jetstream
        .get_stream(stream)
        .await
        .map_err(|err| unavailable(err.into()))?;
    let mut consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: subject.to_owned(),
            deliver_policy: start.map_or(DeliverPolicy::All, |start_time| {
                DeliverPolicy::ByStartTime { start_time }
            }),
            description: Some("event lookup".into()),
            ..Default::default()
        })
        .await
        .map_err(|err| unavailable(err.into()))?;
    if consumer
        .info()
        .await
        .map_err(|err| unavailable(err.into()))?
        .num_pending
        == 0
    {
        return Ok((Vec::new(), true));
    }
    let mut messages = consumer
        .messages()
        .await
        .map_err(|err| unavailable(err.into()))?;
    let deadline = Instant::now() + SCAN_LIMIT;
    let mut found = Vec::new();
    loop {
        let next = tokio::time::timeout_at(deadline, messages.next()).await;
        let Ok(Some(message)) = next else {
            return Ok((found, false));
        };
        let message = message.map_err(|err| unavailable(err.into()))?;
        let info = message.info().map_err(&unavailable)?;
        let (sequence, pending, published) = (info.stream_sequence, info.pending, info.published);
        if until.is_some_and(|until| published > until) {
            return Ok((found, true));
        }
        if wanted(&message) {
            found.push(Found {
                sequence,
                subject: message.subject.to_string(),
                headers: message.headers.clone(),
                payload: message.payload.clone(),
                published,
            });
        }
        if pending == 0 {
            return Ok((found, true));
        }
    }
}

/// The messages of `event_id` still owed in DELIVER. A work-queue stream takes no
/// consumer beside delivery's, so it is read message by message with direct gets;
/// it holds only what is not yet delivered.
async fn owed(
    jetstream: &jetstream::Context,
    event_id: &str,
) -> Result<(Vec<Found>, bool), Status> {
    let unavailable = |err: async_nats::Error| ApiError::nats_while("stream DELIVER", err);
    let stream = jetstream
        .get_stream_no_info(topology::DELIVER)
        .await
        .map_err(|err| unavailable(err.into()))?;
    let deadline = Instant::now() + SCAN_LIMIT;
    let mut found = Vec::new();
    let mut sequence = 0;
    loop {
        if Instant::now() >= deadline {
            return Ok((found, false));
        }
        let message = match stream
            .get_first_raw_message_by_subject(topology::ALL_DELIVER, sequence)
            .await
        {
            Ok(message) => message,
            Err(err) if err.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => {
                return Ok((found, true));
            }
            Err(err) => return Err(unavailable(err.into()).into()),
        };
        if headers::get(Some(&message.headers), headers::EVENT_ID) == Some(event_id) {
            found.push(Found {
                sequence: message.sequence,
                subject: message.subject.to_string(),
                headers: Some(message.headers.clone()),
                payload: message.payload.clone(),
                published: message.time,
            });
        }
        sequence = message.sequence + 1;
    }
}

fn has_event(message: &jetstream::Message, event_id: &str) -> bool {
    headers::get(message.headers.as_ref(), headers::EVENT_ID) == Some(event_id)
}

/// The time inside a UUIDv7 event id.
fn minted_at(event_id: &str) -> Option<OffsetDateTime> {
    let id = uuid::Uuid::parse_str(event_id).ok()?;
    if id.get_version_num() != 7 {
        return None;
    }
    let (seconds, nanos) = id.get_timestamp()?.to_unix();
    OffsetDateTime::from_unix_timestamp_nanos(
        i128::from(seconds) * 1_000_000_000 + i128::from(nanos),
    )
    .ok()
}

#[tonic::async_trait]
impl EventService for EventApi {
    async fn get_event(
        &self,
        request: Request<GetEventRequest>,
    ) -> Result<Response<proto::Event>, Status> {
        auth::require(&request, Scope::Read, "GetEvent")?;
        let event_id = request.into_inner().event_id.trim().to_owned();
        if event_id.is_empty() {
            return Err(Status::invalid_argument("event_id: must be set"));
        }
        let minted = minted_at(&event_id);
        let (ingest, mut complete) = scan(
            &self.jetstream,
            topology::INGEST,
            topology::ALL_INGEST,
            minted.map(|at| at - CLOCK_SLACK),
            minted.map(|at| at + CLOCK_SLACK),
            |message| {
                let Ok(info) = message.info() else {
                    return false;
                };
                event::event_id(
                    message.headers.as_ref(),
                    info.stream_sequence,
                    info.published,
                ) == event_id
            },
        )
        .await?;
        let Some(record) = ingest.into_iter().next() else {
            let more = if complete {
                ""
            } else {
                " (the scan stopped at its time limit)"
            };
            return Err(Status::not_found(format!(
                "no event {event_id} in INGEST{more}"
            )));
        };
        let (source, event_type) =
            topology::parse_ingest_subject(&record.subject).unwrap_or_default();
        let received_at = event::received_at(record.headers.as_ref(), record.published);
        let since = Some(record.published - Duration::from_secs(1));

        let (attempts, outcomes_complete) = scan(
            &self.jetstream,
            topology::OUTCOMES,
            topology::ALL_OUTCOMES,
            since,
            None,
            |message| {
                serde_json::from_slice::<OutcomeRecord>(&message.payload)
                    .is_ok_and(|record| record.attempt().is_some_and(|a| a.event_id == event_id))
            },
        )
        .await?;
        let (dead, dlq_complete) = scan(
            &self.jetstream,
            topology::DLQ,
            topology::ALL_DLQ,
            since,
            None,
            |m| has_event(m, &event_id),
        )
        .await?;
        let (waiting, deliver_complete) = owed(&self.jetstream, &event_id).await?;
        complete &= outcomes_complete && dlq_complete && deliver_complete;

        // Routes: today's matches, then any other that left a trace.
        let snapshot = self.store.load().await.map_err(ApiError::from)?;
        let mut routes: BTreeMap<String, RouteLineage> = BTreeMap::new();
        let entry = |routes: &mut BTreeMap<String, RouteLineage>, route: &str| {
            routes.entry(route.to_owned()).or_insert_with(|| {
                let configured = snapshot.catalog.routes.iter().find(|r| r.name == route);
                RouteLineage {
                    route: route.to_owned(),
                    provider: configured.map(|r| r.provider.clone()).unwrap_or_default(),
                    mapping: configured
                        .map(|r| r.mapping.to_string())
                        .unwrap_or_default(),
                    idempotency_key: ledger::delivery_key(&event_id, route, None),
                    state: "none".into(),
                    ..Default::default()
                }
            });
        };
        for route in snapshot
            .catalog
            .routes
            .iter()
            .filter(|r| r.source == source && r.matches_event_type(event_type))
        {
            entry(&mut routes, &route.name);
        }
        let mut failed = Vec::new();
        for found in &attempts {
            let Ok(record) = serde_json::from_slice::<OutcomeRecord>(&found.payload) else {
                continue;
            };
            let Some(attempt) = record.attempt() else {
                continue;
            };
            entry(&mut routes, &attempt.route);
            let lineage = routes.get_mut(&attempt.route).expect("just added");
            lineage.provider = record.provider.clone();
            if attempt.category != Outcome::Delivered {
                failed.push((lineage.attempts.len(), attempt.clone()));
            }
            lineage.attempts.push(proto::Attempt {
                attempt: attempt.attempt,
                at: timestamp(&record.at),
                status: attempt.status.map(u32::from).unwrap_or_default(),
                latency_ms: attempt.latency_ms,
                category: attempt.category.to_string(),
                reason: attempt.reason.clone().unwrap_or_default(),
                batch: attempt.batch.clone().unwrap_or_default(),
                ..Default::default()
            });
        }
        for (found, state) in dead
            .iter()
            .map(|f| (f, "dead_lettered"))
            .chain(waiting.iter().map(|f| (f, "waiting")))
        {
            let route = headers::get(found.headers.as_ref(), headers::ROUTE).unwrap_or_default();
            entry(&mut routes, route);
            let lineage = routes.get_mut(route).expect("just added");
            if let Some(mapping) = headers::get(found.headers.as_ref(), headers::MAPPING) {
                lineage.mapping = mapping.to_owned();
            }
            if state == "dead_lettered" {
                lineage.dead_letters.push(found.sequence);
                if let Some(DeadLetterOwner::Provider(provider)) =
                    topology::parse_dlq_subject(&found.subject)
                {
                    lineage.provider = provider.to_owned();
                }
            }
            lineage.state = state.into();
        }
        let ledger = Ledger::open(&self.jetstream)
            .await
            .map_err(ApiError::from)?;
        for lineage in routes.values_mut() {
            let record = ledger
                .get(&Ledger::key(&lineage.idempotency_key))
                .await
                .map_err(ApiError::from)?;
            if record.delivered {
                lineage.state = "delivered".into();
            }
        }
        let mut session = self.explainer.session();
        for (index, attempt) in failed {
            let lineage = routes
                .get_mut(&attempt.route)
                .expect("added with the attempt");
            let explanation = session
                .explain(Facts {
                    failed: Failed::Attempt {
                        outcome: attempt.category,
                        dead_letter: lineage.dead_letters.last().copied(),
                    },
                    provider: &lineage.provider,
                    source,
                    route: &lineage.route,
                    mapping: &lineage.mapping,
                    status: attempt.status,
                    error: attempt.error,
                    reason: attempt.reason.as_deref().unwrap_or_default(),
                    excerpt: "",
                    failing_paths: &[],
                    attempts: attempt.attempt,
                    breaker_open: false,
                    secrets: &[],
                })
                .await?;
            if let Some(explanation) = explanation {
                let shown = &mut lineage.attempts[index];
                shown.verdict = explanation.verdict.to_string();
                shown.explanation = explanation.text;
            }
        }

        Ok(Response::new(proto::Event {
            event_id,
            source: source.to_owned(),
            event_type: event_type.to_owned(),
            ingest_sequence: record.sequence,
            received_at: timestamp(&received_at).or(Some(timestamp_of(record.published))),
            headers: headers::first_values(record.headers.as_ref())
                .into_iter()
                .collect(),
            body: record.payload.to_vec(),
            routes: routes.into_values().collect(),
            complete,
        }))
    }
}
