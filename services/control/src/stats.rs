//! `switchyard.v1.StatsService`: what is stored and waiting.

use async_nats::jetstream;
use futures::TryStreamExt;
use switchyard_core::{catalog::CatalogStore, config::Scope, topology};
use tonic::{Request, Response, Status};

use crate::{
    auth,
    error::ApiError,
    proto::convert::timestamp_of,
    proto::{
        ConsumerStats, GetStatsRequest, Stats, StreamStats, stats_service_server::StatsService,
    },
};

/// Stream and consumer figures from `jetstream`.
#[derive(Clone)]
pub struct StatsApi {
    jetstream: jetstream::Context,
    store: CatalogStore,
}

impl StatsApi {
    /// Reads the streams of `jetstream` and the catalog in `store`.
    pub fn new(jetstream: jetstream::Context, store: CatalogStore) -> Self {
        Self { jetstream, store }
    }
}

#[tonic::async_trait]
impl StatsService for StatsApi {
    async fn get_stats(
        &self,
        request: Request<GetStatsRequest>,
    ) -> Result<Response<Stats>, Status> {
        auth::require(&request, Scope::Read, "GetStats")?;
        let mut stats = Stats {
            catalog_revision: self.store.load().await.map_err(ApiError::from)?.revision,
            ..Default::default()
        };
        for name in [
            topology::INGEST,
            topology::DELIVER,
            topology::DLQ,
            topology::OUTCOMES,
        ] {
            let mut stream = self
                .jetstream
                .get_stream(name)
                .await
                .map_err(ApiError::nats)?;
            let state = stream.info().await.map_err(ApiError::nats)?.state.clone();
            stats.streams.push(StreamStats {
                name: name.to_owned(),
                messages: state.messages,
                bytes: state.bytes,
                first: (state.messages > 0).then(|| timestamp_of(state.first_timestamp)),
                last: (state.messages > 0).then(|| timestamp_of(state.last_timestamp)),
            });
            let consumers: Vec<_> = stream
                .consumers()
                .try_collect()
                .await
                .map_err(ApiError::nats)?;
            for info in consumers {
                // Ordered consumers of replays and lookups are not worth showing.
                if info.config.durable_name.is_none() {
                    continue;
                }
                stats.consumers.push(ConsumerStats {
                    stream: name.to_owned(),
                    name: info.name,
                    pending: info.num_pending,
                    ack_pending: info.num_ack_pending as u64,
                    redelivered: info.num_redelivered as u64,
                });
            }
            if name == topology::DLQ && state.messages > 0 {
                stats.dead_letters =
                    topology::subject_counts(&self.jetstream, name, topology::ALL_DLQ)
                        .await
                        .map_err(ApiError::from)?
                        .into_iter()
                        .collect();
            }
        }
        stats
            .consumers
            .sort_by(|a, b| (&a.stream, &a.name).cmp(&(&b.stream, &b.name)));
        Ok(Response::new(stats))
    }
}
