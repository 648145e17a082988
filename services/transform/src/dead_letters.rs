//! The dead-letter queue: listing, replaying and purging what stream DLQ holds.
//!
//! Dead letters come in three kinds, told apart by subject and category:
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

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use async_nats::{
    HeaderMap,
    jetstream::{
        self,
        consumer::{DeliverPolicy, pull::OrderedConfig},
        stream::Stream,
    },
};
use bytes::Bytes;
use futures::StreamExt;
use switchyard_core::{
    catalog::{Catalog, CatalogStore, matches_any},
    contract::Contract,
    event, headers,
    ledger::{self, Ledger},
    topology,
};
use time::OffsetDateTime;
use tokio::sync::mpsc;

use crate::{
    replay::ReplayError,
    routing::{Incoming, Routing},
};

/// Which dead letters; empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Of this provider.
    pub provider: String,
    /// Of events from this source.
    pub source: String,
    /// With this category.
    pub category: String,
    /// From this route.
    pub route: String,
    /// Dead-lettered at or after.
    pub since: Option<OffsetDateTime>,
    /// Dead-lettered before.
    pub until: Option<OffsetDateTime>,
}

/// Which dead letters a replay or purge takes.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// These sequences.
    pub sequences: Vec<u64>,
    /// Or, with `all`, every one the filter matches.
    pub filter: Filter,
    /// Take every match of `filter`.
    pub all: bool,
}

/// One dead letter.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// DLQ stream sequence.
    pub sequence: u64,
    /// `dlq.<provider>` or `dlq._source.<source>`.
    pub subject: String,
    /// Empty for a source-contract failure.
    pub provider: String,
    /// The event's source.
    pub source: String,
    /// The event type.
    pub event_type: String,
    /// The event id.
    pub event_id: String,
    /// The route.
    pub route: String,
    /// The mapping, `name@version`.
    pub mapping: String,
    /// Why: rejected, exhausted, mapping, contract, filter or schema.
    pub category: String,
    /// The reason in words.
    pub reason: String,
    /// Counted delivery attempts.
    pub attempts: u32,
    /// The provider's last HTTP status.
    pub last_status: u16,
    /// The start of the provider's last answer.
    pub response_excerpt: String,
    /// JSON pointers that broke a contract.
    pub failing_paths: Vec<String>,
    /// When it was dead-lettered.
    pub dead_lettered_at: OffsetDateTime,
    /// When ingest accepted the event (RFC 3339).
    pub received_at: String,
    /// The body.
    pub body: Bytes,
    /// The headers.
    pub headers: BTreeMap<String, String>,
}

impl DeadLetter {
    fn new(
        sequence: u64,
        subject: &str,
        message_headers: Option<&HeaderMap>,
        body: Bytes,
        at: OffsetDateTime,
    ) -> Self {
        let header = |name| {
            headers::get(message_headers, name)
                .unwrap_or_default()
                .to_owned()
        };
        let (provider, source) = match subject.strip_prefix("dlq._source.") {
            Some(source) => (String::new(), source.to_owned()),
            None => (
                subject.strip_prefix("dlq.").unwrap_or_default().to_owned(),
                header(headers::SOURCE),
            ),
        };
        Self {
            sequence,
            subject: subject.to_owned(),
            provider,
            source,
            event_type: header(headers::EVENT_TYPE),
            event_id: header(headers::EVENT_ID),
            route: header(headers::ROUTE),
            mapping: header(headers::MAPPING),
            category: header(headers::FAILURE_CATEGORY),
            reason: header(headers::FAILURE_REASON),
            attempts: header(headers::ATTEMPTS).parse().unwrap_or_default(),
            last_status: header(headers::LAST_STATUS).parse().unwrap_or_default(),
            response_excerpt: header(headers::RESPONSE_EXCERPT),
            failing_paths: header(headers::FAILING_PATHS)
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            dead_lettered_at: at,
            received_at: header(headers::RECEIVED_AT),
            body,
            headers: headers::first_values(message_headers),
        }
    }
}

impl Filter {
    fn subject(&self) -> String {
        match self.provider.as_str() {
            "" => "dlq.>".into(),
            provider => topology::dlq_subject(provider),
        }
    }

    fn matches(&self, letter: &DeadLetter) -> bool {
        let field = |want: &str, have: &str| want.is_empty() || want == have;
        field(&self.provider, &letter.provider)
            && field(&self.source, &letter.source)
            && field(&self.category, &letter.category)
            && field(&self.route, &letter.route)
            && self
                .since
                .is_none_or(|since| letter.dead_lettered_at >= since)
            && self
                .until
                .is_none_or(|until| letter.dead_lettered_at < until)
    }
}

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

