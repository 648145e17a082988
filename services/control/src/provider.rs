//! `switchyard.v1.ProviderService`: how delivery to each provider is doing, and the
//! operator's pause, resume and breaker reset.
//!
//! Backlog and dead letters come from JetStream, the pause and the persisted breaker
//! from KV, and what only the running process knows (its breaker in memory, the rate
//! limiter, requests in flight, last success and failure) from a request to the active
//! delivery process; a provider with no active process is shown as inactive.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::{StreamExt, TryStreamExt};
use switchyard_core::{
    catalog::CatalogStore,
    config::Scope,
    event,
    nats::Nats,
    operator::{self, BreakerRecord, BreakerState, Command, LiveStatus, Pause},
    topology,
};
use tonic::{Request, Response, Status};

use crate::{
    auth,
    error::ApiError,
    proto::convert::{timestamp, timestamp_in},
    proto::{
        self, GetProviderStatusRequest, ListProviderStatusRequest, ListProviderStatusResponse,
        PauseProviderRequest, ProviderStatus, ResetBreakerRequest, ResumeProviderRequest,
        provider_service_server::ProviderService,
    },
};

/// How long the active delivery process has to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// Provider status and operations.
#[derive(Clone)]
pub struct ProviderApi {
    store: CatalogStore,
    nats: Nats,
    pauses: kv::Store,
    breakers: kv::Store,
}

impl ProviderApi {
    /// Reads and changes the providers of the catalog in `store`.
    pub async fn new(store: CatalogStore, nats: Nats) -> Result<Self, switchyard_core::Error> {
        let bucket = |name| {
            let jetstream = nats.jetstream.clone();
            async move {
                jetstream
                    .get_key_value(name)
                    .await
                    .map_err(switchyard_core::Error::nats)
            }
        };
        Ok(Self {
            pauses: bucket(topology::PAUSES_BUCKET).await?,
            breakers: bucket(topology::BREAKERS_BUCKET).await?,
            store,
            nats,
        })
    }

    /// Fails with NOT_FOUND unless the catalog has `provider`.
    async fn known(&self, provider: &str) -> Result<(), Status> {
        let snapshot = self.store.load().await.map_err(ApiError::from)?;
        if snapshot.catalog.provider(provider).is_none() {
            return Err(Status::not_found(format!("no provider named {provider:?}")));
        }
        Ok(())
    }

    /// Asks the active delivery process; `None` when no process answers.
    async fn ask(&self, provider: &str, command: Command) -> Option<LiveStatus> {
        let payload = serde_json::to_vec(&command).expect("commands serialize");
        let request = self
            .nats
            .client
            .request(operator::control_subject(provider), payload.into());
        let answer = tokio::time::timeout(ASK_TIMEOUT, request)
            .await
            .ok()?
            .ok()?;
        serde_json::from_slice(&answer.payload).ok()
    }

    async fn status(
        &self,
        provider: &str,
        live: Option<LiveStatus>,
    ) -> Result<ProviderStatus, Status> {
        let unavailable = |what: &str, err: async_nats::Error| {
            Status::from(ApiError::nats_while(
                format!("{what} of provider {provider}"),
                err,
            ))
        };
        let pause = match self.pauses.get(provider).await {
            Ok(value) => value.and_then(|bytes| serde_json::from_slice::<Pause>(&bytes).ok()),
            Err(err) => return Err(unavailable("the pause", err.into())),
        };
        let stored_breaker = match self.breakers.get(provider).await {
            Ok(value) => {
                value.and_then(|bytes| serde_json::from_slice::<BreakerRecord>(&bytes).ok())
            }
            Err(err) => return Err(unavailable("the breaker", err.into())),
        };
        let (backlog, in_flight) = match self
            .nats
            .jetstream
            .get_consumer_from_stream::<jetstream::consumer::pull::Config, _, _>(
                topology::delivery_consumer(provider),
                topology::DELIVER,
            )
            .await
        {
            Ok(mut consumer) => {
                let info = consumer
                    .info()
                    .await
                    .map_err(|err| unavailable("the consumer", err.into()))?;
                (info.num_pending, info.num_ack_pending as u64)
            }
            // No delivery process has ever run: nothing was handed out yet.
            Err(_) => (
                self.subject_count(
                    topology::DELIVER,
                    &topology::provider_deliver_filter(provider),
                )
                .await?,
                0,
            ),
        };
        let dead_letters = self
            .subject_count(topology::DLQ, &topology::dlq_subject(provider))
            .await?;

        let mut status = ProviderStatus {
            provider: provider.to_owned(),
            backlog,
            in_flight,
            dead_letters,
            ..Default::default()
        };
        if let Some(pause) = pause {
            status.paused = true;
            status.paused_reason = pause.reason;
            status.paused_by = pause.by;
            status.paused_at = timestamp(&pause.at);
        }
        match live {
            Some(live) => {
                status.active = true;
                status.instance = live.instance;
                status.breaker = breaker(live.breaker.unwrap_or(BreakerState::Closed)) as i32;
                status.breaker_retry_at = timestamp_in(live.breaker_retry_in_ms);
                status.rate_per_second = live.rate_per_second.unwrap_or_default();
                status.burst = live.burst.unwrap_or_default();
                status.tokens = live.tokens.unwrap_or_default();
                status.provider_pause_until = timestamp_in(live.provider_pause_ms);
                status.sending = live.in_flight;
                status.last_success = live.last_success.as_deref().and_then(timestamp);
                status.last_failure = live.last_failure.as_deref().and_then(timestamp);
                status.last_failure_reason = live.last_failure_reason.unwrap_or_default();
                status.recent = live
                    .recent
                    .iter()
                    .map(|count| proto::MinuteCount {
                        minute: Some(prost_types::Timestamp {
                            seconds: count.minute,
                            nanos: 0,
                        }),
                        delivered: count.delivered,
                        failed: count.failed,
                    })
                    .collect();
            }
            None => {
                let record = stored_breaker.unwrap_or(BreakerRecord {
                    state: BreakerState::Closed,
                    opened_at_ms: None,
                    cool_down_ms: 0,
                });
                status.breaker = breaker(record.state) as i32;
                if let Some(opened) = record.opened_at_ms {
                    let until = opened.saturating_add(record.cool_down_ms as i64);
                    let at = time::OffsetDateTime::from_unix_timestamp_nanos(
                        i128::from(until) * 1_000_000,
                    );
                    status.breaker_retry_at = at.ok().map(proto::convert::timestamp_of);
                }
            }
        }
        Ok(status)
    }

