//! Switchyard transform: INGEST → route match → VRL mapping → DELIVER.
//!
//! Transform replicas share the durable consumer `transform` on INGEST. For each event
//! every matching route's mapping runs, and the outputs are published to
//! `deliver.<provider>.<route>` in ingest order with their publish acks pipelined; the
//! ingest message is acked only after every output is stored. A mapping failure is
//! permanent: the original goes to `dlq.<provider>` with the reason. A failed publish
//! NAKs the ingest message so it is processed again; `Nats-Msg-Id` keeps the outputs
//! that were already stored from being stored twice.

#![forbid(unsafe_code)]

mod routing;

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::{
    self, AckKind,
    consumer::{AckPolicy, DeliverPolicy, pull},
    context::PublishAckFuture,
};

use futures::{StreamExt, stream::FuturesOrdered};
use switchyard_core::{
    canary::Stopped,
    catalog::{CatalogStore, Snapshot},
    config::Settings,
    consumer::Subscription,
    event, headers, nats,
    shutdown::Shutdown,
    telemetry, topology,
};
use tokio::{sync::watch, task::JoinSet};
use tracing::Instrument;

pub use crate::routing::{Decision, Incoming, Outgoing, Routing};

/// Errors that stop the transform service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// NATS, topology or catalog set-up failed.
    #[error(transparent)]
    Core(#[from] switchyard_core::Error),
}

/// Delay before an ingest message whose outputs could not be stored is tried again.
const REPUBLISH_DELAY: Duration = Duration::from_secs(1);

/// Consumes INGEST until `shutdown` starts draining, then finishes what is in flight.
pub async fn run(settings: Settings, shutdown: Shutdown) -> Result<(), Error> {
    let nats = nats::connect(&settings.nats, "transform").await?;
    topology::ensure_topology(&nats.jetstream, &settings.topology).await?;
    let store = CatalogStore::open(&nats.jetstream).await?;
    let catalog = store.watch(&shutdown).await?;
    let stopped = Stopped::watch(&nats.jetstream, &shutdown).await?;
    let max_in_flight = settings.transform.max_in_flight;
    let config = pull::Config {
        durable_name: Some(topology::TRANSFORM_CONSUMER.to_owned()),
        description: Some("Switchyard transform replicas".to_owned()),
        filter_subject: topology::ALL_INGEST.to_owned(),
        ack_policy: AckPolicy::Explicit,
        deliver_policy: DeliverPolicy::All,
        ack_wait: settings.transform.ack_wait,
        max_deliver: -1,
        max_ack_pending: i64::try_from(max_in_flight * 2).unwrap_or(i64::MAX),
        ..Default::default()
    };
    let mut subscription = Subscription::new(
        &nats.jetstream,
        topology::INGEST,
        config,
        max_in_flight.min(256),
        &shutdown,
    )
    .await?;
    shutdown.spawn(
        "transform backlog",
        switchyard_core::metrics::watch_consumer(
            nats.jetstream.clone(),
            topology::INGEST,
            topology::TRANSFORM_CONSUMER.to_owned(),
            std::time::Duration::from_secs(5),
            shutdown.clone(),
        ),
    );
    let mut transform = Transform {
        jetstream: nats.jetstream.clone(),
        catalog,
        store,
        stopped,
        routing: Arc::default(),
    };
    let initial = transform.catalog.borrow_and_update().clone();
    transform.apply(&initial);
    tracing::info!("transform consuming INGEST");

    // Mappings run as tasks of their own, so they use every core, and their results
    // are published strictly in arrival order (per-key ordering relies on it). Each
    // message's settlement then runs as its own task: it awaits publish acks, and
    // publishing waits for ack permits that only finished settlements give back, so
    // settlements must progress while this loop is blocked publishing.
    let mut mapping = FuturesOrdered::new();
    let mut in_flight = JoinSet::new();
    loop {
        let room = max_in_flight.saturating_sub(in_flight.len() + mapping.len());
        tokio::select! {
            biased;
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            Some(mapped) = mapping.next(), if !mapping.is_empty() => match mapped {
                Ok(mapped) => {
                    in_flight.spawn(transform.publish(mapped).await);
                }
                Err(err) => tracing::error!(error = %err, "a mapping task failed; the event will be redelivered"),
            },
            message = subscription.next(room), if subscription.ready(room) => {
                let Some(message) = message else { break };
                transform.refresh(&message).await;
                if let Some(work) = transform.map(message) {
                    mapping.push_back(tokio::spawn(work));
                }
            }
        }
    }
    tracing::info!(
        in_flight = in_flight.len() + mapping.len(),
        "transform draining"
    );
    while let Some(mapped) = mapping.next().await {
        if let Ok(mapped) = mapped {
            in_flight.spawn(transform.publish(mapped).await);
        }
    }
    while in_flight.join_next().await.is_some() {}
    subscription.close().await;
    Ok(())
}

struct Transform {
    jetstream: jetstream::Context,
    catalog: watch::Receiver<Arc<Snapshot>>,
    store: CatalogStore,
    stopped: Stopped,
    routing: Arc<Routing>,
}

/// What remains to do for one ingest message once its outputs are published.
type Settle = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

