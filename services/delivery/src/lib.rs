//! Switchyard delivery: one process owns one provider.
//!
//! It pulls `deliver.<provider>.>` through the durable consumer `delivery-<provider>`
//! and sends each message with the provider's method, URL and headers, at most
//! `max_in_flight` at a time. A 2xx acks the message; a retryable failure NAKs it with
//! an exponential delay (the server keeps the timer, no task sleeps); a rejection or
//! the last failed attempt publishes the original to `dlq.<provider>`, waits for
//! JetStream to store it, and only then acks. Every attempt is recorded on
//! `outcome.<provider>`.

#![forbid(unsafe_code)]

mod sender;

use std::{sync::Arc, time::Duration};

use async_nats::{
    HeaderMap,
    jetstream::{
        self, AckKind,
        consumer::{AckPolicy, DeliverPolicy, pull},
    },
};
use serde::Serialize;
use switchyard_core::{
    catalog::{CatalogStore, Provider, Snapshot},
    config::Settings,
    consumer::Subscription,
    event, headers,
    nats::{self, Nats},
    secrets::SecretSource,
    shutdown::Shutdown,
    topology,
};
use tokio::{sync::watch, task::JoinSet};
use tracing::Instrument;

pub use crate::sender::{Attempt, Sender, Verdict};

/// Errors that stop the delivery service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// NATS, topology, catalog or secret set-up failed.
    #[error(transparent)]
    Core(#[from] switchyard_core::Error),
    /// The provider's configuration cannot be used.
    #[error("provider {provider}: {reason}")]
    Provider {
        /// The provider's name.
        provider: String,
        /// What is wrong.
        reason: String,
    },
}

/// Messages the server may hold for this consumer unacknowledged, waiting retries
/// included; beyond it the server stops handing out new ones.
const MAX_ACK_PENDING: i64 = 20_000;
/// How long the server waits for an ack before handing a message to another
/// replica; a request in progress keeps its message with progress acks, so this bounds
/// only how long a crashed process holds messages.
const ACK_WAIT: Duration = Duration::from_secs(10);
/// Delay before retrying a dead letter that JetStream did not store.
const DEAD_LETTER_RETRY: Duration = Duration::from_secs(5);

/// A provider's configuration with everything resolved for sending.
struct Target {
    provider: Provider,
    sender: Sender,
}

/// Delivers to `provider` until `shutdown` starts draining, then finishes what is in
/// flight.
pub async fn run(settings: Settings, provider: String, shutdown: Shutdown) -> Result<(), Error> {
    let nats = nats::connect(&settings.nats, &format!("delivery-{provider}")).await?;
    topology::ensure_topology(&nats.jetstream, &settings.topology).await?;
    let mut catalog = CatalogStore::open(&nats.jetstream)
        .await?
        .watch(&shutdown)
        .await?;
    let secrets = SecretSource::new(&settings.secrets.dir);

    let Some(mut target) = wait_for_provider(&mut catalog, &provider, &secrets, &shutdown).await?
    else {
        return Ok(());
    };
    let config = pull::Config {
        durable_name: Some(topology::delivery_consumer(&provider)),
        description: Some(format!("Switchyard delivery to {provider}")),
        filter_subject: format!("deliver.{provider}.>"),
        ack_policy: AckPolicy::Explicit,
        deliver_policy: DeliverPolicy::All,
        ack_wait: ACK_WAIT,
        max_deliver: -1,
        max_ack_pending: MAX_ACK_PENDING,
        ..Default::default()
    };
    let mut subscription = Subscription::new(
        &nats.jetstream,
        topology::DELIVER,
        config,
        target.provider.max_in_flight,
        &shutdown,
    )
    .await?;
    tracing::info!(provider, url = %target.provider.url, "delivery consuming DELIVER");

    let mut tasks = JoinSet::new();
    loop {
        if catalog.has_changed().unwrap_or(false)
            && let Some(updated) = refresh(&mut catalog, &provider, &secrets)
        {
            target = updated;
        }
        if tasks.len() >= target.provider.max_in_flight {
            tasks.join_next().await;
            continue;
        }
        let busy = !tasks.is_empty();
        let room = target.provider.max_in_flight - tasks.len();
        let message = tokio::select! {
            biased;
            Some(_) = tasks.join_next(), if busy => continue,
            message = subscription.next(room) => message,
        };
        let Some(message) = message else { break };
        let delivery = Delivery {
            nats: nats.clone(),
            provider: provider.clone(),
            target: target.clone(),
        };
        tasks.spawn(async move { delivery.handle(message).await });
    }
    tracing::info!(provider, in_flight = tasks.len(), "delivery draining");
    while tasks.join_next().await.is_some() {}
    subscription.close().await;
    Ok(())
}