    /// Messages stored in `stream` under `subject` (a wildcard sums its subjects).
    async fn subject_count(&self, stream: &str, subject: &str) -> Result<u64, Status> {
        let counts = topology::subject_counts(&self.nats.jetstream, stream, subject)
            .await
            .map_err(ApiError::from)?;
        Ok(counts.values().sum())
    }
}

fn breaker(state: BreakerState) -> proto::BreakerState {
    match state {
        BreakerState::Closed => proto::BreakerState::Closed,
        BreakerState::Open => proto::BreakerState::Open,
        BreakerState::HalfOpen => proto::BreakerState::HalfOpen,
    }
}

#[tonic::async_trait]
impl ProviderService for ProviderApi {
    async fn get_provider_status(
        &self,
        request: Request<GetProviderStatusRequest>,
    ) -> Result<Response<ProviderStatus>, Status> {
        auth::require(&request, Scope::Read, "GetProviderStatus")?;
        let provider = request.into_inner().provider;
        self.known(&provider).await?;
        let live = self.ask(&provider, Command::Status).await;
        self.status(&provider, live).await.map(Response::new)
    }

    async fn list_provider_status(
        &self,
        request: Request<ListProviderStatusRequest>,
    ) -> Result<Response<ListProviderStatusResponse>, Status> {
        auth::require(&request, Scope::Read, "ListProviderStatus")?;
        let snapshot = self.store.load().await.map_err(ApiError::from)?;
        let providers = futures::stream::iter(snapshot.catalog.providers.iter())
            .then(|provider| async move {
                let live = self.ask(&provider.name, Command::Status).await;
                self.status(&provider.name, live).await
            })
            .try_collect()
            .await?;
        Ok(Response::new(ListProviderStatusResponse { providers }))
    }

    async fn pause_provider(
        &self,
        request: Request<PauseProviderRequest>,
    ) -> Result<Response<ProviderStatus>, Status> {
        auth::require(&request, Scope::Operate, "PauseProvider")?;
        let by = auth::caller(&request);
        let request = request.into_inner();
        self.known(&request.provider).await?;
        let pause = Pause {
            reason: request.reason.trim().to_owned(),
            by,
            at: event::now_rfc3339(),
        };
        let value = serde_json::to_vec(&pause).expect("pauses serialize");
        self.pauses
            .put(&request.provider, value.into())
            .await
            .map_err(|err| ApiError::nats_while("storing the pause", err))?;
        tracing::warn!(
            provider = request.provider,
            reason = pause.reason,
            by = pause.by,
            "provider paused"
        );
        let live = self.ask(&request.provider, Command::Status).await;
        self.status(&request.provider, live)
            .await
            .map(Response::new)
    }

    async fn resume_provider(
        &self,
        request: Request<ResumeProviderRequest>,
    ) -> Result<Response<ProviderStatus>, Status> {
        auth::require(&request, Scope::Operate, "ResumeProvider")?;
        let by = auth::caller(&request);
        let provider = request.into_inner().provider;
        self.known(&provider).await?;
        self.pauses
            .delete(&provider)
            .await
            .map_err(|err| ApiError::nats_while("removing the pause", err))?;
        tracing::info!(provider, by, "provider resumed");
        let live = self.ask(&provider, Command::Status).await;
        self.status(&provider, live).await.map(Response::new)
    }

    async fn reset_breaker(
        &self,
        request: Request<ResetBreakerRequest>,
    ) -> Result<Response<ProviderStatus>, Status> {
        auth::require(&request, Scope::Operate, "ResetBreaker")?;
        let by = auth::caller(&request);
        let provider = request.into_inner().provider;
        self.known(&provider).await?;
        // KV first, so a process that becomes active next starts closed too.
        let closed = BreakerRecord {
            state: BreakerState::Closed,
            opened_at_ms: None,
            cool_down_ms: 0,
        };
        let value = serde_json::to_vec(&closed).expect("breaker records serialize");
        self.breakers
            .put(&provider, value.into())
            .await
            .map_err(|err| ApiError::nats_while("storing the breaker", err))?;
        let live = self.ask(&provider, Command::ResetBreaker).await;
        tracing::info!(provider, by, active = live.is_some(), "breaker reset");
        self.status(&provider, live).await.map(Response::new)
    }
}
