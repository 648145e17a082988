//! Prometheus metrics of this process, served on the admin port at `/metrics`.
//!
//! One registry per process: in `switchyard dev` every service shares it, and each
//! series carries the labels that tell them apart (provider, route, …).

use std::sync::{LazyLock, atomic::AtomicU64};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{MetricType, family::Family, gauge::Gauge, histogram::exponential_buckets},
    registry::Registry,
};

/// The handle types, for services that keep handles instead of looking series up.
pub use prometheus_client::metrics::{counter::Counter, histogram::Histogram};

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
    /// Why it failed: `none`, `http_4xx`, `http_5xx`, `http_429`, `timeout`,
    /// `connect`, `credentials` or `other`.
    pub error: String,
}

/// An HTTP request to ingest.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IngestLabels {
    /// The source (`unknown` for a source the catalog does not have).
    pub source: String,
    /// `events` or `webhooks`.
    pub endpoint: String,
    /// The HTTP status answered.
    pub status: String,
}

/// A source.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// The source's name.
    pub source: String,
}

/// What transform did with an event on one route.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransformLabels {
    /// The route.
    pub route: String,
    /// `published`, `filtered`, `skipped`, or the dead-letter category (`mapping`,
    /// `contract`, `filter`).
    pub outcome: String,
}

/// A route.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route's name.
    pub route: String,
}

/// A route's deliveries to a provider.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderRouteLabels {
    /// The provider's name.
    pub provider: String,
    /// The route's name.
    pub route: String,
}

/// A durable consumer.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerLabels {
    /// The stream.
    pub stream: String,
    /// The consumer's name.
    pub consumer: String,
}

/// One result of one mapping version of a route with a canary.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CanaryLabels {
    /// The route.
    pub route: String,
    /// The version, `name@version`.
    pub mapping: String,
    /// `stable` (the route's own) or `canary`.
    pub version: String,
    /// `delivered`, `mapping`, `contract`, `rejected`, `exhausted` or `retries`.
    pub result: String,
}

/// One mapping version of a route with a canary.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CanaryVersionLabels {
    /// The route.
    pub route: String,
    /// The version, `name@version`.
    pub mapping: String,
    /// `stable` or `canary`.
    pub version: String,
}

/// A service.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    /// `ingest` or `transform`.
    pub service: String,
}

/// An HTTP listener.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// `ingest` or `admin`.
    pub listener: String,
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
    /// Failed attempts that will be retried, per provider.
    pub retries: Family<ProviderLabels, Counter>,
    /// Events per batch request, per provider.
    pub batch_events: HistogramFamily<ProviderLabels>,
    /// Time from a batch's first event joining it to the batch being sent.
    pub batch_fill: HistogramFamily<ProviderLabels>,
    /// Seconds deliveries waited for the rate limit or a provider's `Retry-After`.
    pub rate_limit_wait: Family<ProviderLabels, Counter<f64, AtomicU64>>,
    /// Unix time of the last successful delivery per provider and route (freshness).
    pub last_success: Family<ProviderRouteLabels, Gauge<f64, AtomicU64>>,
    /// HTTP requests to ingest per source, endpoint and status.
    pub ingest_requests: Family<IngestLabels, Counter>,
    /// Ingest requests whose body has arrived, waiting for a place (`ingest.max_in_flight`).
    pub ingest_requests_waiting: Gauge,
    /// Events stored in INGEST per source (duplicates not counted).
    pub events_published: Family<SourceLabels, Counter>,
    /// Rows waiting in a source's outbox table (at its last count).
    pub source_rows_waiting: Family<SourceLabels, Gauge>,
    /// Bytes of WAL a CDC source's slot is behind the server's current position.
    pub source_bytes_behind: Family<SourceLabels, Gauge>,
    /// Unix time a database source last read its table, whether or not it found rows.
    pub source_last_read: Family<SourceLabels, Gauge<f64, AtomicU64>>,
    /// Transform results per route and outcome.
    pub transform_results: Family<TransformLabels, Counter>,
    /// Time to run a route's filter, contracts and mapping on one event.
    pub mapping_duration: HistogramFamily<RouteLabels>,
    /// Messages of a durable consumer not yet handed out.
    pub consumer_pending: Family<ConsumerLabels, Gauge>,
    /// Messages of a durable consumer handed out and not yet acknowledged.
    pub consumer_ack_pending: Family<ConsumerLabels, Gauge>,
    /// Dead letters per provider.
    pub dlq_depth: Family<ProviderLabels, Gauge>,
    /// Open connections per HTTP listener.
    pub http_connections: Family<ListenerLabels, Gauge>,
    /// The catalog revision a service runs.
    pub catalog_revision: Family<ServiceLabels, Gauge>,
    /// Finished events (and retries) of each version of a route with a canary, since
    /// the canary started (control's judge).
    pub canary_events: Family<CanaryLabels, Gauge>,
    /// The dead-lettered share (0–1) of each version's finished events since the
    /// canary started.
    pub canary_failed_ratio: Family<CanaryVersionLabels, Gauge<f64, AtomicU64>>,
    /// Canaries rolled back automatically, per route.
    pub canary_rollbacks: Family<RouteLabels, Counter>,
    registry: Registry,
    /// Name, help and type of every family, in registration order.
    descriptors: Vec<(&'static str, &'static str, MetricType)>,
}

