//! What an attempt led to, and doing it: the verdict and the attempt count give one
//! [`Outcome`]; each outcome is counted, recorded on the attempt log, and settled by
//! its own handler — ack after the ledger records a delivery, NAK with the provider's
//! or the retry policy's delay, or dead-letter and then ack.

use async_nats::jetstream::AckKind;
use switchyard_core::{
    event, headers,
    metrics::{self, DeliveryLabels, ProviderLabels, ProviderRouteLabels},
    outcome::{Attempt, ErrorKind, FailureCategory, Outcome},
    telemetry, topology,
};
use tracing::Instrument;

use crate::{
    HELD_RETRY, SETTLE_RETRY,
    attempt::{Delivery, Owed, settle},
    sender::{Answer, Verdict},
};

/// The outcome of attempt number `attempt` of a policy that allows `allowed`.
pub(crate) fn outcome(verdict: Verdict, attempt: u32, allowed: u32) -> Outcome {
    match verdict {
        Verdict::Delivered => Outcome::Delivered,
        Verdict::Deferred(_) => Outcome::Deferred,
        Verdict::Retryable if attempt < allowed => Outcome::Retry,
        Verdict::Retryable => Outcome::Exhausted,
        Verdict::Unauthorized | Verdict::Rejected => Outcome::Rejected,
    }
}

impl Delivery {
    /// Counts, records and settles one attempt's answer; `batch` names the batch
    /// request that carried it.
    pub(crate) async fn settle(
        &self,
        mut owed: Owed<'_>,
        verdict: Verdict,
        answer: Answer,
        batch: Option<&str>,
    ) {
        let policy = &self.target.provider.retry;
        let attempt = owed.record.attempts + 1;
        owed.record.last_status = answer.status;
        let outcome = outcome(verdict, attempt, policy.attempts());
        let reason = answer.reason();
        self.count(&owed, outcome, &answer, reason.as_deref());
        self.shared.outcomes.attempt(Attempt {
            event_id: owed.event_id.to_owned(),
            route: owed.route.to_owned(),
            attempt,
            status: answer.status,
            latency_ms: answer.latency.as_secs_f64() * 1000.0,
            category: outcome,
            error: Some(answer.error_kind()).filter(|kind| *kind != ErrorKind::None),
            reason: reason.clone(),
            batch: batch.map(str::to_owned),
            mapping: headers::get(owed.message.headers.as_ref(), headers::MAPPING)
                .map(str::to_owned),
        });
        match outcome {
            Outcome::Delivered => {
                owed.record.delivered = true;
                // An unkeyed ack follows the record on the same connection, so the
                // server reads the record first, and a lost ack only brings the message
                // back to be acked unsent: the ack need not wait for the record's
                // confirmation. A keyed one does, since the next message of its key
                // looks for the record.
                let (ledger, key) = (&self.shared.ledger, &owed.ledger_key);
                let keyed = headers::get(owed.message.headers.as_ref(), headers::ORDERING_KEY);
                let recorded = match keyed {
                    None => match ledger.send(key, &owed.record).await {
                        Ok(stored) => {
                            if let Err(err) = owed.message.ack().await {
                                tracing::warn!(error = %err, "could not ack; the ledger acks the redelivery");
                            }
                            if let Err(err) = stored.await {
                                tracing::warn!(error = %err, "delivery record not stored");
                            }
                            return;
                        }
                        Err(err) => Err(err),
                    },
                    Some(_) => ledger.put(key, &owed.record).await,
                };
                if let Err(err) = recorded {
                    tracing::warn!(error = %err, "delivery record not stored; acking anyway");
                }
                settle(owed.message, AckKind::Ack).await;
            }
            Outcome::Deferred => {
                let delay = answer.retry_after.unwrap_or(HELD_RETRY);
                tracing::info!(
                    delay_ms = delay.as_millis() as u64,
                    status = answer.status,
                    "the provider asked for a pause; pausing every delivery"
                );
                self.shared.limiter.pause_for(delay);
                settle(owed.message, AckKind::Nak(Some(delay))).await;
            }
            Outcome::Retry => {
                owed.record.attempts = attempt;
                let delay = policy.delay_after(attempt, fastrand::f64());
                tracing::info!(
                    reason,
                    delay_ms = delay.as_millis() as u64,
                    "attempt failed; will retry"
                );
                if let Err(err) = self.shared.ledger.put(&owed.ledger_key, &owed.record).await {
                    tracing::warn!(error = %err, "attempt count not stored");
                }
                settle(owed.message, AckKind::Nak(Some(delay))).await;
            }
            Outcome::Rejected | Outcome::Exhausted => {
                let category = outcome.dead_letter().expect("these outcomes dead-letter");
                tracing::warn!(%category, reason, "dead-lettering");
                match self.dead_letter(&owed, category, attempt, &answer).await {
                    Ok(()) => settle(owed.message, AckKind::Ack).await,
                    Err(err) => {
                        tracing::error!(error = %err, "dead letter not stored; will retry");
                        settle(owed.message, AckKind::Nak(Some(SETTLE_RETRY))).await;
                    }
                }
            }
        }
    }