/// Waits until the catalog has `provider`; `None` if the shutdown came first.
async fn wait_for_provider(
    catalog: &mut watch::Receiver<Arc<Snapshot>>,
    provider: &str,
    secrets: &SecretSource,
    shutdown: &Shutdown,
) -> Result<Option<Arc<Target>>, Error> {
    loop {
        let snapshot = catalog.borrow_and_update().clone();
        if let Some(config) = snapshot.catalog.provider(provider) {
            let sender = Sender::new(config, secrets)?;
            return Ok(Some(Arc::new(Target {
                provider: config.clone(),
                sender,
            })));
        }
        tracing::warn!(
            provider,
            "no such provider in the catalog yet; waiting for it to be applied"
        );
        tokio::select! {
            () = shutdown.cancelled() => return Ok(None),
            changed = catalog.changed() => {
                if changed.is_err() {
                    return Ok(None);
                }
            }
        }
    }
}

/// The provider's new configuration, or `None` to keep the current one.
fn refresh(
    catalog: &mut watch::Receiver<Arc<Snapshot>>,
    provider: &str,
    secrets: &SecretSource,
) -> Option<Arc<Target>> {
    let snapshot = catalog.borrow_and_update().clone();
    let Some(config) = snapshot.catalog.provider(provider) else {
        tracing::error!(
            provider,
            revision = snapshot.revision,
            "provider removed from the catalog; keeping its last configuration until this process is stopped"
        );
        return None;
    };
    match Sender::new(config, secrets) {
        Ok(sender) => {
            tracing::info!(
                provider,
                revision = snapshot.revision,
                "provider configuration updated"
            );
            Some(Arc::new(Target {
                provider: config.clone(),
                sender,
            }))
        }
        Err(err) => {
            tracing::error!(provider, error = %err, "new provider configuration unusable; keeping the previous one");
            None
        }
    }
}

/// Everything one message's delivery needs.
struct Delivery {
    nats: Nats,
    provider: String,
    target: Arc<Target>,
}

/// One line of the attempt log on `outcome.<provider>`.
#[derive(Debug, Serialize)]
struct Outcome<'a> {
    event_id: &'a str,
    route: &'a str,
    provider: &'a str,
    attempt: u32,
    status: Option<u16>,
    latency_ms: f64,
    outcome: &'a str,
    reason: Option<&'a str>,
    at: String,
}

impl Delivery {
    async fn handle(self, message: jetstream::Message) {
        let (attempt, sequence) = match message.info() {
            Ok(info) => (
                u32::try_from(info.delivered).unwrap_or(u32::MAX),
                info.stream_sequence,
            ),
            Err(err) => {
                tracing::error!(error = %err, "message without JetStream metadata");
                return;
            }
        };
        let message_headers = message.headers.as_ref();
        let event_id = headers::get(message_headers, headers::EVENT_ID)
            .unwrap_or("")
            .to_owned();
        let route = headers::get(message_headers, headers::ROUTE)
            .unwrap_or("")
            .to_owned();
        let idempotency_key = headers::get(message_headers, headers::NATS_MSG_ID)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("deliver-{sequence}"));
        let span = tracing::info_span!(
            "delivery send",
            otel.kind = "client",
            http.request.method = self.target.provider.method.as_str(),
            url.full = %self.target.provider.url,
            http.response.status_code = tracing::field::Empty,
            provider = %self.provider,
            route = %route,
            event_id = %event_id,
            attempt,
        );
        headers::set_parent_from(&span, message_headers);
        let mut trace = HeaderMap::new();
        headers::inject_span(&span, &mut trace);