/// Failure reasons reported in full; the rest are only counted.
const REPORTED_FAILURES: usize = 20;
/// How often progress is reported.
const REPORT_EVERY: Duration = Duration::from_millis(250);
/// Largest page of a listing.
pub const MAX_PAGE: usize = 1000;

fn nats_error(err: impl std::fmt::Display) -> ReplayError {
    ReplayError::Core(switchyard_core::Error::Nats(err.to_string()))
}

/// The dead-letter queue.
#[derive(Clone)]
pub struct DeadLetters {
    jetstream: jetstream::Context,
}

/// Reads the matches of a filter in order, up to the last dead letter stored when it
/// started (dead letters written meanwhile — by a replay, say — are not chased).
struct Scan {
    messages: Option<jetstream::consumer::pull::Ordered>,
    end: u64,
    filter: Filter,
    /// Messages of the subject from the start point; an upper bound of the matches.
    pending: u64,
}

impl Scan {
    async fn next(&mut self) -> Result<Option<DeadLetter>, ReplayError> {
        loop {
            let Some(messages) = &mut self.messages else {
                return Ok(None);
            };
            let Some(message) = messages.next().await else {
                return Ok(None);
            };
            let message = message.map_err(nats_error)?;
            let info = message.info().map_err(nats_error)?;
            let (sequence, pending, published) =
                (info.stream_sequence, info.pending, info.published);
            if pending == 0 || sequence >= self.end {
                self.messages = None;
            }
            if sequence > self.end {
                return Ok(None);
            }
            let letter = DeadLetter::new(
                sequence,
                &message.subject,
                message.headers.as_ref(),
                message.payload.clone(),
                published,
            );
            if self.filter.matches(&letter) {
                return Ok(Some(letter));
            }
        }
    }
}

impl DeadLetters {
    /// The queue in stream DLQ.
    pub fn new(jetstream: jetstream::Context) -> Self {
        Self { jetstream }
    }

    async fn stream(&self) -> Result<Stream, ReplayError> {
        self.jetstream
            .get_stream(topology::DLQ)
            .await
            .map_err(nats_error)
    }

    async fn scan(&self, filter: &Filter, from_sequence: u64) -> Result<Scan, ReplayError> {
        let mut stream = self.stream().await?;
        let end = stream.info().await.map_err(nats_error)?.state.last_sequence;
        let deliver_policy = match (from_sequence, filter.since) {
            (0 | 1, Some(start_time)) => DeliverPolicy::ByStartTime { start_time },
            (0, None) => DeliverPolicy::All,
            (start_sequence, _) => DeliverPolicy::ByStartSequence { start_sequence },
        };
        let mut consumer = stream
            .create_consumer(OrderedConfig {
                filter_subject: filter.subject(),
                deliver_policy,
                description: Some("dead-letter scan".into()),
                ..Default::default()
            })
            .await
            .map_err(nats_error)?;
        let pending = consumer.info().await.map_err(nats_error)?.num_pending;
        let messages = if pending == 0 || from_sequence > end {
            None
        } else {
            Some(consumer.messages().await.map_err(nats_error)?)
        };
        Ok(Scan {
            messages,
            end,
            filter: filter.clone(),
            pending,
        })
    }

    /// Up to `page_size` matches from sequence `from`, and where the next page starts.
    pub async fn list(
        &self,
        filter: &Filter,
        from: u64,
        page_size: usize,
    ) -> Result<(Vec<DeadLetter>, Option<u64>), ReplayError> {
        let mut scan = self.scan(filter, from).await?;
        let mut page = Vec::new();
        while let Some(letter) = scan.next().await? {
            if page.len() == page_size {
                return Ok((page, Some(letter.sequence)));
            }
            page.push(letter);
        }
        Ok((page, None))
    }

    /// The dead letter at `sequence`.
    pub async fn get(&self, sequence: u64) -> Result<Option<DeadLetter>, ReplayError> {
        let stream = self.stream().await?;
        match stream.get_raw_message(sequence).await {
            Ok(message) => Ok(Some(DeadLetter::new(
                message.sequence,
                &message.subject,
                Some(&message.headers),
                message.payload,
                message.time,
            ))),
            Err(err) if err.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => {
                Ok(None)
            }
            Err(err) => Err(nats_error(err)),
        }
    }