    /// The metrics and the status's last success and failure of one attempt.
    fn count(&self, owed: &Owed<'_>, outcome: Outcome, answer: &Answer, reason: Option<&str>) {
        let metrics = metrics::metrics();
        let provider = ProviderLabels {
            provider: self.shared.provider.clone(),
        };
        // Before the attempt is counted, so a scrape that sees it sees its latency too.
        if !answer.not_sent {
            metrics
                .delivery_duration
                .get_or_create(&provider)
                .observe(answer.latency.as_secs_f64());
        }
        metrics
            .deliveries
            .get_or_create(&DeliveryLabels {
                provider: provider.provider.clone(),
                outcome: outcome.as_str().to_owned(),
                error: answer.error_kind().as_str().to_owned(),
            })
            .inc();
        match outcome {
            Outcome::Retry => {
                metrics.retries.get_or_create(&provider).inc();
            }
            Outcome::Delivered => {
                let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as f64 / 1e9;
                metrics
                    .last_success
                    .get_or_create(&ProviderRouteLabels {
                        provider: provider.provider.clone(),
                        route: owed.route.to_owned(),
                    })
                    .set(now);
            }
            Outcome::Deferred | Outcome::Rejected | Outcome::Exhausted => {}
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut last = self.shared.last.lock().expect("last outcomes lock");
        match outcome {
            Outcome::Delivered => {
                last.success = Some(event::now_rfc3339());
                last.recent.record(now, true);
            }
            Outcome::Deferred => {}
            Outcome::Retry | Outcome::Rejected | Outcome::Exhausted => {
                let why = reason.unwrap_or(outcome.as_str()).to_owned();
                last.failure = Some((event::now_rfc3339(), why));
                last.recent.record(now, false);
            }
        }
    }

    /// Publishes the original with the failure's metadata to `dlq.<provider>` and waits
    /// until JetStream has stored it.
    async fn dead_letter(
        &self,
        owed: &Owed<'_>,
        category: FailureCategory,
        attempts: u32,
        answer: &Answer,
    ) -> Result<(), async_nats::Error> {
        let message = owed.message;
        let mut out = message.headers.clone().unwrap_or_default();
        let original_id = headers::get(Some(&out), headers::NATS_MSG_ID)
            .map(str::to_owned)
            .unwrap_or_else(|| {
                format!(
                    "deliver-{}",
                    message.info().map(|i| i.stream_sequence).unwrap_or(0)
                )
            });
        out.insert(headers::NATS_MSG_ID, format!("{original_id}:dlq").as_str());
        out.insert(headers::FAILURE_CATEGORY, category.as_str());
        let reason = answer.reason().unwrap_or_default();
        out.insert(
            headers::FAILURE_REASON,
            headers::sanitize_value(&reason).as_str(),
        );
        out.insert(headers::ATTEMPTS, attempts.to_string().as_str());
        out.insert(headers::ERROR_KIND, answer.error_kind().as_str());
        if let Some(status) = answer.status {
            out.insert(headers::LAST_STATUS, status.to_string().as_str());
        }
        if !answer.excerpt.is_empty() {
            out.insert(headers::RESPONSE_EXCERPT, answer.excerpt.as_str());
        }
        let subject = topology::dlq_subject(&self.shared.provider);
        let span = telemetry::publish_span(&subject, &mut out, message.payload.len());
        async {
            self.shared
                .nats
                .jetstream
                .publish_with_headers(subject, out, message.payload.clone())
                .await?
                .await?;
            Ok(())
        }
        .instrument(span)
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn each_verdict_leads_to_one_outcome() {
        let cases = [
            (Verdict::Delivered, 1, Outcome::Delivered),
            (Verdict::Delivered, 5, Outcome::Delivered),
            (
                Verdict::Deferred(Duration::from_secs(1)),
                5,
                Outcome::Deferred,
            ),
            (Verdict::Retryable, 1, Outcome::Retry),
            (Verdict::Retryable, 4, Outcome::Retry),
            (Verdict::Retryable, 5, Outcome::Exhausted),
            (Verdict::Unauthorized, 1, Outcome::Rejected),
            (Verdict::Rejected, 1, Outcome::Rejected),
        ];
        for (verdict, attempt, expected) in cases {
            assert_eq!(
                outcome(verdict, attempt, 5),
                expected,
                "{verdict:?} #{attempt}"
            );
        }
    }
}