impl Transform {
    /// Brings the routes up to date before `message` is routed: to the watched
    /// catalog, and further to the revision ingest accepted the message under when
    /// the watch has not delivered it yet (so a route applied together with its
    /// source never misses the source's first events).
    async fn refresh(&mut self, message: &jetstream::Message) {
        if self.catalog.has_changed().unwrap_or(false) {
            let snapshot = self.catalog.borrow_and_update().clone();
            self.apply(&snapshot);
        }
        let accepted_under = headers::get(message.headers.as_ref(), headers::CATALOG_REVISION)
            .and_then(|revision| revision.parse::<u64>().ok())
            .unwrap_or(0);
        if accepted_under <= self.routing.revision {
            return;
        }
        match self.store.load().await {
            Ok(snapshot) => self.apply(&snapshot),
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the catalog; routing with revision {}", self.routing.revision)
            }
        }
    }

    /// Rebuilds the routes from `snapshot` when it is newer than the current ones.
    fn apply(&mut self, snapshot: &Snapshot) {
        if snapshot.revision <= self.routing.revision && self.routing.revision != 0 {
            return;
        }
        match Routing::build(
            &snapshot.catalog,
            snapshot.revision,
            &self.routing,
            &self.stopped,
        ) {
            Ok(routing) => {
                tracing::info!(revision = snapshot.revision, "routes compiled");
                switchyard_core::metrics::set_catalog_revision("transform", snapshot.revision);
                self.routing = Arc::new(routing);
            }
            Err(err) => tracing::error!(
                revision = snapshot.revision,
                error = %err,
                "catalog revision does not compile; keeping revision {}",
                self.routing.revision
            ),
        }
    }

    /// The work of mapping `message` through every route, to run on any thread.
    fn map(&self, message: jetstream::Message) -> Option<impl Future<Output = Mapped> + use<>> {
        let (sequence, published) = match message.info() {
            Ok(info) => (info.stream_sequence, info.published),
            Err(err) => {
                tracing::error!(error = %err, subject = %message.subject, "message without JetStream metadata");
                return None;
            }
        };
        let event_id = event::event_id(message.headers.as_ref(), sequence, published);
        let span = telemetry::process_span(&message, topology::TRANSFORM_CONSUMER, &event_id);
        let routing = self.routing.clone();
        Some(async move {
            let outputs =
                span.in_scope(|| {
                    outputs(&routing, &message, &event_id, sequence, published, None)
                        .unwrap_or_else(|| {
                            tracing::error!(subject = %message.subject, "not of the form ingest.<source>.<event_type>; nothing can route it");
                            Vec::new()
                        })
                });
            Mapped {
                message,
                event_id,
                span,
                outputs,
            }
        })
    }

    /// Publishes a mapped message's outputs; returns the future that awaits their
    /// acks and then settles the ingest message.
    async fn publish(&self, mapped: Mapped) -> Settle {
        let Mapped {
            message,
            event_id,
            span,
            outputs,
        } = mapped;
        let acks = async {
            let mut acks = Vec::with_capacity(outputs.len());
            for output in outputs {
                acks.push(publish(&self.jetstream, output).await?);
            }
            Ok(acks)
        }
        .instrument(span.clone())
        .await;
        Box::pin(settle(message, acks, event_id).instrument(span))
    }
}

/// An ingest message with what its routes made of it.
struct Mapped {
    message: jetstream::Message,
    event_id: String,
    span: tracing::Span,
    outputs: Vec<Outgoing>,
}

/// What every route (or only the route `only`) makes of the INGEST `message`;
/// `None` when its subject is not `ingest.<source>.<event_type>`. Transform and
/// control's replays route stored events through this one function.
pub fn outputs(
    routing: &Routing,
    message: &jetstream::Message,
    event_id: &str,
    sequence: u64,
    published: time::OffsetDateTime,
    only: Option<&str>,
) -> Option<Vec<Outgoing>> {
    let (source, event_type) = topology::parse_ingest_subject(&message.subject)?;
    let received_at = event::received_at(message.headers.as_ref(), published);
    let incoming = Incoming {
        source,
        event_type,
        headers: message.headers.as_ref(),
        payload: &message.payload,
        event_id,
        sequence,
        received_at: &received_at,
    };
    Some(routing.outputs(&incoming, only))
}

/// Publishes one output with its trace context; returns the ack to await. Transform
/// and control's replays publish what routing made through this one function.
pub async fn publish(
    jetstream: &jetstream::Context,
    output: Outgoing,
) -> Result<PublishAckFuture, switchyard_core::Error> {
    let Outgoing {
        subject,
        mut headers,
        body,
        ..
    } = output;
    let span = telemetry::publish_span(&subject, &mut headers, body.len());
    jetstream
        .publish_with_headers(subject, headers, body)
        .instrument(span)
        .await
        .map_err(|err| switchyard_core::Error::nats_while("publish", err))
}

/// Acks the ingest message once every output is stored, or NAKs it to try again.
async fn settle(
    message: jetstream::Message,
    acks: Result<Vec<PublishAckFuture>, switchyard_core::Error>,
    event_id: String,
) {
    let stored = match acks {
        Ok(acks) => {
            let mut failure = None;
            for ack in acks {
                if let Err(err) = ack.await {
                    failure.get_or_insert_with(|| err.to_string());
                }
            }
            failure.map_or(Ok(()), Err)
        }
        Err(err) => Err(err.to_string()),
    };
    let result = match stored {
        Ok(()) => message.ack().await,
        Err(err) => {
            tracing::warn!(event_id, error = %err, "outputs not stored; the event will be processed again");
            message.ack_with(AckKind::Nak(Some(REPUBLISH_DELAY))).await
        }
    };
    if let Err(err) = result {
        tracing::warn!(event_id, error = %err, "could not settle the ingest message; it will be redelivered");
    }
}
