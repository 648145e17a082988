//! Replaying dead letters. They come in three kinds, told apart by category:
//!
//! - `rejected` / `exhausted` on `dlq.<provider>`: a mapped delivery. Replayed by
//!   publishing it to DELIVER again with a fresh retry budget and the same
//!   idempotency key, unless the ledger says the provider took it meanwhile.
//! - `mapping` / `contract` / `filter` on `dlq.<provider>`: the original event.
//!   Replayed through its route's current program and contracts, like a replay.
//! - `schema` on `dlq._source.<source>`: the original event that failed its source's
//!   contract. Replayed into INGEST when the source's current contract accepts it.
//!
//! A dead letter is removed only after what replaced it is stored; one that still
//! fails stays where it is, and the reason is reported.

use async_nats::{HeaderMap, jetstream};
use bytes::Bytes;
use switchyard_core::{
    canary::Stopped,
    catalog::{Catalog, CatalogStore, matches_any},
    contract::Contract,
    event, headers,
    ledger::{self, Ledger},
    outcome::FailureCategory,
    topology,
};
use switchyard_transform::{Incoming, Routing};
use tokio::sync::mpsc;

use super::queue::{DeadLetter, DeadLetters, Selection};
use crate::{error::ApiError, replay::Reporter};

/// Failure reasons reported in full; the rest are only counted.
const REPORTED_FAILURES: usize = 20;

/// How far a dead-letter replay has got.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// Identifies the replay in message ids.
    pub replay_id: String,
    /// Selected so far (an upper bound until done).
    pub total: u64,
    /// Looked at.
    pub scanned: u64,
    /// Sent on and removed.
    pub replayed: u64,
    /// Already delivered; removed without sending.
    pub already_delivered: u64,
    /// Still failing; kept.
    pub failed: u64,
    /// The first failure reasons.
    pub failures: Vec<String>,
    /// Over.
    pub done: bool,
    /// Nothing was sent or removed.
    pub dry_run: bool,
}

impl DeadLetters {
    /// Replays the selected dead letters, reporting progress on `progress`.
    pub async fn replay(
        &self,
        selection: &Selection,
        dry_run: bool,
        progress: mpsc::Sender<Progress>,
    ) -> Result<Progress, ApiError> {
        let snapshot = CatalogStore::open(&self.jetstream).await?.load().await?;
        let routing = Routing::build(
            &snapshot.catalog,
            snapshot.revision,
            &Routing::default(),
            &Stopped::read(&self.jetstream).await?,
        )
        .map_err(|err| ApiError::Invalid(format!("the catalog does not compile: {err}")))?;
        let replayer = Replayer {
            jetstream: &self.jetstream,
            catalog: &snapshot.catalog,
            routing: &routing,
            ledger: Ledger::open(&self.jetstream).await?,
            dry_run,
            replay_id: event::new_event_id(),
        };
        let stream = self.stream().await?;
        let mut selected = self.select(selection).await?;
        let mut state = Progress {
            replay_id: replayer.replay_id.clone(),
            total: selected.total(),
            dry_run,
            ..Progress::default()
        };
        tracing::info!(replay_id = %state.replay_id, ?selection, dry_run, "dead-letter replay starting");
        let mut reporter = Reporter::new(progress);
        while let Some(letter) = selected.next(self).await? {
            state.scanned += 1;
            let outcome = replayer.replay(&letter).await?;
            match &outcome {
                Replayed::Sent => state.replayed += 1,
                Replayed::AlreadyDelivered => state.already_delivered += 1,
                Replayed::Failed(reason) => {
                    state.failed += 1;
                    if state.failures.len() < REPORTED_FAILURES {
                        state
                            .failures
                            .push(format!("{}: {reason}", letter.sequence));
                    }
                }
            }
            if !dry_run && !matches!(outcome, Replayed::Failed(_)) {
                stream
                    .delete_message(letter.sequence)
                    .await
                    .map_err(ApiError::nats)?;
            }
            reporter.tick(&state).await?;
        }
        state.done = true;
        state.total = state.total.max(state.scanned);
        tracing::info!(replay_id = %state.replay_id, replayed = state.replayed, already_delivered = state.already_delivered, failed = state.failed, dry_run, "dead-letter replay done");
        reporter.finish(&state).await;
        Ok(state)
    }
}

