//! `switchyard.v1.SourceService`: how ingest reads the sources it reads itself (outbox
//! tables, CDC slots), from a request to the replica holding the source's lease; a source nobody
//! answers for is shown as inactive.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use switchyard_core::{
    catalog::{CatalogStore, Source},
    config::Scope,
    nats::Nats,
    operator::{self, SourceStatus},
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

    /// The status of `source`: what its reader answers, or inactive.
    async fn status(&self, source: &Source) -> proto::SourceStatus {
        let kind = if source.outbox.is_some() {
            "outbox"
        } else if source.cdc.is_some() {
            "cdc"
        } else {
            ""
        };
        let mut status = proto::SourceStatus {
            source: source.name.clone(),
            kind: kind.into(),
            ..Default::default()
        };
        if kind.is_empty() {
            return status;
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
        status
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
        Ok(Response::new(self.status(source).await))
    }

    async fn list_source_status(
        &self,
        request: Request<ListSourceStatusRequest>,
    ) -> Result<Response<ListSourceStatusResponse>, Status> {
        auth::require(&request, Scope::Read, "ListSourceStatus")?;
        let snapshot = self.store.load().await.map_err(ApiError::from)?;
        let sources = futures::stream::iter(
            snapshot
                .catalog
                .sources
                .iter()
                .filter(|source| source.outbox.is_some() || source.cdc.is_some()),
        )
        .then(|source| async move { Ok::<_, Status>(self.status(source).await) })
        .try_collect()
        .await?;
        Ok(Response::new(ListSourceStatusResponse { sources }))
    }
}
