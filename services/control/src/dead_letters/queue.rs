//! The dead-letter queue in stream DLQ: reading it in order with criteria, taking a
//! selection, and purging. Replaying a selection is in `replayer`.

use std::collections::BTreeMap;

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
    headers,
    outcome::{ErrorKind, FailureCategory},
    topology::{self, DeadLetterOwner},
};
use time::OffsetDateTime;

use crate::error::ApiError;

/// Which dead letters; `None` matches any.
#[derive(Debug, Clone, Default)]
pub struct Criteria {
    /// Of this provider.
    pub provider: Option<String>,
    /// Of events from this source.
    pub source: Option<String>,
    /// With this category.
    pub category: Option<FailureCategory>,
    /// From this route.
    pub route: Option<String>,
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
    /// Or, with `all`, every one the criteria match.
    pub criteria: Criteria,
    /// Take every match of `criteria`.
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
    /// Why it was dead-lettered; `None` when the header is missing or unknown.
    pub category: Option<FailureCategory>,
    /// The reason in words.
    pub reason: String,
    /// What kind of error the last attempt met, when delivery recorded it.
    pub error: Option<ErrorKind>,
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
        let (provider, source) = match topology::parse_dlq_subject(subject) {
            Some(DeadLetterOwner::Source(source)) => (String::new(), source.to_owned()),
            Some(DeadLetterOwner::Provider(provider)) => {
                (provider.to_owned(), header(headers::SOURCE))
            }
            None => (String::new(), header(headers::SOURCE)),
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
            category: header(headers::FAILURE_CATEGORY).parse().ok(),
            reason: header(headers::FAILURE_REASON),
            error: header(headers::ERROR_KIND).parse().ok(),
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

impl Criteria {
    fn subject(&self) -> String {
        match &self.provider {
            None => topology::ALL_DLQ.into(),
            Some(provider) => topology::dlq_subject(provider),
        }
    }

    fn matches(&self, letter: &DeadLetter) -> bool {
        let field = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        field(&self.provider, &letter.provider)
            && field(&self.source, &letter.source)
            && self
                .category
                .is_none_or(|want| letter.category == Some(want))
            && field(&self.route, &letter.route)
            && self
                .since
                .is_none_or(|since| letter.dead_lettered_at >= since)
            && self
                .until
                .is_none_or(|until| letter.dead_lettered_at < until)
    }
}

/// Largest page of a listing.
pub const MAX_PAGE: usize = 1000;

/// The dead-letter queue.
#[derive(Clone)]
pub struct DeadLetters {
    pub(super) jetstream: jetstream::Context,
}

/// Reads the matches of the criteria in order, up to the last dead letter stored when it
/// started (dead letters written meanwhile — by a replay, say — are not chased).
pub(super) struct Scan {
    messages: Option<jetstream::consumer::pull::Ordered>,
    end: u64,
    criteria: Criteria,
    /// Messages of the subject from the start point; an upper bound of the matches.
    pending: u64,
}

impl Scan {
    async fn next(&mut self) -> Result<Option<DeadLetter>, ApiError> {
        loop {
            let Some(messages) = &mut self.messages else {
                return Ok(None);
            };
            let Some(message) = messages.next().await else {
                return Ok(None);
            };
            let message = message.map_err(ApiError::nats)?;
            let info = message.info().map_err(ApiError::nats)?;
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
            if self.criteria.matches(&letter) {
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

    pub(super) async fn stream(&self) -> Result<Stream, ApiError> {
        self.jetstream
            .get_stream(topology::DLQ)
            .await
            .map_err(ApiError::nats)
    }

    async fn scan(&self, criteria: &Criteria, from_sequence: u64) -> Result<Scan, ApiError> {
        let mut stream = self.stream().await?;
        let end = stream
            .info()
            .await
            .map_err(ApiError::nats)?
            .state
            .last_sequence;
        let deliver_policy = match (from_sequence, criteria.since) {
            (0 | 1, Some(start_time)) => DeliverPolicy::ByStartTime { start_time },
            (0, None) => DeliverPolicy::All,
            (start_sequence, _) => DeliverPolicy::ByStartSequence { start_sequence },
        };
        let mut consumer = stream
            .create_consumer(OrderedConfig {
                filter_subject: criteria.subject(),
                deliver_policy,
                description: Some("dead-letter scan".into()),
                ..Default::default()
            })
            .await
            .map_err(ApiError::nats)?;
        let pending = consumer.info().await.map_err(ApiError::nats)?.num_pending;
        let messages = if pending == 0 || from_sequence > end {
            None
        } else {
            Some(consumer.messages().await.map_err(ApiError::nats)?)
        };
        Ok(Scan {
            messages,
            end,
            criteria: criteria.clone(),
            pending,
        })
    }

    /// Up to `page_size` matches from sequence `from`, and where the next page starts.
    pub async fn list(
        &self,
        criteria: &Criteria,
        from: u64,
        page_size: usize,
    ) -> Result<(Vec<DeadLetter>, Option<u64>), ApiError> {
        let mut scan = self.scan(criteria, from).await?;
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
    pub async fn get(&self, sequence: u64) -> Result<Option<DeadLetter>, ApiError> {
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
            Err(err) => Err(ApiError::nats(err)),
        }
    }

    /// The selected dead letters, in order.
    pub(super) async fn select(&self, selection: &Selection) -> Result<Selected, ApiError> {
        if selection.sequences.is_empty() {
            if !selection.all {
                return Err(ApiError::Invalid(
                    "selection: list sequences, or set all to take every dead letter the filter matches".into(),
                ));
            }
            let scan = self.scan(&selection.criteria, 0).await?;
            return Ok(Selected::Scan(Box::new(scan)));
        }
        if selection.all {
            return Err(ApiError::Invalid(
                "selection: give sequences or all, not both".into(),
            ));
        }
        let mut sequences = selection.sequences.clone();
        sequences.sort_unstable();
        sequences.dedup();
        Ok(Selected::Listed(sequences.into_iter()))
    }

    /// Removes the selected dead letters; returns how many.
    pub async fn purge(&self, selection: &Selection) -> Result<u64, ApiError> {
        let stream = self.stream().await?;
        let mut selected = self.select(selection).await?;
        let mut purged = 0;
        while let Some(letter) = selected.next(self).await? {
            if stream
                .delete_message(letter.sequence)
                .await
                .map_err(ApiError::nats)?
            {
                purged += 1;
            }
        }
        tracing::warn!(purged, ?selection, "dead letters purged");
        Ok(purged)
    }
}

/// The dead letters a selection takes.
pub(super) enum Selected {
    Scan(Box<Scan>),
    Listed(std::vec::IntoIter<u64>),
}

impl Selected {
    /// How many there are at most.
    pub(super) fn total(&self) -> u64 {
        match self {
            Self::Scan(scan) => scan.pending,
            Self::Listed(sequences) => sequences.len() as u64,
        }
    }

    pub(super) async fn next(
        &mut self,
        queue: &DeadLetters,
    ) -> Result<Option<DeadLetter>, ApiError> {
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