        let send = self.target.sender.send(
            message.payload.clone(),
            message_headers,
            &idempotency_key,
            attempt,
            &trace,
        );
        let result = keep_alive(&message, send).instrument(span.clone()).await;
        if let Some(status) = result.status {
            span.record("http.response.status_code", status);
        }
        let policy = &self.target.provider.retry;
        let exhausted = attempt >= policy.max_attempts;
        let outcome = match result.verdict {
            Verdict::Delivered => "delivered",
            Verdict::Retryable if !exhausted => "retry",
            Verdict::Retryable => "exhausted",
            Verdict::Rejected => "rejected",
        };
        self.record(&event_id, &route, attempt, &result, outcome);

        let settled = async {
            match outcome {
                "delivered" => message.double_ack().await,
                "retry" => {
                    let delay = policy.backoff(attempt);
                    tracing::info!(
                        reason = result.reason.as_deref(),
                        delay_ms = delay.as_millis() as u64,
                        "attempt failed; will retry"
                    );
                    message.ack_with(AckKind::Nak(Some(delay))).await
                }
                category => {
                    tracing::warn!(
                        category,
                        reason = result.reason.as_deref(),
                        "dead-lettering"
                    );
                    match self.dead_letter(&message, category, attempt, &result).await {
                        Ok(()) => message.double_ack().await,
                        Err(err) => {
                            tracing::error!(error = %err, "dead letter not stored; will retry");
                            message
                                .ack_with(AckKind::Nak(Some(DEAD_LETTER_RETRY)))
                                .await
                        }
                    }
                }
            }
        }
        .instrument(span)
        .await;
        if let Err(err) = settled {
            tracing::warn!(event_id, error = %err, "could not settle the message; the server will redeliver it");
        }
    }

    /// Publishes the original with the failure's metadata to `dlq.<provider>` and waits
    /// until JetStream has stored it.
    async fn dead_letter(
        &self,
        message: &jetstream::Message,
        category: &str,
        attempt: u32,
        result: &Attempt,
    ) -> Result<(), String> {
        let mut out = message.headers.clone().unwrap_or_default();
        let original_id = headers::get(Some(&out), headers::NATS_MSG_ID)
            .map(str::to_owned)
            .unwrap_or_else(event::new_event_id);
        out.insert(headers::NATS_MSG_ID, format!("{original_id}:dlq").as_str());
        out.insert(headers::FAILURE_CATEGORY, category);
        out.insert(
            headers::FAILURE_REASON,
            headers::sanitize_value(result.reason.as_deref().unwrap_or("")).as_str(),
        );
        out.insert(headers::ATTEMPTS, attempt.to_string().as_str());
        if let Some(status) = result.status {
            out.insert(headers::LAST_STATUS, status.to_string().as_str());
        }
        headers::inject_current(&mut out);
        self.nats
            .jetstream
            .publish_with_headers(
                topology::dlq_subject(&self.provider),
                out,
                message.payload.clone(),
            )
            .await
            .map_err(|err| err.to_string())?
            .await
            .map_err(|err| err.to_string())?;
        Ok(())
    }

    /// Publishes the attempt record without holding up the delivery.
    fn record(&self, event_id: &str, route: &str, attempt: u32, result: &Attempt, outcome: &str) {
        let record = Outcome {
            event_id,
            route,
            provider: &self.provider,
            attempt,
            status: result.status,
            latency_ms: result.latency.as_secs_f64() * 1000.0,
            outcome,
            reason: result.reason.as_deref(),
            at: event::now_rfc3339(),
        };
        let body = serde_json::to_vec(&record).expect("outcomes serialize");
        let jetstream = self.nats.jetstream.clone();
        let subject = topology::outcome_subject(&self.provider);
        tokio::spawn(async move {
            let stored = async { jetstream.publish(subject, body.into()).await?.await }.await;
            if let Err(err) = stored {
                tracing::warn!(error = %err, "outcome record not stored");
            }
        });
    }
}

/// Runs `send` while telling the server every so often that the message is still being
/// worked on, so a slow provider never causes a redelivery mid-request.
async fn keep_alive<F: std::future::Future<Output = Attempt>>(
    message: &jetstream::Message,
    send: F,
) -> Attempt {
    tokio::pin!(send);
    let mut progress = tokio::time::interval(ACK_WAIT / 3);
    progress.tick().await;
    loop {
        tokio::select! {
            result = &mut send => return result,
            _ = progress.tick() => {
                let _ = message.ack_with(AckKind::Progress).await;
            }
        }
    }
}