    /// The selected dead letters, in order.
    async fn select(&self, selection: &Selection) -> Result<Selected, ReplayError> {
        if selection.sequences.is_empty() {
            if !selection.all {
                return Err(ReplayError::Invalid(
                    "selection: list sequences, or set all to take every dead letter the filter matches".into(),
                ));
            }
            let scan = self.scan(&selection.filter, 0).await?;
            return Ok(Selected::Scan(Box::new(scan)));
        }
        if selection.all {
            return Err(ReplayError::Invalid(
                "selection: give sequences or all, not both".into(),
            ));
        }
        let mut sequences = selection.sequences.clone();
        sequences.sort_unstable();
        sequences.dedup();
        Ok(Selected::Listed(sequences.into_iter()))
    }

    /// Removes the selected dead letters; returns how many.
    pub async fn purge(&self, selection: &Selection) -> Result<u64, ReplayError> {
        let stream = self.stream().await?;
        let mut selected = self.select(selection).await?;
        let mut purged = 0;
        while let Some(letter) = selected.next(self).await? {
            if stream
                .delete_message(letter.sequence)
                .await
                .map_err(nats_error)?
            {
                purged += 1;
            }
        }
        tracing::warn!(purged, ?selection, "dead letters purged");
        Ok(purged)
    }

    /// Replays the selected dead letters, reporting progress on `progress`.
    pub async fn replay(
        &self,
        selection: &Selection,
        dry_run: bool,
        progress: mpsc::Sender<Progress>,
    ) -> Result<Progress, ReplayError> {
        let snapshot = CatalogStore::open(&self.jetstream).await?.load().await?;
        let routing = Routing::build(&snapshot.catalog, snapshot.revision, &Routing::default())
            .map_err(|err| ReplayError::Invalid(format!("the catalog does not compile: {err}")))?;
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
        let mut reported = Instant::now();
        while let Some(letter) = selected.next(self).await? {
            state.scanned += 1;
            let outcome = replayer.replay(&letter).await?;
            match &outcome {
                Outcome::Sent => state.replayed += 1,
                Outcome::AlreadyDelivered => state.already_delivered += 1,
                Outcome::Failed(reason) => {
                    state.failed += 1;
                    if state.failures.len() < REPORTED_FAILURES {
                        state
                            .failures
                            .push(format!("{}: {reason}", letter.sequence));
                    }
                }
            }
            if !dry_run && !matches!(outcome, Outcome::Failed(_)) {
                stream
                    .delete_message(letter.sequence)
                    .await
                    .map_err(nats_error)?;
            }
            if reported.elapsed() >= REPORT_EVERY {
                reported = Instant::now();
                progress
                    .send(state.clone())
                    .await
                    .map_err(|_| ReplayError::Cancelled)?;
            }
        }
        state.done = true;
        state.total = state.total.max(state.scanned);
        tracing::info!(replay_id = %state.replay_id, replayed = state.replayed, already_delivered = state.already_delivered, failed = state.failed, dry_run, "dead-letter replay done");
        let _ = progress.send(state.clone()).await;
        Ok(state)
    }
}

/// The dead letters a selection takes.
enum Selected {
    Scan(Box<Scan>),
    Listed(std::vec::IntoIter<u64>),
}

impl Selected {
    /// How many there are at most.
    fn total(&self) -> u64 {
        match self {
            Self::Scan(scan) => scan.pending,
            Self::Listed(sequences) => sequences.len() as u64,
        }
    }

    async fn next(&mut self, queue: &DeadLetters) -> Result<Option<DeadLetter>, ReplayError> {
        match self {
            Self::Scan(scan) => scan.next().await,
            Self::Listed(sequences) => {
                for sequence in sequences.by_ref() {
                    if let Some(letter) = queue.get(sequence).await? {
                        return Ok(Some(letter));
                    }
                }
                Ok(None)
            }
        }
    }
}

/// What replaying one dead letter did.
enum Outcome {
    /// Stored again where it goes next.
    Sent,
    /// The provider already took it.
    AlreadyDelivered,
    /// Not sent; it stays in the queue.
    Failed(String),
}

