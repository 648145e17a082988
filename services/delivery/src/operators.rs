//! What operators see and ask of this process: the pause set through the control
//! API (followed in `switchyard-pauses`), the live status and breaker reset answered
//! over NATS request/reply while this replica is active, and the dead-letter gauge.

use std::sync::{Arc, atomic::Ordering};

use async_nats::jetstream::kv;
use futures::StreamExt;
use switchyard_core::{
    metrics::{self, ProviderLabels},
    operator::{self, Command, LiveStatus, Pause},
    shutdown::Shutdown,
    topology,
};
use tokio::time::Instant;

use crate::{BACKLOG_EVERY, Error, SETTLE_RETRY, Shared};

/// Follows the operator's pause of the provider for the life of the process.
pub(crate) async fn watch_pause(shared: Arc<Shared>, shutdown: Shutdown) -> Result<(), Error> {
    let pauses = shared
        .nats
        .jetstream
        .get_key_value(topology::PAUSES_BUCKET)
        .await
        .map_err(switchyard_core::Error::nats)?;
    loop {
        let mut watch = match pauses.watch_with_history(&shared.provider).await {
            Ok(watch) => watch,
            Err(err) => {
                tracing::warn!(error = %err, "cannot watch the pause; trying again");
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(SETTLE_RETRY) => continue,
                }
            }
        };
        loop {
            let entry = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                entry = watch.next() => entry,
            };
            let Some(Ok(entry)) = entry else { break };
            let pause = (entry.operation == kv::Operation::Put)
                .then(|| serde_json::from_slice::<Pause>(&entry.value).ok())
                .flatten();
            let was = shared.paused.swap(pause.is_some(), Ordering::Relaxed);
            match pause {
                Some(pause) if !was => {
                    tracing::warn!(
                        provider = shared.provider,
                        reason = pause.reason,
                        by = pause.by,
                        "paused by an operator; not sending"
                    );
                }
                None if was => tracing::info!(provider = shared.provider, "resumed by an operator"),
                _ => {}
            }
        }
    }
}

/// Keeps the provider's dead-letter gauge current while this replica is active.
pub(crate) async fn watch_dead_letters(shared: &Arc<Shared>, active: &Shutdown) {
    let labels = ProviderLabels {
        provider: shared.provider.clone(),
    };
    let subject = topology::dlq_subject(&shared.provider);
    loop {
        // A failed read keeps the last figure.
        if let Ok(counts) =
            topology::subject_counts(&shared.nats.jetstream, topology::DLQ, &subject).await
        {
            let count = counts.values().sum::<u64>();
            metrics::metrics()
                .dlq_depth
                .get_or_create(&labels)
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        tokio::select! {
            () = active.cancelled() => return,
            () = tokio::time::sleep(BACKLOG_EVERY) => {}
        }
    }
}

/// Answers the control API's requests while this replica is active.
pub(crate) async fn answer_operators(shared: &Arc<Shared>, active: &Shutdown) {
    let mut requests = match shared
        .nats
        .client
        .subscribe(operator::control_subject(&shared.provider))
        .await
    {
        Ok(requests) => requests,
        Err(err) => {
            tracing::warn!(error = %err, "cannot answer operator requests");
            return;
        }
    };
    loop {
        let request = tokio::select! {
            () = active.cancelled() => break,
            request = requests.next() => request,
        };
        let Some(request) = request else { break };
        let Some(reply) = request.reply else { continue };
        if let Ok(Command::ResetBreaker) = serde_json::from_slice(&request.payload) {
            let reset = {
                let mut breaker = shared.breaker.lock().expect("breaker lock");
                breaker
                    .reset()
                    .map(|transition| (transition, breaker.cool_down()))
            };
            if let Some((transition, cool_down)) = reset {
                shared.breaker_changed(transition, cool_down).await;
            }
        }
        let status = serde_json::to_vec(&shared.live_status()).expect("status serializes");
        if let Err(err) = shared.nats.client.publish(reply, status.into()).await {
            tracing::warn!(error = %err, "operator answer not sent");
        }
    }
    let _ = requests.unsubscribe().await;
}

impl Shared {
    /// What the control API shows of this process.
    fn live_status(&self) -> LiveStatus {
        let now = Instant::now();
        let (breaker, retry_in) = {
            let breaker = self.breaker.lock().expect("breaker lock");
            let retry_in = breaker.pull_allowance(now).err().unwrap_or_default();
            (breaker.state(), retry_in)
        };
        let limiter = self.limiter.snapshot();
        let last = self.last.lock().expect("last outcomes lock");
        LiveStatus {
            instance: self.instance.clone(),
            breaker: Some(breaker),
            breaker_retry_in_ms: retry_in.as_millis() as u64,
            paused: self.paused.load(Ordering::Relaxed),
            rate_per_second: limiter.rate_per_second,
            burst: limiter.burst,
            tokens: limiter.tokens,
            provider_pause_ms: self.limiter.paused_for().unwrap_or_default().as_millis() as u64,
            in_flight: self.in_flight.load(Ordering::Relaxed),
            last_success: last.success.clone(),
            last_failure: last.failure.as_ref().map(|(at, _)| at.clone()),
            last_failure_reason: last.failure.as_ref().map(|(_, why)| why.clone()),
            recent: last
                .recent
                .minutes(time::OffsetDateTime::now_utc().unix_timestamp()),
        }
    }
}
