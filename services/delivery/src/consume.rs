//! The consume loop of the active replica: pulls `deliver.<provider>.>` through the
//! durable consumer as far as the in-flight cap, the breaker, the operator's pause and
//! the provider's own pause allow, and hands each message to its own task.

use std::sync::{Arc, atomic::Ordering};

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use switchyard_core::{
    catalog::Snapshot, consumer::Subscription, headers, shutdown::Shutdown, topology,
};
use tokio::{
    sync::{mpsc, watch},
    task::JoinSet,
    time::Instant,
};

use crate::{
    ACK_WAIT, Error, MAX_ACK_PENDING, PACING_STEP, Shared,
    attempt::Delivery,
    batch, ordering,
    target::{Target, Targets, refresh},
};

/// Most messages asked for in one pull request.
const MAX_PULL: usize = 500;

/// Pulls and delivers while `active` lasts.
pub(crate) async fn deliver(
    shared: &Arc<Shared>,
    target: &mut Arc<Target>,
    catalog: &mut watch::Receiver<Arc<Snapshot>>,
    targets: &Targets,
    active: &Shutdown,
) -> Result<(), Error> {
    let provider = &shared.provider;
    let config = pull::Config {
        durable_name: Some(topology::delivery_consumer(provider)),
        description: Some(format!("Switchyard delivery to {provider}")),
        filter_subject: topology::provider_deliver_filter(provider),
        ack_policy: AckPolicy::Explicit,
        deliver_policy: DeliverPolicy::All,
        ack_wait: ACK_WAIT,
        max_deliver: -1,
        max_ack_pending: MAX_ACK_PENDING,
        ..Default::default()
    };
    let mut subscription = Subscription::new(
        &shared.nats.jetstream,
        topology::DELIVER,
        config,
        capacity(target).min(MAX_PULL),
        active,
    )
    .await?;
    tracing::info!(provider, url = %target.provider.url, "delivery consuming DELIVER");

    let (batches, members) = mpsc::channel(MAX_PULL);
    let assembler = tokio::spawn(batch::assemble(shared.clone(), active.clone(), members));
    let mut tasks = JoinSet::new();
    loop {
        if catalog.has_changed().unwrap_or(false)
            && let Some(updated) = refresh(catalog, provider, targets)
        {
            shared
                .limiter
                .set_limit(updated.provider.rate_limit.as_ref());
            shared
                .breaker
                .lock()
                .expect("breaker lock")
                .set_policy(updated.provider.breaker.clone());
            *target = updated;
        }
        let max_in_flight = capacity(target);
        if tasks.len() >= max_in_flight {
            tasks.join_next().await;
            continue;
        }
        // While the breaker is open or the provider asked for a pause, do not pull:
        // waiting costs no attempts and holds no messages.
        let allowance = shared
            .breaker
            .lock()
            .expect("breaker lock")
            .pull_allowance(Instant::now());
        let hold = match allowance {
            _ if shared.paused.load(Ordering::Relaxed) => Some(PACING_STEP),
            Err(wait) => Some(wait),
            Ok(_) => shared.limiter.paused_for(),
        };
        let busy = !tasks.is_empty();
        if let Some(wait) = hold {
            tokio::select! {
                () = active.cancelled() => break,
                Some(_) = tasks.join_next(), if busy => {}
                () = tokio::time::sleep(wait.min(PACING_STEP)) => {}
            }
            continue;
        }
        let room = (max_in_flight - tasks.len()).min(allowance.unwrap_or(usize::MAX));
        let message = tokio::select! {
            biased;
            Some(_) = tasks.join_next(), if busy => continue,
            message = subscription.next(room) => message,
        };
        let Some(message) = message else { break };
        // Registered here, in arrival order, before any task runs.
        let turn = headers::get(message.headers.as_ref(), headers::ORDERING_KEY)
            .and(message.info().ok())
            .map(|info| {
                let place = ordering::place(message.headers.as_ref(), info.stream_sequence);
                let subject = message.subject.as_str();
                shared.gate.enter(subject, place, info.stream_sequence)
            });
        let delivery = Delivery {
            shared: shared.clone(),
            target: target.clone(),
            active: active.clone(),
            batches: Some(batches.clone()),
        };
        tasks.spawn(async move { delivery.handle(message, turn).await });
    }
    tracing::info!(provider, in_flight = tasks.len(), "delivery draining");
    while tasks.join_next().await.is_some() {}
    drop(batches);
    if let Err(err) = assembler.await {
        tracing::error!(provider, error = %err, "the batch assembler failed");
    }
    subscription.close().await;
    Ok(())
}

/// Messages worked on at once: the requests in flight, times the events each
/// carries when the provider takes batches.
fn capacity(target: &Target) -> usize {
    let provider = &target.provider;
    let per_request = provider.batch.as_ref().map_or(1, |batch| batch.max_events);
    provider
        .max_in_flight
        .saturating_mul(per_request)
        .min(MAX_ACK_PENDING as usize)
}