/// Headers that describe a failure, dropped when a dead letter is sent on.
const FAILURE_HEADERS: [&str; 6] = [
    headers::FAILURE_CATEGORY,
    headers::FAILURE_REASON,
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
    async fn replay(&self, letter: &DeadLetter) -> Result<Outcome, ReplayError> {
        let mut clean = HeaderMap::new();
        for (name, value) in &letter.headers {
            if !FAILURE_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name)) {
                clean.insert(name.as_str(), value.as_str());
            }
        }
        match letter.category.as_str() {
            "rejected" | "exhausted" => self.redeliver(letter, clean).await,
            "mapping" | "contract" | "filter" => self.remap(letter, clean).await,
            "schema" => self.reingest(letter, clean).await,
            other => Ok(Outcome::Failed(format!(
                "category {other:?} cannot be replayed"
            ))),
        }
    }

    /// A failed delivery goes back to DELIVER with a fresh retry budget.
    async fn redeliver(
        &self,
        letter: &DeadLetter,
        mut out: HeaderMap,
    ) -> Result<Outcome, ReplayError> {
        if self.catalog.provider(&letter.provider).is_none() {
            return Ok(Outcome::Failed(format!(
                "provider {} is no longer in the catalog",
                letter.provider
            )));
        }
        if letter.event_id.is_empty() || letter.route.is_empty() {
            return Ok(Outcome::Failed("no event id or route header".into()));
        }
        let redelivery = letter.headers.get(headers::REDELIVERY).map(String::as_str);
        let key = Ledger::key(&ledger::delivery_key(
            &letter.event_id,
            &letter.route,
            redelivery,
        ));
        let record = self.ledger.get(&key).await?;
        if record.delivered {
            return Ok(Outcome::AlreadyDelivered);
        }
        if self.dry_run {
            return Ok(Outcome::Sent);
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
        Ok(Outcome::Sent)
    }

    /// An event a mapping, contract or filter could not handle runs through its
    /// route's current version.
    async fn remap(&self, letter: &DeadLetter, clean: HeaderMap) -> Result<Outcome, ReplayError> {
        if self.routing.route(&letter.route).is_none() {
            return Ok(Outcome::Failed(format!(
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
            payload: &letter.body,
            event_id: &letter.event_id,
            sequence,
            received_at: &letter.received_at,
        };
        let outputs = self.routing.outputs(&incoming, Some(&letter.route));
        let Some(mut output) = outputs.into_iter().next() else {
            return Ok(Outcome::Failed(format!(
                "route {} now filters the event out or does not take {}",
                letter.route, letter.event_type
            )));
        };
        if output.dead_letter {
            let reason =
                headers::get(Some(&output.headers), headers::FAILURE_REASON).unwrap_or_default();
            return Ok(Outcome::Failed(format!("still fails: {reason}")));
        }
        let key = Ledger::key(&ledger::delivery_key(&letter.event_id, &letter.route, None));
        if self.ledger.get(&key).await?.delivered {
            return Ok(Outcome::AlreadyDelivered);
        }
        if self.dry_run {
            return Ok(Outcome::Sent);
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
        Ok(Outcome::Sent)
    }

    /// An event that failed its source's contract is stored in INGEST once the
    /// source's current contract accepts it.
    async fn reingest(
        &self,
        letter: &DeadLetter,
        mut out: HeaderMap,
    ) -> Result<Outcome, ReplayError> {
        let Some(source) = self.catalog.source(&letter.source) else {
            return Ok(Outcome::Failed(format!(
                "source {} is no longer in the catalog",
                letter.source
            )));
        };
        let body: serde_json::Value = match serde_json::from_slice(&letter.body) {
            Ok(body) => body,
            Err(err) => return Ok(Outcome::Failed(format!("the body is not JSON: {err}"))),
        };
        for rule in &source.schemas {
            if !matches_any(&rule.event_types, &letter.event_type) {
                continue;
            }
            let contract = Contract::compile(&rule.schema).map_err(ReplayError::Invalid)?;
            if let Err(violations) = contract.check(&body) {
                let first = violations
                    .iter()
                    .map(|v| {
                        format!(
                            "{}: {}",
                            if v.path.is_empty() { "/" } else { &v.path },
                            v.message
                        )
                    })
                    .next()
                    .unwrap_or_default();
                return Ok(Outcome::Failed(format!(
                    "still breaks the source's contract: {first}"
                )));
            }
        }
        if self.dry_run {
            return Ok(Outcome::Sent);
        }
        out.insert(
            headers::NATS_MSG_ID,
            format!("{}:dlq-replay:{}", letter.event_id, self.replay_id).as_str(),
        );
        let subject = topology::ingest_subject(&letter.source, &letter.event_type);
        self.store(subject, out, letter.body.clone()).await?;
        Ok(Outcome::Sent)
    }

    /// Publishes and waits until it is stored.
    async fn store(
        &self,
        subject: String,
        mut out: HeaderMap,
        body: Bytes,
    ) -> Result<(), ReplayError> {
        headers::inject_current(&mut out);
        self.jetstream
            .publish_with_headers(subject, out, body)
            .await
            .map_err(nats_error)?
            .await
            .map_err(nats_error)?;
        Ok(())
    }
}
