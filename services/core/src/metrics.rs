//! Prometheus metrics of this process, served on the admin port at `/metrics`.
//!
//! One registry per process: in `switchyard dev` every service shares it, and each
//! series carries the labels that tell them apart (provider, route, …).

use std::sync::LazyLock;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

/// A provider.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    /// The provider's name.
    pub provider: String,
}

/// A breaker transition.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    /// The provider's name.
    pub provider: String,
    /// State before.
    pub from: String,
    /// State after.
    pub to: String,
}

/// A delivery attempt's result.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// The provider's name.
    pub provider: String,
    /// `delivered`, `retry`, `deferred`, `rejected` or `exhausted`.
    pub outcome: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric Switchyard exports.
pub struct Metrics {
    /// Breaker state per provider: 0 closed, 1 half-open, 2 open.
    pub breaker_state: Family<ProviderLabels, Gauge>,
    /// Breaker transitions per provider and direction.
    pub breaker_transitions: Family<TransitionLabels, Counter>,
    /// Delivery attempts per provider and outcome.
    pub deliveries: Family<DeliveryLabels, Counter>,
    /// Time from sending a delivery to the provider's answer.
    pub delivery_duration: HistogramFamily<ProviderLabels>,
    registry: Registry,
}

fn latency_histogram() -> Histogram {
    // 1 ms to about 16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::with_prefix("switchyard");
    let breaker_state = Family::<ProviderLabels, Gauge>::default();
    registry.register(
        "breaker_state",
        "Circuit breaker state per provider: 0 closed, 1 half-open, 2 open",
        breaker_state.clone(),
    );
    let breaker_transitions = Family::<TransitionLabels, Counter>::default();
    registry.register(
        "breaker_transitions",
        "Circuit breaker transitions per provider",
        breaker_transitions.clone(),
    );
    let deliveries = Family::<DeliveryLabels, Counter>::default();
    registry.register(
        "deliveries",
        "Delivery attempts per provider and outcome",
        deliveries.clone(),
    );
    let delivery_duration: HistogramFamily<ProviderLabels> =
        Family::new_with_constructor(latency_histogram);
    registry.register(
        "delivery_duration_seconds",
        "Time from sending a delivery to the provider's answer",
        delivery_duration.clone(),
    );
    Metrics {
        breaker_state,
        breaker_transitions,
        deliveries,
        delivery_duration,
        registry,
    }
});

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// Every metric in the Prometheus text format.
pub fn encode() -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &METRICS.registry)
        .expect("writing to a String cannot fail");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_encoded_with_their_labels() {
        let labels = ProviderLabels {
            provider: "crm".into(),
        };
        metrics().breaker_state.get_or_create(&labels).set(2);
        metrics()
            .delivery_duration
            .get_or_create(&labels)
            .observe(0.02);
        let text = encode();
        assert!(
            text.contains("switchyard_breaker_state{provider=\"crm\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("switchyard_delivery_duration_seconds_bucket"),
            "{text}"
        );
    }
}