/// What replaying one dead letter did.
enum Replayed {
    /// Stored again where it goes next.
    Sent,
    /// The provider already took it.
    AlreadyDelivered,
    /// Not sent; it stays in the queue.
    Failed(String),
}

/// Headers that describe a failure, dropped when a dead letter is sent on.
const FAILURE_HEADERS: [&str; 7] = [
    headers::FAILURE_CATEGORY,
    headers::FAILURE_REASON,
    headers::ERROR_KIND,
    headers::FAILING_PATHS,
    headers::ATTEMPTS,
    headers::LAST_STATUS,
    headers::RESPONSE_EXCERPT,
];

struct Replayer<'a> {
    jetstream: &'a jetstream::Context,
    catalog: &'a Catalog,
    routing: &'a Routing,
    ledger: Ledger,
    dry_run: bool,
    replay_id: String,
}

impl Replayer<'_> {
    async fn replay(&self, letter: &DeadLetter) -> Result<Replayed, ApiError> {
        let mut clean = HeaderMap::new();
        for (name, value) in &letter.headers {
            if !FAILURE_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name)) {
                clean.insert(name.as_str(), value.as_str());
            }
        }
        match letter.category {
            Some(FailureCategory::Rejected | FailureCategory::Exhausted)
                if self.routing.stopped_canary(&letter.route, &letter.mapping) =>
            {
                // The body is what a canary rolled back made of the event: the event
                // itself goes through the route's own version instead.
                match self.original(letter).await? {
                    Some(original) => self.remap(letter, clean, &original).await,
                    None => Ok(Replayed::Failed(format!(
                        "made by canary {} (rolled back), and its event is no longer in {}",
                        letter.mapping,
                        topology::INGEST
                    ))),
                }
            }
            Some(FailureCategory::Rejected | FailureCategory::Exhausted) => {
                self.redeliver(letter, clean).await
            }
            Some(
                FailureCategory::Mapping | FailureCategory::Contract | FailureCategory::Filter,
            ) => self.remap(letter, clean, &letter.body).await,
            Some(FailureCategory::Schema) => self.reingest(letter, clean).await,
            None => Ok(Replayed::Failed(format!(
                "its {} header names no category that can be replayed",
                headers::FAILURE_CATEGORY
            ))),
        }
    }

    /// A failed delivery goes back to DELIVER with a fresh retry budget.
    async fn redeliver(
        &self,
        letter: &DeadLetter,
        mut out: HeaderMap,
    ) -> Result<Replayed, ApiError> {
        if self.catalog.provider(&letter.provider).is_none() {
            return Ok(Replayed::Failed(format!(
                "provider {} is no longer in the catalog",
                letter.provider
            )));
        }
        if letter.event_id.is_empty() || letter.route.is_empty() {
            return Ok(Replayed::Failed("no event id or route header".into()));
        }
        let redelivery = letter.headers.get(headers::REDELIVERY).map(String::as_str);
        let key = Ledger::key(&ledger::delivery_key(
            &letter.event_id,
            &letter.route,
            redelivery,
        ));
        let record = self.ledger.get(&key).await?;
        if record.delivered {
            return Ok(Replayed::AlreadyDelivered);
        }
        if self.dry_run {
            return Ok(Replayed::Sent);
        }
        self.ledger.reset_attempts(&key).await?;
        let subject = match letter.headers.get(headers::ORDERING_KEY) {
            Some(key) => topology::ordered_deliver_subject(&letter.provider, &letter.route, key),
            None => topology::deliver_subject(&letter.provider, &letter.route),
        };
        out.insert(
            headers::NATS_MSG_ID,
            format!(
                "{}:{}:dlq-replay:{}",
                letter.event_id, letter.route, self.replay_id
            )
            .as_str(),
        );
        self.store(subject, out, letter.body.clone()).await?;
        Ok(Replayed::Sent)
    }

    /// The event a delivery was made from, as INGEST stored it.
    async fn original(&self, letter: &DeadLetter) -> Result<Option<Bytes>, ApiError> {
        let Some(sequence) = letter
            .headers
            .get(headers::INGEST_SEQUENCE)
            .and_then(|s| s.parse::<u64>().ok())
        else {
            return Ok(None);
        };
        let stream = self
            .jetstream
            .get_stream(topology::INGEST)
            .await
            .map_err(ApiError::nats)?;
        match stream.get_raw_message(sequence).await {
            Ok(message) => Ok(Some(message.payload)),
            Err(err) if err.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => {
                Ok(None)
            }
            Err(err) => Err(ApiError::nats(err)),
        }
    }

    /// An event (`payload`) a mapping, contract or filter could not handle, or whose
    /// delivery a canary rolled back made, runs through its route's current version.
    async fn remap(
        &self,
        letter: &DeadLetter,
        clean: HeaderMap,
        payload: &Bytes,
    ) -> Result<Replayed, ApiError> {
        if self.routing.route(&letter.route).is_none() {
            return Ok(Replayed::Failed(format!(
                "route {} is no longer in the catalog",
                letter.route
            )));
        }
        let sequence = letter
            .headers
            .get(headers::INGEST_SEQUENCE)
            .and_then(|s| s.parse().ok())
            .unwrap_or_default();
        let incoming = Incoming {
            source: &letter.source,
            event_type: &letter.event_type,
            headers: Some(&clean),
            payload,
            event_id: &letter.event_id,
            sequence,
            received_at: &letter.received_at,
        };
        let outputs = self.routing.outputs(&incoming, Some(&letter.route));
        let Some(mut output) = outputs.into_iter().next() else {
            return Ok(Replayed::Failed(format!(
                "route {} now filters the event out or does not take {}",
                letter.route, letter.event_type
            )));
        };
        if output.dead_letter {
            let reason =
                headers::get(Some(&output.headers), headers::FAILURE_REASON).unwrap_or_default();
            return Ok(Replayed::Failed(format!("still fails: {reason}")));
        }
        let key = Ledger::key(&ledger::delivery_key(&letter.event_id, &letter.route, None));
        if self.ledger.get(&key).await?.delivered {
            return Ok(Replayed::AlreadyDelivered);
        }
        if self.dry_run {
            return Ok(Replayed::Sent);
        }
        output.headers.insert(
            headers::NATS_MSG_ID,
            format!(
                "{}:{}:dlq-replay:{}",
                letter.event_id, letter.route, self.replay_id
            )
            .as_str(),
        );
        self.store(output.subject, output.headers, output.body)
            .await?;
        Ok(Replayed::Sent)
    }

    /// An event that failed its source's contract is stored in INGEST once the
    /// source's current contract accepts it.
    async fn reingest(
        &self,
        letter: &DeadLetter,
        mut out: HeaderMap,
    ) -> Result<Replayed, ApiError> {
        let Some(source) = self.catalog.source(&letter.source) else {
            return Ok(Replayed::Failed(format!(
                "source {} is no longer in the catalog",
                letter.source
            )));
        };
        let body: serde_json::Value = match serde_json::from_slice(&letter.body) {
            Ok(body) => body,
            Err(err) => return Ok(Replayed::Failed(format!("the body is not JSON: {err}"))),
        };
        for rule in &source.schemas {
            if !matches_any(&rule.event_types, &letter.event_type) {
                continue;
            }
            let contract = Contract::compile(&rule.schema).map_err(ApiError::Invalid)?;
            if let Err(violations) = contract.check(&body) {
                let first = violations
                    .first()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                return Ok(Replayed::Failed(format!(
                    "still breaks the source's contract: {first}"
                )));
            }
        }
        if self.dry_run {
            return Ok(Replayed::Sent);
        }
        out.insert(
            headers::NATS_MSG_ID,
            format!("{}:dlq-replay:{}", letter.event_id, self.replay_id).as_str(),
        );
        let subject = topology::ingest_subject(&letter.source, &letter.event_type);
        self.store(subject, out, letter.body.clone()).await?;
        Ok(Replayed::Sent)
    }

    /// Publishes and waits until it is stored.
    async fn store(
        &self,
        subject: String,
        mut out: HeaderMap,
        body: Bytes,
    ) -> Result<(), ApiError> {
        headers::inject_current(&mut out);
        self.jetstream
            .publish_with_headers(subject, out, body)
            .await
            .map_err(ApiError::nats)?
            .await
            .map_err(ApiError::nats)?;
        Ok(())
    }
}
