//! The attempt log on `outcome.<provider>`: one record per attempt, and one per
//! breaker transition, published without holding up the delivery.

use async_nats::jetstream;
use switchyard_core::{
    event,
    outcome::{Attempt, BreakerChange, OutcomeRecord, Record},
    topology,
};
use tracing::Instrument;

use crate::breaker::Transition;

/// Publishes attempt and breaker records for one provider.
#[derive(Clone)]
pub struct OutcomeLog {
    jetstream: jetstream::Context,
    provider: String,
}

impl OutcomeLog {
    /// The log of `provider`.
    pub fn new(jetstream: jetstream::Context, provider: &str) -> Self {
        Self {
            jetstream,
            provider: provider.to_owned(),
        }
    }

    /// Records one attempt.
    pub fn attempt(&self, attempt: Attempt) {
        self.publish(Record::Attempt(attempt));
    }

    /// Records a breaker transition.
    pub fn breaker(&self, transition: &Transition) {
        self.publish(Record::Breaker(BreakerChange {
            from: transition.from.to_string(),
            to: transition.to.to_string(),
            reason: transition.reason.clone(),
        }));
    }

    fn publish(&self, record: Record) {
        let payload = OutcomeRecord {
            provider: self.provider.clone(),
            at: event::now_rfc3339(),
            record,
        }
        .to_json();
        let jetstream = self.jetstream.clone();
        let subject = topology::outcome_subject(&self.provider);
        // In the current span, so a failure is logged with the event's ids.
        let store = async move {
            let stored = async { jetstream.publish(subject, payload.into()).await?.await }.await;
            if let Err(err) = stored {
                tracing::warn!(error = %err, "outcome record not stored");
            }
        };
        tokio::spawn(store.in_current_span());
    }
}