fn mapping_histogram() -> Histogram {
    // 5 µs to about 80 ms.
    Histogram::new(exponential_buckets(0.000_005, 2.0, 15))
}

fn batch_size_histogram() -> Histogram {
    // 1 to 8,192 events.
    Histogram::new(exponential_buckets(1.0, 2.0, 14))
}

fn latency_histogram() -> Histogram {
    // 1 ms to about 16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// Registers each metric and remembers its descriptor, so that a family with no
/// series yet is still described to scrapers.
struct Registration {
    registry: Registry,
    descriptors: Vec<(&'static str, &'static str, MetricType)>,
}

impl Registration {
    fn add<
        M: prometheus_client::registry::Metric + prometheus_client::metrics::TypedMetric + Clone,
    >(
        &mut self,
        name: &'static str,
        help: &'static str,
        metric: M,
    ) -> M {
        self.descriptors.push((name, help, M::TYPE));
        self.registry.register(name, help, metric.clone());
        metric
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut metrics = Registration {
        registry: Registry::with_prefix("switchyard"),
        descriptors: Vec::new(),
    };
    let breaker_state = metrics.add(
        "breaker_state",
        "Circuit breaker state per provider: 0 closed, 1 half-open, 2 open",
        Family::<ProviderLabels, Gauge>::default(),
    );
    let breaker_transitions = metrics.add(
        "breaker_transitions",
        "Circuit breaker transitions per provider",
        Family::<TransitionLabels, Counter>::default(),
    );
    let deliveries = metrics.add(
        "deliveries",
        "Delivery attempts per provider and outcome",
        Family::<DeliveryLabels, Counter>::default(),
    );
    let delivery_duration: HistogramFamily<ProviderLabels> = metrics.add(
        "delivery_duration_seconds",
        "Time from sending a delivery to the provider's answer",
        Family::new_with_constructor(latency_histogram),
    );
    let retries = metrics.add(
        "retries",
        "Failed delivery attempts that will be retried, per provider",
        Family::<ProviderLabels, Counter>::default(),
    );
    let batch_events: HistogramFamily<ProviderLabels> = metrics.add(
        "delivery_batch_events",
        "Events per batch request, per provider",
        Family::new_with_constructor(batch_size_histogram),
    );
    let batch_fill: HistogramFamily<ProviderLabels> = metrics.add(
        "delivery_batch_fill_seconds",
        "Time from a batch's first event joining it to the batch being sent",
        Family::new_with_constructor(latency_histogram),
    );
    let rate_limit_wait = metrics.add(
        "rate_limit_wait_seconds",
        "Seconds deliveries waited for the rate limit or a provider's Retry-After",
        Family::<ProviderLabels, Counter<f64, AtomicU64>>::default(),
    );
    let last_success = metrics.add(
        "last_success_timestamp_seconds",
        "Unix time of the last successful delivery per provider and route",
        Family::<ProviderRouteLabels, Gauge<f64, AtomicU64>>::default(),
    );
    let ingest_requests = metrics.add(
        "ingest_requests",
        "HTTP requests to ingest per source, endpoint and status",
        Family::<IngestLabels, Counter>::default(),
    );
    let ingest_requests_waiting = metrics.add(
        "ingest_requests_waiting",
        "Ingest requests whose body has arrived, waiting for one of ingest.max_in_flight places",
        Gauge::default(),
    );
    let events_published = metrics.add(
        "events_published",
        "Events stored in INGEST per source, duplicates not counted",
        Family::<SourceLabels, Counter>::default(),
    );
    let source_rows_waiting = metrics.add(
        "ingest_source_rows_waiting",
        "Rows waiting in a source's outbox table, at its last count",
        Family::<SourceLabels, Gauge>::default(),
    );
    let source_bytes_behind = metrics.add(
        "ingest_source_bytes_behind",
        "Bytes of WAL a CDC source's replication slot is behind",
        Family::<SourceLabels, Gauge>::default(),
    );
    let source_last_read = metrics.add(
        "ingest_source_last_read_timestamp_seconds",
        "Unix time a database source last read its table or its changes",
        Family::<SourceLabels, Gauge<f64, AtomicU64>>::default(),
    );
    let transform_results = metrics.add(
        "transform_results",
        "Transform results per route and outcome",
        Family::<TransformLabels, Counter>::default(),
    );
    let mapping_duration: HistogramFamily<RouteLabels> = metrics.add(
        "mapping_duration_seconds",
        "Time to run a route's filter, contracts and mapping on one event",
        Family::new_with_constructor(mapping_histogram),
    );
    let consumer_pending = metrics.add(
        "consumer_pending",
        "Messages of a durable consumer not yet handed out",
        Family::<ConsumerLabels, Gauge>::default(),
    );
    let consumer_ack_pending = metrics.add(
        "consumer_ack_pending",
        "Messages of a durable consumer handed out and not yet acknowledged",
        Family::<ConsumerLabels, Gauge>::default(),
    );
    let dlq_depth = metrics.add(
        "dlq_depth",
        "Dead letters per provider",
        Family::<ProviderLabels, Gauge>::default(),
    );
    let http_connections = metrics.add(
        "http_connections",
        "Open connections per HTTP listener",
        Family::<ListenerLabels, Gauge>::default(),
    );
    let catalog_revision = metrics.add(
        "catalog_revision",
        "The catalog revision a service runs",
        Family::<ServiceLabels, Gauge>::default(),
    );
    let canary_events = metrics.add(
        "canary_events",
        "Finished events and retries of each mapping version of a route with a canary, since it started",
        Family::<CanaryLabels, Gauge>::default(),
    );
    let canary_failed_ratio = metrics.add(
        "canary_failed_ratio",
        "Dead-lettered share (0-1) of each version's finished events since the route's canary started",
        Family::<CanaryVersionLabels, Gauge<f64, AtomicU64>>::default(),
    );
    let canary_rollbacks = metrics.add(
        "canary_rollbacks",
        "Canaries rolled back automatically, per route",
        Family::<RouteLabels, Counter>::default(),
    );
    Metrics {
        canary_events,
        canary_failed_ratio,
        canary_rollbacks,
        breaker_state,
        breaker_transitions,
        deliveries,
        delivery_duration,
        retries,
        batch_events,
        batch_fill,
        rate_limit_wait,
        last_success,
        ingest_requests,
        ingest_requests_waiting,
        events_published,
        source_rows_waiting,
        source_bytes_behind,
        source_last_read,
        transform_results,
        mapping_duration,
        consumer_pending,
        consumer_ack_pending,
        dlq_depth,
        http_connections,
        catalog_revision,
        registry: metrics.registry,
        descriptors: metrics.descriptors,
    }
});

/// Records that `service` now runs catalog `revision`.
pub fn set_catalog_revision(service: &str, revision: u64) {
    metrics()
        .catalog_revision
        .get_or_create(&ServiceLabels {
            service: service.to_owned(),
        })
        .set(i64::try_from(revision).unwrap_or(i64::MAX));
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// Keeps the backlog gauges of a durable consumer current, every `every`, until
/// `shutdown`. A failed read keeps the last figures; it never stops the service.
pub async fn watch_consumer(
    jetstream: async_nats::jetstream::Context,
    stream: &'static str,
    consumer: String,
    every: std::time::Duration,
    shutdown: crate::shutdown::Shutdown,
) -> Result<(), crate::Error> {
    let labels = ConsumerLabels {
        stream: stream.to_owned(),
        consumer: consumer.clone(),
    };
    loop {
        let info = async {
            let mut handle = jetstream
                .get_consumer_from_stream::<async_nats::jetstream::consumer::pull::Config, _, _>(
                    &consumer, stream,
                )
                .await
                .ok()?;
            handle.info().await.ok().cloned()
        };
        if let Some(info) = info.await {
            let metrics = metrics();
            metrics
                .consumer_pending
                .get_or_create(&labels)
                .set(i64::try_from(info.num_pending).unwrap_or(i64::MAX));
            metrics
                .consumer_ack_pending
                .get_or_create(&labels)
                .set(i64::try_from(info.num_ack_pending).unwrap_or(i64::MAX));
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// The content type of [`encode`]'s output.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of [`encode_classic`]'s output.
pub const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every metric in the OpenMetrics 1.0 text format. A family with no series yet is
/// written with its help and type alone (OpenMetrics allows a family without
/// samples), so scrapers know every metric from the first scrape.
pub fn encode() -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode_registry(&mut text, &METRICS.registry)
        .expect("writing to a String cannot fail");
    for (name, help, kind) in &METRICS.descriptors {
        if !text.contains(&format!("# TYPE switchyard_{name} ")) {
            text.push_str(&format!(
                // The registry ends every help text with a full stop.
                "# HELP switchyard_{name} {help}.\n# TYPE switchyard_{name} {}\n",
                kind.as_str()
            ));
        }
    }
    prometheus_client::encoding::text::encode_eof(&mut text)
        .expect("writing to a String cannot fail");
    text
}

/// Every metric in the classic Prometheus text format (0.0.4), for scrapers that do
/// not ask for OpenMetrics.
pub fn encode_classic() -> String {
    to_classic(&encode())
}

/// Rewrites OpenMetrics text as the classic format: a counter's `HELP` and `TYPE`
/// name its samples (`…_total`), and there is no `# EOF` or `# UNIT`. The other types
/// are written the same in both.
fn to_classic(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(line) => out.push_str(&line),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Which format an `Accept` header prefers: OpenMetrics when it is accepted at least
/// as much as the classic text (Prometheus asks for it first), the classic text
/// otherwise.
pub fn prefers_openmetrics(accept: &str) -> bool {
    let quality = |wanted: &str| {
        accept
            .split(',')
            .filter_map(|range| {
                let mut parts = range.split(';').map(str::trim);
                let media = parts.next()?.to_ascii_lowercase();
                let q = parts
                    .filter_map(|param| param.strip_prefix("q="))
                    .find_map(|q| q.parse::<f32>().ok())
                    .unwrap_or(1.0);
                (media == wanted).then_some(q)
            })
            .fold(0.0_f32, f32::max)
    };
    let openmetrics = quality("application/openmetrics-text");
    openmetrics > 0.0 && openmetrics >= quality("text/plain")
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

    #[test]
    fn the_classic_format_names_counters_by_their_samples() {
        let openmetrics = "# HELP switchyard_retries Failed attempts.\n# TYPE switchyard_retries counter\nswitchyard_retries_total{provider=\"crm\"} 3\n# HELP switchyard_dlq_depth Dead letters.\n# TYPE switchyard_dlq_depth gauge\nswitchyard_dlq_depth{provider=\"crm\"} 1\n# EOF\n";
        assert_eq!(
            to_classic(openmetrics),
            "# HELP switchyard_retries_total Failed attempts.\n# TYPE switchyard_retries_total counter\nswitchyard_retries_total{provider=\"crm\"} 3\n# HELP switchyard_dlq_depth Dead letters.\n# TYPE switchyard_dlq_depth gauge\nswitchyard_dlq_depth{provider=\"crm\"} 1\n"
        );
    }

    #[test]
    fn families_without_series_are_still_described() {
        // Nothing in this crate's tests counts published events.
        let text = encode();
        assert!(
            text.contains("# HELP switchyard_events_published Events stored in INGEST per source, duplicates not counted.\n# TYPE switchyard_events_published counter\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(encode_classic().contains("# TYPE switchyard_events_published_total counter\n"));
    }

    #[test]
    fn the_format_follows_the_accept_header() {
        // What Prometheus 2.x sends.
        assert!(prefers_openmetrics(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        ));
        assert!(!prefers_openmetrics("text/plain;version=0.0.4"));
        assert!(!prefers_openmetrics("*/*"));
        assert!(!prefers_openmetrics(""));
        assert!(!prefers_openmetrics(
            "text/plain, application/openmetrics-text;q=0.5"
        ));
    }
}
