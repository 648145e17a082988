//! The breaker's life outside the state machine in `breaker.rs`: its state kept in
//! KV (`switchyard-breakers`), so a restarted or new active replica honours an open
//! breaker, and every transition logged, counted, shown as a gauge and published on
//! the attempt log.

use std::time::Duration;

use switchyard_core::{
    metrics::{self, ProviderLabels, TransitionLabels},
    operator::BreakerRecord,
};
use tokio::time::Instant;

use crate::{
    Shared,
    breaker::{State, Transition},
};

impl Shared {
    /// Loads the provider's breaker state from KV when this replica becomes active.
    pub(crate) async fn restore_breaker(&self) {
        let record = match self.breakers.get(&self.provider).await {
            Ok(Some(bytes)) => serde_json::from_slice::<BreakerRecord>(&bytes).ok(),
            Ok(None) => None,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the breaker state; starting closed");
                None
            }
        };
        let state = record.as_ref().map_or(State::Closed, |r| r.state);
        self.set_breaker_gauge(state);
        let Some(record) = record.filter(|r| r.state != State::Closed) else {
            return;
        };
        let now_ms = unix_millis();
        let open_until = record.opened_at_ms.unwrap_or(now_ms) + record.cool_down_ms as i64;
        let remaining = Duration::from_millis(open_until.saturating_sub(now_ms).max(0) as u64);
        self.breaker.lock().expect("breaker lock").restore_open(
            Instant::now(),
            remaining,
            Duration::from_millis(record.cool_down_ms),
        );
        tracing::warn!(
            provider = self.provider,
            remaining_s = remaining.as_secs(),
            "the breaker was open; honouring it"
        );
    }

    /// Persists, logs, counts and publishes a breaker transition.
    pub(crate) async fn breaker_changed(&self, transition: Transition, cool_down: Duration) {
        tracing::warn!(provider = self.provider, from = %transition.from, to = %transition.to, reason = transition.reason, "breaker");
        self.outcomes.breaker(&transition);
        self.set_breaker_gauge(transition.to);
        metrics::metrics()
            .breaker_transitions
            .get_or_create(&TransitionLabels {
                provider: self.provider.clone(),
                from: transition.from.to_string(),
                to: transition.to.to_string(),
            })
            .inc();
        let record = BreakerRecord {
            state: transition.to,
            opened_at_ms: (transition.to == State::Open).then(unix_millis),
            cool_down_ms: cool_down.as_millis() as u64,
        };
        let value = serde_json::to_vec(&record).expect("breaker records serialize");
        if let Err(err) = self.breakers.put(&self.provider, value.into()).await {
            tracing::warn!(error = %err, "breaker state not stored");
        }
    }

    /// Sets `switchyard_breaker_state`: 0 closed, 1 half-open, 2 open.
    fn set_breaker_gauge(&self, state: State) {
        let value = match state {
            State::Closed => 0,
            State::HalfOpen => 1,
            State::Open => 2,
        };
        metrics::metrics()
            .breaker_state
            .get_or_create(&ProviderLabels {
                provider: self.provider.clone(),
            })
            .set(value);
    }
}

/// The wall clock in Unix milliseconds: what survives a restart, unlike `Instant`.
fn unix_millis() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}
