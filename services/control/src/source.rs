//! `switchyard.v1.SourceService`: how ingest reads the sources it reads itself (outbox
//! tables, CDC slots), from a request to the replica holding the source's lease; a source nobody
//! answers for is shown as inactive. For every source, what INGEST holds of it: its
//! last event and how many arrived in the last minutes.

use std::time::Duration;

use async_nats::jetstream::{
    consumer::{DeliverPolicy, pull::OrderedConfig},
    stream::LastRawMessageErrorKind,
};
use futures::{StreamExt, TryStreamExt};
use switchyard_core::{
    catalog::{CatalogStore, Source},
    config::Scope,
    nats::Nats,
    operator::{self, SourceStatus},
    topology,
};
use tonic::{Request, Response, Status};

use crate::{
    auth,
    error::ApiError,
    proto::{
        self, GetSourceStatusRequest, ListSourceStatusRequest, ListSourceStatusResponse,
        source_service_server::SourceService,
    },
};

/// How long the reading ingest replica has to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// The window `recent_events` counts.
const RECENT: Duration = Duration::from_secs(5 * 60);

/// Source status.
#[derive(Clone)]
pub struct SourceApi {
    store: CatalogStore,
    nats: Nats,
}

impl SourceApi {
    /// Reads the sources of the catalog in `store`.
    pub fn new(store: CatalogStore, nats: Nats) -> Self {
        Self { store, nats }
    }

    /// When INGEST last stored an event of `source`, and how many it stored in the
    /// last [`RECENT`].
    async fn traffic(
        &self,
        source: &str,
    ) -> Result<(Option<prost_types::Timestamp>, u64), ApiError> {
        let filter = topology::source_ingest_filter(source);
        let stream = self
            .nats
            .jetstream
            .get_stream(topology::INGEST)
            .await
            .map_err(ApiError::nats)?;
        let last = match stream.get_last_raw_message_by_subject(&filter).await {
            Ok(message) => message.time,
            Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => {
                return Ok((None, 0));
            }
            Err(err) => return Err(ApiError::nats_while("reading the last event", err)),
        };
        let since = time::OffsetDateTime::now_utc() - RECENT;
        let recent = if last < since {
            0
        } else {
            // A consumer from the window's start counts what it would deliver; it is
            // never read.
            stream
                .create_consumer(OrderedConfig {
                    filter_subject: filter,
                    deliver_policy: DeliverPolicy::ByStartTime { start_time: since },
                    description: Some("source traffic count".into()),
                    ..Default::default()
                })
                .await
                .map_err(|err| ApiError::nats_while("counting recent events", err))?
                .cached_info()
                .num_pending
        };
        Ok((Some(proto::convert::timestamp_of(last)), recent))
    }

    /// The status of `source`: what INGEST holds of it, and what its reader answers,
    /// or inactive.
    async fn status(&self, source: &Source) -> Result<proto::SourceStatus, ApiError> {
        let kind = if source.outbox.is_some() {
            "outbox"
        } else if source.cdc.is_some() {
            "cdc"
        } else {
            ""
        };
        let (last_event, recent_events) = self.traffic(&source.name).await?;
        let mut status = proto::SourceStatus {
            source: source.name.clone(),
            kind: kind.into(),
            last_event,
            recent_events,
            ..Default::default()
        };
        if kind.is_empty() {
            return Ok(status);
        }
        let request = self
            .nats
            .client
            .request(operator::source_subject(&source.name), "status".into());
        let live: Option<SourceStatus> = tokio::time::timeout(ASK_TIMEOUT, request)
            .await
            .ok()
            .and_then(Result::ok)
            .and_then(|answer| serde_json::from_slice(&answer.payload).ok());
        if let Some(live) = live {
            status.active = true;
            status.instance = live.instance;
            status.rows_waiting = live.rows_waiting.unwrap_or_default();
            status.bytes_behind = live.bytes_behind.unwrap_or_default();
            status.last_read = live
                .last_read_at
                .as_deref()
                .and_then(proto::convert::timestamp);
            status.last_error = live.last_error.unwrap_or_default();
        }
        Ok(status)
    }
}

#[tonic::async_trait]
impl SourceService for SourceApi {
    async fn get_source_status(
        &self,
        request: Request<GetSourceStatusRequest>,
    ) -> Result<Response<proto::SourceStatus>, Status> {
        auth::require(&request, Scope::Read, "GetSourceStatus")?;
        let name = request.into_inner().source;
        let snapshot = self.store.load().await.map_err(ApiError::from)?;
        let source = snapshot
            .catalog
            .sources
            .iter()
            .find(|source| source.name == name)
            .ok_or_else(|| Status::not_found(format!("no source named {name:?}")))?;
        Ok(Response::new(self.status(source).await?))
    }

    async fn list_source_status(
        &self,
        request: Request<ListSourceStatusRequest>,
    ) -> Result<Response<ListSourceStatusResponse>, Status> {
        auth::require(&request, Scope::Read, "ListSourceStatus")?;
        let all = request.into_inner().all;
        let snapshot = self.store.load().await.map_err(ApiError::from)?;
        let sources = futures::stream::iter(
            snapshot
                .catalog
                .sources
                .iter()
                .filter(|source| all || source.outbox.is_some() || source.cdc.is_some()),
        )
        .then(|source| async move { self.status(source).await.map_err(Status::from) })
        .try_collect()
        .await?;
        Ok(Response::new(ListSourceStatusResponse { sources }))
    }
}
