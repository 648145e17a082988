//! The attempt log on `outcome.<provider>`: one record per attempt, and one per
//! breaker transition, published without holding up the delivery.

use async_nats::jetstream;
use serde::Serialize;
use switchyard_core::{event, topology};
use tracing::Instrument;

use crate::breaker::Transition;

/// One attempt.
#[derive(Debug, Serialize)]
pub struct Attempt<'a> {
    /// The event.
    pub event_id: &'a str,
    /// The route that produced the delivery.
    pub route: &'a str,
    /// Counted attempt number (deferrals are not counted).
    pub attempt: u32,
    /// HTTP status, when the provider answered.
    pub status: Option<u16>,
    /// Time to the answer.
    pub latency_ms: f64,
    /// `delivered`, `retry`, `deferred`, `rejected` or `exhausted`.
    pub category: &'a str,
    /// What kind of failure (`http_5xx`, `timeout`, `tls`, `blocked`, …); absent
    /// when it succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
    /// Why it did not succeed.
    pub reason: Option<&'a str>,
}

#[derive(Serialize)]
struct Record<'a, T: Serialize> {
    kind: &'static str,
    provider: &'a str,
    at: String,
    #[serde(flatten)]
    body: T,
}

#[derive(Serialize)]
struct BreakerChange<'a> {
    from: String,
    to: String,
    reason: &'a str,
}

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
    pub fn attempt(&self, attempt: &Attempt<'_>) {
        self.publish("attempt", attempt);
    }

    /// Records a breaker transition.
    pub fn breaker(&self, transition: &Transition) {
        self.publish(
            "breaker",
            &BreakerChange {
                from: transition.from.to_string(),
                to: transition.to.to_string(),
                reason: &transition.reason,
            },
        );
    }

    fn publish<T: Serialize>(&self, kind: &'static str, body: &T) {
        let record = Record {
            kind,
            provider: &self.provider,
            at: event::now_rfc3339(),
            body,
        };
        let payload = serde_json::to_vec(&record).expect("outcome records serialize");
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
